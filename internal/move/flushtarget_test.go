package move

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestFlushTargetFlushes: after flushTarget, the target's WAL is flushed past
// a commit made before it without waiting for the flush (as an asynchronous
// apply commits). A transaction with only an id would not wait.
func TestFlushTargetFlushes(t *testing.T) {
	ctx := context.Background()
	dst, err := pgx.Connect(ctx, srvB.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close(ctx)
	if _, err := dst.Exec(ctx, `CREATE TABLE t (v int)`); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		var before, flushed string
		var ok bool
		if err := pgx.BeginFunc(ctx, dst, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = off; INSERT INTO t SELECT generate_series(1, 1000)`)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if err := dst.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&before); err != nil {
			t.Fatal(err)
		}
		if err := flushTarget(ctx, dst); err != nil {
			t.Fatal(err)
		}
		if err := dst.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn()::text, pg_current_wal_flush_lsn() >= $1::pg_lsn`, before).Scan(&flushed, &ok); err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Fatalf("round %d: WAL flushed to %s after flushTarget, want at least %s (the asynchronous commit before it)", i, flushed, before)
		}
	}
}
