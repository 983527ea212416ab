package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/localpg"
)

// startRouterCmd runs `pgtenant router --auth trust` on a free port until t
// ends and returns its address.
func startRouterCmd(t *testing.T) string {
	t.Helper()
	port, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"router", "--listen", addr, "--auth", "trust"}, strings.NewReader(""), &out, &errOut)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("router exited %d: %s", code, errOut.String())
			}
		case <-time.After(30 * time.Second):
			t.Error("router did not stop")
		}
	})
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return addr
		}
		if i > 100 {
			t.Fatalf("router not listening: %s%s", out.String(), errOut.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestSharedSchema: an extension installed on every node with `extension
// add`, a reference table declared in a reference migration, and a shard
// migration using both; then, through the router, tenants write and read
// their rows with the extension's type and join them with the reference
// table, and cannot write the reference table (issue 11, item 2).
func TestSharedSchema(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "4")
	mustRun(t, "node", "add", "a", nodeA.NewDatabase(t))
	mustRun(t, "node", "add", "b", nodeB.NewDatabase(t))
	mustRun(t, "shard", "create")

	// A shard migration using citext fails without the extension, and the
	// error names the type.
	write := func(dir, name, body string) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("migrations", "00001_users.sql", `-- +goose Up
CREATE TABLE users (
	id      serial PRIMARY KEY,
	email   citext NOT NULL UNIQUE,
	plan_id int NOT NULL REFERENCES plans (id)
);
-- +goose Down
DROP TABLE users;
`)
	write("reference", "00001_plans.sql", `-- +goose Up
CREATE TABLE plans (id int PRIMARY KEY, name text NOT NULL, price numeric NOT NULL);
INSERT INTO plans VALUES (1, 'free', 0), (2, 'pro', 10);
`)
	if code, out, errOut := pgtenant(t, "migrate", "up", "--dir", "migrations"); code != 1 || !strings.Contains(errOut, "citext") || !strings.Contains(errOut, "pgtenant extension add") {
		t.Fatalf("migrate up without the extension: exit %d\n%s%s", code, out, errOut)
	}

	if out := mustRun(t, "extension", "add", "citext"); !strings.Contains(out, "on 2 nodes") {
		t.Fatalf("extension add: %s", out)
	}
	mustRun(t, "extension", "add", "citext") // idempotent
	code, out, errOut := pgtenant(t, "extension", "add", "no_such_extension")
	if code != 1 || !strings.Contains(errOut, "node a") || !strings.Contains(errOut, "node b") || !strings.Contains(errOut, "no_such_extension") {
		t.Fatalf("extension add of a missing extension: exit %d\n%s%s", code, out, errOut)
	}
	if out := mustRun(t, "reference", "migrate", "--dir", "reference"); !strings.Contains(out, "node a: applied 00001_plans.sql") || !strings.Contains(out, "node b: applied 00001_plans.sql") {
		t.Fatalf("reference migrate: %s", out)
	}
	if out := mustRun(t, "reference", "migrate", "--dir", "reference"); strings.Contains(out, "applied") {
		t.Fatalf("reference migrate again: %s", out)
	}
	mustRun(t, "migrate", "up", "--dir", "migrations")

	// A node added later gets the recorded extensions, and the reference
	// migrations on the next run.
	dsnC := nodeB.NewDatabase(t)
	mustRun(t, "node", "add", "c", dsnC)
	if out := mustRun(t, "extension", "list"); strings.Count(out, "citext") != 3 || strings.Contains(out, "MISSING") {
		t.Fatalf("extension list:\n%s", out)
	}
	if out := mustRun(t, "reference", "migrate", "--dir", "reference"); !strings.Contains(out, "node c: applied 00001_plans.sql") || strings.Contains(out, "node a:") {
		t.Fatalf("reference migrate after node add: %s", out)
	}

	checkMissingExtension(t, dsnC)

	mustRun(t, "tenant", "add", "acme", "--shard", "0")
	mustRun(t, "tenant", "add", "globex", "--shard", "1")
	addr := startRouterCmd(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connect := func(tenant string) *pgx.Conn {
		t.Helper()
		c, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app@%s/app?sslmode=disable&options=-c%%20pgtenant.tenant%%3D%s", addr, tenant))
		if err != nil {
			t.Fatalf("connect as %s: %v", tenant, err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	for _, tenant := range []string{"acme", "globex"} {
		c := connect(tenant)
		if _, err := c.Exec(ctx, "INSERT INTO users (email, plan_id) VALUES ($1, 2)", "Boss@"+tenant+".example"); err != nil {
			t.Fatalf("%s: insert: %v", tenant, err)
		}
		// citext's unique index ignores case.
		_, err := c.Exec(ctx, "INSERT INTO users (email, plan_id) VALUES ($1, 1)", "boss@"+strings.ToUpper(tenant)+".EXAMPLE")
		if got := pgCodeOf(err); got != "23505" {
			t.Fatalf("%s: case-insensitive duplicate: %v, want 23505", tenant, err)
		}
		// The foreign key to the reference table holds.
		_, err = c.Exec(ctx, "INSERT INTO users (email, plan_id) VALUES ('x@y', 99)")
		if got := pgCodeOf(err); got != "23503" {
			t.Fatalf("%s: unknown plan: %v, want 23503", tenant, err)
		}
		// Joined with the reference table. (public. is spelled out so that
		// the test holds whether or not the router's search_path names the
		// shared schema.)
		var email, plan string
		var price float64
		if err := c.QueryRow(ctx, "SELECT u.email::text, p.name, p.price::float8 FROM users u JOIN public.plans p ON p.id = u.plan_id").Scan(&email, &plan, &price); err != nil {
			t.Fatalf("%s: join: %v", tenant, err)
		}
		if email != "Boss@"+tenant+".example" || plan != "pro" || price != 10 {
			t.Fatalf("%s: join = %q %q %v", tenant, email, plan, price)
		}
		// Writes to the reference table through the router are refused by
		// Postgres, with a hint.
		for _, q := range []string{"INSERT INTO public.plans VALUES (3, 'x', 1)", "UPDATE public.plans SET price = 0", "DELETE FROM public.plans", "TRUNCATE public.plans CASCADE"} {
			_, err := c.Exec(ctx, q)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "42501" || !strings.Contains(pe.Hint, "pgtenant reference") {
				t.Fatalf("%s: %s: %v, want 42501 with a hint", tenant, q, err)
			}
		}
		if _, err := c.Exec(ctx, "SET pgtenant.reference_write = on"); pgCodeOf(err) != "0A000" {
			t.Fatalf("%s: SET pgtenant.reference_write: %v, want 0A000", tenant, err)
		}
	}

	// Written on every node by `reference exec` and `reference load`.
	mustRun(t, "reference", "exec", "UPDATE plans SET price = 12 WHERE name = 'pro'")
	os.WriteFile("plans.csv", []byte("id,name,price\n1,free,0\n2,pro,12\n3,team,30\n"), 0o644)
	mustRun(t, "reference", "load", "plans", "--file", "plans.csv", "--header", "--replace")
	if code, _, errOut := pgtenant(t, "reference", "load", "users", "--file", "plans.csv"); code != 1 || !strings.Contains(errOut, "not a reference table") {
		t.Fatalf("reference load into a non-reference table: exit %d %s", code, errOut)
	}
	for _, tenant := range []string{"acme", "globex"} {
		c := connect(tenant)
		var n int
		var price float64
		if err := c.QueryRow(ctx, "SELECT count(*), max(price)::float8 FROM public.plans").Scan(&n, &price); err != nil || n != 3 || price != 30 {
			t.Fatalf("%s: plans after load: %d rows, max %v, %v", tenant, n, price, err)
		}
		if err := c.QueryRow(ctx, "SELECT p.price::float8 FROM users u JOIN public.plans p ON p.id = u.plan_id").Scan(&price); err != nil || price != 12 {
			t.Fatalf("%s: pro after exec and load: %v, %v", tenant, price, err)
		}
	}
}

// checkMissingExtension drops citext on the node at dsn (node c of
// TestSharedSchema): node check fails for it until extension add again.
func checkMissingExtension(t *testing.T, dsn string) {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if _, err := c.Exec(ctx, "DROP EXTENSION citext"); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := pgtenant(t, "node", "check", "c")
	if code != 1 || !strings.Contains(out, "missing citext") {
		t.Fatalf("node check without citext: exit %d\n%s%s", code, out, errOut)
	}
	mustRun(t, "extension", "add", "citext")
	if out := mustRun(t, "node", "check", "c"); !strings.Contains(out, "extensions: all 1 recorded") {
		t.Fatalf("node check after extension add:\n%s", out)
	}
}
