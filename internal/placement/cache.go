package placement

import (
	"context"
	"hash/maphash"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// NoShard is the shard a TenantCache records for a tenant it knows is not
// registered.
const NoShard = -1

// cacheParts is how many independently locked parts a TenantCache has, so
// that sessions on many cores rarely wait for each other.
const cacheParts = 16

// TenantCache is a bounded cache of tenant lookups: for each tenant id its
// shard, or NoShard for an id known to be unregistered (kept only for the
// cache's negative TTL, so that a tenant registered meanwhile is soon found
// without anyone telling the cache). It evicts with the
// CLOCK algorithm (an entry read since the hand last passed gets a second
// chance), so a hit takes a read lock and sets one flag. A lookup that
// misses is a Flight: concurrent lookups of the same tenant wait for the
// first one's answer instead of asking again, and an Invalidate (or Clear)
// during the flight keeps its answer out of the cache, because the answer
// may predate the change. It does no I/O. The zero value is not usable: use
// NewTenantCache.
type TenantCache struct {
	seed        maphash.Seed
	negativeTTL time.Duration
	// epoch counts Stale calls: Get serves only entries of the current
	// epoch; Known also older ones (answers to fall back on).
	epoch atomic.Uint64
	parts [cacheParts]cachePart
}

type cachePart struct {
	mu      sync.RWMutex
	entries map[string]*cacheEntry
	ring    []*cacheEntry // CLOCK ring; nil slots are free
	hand    int
	limit   int
	flights map[string]*Flight
}

type cacheEntry struct {
	key     string
	shard   int
	ref     atomic.Bool
	slot    int
	expires time.Time // NoShard entries only
	epoch   uint64    // the cache's epoch when the answer was read
}

// Flight is a lookup of one tenant in progress. The leader (Begin returned
// leader true) asks the source of truth and calls Finish exactly once;
// followers call Wait.
type Flight struct {
	part  *cachePart
	key   string
	done  chan struct{}
	stale bool // guarded by part.mu: invalidated during the flight
	ttl   time.Duration
	epoch uint64 // the cache's epoch when the flight began
	shard int
	err   error
}

// NewTenantCache returns a cache of at most capacity entries (at least
// cacheParts) that keeps "unregistered" answers for negativeTTL (zero: not
// at all).
func NewTenantCache(capacity int, negativeTTL time.Duration) *TenantCache {
	per := capacity / cacheParts
	if per < 1 {
		per = 1
	}
	c := &TenantCache{seed: maphash.MakeSeed(), negativeTTL: negativeTTL}
	for i := range c.parts {
		c.parts[i] = cachePart{entries: map[string]*cacheEntry{}, flights: map[string]*Flight{}, limit: per}
	}
	return c
}

func (c *TenantCache) part(tenant string) *cachePart {
	return &c.parts[maphash.String(c.seed, tenant)%cacheParts]
}

// Get returns the cached shard of tenant (NoShard: known unregistered) and
// whether there was an entry.
func (c *TenantCache) Get(tenant string) (int, bool) {
	p := c.part(tenant)
	p.mu.RLock()
	e := p.entries[tenant]
	p.mu.RUnlock()
	if e == nil || e.epoch != c.epoch.Load() {
		return 0, false
	}
	if e.shard == NoShard && time.Now().After(e.expires) {
		return 0, false
	}
	if !e.ref.Load() {
		e.ref.Store(true)
	}
	return e.shard, true
}

// Known returns the shard of tenant from any epoch's registered answer: what
// was once known, for when the source of truth cannot be asked. "Unregistered"
// answers are not kept for this.
func (c *TenantCache) Known(tenant string) (int, bool) {
	p := c.part(tenant)
	p.mu.RLock()
	e := p.entries[tenant]
	p.mu.RUnlock()
	if e == nil || e.shard == NoShard {
		return 0, false
	}
	return e.shard, true
}

// Epoch is the cache's epoch, for PutAt.
func (c *TenantCache) Epoch() uint64 { return c.epoch.Load() }

// PutAt records tenant's shard (or NoShard) as read when the cache's epoch
// was epoch (from Epoch before the read): an answer read before a Stale
// call is kept only as one to fall back on (Known).
func (c *TenantCache) PutAt(tenant string, shard int, epoch uint64) {
	if shard == NoShard && c.negativeTTL <= 0 {
		return
	}
	p := c.part(tenant)
	p.mu.Lock()
	p.put(strings.Clone(tenant), shard, c.negativeTTL, epoch)
	p.mu.Unlock()
}

// Stale turns every answer the cache holds into one to fall back on only
// (Known, not Get), and keeps the answers of lookups in flight out of Get:
// for when changes may have been missed (a lost notification channel) but
// the answers are still the best there is while the source is away.
func (c *TenantCache) Stale() {
	for i := range c.parts {
		p := &c.parts[i]
		p.mu.Lock()
		for _, f := range p.flights {
			f.stale = true
		}
		p.flights = map[string]*Flight{}
		p.mu.Unlock()
	}
	c.epoch.Add(1)
}

// Begin starts a lookup of tenant, or joins the one in flight. The leader
// must call Finish.
func (c *TenantCache) Begin(tenant string) (f *Flight, leader bool) {
	p := c.part(tenant)
	p.mu.Lock()
	defer p.mu.Unlock()
	if f := p.flights[tenant]; f != nil {
		return f, false
	}
	// A copy of the id as the key: the caller's may be cut from a larger
	// string (a query text), which the entry would keep alive.
	f = &Flight{part: p, key: strings.Clone(tenant), done: make(chan struct{}), ttl: c.negativeTTL, epoch: c.epoch.Load()}
	p.flights[tenant] = f
	return f, true
}

// Finish records the leader's answer: the tenant's shard, NoShard for an
// unregistered tenant, or err when the lookup failed (not cached). Waiting
// followers get the same answer.
func (f *Flight) Finish(shard int, err error) {
	p := f.part
	p.mu.Lock()
	f.shard, f.err = shard, err
	if p.flights[f.key] == f {
		delete(p.flights, f.key)
	}
	if !f.stale && err == nil && (shard != NoShard || f.ttl > 0) {
		p.put(f.key, shard, f.ttl, f.epoch)
	}
	p.mu.Unlock()
	close(f.done)
}

// Wait returns the leader's answer, or ctx's error.
func (f *Flight) Wait(ctx context.Context) (int, error) {
	select {
	case <-f.done:
		return f.shard, f.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// put adds or replaces an entry, evicting one if the part is full. p.mu is
// held.
func (p *cachePart) put(key string, shard int, ttl time.Duration, epoch uint64) {
	var expires time.Time
	if shard == NoShard {
		expires = time.Now().Add(ttl)
	}
	if e := p.entries[key]; e != nil {
		p.ring[e.slot] = nil // replaced below: entries are read without the lock
		delete(p.entries, key)
	}
	e := &cacheEntry{key: key, shard: shard, expires: expires, epoch: epoch}
	if len(p.ring) < p.limit {
		e.slot = len(p.ring)
		p.ring = append(p.ring, e)
		p.entries[key] = e
		return
	}
	for {
		x := p.ring[p.hand]
		if x == nil {
			break
		}
		if x.ref.Load() {
			x.ref.Store(false)
			p.hand = (p.hand + 1) % len(p.ring)
			continue
		}
		delete(p.entries, x.key)
		break
	}
	e.slot = p.hand
	p.ring[p.hand] = e
	p.entries[key] = e
	p.hand = (p.hand + 1) % len(p.ring)
}

// remove drops key's entry and marks a lookup of it in flight stale. p.mu is
// held.
func (p *cachePart) remove(key string) {
	if e := p.entries[key]; e != nil {
		delete(p.entries, key)
		p.ring[e.slot] = nil
	}
	if f := p.flights[key]; f != nil {
		f.stale = true
		delete(p.flights, key)
	}
}

// Invalidate forgets what the cache knows of tenants, including answers of
// lookups still in flight.
func (c *TenantCache) Invalidate(tenants ...string) {
	for _, t := range tenants {
		p := c.part(t)
		p.mu.Lock()
		p.remove(t)
		p.mu.Unlock()
	}
}

// DropUnknown forgets every negative entry (and lookups in flight), for
// when many tenants were registered at once.
func (c *TenantCache) DropUnknown() {
	for i := range c.parts {
		p := &c.parts[i]
		p.mu.Lock()
		for k, e := range p.entries {
			if e.shard == NoShard {
				p.remove(k)
			}
		}
		for k := range p.flights {
			p.remove(k)
		}
		p.mu.Unlock()
	}
}

// Clear forgets everything, including answers of lookups in flight.
func (c *TenantCache) Clear() {
	for i := range c.parts {
		p := &c.parts[i]
		p.mu.Lock()
		for _, f := range p.flights {
			f.stale = true
		}
		p.entries = map[string]*cacheEntry{}
		p.flights = map[string]*Flight{}
		p.ring = nil
		p.hand = 0
		p.mu.Unlock()
	}
}

// Len is the number of entries cached.
func (c *TenantCache) Len() int {
	n := 0
	for i := range c.parts {
		p := &c.parts[i]
		p.mu.RLock()
		n += len(p.entries)
		p.mu.RUnlock()
	}
	return n
}
