package router

import (
	"fmt"
	"maps"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestTenantFence fences one tenant of shard 3 (as a tenant move does):
// that tenant's transaction in flight is cut after the grace and its new
// ones are held, while another tenant of the same shard runs, in flight and
// new; a map that places the tenant in shard 4 and lifts its fence releases
// the held transaction there.
func TestTenantFence(t *testing.T) {
	s := startRouter(t, Config{FenceGrace: 300 * time.Millisecond, HoldTimeout: 20 * time.Second}, nil)
	ctx := ctx(t)
	moving := connect(t, s, "t11", pgx.QueryExecModeCacheStatement) // shard 3
	held := connect(t, s, "t11", pgx.QueryExecModeSimpleProtocol)
	neighbour := connect(t, s, "t3", pgx.QueryExecModeCacheStatement) // shard 3 too

	mtx, err := moving.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mtx.Exec(ctx, "SELECT 1 FROM whoami"); err != nil {
		t.Fatal(err)
	}
	ntx, err := neighbour.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ntx.Exec(ctx, "SELECT 1 FROM whoami"); err != nil {
		t.Fatal(err)
	}
	fenced := cloneMap(testMap())
	fenced.Version = 2
	fenced.FencedTenants = map[string]int{"t11": 3}
	if err := s.SetMap(ctx, fenced); err != nil {
		t.Fatal(err)
	}
	if _, err := mtx.Exec(ctx, "SELECT 1 FROM whoami"); pgCode(err) != "40001" && pgCode(err) != "57P01" {
		t.Fatalf("the fenced tenant's transaction in flight: %v, want 40001", err)
	}
	mtx.Rollback(ctx)
	var shard int
	if err := ntx.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard); err != nil || shard != 3 {
		t.Fatalf("the neighbour's transaction in flight: %d %v", shard, err)
	}
	if err := ntx.Commit(ctx); err != nil {
		t.Fatalf("the neighbour's commit: %v", err)
	}
	res := make(chan string, 1)
	go func() {
		var sh int
		err := held.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&sh)
		res <- fmt.Sprintf("%d %v", sh, err)
	}()
	if err := neighbour.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard); err != nil || shard != 3 {
		t.Fatalf("the neighbour while the tenant is fenced: %d %v", shard, err)
	}
	select {
	case r := <-res:
		t.Fatalf("the fenced tenant's transaction was not held: %s", r)
	case <-time.After(300 * time.Millisecond):
	}
	moved := cloneMap(testMap())
	moved.Version = 3
	moved.Tenants = maps.Clone(moved.Tenants)
	moved.Tenants["t11"] = 4
	if err := s.SetMap(ctx, moved); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-res:
		if r != "4 <nil>" {
			t.Fatalf("released transaction: %s, want shard 4", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the held transaction was not released")
	}
}
