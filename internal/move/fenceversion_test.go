package move

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// versionGate is gateFencer for a Fencer that waits for map versions: it
// records, for each version it is given, what the catalog said then.
type versionGate struct {
	g     *gateFencer
	e     *env
	plain atomic.Int32 // calls of Fence or Unfence (no version)
	mu    sync.Mutex
	seen  []string
}

func (f *versionGate) Fence(ctx context.Context, shard int) error {
	f.plain.Add(1)
	return f.g.Fence(ctx, shard)
}

func (f *versionGate) Unfence(ctx context.Context, shard int) error {
	f.plain.Add(1)
	return f.g.Unfence(ctx, shard)
}

func (f *versionGate) FenceVersion(ctx context.Context, shard int, v int64) error {
	f.record(ctx, "fence", shard, v)
	return f.g.Fence(ctx, shard)
}

func (f *versionGate) UnfenceVersion(ctx context.Context, shard int, v int64) error {
	f.record(ctx, "unfence", shard, v)
	return f.g.Unfence(ctx, shard)
}

// record notes whether v is the catalog's map version now, and the shard's
// placement.
func (f *versionGate) record(ctx context.Context, what string, shard int, v int64) {
	var cur int64
	var node, state string
	err := f.e.cat.QueryRow(ctx, `SELECT (SELECT version FROM pgtenant.map_version), node, state FROM pgtenant.shards WHERE id = $1`, shard).Scan(&cur, &node, &state)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seen = append(f.seen, fmt.Sprintf("%s: version current %v, %s on %s (%v)", what, v == cur, state, node, err))
}

// TestMoveWaitsForItsMapVersions: with a Fencer that can wait for a map
// version (catalog.RouterFencer), a move waits for the versions its fence and
// its flip made, read in their own transactions (no round trip to read the
// version again inside the pause), and never for "the current version".
func TestMoveWaitsForItsMapVersions(t *testing.T) {
	e := newEnv(t)
	addMapVersion(t, e)
	fillShard(t, e, 200)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := &versionGate{g: newGateFencer(e), e: e}
	if _, err := testMover(t, e, Config{Fencer: f}).Move(ctx, testShard, "n2", Options{}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"fence: version current true, fenced on n1 (<nil>)",
		"unfence: version current true, active on n2 (<nil>)",
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if fmt.Sprint(f.seen) != fmt.Sprint(want) || f.plain.Load() != 0 {
		t.Fatalf("the fencer was given %q and called %d times without a version; want %q", f.seen, f.plain.Load(), want)
	}
	if got := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items`); got != 200 {
		t.Fatalf("target has %d items, want 200", got)
	}
}
