package usage

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"unsafe"
)

// Counters are exact while the table has room.
func TestExactBelowCapacity(t *testing.T) {
	s := New(10)
	for i := 0; i < 3; i++ {
		s.Observe("a", Counts{Transactions: 1, Statements: 2, Errors: 1, BackendSeconds: 0.5, Bytes: 100})
	}
	s.Observe("b", Counts{Transactions: 1, Statements: 7, BackendSeconds: 2})
	top := s.Top(ByTime, 0)
	if len(top.Tenants) != 2 || top.Tenants[0].Tenant != "b" || top.Tenants[1].Tenant != "a" || top.Evicted != 0 {
		t.Fatalf("top by time: %+v", top)
	}
	if got, want := top.Tenants[1].Counts, (Counts{Transactions: 3, Statements: 6, Errors: 3, BackendSeconds: 1.5, Bytes: 300}); got != want {
		t.Errorf("a: %+v, want %+v", got, want)
	}
	if got, want := top.Total, (Counts{Transactions: 4, Statements: 13, Errors: 3, BackendSeconds: 3.5, Bytes: 300}); got != want {
		t.Errorf("total: %+v, want %+v", got, want)
	}
	for by, first := range map[By]string{ByStatements: "b", ByErrors: "a", ByBytes: "a", ByTransactions: "a"} {
		if got := s.Top(by, 1).Tenants; len(got) != 1 || got[0].Tenant != first {
			t.Errorf("top by %s: %+v, want %s first", by, got, first)
		}
	}
}

// With far more tenants than room, a skewed load keeps its heavy tenants,
// in the right order, with their time within the overcount, and memory
// stays at the capacity.
func TestHeavyHittersUnderSkew(t *testing.T) {
	const tenants, capacity = 20000, 50
	s := New(capacity)
	r := rand.New(rand.NewPCG(1, 2))
	zipf := rand.NewZipf(r, 1.3, 1, tenants-1)
	truth := map[string]float64{}
	var total float64
	for i := 0; i < 100000; i++ {
		id := fmt.Sprintf("t%d", zipf.Uint64())
		d := 0.001 * (1 + r.Float64())
		truth[id] += d
		total += d
		s.Observe(id, Counts{Transactions: 1, BackendSeconds: d})
	}
	top := s.Top(ByTime, 0)
	if len(top.Tenants) != capacity || top.Evicted == 0 {
		t.Fatalf("%d entries, %d evicted", len(top.Tenants), top.Evicted)
	}
	in := map[string]Entry{}
	for _, e := range top.Tenants {
		in[e.Tenant] = e
	}
	for id, v := range truth {
		if v <= total/capacity {
			continue
		}
		e, ok := in[id]
		if !ok {
			t.Errorf("heavy tenant %s (%.3fs of %.3fs) missing", id, v, total)
			continue
		}
		if e.BackendSeconds < v-1e-9 || e.BackendSeconds-e.Overcount > v+1e-9 {
			t.Errorf("%s: counted %.4fs (overcount %.4fs), true %.4fs", id, e.BackendSeconds, e.Overcount, v)
		}
	}
	for i, want := range []string{"t0", "t1", "t2"} {
		if top.Tenants[i].Tenant != want {
			t.Errorf("rank %d: %s, want %s", i, top.Tenants[i].Tenant, want)
		}
	}
}

// Merge sums routers' counters per tenant.
func TestMerge(t *testing.T) {
	a, b := New(5), New(5)
	a.Observe("x", Counts{Statements: 1, BackendSeconds: 1})
	a.Observe("y", Counts{Statements: 5, BackendSeconds: 1})
	b.Observe("x", Counts{Statements: 1, BackendSeconds: 3})
	m := Merge(ByTime, a.Top(ByTime, 0), b.Top(ByTime, 0))
	if len(m.Tenants) != 2 || m.Tenants[0].Tenant != "x" || m.Tenants[0].BackendSeconds != 4 || m.Tenants[0].Statements != 2 ||
		m.Total.Statements != 7 || m.Capacity != 10 {
		t.Fatalf("merged: %+v", m)
	}
}

// Observe is safe from many goroutines (run with -race).
func TestConcurrent(t *testing.T) {
	s := New(8)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				s.Observe(fmt.Sprintf("t%d", (g*i)%20), Counts{Transactions: 1, BackendSeconds: 0.001})
			}
		}()
	}
	wg.Wait()
	if got := s.Top(ByTime, 0).Total.Transactions; got != 8000 {
		t.Fatalf("total transactions %d, want 8000", got)
	}
}

// TestSketchKeepsNoCallerString: the table keys its entries with a copy of
// the tenant id, not the caller's string, which the router cuts from the
// query text that named the tenant (a query of any size, kept alive for as
// long as the tenant stayed in the table).
func TestSketchKeepsNoCallerString(t *testing.T) {
	query := "/* tenant: acme */ INSERT INTO big VALUES " + strings.Repeat("(1),", 1<<16) + "(1)"
	tenant := query[len("/* tenant: ") : len("/* tenant: ")+4]
	s := New(2)
	s.Observe(tenant, Counts{Transactions: 1, BackendSeconds: 2})
	s.Observe("other", Counts{Transactions: 1, BackendSeconds: 1})
	s.Observe(query[len("/* tenant: "):len("/* tenant: ")+3], Counts{Transactions: 1}) // "acm" evicts "other", in its entry
	begin, end := uintptr(unsafe.Pointer(unsafe.StringData(query))), uintptr(unsafe.Pointer(unsafe.StringData(query)))+uintptr(len(query))
	top := s.Top(ByTime, 0)
	if len(top.Tenants) != 2 || top.Tenants[0].Tenant != "acme" || top.Tenants[1].Tenant != "acm" {
		t.Fatalf("tenants: %+v", top.Tenants)
	}
	for _, e := range top.Tenants {
		if p := uintptr(unsafe.Pointer(unsafe.StringData(e.Tenant))); p >= begin && p < end {
			t.Errorf("entry %q points into the caller's %d-byte string", e.Tenant, len(query))
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.byTenant {
		if p := uintptr(unsafe.Pointer(unsafe.StringData(k))); p >= begin && p < end {
			t.Errorf("key %q points into the caller's %d-byte string", k, len(query))
		}
	}
}
