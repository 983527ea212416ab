package stream

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const sourceDDL = `
CREATE SCHEMA app;
CREATE TABLE app.items (id int PRIMARY KEY, name text, qty int, body text);
ALTER TABLE app.items ALTER body SET STORAGE EXTERNAL;
CREATE TABLE app.log (at int, msg text);
ALTER TABLE app.log REPLICA IDENTITY FULL;
CREATE TABLE app."Odd Name" ("Key" text PRIMARY KEY, v jsonb, b bytea, ts timestamptz);
CREATE TABLE app.ev (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, kind text);
CREATE PUBLICATION pub FOR TABLE app.items, app.log, app."Odd Name", app.ev;`

// dump returns every row of the four tables in schema as text, sorted.
func dump(t *testing.T, conn *pgx.Conn, schema string) []string {
	t.Helper()
	var out []string
	for _, tbl := range []string{"items", "log", "Odd Name", "ev"} {
		q := fmt.Sprintf(`SELECT t::text FROM %s t ORDER BY 1`, pgx.Identifier{schema, tbl}.Sanitize())
		rows, err := conn.Query(ctxT(t), q)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tbl+":")
		out = append(out, got...)
	}
	return out
}

// waitApplied runs the stream until it has applied everything the source committed so far.
func waitApplied(t *testing.T, s *Stream, src *pgx.Conn) {
	t.Helper()
	var lsnText string
	if err := src.QueryRow(ctxT(t), `SELECT pg_current_wal_insert_lsn()::text`).Scan(&lsnText); err != nil {
		t.Fatal(err)
	}
	want, _ := ParseLSN(lsnText)
	for i := 0; s.Applied() < want; i++ {
		// A commit after the mark gives the stream a transaction ending past it.
		exec(t, src, `INSERT INTO app.log VALUES (-1, 'tick')`, `DELETE FROM app.log WHERE at = -1`)
		if i > 600 {
			t.Fatalf("applied %s, want %s", s.Applied(), want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestStreamCopyApplyResume copies a source at the slot's exported snapshot
// while writers run, streams the rest with a non-superuser REPLICATION role,
// kills the stream before it confirmed anything to the source, and resumes:
// the target ends equal to the source, nothing applied twice (the primary
// key and the keyless log table would show it) and nothing lost.
func TestStreamCopyApplyResume(t *testing.T) {
	ctx := ctxT(t)
	srcDSN, dstDSN := ownedDatabase(t, nodeRole), ownedDatabase(t, nodeRole)
	src, dst := connect(t, srcDSN), connect(t, dstDSN)
	exec(t, src, sourceDDL)
	exec(t, src, `INSERT INTO app.items SELECT g, 'n' || g, g, repeat('x', 3000) FROM generate_series(1, 500) g`)
	exec(t, dst, strings.ReplaceAll(strings.Split(sourceDDL, "CREATE PUBLICATION")[0], "app", "copy"))

	slot, err := CreateSlot(ctx, srcDSN, "t_copy_apply")
	if err != nil {
		t.Fatal(err)
	}
	// Written after the slot: must come through the stream, not the copy.
	exec(t, src, `INSERT INTO app.items VALUES (1001, 'after slot', 1, 'b')`, `INSERT INTO app.log VALUES (1, 'after slot')`)
	ctab := map[string]string{"items": "items", "log": "log", "Odd Name": "Odd Name", "ev": "ev"}
	func() {
		tx, err := src.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback(ctx)
		if _, err := tx.Exec(ctx, `SET TRANSACTION SNAPSHOT '`+slot.Snapshot+`'`); err != nil {
			t.Fatal(err)
		}
		for _, tbl := range ctab {
			var buf strings.Builder
			if _, err := tx.Conn().PgConn().CopyTo(ctx, &buf, `COPY `+pgx.Identifier{"app", tbl}.Sanitize()+` TO STDOUT`); err != nil {
				t.Fatal(err)
			}
			if _, err := dst.PgConn().CopyFrom(ctx, strings.NewReader(buf.String()), `COPY `+pgx.Identifier{"copy", tbl}.Sanitize()+` FROM STDIN`); err != nil {
				t.Fatal(err)
			}
		}
	}()
	if err := slot.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := EnsurePositionTable(ctx, dst); err != nil {
		t.Fatal(err)
	}
	if err := SavePosition(ctx, dst, "t", slot.ConsistentLSN); err != nil {
		t.Fatal(err)
	}

	changes := []string{
		`UPDATE app.items SET qty = qty + 1 WHERE id <= 10`,
		`UPDATE app.items SET name = 'renamed' WHERE id = 11`, // body stays TOASTed: sent as unchanged
		`UPDATE app.items SET id = 2000 WHERE id = 12`,        // key change: old key sent
		`DELETE FROM app.items WHERE id BETWEEN 20 AND 29`,
		`INSERT INTO app.log VALUES (2, 'dup'), (2, 'dup'), (3, NULL)`,
		`DELETE FROM app.log WHERE at = 2 AND msg = 'dup' AND ctid = (SELECT min(ctid) FROM app.log WHERE at = 2)`,
		`UPDATE app.log SET msg = 'was null' WHERE at = 3`,
		`INSERT INTO app."Odd Name" VALUES ('k''1', '{"a": [1, "x"]}', '\x00ff', '2026-01-02 03:04:05+00'), ('k2', NULL, NULL, NULL)`,
		`UPDATE app."Odd Name" SET v = '{"b": 2}' WHERE "Key" = 'k2'`,
		`INSERT INTO app.ev (kind) VALUES ('a'), ('b')`,  // GENERATED ALWAYS: applied with the source's ids
		`UPDATE app.ev SET kind = 'bb' WHERE kind = 'b'`, // the identity key is not SET
	}
	run := func(start LSN, status time.Duration) (*Stream, func()) {
		applier := &TableApplier{Conn: connect(t, dstDSN), Name: "t", Target: func(rel *Relation) (string, string, bool) {
			return "copy", rel.Table, rel.Schema == "app"
		}}
		s := New(Config{DSN: srcDSN, Slot: "t_copy_apply", Publications: []string{"pub"}, Start: start, Applier: applier, StatusInterval: status})
		rctx, cancel := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() { errc <- s.Run(rctx) }()
		return s, func() {
			cancel()
			if err := <-errc; !errors.Is(err, context.Canceled) {
				t.Fatalf("stream: %v", err)
			}
		}
	}
	// First run: never confirms to the source (status every hour), killed after applying.
	s, stop := run(slot.ConsistentLSN, time.Hour)
	exec(t, src, changes...)
	waitApplied(t, s, src)
	stop()
	if got, want := dump(t, dst, "copy"), dump(t, src, "app"); !reflect.DeepEqual(got, want) {
		t.Fatalf("after first run:\n got %q\nwant %q", got, want)
	}
	// The slot still holds everything: a restart from the slot's position would apply twice.
	var confirmed string
	if err := src.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 't_copy_apply'`).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}
	if c, _ := ParseLSN(confirmed); c > slot.ConsistentLSN {
		t.Fatalf("slot confirmed %s, want at most %s (no status sent)", c, slot.ConsistentLSN)
	}
	// More changes while stopped, including a truncate; resume from the target's recorded position.
	exec(t, src, `INSERT INTO app.log VALUES (4, 'while stopped')`, `TRUNCATE app."Odd Name"`,
		`INSERT INTO app."Odd Name" VALUES ('k3', '[]', '\x', now())`)
	start, ok, err := LoadPosition(ctx, dst, "t")
	if err != nil || !ok {
		t.Fatalf("load position: %v %v", ok, err)
	}
	s, stop = run(start, 20*time.Millisecond)
	waitApplied(t, s, src)
	time.Sleep(100 * time.Millisecond) // at least one status update
	stop()
	if got, want := dump(t, dst, "copy"), dump(t, src, "app"); !reflect.DeepEqual(got, want) {
		t.Fatalf("after resume:\n got %q\nwant %q", got, want)
	}
	if err := src.QueryRow(ctx, `SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 't_copy_apply'`).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}
	if c, _ := ParseLSN(confirmed); c <= start {
		t.Fatalf("slot confirmed %s after resume, want past %s (WAL recycled)", c, start)
	}
	if err := DropSlot(ctx, src, "t_copy_apply"); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := src.QueryRow(ctx, `SELECT count(*) FROM pg_replication_slots WHERE slot_name = 't_copy_apply'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("slot left: %d %v", n, err)
	}
}

// TestCreateSlotNeedsReplication: a role without REPLICATION gets 42501 from CREATE_REPLICATION_SLOT.
func TestCreateSlotNeedsReplication(t *testing.T) {
	dsn := ownedDatabase(t, plainRole)
	_, err := CreateSlot(ctxT(t), dsn, "t_no_repl")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Fatalf("err = %v, want SQLSTATE 42501", err)
	}
	if _, err := CreateSlot(ctxT(t), dsn, "Bad-Name"); err == nil || !strings.Contains(err.Error(), "invalid name") {
		t.Fatalf("err = %v, want invalid name", err)
	}
}

// TestApplyErrorStopsStream: an apply that fails (here a missing target table) ends Run with the error, not a hang.
func TestApplyErrorStopsStream(t *testing.T) {
	ctx := ctxT(t)
	srcDSN, dstDSN := ownedDatabase(t, nodeRole), ownedDatabase(t, nodeRole)
	src, dst := connect(t, srcDSN), connect(t, dstDSN)
	exec(t, src, sourceDDL)
	if err := EnsurePositionTable(ctx, dst); err != nil {
		t.Fatal(err)
	}
	slot, err := CreateSlot(ctx, srcDSN, "t_apply_err")
	if err != nil {
		t.Fatal(err)
	}
	slot.Close(ctx)
	t.Cleanup(func() { DropSlot(context.Background(), src, "t_apply_err") })
	exec(t, src, `INSERT INTO app.items VALUES (1, 'a', 1, 'b')`)
	s := New(Config{DSN: srcDSN, Slot: "t_apply_err", Publications: []string{"pub"}, Start: slot.ConsistentLSN,
		Applier: &TableApplier{Conn: dst, Name: "t"}})
	err = s.Run(ctx)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
		t.Fatalf("err = %v, want SQLSTATE 42P01 (the target has no schema app)", err)
	}
	if _, ok, _ := LoadPosition(ctx, dst, "t"); ok {
		t.Fatal("a position was recorded for a failed apply")
	}
}
