package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// ack is one write a client had acknowledged through the router.
type ack struct{ tenant, name string }

// TestImportEndToEnd (issue 12): a legacy database shaped like the demo's
// energy app with 1,000 tenants moves onto two nodes while clients write
// through the router the whole time: import init, schema, start (copy and
// stream), verify, cutover of every shard in waves, finish. Every write a
// client had acknowledged is on its tenant's shard exactly once, and no
// client saw an error.
func TestImportEndToEnd(t *testing.T) {
	f := newImportFixture(t, 16, 2, 1000)
	ids, n1, n2 := f.ids, f.nodes[0], f.nodes[1]
	addr := startRouterCmd(t)

	// Writers through the router, from before the copy to after the last cutover.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	wctx, stopWriters := context.WithCancel(ctx)
	var paused sync.RWMutex // held for writing while verify reads at rest
	const writers = 4
	acks := make([][]ack, writers)
	errs := make([][]error, writers)
	maxLat := make([]time.Duration, writers)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
			if err != nil {
				errs[w] = append(errs[w], err)
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewPCG(uint64(w), 12))
			for i := 0; wctx.Err() == nil; i++ {
				paused.RLock()
				tenant := ids[rng.IntN(len(ids))]
				name := fmt.Sprintf("ledger w%d n%d", w, i)
				t0 := time.Now()
				err := writeLedgerRow(ctx, conn, tenant, name, i)
				if d := time.Since(t0); d > maxLat[w] {
					maxLat[w] = d
				}
				paused.RUnlock()
				if err != nil {
					errs[w] = append(errs[w], fmt.Errorf("%s for %q: %w", name, tenant, err))
					continue
				}
				acks[w] = append(acks[w], ack{tenant, name})
			}
		}()
	}

	// import start copies, then follows until cancelled.
	importStart := runImportStart(t, "--parallel", "3")

	// Verify at rest: writers wait a moment, the stream catches up.
	paused.Lock()
	for i := 0; ; i++ {
		code, out, _ := pgtenant(t, "import", "verify")
		if code == 0 {
			if !strings.Contains(out, "16 shards, 1000 tenants, 6 tables") {
				t.Fatalf("import verify: %s", out)
			}
			break
		}
		if i == 300 {
			t.Fatalf("import verify never matched: %s", out)
		}
		time.Sleep(100 * time.Millisecond)
	}
	paused.Unlock()

	// Cutover in waves: a canary, three shards together, then the rest.
	var pauses []string
	for _, wave := range [][]string{{"--shard", "5"}, {"--shard", "0", "--shard", "1", "--shard", "2", "--parallel", "3"}, {"--all", "--parallel", "4"}} {
		out := mustRun(t, append([]string{"import", "cutover"}, wave...)...)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if !strings.Contains(line, "cut over to node") {
				t.Fatalf("cutover %v: %s", wave, out)
			}
			pauses = append(pauses, line[strings.Index(line, "pause ")+6:strings.Index(line, " (")])
			t.Log(line)
		}
		time.Sleep(300 * time.Millisecond) // writes land on the cut-over shards between waves
	}
	if len(pauses) != 16 {
		t.Fatalf("%d shards cut over, want 16", len(pauses))
	}
	time.Sleep(300 * time.Millisecond)
	stopWriters()
	wg.Wait()
	importStart.stop(t)
	mustRun(t, "import", "finish")
	if out := mustRun(t, "node", "list"); strings.Contains(out, "legacy") {
		t.Fatalf("the legacy node is still registered:\n%s", out)
	}

	// The ledger: every acknowledged write once on its tenant's shard, no error.
	total := 0
	for w := 0; w < writers; w++ {
		for _, e := range errs[w] {
			t.Errorf("writer %d: %v", w, e)
		}
		total += len(acks[w])
	}
	if total < 100 {
		t.Fatalf("only %d writes were acknowledged", total)
	}
	got := map[ack]int{}
	for _, dsn := range []string{n1, n2} {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := conn.Query(ctx, `SELECT string_agg(format('SELECT tenant_id, name FROM %I.buildings WHERE city = %L', nspname, 'Ledger'), ' UNION ALL ') FROM pg_namespace WHERE nspname LIKE 'shard\_%'`)
		if err != nil {
			t.Fatal(err)
		}
		q, err := pgx.CollectExactlyOneRow(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		rows, err = conn.Query(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		var a ack
		if _, err := pgx.ForEachRow(rows, []any{&a.tenant, &a.name}, func() error { got[a]++; return nil }); err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
	}
	for w := 0; w < writers; w++ {
		for _, a := range acks[w] {
			if got[a] != 1 {
				t.Errorf("acknowledged write %q of %q is on the shards %d times", a.name, a.tenant, got[a])
			}
		}
	}
	var lat time.Duration
	for _, d := range maxLat {
		lat = max(lat, d)
	}
	t.Logf("%d acknowledged writes by %d clients; client max latency %s; cutover pauses %s", total, writers, lat.Round(time.Millisecond), strings.Join(pauses, " "))
}
