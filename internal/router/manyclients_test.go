package router

import (
	"net"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestManyClients: 5,000 client connections (fewer when the open file limit
// cannot hold both ends of that many) are accepted, authenticated and each
// served a query on 4 backend connections per node, all at once, without an
// error: they queue for the backends (pool.Config.FairAfter) and none is
// refused or times out.
func TestManyClients(t *testing.T) {
	n := 5000
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if room := int(lim.Cur-256) / 2; room < n { // the client's and the router's end of each
		t.Logf("open file limit %d: %d clients instead of %d", lim.Cur, room, n)
		n = room
	}
	s := startRouter(t, Config{Auth: AuthTrust, MaxClients: n + 10, Pool: PoolConfig{MaxSize: 4, WaitTimeout: 2 * time.Minute}}, nil)
	conns := make([]net.Conn, n)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := rawConnect(s)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	if len(errs) > 0 {
		t.Fatalf("%d of %d clients failed to connect; first: %v", len(errs), n, errs[0])
	}
	s.sessMu.Lock()
	sessions := len(s.sessions)
	s.sessMu.Unlock()
	if sessions != n {
		t.Errorf("router sessions %d, want %d", sessions, n)
	}
	start := make(chan struct{})
	vals := make([]string, n)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			v, err := rawQuery(c, "SELECT val FROM items WHERE id = 7")
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
			}
			vals[i] = v
		}()
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d queries failed; first: %v", len(errs), n, errs[0])
	}
	want := "shard" + strconv.Itoa(shardOf("t1")) + "-7"
	for i, v := range vals {
		if v != want {
			t.Fatalf("client %d read %q, want %q", i, v, want)
		}
	}
}
