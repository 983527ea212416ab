package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestImportUnregisteredTenantWhileStreaming (issue 12, bad input on the
// way): while import start follows the legacy database, a customer is
// created there directly (not through the router, so not registered). The
// stream used to stop before that change for good; now it rejects the
// change (import status lists it with the tenant's id and what to do) and
// goes on: a later write of a registered tenant arrives. The tenant
// registered and its rows touched on the legacy database, the rows arrive
// on their shards exactly once, the rejects are resolved and verify finds
// no difference.
func TestImportUnregisteredTenantWhileStreaming(t *testing.T) {
	f := newImportFixture(t, 4, 2, 12)
	legacy, ids, n1, n2 := f.legacy, f.ids, f.nodes[0], f.nodes[1]
	importStart := runImportStart(t, "--parallel", "2")
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
	waitOnNodes := func(name string) {
		t.Helper()
		for i := 0; onNodes(name) == 0; i++ {
			if i > 600 {
				if s, ended := importStart.endedEarly(); ended {
					t.Fatalf("write %q never reached the nodes; import start ended: %s", name, s)
				}
				t.Fatalf("write %q never reached the nodes", name)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	write(ids[0], "before")
	waitOnNodes("before")
	if _, err := lc.Exec(ctx, `INSERT INTO customers (tenant_id, name, plan) VALUES ('newcomer', 'New Co', 'pro')`); err != nil {
		t.Fatal(err)
	}
	write("newcomer", "newcomer's")
	write(ids[1], "after")
	waitOnNodes("after") // the stream went on
	out := mustRun(t, "import", "status")
	if !strings.Contains(out, "rejected changes not resolved: 2") || !strings.Contains(out, `tenant "newcomer" is not registered`) {
		t.Fatalf("import status after changes of an unregistered tenant:\n%s", out)
	}
	if n := onNodes("newcomer's"); n != 0 {
		t.Fatalf("the unregistered tenant's write is on the nodes %d times", n)
	}

	mustRun(t, "tenant", "add", "newcomer")
	if _, err := lc.Exec(ctx, `UPDATE customers SET plan = plan WHERE tenant_id = 'newcomer'`); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.Exec(ctx, `UPDATE buildings SET city = city WHERE tenant_id = 'newcomer'`); err != nil {
		t.Fatal(err)
	}
	waitOnNodes("newcomer's")
	for _, name := range []string{"before", "newcomer's", "after"} {
		if n := onNodes(name); n != 1 {
			t.Errorf("write %q is on the nodes %d times", name, n)
		}
	}
	if out := mustRun(t, "import", "verify"); !strings.Contains(out, "; 0 differences") || !strings.Contains(out, "13 tenants") || strings.Contains(out, "rejected") {
		t.Errorf("import verify: %s", out)
	}
	importStart.stop(t)
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
	rows, err := conn.Query(ctx, shardUnion(t, conn, `SELECT tenant_id FROM %I.buildings WHERE name = $1`), name)
	if err != nil {
		t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	return out
}
