package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// syncBuffer is a bytes.Buffer safe to read while the router writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRouterCommand runs `pgtenant router` as production does: users from
// the catalog (SCRAM), the map from the catalog, changes followed live.
func TestRouterCommand(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "4")
	mustRun(t, "node", "add", "a", nodeA.NewDatabase(t))
	mustRun(t, "node", "add", "b", nodeB.NewDatabase(t))
	mustRun(t, "shard", "create")
	mustRun(t, "tenant", "add", "acme")
	if code, out, errOut := pgtenantIn(t, "s3cret\n", "user", "add", "app", "--password-stdin"); code != 0 {
		t.Fatalf("user add: exit %d %s%s", code, out, errOut)
	}
	if out := mustRun(t, "user", "list"); !strings.Contains(out, "app") || strings.Contains(out, "s3cret") {
		t.Fatalf("user list:\n%s", out)
	}

	port, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"router", "--listen", addr}, strings.NewReader(""), &out, &errOut) }()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("router exited %d: %s", code, errOut.String())
			}
		case <-time.After(30 * time.Second):
			t.Error("router did not stop")
		}
	}()
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if i > 100 {
			t.Fatalf("router not listening: %s%s", out.String(), errOut.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	connect := func(password, tenant string) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://app:%s@%s/app?sslmode=disable", password, addr))
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["options"] = "-c pgtenant.tenant=" + tenant
		cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
		defer ccancel()
		return pgx.ConnectConfig(cctx, cfg)
	}
	conn, err := connect("s3cret", "acme")
	if err != nil {
		t.Fatalf("connect as a catalog user: %v", err)
	}
	var schema string
	if err := conn.QueryRow(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if want := placement.SchemaName(placement.ShardOf("acme", 4)); schema != want {
		t.Fatalf("acme's statements ran in %s, want %s", schema, want)
	}
	_, err = connect("wrong", "acme")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
		t.Fatalf("wrong password: %v, want SQLSTATE 28P01", err)
	}

	// A tenant added while the router runs is routed within moments.
	mustRun(t, "tenant", "add", "late")
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := connect("s3cret", "late")
		if err == nil {
			err = conn.QueryRow(ctx, "SELECT current_schema()").Scan(&schema)
			conn.Close(ctx)
		}
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tenant added after start still refused: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
