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

	// schemaOf runs a statement for tenant and returns its schema, or the
	// error's SQLSTATE.
	schemaOf := func(tenant string) (string, string) {
		conn, err := connect("s3cret", tenant)
		if err == nil {
			err = conn.QueryRow(ctx, "SELECT current_schema()").Scan(&schema)
			conn.Close(ctx)
		}
		if err != nil {
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				t.Fatalf("tenant %s: %v", tenant, err)
			}
			return "", pgErr.Code
		}
		return schema, ""
	}
	// waitSchema waits until tenant's statements run in want (or fail with
	// SQLSTATE code when want is ""): the router hears of tenant changes by
	// NOTIFY.
	waitSchema := func(tenant, want, code string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			got, gotCode := schemaOf(tenant)
			if got == want && gotCode == code {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("tenant %s: schema %q SQLSTATE %q; want %q %q", tenant, got, gotCode, want, code)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// Unknown: refused with 42704 (and the router caches that answer).
	if got, code := schemaOf("late"); code != "42704" {
		t.Fatalf("unregistered tenant: schema %q SQLSTATE %q, want 42704", got, code)
	}
	// A tenant added while the router runs is routed within moments.
	mustRun(t, "tenant", "add", "late")
	waitSchema("late", placement.SchemaName(placement.ShardOf("late", 4)), "")
	// An explicit placement is honoured.
	pin := (placement.ShardOf("pinned", 4) + 1) % 4
	mustRun(t, "tenant", "add", "pinned", "--shard", fmt.Sprint(pin))
	waitSchema("pinned", placement.SchemaName(pin), "")
	// A removed tenant is refused.
	mustRun(t, "tenant", "remove", "late")
	waitSchema("late", "", "42704")
	// Tenants registered in bulk too.
	if code, out, errOut := pgtenantIn(t, "bulk1\nbulk2\n", "tenant", "add", "--file", "-"); code != 0 || !strings.Contains(out, "2 tenants added") {
		t.Fatalf("tenant add --file: exit %d %s%s", code, out, errOut)
	}
	waitSchema("bulk2", placement.SchemaName(placement.ShardOf("bulk2", 4)), "")
}
