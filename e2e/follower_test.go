package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/move"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/router"
)

// TestFollowerSplitUnderLoadNodeRole: node a (shards 0, 2, 4, 6; the node
// role not a superuser, granted EXECUTE on pg_promote) is split through a
// pg_basebackup standby of its server while clients write through a router
// following the catalog, fenced by catalog.RouterFencer: shards 2 and 6 end
// on the promoted follower, registered as c, and every client's ledger holds
// on the node its shard ended on (every acknowledged write exactly once).
func TestFollowerSplitUnderLoadNodeRole(t *testing.T) {
	ctx := context.Background()
	c := newMoveCluster(t, moveOpts{tenantsPerShard: 4, nodeRole: true, router: router.Config{FenceGrace: 2 * time.Second, HoldTimeout: 10 * time.Second}})
	if _, err := c.nodes["a"].Exec(ctx, `GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO `+nodeRole); err != nil {
		t.Fatal(err)
	}
	var db string
	if err := c.nodes["a"].QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	standby := servers[0].NewStandby(t)
	followerDSN := strings.Replace(standby.DSN(db), "postgres://postgres@", "postgres://"+nodeRole+"@", 1)
	p, err := pgxpool.New(ctx, standby.DSN(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	c.nodes["c"] = p

	w := c.startClients(movingShard, 8, 8, 2*time.Millisecond)
	w.waitReady(t, time.Minute) // sessions open and tenants looked up before the control window and the split
	ctlStart := time.Now()
	time.Sleep(2 * time.Second)
	ctlEnd := time.Now()
	tf := &timingFencer{inner: catalog.RouterFencer{Catalog: c.cat}}
	m := c.mover(move.Config{Fencer: tf})
	res, err := m.SplitViaFollower(ctx, move.SplitOptions{Node: "a", NewNode: "c", FollowerDSN: followerDSN, MaxWait: time.Minute,
		Register: func(ctx context.Context, name, dsn, identity string) error {
			return c.cat.AddPromotedNode(ctx, name, dsn, identity)
		}})
	splitEnd := time.Now()
	time.Sleep(time.Second) // clients run on the new node a while
	w.stop()
	if err != nil {
		t.Fatalf("split: %v", err)
	}
	for _, s := range c.shards {
		node, state := c.shardNode(ctx, s.ID)
		want := s.Node
		if s.ID == 2 || s.ID == 6 {
			want = "c"
		}
		if node != want || state != placement.StateActive {
			t.Errorf("shard %d: %s %s, want %s active", s.ID, node, state, want)
		}
	}
	c.verify(ctx, w, nil)
	for _, schema := range []string{"shard_0002", "shard_0006"} {
		var n int
		if err := c.nodes["a"].QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname = $1`, schema).Scan(&n); err != nil || n != 0 {
			t.Errorf("%s still on a (%v)", schema, err)
		}
	}
	ctlMoving, _ := w.maxLatency(movingShard, true, ctlStart, ctlEnd)
	ctlOther, _ := w.maxLatency(movingShard, false, ctlStart, ctlEnd)
	mvMoving, nMoving := w.maxLatency(movingShard, true, ctlEnd, splitEnd)
	mvOther, nOther := w.maxLatency(movingShard, false, ctlEnd, splitEnd)
	t.Logf("follower split: pause %s (replay wait %s, promotion %s), %s in all", res.Pause.Round(time.Millisecond),
		res.ReplayWait.Round(time.Millisecond), res.Promote.Round(time.Millisecond), res.Duration.Round(time.Millisecond))
	t.Logf("longest transaction, a moved shard's clients: control %s, during the split %s (%d txns)", ctlMoving.Round(time.Millisecond), mvMoving.Round(time.Millisecond), nMoving)
	t.Logf("longest transaction, other shards' clients: control %s, during the split %s (%d txns)", ctlOther.Round(time.Millisecond), mvOther.Round(time.Millisecond), nOther)
	var writes int
	for _, cl := range w.clients {
		writes += cl.writes
	}
	t.Logf("%d clients, %d writes checked", len(w.clients), writes)
}
