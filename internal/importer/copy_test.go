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

// TestStartCopiesAndResumes: import start reads each legacy table once, in
// ranges of heap blocks, routing each row to its tenant's shard, at the
// slot's snapshot. Killed part way (a context cancelled while readings, the
// last level, is copied, after some of its ranges committed), the rerun
// keeps the tables complete on the nodes, brings them to its new snapshot
// through the change stream, empties the incomplete ones (the committed
// ranges' rows go) and copies them at the new snapshot: rows written on the
// legacy database between the runs (in kept and in redone tables, inserts,
// updates and deletes) are on the shards exactly once, every table of every
// tenant equal to the legacy database's (count and checksum).
func TestStartCopiesAndResumes(t *testing.T) {
	// Longer than ctxT: the machine the tests run on is shared and loaded.
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := newCatalog(t, 16, 2)
	legacy, ids := newLegacy(t, srvA, c, 60, 8)
	im := New(c, nil)
	initImport(ctx, t, c, im, legacy)
	indexesBefore := nodeIndexes(t, c)

	runCtx, kill := context.WithCancel(ctx)
	var readingsUnits atomic.Int32
	res, err := im.Start(runCtx, StartOptions{Parallel: 1, UnitBytes: 4 * 8192, BeforeUnit: func(ctx context.Context, table string, unit int) error {
		if table == "readings" && readingsUnits.Add(1) == 3 {
			kill()
			return ctx.Err()
		}
		return nil
	}})
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("killed start: %v", err)
	}
	if res.Tables < 4 || res.Tables >= 6 || res.Copied != 0 {
		t.Fatalf("killed start: %d tables complete, %d shards recorded copied; want 4 or 5 tables (the levels before readings), no shard", res.Tables, res.Copied)
	}
	shards, err := im.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range shards {
		if s.State != ShardLegacy {
			t.Fatalf("after the kill shard %d is %s", s.Shard, s.State)
		}
	}
	// Two ranges of readings were committed on the nodes before the kill.
	var legacyReadings int64
	lc, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close(ctx)
	if err := lc.QueryRow(ctx, `SELECT count(*) FROM readings`).Scan(&legacyReadings); err != nil {
		t.Fatal(err)
	}
	if got := nodeRows(t, c, "readings"); got == 0 || got >= legacyReadings {
		t.Fatalf("after the kill the shards hold %d readings of %d; want some (the committed ranges)", got, legacyReadings)
	}
	// The indexes of readings and meter_notes, the level being copied, were
	// dropped on the nodes and recorded there (built after it); those of the
	// complete tables are built again, and meters' key (readings' foreign
	// key references it) was never dropped.
	killed := nodeIndexes(t, c)
	for _, ix := range []string{"shard_0000.readings_pkey", "shard_0001.readings_tenant_hour", "shard_0002.meter_notes_pkey"} {
		if _, ok := killed[ix]; ok {
			t.Fatalf("after the kill in the copy of readings, index %s is on the nodes", ix)
		}
	}
	for _, ix := range []string{"shard_0000.meters_pkey", "shard_0001.meters_tenant", "shard_0002.buildings_pkey", "shard_0003.tariffs_pkey"} {
		if killed[ix] != indexesBefore[ix] {
			t.Fatalf("after the kill index %s is %q; want %q", ix, killed[ix], indexesBefore[ix])
		}
	}
	if got := deferredRows(t, c); got != 16*3 {
		t.Fatalf("after the kill %d indexes are recorded deferred; want 48 (in 16 shards readings' two and meter_notes' key: the last level)", got)
	}
	m, err := c.LoadMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Routing is unchanged: every shard is still served from the legacy database.
	if loc, _ := m.Locate(ids[0]); loc.Node.Name != "legacy" || loc.Shard.Schema != "public" {
		t.Fatalf("tenant %s is served from %s.%s", ids[0], loc.Node.Name, loc.Shard.Schema)
	}
	// Writes between the runs: to kept tables (buildings, meters, customers,
	// tariffs) and to redone ones (readings, meter_notes).
	for i, id := range ids[:12] {
		execSQL(t, legacy, `WITH b AS (INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'between runs', 'Lyon', 1) RETURNING id),
			m AS (INSERT INTO meters (tenant_id, building_id, energy, unit) SELECT $1, id, 'gas', 'm3' FROM b RETURNING id),
			r AS (INSERT INTO readings (meter_id, tenant_id, hour, value) SELECT id, $1, '2026-01-01', 1 FROM m)
			INSERT INTO meter_notes (meter_id, note) SELECT id, 'between runs' FROM m`, id)
		execSQL(t, legacy, `UPDATE customers SET plan = 'enterprise' WHERE tenant_id = $1`, id)
		if i%3 == 0 {
			execSQL(t, legacy, `DELETE FROM tariffs WHERE tenant_id = $1 AND energy = 'water'`, id)
			execSQL(t, legacy, `DELETE FROM readings WHERE tenant_id = $1 AND meter_id = (SELECT min(meter_id) FROM readings WHERE tenant_id = $1)`, id)
		}
	}

	res2, err := im.Start(ctx, StartOptions{Parallel: 3, UnitBytes: 4 * 8192})
	if err != nil {
		t.Fatal(err)
	}
	if !res2.Resumed || res2.TablesKept != res.Tables || res2.Tables+res2.TablesKept != 6 || res2.Copied != 16 || res2.CaughtUp == 0 ||
		res2.StartLSN != res.StartLSN || res2.CopyLSN <= res2.StartLSN {
		t.Fatalf("resume: %+v after %+v", res2, res)
	}
	if _, err := im.Start(ctx, StartOptions{}); err == nil {
		t.Fatal("a third start after every shard was copied succeeded")
	}
	// Every index and key is back as it was.
	if after := nodeIndexes(t, c); fmt.Sprint(after) != fmt.Sprint(indexesBefore) {
		t.Fatalf("indexes after the copy:\n%v\nbefore:\n%v", after, indexesBefore)
	}
	if got := deferredRows(t, c); got != 0 {
		t.Fatalf("after the copy %d indexes are still recorded deferred", got)
	}
	rep, err := im.Verify(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Shards != 16 || rep.Tenants != 60 || rep.Rows == 0 || !rep.OK() {
		t.Fatalf("verify after the resumed copy: %d shards, %d tenants, %d rows, mismatches %v", rep.Shards, rep.Tenants, rep.Rows, rep.Mismatches)
	}
	if err := lc.QueryRow(ctx, `SELECT count(*) FROM readings`).Scan(&legacyReadings); err != nil {
		t.Fatal(err)
	}
	if got := nodeRows(t, c, "readings"); got != legacyReadings {
		t.Fatalf("the shards hold %d readings; the legacy database %d", got, legacyReadings)
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
	stop := follow(ctx, t, im)
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
	stop = follow(ctx, t, im)
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
	stop = follow(ctx, t, im)
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
	initImport(ctx, t, c, im, legacy)
	res, err := im.Start(ctx, StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var full []string
	if err := c.Pool().QueryRow(ctx, `SELECT full_identity FROM pgtenant.imports`).Scan(&full); err != nil || len(full) != 0 || res.Copied != 2 {
		t.Fatalf("full_identity %v, %v; %d shards copied", full, err, res.Copied)
	}
}

// nodeRows counts the rows of table in every shard schema of every node of c.
func nodeRows(t *testing.T, c *catalog.Catalog, table string) int64 {
	t.Helper()
	ctx := ctxT(t)
	nodes, err := c.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, n := range nodes {
		conn, err := pgx.Connect(ctx, n.DSN)
		if err != nil {
			t.Fatal(err)
		}
		var q string
		err = conn.QueryRow(ctx, `SELECT string_agg(format('SELECT count(*) FROM %I.%I', nspname, $1::text), ' UNION ALL ') FROM pg_namespace WHERE nspname LIKE 'shard\_%'`, table).Scan(&q)
		if err == nil {
			var sum int64
			err = conn.QueryRow(ctx, `SELECT coalesce(sum(count), 0)::bigint FROM (`+q+`) x`).Scan(&sum)
			total += sum
		}
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
	}
	return total
}

// nodeIndexes maps each index of the shard schemas of every node of c
// (schema.name) to its definition, with its constraint's when it has one.
func nodeIndexes(t *testing.T, c *catalog.Catalog) map[string]string {
	t.Helper()
	ctx := ctxT(t)
	nodes, err := c.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, n := range nodes {
		conn, err := pgx.Connect(ctx, n.DSN)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := conn.Query(ctx, `SELECT n.nspname || '.' || ic.relname, pg_get_indexdef(i.indexrelid) || coalesce(' / ' || k.conname || ' ' || pg_get_constraintdef(k.oid), '')
			FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
			LEFT JOIN pg_constraint k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid AND k.contype IN ('p', 'u', 'x')
			WHERE n.nspname LIKE 'shard\_%'`)
		if err == nil {
			var name, def string
			_, err = pgx.ForEachRow(rows, []any{&name, &def}, func() error { out[name] = def; return nil })
		}
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// deferredRows counts the indexes recorded deferred on every node of c.
func deferredRows(t *testing.T, c *catalog.Catalog) int {
	t.Helper()
	ctx := ctxT(t)
	nodes, err := c.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, n := range nodes {
		conn, err := pgx.Connect(ctx, n.DSN)
		if err != nil {
			t.Fatal(err)
		}
		var k int
		err = conn.QueryRow(ctx, `SELECT CASE WHEN to_regclass('`+deferredIndexTable+`') IS NULL THEN 0 ELSE (SELECT count(*) FROM `+deferredIndexTable+`) END`).Scan(&k)
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		total += k
	}
	return total
}
