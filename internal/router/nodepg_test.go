package router

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

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
