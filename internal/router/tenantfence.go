package router

import (
	"context"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// Tenant fences (a tenant move, package tenantops): while a map lists a
// tenant in placement.Map.FencedTenants, new transactions of that tenant are
// held like those of a fenced shard (other tenants of its shard run on), and
// SetMap waits for the tenant's transactions in flight (the gate entries of
// its shard that carry its id) before the map is acknowledged, cutting them
// after Config.FenceGrace. A map without the tenant releases them; they look
// the tenant up again (the catalog drops its cached shard before such a map
// is published), so they run in the shard it was flipped to.

// tenantFences is the server's per-tenant fence state.
type tenantFences struct {
	mu sync.Mutex
	// byID holds a fence per fenced tenant (and strays a session made for a
	// map already replaced; the next SetMap closes them).
	byID map[string]*tenantFence
}

type tenantFence struct {
	release chan struct{}
	since   time.Time // when the fence was first applied; zero for a stray
}

// closedCh is a channel that is always closed.
var closedCh = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// tenantHold returns the channel to wait on when m fences tenant, or nil.
func (s *Server) tenantHold(m *placement.Map, tenant string) chan struct{} {
	if len(m.FencedTenants) == 0 {
		return nil
	}
	if _, ok := m.FencedTenants[tenant]; !ok {
		return nil
	}
	tf := &s.tfences
	tf.mu.Lock()
	f := tf.byID[tenant]
	if f == nil {
		if tf.byID == nil {
			tf.byID = map[string]*tenantFence{}
		}
		f = &tenantFence{release: make(chan struct{})}
		tf.byID[tenant] = f
	}
	tf.mu.Unlock()
	if s.mp.Load() != m {
		return closedCh // a newer map: route again with it
	}
	return f.release
}

// fencedTenant is a tenant SetMap waits for.
type fencedTenant struct {
	id    string
	shard int
	since time.Time
}

// applyTenantFences fences the tenants m fences and releases the others
// (SetMap, under setMu, after m was stored).
func (s *Server) applyTenantFences(m *placement.Map) []fencedTenant {
	tf := &s.tfences
	tf.mu.Lock()
	defer tf.mu.Unlock()
	var out []fencedTenant
	for id, shard := range m.FencedTenants {
		f := tf.byID[id]
		if f == nil {
			if tf.byID == nil {
				tf.byID = map[string]*tenantFence{}
			}
			f = &tenantFence{release: make(chan struct{})}
			tf.byID[id] = f
		}
		if f.since.IsZero() {
			f.since = time.Now()
			s.log.Info("tenant fenced", "tenant", id, "shard", shard)
		}
		out = append(out, fencedTenant{id: id, shard: shard, since: f.since})
	}
	for id, f := range tf.byID {
		if _, ok := m.FencedTenants[id]; ok {
			continue
		}
		close(f.release)
		delete(tf.byID, id)
		if !f.since.IsZero() {
			s.log.Info("tenant released", "tenant", id)
		}
	}
	return out
}

// waitTenantFences waits until no transaction of a fenced tenant is in
// flight, cutting those still running when the grace (from the tenant's
// fence) runs out; ctx's error when a newer map supersedes this one.
func (s *Server) waitTenantFences(ctx context.Context, fenced []fencedTenant) error {
	if len(fenced) == 0 {
		return nil
	}
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		busy := false
		now := time.Now()
		for _, ft := range fenced {
			gs := s.gatesFor(ft.shard + 1)
			g := gs[ft.shard]
			g.mu.Lock()
			cut := now.Sub(ft.since) >= s.cfg.FenceGrace
			n := 0
			for _, e := range g.inflight {
				if e.tenant != ft.id || e.cut {
					continue
				}
				if cut {
					e.cut = true
					n++
					if e.be != nil {
						e.be.Kill(&fencedError{shard: ft.shard})
					}
					continue
				}
				busy = true
			}
			g.mu.Unlock()
			if n > 0 {
				s.log.Warn("cut transactions of fenced tenant", "tenant", ft.id, "shard", ft.shard, "count", n)
			}
		}
		if !busy {
			return nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
