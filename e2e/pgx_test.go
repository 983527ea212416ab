package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/router"
)

var execModes = []struct {
	name string
	mode pgx.QueryExecMode
}{
	{"CacheStatement", pgx.QueryExecModeCacheStatement},
	{"CacheDescribe", pgx.QueryExecModeCacheDescribe},
	{"DescribeExec", pgx.QueryExecModeDescribeExec},
	{"Exec", pgx.QueryExecModeExec},
	{"SimpleProtocol", pgx.QueryExecModeSimpleProtocol},
}

// connectPgx opens a pgx connection through the router in mode, with tenant
// as the startup option ("" for none).
func connectPgx(t testing.TB, ctx context.Context, c *cluster, tenant string, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(c.dsn(tenant))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect through router: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// where says which shard and node answered and what tenant the backend was set to.
func where(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (shard int, node, tenant string, err error) {
	err = q.QueryRow(ctx, "SELECT shard, node, current_setting('pgtenant.tenant_id') FROM shard_info").Scan(&shard, &node, &tenant)
	return
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// TestPgx runs pgx in every query exec mode through the router, in
// transaction and in session pool mode.
func TestPgx(t *testing.T) {
	for _, pm := range []router.PoolMode{router.PoolTransaction, router.PoolSession} {
		t.Run(string(pm), func(t *testing.T) {
			testPgx(t, newCluster(t, router.Config{PoolMode: pm}))
		})
	}
}

func testPgx(t *testing.T, c *cluster) {
	for _, em := range execModes {
		t.Run(em.name, func(t *testing.T) {
			mode := em.mode
			// run gives each case its own deadline, so that one hang does
			// not take the others with it.
			run := func(name string, f func(t *testing.T, ctx context.Context)) {
				t.Run(name, func(t *testing.T) {
					ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
					defer cancel()
					f(t, ctx)
				})
			}

			run("queries", func(t *testing.T, ctx context.Context) {
				conn := connectPgx(t, ctx, c, "t3", mode)
				shard, node, tenant, err := where(ctx, conn)
				if err != nil {
					t.Fatal(err)
				}
				if shard != 3 || node != "b" || tenant != "t3" {
					t.Fatalf("where = %d %s %s, want 3 b t3", shard, node, tenant)
				}
				var n, sum int
				if err := conn.QueryRow(ctx, "SELECT count(*), sum(qty) FROM items WHERE tenant = $1 AND qty >= $2", "t3", 20).Scan(&n, &sum); err != nil {
					t.Fatal(err)
				}
				if n != 4 || sum != 20+30+40+50 {
					t.Fatalf("count, sum = %d, %d; want 4, 140", n, sum)
				}
				// Types round-trip in binary and text formats.
				var s string
				var ts time.Time
				var arr []int32
				if err := conn.QueryRow(ctx, "SELECT $1::text || '!', $2::timestamptz, $3::int4[]", "héllo", time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC), []int32{1, 2, 3}).Scan(&s, &ts, &arr); err != nil {
					t.Fatal(err)
				}
				if s != "héllo!" || !ts.Equal(time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)) || len(arr) != 3 {
					t.Fatalf("round trip = %q %v %v", s, ts, arr)
				}
				// A statement that needs no shard.
				var one int
				if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
					t.Fatalf("SELECT 1 = %d, %v", one, err)
				}
				// The comment hint beats the startup tenant.
				var sh int
				if err := conn.QueryRow(ctx, "/* tenant: t6 */ SELECT shard FROM shard_info").Scan(&sh); err != nil || sh != 6 {
					t.Fatalf("hinted shard = %d, %v; want 6", sh, err)
				}
			})

			run("transactions", func(t *testing.T, ctx context.Context) {
				conn := connectPgx(t, ctx, c, "t2", mode)
				tx, err := conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, "UPDATE items SET qty = qty + 1000 WHERE id = 201"); err != nil {
					t.Fatal(err)
				}
				var q int
				if err := tx.QueryRow(ctx, "SELECT qty FROM items WHERE id = 201").Scan(&q); err != nil || q != 1010 {
					t.Fatalf("qty in txn = %d, %v", q, err)
				}
				if err := tx.Rollback(ctx); err != nil {
					t.Fatal(err)
				}
				if err := conn.QueryRow(ctx, "SELECT qty FROM items WHERE id = 201").Scan(&q); err != nil || q != 10 {
					t.Fatalf("qty after rollback = %d, %v; want 10", q, err)
				}
				// Commit, with the tenant named inside the transaction.
				err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, "SET LOCAL pgtenant.tenant = 't10'"); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, "INSERT INTO items (id, tenant, name, qty) VALUES ($1, $2, $3, $4)", 1099, "t10", "new", 7)
					return err
				})
				if err != nil {
					t.Fatal(err)
				}
				var sh int
				if err := conn.QueryRow(ctx, "/* tenant: t10 */ SELECT shard FROM items WHERE id = 1099").Scan(&sh); err != nil || sh != 2 {
					t.Fatalf("committed row's shard = %d, %v; want 2", sh, err)
				}
				if _, err := conn.Exec(ctx, "/* tenant: t10 */ DELETE FROM items WHERE id = 1099"); err != nil {
					t.Fatal(err)
				}
			})

			run("prepared", func(t *testing.T, ctx context.Context) {
				conn := connectPgx(t, ctx, c, "t1", mode)
				if _, err := conn.Prepare(ctx, "by_id", "SELECT name, shard FROM items WHERE id = $1"); err != nil {
					t.Fatal(err)
				}
				// The statement is used in several transactions, which may
				// land on different backends, and for two tenants on two nodes.
				for i, tc := range []struct {
					tenant string
					id     int
					shard  int
				}{{"t1", 101, 1}, {"t1", 102, 1}, {"t4", 401, 4}, {"t9", 903, 1}, {"t4", 405, 4}} {
					tx, err := conn.Begin(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := tx.Exec(ctx, "SET LOCAL pgtenant.tenant = '"+tc.tenant+"'"); err != nil {
						t.Fatal(err)
					}
					var name string
					var shard int
					if err := tx.QueryRow(ctx, "by_id", tc.id).Scan(&name, &shard); err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					if name != fmt.Sprintf("item-%d", tc.id) || shard != tc.shard {
						t.Fatalf("step %d: got %s in shard %d, want item-%d in shard %d", i, name, shard, tc.id, tc.shard)
					}
					if err := tx.Commit(ctx); err != nil {
						t.Fatal(err)
					}
				}
				if err := conn.Deallocate(ctx, "by_id"); err != nil {
					t.Fatal(err)
				}
			})

			run("pipelined batch", func(t *testing.T, ctx context.Context) {
				conn := connectPgx(t, ctx, c, "t14", mode)
				b := &pgx.Batch{}
				for k := 1; k <= itemsPerTenant; k++ {
					b.Queue("SELECT name, shard FROM items WHERE id = $1", 1400+k)
				}
				b.Queue("SELECT count(*) FROM orders")
				br := conn.SendBatch(ctx, b)
				for k := 1; k <= itemsPerTenant; k++ {
					var name string
					var shard int
					if err := br.QueryRow().Scan(&name, &shard); err != nil {
						t.Fatalf("batch item %d: %v", k, err)
					}
					if name != fmt.Sprintf("item-%d", 1400+k) || shard != 6 {
						t.Fatalf("batch item %d: %s in shard %d", k, name, shard)
					}
				}
				var n int
				if err := br.QueryRow().Scan(&n); err != nil || n != 2*itemsPerTenant*2 {
					t.Fatalf("orders in shard 6 = %d, %v; want %d", n, err, 2*itemsPerTenant*2)
				}
				if err := br.Close(); err != nil {
					t.Fatal(err)
				}
			})

			run("copy", func(t *testing.T, ctx context.Context) {
				conn := connectPgx(t, ctx, c, "t5", mode)
				rows := [][]any{}
				for k := 0; k < 50; k++ {
					rows = append(rows, []any{int32(5000 + k), "t5", fmt.Sprintf("copied-%d", k), int32(k)})
				}
				n, err := conn.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"id", "tenant", "name", "qty"}, pgx.CopyFromRows(rows))
				if err != nil {
					t.Fatalf("copy from: %v", err)
				}
				if n != 50 {
					t.Fatalf("copied %d rows, want 50", n)
				}
				var buf bytes.Buffer
				tag, err := conn.PgConn().CopyTo(ctx, &buf, "COPY (SELECT id, shard, name FROM items WHERE id >= 5000 ORDER BY id) TO STDOUT")
				if err != nil {
					t.Fatalf("copy to: %v", err)
				}
				lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
				if tag.RowsAffected() != 50 || len(lines) != 50 || lines[0] != "5000\t5\tcopied-0" {
					t.Fatalf("copy to: %d rows, first %q", tag.RowsAffected(), lines[0])
				}
				// The rows went to t5's shard on node b, nowhere else.
				direct, err := pgx.Connect(ctx, c.nodeDSN["b"])
				if err != nil {
					t.Fatal(err)
				}
				defer direct.Close(ctx)
				var cnt int
				if err := direct.QueryRow(ctx, "SELECT count(*) FROM shard_0005.items WHERE id >= 5000").Scan(&cnt); err != nil || cnt != 50 {
					t.Fatalf("rows on node b shard 5 = %d, %v", cnt, err)
				}
				if _, err := conn.Exec(ctx, "DELETE FROM items WHERE id >= 5000"); err != nil {
					t.Fatal(err)
				}
				// COPY with a bad row fails with the server's SQLSTATE and
				// the connection stays usable.
				_, err = conn.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"id", "tenant", "name", "qty"}, pgx.CopyFromRows([][]any{{int32(501), "t5", "dup", int32(1)}}))
				if got := pgCode(err); got != "23505" {
					t.Fatalf("duplicate copy: code %q (%v), want 23505", got, err)
				}
				if _, _, _, err := where(ctx, conn); err != nil {
					t.Fatalf("after failed copy: %v", err)
				}
			})

			run("cancel", func(t *testing.T, ctx context.Context) {
				conn := connectPgx(t, ctx, c, "t7", mode)
				qctx, qcancel := context.WithTimeout(ctx, 300*time.Millisecond)
				start := time.Now()
				_, err := conn.Exec(qctx, "SELECT pg_sleep(10)")
				qcancel()
				if err == nil {
					t.Fatal("pg_sleep(10) returned no error under a 300ms timeout")
				}
				if el := time.Since(start); el > 5*time.Second {
					t.Fatalf("cancelled query returned after %s", el)
				}
				// Either the connection is closed cleanly or it still works.
				if !conn.IsClosed() {
					if _, _, _, err := where(ctx, conn); err != nil {
						t.Fatalf("connection after cancel: %v", err)
					}
				} else {
					t.Logf("connection closed after cancel: %v", err)
				}
				// The backend query was really cancelled.
				assertNoSleeper(t, ctx, c.nodeDSN["b"])
			})

			run("errors", func(t *testing.T, ctx context.Context) {
				conn := connectPgx(t, ctx, c, "t0", mode)
				_, err := conn.Exec(ctx, "INSERT INTO items (id, tenant, name, qty) VALUES (1, 't0', 'dup', 1)")
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "23505" || pe.ConstraintName != "items_pkey" || pe.SchemaName != "shard_0000" {
					t.Fatalf("duplicate insert: %#v", err)
				}
				_, err = conn.Exec(ctx, "SELECT * FROM no_such_table")
				if got := pgCode(err); got != "42P01" {
					t.Fatalf("missing table: code %q (%v), want 42P01", got, err)
				}
				// An error inside a transaction aborts it (25P02) until rollback.
				tx, err := conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				_, err = tx.Exec(ctx, "SELECT 1/0")
				if got := pgCode(err); got != "22012" {
					t.Fatalf("division by zero: code %q (%v)", got, err)
				}
				_, err = tx.Exec(ctx, "SELECT count(*) FROM items")
				if got := pgCode(err); got != "25P02" {
					t.Fatalf("in aborted txn: code %q (%v), want 25P02", got, err)
				}
				if err := tx.Rollback(ctx); err != nil {
					t.Fatal(err)
				}
				if _, _, _, err := where(ctx, conn); err != nil {
					t.Fatalf("after rollback: %v", err)
				}
			})

			run("switch tenants", func(t *testing.T, ctx context.Context) {
				conn := connectPgx(t, ctx, c, "", mode)
				for _, i := range []int{0, 1, 2, 3, 8, 9, 15, 0} {
					tn := tenantName(i)
					if _, err := conn.Exec(ctx, "SET pgtenant.tenant = '"+tn+"'"); err != nil {
						t.Fatal(err)
					}
					var shown string
					if err := conn.QueryRow(ctx, "SHOW pgtenant.tenant").Scan(&shown); err != nil || shown != tn {
						t.Fatalf("SHOW pgtenant.tenant = %q, %v; want %q", shown, err, tn)
					}
					shard, node, tenant, err := where(ctx, conn)
					if err != nil {
						t.Fatal(err)
					}
					if shard != shardOf(i) || node != nodeOf(shardOf(i)) || tenant != tn {
						t.Fatalf("tenant %s: answered by shard %d node %s tenant %s", tn, shard, node, tenant)
					}
				}
			})

			// set_config with a bind parameter, as drivers send it: with no
			// session tenant, and overriding a session tenant (SET LOCAL
			// does; see "transactions").
			for _, session := range []string{"", "t0"} {
				run("set_config bind session="+fmt.Sprintf("%q", session), func(t *testing.T, ctx context.Context) {
					if mode == pgx.QueryExecModeSimpleProtocol {
						t.Skip("the simple protocol has no bind parameters; pgx inlines them (covered by the literal case)")
					}
					conn := connectPgx(t, ctx, c, session, mode)
					tx, err := conn.Begin(ctx)
					if err != nil {
						t.Fatal(err)
					}
					defer tx.Rollback(ctx)
					if _, err := tx.Exec(ctx, "SELECT set_config('pgtenant.tenant', $1, true)", "t13"); err != nil {
						t.Fatal(err)
					}
					shard, _, tenant, err := where(ctx, tx)
					if err != nil || shard != 5 || tenant != "t13" {
						t.Fatalf("set_config: shard %d tenant %s, %v; want 5 t13", shard, tenant, err)
					}
				})
			}

			run("complex sql", func(t *testing.T, ctx context.Context) {
				conn := connectPgx(t, ctx, c, "t11", mode)
				rows, err := conn.Query(ctx, `
					WITH totals AS (
						SELECT i.id, i.name, sum(o.amount) AS total
						FROM items i JOIN orders o ON o.item_id = i.id
						WHERE i.tenant = $1
						GROUP BY i.id, i.name
					)
					SELECT name, total, rank() OVER (ORDER BY total DESC, id) AS r,
					       sum(total) OVER () AS grand
					FROM totals ORDER BY r`, "t11")
				if err != nil {
					t.Fatal(err)
				}
				type row struct {
					name         string
					total, grand int64
					r            int64
				}
				got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
					var x row
					err := r.Scan(&x.name, &x.total, &x.r, &x.grand)
					return x, err
				})
				if err != nil {
					t.Fatal(err)
				}
				// Each item k has orders k and 2k: total 3k; 5 items: grand 45.
				if len(got) != 5 || got[0].name != "item-1105" || got[0].total != 15 || got[0].grand != 45 || got[4].r != 5 {
					t.Fatalf("cte/window/join = %+v", got)
				}
				rows, err = conn.Query(ctx, "EXPLAIN ANALYZE SELECT * FROM items i JOIN orders o ON o.item_id = i.id WHERE i.tenant = 't11'")
				if err != nil {
					t.Fatal(err)
				}
				plan, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Fatal(err)
				}
				text := strings.Join(plan, "\n")
				if !strings.Contains(text, "actual time") || !strings.Contains(text, "Execution Time") {
					t.Fatalf("EXPLAIN ANALYZE output:\n%s", text)
				}
			})

			run("cross shard refused", func(t *testing.T, ctx context.Context) {
				conn := connectPgx(t, ctx, c, "t1", mode)
				tx, err := conn.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, _, _, err := where(ctx, tx); err != nil {
					t.Fatal(err)
				}
				_, err = tx.Exec(ctx, "/* tenant: t2 */ SELECT count(*) FROM items")
				if got := pgCode(err); got != "25001" {
					t.Fatalf("second shard in a transaction: code %q (%v), want 25001", got, err)
				}
				tx.Rollback(ctx)
				if shard, _, _, err := where(ctx, conn); err != nil || shard != 1 {
					t.Fatalf("after refused cross-shard txn: shard %d, %v", shard, err)
				}
			})

			run("unknown tenant", func(t *testing.T, ctx context.Context) {
				conn := connectPgx(t, ctx, c, "nobody", mode)
				_, _, _, err := where(ctx, conn)
				if got := pgCode(err); got != "42704" {
					t.Fatalf("unknown tenant: code %q (%v), want 42704", got, err)
				}
				// No tenant at all.
				conn2 := connectPgx(t, ctx, c, "", mode)
				_, _, _, err = where(ctx, conn2)
				if got := pgCode(err); got != "3D000" {
					t.Fatalf("no tenant: code %q (%v), want 3D000", got, err)
				}
				// Both connections remain usable once a tenant is named.
				for _, cn := range []*pgx.Conn{conn, conn2} {
					var sh int
					if err := cn.QueryRow(ctx, "/* tenant: t12 */ SELECT shard FROM shard_info").Scan(&sh); err != nil || sh != 4 {
						t.Fatalf("after tenant error: shard %d, %v", sh, err)
					}
				}
			})
		})
	}
}

// assertNoSleeper fails t if a pg_sleep query is still running on the node a
// few seconds after it was cancelled.
func assertNoSleeper(t *testing.T, ctx context.Context, dsn string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(3 * time.Second)
	for {
		var n int
		err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(10)%' AND pid <> pg_backend_pid()").Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d pg_sleep(10) queries still running on the node after cancel", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
