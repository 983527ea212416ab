package router

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// shardPath is the router's search_path for shard n.
func shardPath(n string) string { return "shard_000" + n + ", public, pg_temp" }

// In session pool mode a startup search_path is the client's: SHOW shows
// it, no warning is sent, and an unqualified CREATE lands in it, as on
// PostgreSQL. (Transaction mode ignores it with a warning: see
// TestStartupSearchPath.)
func TestSessionStartupSearchPath(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	cfg, err := pgconn.ParseConfig(routerURL(s, "t2"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.RuntimeParams["search_path"] = "public, shard_0002"
	var notices []string
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) { notices = append(notices, n.Message) }
	pc, err := pgconn.ConnectConfig(ctx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close(ctx(t))
	if got := pcValue(t, pc, "SHOW search_path"); got != "public, shard_0002" {
		t.Fatalf("SHOW search_path = %q, want the startup value", got)
	}
	if len(notices) != 0 {
		t.Fatalf("notices %q, want none", notices)
	}
	pcValue(t, pc, "CREATE TABLE fid_sp_startup (x int)")
	defer pcValue(t, pc, "DROP TABLE public.fid_sp_startup")
	if got := pcValue(t, pc, "SELECT to_regclass('public.fid_sp_startup') IS NOT NULL AND to_regclass('shard_0002.fid_sp_startup') IS NULL"); got != "t" {
		t.Fatalf("unqualified CREATE TABLE with search_path public: not in public")
	}
	if got := pcValue(t, pc, "SELECT shard FROM whoami"); got != "2" {
		t.Fatalf("whoami through the client's path: %s, want 2", got)
	}
	// RESET goes back to the router's shard path (not to the startup value).
	pcValue(t, pc, "RESET search_path")
	if got := pcValue(t, pc, "SHOW search_path"); got != shardPath("2") {
		t.Fatalf("after RESET: %q, want the shard path", got)
	}
}

// In session pool mode SET search_path, set_config('search_path', v,
// false) and RESET search_path, simple or extended, are the client's: the
// statements after them resolve names where PostgreSQL would, on every
// tenant the session switches to, until RESET (or SET ... TO DEFAULT, or
// RESET ALL) gives the router's shard path back. A SET rolled back is gone.
func TestSessionSetSearchPath(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := ctx(t)
			c := connect(t, s, "t2", mode) // shard 2, node a
			val := func(q string, args ...any) string {
				t.Helper()
				var v string
				if err := c.QueryRow(ctx, q, args...).Scan(&v); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
				return v
			}
			exec := func(q string, args ...any) {
				t.Helper()
				if _, err := c.Exec(ctx, q, args...); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			whoami := "SELECT shard::text FROM whoami"
			if got := val(whoami); got != "2" {
				t.Fatalf("before: %s", got)
			}
			exec("SET search_path TO shard_0004")
			if got := val(whoami); got != "4" {
				t.Fatalf("after SET search_path TO shard_0004: whoami in shard %s, want 4", got)
			}
			// Another tenant on the same node, then on the other node: the
			// path stays the client's.
			exec("SET pgtenant.tenant = 't6'")
			if got := val(whoami); got != "4" {
				t.Fatalf("tenant t6, same node: whoami in shard %s, want 4 (the client's path)", got)
			}
			exec("SET pgtenant.tenant = 't1'")
			if got := val("SHOW search_path"); got != "shard_0004" {
				t.Fatalf("tenant t1, other node: search_path %q, want the client's", got)
			}
			exec("RESET search_path")
			if got := val("SHOW search_path"); got != shardPath("1") {
				t.Fatalf("after RESET: %q, want the shard path", got)
			}
			if got := val(whoami); got != "1" {
				t.Fatalf("after RESET: whoami in shard %s, want 1", got)
			}
			exec("SET pgtenant.tenant = 't2'")
			exec("SELECT set_config('search_path', 'public, shard_0004', false)")
			if got := val("SHOW search_path"); got != "public, shard_0004" {
				t.Fatalf("after set_config: %q", got)
			}
			exec("CREATE TABLE fid_sp_set (x int)")
			if got := val("SELECT (to_regclass('public.fid_sp_set') IS NOT NULL)::text"); got != "true" {
				t.Fatalf("unqualified CREATE TABLE with search_path public, ...: not in public")
			}
			exec("DROP TABLE fid_sp_set")
			exec("SET search_path = DEFAULT")
			if got := val(whoami); got != "2" {
				t.Fatalf("after SET search_path = DEFAULT: whoami in shard %s, want 2", got)
			}
			if mode != pgx.QueryExecModeSimpleProtocol {
				exec("SELECT pg_catalog.set_config('search_path', $1, false)", "shard_0004")
				if got := val(whoami); got != "4" {
					t.Fatalf("after set_config with a parameter: whoami in shard %s, want 4", got)
				}
				exec("RESET search_path")
			}
			// A SET rolled back is gone.
			tx, err := c.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "SET search_path TO shard_0004"); err != nil {
				t.Fatal(err)
			}
			var in string
			if err := tx.QueryRow(ctx, whoami).Scan(&in); err != nil || in != "4" {
				t.Fatalf("in the transaction: %s %v, want 4", in, err)
			}
			tx.Rollback(ctx)
			if got := val(whoami); got != "2" {
				t.Fatalf("after the rollback: whoami in shard %s, want 2", got)
			}
			if got := val("SELECT current_setting('pgtenant.tenant_id')"); got != "t2" {
				t.Fatalf("tenant id %q, want t2", got)
			}
		})
	}
}

// A RESET search_path part way through a pipeline gives the statements
// after it the shard path at once.
func TestSessionSearchPathPipeline(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	pc := pcConnect(t, s, "t2")
	pcValue(t, pc, "SET search_path TO shard_0004")
	b := &pgconn.Batch{}
	b.ExecParams("SELECT shard FROM whoami", nil, nil, nil, nil)
	b.ExecParams("RESET search_path", nil, nil, nil, nil)
	b.ExecParams("SELECT shard FROM whoami", nil, nil, nil, nil)
	b.ExecParams("SET search_path TO shard_0004", nil, nil, nil, nil)
	b.ExecParams("SELECT shard FROM whoami", nil, nil, nil, nil)
	res, err := pc.ExecBatch(ctx(t), b).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range res {
		if len(r.Rows) > 0 {
			got = append(got, string(r.Rows[0][0]))
		}
	}
	if strings.Join(got, " ") != "4 2 4" {
		t.Fatalf("whoami through the pipeline: %v, want 4 2 4", got)
	}
	if got := pcValue(t, pc, "SELECT shard FROM whoami"); got != "4" {
		t.Fatalf("after the pipeline: %s, want 4", got)
	}
}

// Transaction mode keeps refusing a client's search_path (0A000, with a
// hint naming session mode); a startup one is ignored with a warning.
func TestTransactionSearchPathRefused(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction}, nil)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		c := connect(t, s, "t2", mode)
		for _, q := range []string{"SET search_path TO shard_0004", "RESET search_path", "SELECT set_config('search_path', 'shard_0004', false)"} {
			_, err := c.Exec(ctx(t), q)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "0A000" || !strings.Contains(pe.Hint, "session pool mode") {
				t.Fatalf("%s: %v, want 0A000 with a hint", q, err)
			}
		}
		var sh int
		if err := c.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 2 {
			t.Fatalf("after the refusals: shard %d (%v), want 2", sh, err)
		}
	}
}

// SET LOCAL search_path in a transaction (session mode) holds for that
// transaction only; SET LOCAL of any setting right after a deferred BEGIN
// is not taken for a malformed SET TRANSACTION (it was refused with 42601).
func TestSessionSetLocalSearchPath(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolSession}, nil)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		ctx := ctx(t)
		c := connect(t, s, "t2", mode)
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"SET LOCAL statement_timeout = '5s'", "SET LOCAL search_path TO shard_0004"} {
			if _, err := tx.Exec(ctx, q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		var in, timeout string
		if err := tx.QueryRow(ctx, "SELECT shard::text, current_setting('statement_timeout') FROM whoami").Scan(&in, &timeout); err != nil || in != "4" || timeout != "5s" {
			t.Fatalf("in the transaction: shard %s, statement_timeout %s (%v); want 4, 5s", in, timeout, err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := c.QueryRow(ctx, "SELECT shard::text FROM whoami").Scan(&in); err != nil || in != "2" {
			t.Fatalf("after the transaction: shard %s (%v), want 2", in, err)
		}
	}
}
