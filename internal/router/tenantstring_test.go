package router

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// multi runs sql as one simple-protocol Query and returns each statement's
// command tag and its rows' first column.
func multi(ctx context.Context, t *testing.T, c *pgx.Conn, sql string) ([]string, [][]string, error) {
	t.Helper()
	rs, err := c.PgConn().Exec(ctx, sql).ReadAll()
	var tags []string
	var rows [][]string
	for _, r := range rs {
		tags = append(tags, r.CommandTag.String())
		var col []string
		for _, row := range r.Rows {
			col = append(col, string(row[0]))
		}
		rows = append(rows, col)
	}
	return tags, rows, err
}

// TestTenantInQueryString: SET pgtenant.tenant (or SET LOCAL, or BEGIN and
// SET LOCAL) at the start of a query string applies to the rest of it, as
// psql -c and ORMs' raw queries send it (issue 11, item 3).
func TestTenantInQueryString(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode}, nil)
			ctx := ctx(t)

			c := connect(t, s, "", pgx.QueryExecModeSimpleProtocol)
			tags, rows, err := multi(ctx, t, c, "SET pgtenant.tenant = 't3'; SELECT shard FROM whoami")
			if err != nil {
				t.Fatalf("SET; SELECT: %v", err)
			}
			if got, want := len(tags), 2; got != want {
				t.Fatalf("results = %v, want 2", tags)
			}
			if tags[0] != "SET" || len(rows[1]) != 1 || rows[1][0] != "3" {
				t.Fatalf("SET; SELECT = %v %v, want SET and shard 3", tags, rows)
			}
			// A session SET stays for the session.
			var shard int
			if err := c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard); err != nil || shard != 3 {
				t.Fatalf("after SET; SELECT: shard %d, %v; want 3", shard, err)
			}

			// SET LOCAL outside a block lasts to the end of the string.
			c = connect(t, s, "", pgx.QueryExecModeSimpleProtocol)
			_, rows, err = multi(ctx, t, c, "SET LOCAL pgtenant.tenant = 't5'; SELECT shard FROM whoami; SELECT shard + 10 FROM whoami")
			if err != nil || len(rows) != 3 || len(rows[1]) != 1 || rows[1][0] != "5" || rows[2][0] != "15" {
				t.Fatalf("SET LOCAL; SELECT; SELECT = %v, %v; want 5 and 15", rows, err)
			}
			_, err = c.Exec(ctx, "SELECT shard FROM whoami")
			if got, want := pgCode(err), "3D000"; got != want {
				t.Fatalf("after a string with SET LOCAL: %v (code %q), want %s", err, got, want)
			}

			// BEGIN; SET LOCAL ...; INSERT; COMMIT in one string.
			tags, rows, err = multi(ctx, t, c, "BEGIN; SET LOCAL pgtenant.tenant = 't6'; INSERT INTO sink (body) VALUES ('in one string "+string(mode)+"') RETURNING tenant; COMMIT")
			if err != nil {
				t.Fatalf("BEGIN; SET LOCAL; INSERT; COMMIT: %v", err)
			}
			if len(tags) != 4 || tags[0] != "BEGIN" || tags[1] != "SET" || tags[2] != "INSERT 0 1" || tags[3] != "COMMIT" || rows[2][0] != "t6" {
				t.Fatalf("BEGIN; SET LOCAL; INSERT; COMMIT = %v %v", tags, rows)
			}
			if got, want := c.PgConn().TxStatus(), byte('I'); got != want {
				t.Fatalf("status after the string = %c, want %c", got, want)
			}
			c6 := connect(t, s, "t6", pgx.QueryExecModeSimpleProtocol)
			var n int
			if err := c6.QueryRow(ctx, "SELECT count(*) FROM sink WHERE body = 'in one string "+string(mode)+"'").Scan(&n); err != nil || n != 1 {
				t.Fatalf("row on t6's shard: %d, %v; want 1", n, err)
			}

			// Inside an open transaction block.
			if _, err := c.Exec(ctx, "BEGIN"); err != nil {
				t.Fatal(err)
			}
			_, rows, err = multi(ctx, t, c, "SET LOCAL pgtenant.tenant = 't2'; SELECT shard FROM whoami")
			if err != nil || len(rows) != 2 || len(rows[1]) != 1 || rows[1][0] != "2" {
				t.Fatalf("in a block, SET LOCAL; SELECT = %v, %v; want 2", rows, err)
			}
			if err := c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard); err != nil || shard != 2 {
				t.Fatalf("rest of the block: shard %d, %v; want 2", shard, err)
			}
			if _, err := c.Exec(ctx, "COMMIT"); err != nil {
				t.Fatal(err)
			}

			// SHOW in a string.
			_, rows, err = multi(ctx, t, c, "SET pgtenant.tenant = 't7'; SHOW pgtenant.tenant; SELECT shard FROM whoami")
			if err != nil || len(rows) != 3 || rows[1][0] != "t7" || rows[2][0] != "7" {
				t.Fatalf("SET; SHOW; SELECT = %v, %v", rows, err)
			}

			// An unknown tenant stops the string before the rest runs.
			tags, _, err = multi(ctx, t, c, "SET pgtenant.tenant = 'nobody'; INSERT INTO sink (body) VALUES ('never')")
			if got, want := pgCode(err), "42704"; got != want {
				t.Fatalf("unknown tenant in a string: %v %v (code %q), want %s", tags, err, got, want)
			}
			if err := c.QueryRow(ctx, "SELECT count(*) FROM sink WHERE body = 'never'").Scan(&n); err != nil || n != 0 {
				t.Fatalf("rows after a refused string: %d, %v; want 0", n, err)
			}

			// After another statement it is refused, not sent to a server
			// (where it would set a custom setting and route nothing).
			_, _, err = multi(ctx, t, c, "SELECT 1; SET pgtenant.tenant = 't1'")
			if got, want := pgCode(err), "0A000"; got != want {
				t.Fatalf("SET after another statement: %v (code %q), want %s", err, got, want)
			}
			if err := c.QueryRow(ctx, "SHOW pgtenant.tenant").Scan(new(string)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestResetTenantAfterTransaction: with the router option, a session SET
// of the tenant lasts for one transaction on a shard, so a client reused by
// an application's pool does not carry it into the next request (issue 11,
// item 5).
func TestResetTenantAfterTransaction(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode, ResetTenantAfterTransaction: true}, nil)
			ctx := ctx(t)
			for _, em := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
				c := connect(t, s, "", em)
				shardOf := func() (int, error) {
					var n int
					err := c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&n)
					return n, err
				}
				// A session SET, one statement, then nothing.
				if _, err := c.Exec(ctx, "SET pgtenant.tenant = 't3'"); err != nil {
					t.Fatal(err)
				}
				if n, err := shardOf(); err != nil || n != 3 {
					t.Fatalf("%v: first statement after SET: %d, %v; want 3", em, n, err)
				}
				if _, err := shardOf(); pgCode(err) != "3D000" {
					t.Fatalf("%v: second statement after SET: %v, want 3D000", em, err)
				}
				// A transaction block keeps it to its end.
				tx, err := c.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, "SET pgtenant.tenant = 't4'"); err != nil {
					t.Fatal(err)
				}
				for i := 0; i < 2; i++ {
					var n int
					if err := tx.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&n); err != nil || n != 4 {
						t.Fatalf("%v: in the block: %d, %v; want 4", em, n, err)
					}
				}
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				if _, err := shardOf(); pgCode(err) != "3D000" {
					t.Fatalf("%v: after the block: %v, want 3D000", em, err)
				}
				// set_config with a parameter, as node-postgres sends it.
				if _, err := c.Exec(ctx, "SELECT set_config('pgtenant.tenant', $1, false)", "t5"); err != nil {
					t.Fatal(err)
				}
				if n, err := shardOf(); err != nil || n != 5 {
					t.Fatalf("%v: after set_config: %d, %v; want 5", em, n, err)
				}
				if _, err := shardOf(); pgCode(err) != "3D000" {
					t.Fatalf("%v: second after set_config: %v, want 3D000", em, err)
				}
			}
			// The startup tenant is what a reset goes back to.
			c := connect(t, s, "t1", pgx.QueryExecModeCacheStatement)
			if _, err := c.Exec(ctx, "SET pgtenant.tenant = 't2'"); err != nil {
				t.Fatal(err)
			}
			for _, want := range []int{2, 1, 1} {
				var n int
				if err := c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&n); err != nil || n != want {
					t.Fatalf("startup tenant t1, SET t2: %d, %v; want %d", n, err, want)
				}
			}
		})
	}
	// Off by default: the tenant stays.
	s := startRouter(t, Config{}, nil)
	c := connect(t, s, "", pgx.QueryExecModeCacheStatement)
	ctx := ctx(t)
	if _, err := c.Exec(ctx, "SET pgtenant.tenant = 't3'"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		var n int
		if err := c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&n); err != nil || n != 3 {
			t.Fatalf("default: %d, %v; want 3", n, err)
		}
	}
}
