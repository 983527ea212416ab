package move

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
)

// runSplit drives a split from its recorded step to the end.
func (m *Mover) runSplit(ctx context.Context, sr *splitRun) (SplitResult, error) {
	res := SplitResult{SplitID: sr.ID, Node: sr.Node, NewNode: sr.NewNode, Moved: sr.Shards, Kept: sr.Progress.Kept}
	if sr.resuming {
		flipped, err := m.splitFlipped(ctx, sr)
		if err != nil {
			return res, err
		}
		switch {
		case flipped:
			// Killed between the flip and the release, or in cleanup: release (idempotent).
			for _, mv := range sr.moves {
				if err := m.cfg.Fencer.Unfence(ctx, mv.Shard); err != nil {
					return res, fmt.Errorf("release fence after flip: %w", err)
				}
			}
			if sr.Step.splitBefore(StepFlipped) {
				sr.Step = StepFlipped
			}
		case sr.Step == StepFence:
			// Killed under the lapsing fence: release it, fence again.
			if err := m.releaseSplitFence(ctx, sr); err != nil {
				return res, err
			}
			sr.Step = StepStart
		}
		if sr.Step == StepStart {
			if err := m.checkFollower(ctx, sr, true); err != nil {
				return res, err
			}
		}
	}
	if sr.Step == StepStart {
		if err := m.splitHook(ctx, sr, StepStart); err != nil {
			return res, err
		}
		if err := m.setSplitStep(ctx, sr, StepFence); err != nil {
			return res, err
		}
		if err := m.splitFence(ctx, sr, &res); err != nil {
			return res, err
		}
		if err := m.makeFenceDurable(ctx, sr); err != nil {
			return res, err
		}
	}
	if sr.Step == StepPromote {
		if err := m.promoteFollower(ctx, sr, &res); err != nil {
			return res, err
		}
		if err := m.setSplitStep(ctx, sr, StepPromoted); err != nil {
			return res, err
		}
	}
	tPromoted := time.Now()
	if sr.Step == StepPromoted {
		if err := m.adoptFollower(ctx, sr); err != nil {
			return res, err
		}
		tAdopted := time.Now()
		if err := m.flipSplit(ctx, sr); err != nil {
			return res, err
		}
		if !sr.fenceStart.IsZero() {
			m.log.Info("split pause timings", "split", sr.ID, "to_promotion", tPromoted.Sub(sr.fenceStart), "adopt_register", tAdopted.Sub(tPromoted), "flip", time.Since(tAdopted))
		}
		if err := m.splitHook(ctx, sr, StepFlipped); err != nil {
			return res, err
		}
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		var uerr error
		for _, mv := range sr.moves {
			if err := m.cfg.Fencer.Unfence(bg, mv.Shard); err != nil {
				uerr = errors.Join(uerr, err)
			}
		}
		cancel()
		if !sr.fenceStart.IsZero() {
			res.Pause = time.Since(sr.fenceStart)
			sr.Pause = res.Pause
			if _, err := m.cfg.Catalog.Exec(ctx, `UPDATE pgtenant.splits SET pause_ms = $2, updated_at = now() WHERE id = $1`,
				sr.ID, float64(res.Pause.Microseconds())/1000); err != nil {
				m.log.Warn("record pause", "split", sr.ID, "err", err)
			}
		}
		m.log.Info("shards flipped to the promoted follower", "split", sr.ID, "node", sr.NewNode, "shards", len(sr.moves), "pause", res.Pause)
		if uerr != nil {
			return res, fmt.Errorf("release fence after flip: %w", uerr)
		}
	}
	if sr.Step == StepFlipped || sr.Step == StepCleanup {
		if err := m.setSplitStep(ctx, sr, StepCleanup); err != nil {
			return res, err
		}
		if err := m.cleanupSplit(ctx, sr); err != nil {
			sr.Progress.CleanupPending, sr.Progress.CleanupError = true, err.Error()
			res.CleanupError = err.Error()
			m.log.Warn("follower split cleanup incomplete; run pgtenant shard cleanup", "split", sr.ID, "err", err)
		}
		res.Dropped = sr.Progress.Dropped
	}
	if res.Pause == 0 {
		res.Pause = sr.Pause
	}
	res.ReplayWait = time.Duration(sr.Progress.ReplayWaitMS * float64(time.Millisecond))
	res.Promote = time.Duration(sr.Progress.PromoteMS * float64(time.Millisecond))
	if err := m.finishSplit(ctx, sr, "done", nil); err != nil {
		return res, err
	}
	m.log.Info("follower split done", "split", sr.ID, "node", sr.Node, "new_node", sr.NewNode, "pause", res.Pause)
	return res, nil
}

// splitFence fences the moved half with the moves' fence: all shards
// marked fenced with a lease in one catalog statement (one map version),
// the routers wait (Fencer.Fence), then one node transaction takes every
// moved table's lock (waiting for writers that bypassed the routers) and
// arms each shard's guard trigger and source lease (queueGuard). Then it waits until the follower has
// replayed past the node's WAL position taken after that.
func (m *Mover) splitFence(ctx context.Context, sr *splitRun, res *SplitResult) error {
	if err := ensureMarker(ctx, sr.src); err != nil {
		return fmt.Errorf("node %s: %w", sr.Node, err)
	}
	names := make([][]string, len(sr.moves))
	for i, mv := range sr.moves {
		var err error
		if names[i], err = tables(ctx, sr.src, mv.Schema); err != nil {
			return err
		}
	}
	leaseConn, err := connect(ctx, sr.sourceDSN, "node "+sr.Node)
	if err != nil {
		return err
	}
	if _, err := m.follower(ctx, sr); err != nil {
		leaseConn.Close(context.WithoutCancel(ctx))
		return err
	}
	// The node transaction starts before the pause: it waits out
	// autovacuum on the moved tables (fencelock.go).
	var quoted []string
	for i, mv := range sr.moves {
		quoted = append(quoted, qualified(mv.Schema, names[i])...)
	}
	if err := m.preLock(ctx, sr.src, sr.Node, sr.sourceDSN, sr.schemas(), quoted, "split", sr.ID); err != nil {
		leaseConn.Close(context.WithoutCancel(ctx))
		return err
	}
	defer m.rollbackOpen(ctx, sr.src, "split", sr.ID) // a failure before lockSplit's commit
	fctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	sr.fenceStart = time.Now()
	if err := m.markSplitFenced(ctx, sr); err != nil {
		leaseConn.Close(context.WithoutCancel(ctx))
		return err
	}
	tMarked := time.Now()
	lease := m.renewSplitLeases(fctx, sr, cancel)
	sr.stopLeases = func() {
		lease.close()
		leaseConn.Close(context.WithoutCancel(ctx))
	}
	for _, mv := range sr.moves {
		if err := m.cfg.Fencer.Fence(fctx, mv.Shard); err != nil {
			return fmt.Errorf("fence shard %d in routers: %w", mv.Shard, err)
		}
	}
	tFenced := time.Now()
	if err := m.lockSplit(fctx, sr, quoted, names); err != nil {
		return err
	}
	lease.arm(leaseConn)
	// The insert position, not pg_current_wal_lsn() (the write position):
	// a commit made with synchronous_commit off may not be written yet, and
	// a standby past the write position would not show it.
	if err := sr.src.QueryRow(fctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&sr.Progress.FenceLSN); err != nil {
		return fmt.Errorf("read the node's WAL position: %w", err)
	}
	if err := m.splitHook(fctx, sr, StepFenced); err != nil {
		return err
	}
	t := time.Now()
	m.log.Info("split fenced", "split", sr.ID, "routers", tFenced.Sub(tMarked), "locks", t.Sub(tFenced))
	if err := m.waitReplay(fctx, sr, sr.Progress.FenceLSN); err != nil {
		if cause := context.Cause(fctx); errors.Is(cause, errLeaseLost) {
			err = fmt.Errorf("%w: %w", err, cause)
		}
		return err
	}
	sr.Progress.ReplayWaitMS = float64(time.Since(t).Microseconds()) / 1000
	// The follower must show this fence: proof that it replays this node.
	f, err := m.follower(fctx, sr)
	if err != nil {
		return err
	}
	var seen int
	if err := f.QueryRow(fctx, `SELECT count(*) FROM pgtenant_move.fence WHERE move_id = $1 AND schema_name = ANY($2)`,
		sr.leaseID(), sr.schemas()).Scan(&seen); err != nil && !isUndefined(err) {
		return fmt.Errorf("read the fence on the follower: %w", err)
	}
	if seen != len(sr.moves) {
		return fmt.Errorf("%w: it replayed past %s but does not show the fence taken there", ErrNotFollower, sr.Progress.FenceLSN)
	}
	res.ReplayWait = time.Since(t)
	return nil
}

// lockSplit is the moves' lockAndMark for all the moved shards in the
// transaction preLock began (one commit, no marker: the follower's replay
// position is the proof here): LOCK TABLE … IN EXCLUSIVE MODE on every
// table (quoted), each shard's guard armed.
func (m *Mover) lockSplit(ctx context.Context, sr *splitRun, quoted []string, names [][]string) error {
	err := func() error {
		// Flushed at commit, so the standby gets the fence at once (not after the WAL writer's delay).
		if _, err := sr.src.Exec(ctx, fmt.Sprintf(`SET LOCAL lock_timeout = '%dms'; SET LOCAL synchronous_commit = on`, m.cfg.LockTimeout.Milliseconds())); err != nil {
			return err
		}
		if len(quoted) > 0 {
			if _, err := sr.src.Exec(ctx, `LOCK TABLE `+strings.Join(quoted, ", ")+` IN EXCLUSIVE MODE`); err != nil {
				m.rollbackOpen(ctx, sr.src, "split", sr.ID) // its own locks go before the holders are named
				return lockFailed(ctx, sr.Node, sr.sourceDSN, fmt.Sprintf("lock the moved shards' tables (lock_timeout %s)", m.cfg.LockTimeout),
					sr.schemas(), conflictsExclusive, err)
			}
		}
		for i, mv := range sr.moves {
			var qerr error
			m.queueGuard(func(label, sql string, args ...any) {
				if qerr != nil {
					return
				}
				if _, err := sr.src.Exec(ctx, sql, args...); err != nil {
					qerr = fmt.Errorf("%s: %w", label, err)
				}
			}, mv, names[i])
			if qerr != nil {
				return fmt.Errorf("shard %d: %w", mv.Shard, qerr)
			}
		}
		_, err := sr.src.Exec(ctx, `COMMIT`)
		return err
	}()
	var le *lockError
	if errors.As(err, &le) {
		return err // names the node
	} else if err != nil {
		m.rollbackOpen(ctx, sr.src, "split", sr.ID)
		return fmt.Errorf("fence on node %s: %w", sr.Node, err)
	}
	return nil
}

// renewSplitCatalogLeases renews every moved shard's catalog lease in one
// statement (renewCatalogLease for many); one lapsed is errLeaseLost.
func (m *Mover) renewSplitCatalogLeases(ctx context.Context, sr *splitRun) error {
	tag, err := m.cfg.Catalog.Exec(ctx, `UPDATE pgtenant.fence_leases SET expires_at = now() + $3::bigint * interval '1 millisecond'
		WHERE shard = ANY($1) AND move_id = $2 AND expires_at > now()`, sr.Shards, sr.leaseID(), m.cfg.FenceLease.Milliseconds())
	if err != nil {
		return fmt.Errorf("renew the catalog leases: %w", err)
	}
	if tag.RowsAffected() != int64(len(sr.Shards)) {
		return fmt.Errorf("catalog: %w", errLeaseLost)
	}
	return nil
}

// renewSplitSourceLeases renews every moved shard's source lease
// (renewSourceLease) in one node transaction; then, with hold, makes each
// permanent (holdGuard).
func (m *Mover) renewSplitSourceLeases(ctx context.Context, src *pgx.Conn, sr *splitRun, hold bool) error {
	return pgx.BeginFunc(ctx, src, func(tx pgx.Tx) error {
		for _, mv := range sr.moves {
			if err := m.renewSourceLease(ctx, tx.Conn(), mv); err != nil {
				return err
			}
			if hold {
				if err := holdGuard(ctx, tx.Conn(), mv); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// markSplitFenced sets the moved shards 'fenced' on the node and takes
// their catalog leases, in one statement (one map version).
func (m *Mover) markSplitFenced(ctx context.Context, sr *splitRun) error {
	tag, err := m.cfg.Catalog.Exec(ctx, `WITH u AS (UPDATE pgtenant.shards SET state = 'fenced' WHERE id = ANY($1) AND node = $2 AND state = 'active' RETURNING id)
		INSERT INTO pgtenant.fence_leases (shard, move_id, expires_at) SELECT id, $3, now() + $4::bigint * interval '1 millisecond' FROM u
			ON CONFLICT (shard) DO UPDATE SET move_id = excluded.move_id, expires_at = excluded.expires_at`,
		sr.Shards, sr.Node, sr.leaseID(), m.cfg.FenceLease.Milliseconds())
	if err != nil {
		return fmt.Errorf("mark shards fenced: %w", err)
	}
	if tag.RowsAffected() != int64(len(sr.Shards)) {
		return fmt.Errorf("mark shards fenced (%d of %d): %w", tag.RowsAffected(), len(sr.Shards), ErrFlipConflict)
	}
	return nil
}

// waitReplay waits until the follower's replay position is at least lsn,
// for at most MaxWait.
func (m *Mover) waitReplay(ctx context.Context, sr *splitRun, lsn string) error {
	maxWait := sr.Progress.Options.MaxWait
	if maxWait <= 0 {
		maxWait = 30 * time.Second
	}
	wctx, cancel := context.WithTimeout(ctx, maxWait)
	defer cancel()
	f, err := m.follower(wctx, sr)
	if err != nil {
		return err
	}
	var at string
	for {
		var done bool
		err := f.QueryRow(wctx, `SELECT coalesce(pg_last_wal_replay_lsn()::text, '0/0'), coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)`, lsn).Scan(&at, &done)
		if err == nil && done {
			return nil
		}
		if err == nil {
			err = sleep(wctx, 5*time.Millisecond)
		}
		if err != nil {
			if ctx.Err() == nil && wctx.Err() != nil {
				return fmt.Errorf("%w: replayed up to %s, the node is at %s, after --max-wait %v", ErrFollowerLag, at, lsn, maxWait)
			}
			return fmt.Errorf("wait for the follower to replay %s: %w", lsn, err)
		}
	}
}

// makeFenceDurable makes the fence outlive the mover (see the top of
// follower.go): source guards to 'infinity', then in one catalog
// transaction the leases are consumed (they must all be live) and the step
// "promote" recorded.
func (m *Mover) makeFenceDurable(ctx context.Context, sr *splitRun) error {
	// The renewer stops first (a renewal after holdGuard would make the
	// source lease lapse again); the leases are renewed once more here.
	sr.endLeases()
	if err := m.renewSplitCatalogLeases(ctx, sr); err != nil {
		return err
	}
	if err := m.renewSplitSourceLeases(ctx, sr.src, sr, true); err != nil {
		return err
	}
	err := pgx.BeginFunc(ctx, m.cfg.Catalog, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM pgtenant.fence_leases WHERE shard = ANY($1) AND move_id = $2 AND expires_at > now()`, sr.Shards, sr.leaseID())
		if err != nil {
			return err
		}
		if tag.RowsAffected() != int64(len(sr.Shards)) {
			return errLeaseLost
		}
		_, err = tx.Exec(ctx, `UPDATE pgtenant.splits SET step = $2, progress = progress || jsonb_build_object('fence_lsn', $3::text, 'replay_wait_ms', $4::float8),
			updated_at = now() WHERE id = $1`, sr.ID, string(StepPromote), sr.Progress.FenceLSN, sr.Progress.ReplayWaitMS)
		return err
	})
	if err != nil {
		return fmt.Errorf("make the fence durable before the promotion: %w", err)
	}
	sr.Step, sr.durable = StepPromote, true
	return m.splitHook(ctx, sr, StepPromote)
}

// promoteFollower promotes the follower once it replayed past the node's
// current position (the moved half takes no writes since the fence), unless
// it already left recovery.
func (m *Mover) promoteFollower(ctx context.Context, sr *splitRun, res *SplitResult) error {
	if sr.Progress.PromotedID == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		b[6], b[8] = b[6]&0x0f|0x40, b[8]&0x3f|0x80
		sr.Progress.PromotedID = fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
		if err := m.saveSplit(ctx, sr); err != nil {
			return err
		}
	}
	f, err := m.follower(ctx, sr)
	if err != nil {
		return err
	}
	var recovery bool
	if err := f.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&recovery); err != nil {
		return fmt.Errorf("check the follower: %w", err)
	}
	t := time.Now()
	if recovery {
		if sr.resuming {
			// The node's position now: its moved half has been frozen since the fence.
			var lsn string
			if err := sr.src.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&lsn); err != nil {
				return fmt.Errorf("read the node's WAL position: %w", err)
			}
			if err := m.waitReplay(ctx, sr, lsn); err != nil {
				return err
			}
		}
		timeout := sr.Progress.Options.PromoteTimeout
		if timeout <= 0 {
			timeout = time.Minute
		}
		pctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
		defer cancel()
		if cmd := sr.Progress.Options.PromoteCommand; cmd != "" {
			c := exec.CommandContext(pctx, "sh", "-c", cmd)
			c.Env = append(os.Environ(), "PGTENANT_NODE="+sr.Node, "PGTENANT_NEW_NODE="+sr.NewNode, "PGTENANT_SPLIT="+strconv.FormatInt(sr.ID, 10))
			if out, err := c.CombinedOutput(); err != nil {
				return fmt.Errorf("promote command %q: %w: %s", cmd, err, out)
			}
		} else {
			var ok bool
			if err := f.QueryRow(pctx, `SELECT pg_promote(true, $1)`, int(timeout.Seconds())).Scan(&ok); err != nil {
				return fmt.Errorf("pg_promote() on the follower (needs a superuser or GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO the node role; or use --promote-command): %w", err)
			}
			if !ok {
				return fmt.Errorf("pg_promote() on the follower did not finish within %v", timeout)
			}
		}
		// Wait until it takes writes (a hosted service may restart it: new connections).
		for {
			f2, err := m.follower(pctx, sr)
			if err == nil {
				if err = f2.QueryRow(pctx, `SELECT pg_is_in_recovery()`).Scan(&recovery); err != nil {
					sr.dropFollower()
				} else if !recovery {
					break
				}
			}
			if err := sleep(pctx, 20*time.Millisecond); err != nil {
				return fmt.Errorf("wait for the follower to leave recovery: %w", err)
			}
		}
	}
	sr.Progress.Promoted = true
	if sr.Progress.PromoteMS == 0 {
		sr.Progress.PromoteMS = float64(time.Since(t).Microseconds()) / 1000
	}
	res.Promote = time.Since(t)
	m.log.Info("follower promoted", "split", sr.ID, "took", res.Promote)
	return m.saveSplit(ctx, sr)
}

// adoptFollower makes the promoted follower a node: its promoted identity,
// the copied fence removed from its moved shards (the node's guards came
// along with the WAL and would refuse writes there), the copied markers
// deleted, and its registration (skipped when done).
func (m *Mover) adoptFollower(ctx context.Context, sr *splitRun) error {
	if err := m.checkFollower(ctx, sr, false); err != nil {
		return err
	}
	f, err := m.follower(ctx, sr)
	if err != nil {
		return err
	}
	if err := catalog.MarkPromoted(ctx, f, sr.Progress.PromotedID); err != nil {
		return err
	}
	// The guard rows came with the WAL (permanent): without them the
	// triggers are inert; cleanup drops those after the pause.
	if _, err := f.Exec(ctx, `DELETE FROM pgtenant_move.fence WHERE move_id = $1 AND schema_name = ANY($2)`, sr.leaseID(), sr.schemas()); err != nil {
		return fmt.Errorf("new node: release the copied fence: %w", err)
	}
	var registered bool
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pgtenant.nodes WHERE name = $1)`, sr.NewNode).Scan(&registered); err != nil {
		return fmt.Errorf("read nodes: %w", err)
	}
	if !registered {
		if sr.register == nil {
			return errors.New("no Register function to register the new node")
		}
		id, err := catalog.NodeIdentity(ctx, f)
		if err != nil {
			return fmt.Errorf("new node: %w", err)
		}
		if err := sr.register(ctx, sr.NewNode, sr.FollowerDSN, id); err != nil {
			return fmt.Errorf("register the promoted follower as node %s: %w", sr.NewNode, err)
		}
	}
	sr.Progress.Registered = true
	return m.saveSplit(ctx, sr)
}

// flipSplit moves the whole moved half to the new node in one catalog
// transaction (compare-and-swap on node and state, epoch + 1), recording
// the step "flipped". An unknown commit outcome is read back.
func (m *Mover) flipSplit(ctx context.Context, sr *splitRun) error {
	err := pgx.BeginFunc(ctx, m.cfg.Catalog, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM pgtenant.fence_leases WHERE shard = ANY($1)`, sr.Shards); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `UPDATE pgtenant.shards SET node = $3, epoch = epoch + 1, state = 'active'
			WHERE id = ANY($1) AND node = $2 AND state = 'fenced'`, sr.Shards, sr.Node, sr.NewNode)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != int64(len(sr.Shards)) {
			return fmt.Errorf("%d of %d shards still fenced on %s: %w", tag.RowsAffected(), len(sr.Shards), sr.Node, ErrFlipConflict)
		}
		_, err = tx.Exec(ctx, `UPDATE pgtenant.splits SET step = $2, updated_at = now() WHERE id = $1`, sr.ID, string(StepFlipped))
		return err
	})
	if err != nil && !errors.Is(err, ErrFlipConflict) {
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		for i := 0; i < 20 && qctx.Err() == nil; i++ {
			if flipped, ferr := m.splitFlipped(qctx, sr); ferr == nil {
				if flipped {
					err = nil
				}
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err != nil {
		return fmt.Errorf("flip shards %v to %s: %w", sr.Shards, sr.NewNode, err)
	}
	sr.Step = StepFlipped
	return nil
}

// cleanupSplit drops the moved half's schemas (and their fence rows and
// markers) from the old node and the kept half's schemas and retired copies
// from the new node; what the catalog does not place as expected is left
// alone. Idempotent.
func (m *Mover) cleanupSplit(ctx context.Context, sr *splitRun) error {
	var errs []error
	drop := func(conn *pgx.Conn, node, schema string) {
		ok, err := schemaExists(ctx, conn, schema)
		if err == nil && ok {
			err = pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '5s'`); err != nil {
					return err
				}
				_, err := tx.Exec(ctx, `DROP SCHEMA `+ident(schema)+` CASCADE`)
				return err
			})
			if err == nil {
				sr.Progress.Dropped = append(sr.Progress.Dropped, node+"."+schema)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("drop %s on %s: %w", schema, node, err))
		}
	}
	placed := map[int]string{}
	rows, err := m.cfg.Catalog.Query(ctx, `SELECT id, node FROM pgtenant.shards WHERE id = ANY($1) OR id = ANY($2)`, sr.Shards, sr.Progress.Kept)
	if err != nil {
		return fmt.Errorf("read shards: %w", err)
	}
	for rows.Next() {
		var id int
		var node string
		if err := rows.Scan(&id, &node); err != nil {
			rows.Close()
			return fmt.Errorf("read shards: %w", err)
		}
		placed[id] = node
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read shards: %w", err)
	}
	if src, err := connect(ctx, sr.sourceDSN, "node "+sr.Node); err != nil {
		errs = append(errs, err)
	} else {
		for _, mv := range sr.moves {
			if placed[mv.Shard] == sr.NewNode {
				drop(src, sr.Node, mv.Schema)
			}
			if _, err := src.Exec(ctx, `DELETE FROM pgtenant_move.fence WHERE schema_name = $1 AND move_id = $2`, mv.Schema, sr.leaseID()); err != nil && !isUndefined(err) {
				errs = append(errs, fmt.Errorf("release the guard of %s: %w", mv.Schema, err))
			}
		}
		if _, err := src.Exec(ctx, `DELETE FROM pgtenant_move.marker WHERE move_id = $1`, sr.leaseID()); err != nil && !isUndefined(err) {
			errs = append(errs, fmt.Errorf("delete markers: %w", err))
		}
		src.Close(context.WithoutCancel(ctx))
	}
	if dst, err := connect(ctx, sr.followerDSN, "node "+sr.NewNode); err != nil {
		errs = append(errs, err)
	} else {
		for _, mv := range sr.moves {
			if err := m.disarmGuard(ctx, dst, mv); err != nil {
				errs = append(errs, fmt.Errorf("new node: shard %d: %w", mv.Shard, err))
			}
		}
		for _, id := range sr.Progress.Kept {
			if placed[id] != sr.NewNode {
				drop(dst, sr.NewNode, sr.kept[id])
			}
		}
		for _, schema := range sr.Progress.RetiredCopies {
			drop(dst, sr.NewNode, schema)
		}
		dst.Close(context.WithoutCancel(ctx))
	}
	sr.Progress.CleanupPending = len(errs) > 0
	sr.Progress.CleanupError = ""
	if err := errors.Join(errs...); err != nil {
		sr.Progress.CleanupError = err.Error()
	}
	if err := m.saveSplit(ctx, sr); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// cleanupSplits redoes the cleanup of done splits whose cleanup did not
// finish (called by Cleanup).
func (m *Mover) cleanupSplits(ctx context.Context) ([]string, error) {
	var present bool
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT to_regclass('pgtenant.splits') IS NOT NULL`).Scan(&present); err != nil || !present {
		return nil, err
	}
	rows, err := m.cfg.Catalog.Query(ctx, `SELECT id FROM pgtenant.splits WHERE status = 'done' AND (progress->>'cleanup_pending')::boolean ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list splits: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("list splits: %w", err)
	}
	var dropped []string
	var errs []error
	for _, id := range ids {
		sr, err := m.loadSplit(ctx, id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		before := len(sr.Progress.Dropped)
		if err := m.cleanupSplit(ctx, sr); err != nil {
			errs = append(errs, fmt.Errorf("split %d: %w", id, err))
		}
		dropped = append(dropped, sr.Progress.Dropped[before:]...)
		sr.close()
	}
	return dropped, errors.Join(errs...)
}

// splitLeases renews a split's leases every FenceLease/5: the catalog's of
// every moved shard in one statement and, once armed, their source leases
// in one node transaction (renewSourceLease, shard after shard).
type splitLeases struct {
	stop context.CancelFunc
	done chan struct{}
	src  chan *pgx.Conn
}

func (m *Mover) renewSplitLeases(ctx context.Context, sr *splitRun, cancel context.CancelCauseFunc) *splitLeases {
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	l := &splitLeases{stop: stop, done: make(chan struct{}), src: make(chan *pgx.Conn, 1)}
	every := m.cfg.FenceLease / 5
	go func() {
		defer close(l.done)
		t := time.NewTicker(every)
		defer t.Stop()
		var src *pgx.Conn
		for {
			select {
			case <-rctx.Done():
				return
			case src = <-l.src:
				continue
			case <-t.C:
			}
			octx, ocancel := context.WithTimeout(rctx, max(every, time.Second))
			// The catalog first: the source leases are extended only while the catalog's are.
			err := m.renewSplitCatalogLeases(octx, sr)
			if err == nil && src != nil {
				err = m.renewSplitSourceLeases(octx, src, sr, false)
			}
			ocancel()
			if err != nil && rctx.Err() == nil {
				m.log.Warn("fence lease renewal failed", "split", sr.ID, "err", err)
				if errors.Is(err, errLeaseLost) {
					cancel(err)
					return
				}
			}
		}
	}()
	return l
}

func (l *splitLeases) arm(src *pgx.Conn) { l.src <- src }

func (l *splitLeases) close() {
	l.stop()
	<-l.done
}
