package importer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
)

// streamingImport makes an import of n tenants on shards shards (one
// node) that streams: import start done, Follow running until the test
// ends. It returns the importer, the legacy database and its tenants.
func streamingImport(ctx context.Context, t *testing.T, shards, n int) (*Importer, *catalog.Catalog, string, []string) {
	t.Helper()
	c := newCatalog(t, shards, 1)
	legacy, ids := newLegacy(t, srvA, c, n, 1)
	im := New(c, nil)
	initImport(ctx, t, c, im, legacy)
	if _, err := im.Start(ctx, StartOptions{Parallel: 2}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(follow(ctx, t, im))
	for {
		st, err := im.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == StateStreaming && st.SlotActive {
			return im, c, legacy, ids
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// openXact opens, on dsn, a transaction that holds a transaction id (a
// logical slot's creation on the server waits for it to end) and returns
// its session's pid and its commit.
func openXact(ctx context.Context, t *testing.T, dsn string) (int, func()) {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := conn.Exec(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	var hasXid bool
	if err := conn.QueryRow(ctx, `SELECT pid, backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid = pg_backend_pid()`).Scan(&pid, &hasXid); err != nil || !hasXid {
		t.Fatalf("a transaction with an xid: %v, %v", hasXid, err)
	}
	done := false
	end := func() {
		if done {
			return
		}
		done = true
		if _, err := conn.Exec(ctx, `COMMIT`); err != nil {
			t.Error(err)
		}
		conn.Close(context.Background())
	}
	t.Cleanup(end)
	return pid, end
}

// TestVerifyAsksAgainWhenTheStreamGaveUp (issue 12, a verify that waited
// forever): a verify's temporary slot waits for every transaction with an
// xid on the legacy database's server; when that took longer than the
// change stream waits for the verify's point (30 s then, on a loaded box),
// the stream went on without it, and the verify, recording its point after
// that, waited for a hold that never came until its 2 minutes ran out (the
// second import verify of TestImportRejectsWhileStreaming and
// TestImportSchemaPerTenantLateTable). Now the stream marks the request
// given up, the verify learns it when it records its point, asks again,
// and reports a consistent comparison.
func TestVerifyAsksAgainWhenTheStreamGaveUp(t *testing.T) {
	ctx := ctxT(t)
	saved := holdPointWait
	holdPointWait = time.Second
	t.Cleanup(func() { holdPointWait = saved }) // after the follow ends (cleanups run last first)
	im, _, legacy, ids := streamingImport(ctx, t, 4, 8)
	_, commit := openXact(ctx, t, legacy)

	type result struct {
		rep *VerifyReport
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := im.Verify(ctx, nil)
		done <- result{rep, err}
	}()
	// The stream gives the request up while the slot waits.
	watch := mustConnect(ctx, t, legacy)
	for {
		var n int
		err := watch.QueryRow(ctx, `SELECT count(*) FROM `+verifyTable+` WHERE lsn IS NULL AND released_at IS NOT NULL`).Scan(&n)
		if err == nil && n == 1 {
			break
		}
		select {
		case r := <-done:
			t.Fatalf("verify ended before the stream gave its point up: %v, %v", r.rep, r.err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	commit()
	r := <-done
	if r.err != nil {
		t.Fatalf("verify after the stream gave its first point up: %v", r.err)
	}
	if !r.rep.Consistent || r.rep.LSN == "" || r.rep.Tenants != len(ids) || r.rep.Rows == 0 || !r.rep.OK() {
		t.Fatalf("verify: consistent %v at %s, %d tenants, %d rows, mismatches %v", r.rep.Consistent, r.rep.LSN, r.rep.Tenants, r.rep.Rows, r.rep.Mismatches)
	}
}

// TestVerifySlotWaitIsBounded (issue 12): a verify whose temporary slot
// waits for a transaction that does not end used to wait as long as that
// transaction (the CLI has no deadline). Now it stops at its timeout with
// 55P03 naming the session it waited for, and the stream, which waited for
// the verify's point meanwhile, goes on: once that transaction ended, a
// verify compares at one point again.
func TestVerifySlotWaitIsBounded(t *testing.T) {
	ctx := ctxT(t)
	im, _, legacy, ids := streamingImport(ctx, t, 4, 8)
	pid, commit := openXact(ctx, t, legacy)

	_, err := im.VerifyWith(ctx, VerifyOptions{Timeout: 3 * time.Second})
	var coded interface{ SQLState() string }
	if !errors.Is(err, ErrVerifySlotWait) || !errors.As(err, &coded) || coded.SQLState() != "55P03" || !strings.Contains(err.Error(), fmt.Sprintf("pid %d ", pid)) {
		t.Fatalf("verify while a transaction holds its slot: %v; want 55P03 naming pid %d", err, pid)
	}
	commit()
	rep, err := im.Verify(ctx, nil)
	if err != nil {
		t.Fatalf("verify once the transaction ended: %v", err)
	}
	if !rep.Consistent || rep.Tenants != len(ids) || !rep.OK() {
		t.Fatalf("verify once the transaction ended: consistent %v, %d tenants, mismatches %v", rep.Consistent, rep.Tenants, rep.Mismatches)
	}
}

func mustConnect(ctx context.Context, t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// TestVerifyRequestBeforeItsRowShows (issue 12, the verify that hung under
// load): the stream may deliver a transaction before the legacy database
// shows it to other sessions (the walsender sends a commit once it is
// flushed; the committing session makes it visible after that, later on a
// loaded box). The applier, finding no row for a verify request, took the
// verify for gone and went on; the verify then waited for a hold that never
// came. Here the request's marker commits first and its row only once the
// applier looked for it: the applier still holds at the point the row
// names, and goes on when released. (It failed before: no hold.)
func TestVerifyRequestBeforeItsRowShows(t *testing.T) {
	ctx := ctxT(t)
	im, _, legacy, _ := streamingImport(ctx, t, 4, 4)
	if _, err := im.Verify(ctx, nil); err != nil { // creates the verify table
		t.Fatal(err)
	}
	conn := mustConnect(ctx, t, legacy)
	const seq = 4242
	if _, err := conn.Exec(ctx, `INSERT INTO `+markerSchema+`.`+markerTable+` (shard, seq) VALUES ($1, $2)`, markerVerifyRequest, seq); err != nil {
		t.Fatal(err)
	}
	for { // the applier looks for the request's row
		var seen bool
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()
			AND query LIKE 'SELECT lsn::text, released_at IS NOT NULL FROM `+verifyTable+`%')`).Scan(&seen); err != nil {
			t.Fatal(err)
		}
		if seen {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	// The row shows, with its point, and a transaction past it commits.
	if _, err := conn.Exec(ctx, `INSERT INTO `+verifyTable+` (seq, lsn) VALUES ($1, pg_current_wal_insert_lsn())`, seq); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO `+markerSchema+`.`+markerTable+` (shard, seq) VALUES ($1, $2)`, markerVerifyEnd, seq); err != nil {
		t.Fatal(err)
	}
	for {
		var held bool
		if err := conn.QueryRow(ctx, `SELECT held_at IS NOT NULL FROM `+verifyTable+` WHERE seq = $1`, seq).Scan(&held); err != nil {
			t.Fatalf("wait for the hold: %v", err)
		}
		if held {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := conn.Exec(ctx, `UPDATE `+verifyTable+` SET released_at = now() WHERE seq = $1`, seq); err != nil {
		t.Fatal(err)
	}
	rep, err := im.Verify(ctx, nil) // the stream went on
	if err != nil || !rep.Consistent || !rep.OK() {
		t.Fatalf("verify after the hold: %v, %+v", err, rep)
	}
}
