package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// importShardStates reads every shard's catalog node and import state.
func importShardStates(t *testing.T) map[int]string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, mustEnv(t, "PGTENANT_CATALOG"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT s.id, s.node || ' ' || s.state || ' ' || i.state FROM pgtenant.shards s JOIN pgtenant.import_shards i ON i.shard = s.id`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	var id int
	var st string
	if _, err := pgx.ForEachRow(rows, []any{&id, &st}, func() error { out[id] = st; return nil }); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestImportRollbackOneOfMany (issue 12): every shard cut over with
// `import cutover --all --parallel`, then one of them rolled back while
// writers write through the router for every tenant: the other shards stay
// on their nodes (catalog, search_path) and keep taking writes during and
// after the rollback; the rolled-back shard is served from the legacy
// database with every write it took on its node, and is cut over again.
// Every acknowledged write is on the nodes exactly once at the end, and no
// client saw an error.
func TestImportRollbackOneOfMany(t *testing.T) {
	addr, legacy, nodes, all, stopStart := importUnderLedger(t, 80, 8)
	const shard = 5
	mine, others := shardTenantsAndOthers(t, shard, all)
	lm := startLedger(t, addr, mine, 2, "mine")
	lo := startLedger(t, addr, others, 2, "other")
	lm.waitWrites(t, 30)
	lo.waitWrites(t, 30)
	out := mustRun(t, "import", "cutover", "--all", "--parallel", "4")
	if n := strings.Count(out, "cut over to node"); n != 8 {
		t.Fatalf("import cutover --all --parallel 4: %d shards cut over, want 8:\n%s", n, out)
	}
	lm.waitWrites(t, 100) // on the nodes
	lo.waitWrites(t, 100)
	before := importShardStates(t)
	for id, st := range before {
		if !strings.HasSuffix(st, " active cutover") {
			t.Fatalf("shard %d after cutover --all: %s", id, st)
		}
	}

	// The others' writes go on while the shard rolls back.
	fromOthers := lo.n.Load()
	out = mustRun(t, "import", "rollback", "--shard", fmt.Sprint(shard))
	t.Log(strings.TrimSpace(out))
	if !strings.Contains(out, fmt.Sprintf("shard %d: back on the legacy database", shard)) {
		t.Fatalf("import rollback: %s", out)
	}
	duringRollback := lo.n.Load() - fromOthers
	lo.waitWrites(t, 50)
	lm.waitWrites(t, 50) // on the legacy database
	after := importShardStates(t)
	for id, st := range before {
		want := st
		if id == shard {
			want = strings.Replace(st, " cutover", " copied", 1)
		}
		if after[id] != want {
			t.Errorf("shard %d after the rollback of shard %d: %q, want %q", id, shard, after[id], want)
		}
	}
	ctx := context.Background()
	rc, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(ctx)
	searchPath := func(tenant string) string {
		if _, err := rc.Exec(ctx, `SELECT set_config('pgtenant.tenant', $1, false)`, tenant); err != nil {
			t.Fatal(err)
		}
		var path string
		if err := rc.QueryRow(ctx, `SHOW search_path`).Scan(&path); err != nil {
			t.Fatal(err)
		}
		return path
	}
	if p := searchPath(mine[0]); !strings.HasPrefix(p, "public,") {
		t.Errorf("a tenant of the rolled-back shard has search_path %q, want the legacy schema", p)
	}
	for _, id := range others[:5] {
		if p := searchPath(id); !strings.HasPrefix(p, "shard_") {
			t.Errorf("tenant %q of a shard not rolled back has search_path %q, want its shard's schema", id, p)
		}
	}
	// Every write of the shard's tenants is on the legacy database once.
	lm.mu.Lock()
	acked := slices.Clone(lm.acks)
	lm.mu.Unlock()
	onLegacy := ledgerRows(t, legacy, "public")
	for _, a := range acked {
		if onLegacy[a] != 1 {
			t.Errorf("after the rollback, acknowledged write %q of %q is on the legacy database %d times", a.name, a.tenant, onLegacy[a])
		}
	}

	// Cut over again, the others still writing.
	out = mustRun(t, "import", "cutover", "--shard", fmt.Sprint(shard))
	t.Log(strings.TrimSpace(out))
	lm.waitWrites(t, 50) // on the node again
	lo.waitWrites(t, 50)
	lm.finish(t)
	lo.finish(t)
	if st := importShardStates(t)[shard]; st != before[shard] {
		t.Errorf("shard %d after its second cutover: %q, want %q", shard, st, before[shard])
	}
	stopStart()
	mustRun(t, "import", "finish")
	onNodes := checkOnShards(t, nodes, lm, lo)
	if n, k := len(onNodes), len(lm.acks)+len(lo.acks); n != k {
		t.Errorf("%d ledger rows on the nodes, %d writes acknowledged", n, k)
	}
	t.Logf("%d writes of the rolled-back shard's tenants, %d of the others (%d while the rollback ran); client max latency %s (others %s), %s",
		len(lm.acks), len(lo.acks), duringRollback, lm.maxLat.Round(time.Millisecond), lo.maxLat.Round(time.Millisecond), uptimeLoad())
}

// startSessionLedger is startLedger with a new router session per write
// (connect, name the tenant, insert, close), as a short-lived client does.
func startSessionLedger(t *testing.T, addr string, ids []string, writers int, prefix string) *ledger {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	l := &ledger{stop: cancel}
	for w := 0; w < writers; w++ {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				tenant := ids[(i*writers+w)%len(ids)]
				name := fmt.Sprintf("%s w%d n%d", prefix, w, i)
				t0 := time.Now()
				qctx, qcancel := context.WithTimeout(context.Background(), 30*time.Second)
				conn, err := pgx.Connect(qctx, fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
				if err == nil {
					err = writeLedgerRow(qctx, conn, tenant, name, i)
					conn.Close(context.Background())
				}
				qcancel()
				l.record(tenant, name, time.Since(t0), err)
			}
		}()
	}
	return l
}

// TestImportRollbackNewSessions (issue 12): a shard rolled back while its
// tenants' clients open a new router session for every write (found on a
// walk through the README with psql): every acknowledged write is on the
// legacy database exactly once after the rollback, none left only on the
// node.
func TestImportRollbackNewSessions(t *testing.T) {
	addr, legacy, _, _, _ := importUnderLedger(t, 40, 4)
	const shard = 1
	mine := shardTenants(t, shard)
	l := startSessionLedger(t, addr, mine, 3, "s")
	l.waitWrites(t, 20)
	for round := 0; round < 3; round++ {
		t.Log(strings.TrimSpace(mustRun(t, "import", "cutover", "--shard", fmt.Sprint(shard))))
		l.waitWrites(t, 30) // on the node
		t.Log(strings.TrimSpace(mustRun(t, "import", "rollback", "--shard", fmt.Sprint(shard))))
		l.waitWrites(t, 30) // on the legacy database
	}
	l.finish(t)
	got := ledgerRows(t, legacy, "public")
	for _, a := range l.acks {
		if got[a] != 1 {
			t.Errorf("acknowledged write %q of %q is on the legacy database %d times", a.name, a.tenant, got[a])
		}
	}
	t.Logf("%d writes, each in a new session; client max latency %s, %s", len(l.acks), l.maxLat.Round(time.Millisecond), uptimeLoad())
}
