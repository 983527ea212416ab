package move

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// runCopy moves a shard without logical replication (--method copy), for
// hosts without wal_level=logical. The shard is fenced for the whole copy, so
// the pause equals the copy time:
//
//	schema    the pre-copy part of the schema restored on the target (not fenced yet)
//	copydata  one source transaction takes SHARE UPDATE EXCLUSIVE on the
//	          shard's tables (waiting out autovacuum: fencelock.go), then
//	          fence in the routers; the transaction holds EXCLUSIVE
//	          locks on the shard's tables (reads go on) while every table is
//	          streamed with COPY … (FORMAT binary) into the target; then the
//	          post-copy part (indexes, FKs, triggers), sequences, verification,
//	          the flip, and the release. The source transaction ends after the flip.
//
// The copy step is bounded by CatchUpTimeout (not FenceTimeout). Resuming
// after a crash under the fence empties the target's tables and copies again.
func (m *Mover) runCopy(ctx context.Context, mv *moveRun, res *Result) error {
	return m.runSteps(ctx, mv, []stepFunc{
		{StepSchema, m.stepSchema},
		{StepCopyData, func(ctx context.Context, mv *moveRun) error { return m.stepCopyData(ctx, mv, res) }},
	})
}

func (m *Mover) stepCopyData(ctx context.Context, mv *moveRun, res *Result) error {
	src, dst, names, err := m.endpoints(ctx, mv)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, m.cfg.CatchUpTimeout)
	defer cancel()
	// The source transaction starts before the pause: it waits out
	// autovacuum on the shard's tables (fencelock.go).
	if err := m.beginPreLocked(cctx, src, mv, mv.Source, mv.SourceDSN, names); err != nil {
		return fmt.Errorf("fence on source: %w", err)
	}
	t0 := time.Now()
	err = m.copyUnderFence(cctx, mv, src, dst, names, res)
	bg, cancel2 := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel2()
	if err != nil {
		if mv.Step != StepFlipped {
			if uerr := m.unfence(bg, mv); uerr != nil {
				err = errors.Join(err, uerr)
			}
		}
		return err
	}
	uerr := m.unfenceRouters(bg, mv)
	mv.Pause = time.Since(t0)
	res.Pause = mv.Pause
	if _, err := m.cfg.Catalog.Exec(bg, `UPDATE pgtenant.moves SET pause_ms = $2, updated_at = now() WHERE id = $1`,
		mv.ID, float64(mv.Pause.Microseconds())/1000); err != nil {
		m.log.Warn("record pause", "move", mv.ID, "err", err)
	}
	m.log.Info("shard flipped", "move", mv.ID, "shard", mv.Shard, "node", mv.Target, "pause", mv.Pause)
	if uerr != nil {
		return fmt.Errorf("release fence after flip: %w", uerr)
	}
	return nil
}

// copyUnderFence holds the fence lease in the catalog for the whole copy. The
// source needs no lease of its own: its write protection is the copy's
// transaction (EXCLUSIVE locks and REVOKEs), which ends with the mover's
// connection.
func (m *Mover) copyUnderFence(ctx context.Context, mv *moveRun, src, dst *pgx.Conn, names []string, res *Result) (err error) {
	// In the source transaction stepCopyData began (beginPreLocked). On
	// failure the rollback releases the locks and undoes the REVOKE; after
	// the flip the commit keeps the REVOKE.
	defer m.rollbackOpen(ctx, src, "move", mv.ID, "shard", mv.Shard)
	if err := m.markFenced(ctx, mv); err != nil {
		return err
	}
	ctx, cancelCause := context.WithCancelCause(ctx)
	defer cancelCause(nil)
	lease := m.renewLeases(ctx, mv, cancelCause)
	defer lease.close()
	defer func() {
		if err != nil && errors.Is(context.Cause(ctx), errLeaseLost) {
			err = fmt.Errorf("%w: %w", ErrInterrupted, errors.Join(err, context.Cause(ctx)))
		} else if errors.Is(err, errLeaseLost) {
			err = fmt.Errorf("%w: %w", ErrInterrupted, err)
		}
	}()
	fctx, cancel := context.WithTimeout(ctx, m.cfg.FenceTimeout)
	err = m.fenceRouters(fctx, mv)
	cancel()
	if err != nil {
		return fmt.Errorf("fence shard in routers: %w", err)
	}
	if _, err := src.Exec(ctx, fmt.Sprintf(`SET LOCAL lock_timeout = '%dms'`, m.cfg.LockTimeout.Milliseconds())); err != nil {
		return fmt.Errorf("fence on source: %w", err)
	}
	quoted := qualified(mv.Schema, names)
	if len(names) > 0 {
		if _, err := src.Exec(ctx, `LOCK TABLE `+strings.Join(quoted, ", ")+` IN EXCLUSIVE MODE`); err != nil {
			m.rollbackOpen(ctx, src, "move", mv.ID, "shard", mv.Shard) // its own locks go before the holders are named
			return fmt.Errorf("fence on source: %w", lockFailed(ctx, mv.Source, mv.SourceDSN,
				fmt.Sprintf("lock the shard's tables (lock_timeout %s)", m.cfg.LockTimeout), []string{mv.Schema}, conflictsExclusive, err))
		}
		if err := revokeRetired(ctx, src, mv.Schema); err != nil {
			return err
		}
		// COPY goes into bare tables: no triggers, FKs or secondary indexes
		// (built after the copy). A resumed copy that got as far as building
		// them starts from a fresh pre-copy schema, since only a superuser
		// could silence them (session_replication_role).
		if have, err := postObjects(ctx, dst, mv.Schema); err != nil {
			return fmt.Errorf("count target indexes: %w", err)
		} else if have > 0 {
			if _, err := dst.Exec(ctx, `DROP SCHEMA `+ident(mv.Schema)+` CASCADE`); err != nil {
				return fmt.Errorf("drop the target's partial schema: %w", err)
			}
			if err := m.copySchema(ctx, mv, false); err != nil {
				return fmt.Errorf("copy schema: %w", err)
			}
		}
		if _, err := dst.Exec(ctx, `TRUNCATE `+strings.Join(quoted, ", ")); err != nil {
			return fmt.Errorf("empty target tables: %w", err)
		}
	}
	for i, n := range names {
		rows, err := copyTable(ctx, src, dst, quoted[i], false)
		if err != nil {
			return fmt.Errorf("copy %s: %w", n, err)
		}
		mv.Progress.Rows += rows
		mv.Progress.TablesReady = i + 1
		mv.Progress.Tables = len(names)
		if err := m.saveProgress(ctx, mv); err != nil {
			return err
		}
	}
	want, err := postObjects(ctx, src, mv.Schema)
	if err != nil {
		return fmt.Errorf("count source indexes: %w", err)
	}
	if have, err := postObjects(ctx, dst, mv.Schema); err != nil {
		return fmt.Errorf("count target indexes: %w", err)
	} else if have != want {
		if err := m.copySchema(ctx, mv, true); err != nil {
			return fmt.Errorf("build indexes: %w", err)
		}
	}
	if !mv.Progress.Options.SkipVerify {
		rep, err := VerifySchemas(ctx, src, dst, mv.Schema)
		if err != nil {
			return fmt.Errorf("verify: %w", err)
		}
		if !rep.OK() {
			return fmt.Errorf("verify: %w", rep.Err())
		}
		res.Verified = true
	}
	if err := syncSequences(ctx, src, dst, mv.Schema); err != nil {
		return err
	}
	if err := m.flip(ctx, mv); err != nil {
		return err
	}
	lease.close() // the flip consumed it
	if _, err := src.Exec(ctx, `COMMIT`); err != nil {
		m.log.Warn("keep write privileges revoked on the source", "move", mv.ID, "err", err)
	}
	return nil
}

// copyTable streams one table from src to dst with binary COPY and returns
// the rows copied; freeze copies with FREEZE (dst must have emptied the
// table in its current transaction).
func copyTable(ctx context.Context, src, dst *pgx.Conn, table string, freeze bool) (int64, error) {
	opts := "FORMAT binary"
	if freeze {
		opts += ", FREEZE"
	}
	pr, pw := io.Pipe()
	errc := make(chan error, 1)
	go func() {
		_, err := src.PgConn().CopyTo(ctx, pw, `COPY `+table+` TO STDOUT (FORMAT binary)`)
		pw.CloseWithError(err)
		errc <- err
	}()
	tag, err := dst.PgConn().CopyFrom(ctx, pr, `COPY `+table+` FROM STDIN (`+opts+`)`)
	pr.CloseWithError(err) // unblocks the sender if the receiver failed
	if serr := <-errc; serr != nil {
		return 0, fmt.Errorf("read source: %w", serr)
	}
	if err != nil {
		return 0, fmt.Errorf("write target: %w", err)
	}
	return tag.RowsAffected(), nil
}
