package move

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// stepFence is the cutover; its duration is the shard's write pause:
//
//  1. mark the shard 'fenced' in the catalog and have the Fencer hold the
//     shard's new transactions in the routers and drain in-flight ones;
//  2. on the source, one transaction with a short lock_timeout: LOCK TABLE …
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
	}
	t0 := time.Now()
	tctx, cancel := context.WithTimeout(ctx, m.cfg.FenceTimeout)
	defer cancel()
	fctx, cancelCause := context.WithCancelCause(tctx)
	defer cancelCause(nil)
	if err := m.fenceAndFlip(fctx, cancelCause, mv, src, dst, leaseConn, snapConn, names, res); err != nil {
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
	// Released: the pause is over. Release with a fresh context: the flip is done and must not stay held.
	bg, cancel2 := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel2()
	uerr := m.cfg.Fencer.Unfence(bg, mv.Shard)
	mv.Pause = time.Since(t0)
	res.Pause = mv.Pause
	if _, err := m.cfg.Catalog.Exec(bg, `UPDATE pgtenant.moves SET pause_ms = $2, progress = progress || $3::jsonb, updated_at = now() WHERE id = $1`,
		mv.ID, float64(mv.Pause.Microseconds())/1000, fmt.Sprintf(`{"fence_lsn": %q}`, mv.Progress.FenceLSN)); err != nil {
		m.log.Warn("record pause", "move", mv.ID, "err", err)
	}
	m.log.Info("shard flipped", "move", mv.ID, "shard", mv.Shard, "node", mv.Target, "pause", mv.Pause)
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

func (m *Mover) fenceAndFlip(ctx context.Context, cancel context.CancelCauseFunc, mv *moveRun, src, dst, leaseConn, snapConn *pgx.Conn, names []string, res *Result) error {
	t0 := time.Now()
	if err := m.markFenced(ctx, mv); err != nil {
		return err
	}
	lease := m.renewLeases(ctx, mv, cancel)
	defer lease.close()
	if err := m.cfg.Fencer.Fence(ctx, mv.Shard); err != nil {
		return fmt.Errorf("fence shard in routers: %w", err)
	}
	tFenced := time.Now()
	seq, err := m.lockAndMark(ctx, mv, src, names)
	if err != nil {
		return err
	}
	// The catalog lease must outlast the source lease just taken (a catalog
	// briefly unreachable is left to the renewer and the flip).
	if err := m.renewCatalogLease(ctx, mv); errors.Is(err, errLeaseLost) {
		return err
	} else if err != nil {
		m.log.Warn("renew the catalog lease", "move", mv.ID, "shard", mv.Shard, "err", err)
	}
	lease.arm(leaseConn)
	tLocked := time.Now()
	if mv.Method == MethodTrigger {
		if err := m.drainQueue(ctx, mv, src, dst); err != nil {
			return err
		}
	} else if err := waitMarker(ctx, dst, mv, seq, m.cfg.PollInterval); err != nil {
		return err
	}
	tApplied := time.Now()
	if snapConn != nil {
		// The target as of the marker, for the comparison after the flip;
		// capture of the target's writes starts before the flip.
		snap, err := takeSnapshot(ctx, dst, snapConn, mv)
		if err != nil {
			return err
		}
		mv.snap = snap
	}
	tVerified := time.Now()
	if err := syncSequences(ctx, src, dst, mv.Schema); err != nil {
		return err
	}
	if err := enableTriggers(ctx, dst, mv); err != nil {
		return err
	}
	tSeq := time.Now()
	// The source lease must be live at the flip (its renewals run on another
	// connection and may have failed): renewed here, it outlasts the flip.
	if err := m.renewSourceLease(ctx, src, mv); err != nil {
		return err
	}
	if err := m.flip(ctx, mv); err != nil {
		return err
	}
	// The flip consumed the catalog lease: stop renewing, and keep the
	// source copy write-protected for good (until cleanup retires it).
	lease.close()
	bg, cancelBg := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancelBg()
	if err := holdGuard(bg, src, mv); err != nil {
		m.log.Warn("source lease not made permanent; cleanup retries", "move", mv.ID, "err", err)
	}
	m.log.Info("fence timings", "move", mv.ID, "routers", tFenced.Sub(t0), "lock", tLocked.Sub(tFenced),
		"apply", tApplied.Sub(tLocked), "snapshot", tVerified.Sub(tApplied), "sequences", tSeq.Sub(tVerified), "flip", time.Since(tSeq))
	return nil
}

// lockAndMark takes the shard's table locks on the source and commits a marker row.
func (m *Mover) lockAndMark(ctx context.Context, mv *moveRun, src *pgx.Conn, names []string) (int64, error) {
	var seq int64
	// An autovacuum worker on one of the tables holds SHARE UPDATE EXCLUSIVE,
	// and Postgres cancels it for a lock waiter only after deadlock_timeout
	// (1s by default), no shorter than lock_timeout: without this the fence
	// fails whenever autovacuum is busy with the shard (seen on a freshly
	// loaded 1 GB shard). Autovacuum skips a table it cannot lock, so it does
	// not come back while LOCK TABLE waits. Best effort: a role that may not
	// signal autovacuum only logs it.
	if _, err := src.Exec(ctx, `SELECT pg_cancel_backend(a.pid) FROM pg_stat_activity a
		WHERE a.backend_type = 'autovacuum worker' AND a.datname = current_database() AND EXISTS (SELECT 1 FROM pg_locks l
			JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE l.pid = a.pid AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND n.nspname = $1)`, mv.Schema); err != nil {
		m.log.Warn("cancel autovacuum on the shard's tables", "move", mv.ID, "shard", mv.Shard, "err", err)
	}
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
	queue("begin", `BEGIN`)
	queue("set lock_timeout", fmt.Sprintf(`SET LOCAL lock_timeout = '%dms'`, m.cfg.LockTimeout.Milliseconds()))
	if len(names) > 0 {
		q := make([]string, len(names))
		for i, n := range names {
			q[i] = ident(mv.Schema, n)
		}
		queue("lock the shard's tables", `LOCK TABLE `+strings.Join(q, ", ")+` IN EXCLUSIVE MODE`)
	}
	m.queueGuard(queue, mv, names)
	// With synchronous_commit on: see insertMarker.
	queue("set synchronous_commit", `SET LOCAL synchronous_commit = on`)
	queue("insert marker", insertMarkerSQL, mv.ID)
	queue("commit", `COMMIT`)
	queue("read fence position", `SELECT pg_current_wal_lsn()::text`)
	br := src.SendBatch(ctx, b)
	var err error
	for _, label := range what {
		switch label {
		case "insert marker":
			err = br.QueryRow().Scan(&seq)
		case "read fence position":
			err = br.QueryRow().Scan(&mv.Progress.FenceLSN)
		default:
			_, err = br.Exec()
		}
		if err != nil {
			err = fmt.Errorf("%s: %w", label, err)
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
		return 0, fmt.Errorf("fence on source: %w", err)
	}
	return seq, nil
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
	rows, err := src.Query(ctx, `SELECT quote_ident(schemaname) || '.' || quote_ident(sequencename), last_value
		FROM pg_sequences WHERE schemaname = $1 AND last_value IS NOT NULL`, schema)
	if err != nil {
		return fmt.Errorf("read source sequences: %w", err)
	}
	var names []string
	var values []int64
	for rows.Next() {
		var n string
		var v int64
		if err := rows.Scan(&n, &v); err != nil {
			rows.Close()
			return fmt.Errorf("read source sequences: %w", err)
		}
		names, values = append(names, n), append(values, v)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read source sequences: %w", err)
	}
	if len(names) == 0 {
		return nil
	}
	if _, err := dst.Exec(ctx, `SELECT setval(u.name::regclass, greatest(u.v, s.last_value), true)
		FROM unnest($1::text[], $2::bigint[]) AS u(name, v)
		CROSS JOIN LATERAL (SELECT coalesce((SELECT last_value FROM pg_sequences q WHERE (quote_ident(q.schemaname) || '.' || quote_ident(q.sequencename)) = u.name), 0) AS last_value) s`,
		names, values); err != nil {
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
