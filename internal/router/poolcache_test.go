package router

import (
	"maps"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestSessionPoolAfterNodeLeftAndCame: a session keeps the pool of its last
// backend's node (session.poolFor), so that a transaction takes no lock and
// map lookup by node name. A map without the node closes that pool; the
// node back with the same DSN, name and role gets a new one. The session,
// idle in between, must not check out of the closed pool (pool.ErrClosed,
// sent to the client as node unreachable): it runs its next statement on
// the new pool.
func TestSessionPoolAfterNodeLeftAndCame(t *testing.T) {
	ctx := ctx(t)
	m1 := testMap()
	s := startRouter(t, Config{}, m1)
	c := connect(t, s, "t0", pgx.QueryExecModeSimpleProtocol) // t0: shard 0, node a
	var shard int
	if err := c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard); err != nil || shard != 0 {
		t.Fatalf("first statement: shard %d, %v", shard, err)
	}
	// Node a leaves the map (its shards on node b for this map's life):
	// its pool is closed.
	m2 := cloneMap(m1)
	m2.Version = m1.Version + 1
	m2.Nodes = maps.Clone(m1.Nodes)
	delete(m2.Nodes, "a")
	for i := range m2.Shards {
		m2.Shards[i].Node = "b"
	}
	if err := s.SetMap(ctx, m2); err != nil {
		t.Fatal(err)
	}
	m3 := cloneMap(m1)
	m3.Version = m2.Version + 1
	if err := s.SetMap(ctx, m3); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard); err != nil || shard != 0 {
		t.Fatalf("after node a left and came back: shard %d, %v (SQLSTATE %q)", shard, err, pgCode(err))
	}
}
