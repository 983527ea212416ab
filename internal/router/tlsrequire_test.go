package router

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// withSSLMode returns url with its sslmode replaced by mode (and extra
// parameters appended).
func withSSLMode(url, mode string) string {
	return strings.Replace(url, "sslmode=disable", "sslmode="+mode, 1)
}

func whoamiShard(t *testing.T, url string) (int, error) {
	t.Helper()
	c, err := pgx.Connect(ctx(t), url)
	if err != nil {
		return 0, err
	}
	defer c.Close(ctx(t))
	var sh int
	err = c.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&sh)
	return sh, err
}

func check28000(t *testing.T, what string, err error) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "28000" || pe.Severity != "FATAL" || !strings.Contains(pe.Hint, "sslmode=require") || !strings.Contains(pe.Hint, "tls_required") {
		t.Fatalf("%s: %v, want FATAL 28000 with a hint naming sslmode=require and the setting", what, err)
	}
}

// TestRequireTLS: with RequireTLS, a client without TLS is refused before
// authentication; with TLS it is served.
func TestRequireTLS(t *testing.T) {
	s := startRouter(t, Config{TLS: selfSigned(t), RequireTLS: true}, nil)
	_, err := whoamiShard(t, routerURL(s, "t5"))
	check28000(t, "sslmode=disable", err)
	for _, mode := range []string{"require", "prefer"} {
		if sh, err := whoamiShard(t, withSSLMode(routerURL(s, "t5"), mode)); err != nil || sh != 5 {
			t.Fatalf("sslmode=%s: %d %v", mode, sh, err)
		}
	}
}

// TestRequireTLSUsers: RequireTLSUsers refuses only the users it names.
func TestRequireTLSUsers(t *testing.T) {
	s := startRouter(t, Config{TLS: selfSigned(t), RequireTLSUsers: []string{testUser},
		Users: map[string]string{testUser: testPassword, "other": "pw"}}, nil)
	_, err := whoamiShard(t, routerURL(s, "t5"))
	check28000(t, testUser+" without TLS", err)
	if sh, err := whoamiShard(t, withSSLMode(routerURL(s, "t5"), "require")); err != nil || sh != 5 {
		t.Fatalf("%s with TLS: %d %v", testUser, sh, err)
	}
	other := strings.Replace(routerURL(s, "t5"), testUser+":"+testPassword, "other:pw", 1)
	if sh, err := whoamiShard(t, other); err != nil || sh != 5 {
		t.Fatalf("other without TLS: %d %v", sh, err)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestSCRAMChannelBindingClients: over TLS the router offers
// SCRAM-SHA-256-PLUS; pgx and libpq (psql) with channel_binding=require log
// in with it, and clients that prefer or disable binding still log in.
func TestSCRAMChannelBindingClients(t *testing.T) {
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s := startRouter(t, Config{TLS: selfSigned(t), Logger: log}, nil)
	url := withSSLMode(routerURL(s, "t5"), "require")
	for _, cb := range []string{"require", "prefer", "disable"} {
		if sh, err := whoamiShard(t, url+"&channel_binding="+cb); err != nil || sh != 5 {
			t.Fatalf("pgx channel_binding=%s: %d %v", cb, sh, err)
		}
	}
	if n := strings.Count(logs.String(), "channel_binding=true"); n != 2 {
		t.Fatalf("%d logins with channel binding, want 2 (require, prefer)\n%s", n, logs.String())
	}
	// A wrong password over a bound channel is refused as usual.
	if _, err := whoamiShard(t, strings.Replace(url, testPassword, "wrong", 1)+"&channel_binding=require"); pgCode(err) != "28P01" {
		t.Fatalf("wrong password: %v, want 28P01", err)
	}

	// libpq.
	psql, err := exec.LookPath("psql")
	if err != nil {
		bin, berr := localpg.FindBinDir()
		if berr != nil {
			t.Fatalf("no psql: %v, %v", err, berr)
		}
		psql = filepath.Join(bin, "psql")
	}
	host, port, _ := strings.Cut(s.Addr().String(), ":")
	conninfo := "host=" + host + " port=" + port + " user=" + testUser + " dbname=pgt sslmode=require channel_binding=require options='-c pgtenant.tenant=t5'"
	cmd := exec.CommandContext(ctx(t), psql, conninfo, "-XAtc", "SELECT shard FROM whoami")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+testPassword, "PGSSLROOTCERT=", "PGCONNECT_TIMEOUT=10")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "5" {
		t.Fatalf("psql channel_binding=require: %v\n%s", err, out)
	}
	if n := strings.Count(logs.String(), "channel_binding=true"); n != 3 {
		t.Fatalf("%d logins with channel binding, want 3\n%s", n, logs.String())
	}
	// Without TLS there is nothing to bind to: libpq refuses to go on.
	plainInfo := strings.Replace(conninfo, "sslmode=require", "sslmode=disable", 1)
	cmd = exec.CommandContext(ctx(t), psql, plainInfo, "-XAtc", "SELECT 1")
	cmd.Env = append(os.Environ(), "PGPASSWORD="+testPassword)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "channel binding") {
		t.Fatalf("psql channel_binding=require without TLS: %v\n%s", err, out)
	}
}

// TestNodeTLS: the pool connects to a node with the TLS its DSN's sslmode
// asks for.
func TestNodeTLS(t *testing.T) {
	c, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := nodeB.EnableTLS(c); err != nil {
		t.Fatal(err)
	}
	const q = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
	for _, tt := range []struct {
		mode string
		want bool
	}{{"disable", false}, {"require", true}, {"prefer", true}} {
		m := testMap()
		m.Nodes["b"] = placement.Node{Name: "b", DSN: withSSLMode(nodeDSN(nodeB), tt.mode)}
		s := startRouter(t, Config{}, m)
		conn := connect(t, s, "t1", pgx.QueryExecModeSimpleProtocol) // shard 1, node b
		var ssl bool
		if err := conn.QueryRow(ctx(t), q).Scan(&ssl); err != nil || ssl != tt.want {
			t.Fatalf("node DSN sslmode=%s: backend ssl=%v %v, want %v", tt.mode, ssl, err, tt.want)
		}
	}
}
