package catalog

import (
	"errors"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// TestTenantFenceMap: a tenant fence reaches the maps Watch applies, a second fence of the same tenant is refused,
// the flip moves the tenant and lifts the fence in one map (the tenant's
// cached shard dropped), a lapsed lease is released, and a flip without a
// live fence is refused.
func TestTenantFenceMap(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 16)
	if _, err := c.AddTenant(ctx, "acme", nil); err != nil {
		t.Fatal(err)
	}
	from := 0
	if loc, err := c.Locate(ctx, "acme"); err == nil {
		from = loc.Shard.ID
	}
	to := (from + 1) % 16
	maps := follow(t, c, WatchOptions{Poll: time.Hour})
	m := <-maps
	waitLive(t, c, true)
	waitLocate(t, m, "acme", from) // cached now
	next := func(version int64) *placement.Map {
		t.Helper()
		for {
			select {
			case m := <-maps:
				if m.Version >= version {
					return m
				}
			case <-time.After(20 * time.Second):
				t.Fatalf("no map of version %d", version)
			}
		}
	}
	v, err := c.FenceTenant(ctx, "acme", from, 7, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m = next(v)
	if got := m.FencedTenants; len(got) != 1 || got["acme"] != from {
		t.Fatalf("fenced tenants in the map: %v", got)
	}
	if _, err := c.FenceTenant(ctx, "acme", from, 8, time.Second); !errors.Is(err, ErrTenantFenced) {
		t.Fatalf("second fence: %v", err)
	}
	if err := c.RenewTenantFence(ctx, "acme", 7, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	v, err = c.FlipTenant(ctx, "acme", from, to, 7)
	if err != nil {
		t.Fatal(err)
	}
	m = next(v)
	if len(m.FencedTenants) != 0 {
		t.Fatalf("fenced tenants after the flip: %v", m.FencedTenants)
	}
	waitLocate(t, m, "acme", to)

	// A lease that lapses is released; the flip then fails.
	if _, err := c.FenceTenant(ctx, "acme", to, 9, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	if ids, err := c.ReleaseExpiredTenantFences(ctx); err != nil || len(ids) != 1 || ids[0] != "acme" {
		t.Fatalf("release: %v %v", ids, err)
	}
	if _, err := c.FlipTenant(ctx, "acme", to, from, 9); !errors.Is(err, ErrTenantFenceLost) {
		t.Fatalf("flip after the lease lapsed: %v", err)
	}
	if loc, err := c.Locate(ctx, "acme"); err != nil || loc.Shard.ID != to {
		t.Fatalf("tenant after a refused flip: %+v %v", loc, err)
	}
}
