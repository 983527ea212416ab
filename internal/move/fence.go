package move

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// stepFence is the cutover; its duration is the shard's write pause:
//
//  0. before the pause, the source transaction of step 2 begins and takes
//     SHARE UPDATE EXCLUSIVE on the shard's tables, waiting out autovacuum
//     (fencelock.go);
//  1. mark the shard 'fenced' in the catalog and have the Fencer hold the
//     shard's new transactions in the routers and drain in-flight ones;
//  2. on the source, in that transaction, with a short lock_timeout: LOCK TABLE …
//     IN EXCLUSIVE MODE on every table of the shard (reads go on, writers that
//     bypassed the routers wait), insert a marker row, commit;
//  3. poll the target every PollInterval until the marker is applied;
//  4. unless SkipVerify, start capturing the target's writes and take its
//     snapshot (compared with the frozen source after the flip: verifyafter.go);
//  5. set the target's sequences to the source's values;
//  6. flip the catalog (compare-and-swap, consuming the lease) and release the Fencer.
//
// From step 1 to the flip the mover renews the fence lease (see lease.go);
// from step 2 the source refuses writes to the shard's tables. Everything
// before the flip is bounded by FenceTimeout; any failure releases the fence
// with the shard still on the source. A lost lease leaves the move running
// for Resume (the routers already gave the shard back to its source).
func (m *Mover) stepFence(ctx context.Context, mv *moveRun, res *Result) error {
	m.announceTarget(ctx, mv)
	src, dst, names, err := m.endpoints(ctx, mv)
	if err != nil {
		return err
	}
	if err := ensureMarker(ctx, src); err != nil { // a move resumed from an older pgtenant lacks the fence table
		return fmt.Errorf("source: %w", err)
	}
	if mv.Method != MethodTrigger { // the trigger method drains its queue instead
		if err := m.ensureStream(ctx, mv); err != nil { // before the pause: a resumed move streams again
			return err
		}
	}
	leaseConn, err := connect(ctx, mv.SourceDSN, "source node "+mv.Source)
	if err != nil {
		return err
	}
	defer leaseConn.Close(context.WithoutCancel(ctx))
	var snapConn *pgx.Conn
	if postFlipVerify(mv) {
		// Capture and the snapshot connection are ready before the pause starts.
		if err := m.armCapture(ctx, dst, mv, names); err != nil {
			return err
		}
		if snapConn, err = connect(ctx, mv.TargetDSN, "target node "+mv.Target); err != nil {
			return err
		}
		defer func() {
			if mv.snap == nil || mv.snap.conn != snapConn {
				snapConn.Close(context.WithoutCancel(ctx))
			}
		}()
		// So are the comparison's connections: each new backend costs
		// tens of ms of CPU, which after the flip is the held clients'.
		if mv.verify == nil {
			n := min(connPairs(mv, m.cfg.VerifyParallel), max(len(names), 1))
			if mv.verify, err = openVerifyPairs(ctx, mv.SourceDSN, mv.TargetDSN, n, m.bulkSettings()); err != nil {
				return err
			}
		}
	}
	// The fence's source transaction starts here, before the pause: it
	// waits out autovacuum on the shard's tables (fencelock.go).
	if err := m.beginPreLocked(ctx, src, mv, mv.Source, mv.SourceDSN, names); err != nil {
		return fmt.Errorf("fence on source: %w", err)
	}
	m.prepareFencer(ctx)
	t0 := time.Now()
	tctx, cancel := context.WithTimeout(ctx, m.cfg.FenceTimeout)
	defer cancel()
	fctx, cancelCause := context.WithCancelCause(tctx)
	defer cancelCause(nil)
	if err := m.fenceAndFlip(fctx, cancelCause, mv, src, dst, leaseConn, snapConn, names, res); err != nil {
		m.rollbackOpen(ctx, src, "move", mv.ID, "shard", mv.Shard) // a failure before the locking round trip
		if cause := context.Cause(fctx); errors.Is(cause, errLeaseLost) || errors.Is(err, errLeaseLost) {
			err = fmt.Errorf("%w: %w", ErrInterrupted, errors.Join(err, cause))
		}
		if mv.Step != StepFlipped {
			// Release with retries: while the catalog (or the source) is
			// briefly unreachable the routers keep the shard fenced from
			// their cached map, so giving up at once would leave it held
			// until an operator resumes or aborts the move.
			bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			if uerr := m.retryUnfence(bg, mv); uerr != nil {
				err = errors.Join(err, uerr)
			}
		}
		return err
	}
	// Released: the pause is over. Release with a fresh context: the flip is
	// done and must not stay held. Meanwhile the source lease, renewed just
	// before the flip, is made permanent: the retired source copy takes no
	// more writes.
	bg, cancel2 := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel2()
	guarded := make(chan error, 1)
	go func() { guarded <- holdGuard(bg, src, mv) }()
	tU := time.Now()
	uerr := m.unfenceRouters(bg, mv)
	mv.Pause = time.Since(t0)
	released := time.Since(tU)
	if err := <-guarded; err != nil {
		m.log.Warn("source lease not made permanent; cleanup retries", "move", mv.ID, "err", err)
	}
	res.Pause = mv.Pause
	if _, err := m.cfg.Catalog.Exec(bg, `UPDATE pgtenant.moves SET pause_ms = $2, progress = progress || $3::jsonb, updated_at = now() WHERE id = $1`,
		mv.ID, float64(mv.Pause.Microseconds())/1000, fmt.Sprintf(`{"fence_lsn": %q}`, mv.Progress.FenceLSN)); err != nil {
		m.log.Warn("record pause", "move", mv.ID, "err", err)
	}
	// release: from the flip's commit until every router acknowledged it
	// (the rest of the pause is in the "fence timings" line).
	m.log.Info("shard flipped", "move", mv.ID, "shard", mv.Shard, "node", mv.Target, "pause", mv.Pause, "release", released)
	if uerr != nil {
		return fmt.Errorf("release fence after flip: %w", uerr)
	}
	return nil
}

// conns connects to the move's source and target.
func (m *Mover) conns(ctx context.Context, mv *moveRun) (src, dst *pgx.Conn, err error) {
	if src, err = m.source(ctx, mv); err != nil {
		return nil, nil, err
	}
	if dst, err = m.target(ctx, mv); err != nil {
		return nil, nil, err
	}
	return src, dst, nil
}

// endpoints connects to the move's source and target and lists the shard's
// tables on the source.
func (m *Mover) endpoints(ctx context.Context, mv *moveRun) (src, dst *pgx.Conn, names []string, err error) {
	if src, dst, err = m.conns(ctx, mv); err != nil {
		return nil, nil, nil, err
	}
	if names, err = tables(ctx, src, mv.Schema); err != nil {
		return nil, nil, nil, err
	}
	return src, dst, names, nil
}

// fenceAndFlip is the pause, from marking the shard fenced to the flip. It
// is a chain of round trips to three servers (catalog, source, target), so
// whatever needs no answer from the step before it runs beside that step:
// the catalog lease's renewal beside the wait for the marker, and the target's capture row and
// sequences, its snapshot and the source lease's renewal all at once. The
// source's sequences are read in the locking round trip, and the retired
// source's guard is made permanent after the release (stepFence).
func (m *Mover) fenceAndFlip(ctx context.Context, cancel context.CancelCauseFunc, mv *moveRun, src, dst, leaseConn, snapConn *pgx.Conn, names []string, res *Result) error {
	t0 := time.Now()
	if err := m.markFenced(ctx, mv); err != nil {
		return err
	}
	tMarked := time.Now()
	lease := m.renewLeases(ctx, mv, cancel)
	defer lease.close()
	if err := m.fenceRouters(ctx, mv); err != nil {
		return fmt.Errorf("fence shard in routers: %w", err)
	}
	tFenced := time.Now()
	// Autovacuum is off the tables since stepFence's preLock (fencelock.go).
	seq, seqs, err := m.lockBatch(ctx, mv, src, names)
	if err != nil {
		return err
	}
	lease.arm(leaseConn)
	tLocked := time.Now()
	// The catalog lease must outlast the source lease just taken (a catalog
	// briefly unreachable is left to the renewer and the flip): renewed
	// while the target catches up, and checked before the flip.
	catLease := make(chan error, 1)
	go func() { catLease <- m.renewCatalogLease(ctx, mv) }()
	var caughtUp error
	if mv.Method == MethodTrigger {
		caughtUp = m.drainQueue(ctx, mv, src, dst)
	} else {
		caughtUp = waitMarker(ctx, dst, mv, seq, m.cfg.PollInterval)
	}
	if err := <-catLease; errors.Is(err, errLeaseLost) {
		return errors.Join(caughtUp, err)
	} else if err != nil {
		m.log.Warn("renew the catalog lease", "move", mv.ID, "shard", mv.Shard, "err", err)
	}
	if caughtUp != nil {
		return caughtUp
	}
	tApplied := time.Now()
	// Three connections at once: the target's snapshot (for the comparison
	// after the flip), the target's capture row and sequences, and the
	// source lease, renewed so that it is live at the flip (its renewals run
	// on another connection and may have failed).
	var snapErr, srcErr error
	var wg sync.WaitGroup
	if snapConn != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mv.snap, snapErr = exportSnapshot(ctx, snapConn)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		srcErr = m.renewSourceLease(ctx, src, mv)
	}()
	dstErr := prepareTarget(ctx, dst, mv, snapConn != nil, seqs)
	wg.Wait()
	if err := errors.Join(dstErr, snapErr, srcErr); err != nil {
		return err
	}
	if err := enableTriggers(ctx, dst, mv); err != nil {
		return err
	}
	tPrepared := time.Now()
	if err := m.flip(ctx, mv); err != nil {
		return err
	}
	// The flip consumed the catalog lease: stop renewing. The source copy
	// is kept write-protected for good by stepFence, after the release.
	lease.close()
	m.log.Info("fence timings", "move", mv.ID, "mark", tMarked.Sub(t0), "routers", tFenced.Sub(tMarked), "lock", tLocked.Sub(tFenced),
		"apply", tApplied.Sub(tLocked), "target", tPrepared.Sub(tApplied), "flip", time.Since(tPrepared))
	return nil
}

// lockAndMark takes the shard's table locks on the source and commits a
// marker row, in the transaction beginPreLocked opened on src.
func (m *Mover) lockAndMark(ctx context.Context, mv *moveRun, src *pgx.Conn, names []string) (int64, error) {
	seq, _, err := m.lockBatch(ctx, mv, src, names)
	return seq, err
}

// sequenceValues are a schema's sequences (quoted, qualified names) and their last values.
type sequenceValues struct {
	names  []string
	values []int64
}

// readSequencesSQL lists the sequences of schema $1 that have been used, with their last values.
const readSequencesSQL = `SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename), last_value
	FROM pg_sequences WHERE schemaname = $1 AND last_value IS NOT NULL`

// lockBatch takes the shard's table locks on the source and commits a
// marker row, in one round trip, and reads the source's sequences (frozen
// with the tables: no insert into them can draw a value any more).
func (m *Mover) lockBatch(ctx context.Context, mv *moveRun, src *pgx.Conn, names []string) (int64, sequenceValues, error) {
	var seq int64
	var seqs sequenceValues
	// One round trip (it is inside the pause): the transaction's statements,
	// its commit and the fence position go as one pipeline. After an error
	// the server skips the rest up to the pipeline's end, so the transaction
	// is left aborted and rolled back here.
	b := &pgx.Batch{}
	var what []string
	queue := func(label, sql string, args ...any) {
		b.Queue(sql, args...)
		what = append(what, label)
	}
	if src.PgConn().TxStatus() == 'I' { // else begun by beginPreLocked
		queue("begin", `BEGIN`)
	}
	queue("set lock_timeout", fmt.Sprintf(`SET LOCAL lock_timeout = '%dms'`, m.cfg.LockTimeout.Milliseconds()))
	if len(names) > 0 {
		queue("lock the shard's tables", `LOCK TABLE `+strings.Join(qualified(mv.Schema, names), ", ")+` IN EXCLUSIVE MODE`)
	}
	m.queueGuard(queue, mv, names)
	// With synchronous_commit on: see insertMarker.
	queue("set synchronous_commit", `SET LOCAL synchronous_commit = on`)
	queue("insert marker", insertMarkerSQL, mv.ID)
	queue("commit", `COMMIT`)
	queue("read fence position", `SELECT pg_current_wal_lsn()::text`)
	queue("read source sequences", readSequencesSQL, mv.Schema)
	br := src.SendBatch(ctx, b)
	var err error
	var failed string
	for _, label := range what {
		switch label {
		case "insert marker":
			err = br.QueryRow().Scan(&seq)
		case "read fence position":
			err = br.QueryRow().Scan(&mv.Progress.FenceLSN)
		case "read source sequences":
			var rows pgx.Rows
			if rows, err = br.Query(); err == nil {
				var n string
				var v int64
				_, err = pgx.ForEachRow(rows, []any{&n, &v}, func() error {
					seqs.names, seqs.values = append(seqs.names, n), append(seqs.values, v)
					return nil
				})
			}
		default:
			_, err = br.Exec()
		}
		if err != nil {
			failed = label
			break
		}
	}
	if cerr := br.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		if src.PgConn().TxStatus() != 'I' {
			if _, rerr := src.Exec(context.WithoutCancel(ctx), `ROLLBACK`); rerr != nil {
				m.log.Warn("roll back the source fence", "move", mv.ID, "shard", mv.Shard, "err", rerr)
			}
		}
		if failed == "lock the shard's tables" { // named after the rollback: its own locks are gone
			return 0, seqs, fmt.Errorf("fence on source: %w", lockFailed(ctx, mv.Source, mv.SourceDSN,
				fmt.Sprintf("%s (lock_timeout %s)", failed, m.cfg.LockTimeout), []string{mv.Schema}, conflictsExclusive, err))
		} else if failed != "" {
			err = fmt.Errorf("%s: %w", failed, err)
		}
		return 0, seqs, fmt.Errorf("fence on source: %w", err)
	}
	return seq, seqs, nil
}

// restoreGrants gives back the write privileges that fences of older
// pgtenant versions revoked on the source (recorded in Progress.Revoked).
func (m *Mover) restoreGrants(ctx context.Context, mv *moveRun) error {
	if len(mv.Progress.Revoked) == 0 {
		return nil
	}
	src, err := m.source(ctx, mv)
	if err != nil {
		return err
	}
	for _, g := range mv.Progress.Revoked {
		if _, err := src.Exec(ctx, `GRANT `+g.Privs+` ON `+g.Table+` TO `+g.Role); err != nil && !isUndefined(err) {
			return fmt.Errorf("grant back %s on %s to %s: %w", g.Privs, g.Table, g.Role, err)
		}
	}
	mv.Progress.Revoked = nil
	return m.saveProgress(ctx, mv)
}

// syncSequences sets every sequence of the schema on the target (identity
// columns included) to the source's value, so the next value is past it.
func syncSequences(ctx context.Context, src, dst *pgx.Conn, schema string) error {
	rows, err := src.Query(ctx, readSequencesSQL, schema)
	if err != nil {
		return fmt.Errorf("read source sequences: %w", err)
	}
	var seqs sequenceValues
	var n string
	var v int64
	if _, err := pgx.ForEachRow(rows, []any{&n, &v}, func() error {
		seqs.names, seqs.values = append(seqs.names, n), append(seqs.values, v)
		return nil
	}); err != nil {
		return fmt.Errorf("read source sequences: %w", err)
	}
	if len(seqs.names) == 0 {
		return nil
	}
	if _, err := dst.Exec(ctx, setSequencesSQL, seqs.names, seqs.values); err != nil {
		return fmt.Errorf("set target sequences: %w", err)
	}
	return nil
}

// setSequencesSQL sets each sequence $1[i] to at least $2[i] (never back).
const setSequencesSQL = `SELECT setval(u.name::regclass, greatest(u.v, s.last_value), true)
	FROM unnest($1::text[], $2::bigint[]) AS u(name, v)
	CROSS JOIN LATERAL (SELECT coalesce((SELECT last_value FROM pg_sequences q WHERE (quote_ident(q.schemaname) || '.' || quote_ident(q.sequencename)) = u.name), 0) AS last_value) s`

// prepareTarget, under the fence once the target has caught up, sets the
// target's sequences to the source's values and, with capture, turns the
// capture of the target's writes on (committed before the flip): one round
// trip, one implicit transaction. Its commit waits for the WAL flush: the
// flip is on another server, and a capture row lost in a crash of the
// target would leave writes after the flip out of an undo.
func prepareTarget(ctx context.Context, dst *pgx.Conn, mv *moveRun, capture bool, seqs sequenceValues) error {
	b := &pgx.Batch{}
	if capture {
		b.Queue(`INSERT INTO pgtenant_move.capture (schema_name, move_id) VALUES ($1, $2)
			ON CONFLICT (schema_name) DO UPDATE SET move_id = excluded.move_id`, mv.Schema, mv.ID)
	}
	if len(seqs.names) > 0 {
		b.Queue(setSequencesSQL, seqs.names, seqs.values)
	}
	if b.Len() == 0 {
		return nil
	}
	if err := dst.SendBatch(ctx, b).Close(); err != nil {
		if capture {
			return fmt.Errorf("start capturing the target's writes and set its sequences: %w", err)
		}
		return fmt.Errorf("set target sequences: %w", err)
	}
	return nil
}

// unfence releases a fence taken before the flip: the shard goes back to
// 'active' on the source and the routers release its transactions there.
func (m *Mover) unfence(ctx context.Context, mv *moveRun) error {
	var errs []error
	if err := m.restoreGrants(ctx, mv); err != nil {
		errs = append(errs, err)
	}
	// The source takes writes again before the routers release the shard to it.
	if src, err := m.source(ctx, mv); err != nil {
		errs = append(errs, err)
	} else if err := m.disarmGuard(ctx, src, mv); err != nil {
		errs = append(errs, err)
	}
	if err := m.markActive(ctx, mv); err != nil {
		errs = append(errs, err)
	}
	if err := m.cfg.Fencer.Unfence(ctx, mv.Shard); err != nil {
		errs = append(errs, fmt.Errorf("release fence in routers: %w", err))
	}
	return errors.Join(errs...)
}

// retryUnfence calls unfence until it succeeds or ctx ends, every 250ms.
func (m *Mover) retryUnfence(ctx context.Context, mv *moveRun) error {
	for {
		err := m.unfence(ctx, mv)
		if err == nil {
			return nil
		}
		m.log.Warn("release fence failed; retrying", "move", mv.ID, "shard", mv.Shard, "err", err)
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}
