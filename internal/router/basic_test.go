package router

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestQueryModes(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connect(t, s, "t3", mode)
			ctx := ctx(t)
			var shard int
			if err := c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard); err != nil {
				t.Fatal(err)
			}
			if got, want := shard, 3; got != want {
				t.Fatalf("shard = %d, want %d", got, want)
			}
			var val string
			if err := c.QueryRow(ctx, "SELECT val FROM items WHERE id = $1", 7).Scan(&val); err != nil {
				t.Fatal(err)
			}
			if got, want := val, "shard3-7"; got != want {
				t.Fatalf("val = %q, want %q", got, want)
			}
			// Same statement again (cached/prepared path).
			for i := 1; i <= 5; i++ {
				if err := c.QueryRow(ctx, "SELECT val FROM items WHERE id = $1", i).Scan(&val); err != nil {
					t.Fatal(err)
				}
				if got, want := val, fmt.Sprintf("shard3-%d", i); got != want {
					t.Fatalf("val = %q, want %q", got, want)
				}
			}
			// Switch tenant between transactions.
			for _, tn := range []string{"t4", "t5", "t12"} {
				if _, err := c.Exec(ctx, "SET pgtenant.tenant = '"+tn+"'"); err != nil {
					t.Fatal(err)
				}
				if err := c.QueryRow(ctx, "SELECT shard FROM whoami WHERE shard >= $1", 0).Scan(&shard); err != nil {
					t.Fatal(err)
				}
				if got, want := shard, shardOf(tn); got != want {
					t.Fatalf("tenant %s: shard = %d, want %d", tn, got, want)
				}
				var cur string
				if err := c.QueryRow(ctx, "SHOW pgtenant.tenant").Scan(&cur); err != nil {
					t.Fatal(err)
				}
				if cur != tn {
					t.Fatalf("SHOW pgtenant.tenant = %q, want %q", cur, tn)
				}
			}
			// Hint overrides the session tenant.
			if err := c.QueryRow(ctx, "/* tenant: t6 */ SELECT shard FROM whoami WHERE $1::int = 1", 1).Scan(&shard); err != nil {
				t.Fatal(err)
			}
			if shard != 6 {
				t.Fatalf("hinted shard = %d, want 6", shard)
			}
			// set_config with a bind parameter (or literal in simple mode).
			if _, err := c.Exec(ctx, "SELECT set_config('pgtenant.tenant', $1, false)", "t1"); err != nil {
				t.Fatal(err)
			}
			if err := c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard); err != nil {
				t.Fatal(err)
			}
			if shard != 1 {
				t.Fatalf("after set_config shard = %d, want 1", shard)
			}
			// Errors relayed verbatim.
			_, err := c.Exec(ctx, "INSERT INTO items VALUES ($1, 'x', 'y')", 1)
			if got := pgCode(err); got != "23505" {
				t.Fatalf("duplicate insert: %v (code %q), want 23505", err, got)
			}
			_, err = c.Exec(ctx, "SELECT * FROM no_such_table WHERE 1 = $1", 1)
			if got := pgCode(err); got != "42P01" {
				t.Fatalf("missing table: %v (code %q), want 42P01", err, got)
			}
			// Connection still fine after errors.
			if err := c.QueryRow(ctx, "SELECT count(*) FROM items WHERE id <= $1", 10).Scan(&shard); err != nil || shard != 10 {
				t.Fatalf("after errors: %d, %v", shard, err)
			}
		})
	}
}

func TestTransactions(t *testing.T) {
	for _, pm := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(pm), func(t *testing.T) { testTransactions(t, pm) })
	}
}

func testTransactions(t *testing.T, pm PoolMode) {
	s := startRouter(t, Config{PoolMode: pm}, nil)
	for _, mode := range execModes {
		t.Run(mode.String(), func(t *testing.T) {
			c := connect(t, s, "", mode)
			ctx := ctx(t)
			body := "txn-" + string(pm) + mode.String()
			// Deferred BEGIN, tenant chosen inside the transaction.
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SET LOCAL pgtenant.tenant = 't10'"); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO sink (body) VALUES ($1)", body); err != nil {
				t.Fatal(err)
			}
			var tenant string
			if err := tx.QueryRow(ctx, "SELECT tenant FROM sink WHERE body = $1", body).Scan(&tenant); err != nil {
				t.Fatal(err)
			}
			if tenant != "t10" {
				t.Fatalf("pgtenant.tenant_id = %q, want t10", tenant)
			}
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			// Rolled back: nothing there; SET LOCAL gone.
			if _, err := c.Exec(ctx, "SELECT count(*) FROM sink"); pgCode(err) != "3D000" {
				t.Fatalf("after rollback without tenant: %v, want 3D000", err)
			}
			var n int
			if err := c.QueryRow(ctx, "/* tenant: t10 */ SELECT count(*) FROM sink WHERE body = $1", body).Scan(&n); err != nil || n != 0 {
				t.Fatalf("rolled back rows = %d, %v", n, err)
			}
			// Commit.
			tx, err = c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "/* tenant: t10 */ INSERT INTO sink (body) VALUES ($1)", body); err != nil {
				t.Fatal(err)
			}
			// A second tenant on another shard in the same transaction is refused.
			_, err = tx.Exec(ctx, "/* tenant: t11 */ SELECT 1 FROM whoami")
			if got := pgCode(err); got != "25001" {
				t.Fatalf("cross-shard statement: %v (code %q), want 25001", err, got)
			}
			if err := tx.Commit(ctx); err == nil {
				t.Fatal("commit of aborted transaction succeeded")
			}
			tx, err = c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "/* tenant: t10 */ INSERT INTO sink (body) VALUES ($1)", body); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if err := c.QueryRow(ctx, "/* tenant: t10 */ SELECT count(*) FROM sink WHERE body = $1", body).Scan(&n); err != nil || n != 1 {
				t.Fatalf("committed rows = %d, %v", n, err)
			}
			// Statements that need no shard.
			if err := c.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil || n != 1 {
				t.Fatalf("SELECT 1 without tenant: %d, %v", n, err)
			}
		})
	}
}

func TestTenantErrors(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeCacheStatement, pgx.QueryExecModeSimpleProtocol} {
		t.Run(mode.String(), func(t *testing.T) {
			c := connect(t, s, "", mode)
			ctx := ctx(t)
			_, err := c.Exec(ctx, "SELECT * FROM items WHERE id = $1", 1)
			if got := pgCode(err); got != "3D000" {
				t.Fatalf("no tenant: %v, want 3D000", err)
			}
			_, err = c.Exec(ctx, "SET pgtenant.tenant = 'nope'")
			if got := pgCode(err); got != "42704" {
				t.Fatalf("unknown tenant: %v, want 42704", err)
			}
			_, err = c.Exec(ctx, "/* tenant: nope */ SELECT * FROM items WHERE id = $1", 1)
			if got := pgCode(err); got != "42704" {
				t.Fatalf("unknown hinted tenant: %v, want 42704", err)
			}
			_, err = c.Exec(ctx, "SET search_path = public")
			if got := pgCode(err); got != "0A000" {
				t.Fatalf("SET search_path: %v, want 0A000", err)
			}
			// The same over the extended protocol (pgx sends Exec without
			// arguments as a simple Query).
			for _, q := range []string{"SET search_path = public", "RESET search_path", "SET pgtenant.tenant_id = 'x'"} {
				err := c.PgConn().ExecParams(ctx, "/* tenant: t4 */ "+q, nil, nil, nil, nil).Read().Err
				if got := pgCode(err); got != "0A000" {
					t.Fatalf("%s over the extended protocol: %v, want 0A000", q, err)
				}
			}
			var schema string
			if err := c.QueryRow(ctx, "/* tenant: t4 */ SELECT current_schema()").Scan(&schema); err != nil || schema != "shard_0004" {
				t.Fatalf("current_schema after refused SETs: %q, %v", schema, err)
			}
			long := make([]byte, 1024)
			for i := range long {
				long[i] = 'x'
			}
			_, err = c.Exec(ctx, "SET pgtenant.tenant = '"+string(long)+"'")
			if got := pgCode(err); got != "22023" {
				t.Fatalf("1 KB tenant: %v, want 22023", err)
			}
			for _, odd := range []string{`x'; DROP TABLE items; --`, "ünknown", `a"b`} {
				_, err := c.Exec(ctx, "/* tenant: "+odd+" */ SELECT * FROM items WHERE id = $1", 1)
				if got := pgCode(err); got != "42704" {
					t.Fatalf("unknown odd tenant %q: %v, want 42704", odd, err)
				}
			}
			for _, odd := range oddTenants {
				if _, err := c.Exec(ctx, "SELECT set_config('pgtenant.tenant', $1, false)", odd); err != nil {
					t.Fatalf("set_config %q: %v", odd, err)
				}
				var shard int
				var tid string
				if err := c.QueryRow(ctx, "SELECT shard, current_setting('pgtenant.tenant_id') FROM whoami").Scan(&shard, &tid); err != nil {
					t.Fatalf("tenant %q: %v", odd, err)
				}
				if shard != shardOf(odd) || tid != odd {
					t.Fatalf("tenant %q: shard %d tenant_id %q, want %d", odd, shard, tid, shardOf(odd))
				}
			}
		})
	}
}

func TestStartupTenant(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	long := strings.Repeat("x", 1024)
	_, err := pgx.Connect(ctx(t), routerURL(s, long))
	if got := pgCode(err); got != "22023" {
		t.Fatalf("1 KB startup tenant: %v, want 22023", err)
	}
	for _, odd := range oddTenants {
		c := connect(t, s, odd, pgx.QueryExecModeCacheStatement)
		var tid string
		if err := c.QueryRow(ctx(t), "SELECT current_setting('pgtenant.tenant_id') FROM whoami").Scan(&tid); err != nil || tid != odd {
			t.Fatalf("startup tenant %q: %q %v", odd, tid, err)
		}
	}
	// Unknown startup tenant: the connection works, statements get 42704.
	c := connect(t, s, "nobody", pgx.QueryExecModeSimpleProtocol)
	if _, err := c.Exec(ctx(t), "SELECT * FROM whoami"); pgCode(err) != "42704" {
		t.Fatalf("unknown startup tenant: %v, want 42704", err)
	}
}

// TestExtendedBegin sends BEGIN/COMMIT/ROLLBACK with Parse/Bind/Execute, as
// pgbench -M extended and JDBC do, with the tenant chosen inside.
func TestExtendedBegin(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	c := connect(t, s, "", pgx.QueryExecModeExec)
	ctx := ctx(t)
	pc := c.PgConn()
	exec := func(sql string, args ...string) *pgconn.ResultReader {
		params := make([][]byte, len(args))
		for i, a := range args {
			params[i] = []byte(a)
		}
		return pc.ExecParams(ctx, sql, params, nil, nil, nil)
	}
	for _, end := range []string{"COMMIT", "ROLLBACK", "END"} {
		if _, err := exec("BEGIN").Close(); err != nil {
			t.Fatalf("BEGIN: %v", err)
		}
		if pc.TxStatus() != 'T' {
			t.Fatalf("status after BEGIN = %c", pc.TxStatus())
		}
		if _, err := exec("SELECT set_config('pgtenant.tenant', $1, true)", "t6").Close(); err != nil {
			t.Fatal(err)
		}
		res := exec("SELECT shard FROM whoami").Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "6" {
			t.Fatalf("select in txn: %v %q", res.Err, res.Rows)
		}
		if _, err := exec(end).Close(); err != nil {
			t.Fatalf("%s: %v", end, err)
		}
		if pc.TxStatus() != 'I' {
			t.Fatalf("status after %s = %c", end, pc.TxStatus())
		}
	}
	// BEGIN then COMMIT with nothing in between never touches a backend.
	if _, err := exec("BEGIN").Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := exec("COMMIT").Close(); err != nil {
		t.Fatal(err)
	}
}
