package router

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// A function (or a DO block building its text) can run DEALLOCATE ALL,
// which the router refuses as a statement but cannot see in a function
// body: the router's own prepared statements on that backend are gone. The
// next statement that uses one fails once with 26000 and the router's
// message; the router forgets what it had prepared there (and in
// transaction mode closes the backend when the transaction ends), so the
// retry, and every client after it, runs. Before, the router kept binding
// the vanished statements: every later client of that backend failed.
func TestDeallocateInFunction(t *testing.T) {
	onNodeB(t, `CREATE OR REPLACE FUNCTION public.dealloc_all() RETURNS int LANGUAGE plpgsql AS $$
BEGIN EXECUTE 'DEALLOCATE ' || 'ALL'; RETURN 1; END $$`)
	// DML, so that the router's setup goes with it as its own prepared
	// statements (DISCARD TEMP and the settings).
	const probe = "INSERT INTO sink (body) VALUES ('dealloc') RETURNING (SELECT shard FROM whoami)"
	for _, mode := range poolModes {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1}}, nil)
			shard := func(c *pgx.Conn) (int, error) {
				var n int
				err := c.QueryRow(ctx(t), probe).Scan(&n)
				return n, err
			}
			// retried runs probe until it succeeds, at most twice: the
			// first try may fail once, with the router's 26000.
			retried := func(who string, c *pgx.Conn, want int) {
				t.Helper()
				n, err := shard(c)
				if err != nil {
					if pgCode(err) != "26000" || !strings.Contains(err.Error(), "DEALLOCATE") {
						t.Fatalf("%s: %v, want the router's 26000 at most once", who, err)
					}
					t.Logf("%s: %v", who, err)
					n, err = shard(c)
				}
				if err != nil || n != want {
					t.Fatalf("%s: shard %d, %v; want %d", who, n, err, want)
				}
			}
			a := connect(t, s, "t1", pgx.QueryExecModeCacheStatement) // shard 1, node b
			retried("before", a, 1)
			if _, err := a.Exec(ctx(t), "SELECT public.dealloc_all()"); err != nil {
				t.Fatal(err)
			}
			if mode == PoolTransaction {
				// The next client gets the backend.
				a.Close(ctx(t))
				a = connect(t, s, "t1", pgx.QueryExecModeCacheStatement)
				retried("after DEALLOCATE ALL", a, 1)
				retried("again", a, 1)
				retried("another client", connect(t, s, "t3", pgx.QueryExecModeCacheStatement), 3)
			} else {
				// The client's own statements are the server's, gone as
				// on a server; it goes on with the router's: switching
				// tenants on the node binds the router's setup.
				a.Close(ctx(t))
				a = connect(t, s, "t1", pgx.QueryExecModeCacheStatement)
				retried("a new session", a, 1)
				for _, tenant := range []string{"t3", "t1"} { // the router's setup prepared
					if _, err := a.Exec(ctx(t), "SET pgtenant.tenant = '"+tenant+"'"); err != nil {
						t.Fatal(err)
					}
					var n int
					if err := a.QueryRow(ctx(t), probe, pgx.QueryExecModeExec).Scan(&n); err != nil || n != shardOf(tenant) {
						t.Fatalf("tenant %s: %d, %v", tenant, n, err)
					}
				}
				if _, err := a.Exec(ctx(t), "SELECT public.dealloc_all()"); err != nil {
					t.Fatal(err)
				}
				if _, err := a.Exec(ctx(t), "SET pgtenant.tenant = 't3'"); err != nil {
					t.Fatal(err)
				}
				var n int
				if err := a.QueryRow(ctx(t), probe, pgx.QueryExecModeExec).Scan(&n); err != nil && pgCode(err) != "26000" || err == nil && n != 3 {
					t.Fatalf("tenant t3 after DEALLOCATE ALL: %d, %v", n, err)
				}
				if err := a.QueryRow(ctx(t), probe, pgx.QueryExecModeExec).Scan(&n); err != nil || n != 3 {
					t.Fatalf("tenant t3 again: %d, %v", n, err)
				}
			}

			// Inside a transaction: the statement after the function fails
			// (or runs), the ROLLBACK runs, and so does what follows.
			tx, err := a.Begin(ctx(t))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx(t), "SELECT public.dealloc_all()"); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := tx.QueryRow(ctx(t), probe, pgx.QueryExecModeExec).Scan(&n); err != nil && pgCode(err) != "26000" {
				t.Fatalf("in the transaction: %d, %v", n, err)
			}
			if err := tx.Rollback(ctx(t)); err != nil {
				t.Fatalf("rollback: %v", err)
			}
			a.Close(ctx(t))
			retried("after the transaction", connect(t, s, "t1", pgx.QueryExecModeCacheStatement), 1)
		})
	}
}
