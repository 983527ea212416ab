// Package usage counts work per tenant in bounded memory. A Sketch keeps
// counters for at most a fixed number of tenants with the space-saving
// algorithm (Metwally, Agrawal, El Abbadi 2005), weighted by time on the
// backend: when a tenant not in the table arrives and the table is full,
// the tenant with the least time is evicted and the newcomer inherits that
// time as its overcount. Any tenant whose backend time is more than
// total/capacity is guaranteed to be in the table, and a tenant's time is
// overcounted by at most its Overcount. The other counters (transactions,
// statements, errors, bytes) are exact since the tenant last entered the
// table. The package does no I/O; the router feeds it once per transaction.
package usage

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"
)

// Counts are one tenant's (or a router's total) counters.
type Counts struct {
	// Transactions counts backend checkouts (a transaction, or a run of
	// statements in session mode) for the tenant.
	Transactions int64 `json:"transactions"`
	// Statements counts statements that completed (CommandComplete).
	Statements int64 `json:"statements"`
	// Errors counts errors from the server.
	Errors int64 `json:"errors"`
	// BackendSeconds is the time a backend connection was held.
	BackendSeconds float64 `json:"backend_seconds"`
	// Bytes counts the bytes of the rows returned (DataRow messages).
	Bytes int64 `json:"bytes"`
}

// Add adds o to c.
func (c *Counts) Add(o Counts) {
	c.Transactions += o.Transactions
	c.Statements += o.Statements
	c.Errors += o.Errors
	c.BackendSeconds += o.BackendSeconds
	c.Bytes += o.Bytes
}

// Entry is one tenant in a Sketch.
type Entry struct {
	Tenant string `json:"tenant"`
	Counts
	// Overcount bounds how much of BackendSeconds belongs to tenants
	// evicted before this one entered the table (zero: exact).
	Overcount float64 `json:"overcount_seconds"`
}

// By names what Top orders by.
type By string

// Orders for Top.
const (
	ByTime         By = "time"
	ByStatements   By = "statements"
	ByErrors       By = "errors"
	ByBytes        By = "bytes"
	ByTransactions By = "transactions"
)

// ParseBy checks an order name.
func ParseBy(s string) (By, error) {
	switch b := By(s); b {
	case ByTime, ByStatements, ByErrors, ByBytes, ByTransactions:
		return b, nil
	}
	return "", fmt.Errorf("order %q: use time, statements, errors, bytes or transactions", s)
}

func (b By) value(e *Entry) float64 {
	switch b {
	case ByStatements:
		return float64(e.Statements)
	case ByErrors:
		return float64(e.Errors)
	case ByBytes:
		return float64(e.Bytes)
	case ByTransactions:
		return float64(e.Transactions)
	}
	return e.BackendSeconds
}

// Sketch is a bounded table of per-tenant counters, safe for concurrent
// use. Create it with New.
type Sketch struct {
	mu       sync.Mutex
	capacity int
	byTenant map[string]*Entry
	total    Counts
	evicted  int64
	since    time.Time
}

// New returns a Sketch that holds at most capacity tenants (at least 1).
func New(capacity int) *Sketch {
	capacity = max(capacity, 1)
	return &Sketch{capacity: capacity, byTenant: make(map[string]*Entry, capacity), since: time.Now()}
}

// Capacity is the most tenants the sketch holds.
func (s *Sketch) Capacity() int { return s.capacity }

// Observe adds c to tenant's counters.
func (s *Sketch) Observe(tenant string, c Counts) {
	s.mu.Lock()
	s.total.Add(c)
	e := s.byTenant[tenant]
	if e == nil {
		e = s.admit(tenant)
	}
	e.Add(c)
	s.mu.Unlock()
}

// admit makes room for tenant: a new entry while there is room, else the
// entry with the least backend time is given to tenant, which inherits
// that time as its overcount (space-saving). A linear scan: it runs only
// when a tenant outside the table arrives with the table full.
//
// The table keeps a copy of the id: the caller's is often a part of a
// larger string (the router's is cut from the query text that named the
// tenant), which the table would otherwise keep alive for as long as the
// tenant stays; the copies, a few bytes each, also sit together in memory,
// so that Observe's key comparison rarely misses the cache.
func (s *Sketch) admit(tenant string) *Entry {
	tenant = strings.Clone(tenant)
	if len(s.byTenant) < s.capacity {
		e := &Entry{Tenant: tenant}
		s.byTenant[tenant] = e
		return e
	}
	var least *Entry
	for _, e := range s.byTenant {
		if least == nil || e.BackendSeconds < least.BackendSeconds {
			least = e
		}
	}
	delete(s.byTenant, least.Tenant)
	s.evicted++
	floor := least.BackendSeconds
	*least = Entry{Tenant: tenant, Counts: Counts{BackendSeconds: floor}, Overcount: floor}
	s.byTenant[tenant] = least
	return least
}

// Snapshot is a sketch's content at one moment.
type Snapshot struct {
	// Since is when counting began.
	Since time.Time `json:"since"`
	// Capacity is the most tenants kept.
	Capacity int `json:"capacity"`
	// Evicted counts tenants dropped to make room.
	Evicted int64 `json:"evicted"`
	// Total sums every tenant's work, evicted ones included.
	Total Counts `json:"total"`
	// Tenants are the top entries, in the order asked for.
	Tenants []Entry `json:"tenants"`
}

// Top returns the n tenants (all when n <= 0) with the most of by.
func (s *Sketch) Top(by By, n int) Snapshot {
	s.mu.Lock()
	snap := Snapshot{Since: s.since, Capacity: s.capacity, Evicted: s.evicted, Total: s.total,
		Tenants: make([]Entry, 0, len(s.byTenant))}
	for _, e := range s.byTenant {
		snap.Tenants = append(snap.Tenants, *e)
	}
	s.mu.Unlock()
	Sort(snap.Tenants, by)
	if n > 0 && len(snap.Tenants) > n {
		snap.Tenants = snap.Tenants[:n]
	}
	return snap
}

// Sort orders entries by by, most first, ties by tenant id.
func Sort(entries []Entry, by By) {
	sort.Slice(entries, func(i, j int) bool {
		a, b := by.value(&entries[i]), by.value(&entries[j])
		if a != b {
			return a > b
		}
		return entries[i].Tenant < entries[j].Tenant
	})
}

// Merge adds up the snapshots of several routers: a tenant's counters and
// overcounts are summed over the routers that have it. The result has
// every tenant of every snapshot, ordered by by.
func Merge(by By, snaps ...Snapshot) Snapshot {
	var out Snapshot
	byTenant := map[string]*Entry{}
	for i, sn := range snaps {
		if i == 0 || sn.Since.Before(out.Since) {
			out.Since = sn.Since
		}
		out.Capacity += sn.Capacity
		out.Evicted += sn.Evicted
		out.Total.Add(sn.Total)
		for _, e := range sn.Tenants {
			m := byTenant[e.Tenant]
			if m == nil {
				m = &Entry{Tenant: e.Tenant}
				byTenant[e.Tenant] = m
			}
			m.Add(e.Counts)
			m.Overcount += e.Overcount
		}
	}
	out.Tenants = make([]Entry, 0, len(byTenant))
	for _, e := range byTenant {
		out.Tenants = append(out.Tenants, *e)
	}
	Sort(out.Tenants, by)
	return out
}
