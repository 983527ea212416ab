package router

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestUnnamedAfterPrewarm: pre-warming a move's target primes idle backends
// there with a simple-protocol DO block, which drops the server's unnamed
// statement. A client of another shard on that node that sends the same
// unnamed statement again (pgx's QueryExecModeExec: Parse "", Bind,
// Describe, Execute, Sync) and gets such a backend back must have its Parse
// sent again, not a Bind the server answers with 26000 "unnamed prepared
// statement does not exist" (seen in e2e TestMoveUnderLoadNodeRole by a
// client of a shard on the move's target node at the fence).
func TestUnnamedAfterPrewarm(t *testing.T) {
	ctx := ctx(t)
	const app = "pgtenant_unnamed_test"
	m := cloneMap(testMap())
	nb := m.Nodes["b"]
	nb.DSN += "&application_name=" + app
	m.Nodes["b"] = nb
	s := startRouter(t, Config{FenceGrace: 5 * time.Second, HoldTimeout: 20 * time.Second}, m)

	// A client of shard 5 (node b) runs an unnamed statement: its backend
	// goes back to node b's pool with that statement as its unnamed one.
	c := connect(t, s, "t5", pgx.QueryExecModeExec)
	const q = "SELECT shard, pg_backend_pid()::int8 FROM whoami WHERE $1::int = 1"
	var shard int
	var pid int64
	if err := c.QueryRow(ctx, q, 1).Scan(&shard, &pid); err != nil || shard != 5 {
		t.Fatalf("first run: shard %d, %v; want 5", shard, err)
	}

	// A client of shard 4 (node a) is in a transaction when the mover
	// announces shard 4's move to node b: the router warms node b for it.
	c4 := connect(t, s, "t4", pgx.QueryExecModeExec)
	tx, err := c4.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "INSERT INTO sink (body) VALUES ($1)", "before the move"); err != nil {
		t.Fatal(err)
	}
	announced := cloneMap(m)
	announced.Version = 2
	announced.Shards[4].Target = "b"
	if err := s.SetMap(ctx, announced); err != nil {
		t.Fatal(err)
	}
	cb, err := pgx.Connect(ctx, nodeDSN(nodeB))
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close(context.Background())
	// Wait until the shard 5 client's idle backend ran the priming statement.
	for deadline := time.Now().Add(15 * time.Second); ; {
		var n int
		if err := cb.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND application_name = $2 AND query = $3 AND state = 'idle'`,
			pid, app, primeSQL).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend %d on node b was not primed", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	// The same unnamed statement again, on the primed backend.
	var pid2 int64
	if err := c.QueryRow(ctx, q, 1).Scan(&shard, &pid2); err != nil || shard != 5 {
		t.Fatalf("after the pre-warm (backend %d, was %d): shard %d, %v (SQLSTATE %q); want 5", pid2, pid, shard, err, pgCode(err))
	}
	if pid2 != pid {
		t.Fatalf("ran on backend %d, want the primed %d (the only idle one)", pid2, pid)
	}
	// And a different one, then the first again: the tracking holds.
	if err := c.QueryRow(ctx, "SELECT shard FROM whoami WHERE $1::int = 2", 2).Scan(&shard); err != nil || shard != 5 {
		t.Fatalf("another statement: shard %d, %v", shard, err)
	}
	if err := c.QueryRow(ctx, q, 1).Scan(&shard, &pid2); err != nil || shard != 5 {
		t.Fatalf("first statement again: shard %d, %v", shard, err)
	}
}
