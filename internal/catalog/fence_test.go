package catalog

import (
	"strings"
	"sync"
	"testing"
)

// TestReleaseExpiredFences: only a fence whose lease lapsed is released, once,
// back to its node, and its running move is told to resume; a live lease, a
// fence without a lease, and an active shard are left alone.
func TestReleaseExpiredFences(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 4)
	shards, err := c.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := c.pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	exec(`UPDATE pgtenant.shards SET state = 'fenced' WHERE id IN (0, 1, 2)`)
	exec(`INSERT INTO pgtenant.moves (shard, source_node, target_node, step) VALUES (0, $1, 'x', 'fence')`, shards[0].Node)
	exec(`INSERT INTO pgtenant.fence_leases VALUES (0, 1, now() - interval '1 second'), (1, NULL, now() + interval '1 minute')`)
	v0, err := c.MapVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	got := make([][]ExpiredFence, 4)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if got[i], err = c.ReleaseExpiredFences(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	var released []ExpiredFence
	for _, g := range got {
		released = append(released, g...)
	}
	if len(released) != 1 || released[0] != (ExpiredFence{Shard: 0, Node: shards[0].Node, Move: 1}) {
		t.Fatalf("released %+v by 4 concurrent callers, want shard 0 once", released)
	}
	after, err := c.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"active", "fenced", "fenced", "active"} {
		if after[i].State != want || after[i].Node != shards[i].Node || after[i].Epoch != shards[i].Epoch {
			t.Errorf("shard %d: %+v, want %s on %s", i, after[i], want, shards[i].Node)
		}
	}
	var msg string
	if err := c.pool.QueryRow(ctx, `SELECT error FROM pgtenant.moves WHERE id = 1`).Scan(&msg); err != nil || !strings.Contains(msg, "--resume 1") {
		t.Errorf("move error %q (%v), want a hint to resume", msg, err)
	}
	if v, _ := c.MapVersion(ctx); v <= v0 {
		t.Errorf("map version %d after the release, was %d: routers were not told", v, v0)
	}
	var leases int
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM pgtenant.fence_leases`).Scan(&leases); err != nil || leases != 1 {
		t.Errorf("%d leases left, want the live one", leases)
	}
}
