package e2e

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/router"
	"github.com/pgtenant/pgtenant/internal/tables"
	"github.com/pgtenant/pgtenant/internal/tenantops"
)

// TestTenantMoveIsolateUnderLoad moves one tenant to a shard of its own
// (--isolate) while clients write and read through two routers the whole
// time, with a ledger each: the moving tenant's clients, and clients of
// other tenants of its shard and of other shards. Every acknowledged write
// of the moving tenant is exactly once in the new shard, none is left in
// the old one, the other tenants' ledgers hold, no client saw an error, and
// the pause (held transactions of that tenant only) is reported.
func TestTenantMoveIsolateUnderLoad(t *testing.T) {
	ctx := context.Background()
	c := newMoveCluster(t, moveOpts{tenantsPerShard: 2, router: router.Config{FenceGrace: 2 * time.Second, HoldTimeout: 10 * time.Second}})
	c.startRouter(nil)
	// Events get a tenant column (the router sets pgtenant.tenant_id), so
	// every table of the shard has a rule.
	for _, s := range c.shards {
		if _, err := c.nodes[s.Node].Exec(ctx, fmt.Sprintf(`ALTER TABLE %s.events ADD COLUMN tenant text DEFAULT current_setting('pgtenant.tenant_id', true)`,
			pgx.Identifier{s.Schema}.Sanitize())); err != nil {
			t.Fatal(err)
		}
	}
	reg := tables.New(c.cat.Pool())
	for _, r := range []tables.Table{
		{Name: "accounts", Kind: tables.KindTenant, TenantColumn: "tenant"},
		{Name: "items", Kind: tables.KindChild, Parent: "accounts", ParentKey: "account_id", ParentColumn: "id"},
		{Name: "events", Kind: tables.KindTenant, TenantColumn: "tenant"},
		{Name: "kv", Kind: tables.KindTenant, TenantColumn: "tenant"},
	} {
		if err := reg.Set(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// Shard 6 is emptied, so --isolate picks it.
	for _, id := range c.tenants[6] {
		if err := c.cat.RemoveTenant(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	const from = 1
	mover, neighbour := c.tenants[from][0], c.tenants[from][1]

	wctx, cancel := context.WithCancel(ctx)
	var clients []*moveClient
	for i := 0; i < 4; i++ {
		clients = append(clients, newMoveClient(i, mover, from))
	}
	clients = append(clients, newMoveClient(4, neighbour, from), newMoveClient(5, c.tenants[2][0], 2), newMoveClient(6, c.tenants[3][1], 3))
	var wg sync.WaitGroup
	for _, cl := range clients {
		wg.Add(1)
		go func() { defer wg.Done(); cl.run(wctx, c, 2*time.Millisecond) }()
	}
	time.Sleep(1500 * time.Millisecond)

	var fenceAt time.Time
	ops := tenantops.New(c.cat, c.logger.With("component", "tenantops"))
	res, err := ops.Move(ctx, mover, tenantops.MoveOptions{Isolate: true, Progress: func(step string) {
		if step == "fence" {
			fenceAt = time.Now()
		}
	}})
	moveEnd := time.Now()
	time.Sleep(time.Second) // clients run on the new shard a while
	cancel()
	wg.Wait()
	if err != nil {
		t.Fatalf("move: %v", err)
	}
	if res.To != 6 {
		t.Fatalf("isolated into shard %d, want 6", res.To)
	}
	loc, err := c.cat.Locate(ctx, mover)
	if err != nil || loc.Shard.ID != 6 || loc.Shard.State != placement.StateActive {
		t.Fatalf("tenant after the move: %+v %v", loc, err)
	}
	var writes, reads int
	for _, cl := range clients {
		shard := cl.shard
		if cl.tenant == mover {
			shard = 6
		}
		node, _ := c.shardNode(ctx, shard)
		for _, p := range cl.check(ctx, c.nodes[node], placement.SchemaName(shard)) {
			t.Error(p)
		}
		for _, m := range cl.mismatch {
			t.Error(m)
		}
		for _, err := range cl.errs {
			t.Errorf("client error: %v", err)
		}
		writes, reads = writes+cl.writes, reads+cl.reads
	}
	// Nothing of the moving tenant is left in the old shard.
	srcNode, _ := c.shardNode(ctx, from)
	var left int
	if err := c.nodes[srcNode].QueryRow(ctx, fmt.Sprintf(`SELECT (SELECT count(*) FROM %[1]s.kv WHERE tenant = $1) + (SELECT count(*) FROM %[1]s.events WHERE tenant = $1)`,
		pgx.Identifier{placement.SchemaName(from)}.Sanitize()), mover).Scan(&left); err != nil || left != 0 {
		t.Fatalf("%d rows of the moved tenant left in shard %d (%v)", left, from, err)
	}
	var moverMax, otherMax time.Duration
	for _, cl := range clients {
		d := maxIn(cl.samples, fenceAt, moveEnd)
		if cl.tenant == mover {
			moverMax = max(moverMax, d)
		} else {
			otherMax = max(otherMax, d)
		}
	}
	t.Logf("tenant move: %d rows copied, %d changes caught up (%d under the fence), %d old rows deleted, in %s",
		res.Copied, res.CaughtUp, res.FinalRound, res.Deleted, res.Duration.Round(time.Millisecond))
	t.Logf("pause (fence to flip) %s (routers' ack %s); longest transaction from the fence to the end of the move: moving tenant %s, other tenants %s",
		res.Pause.Round(time.Microsecond), res.FenceAck.Round(time.Microsecond), moverMax.Round(time.Microsecond), otherMax.Round(time.Microsecond))
	t.Logf("%d clients: %d writes, %d reads checked", len(clients), writes, reads)
	if res.Copied == 0 || res.CaughtUp == 0 {
		t.Fatalf("the move copied %d rows and caught up %d: the load did not reach it", res.Copied, res.CaughtUp)
	}
}
