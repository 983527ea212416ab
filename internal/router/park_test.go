//go:build linux

package router

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// parkTickTest is the sweeper's period in these tests: clients park after
// 10-20 ms of silence.
const parkTickTest = 10 * time.Millisecond

// parkedCount is the number of s's parked sessions.
func parkedCount(s *Server) int {
	s.sessMu.Lock()
	defer s.sessMu.Unlock()
	n := 0
	for _, ss := range s.sessions {
		if ss.parked() {
			n++
		}
	}
	return n
}

// waitUntil waits until cond holds (a condition, not a duration: it fails
// only after minutes).
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i > 12000 {
			t.Fatalf("waited 2 minutes for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitParked waits until n of s's sessions are parked.
func waitParked(t testing.TB, s *Server, n int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d parked clients", n), func() bool { return parkedCount(s) == n })
}

// watchedSockets is the number of sockets in s's idle watch's epoll set
// (the "tfd:" lines of its /proc fdinfo).
func watchedSockets(t testing.TB, s *Server) int {
	t.Helper()
	w := s.iw.Load()
	if w == nil {
		return 0
	}
	b, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(w.epfd))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "tfd:")
}

// TestParkedClientMemory: a client idle between transactions holds no
// goroutine (its 8 KiB stack was most of an idle client's memory) and no
// read or write buffer; its next query is served. Before parking, each idle
// client held a goroutine and ~8 KiB of stack.
func TestParkedClientMemory(t *testing.T) {
	t.Cleanup(checkNoLeak(t))
	s := startRouter(t, Config{Auth: AuthTrust, testParkTick: parkTickTest}, nil)
	const n = 200
	queriedClients(t, s, 1) // the pool's backend, the idle watch
	waitParked(t, s, 1)
	mem := func() (uint64, int) {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC() // and what sync.Pools kept
		runtime.ReadMemStats(&m)
		return m.HeapInuse + m.StackInuse, runtime.NumGoroutine()
	}
	mem0, g0 := mem()
	conns := queriedClients(t, s, n)
	waitParked(t, s, n+1)
	mem1, g1 := mem()
	per := (float64(mem1) - float64(mem0)) / n / 1024
	perG := float64(g1-g0) / n
	t.Logf("per idle client: %.2f goroutines, %.1f KiB of heap and stack (router session and the test's connection)", perG, per)
	if perG > 0.05 {
		t.Errorf("%.2f goroutines per idle client, want 0", perG)
	}
	if per > 6 {
		t.Errorf("heap and stack per idle client %.1f KiB, want at most 6 KiB (no goroutine stack, no buffer)", per)
	}
	if got := watchedSockets(t, s); got != n+1 {
		t.Errorf("%d sockets in the idle watch, want %d", got, n+1)
	}
	// Each is served again, and parks again.
	want := "shard" + strconv.Itoa(shardOf("t1")) + "-7"
	for i, c := range conns {
		if v, err := rawQuery(c, "SELECT val FROM items WHERE id = 7"); err != nil || v != want {
			t.Fatalf("client %d after its park: %q, %v; want %q", i, v, err, want)
		}
	}
	waitParked(t, s, n+1)
	// Clients that leave while parked end their sessions, their sockets
	// out of the watch.
	for _, c := range conns {
		c.Close()
	}
	waitUntil(t, "the parked clients' sessions to end", func() bool {
		s.sessMu.Lock()
		defer s.sessMu.Unlock()
		return len(s.sessions) == 1
	})
	if got := watchedSockets(t, s); got != 1 {
		t.Errorf("%d sockets in the idle watch after their clients left, want 1", got)
	}
}

// TestParkedClientKeepsSession: what a session keeps (named prepared
// statements, the tenant, session settings) survives its parks, and a
// pipeline sent to a parked client is answered in full and in order.
func TestParkedClientKeepsSession(t *testing.T) {
	t.Cleanup(checkNoLeak(t))
	s := startRouter(t, Config{Auth: AuthTrust, testParkTick: parkTickTest}, nil)
	c := rawClient(t, s) // tenant t1
	for _, q := range []string{"SET pgtenant.tenant = 't3'", "SET application_name = 'parked'"} {
		if _, err := rawQuery(c, q); err != nil {
			t.Fatal(q, err)
		}
	}
	// A named statement, prepared before the park.
	if _, err := c.Write(hotMsg(hotMsg(nil, 'P', cstr("byid"), cstr("SELECT val FROM items WHERE id = $1"), []byte{0, 0}), 'S')); err != nil {
		t.Fatal(err)
	}
	if _, err := rawReadReady(c); err != nil {
		t.Fatal(err)
	}
	waitParked(t, s, 1)
	if v, err := rawQuery(c, "SHOW application_name"); err != nil || v != "parked" {
		t.Fatalf("application_name after a park: %q, %v", v, err)
	}
	waitParked(t, s, 1)
	// A pipeline: two Bind/Execute of the statement, each with its Sync,
	// then a Query, in one write to the parked client.
	bind := func(b []byte, id int) []byte {
		v := strconv.Itoa(id)
		return hotMsg(b, 'B', cstr(""), cstr("byid"), []byte{0, 0, 0, 1}, binary.BigEndian.AppendUint32(nil, uint32(len(v))), []byte(v), []byte{0, 0})
	}
	exec := func(b []byte) []byte { return hotMsg(hotMsg(b, 'E', cstr(""), []byte{0, 0, 0, 0}), 'S') }
	pipe := exec(bind(exec(bind(nil, 3)), 4))
	if _, err := c.Write(append(pipe, hotQuery("SELECT val FROM items WHERE id = 5")...)); err != nil {
		t.Fatal(err)
	}
	for _, id := range []int{3, 4, 5} {
		want := "shard" + strconv.Itoa(shardOf("t3")) + "-" + strconv.Itoa(id)
		if v, err := rawReadReady(c); err != nil || v != want {
			t.Fatalf("pipeline after a park, id %d: %q, %v; want %q", id, v, err, want)
		}
	}
	// A message sent in two parts: the client is not idle while part of
	// one is read (the router waits for the rest, sweeps going by).
	frame := exec(bind(nil, 6))
	waitParked(t, s, 1)
	if _, err := c.Write(frame[:4]); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the client to be unparked", func() bool { return parkedCount(s) == 0 })
	time.Sleep(5 * parkTickTest)
	if _, err := c.Write(frame[4:]); err != nil {
		t.Fatal(err)
	}
	if v, err := rawReadReady(c); err != nil || v != "shard"+strconv.Itoa(shardOf("t3"))+"-6" {
		t.Fatalf("message sent in two parts around the sweeps: %q, %v", v, err)
	}
	// The admin view still lists the parked client with its tenant.
	waitParked(t, s, 1)
	cl := s.Clients()
	if len(cl) != 1 || cl[0].Tenant != "t3" {
		t.Errorf("admin clients while parked: %+v, want one of tenant t3", cl)
	}
}

// TestParkedClientCancel: a parked client's cancel key still reaches its
// next query, and a cancel request while it is parked cancels nothing.
func TestParkedClientCancel(t *testing.T) {
	t.Cleanup(checkNoLeak(t))
	s := startRouter(t, Config{testParkTick: parkTickTest}, nil)
	pc, err := pgconn.Connect(ctx(t), routerURL(s, "t2"))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(context.Background())
	waitParked(t, s, 1)
	if err := pc.CancelRequest(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Exec(ctx(t), "SELECT 1 FROM whoami").ReadAll(); err != nil {
		t.Fatalf("query after a cancel request while parked: %v", err)
	}
	waitParked(t, s, 1)
	done := make(chan error, 1)
	go func() {
		_, err := pc.Exec(ctx(t), "SELECT pg_sleep(60) FROM whoami").ReadAll()
		done <- err
	}()
	waitUntil(t, "the query to hold a backend", func() bool { return s.busySessions() == 1 })
	if err := pc.CancelRequest(ctx(t)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; pgCode(err) != "57014" {
		t.Fatalf("cancelled query: %v, want SQLSTATE 57014", err)
	}
}

// TestParkedClientTLS: a TLS client is not parked (crypto/tls may hold a
// record read in part) and is served as before.
func TestParkedClientTLS(t *testing.T) {
	t.Cleanup(checkNoLeak(t))
	s := startRouter(t, Config{TLS: selfSigned(t), testParkTick: parkTickTest}, nil)
	c, err := pgx.Connect(ctx(t), strings.Replace(routerURL(s, "t5"), "sslmode=disable", "sslmode=require", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	plain := connect(t, s, "t5", pgx.QueryExecModeExec)
	waitParked(t, s, 1) // the plain client: a sweep went by the TLS one too
	time.Sleep(5 * parkTickTest)
	if n := parkedCount(s); n != 1 {
		t.Errorf("%d parked clients, want 1 (not the TLS one)", n)
	}
	for _, cc := range []*pgx.Conn{c, plain} {
		var sh int
		if err := cc.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 5 {
			t.Fatalf("after idling: %d %v", sh, err)
		}
	}
}

// TestParkedClientDrainAndClose: Drain does not wait for parked clients,
// whose next transaction is refused with 57P01; the idle timeout ends a
// parked client; Serve's end ends the parked ones (no goroutine left).
func TestParkedClientDrainAndClose(t *testing.T) {
	t.Cleanup(checkNoLeak(t))
	t.Run("drain", func(t *testing.T) {
		s := startRouter(t, Config{testParkTick: parkTickTest}, nil)
		c := connect(t, s, "t1", pgx.QueryExecModeExec)
		if _, err := c.Exec(ctx(t), "SELECT 1 FROM whoami"); err != nil {
			t.Fatal(err)
		}
		waitParked(t, s, 1)
		if n := s.Drain(ctx(t), time.Minute); n != 0 {
			t.Fatalf("drain: %d clients holding a backend, want 0", n)
		}
		if _, err := c.Exec(ctx(t), "SELECT 1 FROM whoami"); pgCode(err) != "57P01" {
			t.Fatalf("parked client's transaction after drain: %v, want SQLSTATE 57P01", err)
		}
	})
	t.Run("idle timeout", func(t *testing.T) {
		s := startRouter(t, Config{Auth: AuthTrust, ClientIdleTimeout: 300 * time.Millisecond, testParkTick: parkTickTest}, nil)
		c := rawClient(t, s)
		waitParked(t, s, 1)
		c.SetReadDeadline(time.Now().Add(2 * time.Minute))
		b, err := io.ReadAll(c) // the FATAL, then the end of the connection
		if err != nil || !strings.Contains(string(b), "SFATAL\x00") || !strings.Contains(string(b), "C57P05\x00") {
			t.Fatalf("parked client past its idle timeout: %q, %v; want FATAL 57P05", b, err)
		}
	})
	t.Run("close", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		fds0 := openFDs(t)
		s := New(Config{Listen: "127.0.0.1:0", Users: map[string]string{testUser: testPassword}, Auth: AuthTrust, testParkTick: parkTickTest})
		if err := s.SetMap(ctx, testMap()); err != nil {
			t.Fatal(err)
		}
		if err := s.Open(ctx); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx) }()
		conns := []net.Conn{rawClient(t, s), rawClient(t, s), rawClient(t, s)}
		waitParked(t, s, 3)
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		for i, c := range conns {
			c.SetReadDeadline(time.Now().Add(time.Minute))
			if _, err := io.ReadAll(c); err != nil {
				t.Errorf("client %d after Serve ended: %v, want end of stream", i, err)
			}
			c.Close()
		}
		// No socket or epoll set of the router's is left open.
		if fds := openFDs(t); fds != fds0 {
			t.Errorf("%d open descriptors after Serve ended, %d before the router", fds, fds0)
		}
	})
}

// openFDs is the number of this process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestParkedClientSessionMode: a session-mode client parks while it holds
// no backend (connected, before its first statement: an application's
// pool of connections opened ahead), and is served once it speaks; from
// then on it holds its backend, watched without a goroutine (armIdle), and
// does not park. Before, session-mode clients never parked.
func TestParkedClientSessionMode(t *testing.T) {
	t.Cleanup(checkNoLeak(t))
	s := startRouter(t, Config{PoolMode: PoolSession, testParkTick: parkTickTest}, nil)
	tenants := []string{"t4", "t5", "t6"}
	conns := make([]*pgx.Conn, len(tenants))
	for i, tn := range tenants {
		conns[i] = connect(t, s, tn, pgx.QueryExecModeExec)
	}
	waitParked(t, s, len(tenants))
	for i, c := range conns {
		var sh int
		if err := c.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != shardOf(tenants[i]) {
			t.Fatalf("session-mode client %d after its park: shard %d, %v; want %d", i, sh, err, shardOf(tenants[i]))
		}
		if _, err := c.Exec(ctx(t), "SET application_name = 'parked"+strconv.Itoa(i)+"'"); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * parkTickTest) // sweeps go by
	if n := parkedCount(s); n != 0 {
		t.Errorf("%d parked session-mode clients holding a backend, want 0", n)
	}
	for i, c := range conns {
		var name string
		if err := c.QueryRow(ctx(t), "SHOW application_name").Scan(&name); err != nil || name != "parked"+strconv.Itoa(i) {
			t.Errorf("session-mode client %d: application_name %q, %v", i, name, err)
		}
	}
}
