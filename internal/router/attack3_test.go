package router

import (
	"context"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// terminate ends a backend process on node a (pid as the router's client
// saw it from pg_backend_pid) and waits until it is gone.
func terminate(t *testing.T, pid string) {
	t.Helper()
	dc, err := pgx.Connect(context.Background(), nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close(context.Background())
	if _, err := dc.Exec(context.Background(), "SELECT pg_terminate_backend("+pid+")"); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		var n int
		if err := dc.QueryRow(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE pid = "+pid).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if i == 200 {
			t.Fatal("backend not terminated")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pidOf(got string) string {
	return strings.TrimSuffix(strings.TrimPrefix(strings.Fields(got)[0], "D("), ")")
}

// A backend terminated while it serves a client's transaction: the client
// gets the server's FATAL 57P01 (a SQLSTATE, then the connection closes, as
// from PostgreSQL), and the next client of the pool is served on a new
// backend. A backend terminated while idle in the pool and checked out
// again at once (within what used to be Pool.CheckIdle's 100 ms, when its
// next client got 57P01): the pool's peek at checkout finds the FATAL
// waiting in the socket and the client is served on a new backend.
func TestHostileTerminatedBackend(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1, CheckIdle: checkIdleForTest}}, nil)
	// While serving.
	a := tcConnect(t, s, "t2")
	if got := a.q("BEGIN"); got != "C(BEGIN) ZT" {
		t.Fatalf("BEGIN: %s", got)
	}
	terminate(t, pidOf(a.q("SELECT pg_backend_pid() FROM whoami")))
	a.send(&pgproto3.Query{String: "INSERT INTO sink (body) VALUES ('ht1') RETURNING 1"})
	if got := recvUntil[*pgproto3.ReadyForQuery](a); !strings.HasPrefix(got, "E(57P01:") || !strings.HasSuffix(got, "CLOSED") {
		t.Fatalf("statement on a terminated backend: %s, want E(57P01:...) then closed", got)
	}
	b := tcConnect(t, s, "t2")
	if got := b.q("SELECT count(*) FROM sink WHERE body = 'ht1'"); got != "D(0) C(SELECT 1) ZI" {
		t.Fatalf("next client: %s", got)
	}
	// While idle in the pool, checked out again at once.
	terminate(t, pidOf(b.q("SELECT pg_backend_pid() FROM whoami")))
	c := tcConnect(t, s, "t2")
	if got := c.q("INSERT INTO sink (body) VALUES ('ht2') RETURNING 1"); got != "D(1) C(INSERT 0 1) ZI" {
		t.Fatalf("first statement after the pool's backend was terminated while idle: %s", got)
	}
	d := tcConnect(t, s, "t2")
	if got := d.q("SELECT count(*) FROM sink WHERE body IN ('ht1', 'ht2')"); got != "D(1) C(SELECT 1) ZI" {
		t.Fatalf("client after the one that got 57P01: %s", got)
	}
	if got := b.q("SELECT 'b still here' FROM whoami"); got != "D(b still here) C(SELECT 1) ZI" {
		t.Fatalf("client b, whose backend was terminated between its transactions: %s", got)
	}
	d.q("DELETE FROM sink WHERE body = 'ht2'")
}

// checkIdleForTest is the Pool.CheckIdle TestHostileTerminatedBackend runs
// with: the default (0, at every checkout).
var checkIdleForTest time.Duration

// Tenants: two tenants in one pipeline (one implicit transaction: the
// second is refused, 25001, nothing crosses), a tenant switch inside a
// transaction, a temporary table a DO block makes and a client's prepared
// statement, neither of which the next client of the backend may see, and
// an unnamed statement parsed on one backend and bound on another.
func TestHostileTenantsAndLeftovers(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 2}}, nil)
	a := tcConnect(t, s, "")
	a.send(&pgproto3.Parse{Query: "/* tenant: t2 */ SELECT shard FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Parse{Query: "/* tenant: t4 */ SELECT shard FROM whoami"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := a.recv(1); !strings.HasPrefix(got, "P B D(2) C(SELECT 1) ") || !strings.Contains(got, "E(25001:") || strings.Contains(got, "D(4)") {
		t.Fatalf("two tenants in one implicit transaction: %s", got)
	}
	a.send(&pgproto3.Query{String: "/* tenant: t2 */ SELECT shard FROM whoami"}, &pgproto3.Query{String: "/* tenant: t4 */ SELECT shard FROM whoami"})
	if got := a.recv(2); got != "D(2) C(SELECT 1) ZI D(4) C(SELECT 1) ZI" {
		t.Fatalf("two tenants in two pipelined queries: %s", got)
	}
	a.q("BEGIN")
	a.q("SET LOCAL pgtenant.tenant = 't2'")
	a.q("SELECT shard FROM whoami")
	if got := a.q("SET LOCAL pgtenant.tenant = 't4'"); !strings.HasPrefix(got, "E(25001:") {
		t.Fatalf("tenant switch inside a transaction: %s", got)
	}
	if got := a.q("/* tenant: t4 */ SELECT shard FROM whoami"); !strings.Contains(got, "E(25") {
		t.Fatalf("hint of another tenant inside a transaction: %s", got)
	}
	a.q("ROLLBACK")

	// Leftovers: a temporary table made where the lexer cannot see it, and a
	// prepared statement, on the pool's most recently used backend.
	b := tcConnect(t, s, "t2")
	if got := b.q("DO $$ BEGIN EXECUTE 'CREATE TEMP TABLE leak (x int)'; EXECUTE 'INSERT INTO leak VALUES (1)'; END $$"); !strings.HasSuffix(got, "ZI") {
		t.Fatalf("DO: %s", got)
	}
	b.send(&pgproto3.Parse{Name: "mine", Query: "SELECT 'b''s' FROM whoami"}, &pgproto3.Sync{})
	b.recv(1)
	c := tcConnect(t, s, "t2")
	if got := c.q("SELECT count(*) FROM pg_temp.leak"); !strings.HasPrefix(got, "E(42P01:") {
		t.Fatalf("another client's temporary table: %s", got)
	}
	c.send(&pgproto3.Bind{PreparedStatement: "mine"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got := c.recv(1); !strings.HasPrefix(got, "E(26000:") {
		t.Fatalf("another client's prepared statement: %s", got)
	}
	if got := c.q("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%b''''s%'"); !strings.HasPrefix(got, "D(") {
		t.Logf("pg_prepared_statements: %s", got)
	}

	// The unnamed statement parsed on one backend, bound on another: d
	// parses, e holds d's backend in a transaction, d binds.
	d := tcConnect(t, s, "t2")
	d.send(&pgproto3.Parse{Query: "SELECT shard, pg_backend_pid() FROM whoami"}, &pgproto3.Sync{})
	if got := d.recv(1); got != "P ZI" {
		t.Fatalf("parse: %s", got)
	}
	e := tcConnect(t, s, "t2")
	e.q("BEGIN")
	epid := strings.Split(strings.TrimPrefix(strings.Fields(e.q("SELECT shard, pg_backend_pid() FROM whoami"))[0], "D("), ",")[1]
	d.send(&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	got := d.recv(1)
	if !strings.HasPrefix(got, "B D(2,") || strings.Contains(got, ","+epid) {
		t.Fatalf("unnamed statement bound on another backend: %s (the other client holds pid %s)", got, epid)
	}
	e.q("COMMIT")
	if got := d.q("LISTEN x"); !strings.HasPrefix(got, "E(0A000:") {
		t.Fatalf("LISTEN in transaction mode: %s", got)
	}
	if got := d.q("NOTIFY x, 'y'"); !strings.HasSuffix(got, "ZI") || strings.Contains(got, "E(") {
		t.Fatalf("NOTIFY: %s", got)
	}
}

// A Query the router refuses after the client's Bind/Execute and a Flush
// (their answers already read): the implicit transaction the server holds
// open for them is rolled back as a server error would, not committed by
// the client's next Sync.
func TestHostileRefusedQueryAfterFlush(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	c := tcConnect(t, s, "t2")
	c.send(&pgproto3.Parse{Query: "INSERT INTO sink (body) VALUES ('hflush')"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
	if got := recvUntil[*pgproto3.CommandComplete](c); got != "P B C(INSERT 0 1)" {
		t.Fatalf("insert: %s", got)
	}
	c.send(&pgproto3.Query{String: "LISTEN hflush"})
	got := c.recv(1)
	c.send(&pgproto3.Sync{})
	got += " | " + c.recv(1)
	got += " | " + c.q("SELECT count(*) FROM sink WHERE body = 'hflush'")
	if want := "E(0A000:LISTEN is not supported in transaction pool mode) ZI | ZI | D(0) C(SELECT 1) ZI"; got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// A client that stops reading in the middle of a large result: the router
// does not buffer the result (the server waits, as it would for the client
// itself), other clients are served meanwhile, and the stalled client gets
// every row once it reads again.
func TestHostileStalledReader(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 2}}, nil)
	a := tcConnect(t, s, "t2")
	const rows, width = 100000, 1000 // ~100 MB of DataRows
	a.send(&pgproto3.Query{String: "SELECT repeat('x', 1000) FROM generate_series(1, 100000)"})
	b := tcConnect(t, s, "t2")
	for i := 0; i < 20; i++ { // a's query is running, or waiting for a to read
		if got := b.q("SELECT shard FROM whoami"); got != "D(2) C(SELECT 1) ZI" {
			t.Fatalf("another client while a stalls: %s", got)
		}
	}
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	if m.HeapInuse > 64<<20 {
		t.Errorf("heap in use while a client stalls on a ~%d MB result: %d MB", rows*width>>20, m.HeapInuse>>20)
	}
	n := 0
	for {
		msg, err := a.fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if d, ok := msg.(*pgproto3.DataRow); ok && len(d.Values[0]) == width {
			n++
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if n != rows {
		t.Fatalf("rows read after the stall: %d, want %d", n, rows)
	}
}

// Session settings undone by RESET ALL or DISCARD ALL are not replayed on the
// backend the session's next transaction lands on (another one: the first
// is held by another client), and that backend has the shard's path.
func TestHostileResetThenOtherBackend(t *testing.T) {
	for _, undo := range []string{"RESET ALL", "DISCARD ALL", "RESET work_mem"} {
		t.Run(undo, func(t *testing.T) {
			s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 2}}, nil)
			a := tcConnect(t, s, "t2")
			a.q("SET work_mem = '64kB'")
			if got := a.q(undo); strings.Contains(got, "E(") {
				t.Fatalf("%s: %s", undo, got)
			}
			h := tcConnect(t, s, "t2") // holds the most recently used backend
			h.q("BEGIN")
			hpid := pidOf(h.q("SELECT pg_backend_pid() FROM whoami"))
			got := a.q("SELECT current_setting('work_mem') || ' ' || current_setting('search_path') || ' ' || pg_backend_pid() FROM whoami")
			f := strings.Fields(strings.TrimPrefix(strings.SplitN(got, ")", 2)[0], "D("))
			if !strings.HasPrefix(got, "D(4MB shard_0002, ") || f[len(f)-1] == hpid {
				t.Fatalf("after SET work_mem and %s, on another backend: %s (held: %s)", undo, got, hpid)
			}
			h.q("ROLLBACK")
		})
	}
}

// A cancel request for another client's statement without its secret —
// the router key's process id with a wrong secret, or the backend's own
// process id (pg_backend_pid) with any — cancels nothing: the statement
// finishes with its row.
func TestHostileCancelForeignKey(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	a := tcConnect(t, s, "t2")
	bpid := pidOf(a.q("SELECT pg_backend_pid() FROM whoami"))
	var backendPID uint32
	for _, ch := range bpid {
		backendPID = backendPID*10 + uint32(ch-'0')
	}
	a.send(&pgproto3.Query{String: "SELECT 'done' FROM whoami, pg_sleep(1)"})
	wrong := append([]byte(nil), a.pc.SecretKey()...)
	wrong[0] ^= 0xff
	for _, req := range []*pgproto3.CancelRequest{
		{ProcessID: a.pc.PID(), SecretKey: wrong},
		{ProcessID: backendPID, SecretKey: make([]byte, 4)},
		{ProcessID: backendPID, SecretKey: a.pc.SecretKey()},
	} {
		nc, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		buf, err := req.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		nc.Write(buf)
		io.Copy(io.Discard, nc) // the router closes it, as a server does
		nc.Close()
	}
	if got := a.recv(1); got != "D(done) C(SELECT 1) ZI" {
		t.Fatalf("statement after foreign cancel requests: %s", got)
	}
}
