package stream

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestFlushAndSyncPositions (issue 12, the cutover's pause): a commit
// without its flush (ApplyOptions.Async) may leave the target's WAL
// unflushed past it; Flush, as a role with no privilege but its own
// database, makes it durable and returns a flushed position past it. An
// apply that waits for its flush returns its positions too (the importer's
// appliers record where a fenced shard is durable): its FlushLSN is past
// its commit, and the target's WAL is flushed that far.
func TestFlushAndSyncPositions(t *testing.T) {
	ctx := ctxT(t)
	dst, txn := logTarget(t)
	a := &TableApplier{Conn: dst, Name: "f"}
	flushedNow := func() LSN {
		t.Helper()
		var s string
		if err := dst.QueryRow(ctx, `SELECT pg_current_wal_flush_lsn()::text`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		l, err := ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}

	async, err := a.ApplyWith(ctx, txn(1, 100), ApplyOptions{Async: true})
	if err != nil {
		t.Fatal(err)
	}
	flushed, err := Flush(ctx, dst)
	if err != nil {
		t.Fatal(err)
	}
	if flushed < async.CommitLSN {
		t.Fatalf("Flush returned %s, before the async commit's position %s", flushed, async.CommitLSN)
	}
	if now := flushedNow(); now < flushed {
		t.Fatalf("Flush returned %s, the WAL is flushed to %s", flushed, now)
	}

	sync, err := a.ApplyWith(ctx, txn(2, 200), ApplyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if sync.CommitLSN <= async.CommitLSN || sync.FlushLSN <= flushed {
		t.Fatalf("a synchronous apply returned commit %s, flushed %s; before it the async commit was at %s, flushed to %s",
			sync.CommitLSN, sync.FlushLSN, async.CommitLSN, flushed)
	}
	if now := flushedNow(); now < sync.FlushLSN {
		t.Fatalf("a synchronous apply returned flushed %s, the WAL is flushed to %s", sync.FlushLSN, now)
	}
}

// logTarget returns a connection to a database of its own owned by the
// node role, with a table app.log (no key) and the position table, and a
// function making a batch of one source transaction ending at end that
// inserts the row (at, 'm').
func logTarget(t *testing.T) (*pgx.Conn, func(at int, end LSN) []*Txn) {
	t.Helper()
	dst := connect(t, ownedDatabase(t, nodeRole))
	exec(t, dst, `CREATE SCHEMA app; CREATE TABLE app.log (at int, msg text)`)
	if err := EnsurePositionTable(ctxT(t), dst); err != nil {
		t.Fatal(err)
	}
	rel := &Relation{ID: 1, Schema: "app", Table: "log", Identity: 'f', Columns: []Column{{Name: "at", Key: true}, {Name: "msg", Key: true}}}
	return dst, func(at int, end LSN) []*Txn {
		return []*Txn{{EndLSN: end, Changes: []Change{{Kind: Insert, Rel: rel, New: Tuple{{Data: []byte(fmt.Sprint(at))}, {Data: []byte("m")}}}}}}
	}
}

// TestNotifyCarriesFlushedPosition (issue 12, the cutover's NOTIFY): an
// apply that waits for its flush notifies with the target's flushed WAL
// position, not the insert one. The import's cutover records the payload
// as the shard's reverse_lsn, where import rollback's reverse stream
// starts; the insert position, read while other sessions write WAL that is
// not flushed yet, could lie past what a crash of the node keeps (WAL
// rewritten below it would be skipped). Another session writes WAL without
// waiting for its flush the whole time; every payload must be at or before
// the flushed position the same round trip reads after it, and past the
// round before. It failed with the insert position (most rounds named a
// position past the flush).
func TestNotifyCarriesFlushedPosition(t *testing.T) {
	ctx := ctxT(t)
	dst, txn := logTarget(t)
	exec(t, dst, `CREATE TABLE app.filler (v text)`)
	dsn := dst.Config().ConnString()
	writer, listener := connect(t, dsn), connect(t, dsn)
	exec(t, listener, `LISTEN pgtenant_test_flushed`)
	wctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		_, err := writer.Exec(wctx, `SET synchronous_commit = off`)
		for err == nil && wctx.Err() == nil {
			_, err = writer.Exec(wctx, `INSERT INTO app.filler SELECT repeat('x', 200) FROM generate_series(1, 200)`)
		}
		if wctx.Err() != nil {
			err = nil
		}
		done <- err
	}()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("writer: %v", err)
		}
	}()

	a := &TableApplier{Conn: dst, Name: "n"}
	var prev LSN
	for i := 1; i <= 40; i++ {
		res, err := a.ApplyWith(ctx, txn(i, LSN(i*100)), ApplyOptions{Notify: [][2]string{{"pgtenant_test_flushed", "%s"}}})
		if err != nil {
			t.Fatal(err)
		}
		n, err := listener.WaitForNotification(ctx)
		if err != nil {
			t.Fatal(err)
		}
		at, err := ParseLSN(n.Payload)
		if err != nil {
			t.Fatalf("round %d: payload %q: %v", i, n.Payload, err)
		}
		if at > res.FlushLSN {
			t.Fatalf("round %d: the notification names %s, past the flushed position %s read after it (insert position %s)", i, at, res.FlushLSN, res.CommitLSN)
		}
		if at <= prev {
			t.Fatalf("round %d: the notification names %s, not past the round before (%s)", i, at, prev)
		}
		prev = res.CommitLSN
	}
}
