package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// importUnderLedger sets up an import of a legacy database with n tenants
// onto two nodes with shards shards, starts a router and import start (copy,
// then streaming), and returns the router's address, the legacy and node
// DSNs, the tenant ids and a function that stops import start.
func importUnderLedger(t *testing.T, n, shards int) (addr, legacy string, nodes []string, ids []string, stopStart func()) {
	t.Helper()
	return importUnderLedgerWith(t, n, shards, "logical", nodeB.NewDatabase)
}

// importUnderLedgerWith is importUnderLedger with the import's method
// (logical or trigger: import init and import start --method) and the
// nodes' databases made by newNode.
func importUnderLedgerWith(t *testing.T, n, shards int, method string, newNode func(testing.TB) string) (addr, legacy string, nodes []string, ids []string, stopStart func()) {
	t.Helper()
	f := newImportFixtureWith(t, fixtureOptions{Shards: shards, Nodes: 2, Tenants: n, Method: method, NewNode: newNode})
	legacy, ids = f.legacy, f.ids
	n1, n2 := f.nodes[0], f.nodes[1]
	addr = startRouterCmd(t)
	r := runImportStart(t, "--parallel", "2", "--method", method)
	stopStart = func() {
		if err := r.end(); err != nil {
			t.Error(err)
		}
	}
	return addr, legacy, []string{n1, n2}, ids, stopStart
}

// waitStreaming waits until import status says the stream (or, for the
// trigger method, the queue's follower) runs.
func waitStreaming(t *testing.T, done <-chan string) {
	t.Helper()
	for i := 0; ; i++ {
		if out := mustRun(t, "import", "status"); strings.Contains(out, ": streaming;") && (strings.Contains(out, "(streaming: true)") || strings.Contains(out, "(following: true)")) {
			return
		}
		select {
		case s := <-done:
			t.Fatalf("import start ended early: %s", s)
		case <-time.After(200 * time.Millisecond):
		}
		if i > 1500 {
			t.Fatal("import start never reached streaming")
		}
	}
}

// ledger runs writers through the router, each inserting numbered rows of
// buildings for tenants picked from ids, until stopped; it keeps the writes
// acknowledged and the errors.
type ledger struct {
	mu     sync.Mutex
	acks   []ack
	errs   []error
	maxLat time.Duration
	n      atomic.Int64
	stop   context.CancelFunc
	wg     sync.WaitGroup
}

func startLedger(t *testing.T, addr string, ids []string, writers int, prefix string) *ledger {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &ledger{stop: cancel}
	for w := 0; w < writers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			conn, err := pgx.Connect(context.Background(), fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
			if err != nil {
				l.mu.Lock()
				l.errs = append(l.errs, err)
				l.mu.Unlock()
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; ctx.Err() == nil; i++ {
				tenant := ids[rng.IntN(len(ids))]
				name := fmt.Sprintf("%s w%d n%d", prefix, w, i)
				t0 := time.Now()
				qctx, qcancel := context.WithTimeout(context.Background(), 30*time.Second)
				err := writeLedgerRow(qctx, conn, tenant, name, i)
				qcancel()
				l.record(tenant, name, time.Since(t0), err)
				if err != nil && conn.IsClosed() {
					return
				}
				time.Sleep(time.Millisecond) // a shared machine
			}
		}()
	}
	return l
}

// checkOnShards counts the ledger's rows on the shard schemas of the nodes'
// databases, fails the test for each acknowledged write of ledgers not
// there exactly once, and returns the counts.
func checkOnShards(t *testing.T, nodes []string, ledgers ...*ledger) map[ack]int {
	t.Helper()
	got := map[ack]int{}
	for _, dsn := range nodes {
		for a, k := range ledgerRows(t, dsn, "shard\\_%") {
			got[a] += k
		}
	}
	for _, l := range ledgers {
		for _, a := range l.acks {
			if got[a] != 1 {
				t.Errorf("acknowledged write %q of %q is on the shards %d times", a.name, a.tenant, got[a])
			}
		}
	}
	return got
}

// writeLedgerRow names tenant on conn (for the session) and inserts its
// ledger row name (floor area i) into buildings.
func writeLedgerRow(ctx context.Context, conn *pgx.Conn, tenant, name string, i int) error {
	if _, err := conn.Exec(ctx, `SELECT set_config('pgtenant.tenant', $1, false)`, tenant); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, $2, 'Ledger', $3)`, tenant, name, i)
	return err
}

// record notes a write's outcome (acknowledged, or its error) and latency.
func (l *ledger) record(tenant, name string, d time.Duration, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.maxLat = max(l.maxLat, d)
	if err != nil {
		l.errs = append(l.errs, fmt.Errorf("%s for %q: %w", name, tenant, err))
		return
	}
	l.acks = append(l.acks, ack{tenant, name})
	l.n.Add(1)
}

// waitWrites waits until k more writes were acknowledged.
func (l *ledger) waitWrites(t *testing.T, k int64) {
	t.Helper()
	from := l.n.Load()
	for i := 0; l.n.Load() < from+k; i++ {
		if i > 3000 {
			t.Fatalf("writers stalled: %d writes in 30s", l.n.Load()-from)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (l *ledger) finish(t *testing.T) {
	l.stop()
	l.wg.Wait()
	for _, e := range l.errs {
		t.Errorf("writer: %v", e)
	}
}

// ledgerRows counts the ledger's rows per write in the buildings tables of
// the given schemas of the database of dsn.
func ledgerRows(t *testing.T, dsn string, schemaLike string) map[ack]int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var q *string
	if err := conn.QueryRow(ctx, `SELECT string_agg(format('SELECT tenant_id, name FROM %I.buildings WHERE city = %L', n.nspname, 'Ledger'), ' UNION ALL ')
		FROM pg_namespace n WHERE n.nspname LIKE $1 AND to_regclass(quote_ident(n.nspname) || '.buildings') IS NOT NULL`, schemaLike).Scan(&q); err != nil {
		t.Fatal(err)
	}
	got := map[ack]int{}
	if q == nil {
		return got
	}
	rows, err := conn.Query(ctx, *q)
	if err != nil {
		t.Fatal(err)
	}
	var a ack
	if _, err := pgx.ForEachRow(rows, []any{&a.tenant, &a.name}, func() error { got[a]++; return nil }); err != nil {
		t.Fatal(err)
	}
	return got
}

// shardTenants returns the tenants of shard (from the catalog).
func shardTenants(t *testing.T, shard int) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, mustEnv(t, "PGTENANT_CATALOG"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT id FROM pgtenant.tenants WHERE shard = $1 ORDER BY id`, shard)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(ids) == 0 {
		t.Fatalf("tenants of shard %d: %v %v", shard, ids, err)
	}
	return ids
}

// shardTenantsAndOthers returns the tenants of shard and those of all
// that are not on it.
func shardTenantsAndOthers(t *testing.T, shard int, all []string) (mine, others []string) {
	t.Helper()
	mine = shardTenants(t, shard)
	for _, id := range all {
		if !slices.Contains(mine, id) {
			others = append(others, id)
		}
	}
	return mine, others
}

// TestImportRollback (issue 12): a shard cut over to its node takes writes
// through the router; import rollback serves it from the legacy database
// again with those writes: every acknowledged write is on the legacy
// database exactly once and served from there, no client saw an error. Cut
// over again, every write is on the node exactly once.
func TestImportRollback(t *testing.T) {
	addr, legacy, nodes, _, stopStart := importUnderLedger(t, 60, 4)
	const shard = 2
	ids := shardTenants(t, shard)
	l := startLedger(t, addr, ids, 3, "first")
	l.waitWrites(t, 50)

	out := mustRun(t, "import", "cutover", "--shard", fmt.Sprint(shard))
	t.Log(strings.TrimSpace(out))
	l.waitWrites(t, 200) // on the node
	onNode := l.n.Load()
	if code, o, e := pgtenant(t, "import", "rollback", "--shard", "1"); code != 1 || !strings.Contains(e, "only a cut-over shard rolls back") {
		t.Fatalf("rollback of a shard not cut over: exit %d\n%s%s", code, o, e)
	}
	out = mustRun(t, "import", "rollback", "--shard", fmt.Sprint(shard))
	t.Log(strings.TrimSpace(out))
	if !strings.Contains(out, "back on the legacy database with") {
		t.Fatalf("import rollback: %s", out)
	}
	l.waitWrites(t, 100) // on the legacy database again
	if st := mustRun(t, "import", "status"); !strings.Contains(st, "copied") {
		t.Fatalf("import status after the rollback:\n%s", st)
	}

	// Served from the legacy database: a write through the router lands there.
	ctx := context.Background()
	rc, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(ctx)
	if _, err := rc.Exec(ctx, `SELECT set_config('pgtenant.tenant', $1, false)`, ids[0]); err != nil {
		t.Fatal(err)
	}
	var path string
	if err := rc.QueryRow(ctx, `SHOW search_path`).Scan(&path); err != nil || !strings.HasPrefix(path, "public,") {
		t.Fatalf("search_path after the rollback %q, %v (want the legacy schema)", path, err)
	}
	l.stop()
	l.wg.Wait()
	got := ledgerRows(t, legacy, "public")
	for _, a := range l.acks {
		if got[a] != 1 {
			t.Errorf("acknowledged write %q of %q is on the legacy database %d times", a.name, a.tenant, got[a])
		}
	}
	var viaRouter int
	if err := rc.QueryRow(ctx, `SELECT count(*) FROM buildings WHERE city = 'Ledger' AND tenant_id = $1`, ids[0]).Scan(&viaRouter); err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, a := range l.acks {
		if a.tenant == ids[0] {
			want++
		}
	}
	if viaRouter != want {
		t.Errorf("tenant %q: %d ledger rows through the router, %d acknowledged", ids[0], viaRouter, want)
	}
	acked := len(l.acks)
	if int64(acked) < onNode {
		t.Fatalf("%d writes acknowledged, %d before the rollback", acked, onNode)
	}

	// Cut over again: the node's copy was kept up to date by the stream.
	l2 := startLedger(t, addr, ids, 2, "second")
	l2.waitWrites(t, 50)
	t.Log(strings.TrimSpace(mustRun(t, "import", "cutover", "--shard", fmt.Sprint(shard))))
	l2.waitWrites(t, 50)
	l2.finish(t)
	for _, e := range l.errs {
		t.Errorf("writer: %v", e)
	}
	onNodes := map[ack]int{}
	for _, dsn := range nodes {
		for a, k := range ledgerRows(t, dsn, fmt.Sprintf("shard\\_%04d", shard)) {
			onNodes[a] += k
		}
	}
	for _, a := range append(l.acks, l2.acks...) {
		if onNodes[a] != 1 {
			t.Errorf("after the second cutover, acknowledged write %q of %q is on the node %d times", a.name, a.tenant, onNodes[a])
		}
	}
	mustRun(t, "import", "cutover", "--all", "--no-rollback")
	stopStart()
	mustRun(t, "import", "finish")
	for _, dsn := range append(nodes, legacy) {
		if n := nodeInt(t, dsn, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`) + nodeInt(t, dsn, `SELECT count(*) FROM pg_publication`); n != 0 {
			t.Errorf("%d slots and publications left after import finish", n)
		}
	}
	t.Logf("%d writes acknowledged (%d before the rollback, %d after the second cutover's start); client max latency %s, %s",
		len(l.acks)+len(l2.acks), onNode, len(l2.acks), max(l.maxLat, l2.maxLat).Round(time.Millisecond), uptimeLoad())
}

func mustEnv(t *testing.T, name string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("%s is not set", name)
	}
	return v
}

// uptimeLoad is the machine's load average, for figures in test logs.
func uptimeLoad() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load unknown"
	}
	return "load " + strings.Join(strings.Fields(string(b))[:3], " ")
}

// dropSlotsAtEnd drops, when the test ends, the replication slots left in
// the databases (a test that failed before import finish), so that they can
// be dropped.
func dropSlotsAtEnd(t *testing.T, dsns ...string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for _, dsn := range dsns {
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				continue
			}
			for i := 0; i < 50; i++ {
				var left int
				_ = conn.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE database = current_database()`).Scan(&left)
				if left == 0 {
					break
				}
				_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE database = current_database() AND active_pid IS NOT NULL`)
				_, _ = conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database() AND NOT active`)
				time.Sleep(100 * time.Millisecond)
			}
			conn.Close(ctx)
		}
	})
}
