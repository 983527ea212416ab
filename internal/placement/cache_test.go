package placement

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"
)

func TestTenantCache(t *testing.T) {
	c := NewTenantCache(1600, time.Hour) // 100 per part
	if _, ok := c.Get("a"); ok {
		t.Fatal("empty cache hit")
	}
	f, leader := c.Begin("a")
	if !leader {
		t.Fatal("first Begin is not the leader")
	}
	g, leader2 := c.Begin("a")
	if leader2 || g != f {
		t.Fatal("a second Begin of the same tenant did not join the flight")
	}
	f.Finish(7, nil)
	if s, err := g.Wait(context.Background()); s != 7 || err != nil {
		t.Fatalf("follower got %d, %v", s, err)
	}
	if s, ok := c.Get("a"); !ok || s != 7 {
		t.Fatalf("Get(a) = %d, %v", s, ok)
	}

	// An invalidation during a flight keeps its (possibly old) answer out.
	f, _ = c.Begin("b")
	c.Invalidate("b")
	f.Finish(NoShard, nil)
	if _, ok := c.Get("b"); ok {
		t.Fatal("an answer invalidated in flight was cached")
	}
	f, _ = c.Begin("c")
	c.Clear()
	f.Finish(1, nil)
	if _, ok := c.Get("c"); ok {
		t.Fatal("an answer cleared in flight was cached")
	}
	// Failed lookups are not cached.
	f, _ = c.Begin("d")
	f.Finish(0, fmt.Errorf("catalog away"))
	if _, ok := c.Get("d"); ok {
		t.Fatal("a failed lookup was cached")
	}

	// DropUnknown keeps registered tenants.
	for _, k := range []string{"x", "y"} {
		f, _ := c.Begin(k)
		f.Finish(NoShard, nil)
	}
	f, _ = c.Begin("z")
	f.Finish(3, nil)
	c.DropUnknown()
	if _, ok := c.Get("x"); ok {
		t.Fatal("DropUnknown kept an unknown tenant")
	}
	if s, ok := c.Get("z"); !ok || s != 3 {
		t.Fatal("DropUnknown dropped a registered tenant")
	}
	c.Invalidate("z")
	if _, ok := c.Get("z"); ok {
		t.Fatal("Invalidate kept the entry")
	}
}

func TestTenantCacheBound(t *testing.T) {
	c := NewTenantCache(160, time.Hour)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 5000 {
				k := fmt.Sprintf("w%d-%d", w, i)
				if _, ok := c.Get(k); ok {
					continue
				}
				f, leader := c.Begin(k)
				if leader {
					f.Finish(i%16, nil)
				}
				if i%97 == 0 {
					c.Invalidate(k)
				}
			}
		}()
	}
	wg.Wait()
	if n := c.Len(); n > 160 || n == 0 {
		t.Fatalf("%d entries, capacity 160", n)
	}
	// A hot entry survives a scan of cold ones (CLOCK's second chance).
	f, _ := c.Begin("hot")
	f.Finish(1, nil)
	for i := range 1000 {
		c.Get("hot")
		f, _ := c.Begin(fmt.Sprintf("cold%d", i))
		f.Finish(2, nil)
	}
	if _, ok := c.Get("hot"); !ok {
		t.Fatal("a tenant read between every insert was evicted")
	}
}

func TestTenantCacheNegativeTTL(t *testing.T) {
	c := NewTenantCache(1600, 30*time.Millisecond)
	f, _ := c.Begin("new")
	f.Finish(NoShard, nil)
	if s, ok := c.Get("new"); !ok || s != NoShard {
		t.Fatalf("fresh negative entry: %d, %v", s, ok)
	}
	f, _ = c.Begin("old")
	f.Finish(4, nil)
	time.Sleep(40 * time.Millisecond)
	if _, ok := c.Get("new"); ok {
		t.Fatal("a negative entry outlived its TTL")
	}
	if s, ok := c.Get("old"); !ok || s != 4 {
		t.Fatal("a registered tenant expired")
	}
	// Registered after all: the entry is replaced.
	f, _ = c.Begin("new")
	f.Finish(2, nil)
	if s, ok := c.Get("new"); !ok || s != 2 {
		t.Fatalf("replaced entry: %d, %v", s, ok)
	}
	// No TTL: negative answers are not kept.
	c = NewTenantCache(1600, 0)
	f, _ = c.Begin("x")
	f.Finish(NoShard, nil)
	if _, ok := c.Get("x"); ok {
		t.Fatal("negative answer kept without a TTL")
	}
}

// TestTenantCacheStale: after Stale, Get asks again (nil) while Known still
// has the registered answers to fall back on; an answer read before Stale
// (PutAt with the old epoch, or a flight begun before) is Known only.
func TestTenantCacheStale(t *testing.T) {
	c := NewTenantCache(1600, time.Hour)
	f, _ := c.Begin("a")
	f.Finish(4, nil)
	f, _ = c.Begin("gone")
	f.Finish(NoShard, nil)
	before := c.Epoch()
	inflight, _ := c.Begin("b")
	c.Stale()
	inflight.Finish(6, nil)
	c.PutAt("c", 2, before)
	c.PutAt("d", 9, c.Epoch())
	for _, k := range []string{"a", "b", "c", "gone"} {
		if s, ok := c.Get(k); ok {
			t.Errorf("Get(%s) = %d after Stale; want a miss", k, s)
		}
	}
	if s, ok := c.Get("d"); !ok || s != 9 {
		t.Errorf("Get(d) = %d, %v; want 9 (read after Stale)", s, ok)
	}
	if s, ok := c.Known("a"); !ok || s != 4 {
		t.Errorf("Known(a) = %d, %v; want 4", s, ok)
	}
	if s, ok := c.Known("c"); !ok || s != 2 {
		t.Errorf("Known(c) = %d, %v; want 2", s, ok)
	}
	if _, ok := c.Known("gone"); ok {
		t.Error("Known(gone): an unregistered answer is not one to fall back on")
	}
	// A fresh lookup makes the answer current again.
	f, _ = c.Begin("a")
	f.Finish(5, nil)
	if s, ok := c.Get("a"); !ok || s != 5 {
		t.Errorf("Get(a) = %d, %v after a new lookup; want 5", s, ok)
	}
}

// TestTenantCacheKeepsNoCallerString: entries are keyed by a copy of the
// tenant id, not the caller's string, which a router cuts from the query
// text that named the tenant: the cache (up to its capacity of entries)
// would keep every such text alive.
func TestTenantCacheKeepsNoCallerString(t *testing.T) {
	query := "/* tenant: acme */ INSERT INTO big VALUES " + strings.Repeat("(1),", 1<<16) + "(1)"
	at := len("/* tenant: ")
	c := NewTenantCache(64, time.Minute)
	f, leader := c.Begin(query[at : at+4])
	if !leader {
		t.Fatal("Begin: not the leader")
	}
	f.Finish(3, nil)
	c.PutAt(query[at:at+2], 5, c.Epoch())
	c.PutAt(query[at:at+3], NoShard, c.Epoch())
	if s, ok := c.Get("acme"); !ok || s != 3 {
		t.Fatalf("Get(acme) = %d, %v", s, ok)
	}
	begin := uintptr(unsafe.Pointer(unsafe.StringData(query)))
	end := begin + uintptr(len(query))
	n := 0
	for i := range c.parts {
		p := &c.parts[i]
		p.mu.RLock()
		for k, e := range p.entries {
			n++
			for _, s := range []string{k, e.key} {
				if a := uintptr(unsafe.Pointer(unsafe.StringData(s))); a >= begin && a < end {
					t.Errorf("entry %q points into the caller's %d-byte string", s, len(query))
				}
			}
		}
		p.mu.RUnlock()
	}
	if n != 3 {
		t.Errorf("%d entries, want 3", n)
	}
}
