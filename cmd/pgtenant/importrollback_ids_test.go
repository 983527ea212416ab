package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestImportRollbackOthersWrite (issue 12): while a shard is cut over and
// rolled back, the tenants of the other shards keep inserting on the
// legacy database (they are not cut over), with ids from the legacy
// sequences, and the shard's tenants insert on the node with ids from the
// node's sequences. The rollback writes the node's rows back to the legacy
// tables without an id collision (23505), and every acknowledged write of
// both kinds is on the legacy database exactly once; for both import
// methods.
func TestImportRollbackOthersWrite(t *testing.T) {
	for _, method := range []string{"logical", "trigger"} {
		t.Run(method, func(t *testing.T) {
			addr, legacy, _, all, _ := importUnderLedgerWith(t, 40, 4, method, nodeB.NewDatabase)
			const shard = 1
			mine, others := shardTenantsAndOthers(t, shard, all)
			o := startLedger(t, addr, others, 2, "other")
			l := startLedger(t, addr, mine, 2, "mine")
			l.waitWrites(t, 30)
			t.Log(strings.TrimSpace(mustRun(t, "import", "cutover", "--shard", fmt.Sprint(shard))))
			l.waitWrites(t, 100) // on the node
			o.waitWrites(t, 100) // on the legacy database, in the same id range before the fix
			if code, out, errOut := pgtenant(t, "import", "rollback", "--shard", fmt.Sprint(shard)); code != 0 {
				t.Fatalf("import rollback: exit %d\n%s%s", code, out, errOut)
			} else {
				t.Log(strings.TrimSpace(out))
			}
			l.waitWrites(t, 30) // on the legacy database again
			o.waitWrites(t, 30)
			l.finish(t)
			o.finish(t)
			got := ledgerRows(t, legacy, "public")
			for _, a := range append(l.acks, o.acks...) {
				if got[a] != 1 {
					t.Errorf("acknowledged write %q of %q is on the legacy database %d times", a.name, a.tenant, got[a])
				}
			}
			t.Logf("%s: %d writes of the shard's tenants, %d of the others; client max latency %s, %s", method,
				len(l.acks), len(o.acks), max(l.maxLat, o.maxLat).Round(time.Millisecond), uptimeLoad())
		})
	}
}

// TestImportRollbackTriggerNode (issue 12): an import by trigger onto nodes
// without logical replication (wal_level=replica): the cutover cannot
// create a reverse slot on the node and installs capture triggers there
// instead; import rollback writes the captured changes (inserts, updates,
// deletes) back to the legacy database while the other tenants keep
// writing there. Every acknowledged write is on the legacy database exactly
// once, the updates and deletes made on the node are there too, the
// capture is gone from the node, and the shard cuts over again.
func TestImportRollbackTriggerNode(t *testing.T) {
	srv, err := pgtest.StartWith("rn", map[string]string{"wal_level": "replica"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	addr, legacy, nodes, all, _ := importUnderLedgerWith(t, 40, 4, "trigger", srv.NewDatabase)
	const shard = 2
	mine, others := shardTenantsAndOthers(t, shard, all)
	o := startLedger(t, addr, others, 2, "other")
	l := startLedger(t, addr, mine, 2, "mine")
	l.waitWrites(t, 30)
	if out := mustRun(t, "import", "cutover", "--shard", fmt.Sprint(shard)); !strings.Contains(out, "cut over") {
		t.Fatalf("import cutover: %s", out)
	}
	l.waitWrites(t, 100) // on the node
	o.waitWrites(t, 100)
	capture := 0
	for _, dsn := range nodes {
		capture += nodeInt(t, dsn, fmt.Sprintf(`SELECT count(*) FROM pg_trigger WHERE tgname = 'PGTENANT_import_rev_capture' AND tgrelid::regclass::text LIKE 'shard\_%04d.%%'`, shard))
	}
	if capture == 0 {
		t.Fatal("no capture trigger on the node's shard tables after the cutover")
	}

	// An update and a delete on the node, through the router.
	ctx := context.Background()
	rc, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(ctx)
	if _, err := rc.Exec(ctx, `SELECT set_config('pgtenant.tenant', $1, false)`, mine[0]); err != nil {
		t.Fatal(err)
	}
	var upd, del int64
	if err := rc.QueryRow(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'to update', 'Node', 1) RETURNING id`, mine[0]).Scan(&upd); err != nil {
		t.Fatal(err)
	}
	if err := rc.QueryRow(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'to delete', 'Node', 1) RETURNING id`, mine[0]).Scan(&del); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Exec(ctx, `UPDATE buildings SET floor_area_m2 = 42 WHERE id = $1`, upd); err != nil {
		t.Fatal(err)
	}
	if _, err := rc.Exec(ctx, `DELETE FROM buildings WHERE id = $1`, del); err != nil {
		t.Fatal(err)
	}

	if code, out, errOut := pgtenant(t, "import", "rollback", "--shard", fmt.Sprint(shard)); code != 0 {
		t.Fatalf("import rollback: exit %d\n%s%s", code, out, errOut)
	} else {
		t.Log(strings.TrimSpace(out))
	}
	l.waitWrites(t, 30) // on the legacy database again
	o.waitWrites(t, 30)
	l.finish(t)
	o.finish(t)
	got := ledgerRows(t, legacy, "public")
	for _, a := range append(l.acks, o.acks...) {
		if got[a] != 1 {
			t.Errorf("acknowledged write %q of %q is on the legacy database %d times", a.name, a.tenant, got[a])
		}
	}
	if n := nodeInt(t, legacy, fmt.Sprintf(`SELECT count(*) FROM buildings WHERE id = %d AND floor_area_m2 = 42`, upd)); n != 1 {
		t.Errorf("the row updated on the node: %d rows on the legacy database with the update", n)
	}
	if n := nodeInt(t, legacy, fmt.Sprintf(`SELECT count(*) FROM buildings WHERE id = %d`, del)); n != 0 {
		t.Errorf("the row deleted on the node: %d rows on the legacy database", n)
	}
	for _, dsn := range nodes {
		if n := nodeInt(t, dsn, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgtenant\_import\_rev\_%'`) +
			nodeInt(t, dsn, `SELECT count(*) FROM pg_trigger WHERE tgname = 'PGTENANT_import_rev_capture'`); n != 0 {
			t.Errorf("%d capture schemas and triggers left on a node after the rollback", n)
		}
	}
	// Cut over again: the node's copy was kept current.
	t.Log(strings.TrimSpace(mustRun(t, "import", "cutover", "--shard", fmt.Sprint(shard))))
	t.Logf("%d writes of the shard's tenants, %d of the others; client max latency %s, %s",
		len(l.acks), len(o.acks), max(l.maxLat, o.maxLat).Round(time.Millisecond), uptimeLoad())
}

// TestImportRollbackCollision (issue 12): a key written on the node since
// the cutover that the legacy database holds too (here a legacy row given
// that id by hand) stops import rollback with 23505, the table and the key,
// before anything is lost: the shard stays served by its node with every
// write, the rows are not skipped; once the legacy row is gone, the
// rollback resumes and every acknowledged write is on the legacy database
// exactly once.
func TestImportRollbackCollision(t *testing.T) {
	addr, legacy, _, all, _ := importUnderLedger(t, 40, 4)
	const shard = 3
	mine := shardTenants(t, shard)
	var other string
	for _, id := range all {
		if !slices.Contains(mine, id) {
			other = id
		}
	}
	l := startLedger(t, addr, mine, 2, "mine")
	l.waitWrites(t, 20)
	mustRun(t, "import", "cutover", "--shard", fmt.Sprint(shard))
	l.waitWrites(t, 50) // on the node

	ctx := context.Background()
	rc, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(ctx)
	if _, err := rc.Exec(ctx, `SELECT set_config('pgtenant.tenant', $1, false)`, mine[0]); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := rc.QueryRow(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'on the node', 'Node', 1) RETURNING id`, mine[0]).Scan(&id); err != nil {
		t.Fatal(err)
	}
	lc, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close(ctx)
	if _, err := lc.Exec(ctx, `INSERT INTO buildings (id, tenant_id, name, city, floor_area_m2) VALUES ($1, $2, 'same id on the legacy database', 'Legacy', 1)`, id, other); err != nil {
		t.Fatal(err)
	}

	code, out, errOut := pgtenant(t, "import", "rollback", "--shard", fmt.Sprint(shard))
	if code == 0 || !strings.Contains(errOut, "23505") || !strings.Contains(errOut, fmt.Sprintf("(id)=(%d)", id)) || !strings.Contains(errOut, "buildings") ||
		!strings.Contains(errOut, "hint:") || !strings.Contains(errOut, "nothing was lost") {
		t.Fatalf("import rollback with a legacy row holding a node's id: exit %d\n%s%s", code, out, errOut)
	}
	t.Log(strings.TrimSpace(errOut))
	// Still on the node, with every write so far.
	var path string
	if err := rc.QueryRow(ctx, `SHOW search_path`).Scan(&path); err != nil || !strings.Contains(path, fmt.Sprintf("shard_%04d", shard)) {
		t.Fatalf("search_path after the refused rollback %q, %v (want the shard's schema)", path, err)
	}
	l.waitWrites(t, 30)

	if _, err := lc.Exec(ctx, `DELETE FROM buildings WHERE id = $1 AND city = 'Legacy'`, id); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := pgtenant(t, "import", "rollback", "--shard", fmt.Sprint(shard)); code != 0 {
		t.Fatalf("import rollback again: exit %d\n%s%s", code, out, errOut)
	}
	l.waitWrites(t, 30)
	l.finish(t)
	got := ledgerRows(t, legacy, "public")
	for _, a := range l.acks {
		if got[a] != 1 {
			t.Errorf("acknowledged write %q of %q is on the legacy database %d times", a.name, a.tenant, got[a])
		}
	}
	if n := nodeInt(t, legacy, fmt.Sprintf(`SELECT count(*) FROM buildings WHERE id = %d AND name = 'on the node'`, id)); n != 1 {
		t.Errorf("the node's row with the colliding id: %d on the legacy database", n)
	}
}
