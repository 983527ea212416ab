package move

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// cleanupMove runs after the flip: drop the subscription (target), the
// publication, slots and marker rows (source), then rename the source schema
// (or drop it with DropSource). Every part is idempotent. If the source is
// unreachable the subscription is still dropped on the target (its slot is
// recorded as orphaned) and the error keeps the move running for Resume.
func (m *Mover) cleanupMove(ctx context.Context, mv *moveRun) error {
	stopStream(mv)
	dst, err := m.target(ctx, mv)
	if err != nil {
		return err
	}
	src, srcErr := m.source(ctx, mv)
	if srcErr == nil {
		// A mover that died right after the flip left the source lease to lapse.
		if err := holdGuard(ctx, src, mv); err != nil {
			return err
		}
	}
	// Drop the slot only once what the target applied is durable there, so
	// a target crash right after the move cannot lose it (see flushTarget).
	if err := flushTarget(ctx, dst); err != nil {
		return err
	}
	if err := m.dropSubscription(ctx, dst, mv); err != nil {
		return err
	}
	if _, err := dst.Exec(ctx, `DELETE FROM pgtenant_move.marker WHERE move_id = $1`, mv.ID); err != nil && !isUndefined(err) {
		return fmt.Errorf("delete target markers: %w", err)
	}
	if err := stream.DeletePosition(ctx, dst, repName(mv)); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	if srcErr != nil {
		if mv.Method == MethodLogical && !mv.Progress.OrphanSlot {
			mv.Progress.OrphanSlot = true // the slot on the unreachable source is dropped later
			if err := m.saveProgress(ctx, mv); err != nil {
				return errors.Join(srcErr, err)
			}
		}
		return srcErr
	}
	if err := dropSourceObjects(ctx, src, mv); err != nil {
		return err
	}
	if err := m.dropCapture(ctx, src, mv); err != nil {
		return err
	}
	if err := forgetApplied(ctx, dst, mv); err != nil {
		return err
	}
	if mv.Progress.OrphanSlot {
		mv.Progress.OrphanSlot = false
		if err := m.saveProgress(ctx, mv); err != nil {
			return err
		}
	}
	return m.retireSourceSchema(ctx, src, mv)
}

// flushTarget makes everything the target applied so far durable
// (stream.Flush: a transaction that wrote WAL, committed with
// synchronous_commit on). The fence's marker was applied before the flip,
// so this covers the shard.
func flushTarget(ctx context.Context, dst *pgx.Conn) error {
	if _, err := stream.Flush(ctx, dst); err != nil {
		return fmt.Errorf("flush the target: %w", err)
	}
	return nil
}

// dropSubscription drops the move's subscription on the target. When the
// source cannot be reached to drop the slot, the subscription is detached from
// its slot first (disable, slot_name = NONE) and the slot is recorded as orphaned.
func (m *Mover) dropSubscription(ctx context.Context, dst *pgx.Conn, mv *moveRun) error {
	oid, err := subOID(ctx, dst, repName(mv))
	if err != nil {
		return fmt.Errorf("check subscription: %w", err)
	}
	if oid == 0 {
		return nil
	}
	name := ident(repName(mv))
	if _, err := dst.Exec(ctx, `DROP SUBSCRIPTION IF EXISTS `+name); err == nil {
		return nil
	} else {
		m.log.Warn("drop subscription failed; detaching it from its slot", "move", mv.ID, "err", err)
	}
	for _, q := range []string{`ALTER SUBSCRIPTION ` + name + ` DISABLE`, `ALTER SUBSCRIPTION ` + name + ` SET (slot_name = NONE)`, `DROP SUBSCRIPTION ` + name} {
		if _, err := dst.Exec(ctx, q); err != nil {
			return fmt.Errorf("drop subscription: %w", err)
		}
	}
	mv.Progress.OrphanSlot = true
	return m.saveProgress(ctx, mv)
}

// dropSourceObjects drops the move's publication, slots and marker rows on the source.
func dropSourceObjects(ctx context.Context, src *pgx.Conn, mv *moveRun) error {
	if err := dropPublication(ctx, src, repName(mv)); err != nil {
		return err
	}
	if err := dropSlots(ctx, src, mv); err != nil {
		return err
	}
	if _, err := src.Exec(ctx, `DELETE FROM pgtenant_move.marker WHERE move_id = $1`, mv.ID); err != nil && !isUndefined(err) {
		return fmt.Errorf("delete source markers: %w", err)
	}
	return nil
}

// dropSlots drops the move's slot and its table-sync slots on the source,
// ending the WAL senders still attached to them.
func dropSlots(ctx context.Context, src *pgx.Conn, mv *moveRun) error {
	pattern := ""
	if mv.Progress.SubOID != 0 {
		pattern = fmt.Sprintf(`pg\_%d\_sync\_%%`, mv.Progress.SubOID)
	}
	for attempt := 0; ; attempt++ {
		rows, err := src.Query(ctx, `SELECT slot_name::text, active_pid FROM pg_replication_slots
			WHERE slot_name = $1 OR ($2 <> '' AND slot_name LIKE $2)`, repName(mv), pattern)
		if err != nil {
			return fmt.Errorf("list slots: %w", err)
		}
		type slot struct {
			name string
			pid  *int32
		}
		slots, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (slot, error) {
			var s slot
			err := r.Scan(&s.name, &s.pid)
			return s, err
		})
		if err != nil {
			return fmt.Errorf("list slots: %w", err)
		}
		if len(slots) == 0 {
			return nil
		}
		var lastErr error
		for _, s := range slots {
			if s.pid != nil {
				_, _ = src.Exec(ctx, `SELECT pg_terminate_backend($1)`, *s.pid)
				continue
			}
			if _, err := src.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, s.name); err != nil {
				lastErr = err
			}
		}
		if attempt >= 55 {
			return fmt.Errorf("drop replication slots: still present: %v (last error: %w)", slots[0].name, lastErr)
		}
		// A WAL sender just told to end is usually gone within milliseconds:
		// wait 10 ms first, doubling up to 100 ms (about 5 s in all).
		if err := sleep(ctx, min(10*time.Millisecond<<min(attempt, 4), 100*time.Millisecond)); err != nil {
			return fmt.Errorf("drop replication slots: %w", err)
		}
	}
}

// retireSourceSchema renames the source schema to <schema>_moved_<id>, or drops it.
func (m *Mover) retireSourceSchema(ctx context.Context, src *pgx.Conn, mv *moveRun) error {
	ok, err := schemaExists(ctx, src, mv.Schema)
	if err != nil {
		return fmt.Errorf("check source schema: %w", err)
	}
	if !ok {
		return nil
	}
	return pgx.BeginFunc(ctx, src, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, fmt.Sprintf(`SET LOCAL lock_timeout = '%dms'`, max(m.cfg.LockTimeout.Milliseconds(), 5000))); err != nil {
			return err
		}
		q := `ALTER SCHEMA ` + ident(mv.Schema) + ` RENAME TO ` + ident(movedName(mv))
		if mv.Progress.Options.DropSource {
			q = `DROP SCHEMA ` + ident(mv.Schema) + ` CASCADE`
		} else if err := revokeRetired(ctx, tx, mv.Schema); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("retire source schema: %w", err)
		}
		// The lease row names the schema: a later move of the shard back here must not find it.
		if _, err := tx.Exec(ctx, `DO $$ BEGIN IF to_regclass('pgtenant_move.fence') IS NOT NULL THEN
			DELETE FROM pgtenant_move.fence WHERE schema_name = `+quoteLiteral(mv.Schema)+`; END IF; END $$`); err != nil {
			return fmt.Errorf("release the source lease: %w", err)
		}
		return nil
	})
}

// abort rolls a move back before its flip and records it as aborted (or
// failed, when something could not be undone; Abort can then be run again).
func (m *Mover) abort(ctx context.Context, mv *moveRun, cause error) error {
	defer closeConns(mv)
	m.log.Warn("aborting move", "move", mv.ID, "shard", mv.Shard, "step", mv.Step, "cause", cause)
	// Never undo a move whose flip may have happened: the target is then the shard's home.
	if flipped, err := m.isFlipped(ctx, mv); err != nil {
		return fmt.Errorf("cannot read the shard's placement, nothing undone (abort again later): %w", err)
	} else if flipped {
		return ErrFlipped
	}
	var errs []error
	if err := m.unfence(ctx, mv); err != nil {
		errs = append(errs, err)
	}
	if dst, err := m.target(ctx, mv); err != nil {
		errs = append(errs, err)
	} else {
		if err := m.dropSubscription(ctx, dst, mv); err != nil {
			errs = append(errs, err)
		}
		if mv.Step != StepStart {
			// The pre-checks made sure the schema did not exist on the target before the move.
			if _, err := dst.Exec(ctx, `DROP SCHEMA IF EXISTS `+ident(mv.Schema)+` CASCADE`); err != nil {
				errs = append(errs, fmt.Errorf("drop target schema: %w", err))
			}
		}
		for _, q := range []string{`DELETE FROM pgtenant_move.marker WHERE move_id = $1`, `DELETE FROM pgtenant_move.capture WHERE move_id = $1`} {
			if _, err := dst.Exec(ctx, q, mv.ID); err != nil && !isUndefined(err) {
				errs = append(errs, fmt.Errorf("delete target markers: %w", err))
			}
		}
		if err := stream.DeletePosition(ctx, dst, repName(mv)); err != nil {
			errs = append(errs, fmt.Errorf("target: %w", err))
		}
		if err := forgetApplied(ctx, dst, mv); err != nil {
			errs = append(errs, err)
		}
	}
	if src, err := m.source(ctx, mv); err != nil {
		errs = append(errs, err)
	} else {
		if err := dropSourceObjects(ctx, src, mv); err != nil {
			errs = append(errs, err)
		}
		if err := m.dropCapture(ctx, src, mv); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		err := errors.Join(errs...)
		if ferr := m.finish(ctx, mv, "failed", fmt.Errorf("%v; abort incomplete, run abort again: %w", cause, err)); ferr != nil {
			return errors.Join(err, ferr)
		}
		return err
	}
	if mv.Progress.OrphanSlot {
		mv.Progress.OrphanSlot = false
	}
	return m.finish(ctx, mv, "aborted", cause)
}

// Cleanup drops what finished moves left on their source nodes: the renamed
// old schemas of done moves, slots orphaned while a source was down, and
// change queues (with their triggers) of trigger-method moves. It
// returns the schemas it dropped, as node.schema.
func (m *Mover) Cleanup(ctx context.Context) ([]string, error) {
	moves, err := m.List(ctx)
	if err != nil {
		return nil, err
	}
	var dropped []string
	var errs []error
	for _, in := range moves {
		leftQueue := in.Method == MethodTrigger && in.Status != "running" // an abort that could not drop it
		if in.Status == "running" || (in.Status != "done" && !in.Progress.OrphanSlot && !leftQueue) {
			continue
		}
		mv, err := m.loadMove(ctx, in.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		src, err := m.source(ctx, mv)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if in.Progress.OrphanSlot {
			if err := dropSlots(ctx, src, mv); err != nil {
				errs = append(errs, err)
			} else {
				mv.Progress.OrphanSlot = false
				if err := m.saveProgress(ctx, mv); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if leftQueue {
			if ok, err := schemaExists(ctx, src, captureSchema(mv)); err != nil {
				errs = append(errs, err)
			} else if ok {
				if err := m.dropCapture(ctx, src, mv); err != nil {
					errs = append(errs, err)
				} else {
					dropped = append(dropped, mv.Source+"."+captureSchema(mv))
				}
			}
		}
		if in.Status == "done" {
			if ok, err := schemaExists(ctx, src, movedName(mv)); err != nil {
				errs = append(errs, err)
			} else if ok {
				if _, err := src.Exec(ctx, `DROP SCHEMA `+ident(movedName(mv))+` CASCADE`); err != nil {
					errs = append(errs, fmt.Errorf("drop %s on %s: %w", movedName(mv), mv.Source, err))
				} else {
					dropped = append(dropped, mv.Source+"."+movedName(mv))
				}
			}
		}
		closeConns(mv)
	}
	if d, err := m.cleanupSplits(ctx); err != nil { // follower splits whose cleanup did not finish
		errs = append(errs, err)
	} else {
		dropped = append(dropped, d...)
	}
	if len(errs) > 0 {
		return dropped, fmt.Errorf("cleanup: %w", errors.Join(errs...))
	}
	return dropped, nil
}

// dropPublication drops publication name without failing the writers of its
// tables. PostgreSQL builds a table's list of publications on a writer's
// first DML after an invalidation, by reading pg_publication_rel and then each
// publication by OID; a DROP PUBLICATION that commits in between fails that
// writer with XX000 "cache lookup failed for publication". So each table
// leaves the publication first, in a transaction that holds the table's SHARE
// lock (which no writer holds at the same time; NOWAIT, so that no writer
// queues behind it), and the publication is dropped once it has no table left.
// A table that stays busy past the patience, or whose ALTER loses a
// deadlock, leaves with the drop itself.
func dropPublication(ctx context.Context, conn *pgx.Conn, name string) error {
	rows, err := conn.Query(ctx, `SELECT format('%I.%I', n.nspname, c.relname)
		FROM pg_publication p
		JOIN pg_publication_rel pr ON pr.prpubid = p.oid
		JOIN pg_class c ON c.oid = pr.prrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE p.pubname = $1
		ORDER BY 1`, name)
	if err != nil {
		return fmt.Errorf("list the publication's tables: %w", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list the publication's tables: %w", err)
	}
	for _, t := range tables {
		err := execLockedNowait(ctx, conn, t, "SHARE", `ALTER PUBLICATION `+ident(name)+` DROP TABLE `+t, dropPublicationPatience)
		// Busy (55P03) or chosen as a deadlock's victim (40P01: seen with
		// two moves of one node cleaning up at once): the table leaves with
		// the drop below instead. Gone already (42704, 42P01): nothing to do.
		if err != nil && !isPgCode(err, "55P03") && !isPgCode(err, "40P01") && !isPgCode(err, "42704") && !isPgCode(err, "42P01") {
			return fmt.Errorf("remove %s from publication %s: %w", t, name, err)
		}
	}
	if _, err := conn.Exec(ctx, `DROP PUBLICATION IF EXISTS `+ident(name)); err != nil {
		return fmt.Errorf("drop publication: %w", err)
	}
	return nil
}

// dropPublicationPatience bounds how long dropPublication waits for a busy table.
const dropPublicationPatience = 10 * time.Second
