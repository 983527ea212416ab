package router

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgproto3"
)

// Cases found by running node-postgres's own integration tests through the
// router (e2e/nodepgsuite).

// node-postgres's `client.connect(); client.end()` (its issue 320) queues a
// Terminate before the socket connects, so the server reads 'X' 0 0 0 as the
// length of a startup packet. PostgreSQL closes such a connection without a
// word (COMMERROR: only logged); the router answered with an ErrorResponse,
// which node-postgres raised as an unhandled 'error' event.
func TestFidelityBadStartupLengthSilent(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	terminate := []byte{'X', 0, 0, 0, 4}
	startup := rawStartup("app", "pgtenant.tenant", "t1")
	for _, addr := range []string{fmt.Sprintf("127.0.0.1:%d", nodeA.Cluster.Port), s.Addr().String()} {
		for _, tt := range []struct {
			name string
			sent []byte
		}{
			{"terminate before startup", append(append([]byte{}, terminate...), startup...)},
			{"short length", []byte{0, 0, 0, 2, 0, 0, 0, 0}},
			{"huge length", []byte{0, 0x10, 0, 0, 0, 3, 0, 0}},
		} {
			nc, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			nc.Write(tt.sent)
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(nc)
			nc.Close()
			if len(got) != 0 || err != nil {
				t.Errorf("%s, %s: got %q, %v; want nothing, then the connection closed", addr, tt.name, got, err)
			}
		}
	}
}

// A session-mode client whose backend is terminated while the client is idle
// (node-postgres's pool error tests: pg_terminate_backend of the idle
// backends; its gh-issues/130) gets the FATAL error at once and the
// connection closes, as from PostgreSQL; the client used to hear nothing
// until its next query (only a client that had run LISTEN was told).
func TestFidelityFatalWhileIdleSession(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	f := func(c *tc) string {
		got := c.q("SELECT pg_backend_pid() FROM whoami")
		pid := strings.TrimSuffix(strings.TrimPrefix(strings.Fields(got)[0], "D("), ")")
		var ok bool
		if err := pgxQueryRow(t, nodeDSN(nodeA), "SELECT pg_terminate_backend("+pid+")", &ok); err != nil || !ok {
			t.Fatalf("terminate %s: %v %v", pid, ok, err)
		}
		return recvUntil[*pgproto3.ReadyForQuery](c)
	}
	want := f(tcDirect(t, 2))
	if got := f(tcConnect(t, s, "t2")); got != want {
		t.Errorf("session mode:\n got: %s\nwant: %s (PostgreSQL)", got, want)
	}
}

// Clients that prepare the same text share one server statement per backend
// (transaction mode). node-postgres's type-coercion tests (run with regular
// tables for temporary ones) drop and create a table with another column
// type between clients that never close their named statements: the next
// client's statement of the same text ran the stale one, "cached plan must
// not change result type" (0A000), and so did every later client on that
// backend, which on a server, with a fresh Parse, never fails. The router
// now forgets a shared statement whose Bind fails with 0A000: the next
// client of the text, and the failing client's retry, prepare it afresh.
// The first client to hit the stale statement still gets the error once.
func TestStaleSharedStatementAfterTypeChange(t *testing.T) {
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
	run := func(c *tc, name string) string {
		c.send(&pgproto3.Parse{Name: name, Query: "SELECT col FROM stale_types"},
			&pgproto3.Bind{PreparedStatement: name}, &pgproto3.Execute{}, &pgproto3.Sync{})
		return c.recv(1)
	}
	a := tcConnect(t, s, "t2")
	if got := a.q("DROP TABLE IF EXISTS stale_types; CREATE TABLE stale_types (col int); INSERT INTO stale_types VALUES (7)"); !strings.HasSuffix(got, "ZI") {
		t.Fatalf("setup: %s", got)
	}
	if got, want := run(a, "a"), "P B D(7) C(SELECT 1) ZI"; got != want {
		t.Fatalf("first client: %s, want %s", got, want)
	}
	a.pc.Close(ctx(t)) // without closing its statement, as node-postgres
	b := tcConnect(t, s, "t2")
	if got := b.q("DROP TABLE stale_types; CREATE TABLE stale_types (col text); INSERT INTO stale_types VALUES ('7')"); !strings.HasSuffix(got, "ZI") {
		t.Fatalf("drop and create: %s", got)
	}
	first := run(b, "b")
	want := "P B D(7) C(SELECT 1) ZI" // a fresh Parse on a server
	if first != want {
		// The one failure left: the client's statement exists (its Parse
		// succeeded), and its next Bind must run.
		b.send(&pgproto3.Bind{PreparedStatement: "b"}, &pgproto3.Execute{}, &pgproto3.Sync{})
		if got, want := b.recv(1), "B D(7) C(SELECT 1) ZI"; got != want {
			t.Errorf("second client's retry: %s, want %s (first try: %s)", got, want, first)
		}
	}
	c := tcConnect(t, s, "t2")
	if got := run(c, "c"); got != want {
		t.Errorf("third client: %s, want %s (PostgreSQL, on a fresh connection)", got, want)
	}
	c.q("DROP TABLE stale_types")
}

// A client that negotiates TLS directly (sslnegotiation=direct, PostgreSQL
// 17+: node-postgres's ssl tests try it when the server reports 17 or later,
// which the router passes on from its nodes) gets a TLS session with the
// ALPN protocol "postgresql" and then the usual startup; one whose TLS
// names no ALPN protocol is refused with 08P01, as by PostgreSQL. Before,
// the ClientHello was read as a startup packet of an impossible length.
func TestDirectSSLNegotiation(t *testing.T) {
	s := startRouter(t, Config{TLS: selfSigned(t)}, nil)
	url := strings.Replace(routerURL(s, "t5"), "sslmode=disable", "sslmode=require&sslnegotiation=direct", 1)
	c, err := pgx.Connect(ctx(t), url)
	if err != nil {
		t.Fatalf("direct SSL: %v", err)
	}
	defer c.Close(ctx(t))
	tc, ok := c.PgConn().Conn().(*tls.Conn)
	if !ok {
		t.Fatalf("connection is a %T, want *tls.Conn", c.PgConn().Conn())
	}
	if got := tc.ConnectionState().NegotiatedProtocol; got != "postgresql" {
		t.Errorf("ALPN protocol %q, want postgresql", got)
	}
	var sh int
	if err := c.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 5 {
		t.Fatalf("over direct TLS: %d %v", sh, err)
	}
	// Without ALPN: a TLS session, then FATAL 08P01 and the end.
	nc, err := tls.Dial("tcp", s.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatalf("TLS without ALPN: %v", err)
	}
	defer nc.Close()
	nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(nc)
	if !strings.Contains(string(got), "C08P01") {
		t.Errorf("TLS without ALPN: got %q, want FATAL 08P01", got)
	}
}
