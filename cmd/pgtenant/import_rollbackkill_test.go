package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// waitFor polls cond every few milliseconds until it holds, failing the
// test after limit or when p (if not nil) exits first.
func waitFor(t *testing.T, what string, p *proc, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if p != nil {
			select {
			case err := <-p.exited:
				p.exited <- err
				t.Fatalf("%s: the process ended first (%v): %s%s", what, err, p.out.String(), p.errOut.String())
			default:
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; %s", what, limit, activity(t))
		}
		time.Sleep(3 * time.Millisecond)
	}
}

// activity lists the statements running in the databases of the test's
// servers, for a failure's message.
func activity(t *testing.T) string {
	var b strings.Builder
	for _, dsn := range []string{nodeA.Cluster.DSN("postgres"), nodeB.Cluster.DSN("postgres")} {
		c, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			continue
		}
		rows, _ := c.Query(context.Background(), `SELECT datname || ' ' || state || ' ' || coalesce(wait_event_type || ':' || wait_event, '') || ' ' || left(query, 200)
			FROM pg_stat_activity WHERE state IS NOT NULL AND state <> 'idle' AND pid <> pg_backend_pid()`)
		qs, _ := pgx.CollectRows(rows, pgx.RowTo[string])
		fmt.Fprintf(&b, "\n%s", strings.Join(qs, "\n"))
		c.Close(context.Background())
	}
	return "running:" + b.String()
}

// queryBool runs a query returning one bool on conn (false on an error).
func queryBool(conn *pgx.Conn, sql string, args ...any) bool {
	var b bool
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := conn.QueryRow(ctx, sql, args...).Scan(&b); err != nil {
		return false
	}
	return b
}

// TestImportRollbackQueueKills (issue 12): an import by trigger onto nodes
// without logical replication, so the cutover captures the shard's writes
// on its node with triggers and import rollback writes that queue back.
// The rollback's process (the built binary) is SIGKILLed at each step:
// while it writes a large queue back, before its fence, under its fence,
// and after its flip (its capture triggers half dropped), each time started
// again; after the last kill the shard is also cut over again directly and
// rolled back once more. Writers go through the router the whole time:
// every acknowledged write is on the legacy database exactly once after
// each finished rollback, and on the nodes exactly once at the end.
func TestImportRollbackQueueKills(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "pgtenant")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	srv, err := pgtest.StartWith("rk", map[string]string{"wal_level": "replica"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	addr, legacy, nodes, all, stopStart := importUnderLedgerWith(t, 40, 4, "trigger", srv.NewDatabase)
	ctx := context.Background()
	const shard = 2
	schema := fmt.Sprintf("shard_%04d", shard)
	mine, others := shardTenantsAndOthers(t, shard, all)
	connect := func(dsn string) *pgx.Conn {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	// Locks are taken on connections of their own: pg_stat_activity is
	// read once per transaction.
	cat, catLock := connect(mustEnv(t, "PGTENANT_CATALOG")), connect(mustEnv(t, "PGTENANT_CATALOG"))
	lc, lcLock := connect(legacy), connect(legacy)
	var node string
	if err := cat.QueryRow(ctx, `SELECT n.dsn FROM pgtenant.shards s JOIN pgtenant.nodes n ON n.name = s.node WHERE s.id = $1`, shard).Scan(&node); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(nodes, node) {
		t.Fatalf("shard %d on %s, not one of the nodes %v", shard, node, nodes)
	}
	nc, ncLock := connect(node), connect(node)
	state := func() string {
		st, imp, err := shardState(ctx, cat, shard)
		if err != nil {
			t.Fatal(err)
		}
		return st + " " + imp
	}
	lm := startLedger(t, addr, mine, 2, "mine")
	lo := startLedger(t, addr, others, 1, "other")
	lm.waitWrites(t, 20)
	cutover := func() {
		t.Helper()
		if out := mustRun(t, "import", "cutover", "--shard", fmt.Sprint(shard)); !strings.Contains(out, "cut over") {
			t.Fatalf("import cutover: %s", out)
		}
		if n := nodeInt(t, node, `SELECT count(*) FROM pg_trigger WHERE tgname = 'PGTENANT_import_rev_capture' AND tgrelid::regclass::text LIKE $1`, schema+".%"); n != 6 {
			t.Fatalf("%d capture triggers on the node's shard tables after the cutover, want 6", n)
		}
	}
	rc := connect(fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
	rollback := func() *proc { return startProc(t, bin, "import", "rollback", "--shard", fmt.Sprint(shard)) }
	checkLegacy := func(when string) {
		t.Helper()
		lm.mu.Lock()
		acks := slices.Clone(lm.acks)
		lm.mu.Unlock()
		got := ledgerRows(t, legacy, "public")
		onNode := ledgerRows(t, node, schema)
		bad := 0
		for _, a := range acks {
			if got[a] != 1 {
				if bad++; bad <= 10 {
					t.Errorf("%s: acknowledged write %q of %q is on the legacy database %d times (on the node %d times)", when, a.name, a.tenant, got[a], onNode[a])
				}
			}
		}
		if bad > 0 {
			var paths []string
			for _, id := range mine {
				if _, err := rc.Exec(ctx, `SELECT set_config('pgtenant.tenant', $1, false)`, id); err != nil {
					t.Fatal(err)
				}
				var p string
				if err := rc.QueryRow(ctx, `SHOW search_path`).Scan(&p); err != nil {
					t.Fatal(err)
				}
				paths = append(paths, id+": "+p)
			}
			t.Fatalf("%s: %d of %d acknowledged writes not on the legacy database exactly once; the shard's tenants through the router: %s; shard %s",
				when, bad, len(acks), strings.Join(paths, ", "), state())
		}
	}
	cutover()
	lm.waitWrites(t, 50) // on the node

	// 1. Killed while it writes a large queue back: a bulk insert on the
	// node, through the router, makes the first round long.
	if _, err := rc.Exec(ctx, `SELECT set_config('pgtenant.tenant', $1, false)`, mine[0]); err != nil {
		t.Fatal(err)
	}
	const bulk = 30000
	if _, err := rc.Exec(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) SELECT $1, 'bulk ' || g, 'Bulk', g FROM generate_series(1, $2) g`, mine[0], bulk); err != nil {
		t.Fatal(err)
	}
	p := rollback()
	waitFor(t, "the write back on the legacy database", p, 2*time.Minute, func() bool {
		return queryBool(lc, `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND query LIKE '%OVERRIDING SYSTEM VALUE%' AND state <> 'idle')`)
	})
	p.kill()
	if st := state(); st != "active cutover" {
		t.Fatalf("killed during the write back, the shard is %q", st)
	}
	if n := nodeInt(t, legacy, `SELECT count(*) FROM buildings WHERE city = 'Bulk'`); n != 0 {
		t.Fatalf("killed during the write back: %d of its rows on the legacy database (one transaction per round)", n)
	}
	lm.waitWrites(t, 20) // still on the node

	// 2. Killed before its fence: a row lock on the shard's catalog row
	// holds the fence up.
	lock, err := catLock.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `SELECT FROM pgtenant.shards WHERE id = $1 FOR NO KEY UPDATE`, shard); err != nil {
		t.Fatal(err)
	}
	fenceWaits := func() bool {
		return queryBool(cat, `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%fence_leases%')`)
	}
	p = rollback()
	waitFor(t, "the rollback waiting for its fence", p, 3*time.Minute, fenceWaits)
	p.kill()
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	// The killed process's catalog session, blocked on the lock, may still
	// commit the fence once the lock goes (the server notices the closed
	// socket only when it next reads): the fence's lease then lapses and
	// the routers release it. Either way the shard ends back on its node.
	for deadline := time.Now().Add(time.Minute); state() != "active cutover"; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("killed before the fence, the shard is %q a minute later", state())
		}
	}
	if n := nodeInt(t, legacy, `SELECT count(*) FROM buildings WHERE city = 'Bulk'`); n != bulk {
		t.Fatalf("killed before the fence: %d bulk rows on the legacy database, want %d (written back before the fence)", n, bulk)
	}
	lm.waitWrites(t, 20)

	// 3. Killed under its fence: the fence is let through, then the last
	// round's legacy transaction waits for a lock on the rollback's
	// position table. The fence's lease lapses, the routers release the
	// held transactions to the node.
	if lock, err = catLock.Begin(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `SELECT FROM pgtenant.shards WHERE id = $1 FOR NO KEY UPDATE`, shard); err != nil {
		t.Fatal(err)
	}
	p = rollback()
	waitFor(t, "the rollback waiting for its fence", p, 3*time.Minute, fenceWaits)
	llock, err := lcLock.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := llock.Exec(ctx, `LOCK TABLE pgtenant_stream.reverse_queue IN EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the fenced rollback's last round", p, time.Minute, func() bool {
		st, _, err := shardState(ctx, cat, shard)
		return err == nil && st == "fenced" && queryBool(lc, `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%reverse_queue%')`)
	})
	p.kill()
	if err := llock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the lapsed fence's release", nil, 30*time.Second, func() bool { return state() == "active cutover" })
	lm.waitWrites(t, 20) // released on the node when the lease lapsed

	// 4. Killed after its flip: a lock on the node's customers table holds
	// up the drop of the capture triggers after buildings' went.
	captured := func(table string) bool {
		return queryBool(nc, `SELECT EXISTS (SELECT FROM pg_trigger WHERE tgname = 'PGTENANT_import_rev_capture' AND tgrelid = $1::regclass)`, pgx.Identifier{schema, table}.Sanitize())
	}
	killAfterFlip := func() { // a rollback killed after its flip, the drop of customers' trigger held up
		nlock, err := ncLock.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := nlock.Exec(ctx, `LOCK TABLE `+pgx.Identifier{schema, "customers"}.Sanitize()+` IN ROW EXCLUSIVE MODE`); err != nil {
			t.Fatal(err)
		}
		p = rollback()
		waitFor(t, "the rollback's flip and the drop of buildings' trigger", p, 3*time.Minute, func() bool {
			_, imp, err := shardState(ctx, cat, shard)
			return err == nil && imp == "copied" && !captured("buildings")
		})
		p.kill()
		if err := nlock.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
	}
	killAfterFlip()
	if !captured("customers") {
		t.Fatal("the drop of the capture triggers was not held up")
	}
	lm.waitWrites(t, 30) // on the legacy database
	checkLegacy("after the rollback killed after its flip")
	// Run again, it finishes: the capture it left on the node goes.
	p = rollback()
	if err := <-p.exited; err != nil {
		t.Fatalf("import rollback again after a kill after its flip: %v\n%s%s", err, p.out.String(), p.errOut.String())
	}
	t.Log(strings.TrimSpace(p.out.String()))
	if n := nodeInt(t, node, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgtenant\_import\_rev\_%'`) +
		nodeInt(t, node, `SELECT count(*) FROM pg_trigger WHERE tgname = 'PGTENANT_import_rev_capture'`); n != 0 {
		t.Errorf("%d capture schemas and triggers left on the node after the rollback ran again", n)
	}

	// 5. Killed after its flip again, and this time cut over again without
	// running it again: the cutover captures every table again.
	cutover()
	lm.waitWrites(t, 50)
	killAfterFlip()
	lm.waitWrites(t, 30)
	cutover()
	lm.waitWrites(t, 50) // on the node: captured for the next rollback
	if out := mustRun(t, "import", "rollback", "--shard", fmt.Sprint(shard)); !strings.Contains(out, "back on the legacy database") {
		t.Fatalf("import rollback: %s", out)
	}
	lm.waitWrites(t, 30)
	checkLegacy("after the last rollback")

	// Every shard cut over: every write on the nodes exactly once.
	mustRun(t, "import", "cutover", "--all", "--parallel", "2")
	lm.waitWrites(t, 30)
	lm.finish(t)
	lo.finish(t)
	stopStart()
	mustRun(t, "import", "finish")
	checkOnShards(t, nodes, lm, lo)
	if bulkOnNodes := nodeInt(t, node, fmt.Sprintf(`SELECT count(*) FROM %s.buildings WHERE city = 'Bulk'`, pgx.Identifier{schema}.Sanitize())); bulkOnNodes != bulk {
		t.Errorf("%d bulk rows on the nodes at the end, want %d", bulkOnNodes, bulk)
	}
	t.Logf("%d writes of the shard's tenants, %d of the others; client max latency %s, %s", len(lm.acks), len(lo.acks),
		max(lm.maxLat, lo.maxLat).Round(time.Millisecond), uptimeLoad())
}
