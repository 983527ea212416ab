package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/demo"
)

// TestImportUnregisteredTenantWhileStreaming (issue 12, bad input on the
// way): while import start follows the legacy database, a customer is
// created there directly (not through the router, so not registered). The
// stream stops before that change with 23503, the tenant's id and what to
// do, and applies nothing past it; the tenant registered, import start run
// again resumes there: the rows written meanwhile arrive on their shards
// exactly once and verify finds no difference.
func TestImportUnregisteredTenantWhileStreaming(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "4")
	n1, n2 := nodeB.NewDatabase(t), nodeB.NewDatabase(t)
	mustRun(t, "node", "add", "n1", n1)
	mustRun(t, "node", "add", "n2", n2)
	mustRun(t, "shard", "create")
	legacy, ids := legacyDB(t, 12)
	dropSlotsAtEnd(t, legacy, n1, n2)
	for _, r := range demo.LegacyRules {
		mustRun(t, append([]string{"table", "set"}, r...)...)
	}
	mustRun(t, "import", "init", "--from", legacy, "--register-tenants")
	mustRun(t, "import", "schema", "--dir", "db/migrations", "--reference-dir", "db/reference")
	mustRun(t, "reference", "migrate", "--dir", "db/reference")
	mustRun(t, "migrate", "up", "--dir", "db/migrations")
	start := func() (context.CancelFunc, chan string) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan string, 1)
		go func() {
			var out, errOut syncBuffer
			code := run(ctx, []string{"import", "start", "--parallel", "2"}, strings.NewReader(""), &out, &errOut)
			done <- fmt.Sprintf("exit %d\n%s%s", code, out.String(), errOut.String())
		}()
		waitStreaming(t, done)
		return cancel, done
	}
	stop, done := start()
	ctx := context.Background()
	lc, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close(ctx)
	write := func(tenant, name string) {
		t.Helper()
		if _, err := lc.Exec(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, $2, 'Direct', 1)`, tenant, name); err != nil {
			t.Fatal(err)
		}
	}
	onNodes := func(name string) int {
		n := 0
		for _, dsn := range []string{n1, n2} {
			n += len(ledgerOf(t, dsn, name))
		}
		return n
	}
	write(ids[0], "before")
	for i := 0; onNodes("before") == 0; i++ {
		if i > 600 {
			t.Fatal("a write on the legacy database never reached the nodes")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := lc.Exec(ctx, `INSERT INTO customers (tenant_id, name, plan) VALUES ('newcomer', 'New Co', 'pro')`); err != nil {
		t.Fatal(err)
	}
	write("newcomer", "newcomer's")
	write(ids[1], "after")
	var s string
	select {
	case s = <-done:
	case <-time.After(2 * time.Minute):
		stop()
		t.Fatalf("import start still runs 2 minutes after a change of an unregistered tenant: %s", <-done)
	}
	stop()
	if !strings.HasPrefix(s, "exit 1") || !strings.Contains(s, "23503") || !strings.Contains(s, `"newcomer"`) || !strings.Contains(s, "pgtenant tenant add") {
		t.Fatalf("import start after a change of an unregistered tenant: %s", s)
	}
	t.Log(s[strings.LastIndex(s, "error:"):])
	if n := onNodes("after"); n != 0 {
		t.Errorf("the write after the unregistered tenant's was applied (%d) although the stream stopped before", n)
	}

	mustRun(t, "tenant", "add", "newcomer")
	stop, done = start()
	for i := 0; onNodes("after") == 0; i++ {
		if i > 600 {
			t.Fatal("the write after the unregistered tenant's never reached the nodes")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, name := range []string{"before", "newcomer's", "after"} {
		if n := onNodes(name); n != 1 {
			t.Errorf("write %q is on the nodes %d times", name, n)
		}
	}
	if out := mustRun(t, "import", "verify"); !strings.Contains(out, "; 0 differences") || !strings.Contains(out, "13 tenants") {
		t.Errorf("import verify: %s", out)
	}
	stop()
	if s := <-done; !strings.HasPrefix(s, "exit 0") {
		t.Fatalf("import start: %s", s)
	}
}

// ledgerOf lists the tenants of the buildings named name in every shard
// schema of the database of dsn.
func ledgerOf(t *testing.T, dsn, name string) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var q *string
	if err := conn.QueryRow(ctx, `SELECT string_agg(format('SELECT tenant_id FROM %I.buildings WHERE name = $1', nspname), ' UNION ALL ')
		FROM pg_namespace WHERE nspname LIKE 'shard\_%'`).Scan(&q); err != nil || q == nil {
		t.Fatalf("shard schemas: %v", err)
	}
	rows, err := conn.Query(ctx, *q, name)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}
