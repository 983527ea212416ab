//go:build linux

package router

import (
	"net"
	"runtime"
	"strings"
	"testing"
	"unsafe"
)

// serveHeap is the heap in use, by the last garbage collection's count,
// of what the router allocated under Server.Serve (the accept path and the
// sessions' goroutines): the router's own memory per client, without the
// test's client connections. Allocations are counted one by one only with
// runtime.MemProfileRate at 1.
func serveHeap(t *testing.T) int64 {
	t.Helper()
	for range 3 { // the profile is up to two collections old
		runtime.GC()
	}
	var recs []runtime.MemProfileRecord
	for {
		n, ok := runtime.MemProfile(recs, true)
		if ok {
			recs = recs[:n]
			break
		}
		recs = make([]runtime.MemProfileRecord, n+100)
	}
	var sum int64
	for i := range recs {
		frames := runtime.CallersFrames(recs[i].Stack())
		for {
			f, more := frames.Next()
			if strings.HasPrefix(f.Function, "github.com/pgtenant/pgtenant/internal/router.(*Server).Serve") {
				sum += recs[i].InUseBytes()
				break
			}
			if !more {
				break
			}
		}
	}
	return sum
}

// queriedClients connects n raw clients to s, each served one query.
func queriedClients(t *testing.T, s *Server, n int) []net.Conn {
	t.Helper()
	conns := make([]net.Conn, n)
	for i := range conns {
		conns[i] = rawClient(t, s)
		if _, err := rawQuery(conns[i], "SELECT val FROM items WHERE id = 1"); err != nil {
			t.Fatal(err)
		}
	}
	return conns
}

// TestParkedClientHeap: what the router itself keeps on the heap per parked
// client (a session that ran a query and parked): the session struct in
// its 1,408-byte size class, the socket, no reader or socket I/O (made
// again when it wakes), no context for the pool's waits. Before: 2.7 KiB
// (the session in the 1,536-byte class, a reader and its raw socket I/O
// 0.5 KiB, the wait context 0.15 KiB).
func TestParkedClientHeap(t *testing.T) {
	// The malloc header of objects with pointers over 512 bytes takes 8.
	if got := unsafe.Sizeof(session{}) + 8; got > 1408 {
		t.Errorf("session struct %d bytes with its malloc header, want at most 1408 (its size class)", got)
	}
	t.Cleanup(checkNoLeak(t))
	rate := runtime.MemProfileRate
	runtime.MemProfileRate = 1
	t.Cleanup(func() { runtime.MemProfileRate = rate })
	s := startRouter(t, Config{Auth: AuthTrust, testParkTick: parkTickTest}, nil)
	const n = 200
	queriedClients(t, s, 1) // the pool's backend, the idle watch
	waitParked(t, s, 1)
	h0 := serveHeap(t)
	conns := queriedClients(t, s, n)
	waitParked(t, s, n+1)
	per := float64(serveHeap(t)-h0) / n
	t.Logf("router heap per parked client: %.0f bytes", per)
	if per > 2200 {
		t.Errorf("router heap per parked client %.0f bytes, want at most 2,200 (session, socket; no reader, no wait context)", per)
	}
	for i, c := range conns {
		if _, err := rawQuery(c, "SELECT val FROM items WHERE id = 2"); err != nil {
			t.Fatalf("client %d after its park: %v", i, err)
		}
	}
}
