package e2e

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/router"
)

// TestAutocommitCommittedOnAck checks that a statement outside a transaction
// block is committed when the router acknowledges it, in every pgx exec mode
// and with psql, while one backend connection serves two tenants of a node in
// turn (so the router sets the shard's search_path before most statements).
//
// From PostgreSQL 18 on, a simple Query that follows the router's own
// Bind/Execute without a Sync runs in an implicit transaction block that it
// leaves open: the client got "INSERT 0 1" and ReadyForQuery 'T', the row was
// visible to nobody else, and closing the connection rolled it back (seen as
// acknowledged writes lost by TestMoveUnderLoadNodeRole on PostgreSQL 18).
func TestAutocommitCommittedOnAck(t *testing.T) {
	ctx := context.Background()
	c := newCluster(t, router.Config{Pool: router.PoolConfig{MaxSize: 1}})
	node, err := pgx.Connect(ctx, c.nodeDSN["b"])
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close(ctx)
	// committed reports whether item id is committed in the shard's schema on node b.
	committed := func(schema string, id int) bool {
		t.Helper()
		var n int
		if err := node.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %s.items WHERE id = $1`, schema), id).Scan(&n); err != nil {
			t.Fatalf("count item %d in %s: %v", id, schema, err)
		}
		return n == 1
	}
	modes := []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec, pgx.QueryExecModeCacheStatement, pgx.QueryExecModeDescribeExec}
	for mi, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			conns := map[string]*pgx.Conn{}
			for _, tenant := range []string{"t1", "t3"} {
				cfg, err := pgx.ParseConfig(c.dsn(tenant))
				if err != nil {
					t.Fatal(err)
				}
				cfg.DefaultQueryExecMode = mode
				conn, err := pgx.ConnectConfig(ctx, cfg)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close(ctx)
				conns[tenant] = conn
			}
			schema := map[string]string{"t1": "shard_0001", "t3": "shard_0003"}
			id := 50000 + 100*mi
			steps := []struct {
				tenant string
				txn    bool // inside BEGIN … COMMIT
			}{{"t1", false}, {"t3", false}, {"t1", true}, {"t1", false}, {"t3", true}, {"t3", false}, {"t1", false}, {"t3", false}}
			for i, st := range steps {
				id++
				conn := conns[st.tenant]
				sql := `INSERT INTO items (id, tenant, name, qty) VALUES ($1, $2, 'autocommit', 1)`
				if st.txn {
					err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
						_, err := tx.Exec(ctx, sql, id, st.tenant)
						return err
					})
				} else {
					_, err = conn.Exec(ctx, sql, id, st.tenant)
				}
				if err != nil {
					t.Fatalf("step %d (%s, txn %v): insert %d: %v", i, st.tenant, st.txn, id, err)
				}
				if got := conn.PgConn().TxStatus(); got != 'I' {
					t.Errorf("step %d (%s, txn %v): transaction status %c after the insert was acknowledged, want I", i, st.tenant, st.txn, got)
				}
				if !committed(schema[st.tenant], id) {
					t.Errorf("step %d (%s, txn %v): item %d acknowledged but not committed in %s", i, st.tenant, st.txn, id, schema[st.tenant])
				}
			}
			if mode == pgx.QueryExecModeSimpleProtocol {
				// Two statements in one Query: an implicit block of their own.
				if _, err := conns["t3"].Exec(ctx, fmt.Sprintf(`INSERT INTO items (id, tenant, name, qty) VALUES (%d, 't3', 'multi', 1); INSERT INTO items (id, tenant, name, qty) VALUES (%d, 't3', 'multi', 1)`, id+1, id+2)); err != nil {
					t.Fatalf("multi-statement insert: %v", err)
				}
				for _, x := range []int{id + 1, id + 2} {
					if !committed("shard_0003", x) {
						t.Errorf("multi-statement query: item %d acknowledged but not committed", x)
					}
				}
			}
		})
	}
	t.Run("session mode", func(t *testing.T) {
		// A session that switches tenants gets the new shard's settings
		// before its next statement, on the backend it keeps.
		cs := newCluster(t, router.Config{PoolMode: router.PoolSession})
		nodeS, err := pgx.Connect(ctx, cs.nodeDSN["b"])
		if err != nil {
			t.Fatal(err)
		}
		defer nodeS.Close(ctx)
		cfg, err := pgx.ParseConfig(cs.dsn("t1"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		for i, tenant := range []string{"t1", "t3", "t1", "t3"} {
			id := 58000 + i
			schema := map[string]string{"t1": "shard_0001", "t3": "shard_0003"}[tenant]
			if _, err := conn.Exec(ctx, "SET pgtenant.tenant = '"+tenant+"'"); err != nil {
				t.Fatalf("set tenant %s: %v", tenant, err)
			}
			if _, err := conn.Exec(ctx, `INSERT INTO items (id, tenant, name, qty) VALUES ($1, $2, 'session', 1)`, id, tenant); err != nil {
				t.Fatalf("insert %d for %s: %v", id, tenant, err)
			}
			if got := conn.PgConn().TxStatus(); got != 'I' {
				t.Errorf("%s: transaction status %c after the insert was acknowledged, want I", tenant, got)
			}
			var n int
			if err := nodeS.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %s.items WHERE id = $1`, schema), id).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 1 {
				t.Errorf("%s: item %d acknowledged but not committed in %s", tenant, id, schema)
			}
		}
	})
	t.Run("psql", func(t *testing.T) {
		for i, tenant := range []string{"t1", "t3", "t1"} {
			id := 59000 + i
			schema := map[string]string{"t1": "shard_0001", "t3": "shard_0003"}[tenant]
			if out, errOut, err := psql(t, c, tenant, fmt.Sprintf("INSERT INTO items (id, tenant, name, qty) VALUES (%d, '%s', 'psql', 1);\n", id, tenant)); err != nil {
				t.Fatalf("psql insert %d: %v\n%s%s", id, err, out, errOut)
			}
			if !committed(schema, id) {
				t.Errorf("psql (%s): item %d acknowledged but not committed", tenant, id)
			}
		}
	})
}
