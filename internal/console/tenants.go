package console

import (
	"context"
	"errors"
	"fmt"

	"github.com/pgtenant/pgtenant/internal/routeradmin"
	"github.com/pgtenant/pgtenant/internal/usage"
)

// Tenants is the tenants page: the busiest tenants over every live router.
type Tenants struct {
	By      usage.By
	Orders  []usage.By
	Top     []TenantView
	Total   usage.Counts
	Routers []routeradmin.Answer
	// Answered counts the routers that answered.
	Answered int
	Snapshot usage.Snapshot
}

// TenantView is one tenant's usage and where it lives.
type TenantView struct {
	usage.Entry
	Shard int // -1 when the tenant is no longer registered
	Node  string
}

// TopTenants asks every live router that serves its admin endpoints for
// its tenants, as `pgtenant tenant top` does, and keeps the first limit in
// by's order, each with its shard and node.
func (c *Console) TopTenants(ctx context.Context, by usage.By, limit int) (*Tenants, error) {
	t := &Tenants{By: by, Orders: []usage.By{usage.ByTime, usage.ByTransactions, usage.ByStatements, usage.ByErrors, usage.ByBytes}}
	list, err := c.cfg.Catalog.RouterAdminURLs(ctx, c.cfg.RouterWithin)
	if err != nil {
		return t, err
	}
	if len(list) == 0 {
		return t, errors.New("no live router serves its admin endpoints: start routers with --metrics-listen to count tenants")
	}
	urls := make([]string, len(list))
	for i, r := range list {
		urls[i] = r.URL
	}
	snap, answers, err := routeradmin.Top(ctx, c.cfg.HTTPClient, urls, by)
	t.Snapshot, t.Routers, t.Total = snap, answers, snap.Total
	for _, a := range answers {
		if a.Error == "" {
			t.Answered++
		}
	}
	entries := snap.Tenants
	if len(entries) > limit {
		entries = entries[:limit]
	}
	for _, e := range entries {
		v := TenantView{Entry: e, Shard: -1}
		if loc, lerr := c.cfg.Catalog.Locate(ctx, e.Tenant); lerr == nil {
			v.Shard, v.Node = loc.Shard.ID, loc.Shard.Node
		}
		t.Top = append(t.Top, v)
	}
	if err != nil {
		return t, fmt.Errorf("%d of %d routers answered: %w", t.Answered, len(urls), err)
	}
	return t, nil
}
