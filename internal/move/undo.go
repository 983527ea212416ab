package move

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/pgtenant/pgtenant/internal/stream"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// undoFlip puts a flipped shard back on its source after a failed
// verification (see verifyafter.go), replaying on the source the writes
// the target took since the flip, then finishes the move as aborted. It is
// idempotent: a resumed undo fences again and replays what the source has
// not recorded as replayed.
func (m *Mover) undoFlip(ctx context.Context, mv *moveRun) error {
	// The source is frozen since the fence: the stream has nothing left to
	// bring, and it must not write into a target schema about to be dropped.
	stopStream(mv)
	flipped, err := m.isFlipped(ctx, mv)
	if err != nil {
		return err
	}
	if flipped {
		if err := m.fenceBack(ctx, mv); err != nil {
			return err
		}
	}
	return m.finishUndo(ctx, mv)
}

// fenceBack fences the shard on the target, replays the capture log on the
// source and flips the shard back. The pause is recorded as the undo's.
func (m *Mover) fenceBack(ctx context.Context, mv *moveRun) error {
	src, dst, names, err := m.endpoints(ctx, mv)
	if err != nil {
		return err
	}
	// The lease on the target (a guard like the source's under a fence) is renewed on its own connection.
	leaseConn, err := connect(ctx, mv.TargetDSN, "target node "+mv.Target)
	if err != nil {
		return err
	}
	defer leaseConn.Close(context.WithoutCancel(ctx))
	back := *mv
	back.Source, back.Target = mv.Target, mv.Source
	back.SourceDSN, back.TargetDSN = mv.TargetDSN, mv.SourceDSN
	back.src, back.dst = mv.dst, mv.src
	// The fence's transaction on the target starts before the pause (fencelock.go).
	if err := m.beginPreLocked(ctx, dst, &back, back.Source, back.SourceDSN, names); err != nil {
		return fmt.Errorf("fence on target: %w", err)
	}
	t0 := time.Now()
	tctx, cancel := context.WithTimeout(ctx, m.cfg.FenceTimeout)
	defer cancel()
	fctx, cancelCause := context.WithCancelCause(tctx)
	defer cancelCause(nil)
	err = func() error {
		if err := m.markFenced(fctx, &back); err != nil {
			return err
		}
		lease := m.renewLeases(fctx, &back, cancelCause)
		defer lease.close()
		if err := m.fenceRouters(fctx, &back); err != nil {
			return fmt.Errorf("fence shard in routers: %w", err)
		}
		// The target now plays the source: locked, guarded, leased.
		if _, err := m.lockAndMark(fctx, &back, dst, names); err != nil {
			return err
		}
		lease.arm(leaseConn)
		if err := m.replayCaptured(fctx, mv, src, dst); err != nil {
			return err
		}
		if err := syncSequences(fctx, dst, src, mv.Schema); err != nil {
			return err
		}
		if err := m.renewSourceLease(fctx, dst, &back); err != nil {
			return err
		}
		if err := m.flipBack(fctx, mv); err != nil {
			return err
		}
		lease.close()
		return nil
	}()
	m.rollbackOpen(ctx, dst, "move", mv.ID, "shard", mv.Shard) // a failure before the locking round trip
	bg, cancelBg := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancelBg()
	if err != nil {
		if flipped, ferr := m.isFlipped(bg, mv); ferr == nil && flipped {
			// Still on the target: release it there (the target's guard lapses with its lease).
			if uerr := m.retryUnfence(bg, &back); uerr != nil {
				err = errors.Join(err, uerr)
			}
		}
		return err
	}
	uerr := m.cfg.Fencer.Unfence(bg, mv.Shard)
	pause := time.Since(t0)
	mv.Progress.UndoPauseMS = float64(pause.Microseconds()) / 1000
	m.log.Warn("flip undone: the shard is back on its source", "move", mv.ID, "shard", mv.Shard, "node", mv.Source, "pause", pause)
	if uerr != nil {
		return fmt.Errorf("release fence after flipping back: %w", uerr)
	}
	return m.saveProgress(bg, mv)
}

// flipBack is flip in reverse: one catalog transaction puts the fenced shard
// back on the source, consuming the undo's lease.
func (m *Mover) flipBack(ctx context.Context, mv *moveRun) error {
	err := pgx.BeginFunc(ctx, m.cfg.Catalog, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM pgtenant.fence_leases WHERE shard = $1 AND move_id = $2 AND expires_at > now()`, mv.Shard, mv.ID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return fmt.Errorf("%w: %w", ErrFlipConflict, errLeaseLost)
		}
		tag, err = tx.Exec(ctx, `UPDATE pgtenant.shards SET node = $2, epoch = epoch + 1, state = 'active'
			WHERE id = $1 AND node = $3 AND state = 'fenced'`, mv.Shard, mv.Source, mv.Target)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return ErrFlipConflict
		}
		return nil // the shards table's trigger notifies the routers
	})
	if err != nil && !errors.Is(err, ErrFlipConflict) {
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if flipped, ferr := m.isFlipped(qctx, mv); ferr == nil && !flipped {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("flip shard %d back to %s: %w", mv.Shard, mv.Source, err)
	}
	return nil
}

// replayCaptured applies the target's captured writes to the source in one
// transaction, in the order they were made, after those already replayed
// (pgtenant_move.undo_done on the source, written in the same transaction).
// The transaction also lifts the source's guard, which the retired copy
// kept since the flip.
func (m *Mover) replayCaptured(ctx context.Context, mv *moveRun, src, dst *pgx.Conn) error {
	if err := ensureMarker(ctx, src); err != nil {
		return fmt.Errorf("source: %w", err)
	}
	var done int64
	if err := src.QueryRow(ctx, `SELECT coalesce((SELECT upto FROM pgtenant_move.undo_done WHERE move_id = $1), 0)`, mv.ID).Scan(&done); err != nil {
		return fmt.Errorf("read replayed position: %w", err)
	}
	type change struct {
		seq      int64
		tbl      string
		op       string
		old, new []byte
	}
	rows, err := dst.Query(ctx, `SELECT seq, tbl, op::text, old, new FROM pgtenant_move.undo_log WHERE move_id = $1 AND seq > $2 ORDER BY seq`, mv.ID, done)
	if err != nil {
		return fmt.Errorf("read the capture log: %w", err)
	}
	changes, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (change, error) {
		var c change
		err := r.Scan(&c.seq, &c.tbl, &c.op, &c.old, &c.new)
		return c, err
	})
	if err != nil {
		return fmt.Errorf("read the capture log: %w", err)
	}
	shapes := map[string]*tableShape{}
	err = pgx.BeginFunc(ctx, src, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM pgtenant_move.fence WHERE schema_name = $1`, mv.Schema); err != nil {
			return fmt.Errorf("lift the source's guard: %w", err)
		}
		// The target's triggers already ran for these rows: replay as the
		// apply worker would, without user triggers, where the role may.
		if _, err := tx.Exec(ctx, `SAVEPOINT r; SET LOCAL session_replication_role = replica; RELEASE r`); err != nil {
			if _, rerr := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT r`); rerr != nil {
				return rerr
			}
			m.log.Warn("replaying on the source with user triggers on (session_replication_role needs a superuser)", "move", mv.ID, "err", err)
		}
		// One pipeline: the changes reach the source in one round trip.
		last := done
		b := &pgx.Batch{}
		for _, c := range changes {
			sh := shapes[c.tbl]
			if sh == nil {
				if sh, err = readShape(ctx, tx, mv.Schema, c.tbl); err != nil {
					return err
				}
				shapes[c.tbl] = sh
			}
			q, args, err := sh.statement(c.op, c.old, c.new)
			if err != nil {
				return fmt.Errorf("replay change %d on %s: %w", c.seq, c.tbl, err)
			}
			b.Queue(q, args...)
			last = c.seq
		}
		br := tx.SendBatch(ctx, b)
		for _, c := range changes {
			if _, err := br.Exec(); err != nil {
				br.Close()
				return fmt.Errorf("replay change %d (%s on %s): %w", c.seq, c.op, c.tbl, err)
			}
		}
		if err := br.Close(); err != nil {
			return fmt.Errorf("replay the changes: %w", err)
		}
		_, err := tx.Exec(ctx, `INSERT INTO pgtenant_move.undo_done (move_id, upto) VALUES ($1, $2)
			ON CONFLICT (move_id) DO UPDATE SET upto = excluded.upto`, mv.ID, last)
		return err
	})
	if err != nil {
		return fmt.Errorf("replay the target's writes on the source: %w", err)
	}
	m.log.Info("replayed the target's writes on the source", "move", mv.ID, "shard", mv.Shard, "changes", len(changes))
	return nil
}

// tableShape is what replaying a row change needs to know of a table.
type tableShape struct {
	name    string   // qualified, quoted
	cols    []string // quoted columns that take values (not generated)
	setCols []string // quoted columns an UPDATE may set (not generated, not identity ALWAYS)
	key     []string // quoted key columns (primary key, replica identity index); nil: the whole row
}

func readShape(ctx context.Context, tx pgx.Tx, schema, table string) (*tableShape, error) {
	sh := &tableShape{name: ident(schema, table)}
	rows, err := tx.Query(ctx, `SELECT quote_ident(a.attname), a.attidentity::text, a.attgenerated::text,
		coalesce(a.attnum = ANY ((SELECT i.indkey FROM pg_index i WHERE i.indrelid = c.oid AND
			(i.indisprimary OR (c.relreplident = 'i' AND i.indisreplident)) ORDER BY i.indisreplident DESC LIMIT 1)::int2[]), false)
		FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
		WHERE c.oid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum`, sh.name)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	var name, identity, generated string
	var key bool
	if _, err := pgx.ForEachRow(rows, []any{&name, &identity, &generated, &key}, func() error {
		if generated == "" {
			sh.cols = append(sh.cols, name)
			if identity != "a" {
				sh.setCols = append(sh.setCols, name)
			}
		}
		if key {
			sh.key = append(sh.key, name)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	return sh, nil
}

// match is the condition that finds the row r (a jsonb_populate_record alias) in t.
func (sh *tableShape) match(r string) string {
	var conds []string
	if len(sh.key) > 0 {
		for _, k := range sh.key {
			conds = append(conds, "t."+k+" = "+r+"."+k)
		}
		return strings.Join(conds, " AND ")
	}
	for _, c := range sh.cols {
		conds = append(conds, "t."+c+" IS NOT DISTINCT FROM "+r+"."+c)
	}
	return "t.ctid = (SELECT t.ctid FROM " + sh.name + " t WHERE " + strings.Join(conds, " AND ") + " LIMIT 1)"
}

// upsert inserts the row $1 (jsonb); where the source has a row with its
// key already (it differed from the target's), the target's version wins.
func (sh *tableShape) upsert() string {
	cols := strings.Join(sh.cols, ", ")
	q := `INSERT INTO ` + sh.name + ` (` + cols + `) OVERRIDING SYSTEM VALUE SELECT ` + cols + ` FROM jsonb_populate_record(NULL::` + sh.name + `, $1)`
	if len(sh.key) == 0 || len(sh.setCols) == 0 {
		return q
	}
	ex := make([]string, len(sh.setCols))
	for i, c := range sh.setCols {
		ex[i] = "excluded." + c
	}
	return q + ` ON CONFLICT (` + strings.Join(sh.key, ", ") + `) DO UPDATE SET (` + strings.Join(sh.setCols, ", ") + `) = ROW(` + strings.Join(ex, ", ") + `)`
}

// statement returns the SQL (and its arguments) that replays one change.
// Where the rows differed on the two sides (what verification found), the
// target's version of the change wins, as the client saw it: an update of a
// row the source lacks inserts it, an insert of a key the source has
// overwrites it.
func (sh *tableShape) statement(op string, old, new json.RawMessage) (string, []any, error) {
	switch op {
	case "I":
		return sh.upsert(), []any{string(new)}, nil
	case "D":
		return `DELETE FROM ` + sh.name + ` t USING jsonb_populate_record(NULL::` + sh.name + `, $1) o WHERE ` + sh.match("o"), []any{string(old)}, nil
	case "U":
		set := strings.Join(sh.setCols, ", ")
		cols := strings.Join(sh.cols, ", ")
		q := `WITH u AS (UPDATE ` + sh.name + ` t SET (` + set + `) = (SELECT ` + set + ` FROM jsonb_populate_record(NULL::` + sh.name + `, $2))
			FROM jsonb_populate_record(NULL::` + sh.name + `, $1) o WHERE ` + sh.match("o") + ` RETURNING 1)
			INSERT INTO ` + sh.name + ` (` + cols + `) OVERRIDING SYSTEM VALUE SELECT ` + cols + ` FROM jsonb_populate_record(NULL::` + sh.name + `, $2)
			WHERE NOT EXISTS (SELECT 1 FROM u)`
		return q, []any{string(old), string(new)}, nil
	case "T":
		return `TRUNCATE ` + sh.name, nil, nil
	}
	return "", nil, fmt.Errorf("unknown change %q", op)
}

// finishUndo, with the shard back on the source, drops what the move made
// (subscription, target schema, publication, slots, guards) and records the
// move as aborted with the verification's error.
func (m *Mover) finishUndo(ctx context.Context, mv *moveRun) error {
	cause := errors.New(mv.Progress.Undo)
	var errs []error
	if dst, err := m.target(ctx, mv); err != nil {
		errs = append(errs, err)
	} else {
		if err := m.dropSubscription(ctx, dst, mv); err != nil {
			errs = append(errs, err)
		}
		if _, err := dst.Exec(ctx, `DROP SCHEMA IF EXISTS `+ident(mv.Schema)+` CASCADE`); err != nil {
			errs = append(errs, fmt.Errorf("drop target schema: %w", err))
		}
		for _, q := range []string{`DELETE FROM pgtenant_move.marker WHERE move_id = $1`, `DELETE FROM pgtenant_move.undo_log WHERE move_id = $1`,
			`DELETE FROM pgtenant_move.capture WHERE move_id = $1`} {
			if _, err := dst.Exec(ctx, q, mv.ID); err != nil && !isUndefined(err) {
				errs = append(errs, fmt.Errorf("clean the target: %w", err))
			}
		}
		if _, err := dst.Exec(ctx, `DELETE FROM pgtenant_move.fence WHERE schema_name = $1 AND move_id = $2`, mv.Schema, mv.ID); err != nil && !isUndefined(err) {
			errs = append(errs, fmt.Errorf("release the target's guard: %w", err))
		}
		if err := stream.DeletePosition(ctx, dst, repName(mv)); err != nil {
			errs = append(errs, fmt.Errorf("target: %w", err))
		}
	}
	if src, err := m.source(ctx, mv); err != nil {
		errs = append(errs, err)
	} else {
		if err := m.disarmGuard(ctx, src, mv); err != nil {
			errs = append(errs, err)
		}
		if err := dropSourceObjects(ctx, src, mv); err != nil {
			errs = append(errs, err)
		}
		if _, err := src.Exec(ctx, `DELETE FROM pgtenant_move.undo_done WHERE move_id = $1`, mv.ID); err != nil && !isUndefined(err) {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	return m.finish(ctx, mv, "aborted", fmt.Errorf("%w; the flip was undone, the shard is on %s with every write", cause, mv.Source))
}
