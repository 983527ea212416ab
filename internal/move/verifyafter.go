package move

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Verification after the flip (logical method, the default).
//
// Comparing the shard's tables under the fence made the pause as long as a
// scan of the shard. Instead the fence only proves the catch-up (marker),
// and the comparison runs after the flip against two fixed points:
//
//   - the source is frozen from the fence on (its lease is made permanent at
//     the flip, every write fails with 25006), so any snapshot of it shows
//     the shard as of the marker;
//   - on the target a REPEATABLE READ transaction opened after the marker
//     was applied and before the flip (so before any held transaction ran
//     there) exports its snapshot: the target as of the marker. Parallel
//     workers import it (SET TRANSACTION SNAPSHOT) and checksum one table
//     each, on both sides.
//
// Writes on the target between the flip and the verdict are captured: the
// fence step puts an AFTER row (and TRUNCATE) trigger, pgtenant_capture, on
// every table of the target, inert until the move's row in
// pgtenant_move.capture exists; that row is committed right before the
// flip. Each captured change goes to pgtenant_move.undo_log (old and new row
// as jsonb, in the order the changes were made). The subscription's apply
// worker does not fire ordinary triggers, so only writes made through the
// new placement are logged.
//
// Verdict equal: capture stops (row deleted, triggers dropped, log
// emptied) and cleanup goes on. Verdict different: the flip is undone
// (undoFlip): the shard is fenced on the target, the target's tables are
// locked and write-guarded like a source under a fence, the logged changes
// are replayed on the source in log order in one transaction (which also
// lifts the source's guard and records how far it replayed), sequences are
// set past the target's, and the catalog flips the shard back
// (compare-and-swap) and releases it. Nothing acknowledged is lost: every
// write made on the target is in the log, committed with it. The move ends
// aborted with the mismatch; the target schema is dropped.
//
// A mover that stops during verification loses the snapshot: the resumed
// move records that verification was not completed (the source copy is
// kept renamed, 'shard verify' style checks can still be done by hand) and
// finishes. A mover that stops during an undo resumes the undo.

const (
	undoTrigger    = "pgtenant_capture"
	undoCaptureDDL = `
CREATE TABLE IF NOT EXISTS pgtenant_move.capture (schema_name text PRIMARY KEY, move_id bigint NOT NULL);
CREATE TABLE IF NOT EXISTS pgtenant_move.undo_log (move_id bigint NOT NULL, seq bigserial NOT NULL, tbl text NOT NULL,
  op "char" NOT NULL, old jsonb, new jsonb, PRIMARY KEY (move_id, seq));
CREATE TABLE IF NOT EXISTS pgtenant_move.undo_done (move_id bigint PRIMARY KEY, upto bigint NOT NULL);
DO $do$ BEGIN
IF to_regprocedure('pgtenant_move.capture_change()') IS NULL THEN
CREATE FUNCTION pgtenant_move.capture_change() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
  SET search_path = pg_catalog, pg_temp AS $f$
DECLARE mid bigint;
BEGIN
  SELECT move_id INTO mid FROM pgtenant_move.capture WHERE schema_name = TG_TABLE_SCHEMA;
  IF mid IS NOT NULL THEN
    IF TG_OP = 'TRUNCATE' THEN
      INSERT INTO pgtenant_move.undo_log (move_id, tbl, op) VALUES (mid, TG_TABLE_NAME, 'T');
    ELSIF TG_OP = 'INSERT' THEN
      INSERT INTO pgtenant_move.undo_log (move_id, tbl, op, new) VALUES (mid, TG_TABLE_NAME, 'I', to_jsonb(NEW));
    ELSIF TG_OP = 'UPDATE' THEN
      INSERT INTO pgtenant_move.undo_log (move_id, tbl, op, old, new) VALUES (mid, TG_TABLE_NAME, 'U', to_jsonb(OLD), to_jsonb(NEW));
    ELSE
      INSERT INTO pgtenant_move.undo_log (move_id, tbl, op, old) VALUES (mid, TG_TABLE_NAME, 'D', to_jsonb(OLD));
    END IF;
  END IF;
  RETURN NULL;
END $f$;
END IF;
END $do$`
)

// verifyAfter is the open snapshot of the target taken before the flip.
type verifyAfter struct {
	conn     *pgx.Conn // holds the exporting transaction open
	snapshot string
}

func (v *verifyAfter) close(ctx context.Context) {
	if v != nil && v.conn != nil {
		v.conn.Close(ctx)
		v.conn = nil
	}
}

// postFlipVerify reports whether the move verifies after the flip (logical
// method without SkipVerify).
func postFlipVerify(mv *moveRun) bool {
	return mv.Method != MethodCopy && !mv.Progress.Options.SkipVerify
}

// armCapture puts the capture triggers on every table of the shard on the
// target (inert until enableCapture). Runs before the fence.
func (m *Mover) armCapture(ctx context.Context, dst *pgx.Conn, mv *moveRun, names []string) error {
	// A partition gets its row trigger from its partitioned table (Postgres
	// clones row triggers down and refuses a second one of the same name),
	// but a TRUNCATE of the partition itself fires only its own statement
	// trigger.
	rows, err := dst.Query(ctx, `SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relispartition`, mv.Schema)
	if err != nil {
		return fmt.Errorf("list the target's partitions: %w", err)
	}
	parts, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list the target's partitions: %w", err)
	}
	// One table per transaction: a lock on two tables at once could
	// deadlock with the apply worker applying a transaction over both.
	for _, n := range names {
		t := ident(mv.Schema, n)
		q := fmt.Sprintf("CREATE OR REPLACE TRIGGER %s AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION pgtenant_move.capture_change()", ident(undoTrigger+"_truncate"), t)
		if !slices.Contains(parts, n) {
			q = fmt.Sprintf("CREATE OR REPLACE TRIGGER %s AFTER INSERT OR UPDATE OR DELETE ON %s FOR EACH ROW EXECUTE FUNCTION pgtenant_move.capture_change();\n", ident(undoTrigger), t) + q
		}
		if _, err := dst.Exec(ctx, q); err != nil {
			return fmt.Errorf("put the capture trigger on the target's table %s: %w", n, err)
		}
	}
	return nil
}

// exportSnapshot, under the fence once the target has caught up (and
// before the flip), opens the target's snapshot on snapConn and exports it.
func exportSnapshot(ctx context.Context, snapConn *pgx.Conn) (*verifyAfter, error) {
	// One round trip: the transaction stays open after the pipeline.
	var id string
	b := &pgx.Batch{}
	b.Queue(`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`)
	b.Queue(`SELECT pg_export_snapshot()`).QueryRow(func(r pgx.Row) error { return r.Scan(&id) })
	if err := snapConn.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("take the target's snapshot: %w", err)
	}
	return &verifyAfter{conn: snapConn, snapshot: id}, nil
}

// stopCapture turns capture off on the target, drops its triggers (best
// effort: with a busy table the trigger stays, inert) and empties the log.
func (m *Mover) stopCapture(ctx context.Context, dst *pgx.Conn, mv *moveRun) error {
	if _, err := dst.Exec(ctx, `DELETE FROM pgtenant_move.capture WHERE schema_name = $1 AND move_id = $2`, mv.Schema, mv.ID); err != nil && !isUndefined(err) {
		return fmt.Errorf("stop capturing the target's writes: %w", err)
	}
	rows, err := dst.Query(ctx, `SELECT quote_ident(c.relname::text), t.tgname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND t.tgname::text IN ($2::text, $2::text || '_truncate')
		AND t.tgparentid = 0 ORDER BY 1, 2`, mv.Schema, undoTrigger)
	if err != nil {
		return fmt.Errorf("list capture triggers: %w", err)
	}
	type trig struct{ table, name string }
	trigs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (trig, error) {
		var t trig
		err := r.Scan(&t.table, &t.name)
		return t, err
	})
	if err != nil {
		return fmt.Errorf("list capture triggers: %w", err)
	}
	// One table at a time, each in its own transaction: DROP TRIGGER takes an
	// ACCESS EXCLUSIVE lock, and holding two tables' locks at once deadlocks
	// with a writer that holds one and checks a foreign key on the other.
	// The lock is taken with NOWAIT, so that the request never waits in the
	// table's lock queue: a waiting ACCESS EXCLUSIVE request holds up every
	// writer that comes after it, which made the clients of the moved shard
	// wait up to 50 ms per table and attempt once the shard was already
	// serving from the target. A table that stays busy is retried; a trigger
	// that stays (a table never idle) is inert without the capture row.
	for _, t := range trigs {
		if err := dropTriggerNowait(ctx, dst, ident(mv.Schema)+`.`+t.table, t.name); err != nil {
			m.log.Warn("drop capture trigger; it stays, inert", "move", mv.ID, "shard", mv.Shard, "table", t.table, "err", err)
		}
	}
	if _, err := dst.Exec(ctx, `DELETE FROM pgtenant_move.undo_log WHERE move_id = $1`, mv.ID); err != nil && !isUndefined(err) {
		return fmt.Errorf("empty the capture log: %w", err)
	}
	return nil
}

// VerifyAt compares every table of schema between src (any snapshot: the
// source is frozen) and dst as of the exported snapshot, with up to
// parallel tables at once, each on its own pair of connections.
func VerifyAt(ctx context.Context, srcDSN, dstDSN, schema, snapshot string, tableNames []string, parallel int) (VerifyReport, error) {
	pairs, err := openVerifyPairs(ctx, srcDSN, dstDSN, min(max(parallel, 1), max(len(tableNames), 1)), nil)
	if err != nil {
		return VerifyReport{Schema: schema}, err
	}
	defer closeVerifyPairs(pairs)
	return verifyOn(ctx, pairs, schema, snapshot, tableNames, pacing{})
}

// verifyApp is the application_name of the comparison's connections (seen
// in pg_stat_activity).
const verifyApp = "pgtenant move verify"

// verifyPair is one source and one target connection of a comparison.
type verifyPair struct{ src, dst *pgx.Conn }

// openVerifyPairs opens n pairs of connections at once, with the given
// session settings (nil: none; see Mover.bulkSettings).
func openVerifyPairs(ctx context.Context, srcDSN, dstDSN string, n int, settings map[string]string) ([]verifyPair, error) {
	pairs := make([]verifyPair, n)
	errs := make([]error, 2*n)
	var wg sync.WaitGroup
	for i := range pairs {
		wg.Add(2)
		go func() {
			defer wg.Done()
			pairs[i].src, errs[2*i] = connectWith(ctx, srcDSN, "source node", verifyApp, settings)
		}()
		go func() {
			defer wg.Done()
			pairs[i].dst, errs[2*i+1] = connectWith(ctx, dstDSN, "target node", verifyApp, settings)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		closeVerifyPairs(pairs)
		return nil, err
	}
	return pairs, nil
}

func closeVerifyPairs(pairs []verifyPair) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, p := range pairs {
		for _, c := range []*pgx.Conn{p.src, p.dst} {
			if c != nil {
				c.Close(ctx)
			}
		}
	}
}

// verifyOn compares the tables on the pairs given, one table per pair at a
// time; each pair's target connection imports the snapshot first.
func verifyOn(ctx context.Context, pairs []verifyPair, schema, snapshot string, tableNames []string, pace pacing) (VerifyReport, error) {
	rep := VerifyReport{Schema: schema}
	jobs := make(chan int)
	checks := make([]TableCheck, len(tableNames))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
		cancel()
	}
	for _, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				for range jobs { // after a failure: let the feeder finish
				}
			}()
			// No parallel workers: each would be one more process taking a
			// CPU from the clients, beyond what the pacing accounts for.
			if _, err := p.dst.Exec(wctx, `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT `+quoteLiteral(snapshot)+
				`; SET LOCAL max_parallel_workers_per_gather = 0`); err != nil {
				fail(fmt.Errorf("import the target's snapshot: %w", err))
				return
			}
			defer p.dst.Exec(context.WithoutCancel(ctx), `ROLLBACK`)
			// The source is frozen; one snapshot for all its chunks all the same.
			if _, err := p.src.Exec(wctx, `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET LOCAL max_parallel_workers_per_gather = 0`); err != nil {
				fail(fmt.Errorf("begin on the source: %w", err))
				return
			}
			defer p.src.Exec(context.WithoutCancel(ctx), `ROLLBACK`)
			for i := range jobs {
				if wctx.Err() != nil {
					continue
				}
				c, err := checkTable(wctx, p.src, p.dst, schema, tableNames[i], pace)
				if err != nil {
					fail(err)
					continue
				}
				checks[i] = c
			}
		}()
	}
	for i := range tableNames {
		select {
		case jobs <- i:
		case <-wctx.Done():
		}
		if wctx.Err() != nil {
			break
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return rep, firstErr
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	rep.Tables = checks
	return rep, nil
}

// checkTable checksums one table on both sides at once.
func checkTable(ctx context.Context, src, dst *pgx.Conn, schema, table string, pace pacing) (TableCheck, error) {
	c := TableCheck{Table: table}
	var derr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.TargetRows, c.TargetSum, derr = sumTable(ctx, dst, schema, table, pace)
	}()
	var serr error
	c.SourceRows, c.SourceSum, serr = sumTable(ctx, src, schema, table, pace)
	<-done
	switch {
	case isUndefined(derr):
		c.Missing = "target"
	case derr != nil:
		return c, fmt.Errorf("checksum %s on the target: %w", table, derr)
	case serr != nil:
		return c, fmt.Errorf("checksum %s on the source: %w", table, serr)
	}
	return c, nil
}

// DefaultVerifyChunk is how much of a table one paced checksum query reads
// (Config.VerifyChunk).
const DefaultVerifyChunk = 1 << 20

// pacing is how the comparison's scans are paced (Config.VerifyPace and
// VerifyChunk); the zero value reads each table in one query.
type pacing struct {
	pace  float64 // rest after each chunk, in times the chunk took; <= 0: one query
	chunk int64   // bytes per chunk; <= 0: DefaultVerifyChunk
}

// sumTable is a table's row count and the sum of hashtextextended(row::text,
// 0) over its rows, as seen by conn's transaction. With a pace > 0 (and
// PostgreSQL 14 or later, for TID range scans) it reads the table a chunk of
// blocks at a time and rests after each chunk for pace times as long as the
// chunk took: a scan then takes at most 1/(1+pace) of a CPU, and the shard's
// clients (just moved to this node) keep the rest; a small chunk keeps each
// burst short (1 MB: a few ms of CPU), so a client never waits long behind
// one.
func sumTable(ctx context.Context, conn *pgx.Conn, schema, table string, pc pacing) (int64, string, error) {
	rel := ident(schema, table)
	q := `SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM ONLY ` + rel + ` AS t`
	var rows int64
	var sum string
	if pc.pace <= 0 || serverMajor(conn) < 14 {
		err := conn.QueryRow(ctx, q, pgx.QueryExecModeSimpleProtocol).Scan(&rows, &sum)
		return rows, sum, err
	}
	var blocks, blockSize int64
	if err := conn.QueryRow(ctx, `SELECT pg_relation_size($1::regclass) / current_setting('block_size')::int, current_setting('block_size')::int`, rel).Scan(&blocks, &blockSize); err != nil {
		return 0, "", err
	}
	chunk := pc.chunk
	if chunk <= 0 {
		chunk = DefaultVerifyChunk
	}
	step := max(chunk/blockSize, 1)
	total := new(big.Int)
	for start := int64(0); ; start += step {
		// The last chunk is open-ended: it reads whatever lies past the
		// size read above.
		cq := q + fmt.Sprintf(` WHERE t.ctid >= '(%d,0)'::tid`, start)
		last := start+step >= blocks
		if !last {
			cq += fmt.Sprintf(` AND t.ctid < '(%d,0)'::tid`, start+step)
		}
		t0 := time.Now()
		var n int64
		if err := conn.QueryRow(ctx, cq, pgx.QueryExecModeSimpleProtocol).Scan(&n, &sum); err != nil {
			return 0, "", err
		}
		part, ok := new(big.Int).SetString(sum, 10)
		if !ok {
			return 0, "", fmt.Errorf("checksum of %s: not an integer: %q", rel, sum)
		}
		rows += n
		total.Add(total, part)
		if last {
			return rows, total.String(), nil
		}
		if err := sleep(ctx, time.Duration(float64(time.Since(t0))*pc.pace)); err != nil {
			return 0, "", err
		}
	}
}

// serverMajor is the major version of conn's server (0 if unknown).
func serverMajor(conn *pgx.Conn) int {
	v := conn.PgConn().ParameterStatus("server_version")
	i := strings.IndexFunc(v, func(r rune) bool { return r < '0' || r > '9' })
	if i >= 0 {
		v = v[:i]
	}
	n, _ := strconv.Atoi(v)
	return n
}

// verifyAfterFlip compares the frozen source with the target's snapshot and
// undoes the flip when they differ. It returns ErrMismatch (wrapped) after a
// successful undo.
func (m *Mover) verifyAfterFlip(ctx context.Context, mv *moveRun, res *Result) error {
	defer mv.snap.close(context.WithoutCancel(ctx))
	src, dst, err := m.conns(ctx, mv)
	if err != nil {
		return err
	}
	if mv.snap == nil {
		// Resumed: the snapshot died with the process that took it.
		mv.Progress.VerifySkipped = "the mover stopped after the flip; the target's snapshot at the flip is gone, so the move was not verified"
		m.log.Warn("move not verified", "move", mv.ID, "shard", mv.Shard, "reason", mv.Progress.VerifySkipped)
		if err := m.stopCapture(ctx, dst, mv); err != nil {
			return err
		}
		return m.saveProgress(ctx, mv)
	}
	names, err := tables(ctx, src, mv.Schema)
	if err != nil {
		return err
	}
	// The shard's clients first: the transactions held by the fence have
	// just been released to the target, some on new backends (whose start
	// and first trigger call take CPU), and the checksum scans would take
	// the CPUs from them.
	if m.cfg.VerifyDelay > 0 {
		if err := sleep(ctx, m.cfg.VerifyDelay); err != nil {
			return err
		}
	}
	t0 := time.Now()
	if mv.verify == nil {
		if mv.verify, err = openVerifyPairs(ctx, mv.SourceDSN, mv.TargetDSN, min(connPairs(mv, m.cfg.VerifyParallel), max(len(names), 1)), m.bulkSettings()); err != nil {
			return fmt.Errorf("verify: %w", err)
		}
	}
	rep, err := verifyOn(ctx, mv.verify, mv.Schema, mv.snap.snapshot, names, pacing{pace: m.cfg.VerifyPace, chunk: m.cfg.VerifyChunk})
	closeVerifyPairs(mv.verify)
	mv.verify = nil
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	mv.snap.close(context.WithoutCancel(ctx))
	res.VerifyTime = time.Since(t0)
	mv.Progress.VerifyMS = float64(res.VerifyTime.Microseconds()) / 1000
	if rep.OK() {
		m.log.Info("verified after the flip", "move", mv.ID, "shard", mv.Shard, "tables", len(rep.Tables), "took", time.Since(t0))
		if err := m.stopCapture(ctx, dst, mv); err != nil {
			return err
		}
		res.Verified = true
		return m.saveProgress(ctx, mv)
	}
	cause := fmt.Errorf("verify: %w", rep.Err())
	m.log.Error("target differs from the source at the flip; undoing the flip", "move", mv.ID, "shard", mv.Shard, "err", cause)
	mv.Progress.Undo = cause.Error()
	if err := m.saveProgress(ctx, mv); err != nil {
		return errors.Join(cause, err)
	}
	if err := m.undoFlip(ctx, mv); err != nil {
		return errors.Join(cause, fmt.Errorf("undo the flip (resume the move to retry): %w", err))
	}
	return errUndone{cause}
}

// isPgCode reports whether err is a server error with code.
func isPgCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// errUndone is a mismatch whose flip was undone: the move is finished (aborted).
type errUndone struct{ error }

func (e errUndone) Unwrap() error { return e.error }

// dropTriggerNowait drops trigger name on table (already quoted) in a
// transaction that takes the table's lock with NOWAIT and drops the trigger
// only once it holds it, retrying for up to dropTriggerPatience while the
// table is in use. No writer ever queues behind it.
func dropTriggerNowait(ctx context.Context, conn *pgx.Conn, table, name string) error {
	return execLockedNowait(ctx, conn, table, "ACCESS EXCLUSIVE", `DROP TRIGGER IF EXISTS `+ident(name)+` ON `+table, dropTriggerPatience)
}

// dropTriggerPatience bounds how long dropTriggerNowait retries a busy table.
const dropTriggerPatience = 30 * time.Second
