package router

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// TestNodeRefusesConnection: a node that is up but refuses the pool a new
// backend connection (its max_connections, or here its role's connection
// limit, reached). While the pool has another connection to the node, the
// client waits for it instead of failing; before, it got 08006 "node is
// unreachable" (as one of routerbench's clients did once, mid-run, from a
// pool with 15 connections open). With none open, the client gets the
// server's 53300, worth a retry, not the 08006 of a node that cannot be
// reached.
func TestNodeRefusesConnection(t *testing.T) {
	ctx := ctx(t)
	const role = "pgt_connlimit"
	admin, err := pgx.Connect(ctx, nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	stmts := []string{"DROP ROLE IF EXISTS " + role, "CREATE ROLE " + role + " LOGIN CONNECTION LIMIT 1"}
	for sh := 0; sh < testShards; sh += 2 {
		schema := pgx.Identifier{placement.SchemaName(sh)}.Sanitize()
		stmts = append(stmts, fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s", schema, role), fmt.Sprintf("GRANT SELECT ON %s.whoami TO %s", schema, role))
	}
	for _, q := range stmts {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	t.Cleanup(func() {
		for sh := 0; sh < testShards; sh += 2 {
			schema := pgx.Identifier{placement.SchemaName(sh)}.Sanitize()
			admin.Exec(context.Background(), fmt.Sprintf("REVOKE ALL ON SCHEMA %s FROM %s", schema, role))
			admin.Exec(context.Background(), fmt.Sprintf("REVOKE ALL ON %s.whoami FROM %s", schema, role))
		}
	})
	m := cloneMap(testMap())
	na := m.Nodes["a"]
	roleDSN := strings.Replace(na.DSN, "postgres@", role+"@", 1)
	na.DSN = roleDSN
	m.Nodes["a"] = na
	s := startRouter(t, Config{Pool: PoolConfig{MaxSize: 2}}, m)

	t.Run("waits for the connection open", func(t *testing.T) {
		// The first client holds node a's one connection the role may have.
		c1 := connect(t, s, "t0", pgx.QueryExecModeSimpleProtocol)
		tx, err := c1.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var shard int
		if err := tx.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard); err != nil || shard != 0 {
			t.Fatalf("first client: shard %d, %v", shard, err)
		}
		// The second needs another: the server refuses it, and the
		// second waits for the first's.
		c2 := connect(t, s, "t2", pgx.QueryExecModeSimpleProtocol)
		done := make(chan error, 1)
		go func() {
			var shard int
			err := c2.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard)
			if err == nil && shard != 2 {
				err = fmt.Errorf("shard %d, want 2", shard)
			}
			done <- err
		}()
		// Its statement waits in the pool (until the first commits).
		for s.PoolStats()[0].Waiting == 0 {
			select {
			case err := <-done:
				t.Fatalf("second client while the node refuses connections: %v (SQLSTATE %q), want it to wait", err, pgCode(err))
			case <-time.After(10 * time.Millisecond):
			}
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := <-done; err != nil {
			t.Fatalf("second client: %v", err)
		}
		if st := s.PoolStats()[0]; st.ConnectErrs == 0 || st.Total != 1 {
			t.Fatalf("node a's pool: %+v, want a connect error and one connection", st)
		}
	})

	t.Run("none open: the server's code", func(t *testing.T) {
		// Another router, whose pool has no connection: the first
		// router's idle one holds the role's one slot.
		s2 := startRouter(t, Config{Pool: PoolConfig{MaxSize: 2}}, m)
		c := connect(t, s2, "t2", pgx.QueryExecModeSimpleProtocol)
		var shard int
		err := c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard)
		if got, want := pgCode(err), "53300"; got != want {
			t.Fatalf("with no connection open and the node refusing one: %v (SQLSTATE %q), want %s", err, got, want)
		}
		// Once the slot is free, the same client goes on.
		if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			err = c.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard)
			if err == nil || pgCode(err) != "53300" || i == 100 {
				break
			}
			time.Sleep(20 * time.Millisecond) // the terminated backend is still leaving
		}
		if err != nil || shard != 2 {
			t.Fatalf("retried once the node has room: shard %d, %v", shard, err)
		}
	})
}
