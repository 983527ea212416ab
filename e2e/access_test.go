package e2e

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/access"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/router"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// Router users of the access tests (trust auth): each runs as a role.
const (
	userApp        = "app"      // the runtime role, under row-level security
	userReadOnly   = "reader"   // role reader: SELECT
	userAppender   = "appender" // role appender: SELECT, INSERT, UPDATE (no DELETE)
	userRestricted = "r3"       // restricted to tenant t3 (shard 3, node b)
)

// accessPlan is the registry of the test cluster's tables with row-level
// security on, the runtime role, two granular roles, and shard 3's
// restricted role.
func accessPlan() access.Plan {
	return access.Plan{
		RuntimeRole: access.DefaultRuntimeRole,
		Roles: []access.Role{
			{Name: "reader", Privileges: []string{"SELECT"}},
			{Name: "appender", Privileges: []string{"SELECT", "INSERT", "UPDATE"}},
		},
		Tables: []tables.Table{
			{Name: "items", Kind: tables.KindTenant, TenantColumn: "tenant", RLS: true},
			{Name: "orders", Kind: tables.KindChild, Parent: "items", ParentKey: "item_id", ParentColumn: "id", RLS: true},
		},
		Restricted: map[int]bool{shardOf(3): true},
	}
}

// userAccess maps the test users as pgtenant router does from the catalog.
func userAccess(user string) router.UserAccess {
	switch user {
	case userApp:
		return router.UserAccess{Role: access.DefaultRuntimeRole}
	case userReadOnly:
		return router.UserAccess{Role: "reader"}
	case userAppender:
		return router.UserAccess{Role: "appender"}
	case userRestricted:
		return router.UserAccess{Role: access.RestrictedRole(shardOf(3)), Tenant: tenantName(3)}
	}
	return router.UserAccess{}
}

// newAccessCluster is newCluster with the access plan applied to both
// nodes and the router running users as their roles.
func newAccessCluster(t *testing.T, pm router.PoolMode) *cluster {
	t.Helper()
	c := newCluster(t, router.Config{PoolMode: pm, Access: userAccess})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p := accessPlan()
	for _, node := range []string{"a", "b"} {
		var shards []placement.Shard
		for _, s := range c.m.Shards {
			if s.Node == node {
				shards = append(shards, s)
			}
		}
		conn, err := pgx.Connect(ctx, c.nodeDSN[node])
		if err != nil {
			t.Fatal(err)
		}
		rep, err := p.ApplyNode(ctx, conn, node, shards)
		conn.Close(ctx)
		if err != nil {
			t.Fatalf("apply access on node %s: %v", node, err)
		}
		if got, want := rep.Policies, 2*len(shards); got != want {
			t.Fatalf("node %s: %d tables under row-level security, want %d", node, got, want)
		}
	}
	return c
}

// dsnAs is a URL for the router as user, with tenant as the startup option.
func (c *cluster) dsnAs(user, tenant string) string {
	u, _ := url.Parse(c.dsn(tenant))
	u.User = url.User(user)
	return u.String()
}

func connectAs(t *testing.T, ctx context.Context, c *cluster, user, tenant string, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(c.dsnAs(user, tenant))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// accessModes are the pool modes and protocols every access test runs in.
func accessModes(t *testing.T, fn func(t *testing.T, c *cluster, mode pgx.QueryExecMode)) {
	for _, pm := range []router.PoolMode{router.PoolTransaction, router.PoolSession} {
		t.Run(string(pm), func(t *testing.T) {
			c := newAccessCluster(t, pm)
			for _, m := range []struct {
				name string
				mode pgx.QueryExecMode
			}{{"simple", pgx.QueryExecModeSimpleProtocol}, {"extended", pgx.QueryExecModeCacheStatement}} {
				t.Run(m.name, func(t *testing.T) { fn(t, c, m.mode) })
			}
		})
	}
}

// tenantsSeen returns the distinct tenants of the items a query shows.
func tenantsSeen(t *testing.T, ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, sql string) []string {
	t.Helper()
	rows, err := q.Query(ctx, sql)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	ts, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return ts
}

// wantServerDenied checks err is 42501 from the server (not the router's refusal).
func wantServerDenied(t *testing.T, what string, err error) {
	t.Helper()
	var pe *pgconn.PgError
	if err == nil || !errorsAs(err, &pe) || pe.Code != "42501" || strings.Contains(pe.Message, "router user") {
		t.Fatalf("%s: got %v, want 42501 from the server", what, err)
	}
}

// wantRouterRefused checks err is the router's 42501 refusal.
func wantRouterRefused(t *testing.T, what string, err error) {
	t.Helper()
	var pe *pgconn.PgError
	if err == nil || !errorsAs(err, &pe) || pe.Code != "42501" {
		t.Fatalf("%s: got %v, want 42501", what, err)
	}
}

// TestRLSIsolation: with row-level security on and the router running as
// the runtime role, a tenant's statement without WHERE sees only its rows
// (shard 3 also holds t11), through a child table too, and writing another
// tenant's id fails with 42501 from Postgres. RESET ALL and DISCARD ALL do
// not bring the owner back (the role is the connection's startup role).
func TestRLSIsolation(t *testing.T) {
	accessModes(t, func(t *testing.T, c *cluster, mode pgx.QueryExecMode) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn := connectAs(t, ctx, c, userApp, tenantName(3), mode)
		check := func(when string) {
			t.Helper()
			got := tenantsSeen(t, ctx, conn, "SELECT DISTINCT tenant FROM items")
			if len(got) != 1 || got[0] != tenantName(3) {
				t.Fatalf("%s: SELECT without WHERE saw tenants %v, want only t3", when, got)
			}
			var n int
			if err := conn.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n); err != nil || n != 2*itemsPerTenant {
				t.Fatalf("%s: orders seen = %d, %v; want %d (t3's only)", when, n, err, 2*itemsPerTenant)
			}
		}
		check("plain")
		_, err := conn.Exec(ctx, "INSERT INTO items (id, tenant, name, qty) VALUES (9901, 't11', 'x', 1)")
		wantServerDenied(t, "INSERT of another tenant's id", err)
		if _, err := conn.Exec(ctx, "INSERT INTO items (id, tenant, name, qty) VALUES (9902, 't3', 'x', 1)"); err != nil {
			t.Fatalf("INSERT of the tenant's own id: %v", err)
		}
		if tag, err := conn.Exec(ctx, "UPDATE items SET qty = qty + 1 WHERE tenant = 't11'"); err != nil || tag.RowsAffected() != 0 {
			t.Fatalf("UPDATE of another tenant's rows: %v, %v rows; want 0 rows", err, tag)
		}
		if _, err := conn.Exec(ctx, "DELETE FROM items WHERE id = 9902"); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, "RESET ALL"); err != nil {
			t.Fatal(err)
		}
		check("after RESET ALL")
		if mode == pgx.QueryExecModeSimpleProtocol {
			// In one string the SELECT would run after the server's RESET
			// ALL, without the shard's search_path and tenant id: the router
			// refuses the string (0A000) and nothing of it runs; RLS holds
			// on the next statement.
			q := "RESET ALL; SELECT DISTINCT tenant FROM shard_0003.items"
			if _, err := conn.Exec(ctx, q); pgCode(err) != "0A000" {
				t.Fatalf("%s: %v, want the router's 0A000", q, err)
			}
			check("after a refused RESET ALL; SELECT")
			if _, err := conn.Exec(ctx, "DISCARD ALL"); err != nil {
				t.Fatal(err)
			}
			conn.Exec(ctx, "SET pgtenant.tenant = 't3'")
			check("after DISCARD ALL")
		}
		_, err = conn.Exec(ctx, "SET ROLE postgres")
		wantRouterRefused(t, "SET ROLE", err)
		_, err = conn.Exec(ctx, "SELECT set_config('role', 'postgres', false)")
		wantRouterRefused(t, "set_config('role')", err)
		_, err = conn.Exec(ctx, "SELECT set_config('pgtenant.tenant_id', 't11', true), count(*) FROM items")
		wantRouterRefused(t, "set_config('pgtenant.tenant_id')", err)
		// Another tenant of the same shard sees its own rows.
		other := connectAs(t, ctx, c, userApp, tenantName(11), mode)
		got := tenantsSeen(t, ctx, other, "SELECT DISTINCT tenant FROM items")
		if len(got) != 1 || got[0] != tenantName(11) {
			t.Fatalf("t11 saw tenants %v", got)
		}
	})
}

func errorsAs(err error, pe **pgconn.PgError) bool {
	var p *pgconn.PgError
	for e := err; e != nil; {
		if x, ok := e.(*pgconn.PgError); ok {
			p = x
			break
		}
		u, ok := e.(interface{ Unwrap() error })
		if !ok {
			break
		}
		e = u.Unwrap()
	}
	*pe = p
	return p != nil
}

// TestRoles: a read-only role and an insert-no-delete role, enforced by
// Postgres (42501 from the server), through the router.
func TestRoles(t *testing.T) {
	accessModes(t, func(t *testing.T, c *cluster, mode pgx.QueryExecMode) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		ro := connectAs(t, ctx, c, userReadOnly, tenantName(2), mode)
		var n int
		if err := ro.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil || n == 0 {
			t.Fatalf("read-only SELECT: %d, %v", n, err)
		}
		_, err := ro.Exec(ctx, "DELETE FROM orders WHERE id = 2011")
		wantServerDenied(t, "read-only DELETE", err)
		_, err = ro.Exec(ctx, "INSERT INTO items (id, tenant, name, qty) VALUES (9903, 't2', 'x', 1)")
		wantServerDenied(t, "read-only INSERT", err)
		_, err = ro.Exec(ctx, "RESET ROLE")
		wantRouterRefused(t, "read-only RESET ROLE", err)
		_, err = ro.Exec(ctx, "DO $$ BEGIN EXECUTE 'DELETE FROM orders'; END $$")
		wantRouterRefused(t, "read-only DO", err)

		ins := connectAs(t, ctx, c, userAppender, tenantName(2), mode)
		id := 9904
		if mode == pgx.QueryExecModeSimpleProtocol {
			id = 9905
		}
		if _, err := ins.Exec(ctx, fmt.Sprintf("INSERT INTO items (id, tenant, name, qty) VALUES (%d, 't2', 'x', 1)", id)); err != nil {
			t.Fatalf("appender INSERT: %v", err)
		}
		if _, err := ins.Exec(ctx, fmt.Sprintf("UPDATE items SET qty = 2 WHERE id = %d", id)); err != nil {
			t.Fatalf("appender UPDATE: %v", err)
		}
		_, err = ins.Exec(ctx, fmt.Sprintf("DELETE FROM items WHERE id = %d", id))
		wantServerDenied(t, "appender DELETE", err)
		_, err = ins.Exec(ctx, "TRUNCATE orders")
		wantServerDenied(t, "appender TRUNCATE", err)
		if err := ins.QueryRow(ctx, "SELECT count(*) FROM items WHERE id = $1", id).Scan(&n); err != nil || n != 1 {
			t.Fatalf("the row the appender could not delete: %d, %v", n, err)
		}
	})
}

// TestRestrictedUser: a user restricted to t3 runs as shard 3's restricted
// role. Postgres stops schema-qualified access to other shards (42501 from
// the server) and tables without a rule; RLS keeps t11's rows (same shard)
// out; the router refuses the statements that could leave the role or the
// tenant.
func TestRestrictedUser(t *testing.T) {
	accessModes(t, func(t *testing.T, c *cluster, mode pgx.QueryExecMode) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn := connectAs(t, ctx, c, userRestricted, "", mode)
		got := tenantsSeen(t, ctx, conn, "SELECT DISTINCT tenant FROM items")
		if len(got) != 1 || got[0] != tenantName(3) {
			t.Fatalf("restricted SELECT saw tenants %v, want t3", got)
		}
		got = tenantsSeen(t, ctx, conn, "SELECT DISTINCT tenant FROM shard_0003.items")
		if len(got) != 1 || got[0] != tenantName(3) {
			t.Fatalf("restricted SELECT from its own schema saw tenants %v, want t3", got)
		}
		// Postgres, not the router, stops these.
		for _, q := range []string{
			"SELECT * FROM shard_0007.orders",                   // another shard, same node
			"SELECT * FROM shard_0005.items",                    // another shard, same node
			"SELECT * FROM shard_info",                          // a table without a rule
			"INSERT INTO items VALUES (9906, 't11', 3, 'x', 1)", // another tenant's id
			"SELECT pg_catalog.pg_read_binary_file('/etc/passwd')",
		} {
			_, err := conn.Exec(ctx, q)
			var pe *pgconn.PgError
			if strings.Contains(q, "pg_read") {
				wantRouterRefused(t, q, err)
				continue
			}
			if err == nil || !errorsAs(err, &pe) || pe.Code != "42501" || strings.Contains(pe.Message, "router user") {
				t.Fatalf("%s: got %v, want 42501 from the server", q, err)
			}
		}
		// Shard 6 is on the other node: not there at all.
		if _, err := conn.Exec(ctx, "SELECT * FROM shard_0006.items"); pgCode(err) != "42P01" {
			t.Fatalf("SELECT from a shard of the other node: %v, want 42P01", err)
		}
		// The router refuses these.
		for _, q := range []string{
			"SET ROLE postgres",
			"RESET ROLE",
			"SET LOCAL ROLE postgres",
			"SET SESSION AUTHORIZATION postgres",
			"SET search_path = shard_0006",
			"SET pgtenant.tenant_id = 't11'",
			"SELECT set_config('pgtenant.tenant_id', 't11', false)",
			"SELECT set_config('search_path', 'shard_0006', false)",
			"SELECT set_config(x, 'postgres', false) FROM (VALUES ('ro' || 'le')) v(x)",
			`SELECT "set_config"('role', 'postgres', false)`,
			`SELECT U&"set\005fconfig"('role', 'postgres', false)`,
			"DO $$ BEGIN PERFORM set_config('pgtenant.tenant_id', 't11', false); END $$",
			"CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
			"CREATE OR REPLACE PROCEDURE pg_temp.p() LANGUAGE sql AS 'SELECT 1'",
			"COPY items TO '/tmp/pgtenant-items'",
			"COPY items FROM PROGRAM 'cat /etc/passwd'",
			"LOAD 'plpgsql'",
			"CREATE TABLE shard_0003.evil (x int)",
			"ALTER SYSTEM SET work_mem = '1GB'",
			"ALTER ROLE CURRENT_USER SET pgtenant.tenant_id = 't11'",
			"CREATE EXTENSION dblink",
			"LOCK TABLE items",
			"SELECT query_to_xml('SELECT * FROM items', false, false, '')",
			"SELECT pg_notify('x', 'y')",
			"NOTIFY x",
			"SELECT lo_import('/etc/passwd')",
			"/* tenant: t11 */ SELECT 1",
			"SELECT 1; SET ROLE postgres",
		} {
			_, err := conn.Exec(ctx, q)
			wantRouterRefused(t, q, err)
		}
		if _, err := conn.Exec(ctx, "SET pgtenant.tenant = 't11'"); err == nil {
			_, err = conn.Exec(ctx, "SELECT count(*) FROM items")
			wantRouterRefused(t, "switching tenant", err)
			conn.Exec(ctx, "SET pgtenant.tenant = 't3'")
		}
		// Still working, and still t3 only, after the refusals.
		got = tenantsSeen(t, ctx, conn, "SELECT DISTINCT tenant FROM items")
		if len(got) != 1 || got[0] != tenantName(3) {
			t.Fatalf("restricted SELECT after refusals saw tenants %v, want t3", got)
		}
		var buf strings.Builder
		if _, err := conn.PgConn().CopyTo(ctx, &buf, "COPY (SELECT tenant FROM items) TO STDOUT"); err != nil {
			t.Fatalf("COPY TO STDOUT: %v", err)
		}
		if n := strings.Count(buf.String(), "t3\n"); n != itemsPerTenant || strings.Contains(buf.String(), "t11") {
			t.Fatalf("COPY TO STDOUT gave %q", buf.String())
		}
		// A login naming another tenant is refused at startup.
		cfg, _ := pgx.ParseConfig(c.dsnAs(userRestricted, tenantName(11)))
		if other, err := pgx.ConnectConfig(ctx, cfg); err == nil {
			other.Close(ctx)
			t.Fatal("restricted user logged in with another tenant")
		}
	})
}
