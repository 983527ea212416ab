package router

// Adversarial cases for tenant isolation (issue 10, defects 1, 2, 3, 7, 8):
// what one client leaves on a pooled backend, two tenants in one query,
// settings the router owns changed through functions, clients idle in a
// transaction, and what errors tell a client. Tenants t1 (shard 1) and t3
// (shard 3) both live on node b, so with a pool of one connection per node
// they share one backend.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/placement"
)

var poolModes = []PoolMode{PoolTransaction, PoolSession}

// onNodeB runs sql directly on node b's shard database.
func onNodeB(t *testing.T, sql string) {
	t.Helper()
	c, err := pgx.Connect(ctx(t), nodeDSN(nodeB))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	if _, err := c.Exec(ctx(t), sql); err != nil {
		t.Fatal(err)
	}
}

// mkTempFn is a function in the shared schema that keeps per-session
// scratch rows in a temporary table, as apps do: a leftover table from
// another client shows as more than one row.
const mkTempFn = `CREATE OR REPLACE FUNCTION public.iso_scratch() RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
	CREATE TEMP TABLE IF NOT EXISTS iso_scratch (v text);
	INSERT INTO iso_scratch VALUES (current_setting('pgtenant.tenant_id'));
	RETURN (SELECT count(*) FROM iso_scratch);
END $$`

// Defect 1: in transaction mode, what creates a temporary object that
// would outlive its transaction is refused; ON COMMIT DROP tables work.
func TestIsolationTempRefused(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := ctx(t)
			d := connect(t, s, "t1", mode)
			for _, q := range []string{
				"CREATE TEMP TABLE iso_t AS SELECT 'secret of t1'::text AS v",
				"CREATE TEMPORARY VIEW iso_v AS SELECT 1 AS x",
				"create or replace temp view iso_v AS SELECT 1 AS x",
				"CREATE GLOBAL TEMP SEQUENCE iso_s",
				"CREATE TABLE pg_temp.iso_t2 (v text)",
				`CREATE TABLE "pg_temp".iso_t2 (v text)`,
				"CREATE FUNCTION pg_temp.iso_f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
				"SELECT 'x' AS v INTO TEMP iso_t3",
				"CREATE TEMP TABLE iso_t4 (v text) ON COMMIT PRESERVE ROWS",
				"DECLARE iso_c CURSOR WITH HOLD FOR SELECT * FROM whoami",
			} {
				_, err := d.Exec(ctx, q)
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "0A000" || pe.Hint == "" {
					t.Errorf("%s in transaction mode: %v, want 0A000 with a hint", q, err)
				}
			}
			// ON COMMIT DROP in a transaction cannot outlive it.
			tx, err := d.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "CREATE TEMP TABLE iso_drop (v text) ON COMMIT DROP"); err != nil {
				t.Fatalf("ON COMMIT DROP temp table: %v", err)
			}
			var n int
			if err := tx.QueryRow(ctx, "INSERT INTO iso_drop VALUES ('x') RETURNING 1").Scan(&n); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// Defect 1: pg_temp is searched last: a session's temporary table does not
// shadow the shard's table of the same name.
func TestIsolationTempLastInPath(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := ctx(t)
			d := connect(t, s, "t1", mode)
			if _, err := d.Exec(ctx, "CREATE TEMP TABLE whoami AS SELECT 999 AS shard"); err != nil {
				t.Fatal(err)
			}
			var sh int
			if err := d.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 1 {
				t.Fatalf("whoami with a temp whoami in the session: %d %v, want shard 1", sh, err)
			}
		})
	}
}

// Defect 1: temporary objects never reach another client, in either pool
// mode, even when the router cannot see them being made (a function).
func TestIsolationTempAcrossClients(t *testing.T) {
	onNodeB(t, mkTempFn)
	for _, pm := range poolModes {
		for _, mode := range execModes {
			t.Run(string(pm)+"/"+mode.String(), func(t *testing.T) {
				s := startRouter(t, Config{PoolMode: pm, Pool: PoolConfig{MaxSize: 1}}, nil)
				ctx := ctx(t)
				d := connect(t, s, "t1", mode)
				if pm == PoolSession {
					if _, err := d.Exec(ctx, "CREATE TEMP TABLE iso_t AS SELECT 'secret of t1'::text AS v"); err != nil {
						t.Fatal(err)
					}
				}
				var n int64
				if err := d.QueryRow(ctx, "SELECT public.iso_scratch() FROM whoami").Scan(&n); err != nil || n != 1 {
					t.Fatalf("t1's first iso_scratch(): %d %v", n, err)
				}
				var pidD int
				if err := d.QueryRow(ctx, "SELECT pg_backend_pid() FROM whoami").Scan(&pidD); err != nil {
					t.Fatal(err)
				}
				if pm == PoolSession {
					d.Close(ctx) // gives the backend back
				}
				a := connect(t, s, "t3", mode)
				var pidA int
				if err := a.QueryRow(ctx, "SELECT pg_backend_pid() FROM whoami").Scan(&pidA); err != nil {
					t.Fatal(err)
				}
				if pidA != pidD {
					t.Fatalf("tenant t3 got backend %d, not t1's %d: the case needs the same backend", pidA, pidD)
				}
				var v string
				err := a.QueryRow(ctx, "SELECT v FROM pg_temp.iso_scratch").Scan(&v)
				if got := pgCode(err); got != "42P01" {
					t.Fatalf("t3 reads t1's temp table iso_scratch: %q %v, want 42P01", v, err)
				}
				if err := a.QueryRow(ctx, "SELECT public.iso_scratch() FROM whoami").Scan(&n); err != nil || n != 1 {
					t.Fatalf("t3's iso_scratch() on t1's backend counts %d rows (%v): it sees t1's temp table", n, err)
				}
				err = a.QueryRow(ctx, "SELECT v FROM iso_t").Scan(&v)
				if got := pgCode(err); got != "42P01" {
					t.Fatalf("t3 reads t1's temp table iso_t: %q %v, want 42P01", v, err)
				}
			})
		}
	}
}

// Defect 1, session mode: a backend given up after a router error inside a
// transaction (here: a second tenant named in it) must not carry the
// session's temp tables to the next client.
func TestIsolationSessionErrorReleasesClean(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 1}}, nil)
	ctx := ctx(t)
	d := connect(t, s, "t1", pgx.QueryExecModeSimpleProtocol)
	if _, err := d.Exec(ctx, "CREATE TEMP TABLE iso_sess AS SELECT 'secret of t1'::text AS v"); err != nil {
		t.Fatal(err)
	}
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1 FROM whoami"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "/* tenant: t3 */ SELECT 1 FROM whoami"); pgCode(err) != "25001" {
		t.Fatalf("second tenant in a transaction: %v, want 25001", err)
	}
	tx.Rollback(ctx)
	a := connect(t, s, "t3", pgx.QueryExecModeSimpleProtocol)
	var v string
	err = a.QueryRow(ctx, "SELECT v FROM pg_temp.iso_sess").Scan(&v)
	if got := pgCode(err); got != "42P01" {
		t.Fatalf("t3 reads t1's temp table: %q %v, want 42P01", v, err)
	}
}

// Defect 1: SQL-level PREPARE does not cross clients; DEALLOCATE of a
// protocol-level statement works; the router's own statements are not
// the client's to EXECUTE.
func TestIsolationSQLPrepare(t *testing.T) {
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 1}}, nil)
			ctx := ctx(t)
			d := connect(t, s, "t1", mode)
			for _, q := range []string{"PREPARE iso_q AS SELECT shard FROM whoami", "EXECUTE iso_q", "prepare \"iso_q\" (int) AS SELECT $1",
				"DO $$ BEGIN EXECUTE 'PREPARE iso_q AS SELECT shard FROM whoami'; END $$"} {
				if _, err := d.Exec(ctx, q); pgCode(err) != "0A000" {
					t.Fatalf("%s in transaction mode: %v, want 0A000", q, err)
				}
			}
			a := connect(t, s, "t3", mode)
			var n int
			if err := a.QueryRow(ctx, "SELECT count(*) FROM pg_prepared_statements p, whoami WHERE p.name = 'iso_q'").Scan(&n); err != nil || n != 0 {
				t.Fatalf("t3 sees t1's prepared statement: %d %v", n, err)
			}
			for _, q := range []string{`EXECUTE pgtenant_setup_local('"shard_0005"', 't5')`, `EXECUTE "pgtenant_setup"('"shard_0005"', 't5')`} {
				if _, err := a.Exec(ctx, q); pgCode(err) != "0A000" {
					t.Fatalf("%s: %v, want 0A000", q, err)
				}
			}
		})
	}
	// DEALLOCATE of a statement the client prepared with Parse, as
	// ActiveRecord sends it.
	for _, pm := range poolModes {
		t.Run("deallocate/"+string(pm), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: pm}, nil)
			ctx := ctx(t)
			c := connect(t, s, "t3", pgx.QueryExecModeSimpleProtocol)
			pc := c.PgConn()
			if _, err := pc.Prepare(ctx, "a1", "SELECT shard FROM whoami", nil); err != nil {
				t.Fatal(err)
			}
			if r := pc.ExecPrepared(ctx, "a1", nil, nil, nil).Read(); r.Err != nil || len(r.Rows) != 1 || string(r.Rows[0][0]) != "3" {
				t.Fatalf("a1: %v %v", r.Rows, r.Err)
			}
			if _, err := c.Exec(ctx, "DEALLOCATE a1"); err != nil {
				t.Fatalf("DEALLOCATE a1: %v", err)
			}
			if r := pc.ExecPrepared(ctx, "a1", nil, nil, nil).Read(); pgCode(r.Err) != "26000" {
				t.Fatalf("a1 after DEALLOCATE: %v, want 26000", r.Err)
			}
			if _, err := c.Exec(ctx, "DEALLOCATE a1"); pgCode(err) != "26000" {
				t.Fatalf("DEALLOCATE of an unknown statement: %v, want 26000", err)
			}
		})
	}
	// Session mode: the client's own SQL PREPARE works.
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	c := connect(t, s, "t3", pgx.QueryExecModeSimpleProtocol)
	var sh int
	if _, err := c.Exec(ctx(t), "PREPARE iso_q AS SELECT shard FROM whoami"); err != nil {
		t.Fatal(err)
	}
	if err := c.QueryRow(ctx(t), "EXECUTE iso_q").Scan(&sh); err != nil || sh != 3 {
		t.Fatalf("EXECUTE in session mode: %d %v", sh, err)
	}
	if _, err := c.Exec(ctx(t), "DEALLOCATE iso_q"); err != nil {
		t.Fatal(err)
	}
}

// Defect 2: two tenant hints in one query string.
func TestIsolationTwoHints(t *testing.T) {
	for _, pm := range poolModes {
		for _, mode := range execModes {
			t.Run(string(pm)+"/"+mode.String(), func(t *testing.T) {
				s := startRouter(t, Config{PoolMode: pm}, nil)
				ctx := ctx(t)
				c := connect(t, s, "", mode)
				body := fmt.Sprintf("two-hints-%s-%s", pm, mode)
				q := "/* tenant: t3 */ SELECT 1; /* tenant: t5 */ INSERT INTO sink (body) VALUES ('" + body + "')"
				if mode != pgx.QueryExecModeSimpleProtocol {
					q = "/* tenant: t3 */ INSERT INTO sink (body) VALUES ('" + body + "') /* tenant: t5 */"
				}
				if _, err := c.Exec(ctx, q); pgCode(err) != "25001" {
					t.Fatalf("two tenants in one query: %v, want 25001", err)
				}
				var n int
				for _, tn := range []string{"t3", "t5"} {
					if err := c.QueryRow(ctx, "/* tenant: "+tn+" */ SELECT count(*) FROM sink WHERE body = $1", body).Scan(&n); err != nil || n != 0 {
						t.Fatalf("tenant %s's shard holds %d rows of the refused query (%v)", tn, n, err)
					}
				}
				// The same tenant twice is one tenant.
				q = "/* tenant: t5 */ SELECT 1 FROM whoami /* tenant: t5 */"
				if _, err := c.Exec(ctx, q); err != nil {
					t.Fatalf("the same hint twice: %v", err)
				}
			})
		}
	}
}

// Defect 3: the settings the router owns cannot be changed through
// set_config, DO blocks, pg_settings or odd spellings.
func TestIsolationReservedSettings(t *testing.T) {
	type tcase struct {
		sql        string
		args       []any
		simpleOnly bool // several statements: the simple protocol only
		// sessionPath: the client's own search_path in session pool mode
		// (see TestSessionSetSearchPath): taken there, not refused.
		sessionPath bool
	}
	refused := []tcase{
		{sql: "SELECT set_config('pgtenant.tenant_id', 't5', true) FROM whoami"},
		{sql: "SELECT set_config('pgtenant.tenant_id', 't5', false)"},
		{sql: "SELECT pg_catalog.set_config('search_path', 'shard_0005', false)", sessionPath: true},
		{sql: `SELECT "set_config"('search_path', 'shard_0005', true), shard FROM whoami`},
		{sql: `SELECT pg_catalog . "set_config" /* c */ ( 'Search_Path' , 'shard_0005', true)`},
		{sql: `SELECT "pg_catalog"."set_config"('search_path', 'shard_0005', true)`},
		{sql: "SELECT PG_CATALOG.SET_CONFIG(E'search\\x5fpath', 'shard_0005', true)"},
		{sql: "SELECT set_config(E'pgtenant.tenant\\137id', 't5', true)"},
		{sql: "SELECT set_config($$search_path$$, 'shard_0005', true)", sessionPath: true},
		{sql: "SELECT set_config($x$pgtenant.tenant_id$x$, 't5', true)"},
		{sql: "SELECT set_config('search_' || 'path', 'shard_0005', true)"},
		{sql: "SELECT set_config(U&'search\\005fpath', 'shard_0005', true)"},
		{sql: "SELECT shard, set_config('role', current_user, true) FROM whoami"},
		{sql: "SELECT x FROM whoami, LATERAL (SELECT set_config('search_path', 'shard_0005', true)) s(x)"},
		{sql: "DO $$ BEGIN PERFORM set_config('search_path', 'shard_0005', false); END $$"},
		{sql: "do $body$ begin perform pg_catalog.set_config('pgtenant.tenant_id', 't5', true); end $body$"},
		{sql: "DO $$ BEGIN SET search_path = shard_0005; END $$"},
		{sql: "DO $$ BEGIN IF true THEN SET LOCAL pgtenant.tenant_id = 't5'; END IF; END $$"},
		{sql: "DO 'BEGIN EXECUTE ''SET search_path TO shard_0005''; END'"},
		{sql: "DO LANGUAGE plpgsql $d$ BEGIN EXECUTE $q$SELECT set_config('search_path', 'shard_0005', false)$q$; END $d$"},
		{sql: "DO $$ BEGIN EXECUTE 'UPDATE pg_settings SET setting = ''shard_0005'' WHERE name = ''search_path'''; END $$"},
		{sql: "UPDATE pg_settings SET setting = 'shard_0005' WHERE name = 'search_path'"},
		{sql: "update only pg_catalog.pg_settings set setting = 't5' where name = 'pgtenant.tenant_id'"},
		{sql: `SET "SEARCH_PATH" = shard_0005`},
		{sql: `SET "pgtenant"."tenant_id" = 't5'`},
		{sql: `set local pgtenant."tenant_id" to 't5'`},
		{sql: `SET U&"search\005fpath" = shard_0005`},
		{sql: "SET SESSION AUTHORIZATION DEFAULT"},
		{sql: "RESET ROLE"},
		{sql: "SELECT 1; SET search_path = shard_0005; SELECT shard FROM whoami", simpleOnly: true},
		{sql: "SELECT 1 FROM whoami; /**/ reset pgtenant.tenant_id", simpleOnly: true},
		{sql: "SELECT set_config($1, 'shard_0005', true)", args: []any{"search_path"}},
		{sql: "SELECT set_config($2, $1, true) FROM whoami", args: []any{"t5", " PGTENANT.TENANT_ID"}},
	}
	allowed := []tcase{
		{sql: "SELECT set_config('app.user', 'u1', true) FROM whoami"},
		{sql: "SELECT set_config('app.user', $1, true), shard FROM whoami", args: []any{"u1"}},
		{sql: "SELECT set_config($1, 'u1', false)", args: []any{"app.user"}},
		{sql: "DO $$ BEGIN PERFORM set_config('app.user', 'u1', true); END $$"},
		{sql: "SELECT 'SET search_path = shard_0005' FROM whoami"},
		{sql: "SET statement_timeout = '10s'"},
	}
	for _, pm := range poolModes {
		for _, mode := range execModes {
			t.Run(string(pm)+"/"+mode.String(), func(t *testing.T) {
				s := startRouter(t, Config{PoolMode: pm, Pool: PoolConfig{MaxSize: 1}}, nil)
				ctx := ctx(t)
				for i, tc := range refused {
					if tc.simpleOnly && mode != pgx.QueryExecModeSimpleProtocol {
						continue
					}
					if tc.args != nil && mode == pgx.QueryExecModeSimpleProtocol {
						continue
					}
					t.Run(fmt.Sprint(i), func(t *testing.T) {
						c := connect(t, s, "t3", mode)
						if tc.sessionPath && pm == PoolSession {
							// Taken as the client's own path; the tenant id stays.
							if _, err := c.Exec(ctx, tc.sql, tc.args...); err != nil {
								t.Fatalf("%s in session mode: %v", tc.sql, err)
							}
							var tid string
							if err := c.QueryRow(ctx, "SELECT current_setting('pgtenant.tenant_id')").Scan(&tid); err != nil || tid != "t3" {
								t.Fatalf("after %s: tenant id %q (%v), want t3", tc.sql, tid, err)
							}
							return
						}
						_, err := c.Exec(ctx, tc.sql, tc.args...)
						var pe *pgconn.PgError
						if !errors.As(err, &pe) || (pe.Code != "0A000" && pe.Code != "42501") || pe.Hint == "" {
							t.Errorf("%s: %v, want 0A000 or 42501 with a hint", tc.sql, err)
						}
						// Still on the tenant's shard, with its tenant id, and
						// so is the next client on this backend.
						for _, c := range []*pgx.Conn{c, connect(t, s, "t3", mode)} {
							var sh int
							var tid string
							if err := c.QueryRow(ctx, "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami").Scan(&sh, &tid); err != nil || sh != 3 || tid != "t3" {
								t.Fatalf("after %s: shard %d tenant id %q (%v), want 3 t3", tc.sql, sh, tid, err)
							}
							if pm == PoolSession {
								break // the second client would wait for the first's backend
							}
						}
					})
				}
				c := connect(t, s, "t3", mode)
				for _, tc := range allowed {
					if tc.args != nil && mode == pgx.QueryExecModeSimpleProtocol {
						continue
					}
					if _, err := c.Exec(ctx, tc.sql, tc.args...); err != nil {
						t.Errorf("%s: %v", tc.sql, err)
					}
				}
			})
		}
	}
}

// Defect 7: a client idle in a transaction is ended; its backend serves
// the next client.
func TestIsolationIdleInTransaction(t *testing.T) {
	for _, pm := range poolModes {
		t.Run(string(pm), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: pm, IdleInTransactionTimeout: 300 * time.Millisecond,
				Pool: PoolConfig{MaxSize: 1, WaitTimeout: 20 * time.Second}}, nil)
			ctx := ctx(t)
			body := "idle-" + string(pm)
			a := connect(t, s, "t3", pgx.QueryExecModeSimpleProtocol)
			tx, err := a.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var pidA int
			if err := tx.QueryRow(ctx, "INSERT INTO sink (body) VALUES ($1) RETURNING pg_backend_pid()", body).Scan(&pidA); err != nil {
				t.Fatal(err)
			}
			// a goes silent; b waits for the only backend of node b.
			b := connect(t, s, "t1", pgx.QueryExecModeSimpleProtocol)
			var pidB int
			if err := b.QueryRow(ctx, "SELECT pg_backend_pid() FROM whoami").Scan(&pidB); err != nil {
				t.Fatalf("client b while a is idle in a transaction: %v", err)
			}
			if pidB != pidA {
				t.Fatalf("b got backend %d, not a's %d: a's backend did not go back to the pool", pidB, pidA)
			}
			_, err = tx.Exec(ctx, "SELECT 1 FROM whoami")
			var pe *pgconn.PgError
			if err == nil || (errors.As(err, &pe) && pe.Code != "25P03") {
				t.Fatalf("a's next statement: %v, want 25P03 or a closed connection", err)
			}
			var n int
			if err := b.QueryRow(ctx, "/* tenant: t3 */ SELECT count(*) FROM sink WHERE body = $1", body).Scan(&n); err != nil || n != 0 {
				t.Fatalf("a's insert: %d rows (%v), want rolled back", n, err)
			}
		})
	}
}

// Defect 8: an unreachable node's error names the node, not its address
// or user.
func TestIsolationErrorsHideBackend(t *testing.T) {
	m := cloneMap(testMap())
	m.Nodes = map[string]placement.Node{"a": m.Nodes["a"], "b": {Name: "b", DSN: "postgres://leakuser:leakpw@127.0.0.1:1/leakdb?sslmode=disable&connect_timeout=2"}}
	s := startRouter(t, Config{Pool: PoolConfig{ConnectTimeout: 2 * time.Second}}, m)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		c := connect(t, s, "t1", mode)
		_, err := c.Exec(ctx(t), "SELECT shard FROM whoami")
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "08006" || !strings.Contains(pe.Message, `"b"`) || pe.Hint == "" {
			t.Fatalf("unreachable node: %v, want 08006 naming node b, with a hint", err)
		}
		for _, secret := range []string{"leakuser", "leakpw", "leakdb", "127.0.0.1", ":1"} {
			if strings.Contains(pe.Message+pe.Detail+pe.Hint, secret) {
				t.Fatalf("the client's error shows %q: %v (detail %q, hint %q)", secret, pe.Message, pe.Detail, pe.Hint)
			}
		}
	}
}

// The shared schema is searched after the shard's, and can be left out.
func TestIsolationSharedSchema(t *testing.T) {
	onNodeB(t, "CREATE OR REPLACE FUNCTION public.iso_shared() RETURNS text LANGUAGE sql AS $$ SELECT 'shared' $$")
	for _, tc := range []struct {
		cfg  Config
		path string
	}{
		{Config{}, `shard_0003, public, pg_temp`},
		{Config{SharedSchema: "ext"}, `shard_0003, ext, pg_temp`},
		{Config{NoSharedSchema: true}, `shard_0003, pg_temp`},
	} {
		s := startRouter(t, tc.cfg, nil)
		for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
			c := connect(t, s, "t3", mode)
			var path string
			if err := c.QueryRow(ctx(t), "SELECT current_setting('search_path') FROM whoami").Scan(&path); err != nil || path != tc.path {
				t.Fatalf("search_path = %q (%v), want %s", path, err, tc.path)
			}
			var v string
			err := c.QueryRow(ctx(t), "SELECT iso_shared() FROM whoami").Scan(&v)
			if tc.path == `shard_0003, public, pg_temp` && (err != nil || v != "shared") {
				t.Fatalf("a function of the shared schema, unqualified: %q %v", v, err)
			}
		}
	}
}
