package router

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// A session-mode backend whose DISCARD ALL fails when its client leaves is
// closed, not handed to the next client with the first one's temporary
// table: here DISCARD TEMP waits for a lock another session holds on the
// table, past the lock_timeout the router's connections start with.
func TestSessionResetFailureClosesBackend(t *testing.T) {
	m := cloneMap(testMap())
	nb := m.Nodes["b"]
	nb.DSN += "&options=-c%20lock_timeout%3D300"
	m.Nodes["b"] = nb
	s := startRouter(t, Config{PoolMode: PoolSession, Pool: PoolConfig{MaxSize: 1, WaitTimeout: 20 * time.Second}}, m)
	ctx := ctx(t)

	a := connect(t, s, "t1", pgx.QueryExecModeSimpleProtocol)
	if _, err := a.Exec(ctx, "CREATE TEMP TABLE fid_reset (x int)"); err != nil {
		t.Fatal(err)
	}
	var pidA int
	var temp string
	if err := a.QueryRow(ctx, "SELECT pg_backend_pid(), pg_my_temp_schema()::regnamespace::text FROM whoami").Scan(&pidA, &temp); err != nil {
		t.Fatal(err)
	}

	d, err := pgx.Connect(ctx, nodeDSN(nodeB))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	tx, err := d.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(ctx, "LOCK TABLE "+pgx.Identifier{temp, "fid_reset"}.Sanitize()+" IN ACCESS SHARE MODE"); err != nil {
		t.Fatal(err)
	}

	// a leaves: the router's DISCARD ALL waits 300 ms for the lock, fails.
	a.Close(ctx)
	b := connect(t, s, "t1", pgx.QueryExecModeSimpleProtocol)
	var pidB int
	var leftover *string
	if err := b.QueryRow(ctx, "SELECT pg_backend_pid(), to_regclass('pg_temp.fid_reset')::text FROM whoami").Scan(&pidB, &leftover); err != nil {
		t.Fatal(err)
	}
	if pidB == pidA || leftover != nil {
		t.Fatalf("the next client got backend %d (the first client's was %d) and sees its temporary table %v; want another backend, no table", pidB, pidA, leftover)
	}
}
