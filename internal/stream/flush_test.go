package stream

import (
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
