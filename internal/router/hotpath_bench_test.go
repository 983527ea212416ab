package router

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// BenchmarkHotPath runs one-statement transactions through the router over a
// raw client connection (no client library in the loop, so -benchmem counts
// the router's allocations per transaction), a different tenant each time,
// in the simple and the extended protocol: the path routerbench measures.
//
//	go test ./internal/router/ -run '^$' -bench HotPath -benchmem
func BenchmarkHotPath(b *testing.B) {
	s := startRouter(b, Config{}, nil)
	tenants := []string{"t0", "t1", "t2", "t3", "t4", "t5", "t6", "t7"}
	// runPer sends per requests of reqs in turn per op (a transaction).
	runPer := func(b *testing.B, s *Server, tenant string, reqs [][]byte, per int) {
		rc := openHot(b, s, tenant)
		for _, r := range reqs { // warm the pool
			rc.roundTrip(b, r)
		}
		b.ReportAllocs()
		b.ResetTimer()
		cpu0 := processCPU(b)
		i := 0
		for b.Loop() {
			for j := range per {
				rc.roundTrip(b, reqs[(i*per+j)%len(reqs)])
			}
			i++
		}
		// The test process's CPU (router and this client, not Postgres)
		// per transaction: ns/op is mostly Postgres and waiting, and
		// swings with the machine's load.
		b.ReportMetric(float64((processCPU(b)-cpu0).Nanoseconds())/float64(i), "cpu-ns/op")
	}
	run := func(b *testing.B, s *Server, tenant string, reqs [][]byte) { runPer(b, s, tenant, reqs, 1) }
	b.Run("simple", func(b *testing.B) {
		var reqs [][]byte
		for _, t := range tenants {
			reqs = append(reqs, hotQuery("/* tenant: "+t+" */ SELECT val FROM items WHERE id = 1"))
		}
		run(b, s, "", reqs)
	})
	b.Run("extended", func(b *testing.B) {
		var reqs [][]byte
		for _, t := range tenants {
			reqs = append(reqs, hotExtended("/* tenant: "+t+" */ SELECT val FROM items WHERE id = $1"))
		}
		run(b, s, "", reqs)
	})
	// A transaction block, a statement per round trip (BEGIN, two
	// selects, COMMIT): the client is waited for inside the transaction
	// three times (its read deadline, IdleInTransactionTimeout).
	b.Run("extended-block", func(b *testing.B) {
		var reqs [][]byte
		for _, t := range tenants {
			q := hotExtended("/* tenant: " + t + " */ SELECT val FROM items WHERE id = $1")
			reqs = append(reqs, hotQuery("BEGIN"), q, q, hotQuery("COMMIT"))
		}
		runPer(b, s, "", reqs, 4)
	})
	// Session mode, one tenant: the client keeps its backend, which the
	// router watches while the client is idle (see session.armIdle).
	sess := startRouter(b, Config{PoolMode: PoolSession}, nil)
	b.Run("session-simple", func(b *testing.B) {
		run(b, sess, "t1", [][]byte{hotQuery("SELECT val FROM items WHERE id = 1")})
	})
	b.Run("session-extended", func(b *testing.B) {
		run(b, sess, "t1", [][]byte{hotExtended("SELECT val FROM items WHERE id = $1")})
	})
}

// processCPU is the user and system CPU time of this process so far.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestSessionRoundTripAllocations: a session-mode round trip allocates no
// more than the same round trip in transaction mode. Watching the client's
// backend while the client is idle (a FATAL or a notification reaches the
// client at once) cost a goroutine, a channel and a closure per round trip:
// 5-6 allocations more.
func TestSessionRoundTripAllocations(t *testing.T) {
	skipWithoutIdleWatch(t)
	for _, q := range []struct {
		name string
		req  []byte
	}{
		{"simple", hotQuery("SELECT val FROM items WHERE id = 1")},
		{"extended", hotExtended("SELECT val FROM items WHERE id = $1")},
	} {
		t.Run(q.name, func(t *testing.T) {
			allocs := map[PoolMode]float64{}
			for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
				rc := openHot(t, startRouter(t, Config{PoolMode: mode}, nil), "t1")
				for i := 0; i < 10; i++ { // warm the pool and the buffers
					rc.roundTrip(t, q.req)
				}
				allocs[mode] = testing.AllocsPerRun(200, func() { rc.roundTrip(t, q.req) })
			}
			if got, want := allocs[PoolSession], allocs[PoolTransaction]; got > want {
				t.Errorf("session mode allocates %.0f times per round trip, transaction mode %.0f", got, want)
			}
		})
	}
}

// TestSessionIdleGoroutines: an idle session-mode client costs the router
// one goroutine, its session's, however many round trips it made (the idle
// watch's one goroutine is the server's); none is left once the clients
// have gone, nor, after the router stops, the watch's. A goroutine watched
// each idle session-mode client's backend before.
func TestSessionIdleGoroutines(t *testing.T) {
	skipWithoutIdleWatch(t)
	t.Cleanup(checkNoLeak(t)) // runs after the router stops
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	req := hotQuery("SELECT val FROM items WHERE id = 1")
	first := openHot(t, s, "t1")
	first.roundTrip(t, req)
	settle := func(want func(int) bool) int {
		n := runtime.NumGoroutine()
		for i := 0; i < 200 && !want(n); i++ {
			time.Sleep(10 * time.Millisecond)
			n = runtime.NumGoroutine()
		}
		return n
	}
	base := settle(func(int) bool { return false }) // 2 s: the pools' and pgx's goroutines come and go
	const clients = 20
	var cs []*hotClient
	for i := 0; i < clients; i++ {
		c := openHot(t, s, fmt.Sprintf("t%d", i%8))
		for j := 0; j < 3; j++ {
			c.roundTrip(t, req)
		}
		cs = append(cs, c)
	}
	if n := settle(func(n int) bool { return n <= base+clients }); n > base+clients {
		t.Errorf("%d idle session-mode clients: %d goroutines more, want at most %d (one each)", clients, n-base, clients)
	}
	for _, c := range cs {
		c.nc.Close()
	}
	if n := settle(func(n int) bool { return n <= base }); n > base {
		t.Errorf("clients gone: %d goroutines, %d before them", n, base)
	}
}

// hotClient is a client connection through the router read and written
// without a client library, so that allocations counted are the router's.
type hotClient struct {
	nc net.Conn
	rd []byte
}

// openHot connects to s with tenant (none: "") and hands over the socket.
func openHot(t testing.TB, s *Server, tenant string) *hotClient {
	c := connect(t, s, tenant, pgx.QueryExecModeSimpleProtocol)
	// pgx's background reader may still wait on the socket: SyncConn
	// stops it, or it takes the router's first answer (racehang_test.go).
	if err := c.PgConn().SyncConn(context.Background()); err != nil {
		t.Fatal(err)
	}
	hj, err := c.PgConn().Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hj.Conn.Close() })
	return &hotClient{nc: hj.Conn, rd: make([]byte, 64<<10)}
}

// roundTrip sends req as is and reads the answer up to ReadyForQuery.
func (rc *hotClient) roundTrip(t testing.TB, req []byte) {
	if _, err := rc.nc.Write(req); err != nil {
		t.Fatal(err)
	}
	have := 0
	for {
		n, err := rc.nc.Read(rc.rd[have:])
		if err != nil {
			t.Fatal(err)
		}
		have += n
		// Done when the last message is ReadyForQuery.
		if have >= 6 && rc.rd[have-6] == 'Z' && binary.BigEndian.Uint32(rc.rd[have-5:]) == 5 {
			if e := findError(rc.rd[:have]); e != "" {
				t.Fatal(e)
			}
			return
		}
	}
}

// hotMsg appends a protocol message of type typ with body's parts to buf.
func hotMsg(buf []byte, typ byte, body ...[]byte) []byte {
	n := 4
	for _, p := range body {
		n += len(p)
	}
	buf = append(buf, typ)
	buf = binary.BigEndian.AppendUint32(buf, uint32(n))
	for _, p := range body {
		buf = append(buf, p...)
	}
	return buf
}

func cstr(s string) []byte { return append([]byte(s), 0) }

// hotQuery is a simple-protocol Query of sql.
func hotQuery(sql string) []byte { return hotMsg(nil, 'Q', cstr(sql)) }

// hotExtended is Parse/Bind/Describe/Execute/Sync of sql with $1 = '1'.
func hotExtended(sql string) []byte { return hotExtendedArg(sql, "1") }

// hotExtendedArg is Parse/Bind/Describe/Execute/Sync of the unnamed
// statement sql with $1, $2, ... = args, as pgbench -M extended sends a
// statement.
func hotExtendedArg(sql string, args ...string) []byte {
	var r []byte
	r = hotMsg(r, 'P', cstr(""), cstr(sql), []byte{0, 0})
	params := binary.BigEndian.AppendUint16([]byte{0, 0}, uint16(len(args)))
	for _, a := range args {
		params = append(binary.BigEndian.AppendUint32(params, uint32(len(a))), a...)
	}
	r = hotMsg(r, 'B', cstr(""), cstr(""), params, []byte{0, 0})
	r = hotMsg(r, 'D', []byte{'P'}, cstr(""))
	r = hotMsg(r, 'E', cstr(""), []byte{0, 0, 0, 0})
	return hotMsg(r, 'S')
}

// findError returns the message of the first ErrorResponse in msgs, if any.
func findError(msgs []byte) string {
	for len(msgs) >= 5 {
		n := int(binary.BigEndian.Uint32(msgs[1:5]))
		if n < 4 || len(msgs) < 1+n {
			return ""
		}
		if msgs[0] == 'E' {
			return string(msgs[5 : 1+n])
		}
		msgs = msgs[1+n:]
	}
	return ""
}

// skipWithoutIdleWatch skips a test of the epoll idle watch
// (idlewatch_linux.go) where the router has only the goroutine watcher.
func skipWithoutIdleWatch(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("the idle watch without a goroutine per wait is Linux only")
	}
}
