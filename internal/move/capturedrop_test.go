package move

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestStopCaptureNeverQueuesAheadOfWriters: after a verified move, the
// capture triggers come off the target's tables while the shard's clients
// already write there. A writer must never wait behind the trigger drop's
// lock request. Here a client holds a transaction open on the table (so the
// drop cannot get its lock), and other writers with a 1 ms lock_timeout keep
// writing: with a lock request queued ahead of them they fail with 55P03.
// Once the open transaction ends, the triggers are gone.
func TestStopCaptureNeverQueuesAheadOfWriters(t *testing.T) {
	ctx := context.Background()
	dsn := srvB.NewDatabase(t)
	p := pool(t, dsn)
	mustExec(t, p, `CREATE SCHEMA pgtenant_move; CREATE SCHEMA shard_0042;
		CREATE TABLE shard_0042.kv (k int PRIMARY KEY, v int);
		CREATE TABLE shard_0042.other (k int PRIMARY KEY)`)
	mustExec(t, p, undoCaptureDDL)

	m := New(Config{Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	mv := &moveRun{Info: Info{ID: 7, Shard: 42}, Schema: "shard_0042"}
	dst, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close(ctx)
	if err := m.armCapture(ctx, dst, mv, []string{"kv", "other"}); err != nil {
		t.Fatal(err)
	}
	mustExec(t, p, `INSERT INTO pgtenant_move.capture VALUES ('shard_0042', 7)`)

	holder, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)
	if _, err := holder.Exec(ctx, `BEGIN; INSERT INTO shard_0042.kv VALUES (0, 0)`); err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() { done <- m.stopCapture(ctx, dst, mv) }()

	writer, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer writer.Close(ctx)
	if _, err := writer.Exec(ctx, `SET lock_timeout = '1ms'`); err != nil {
		t.Fatal(err)
	}
	// The trigger drop gets to kv after "other" (no holder there), then
	// tries kv for as long as the holder stays; write meanwhile.
	for i := 1; i <= 200; i++ {
		_, err := writer.Exec(ctx, `INSERT INTO shard_0042.kv VALUES ($1, $1)`, i)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55P03" {
			t.Fatalf("write %d waited behind the capture trigger's drop: %v", i, err)
		}
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	select {
	case err := <-done:
		t.Fatalf("stopCapture returned while a transaction held the table: %v", err)
	default:
	}
	if _, err := holder.Exec(ctx, `COMMIT`); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, p, `SELECT count(*) FROM pg_trigger WHERE tgname::text LIKE 'pgtenant_capture%'`); n != 0 {
		t.Fatalf("%d capture triggers left after stopCapture", n)
	}
	if n := queryInt(t, p, `SELECT count(*) FROM pgtenant_move.capture`); n != 0 {
		t.Fatalf("capture still on: %d rows", n)
	}
	if n := queryInt(t, p, `SELECT count(*) FROM shard_0042.kv`); n != 201 {
		t.Fatalf("kv has %d rows, want 201", n)
	}
}

// TestCaptureOnPartitionedTable: the target's capture triggers go on a
// shard with a partitioned table (Postgres clones the parent's row trigger
// to its partitions and refused a second one with 42710, which failed every
// default move of such a shard at its fence), a row written through the
// parent is logged once, a TRUNCATE of a partition is logged, and every
// trigger comes off again.
func TestCaptureOnPartitionedTable(t *testing.T) {
	ctx := context.Background()
	dsn := srvB.NewDatabase(t)
	p := pool(t, dsn)
	mustExec(t, p, `CREATE SCHEMA pgtenant_move; CREATE SCHEMA shard_0043;
		CREATE TABLE shard_0043.events (id int, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
		CREATE TABLE shard_0043.events_2026 PARTITION OF shard_0043.events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
		CREATE TABLE shard_0043.events_2027 PARTITION OF shard_0043.events FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')`)
	mustExec(t, p, undoCaptureDDL)
	m := New(Config{Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	mv := &moveRun{Info: Info{ID: 8, Shard: 43}, Schema: "shard_0043"}
	dst, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close(ctx)
	names, err := tables(ctx, dst, mv.Schema)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.armCapture(ctx, dst, mv, names); err != nil {
		t.Fatal(err)
	}
	mustExec(t, p, `INSERT INTO pgtenant_move.capture VALUES ('shard_0043', 8)`)
	mustExec(t, p, `INSERT INTO shard_0043.events VALUES (1, '2026-05-01'), (2, '2027-05-01')`)
	mustExec(t, p, `TRUNCATE shard_0043.events_2027`)
	rows, err := p.Query(ctx, `SELECT tbl || ':' || op::text FROM pgtenant_move.undo_log WHERE move_id = 8 ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"events_2026:I", "events_2027:I", "events_2027:T"}; !slices.Equal(got, want) {
		t.Fatalf("undo log %v, want %v", got, want)
	}
	if err := m.stopCapture(ctx, dst, mv); err != nil {
		t.Fatal(err)
	}
	if n := queryInt(t, p, `SELECT count(*) FROM pg_trigger WHERE tgname::text LIKE 'pgtenant_capture%'`); n != 0 {
		t.Fatalf("%d capture triggers left after stopCapture", n)
	}
}
