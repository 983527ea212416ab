package importer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/migrate"
	"github.com/pgtenant/pgtenant/internal/shared"
)

// applyBaseline writes the baseline migrations and applies them: the
// reference tables to every node, the tenant tables to every shard.
func applyBaseline(t *testing.T, c *catalog.Catalog, im *Importer) {
	t.Helper()
	ctx := ctxT(t)
	dir := t.TempDir()
	if _, err := im.Baseline(ctx, BaselineOptions{Dir: dir + "/migrations", ReferenceDir: dir + "/reference"}); err != nil {
		t.Fatal(err)
	}
	nodes, err := c.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dsn := map[string]string{}
	var sn []shared.Node
	for _, n := range nodes {
		dsn[n.Name] = n.DSN
		sn = append(sn, shared.Node{Name: n.Name, DSN: n.DSN})
	}
	ms, err := shared.ReadMigrations(os.DirFS(dir + "/reference"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := shared.Migrate(ctx, sn, "public", ms); err != nil {
		t.Fatal(err)
	}
	shards, err := c.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var targets []migrate.Target
	for _, s := range shards {
		targets = append(targets, migrate.Target{Shard: s.ID, Schema: s.Schema, Node: s.Node, DSN: dsn[s.Node]})
	}
	if _, err := migrate.Up(ctx, os.DirFS(dir+"/migrations"), targets, migrate.Options{}); err != nil {
		t.Fatal(err)
	}
}

// TestStartCopiesAndResumes: import start copies every tenant's rows to its
// shard at the slot's snapshot; killed part way (a context cancelled while
// shards are copying), it resumes with the shards not recorded as copied,
// at a later snapshot: rows written on the legacy database in between are
// in the shards copied after the kill and not in those copied before (the
// change stream brings them, from each shard's copy_lsn on).
func TestStartCopiesAndResumes(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 16, 2)
	legacy, ids := newLegacy(t, srvA, c, 60, 3)
	im := New(c, nil)
	if _, err := im.Init(ctx, InitOptions{DSN: legacy, RegisterTenants: true}); err != nil {
		t.Fatal(err)
	}
	applyBaseline(t, c, im)
	t.Cleanup(func() { dropSlots(t, legacy) })

	runCtx, kill := context.WithCancel(ctx)
	var started atomic.Int32
	res, err := im.Start(runCtx, StartOptions{Parallel: 2, BeforeShard: func(ctx context.Context, shard int) error {
		if started.Add(1) == 7 {
			kill()
		}
		return nil
	}})
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("killed start: %v", err)
	}
	if res.Copied == 0 || res.Copied >= 16 {
		t.Fatalf("killed start copied %d shards", res.Copied)
	}
	shards, err := im.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.LoadMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	copiedTenant, pendingTenant := "", ""
	for _, id := range ids {
		loc, err := m.Lookup(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		st := shards[loc.Shard.ID].State
		if st == ShardCopied && copiedTenant == "" {
			copiedTenant = id
		}
		if st == ShardLegacy && pendingTenant == "" {
			pendingTenant = id
		}
	}
	if copiedTenant == "" || pendingTenant == "" {
		t.Fatalf("after the kill no tenant is in a copied shard (%q) or one in a shard left (%q)", copiedTenant, pendingTenant)
	}
	// Routing is unchanged: every shard is still served from the legacy database.
	if loc, _ := m.Locate(copiedTenant); loc.Node.Name != "legacy" || loc.Shard.Schema != "public" {
		t.Fatalf("tenant of a copied shard is served from %s.%s", loc.Node.Name, loc.Shard.Schema)
	}
	for _, id := range []string{copiedTenant, pendingTenant} {
		execSQL(t, legacy, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'between runs', 'Lyon', 1)`, id)
	}

	res2, err := im.Start(ctx, StartOptions{Parallel: 3})
	if err != nil {
		t.Fatal(err)
	}
	if !res2.ResumedFromShard || res.Copied+res2.Copied != 16 || res2.AlreadyCopied != res.Copied || res2.StartLSN != res.StartLSN || res2.CopyLSN <= res2.StartLSN {
		t.Fatalf("resume: %+v after %+v", res2, res)
	}
	if _, err := im.Start(ctx, StartOptions{}); err == nil {
		t.Fatal("a third start after every shard was copied succeeded")
	}

	rep, err := im.Verify(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Shards != 16 || rep.Tenants != 60 || rep.Rows == 0 || len(rep.Mismatches) != 1 {
		t.Fatalf("verify: %d shards, %d tenants, %d rows, mismatches %v", rep.Shards, rep.Tenants, rep.Rows, rep.Mismatches)
	}
	if mm := rep.Mismatches[0]; mm.Tenant != copiedTenant || mm.Table != "buildings" || mm.LegacyRows != mm.ShardRows+1 {
		t.Fatalf("verify mismatch: %v, want the building written between the runs for %q", mm, copiedTenant)
	}

	// The reference table is on every node; the slot and publication on the legacy database.
	for _, n := range []string{"n1", "n2"} {
		node, err := c.Node(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, node.DSN)
		if err != nil {
			t.Fatal(err)
		}
		var units int
		err = conn.QueryRow(ctx, `SELECT count(*) FROM public.energy_units`).Scan(&units)
		conn.Close(ctx)
		if err != nil || units != 3 {
			t.Fatalf("energy_units on %s: %d rows, %v", n, units, err)
		}
	}
	conn, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var slots, pubTables int
	if err := conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE database = current_database()),
		(SELECT count(*) FROM pg_publication_tables WHERE pubname = 'pgtenant_import')`).Scan(&slots, &pubTables); err != nil {
		t.Fatal(err)
	}
	if slots != 1 || pubTables != 7 {
		t.Fatalf("legacy database: %d slots (want the import's only), %d published tables (want 7: the tenant tables and the marker table)", slots, pubTables)
	}

	// The change stream: the building written between the runs reaches its
	// shard, and so do inserts, updates and deletes (a child row through its
	// parent; a delete of a row whose key lacks the tenant), once each, also
	// across a killed and restarted stream.
	follow := func() func() {
		fctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- im.Follow(fctx) }()
		return func() {
			stop()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("follow: %v", err)
			}
		}
	}
	converge := func(what string) {
		t.Helper()
		for i := 0; ; i++ {
			rep, err := im.Verify(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK() {
				return
			}
			if i == 600 {
				t.Fatalf("%s: the shards never matched the legacy database: %v", what, rep.Mismatches)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	stop := follow()
	converge("after the start")
	write := func(round int) {
		for i, id := range ids[:20] {
			execSQL(t, legacy, `WITH b AS (INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, $2, 'Porto', 5) RETURNING id),
				m AS (INSERT INTO meters (tenant_id, building_id, energy, unit) SELECT $1, id, 'gas', 'm3' FROM b RETURNING id)
				INSERT INTO meter_notes (meter_id, note) SELECT id, 'new' FROM m`, id, fmt.Sprintf("round %d", round))
			execSQL(t, legacy, `UPDATE customers SET plan = 'enterprise' WHERE tenant_id = $1`, id)
			if i%3 == 0 {
				execSQL(t, legacy, `DELETE FROM readings WHERE tenant_id = $1 AND meter_id = (SELECT min(meter_id) FROM readings WHERE tenant_id = $1)`, id)
				execSQL(t, legacy, `DELETE FROM meter_notes WHERE id = (SELECT min(n.id) FROM meter_notes n JOIN meters m ON m.id = n.meter_id WHERE m.tenant_id = $1)`, id)
			}
		}
	}
	write(1)
	converge("after round 1")
	stop()
	write(2)
	stop = follow()
	converge("after round 2 with a restarted stream")
	stop()

	// A cutover without a stream running: the marker never arrives, the
	// shard is given back to the legacy database, nothing changed.
	loc, err := m.Lookup(ctx, ids[0])
	if err != nil {
		t.Fatal(err)
	}
	shard := loc.Shard.ID
	_, err = im.Cutover(ctx, CutoverOptions{Shards: []int{shard}, MarkerTimeout: time.Second})
	if !errors.Is(err, ErrMarkerTimeout) {
		t.Fatalf("cutover without a stream: %v", err)
	}
	m, err = c.LoadMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if loc, _ := m.Locate(ids[0]); loc.Node.Name != "legacy" || loc.Shard.State != "active" {
		t.Fatalf("after a failed cutover the shard is on %s, %s", loc.Node.Name, loc.Shard.State)
	}
	var leases int
	if err := c.Pool().QueryRow(ctx, `SELECT count(*) FROM pgtenant.fence_leases`).Scan(&leases); err != nil || leases != 0 {
		t.Fatalf("fence leases left: %d, %v", leases, err)
	}
	// With the stream running it cuts over; finish is refused until every shard is.
	stop = follow()
	res3, err := im.Cutover(ctx, CutoverOptions{Shards: []int{shard}})
	if err != nil || len(res3) != 1 || res3[0].Pause <= 0 {
		t.Fatalf("cutover: %+v, %v", res3, err)
	}
	m, _ = c.LoadMap(ctx)
	if loc, _ := m.Locate(ids[0]); loc.Node.Name == "legacy" || loc.Shard.Schema == "public" {
		t.Fatalf("after the cutover the shard is served from %s.%s", loc.Node.Name, loc.Shard.Schema)
	}
	if err := im.Finish(ctx); !errors.Is(err, ErrNotCutOver) {
		t.Fatalf("finish with shards left: %v", err)
	}
	stop()
}

// TestStartKeepsReplicaIdentities: a legacy database whose tables already
// carry their tenant in their replica identity gets no REPLICA IDENTITY
// change, and the import records that (an empty list, not NULL: a second
// import of such a database failed with 23502).
func TestStartKeepsReplicaIdentities(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 2, 1)
	legacy, _ := newLegacy(t, srvA, c, 3, 1)
	for _, tbl := range []string{"customers", "buildings", "meters", "readings", "tariffs", "meter_notes"} {
		execSQL(t, legacy, `ALTER TABLE `+tbl+` REPLICA IDENTITY FULL`)
	}
	im := New(c, nil)
	if _, err := im.Init(ctx, InitOptions{DSN: legacy, RegisterTenants: true}); err != nil {
		t.Fatal(err)
	}
	applyBaseline(t, c, im)
	t.Cleanup(func() { dropSlots(t, legacy) })
	res, err := im.Start(ctx, StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var full []string
	if err := c.Pool().QueryRow(ctx, `SELECT full_identity FROM pgtenant.imports`).Scan(&full); err != nil || len(full) != 0 || res.Copied != 2 {
		t.Fatalf("full_identity %v, %v; %d shards copied", full, err, res.Copied)
	}
}
