package stream

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestGuardedApplierOnce (issue 12): a stream killed while its apply
// transaction waits for a lock leaves a server session that goes on once
// the lock is released and commits the batch. A restarted applier that
// loaded the position before that commit applies the same batch again. A
// Guarded applier advances the position only from the one it loaded: of
// the two transactions, the second to reach the position row rolls back
// with ErrPositionMoved (which one is second is up to the scheduler), and
// the batch's row is on the target once (the target table has no key that
// would refuse a duplicate).
func TestGuardedApplierOnce(t *testing.T) {
	ctx := ctxT(t)
	dst, txn := logTarget(t)
	dsn := dst.Config().ConnString()
	newApplier := func() *TableApplier {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		from, _, err := LoadPosition(ctx, conn, "g")
		if err != nil {
			t.Fatal(err)
		}
		return &TableApplier{Conn: conn, Name: "g", Guarded: true, From: from}
	}
	// The first batch records the position (none recorded before).
	first := newApplier()
	if err := first.Apply(ctx, txn(1, 100)); err != nil {
		t.Fatal(err)
	}
	if _, err := first.ApplyWith(ctx, txn(2, 200), ApplyOptions{Async: true}); err != nil {
		t.Fatal(err)
	}

	// A lock blocks the next batch; the stream is killed meanwhile. Its
	// server session stays, blocked with the whole batch, COMMIT included,
	// read (a client socket closed with a FIN leaves it so; here the
	// client just never comes back: its connection is left open).
	lock, watch := connect(t, dsn), connect(t, dsn)
	exec(t, lock, `BEGIN`, `LOCK TABLE app.log IN SHARE MODE`)
	orphan := make(chan error, 1)
	go func() { orphan <- first.Apply(ctx, txn(3, 300)) }()
	waitLockWaiters(t, watch, 1)

	// The restarted applier loads the position (200) and applies the same batch.
	again := newApplier()
	if again.From != 200 {
		t.Fatalf("restarted at %s, want 0/C8", again.From)
	}
	restarted := make(chan error, 1)
	go func() { restarted <- again.Apply(ctx, txn(3, 300)) }()
	waitLockWaiters(t, watch, 2)
	exec(t, lock, `ROLLBACK`)
	// Both get the table lock at once; whichever reaches the position row
	// first commits, the other rolls back with ErrPositionMoved.
	errRestarted, errOrphan := <-restarted, <-orphan
	var n int
	if err := lock.QueryRow(ctx, `SELECT count(*) FROM app.log WHERE at = 3`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("the batch's row is on the target %d times, want once (restarted applier: %v; killed stream's session: %v)", n, errRestarted, errOrphan)
	}
	switch {
	case errOrphan == nil && errors.Is(errRestarted, ErrPositionMoved):
	case errRestarted == nil && errors.Is(errOrphan, ErrPositionMoved):
	default:
		t.Fatalf("restarted applier: %v; killed stream's session: %v; want one nil and one ErrPositionMoved", errRestarted, errOrphan)
	}
	// Loaded again, it goes on from the position the other one recorded.
	again = newApplier()
	if again.From != 300 {
		t.Fatalf("position %s, want 0/12C", again.From)
	}
	if err := again.Apply(ctx, txn(4, 400)); err != nil {
		t.Fatal(err)
	}
	var rows []int
	r, err := lock.Query(ctx, `SELECT at FROM app.log ORDER BY at`)
	if err != nil {
		t.Fatal(err)
	}
	if rows, err = pgx.CollectRows(r, pgx.RowTo[int]); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(rows) != "[1 2 3 4]" {
		t.Fatalf("rows %v, want [1 2 3 4]", rows)
	}
}

// waitLockWaiters waits until n sessions of conn's database wait for a lock.
func waitLockWaiters(t *testing.T, conn *pgx.Conn, n int) {
	t.Helper()
	for i := 0; ; i++ {
		var got int
		if err := conn.QueryRow(ctxT(t), `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got >= n {
			return
		}
		if i > 100 {
			r, _ := conn.Query(ctxT(t), `SELECT pid, state, coalesce(wait_event_type,''), coalesce(wait_event,''), left(query, 60) FROM pg_stat_activity WHERE datname = current_database()`)
			all, _ := pgx.CollectRows(r, pgx.RowToStructByPos[struct {
				P          int32
				S, W, E, Q string
			}])
			t.Logf("%+v", all)

			t.Fatalf("%d sessions wait for the lock, want %d", got, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
