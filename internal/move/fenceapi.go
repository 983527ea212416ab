package move

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The fence of a shard move, offered to other callers (an import's cutover
// and rollback, internal/importer) so that every change of a shard's
// placement holds the routers the same way: the same catalog state, the same
// lease and its renewals, the same release by routers when the lease lapses,
// the same Fencer. A caller fences a shard, does its work under the fence
// (it watches ShardFence.Context, which ends when the lease is lost), then
// either flips in one catalog transaction of its own statements or releases
// the shard unchanged. Only the catalog side is offered: what protects the
// data on the nodes is the caller's business (a move locks and guards its
// source schema; an import's legacy tables hold every tenant and cannot be
// guarded per shard).

// ErrFenceLost: the fence's lease lapsed (not renewed in time, or released
// by a router) before the flip; the shard may already serve again where it
// was. Nothing was flipped.
var ErrFenceLost = errLeaseLost

// ErrShardBusy: the shard is not active on the node given (fenced by a move
// or another fence, or placed elsewhere).
var ErrShardBusy = errors.New("the shard is not active on that node (a move or another fence holds it)")

// ShardFence is one shard fenced with a lease, from FenceShard to Flip or
// Release.
type ShardFence struct {
	m      *Mover
	mv     *moveRun
	ctx    context.Context
	cancel context.CancelCauseFunc
	lease  *leaseRenewer
	done   bool
	// Marked and Held are how long marking the shard fenced in the catalog
	// and waiting for the routers took.
	Marked, Held time.Duration
	// FlippedAt is when Flip's transaction committed (zero before).
	FlippedAt time.Time
}

// Ended reports whether the fence ended by Flip (the change committed) or
// Release.
func (f *ShardFence) Ended() bool { return f.done }

// VersionFencer is a Fencer that can wait for a map version its caller
// read when it changed the shard (catalog.RouterFencer): FenceShard and
// FlipStatements read the version in the transaction that fenced or flipped
// and save the round trip of reading it again.
type VersionFencer interface {
	Fencer
	// FenceVersion waits until every router holds shard as map version v
	// (or a newer one) says.
	FenceVersion(ctx context.Context, shard int, v int64) error
	// UnfenceVersion waits until every router has applied map version v
	// (or a newer one), which released shard.
	UnfenceVersion(ctx context.Context, shard int, v int64) error
}

// FencePreparer is a Fencer with something to ready before a pause starts
// (catalog.RouterFencer: its listening connection). Its error is only
// logged: the fence works without it, slower.
type FencePreparer interface {
	Fencer
	Prepare(ctx context.Context) error
}

// prepareFencer readies the Fencer, when it has something to ready, before
// a pause.
func (m *Mover) prepareFencer(ctx context.Context) {
	if p, ok := m.cfg.Fencer.(FencePreparer); ok {
		if err := p.Prepare(ctx); err != nil {
			m.log.Warn("prepare the fence", "err", err)
		}
	}
}

// FenceShard fences shard, placed on node in the catalog, for a caller that
// is not a move: it sets the shard 'fenced' with a lease in
// pgtenant.fence_leases under owner (a fence id of the caller's, stored as
// the lease's move id: never the id of a move), renews the lease every
// Config.FenceLease/5, and waits until every router holds the shard's new
// transactions and drained its running ones (Config.Fencer). On error the
// shard is released. The returned fence must end with Flip or Release.
//
// It is inside the caller's pause, so the catalog side is one round trip:
// the check that the shard is active on node, the fence and its lease, and
// the map version the routers must acknowledge, in one transaction. That
// transaction commits without waiting for its WAL flush: the flip (which
// waits for it) flushes the fence with it, and a catalog that crashed before
// the flush comes back without the fence, which its routers then release
// and the flip finds gone (ErrFenceLost).
func (m *Mover) FenceShard(ctx context.Context, shard int, node string, owner int64) (*ShardFence, error) {
	mv := &moveRun{Info: Info{ID: owner, Shard: shard, Source: node, Target: node}}
	m.prepareFencer(ctx)
	t0 := time.Now()
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SET LOCAL synchronous_commit = off`)
	// The shard row as it was (for the error), and the fence, only of a
	// shard active on node; the trigger of the shards table bumps the map
	// version and notifies the routers.
	b.Queue(`WITH cur AS (SELECT state, node FROM pgtenant.shards WHERE id = $1),
		u AS (UPDATE pgtenant.shards SET state = 'fenced' WHERE id = $1 AND node = $2 AND state = 'active' RETURNING id),
		l AS (INSERT INTO pgtenant.fence_leases (shard, move_id, expires_at) SELECT id, $3, now() + $4::bigint * interval '1 millisecond' FROM u
			ON CONFLICT (shard) DO UPDATE SET move_id = excluded.move_id, expires_at = excluded.expires_at)
		SELECT cur.state, cur.node, EXISTS (SELECT FROM u) FROM cur`, shard, node, owner, m.cfg.FenceLease.Milliseconds())
	vf, versioned := m.cfg.Fencer.(VersionFencer)
	if versioned {
		b.Queue(`SELECT version FROM pgtenant.map_version`)
	}
	b.Queue(`COMMIT`)
	var state, at string
	var fenced bool
	var version int64
	br := m.cfg.Catalog.SendBatch(ctx, b)
	_, err := br.Exec()
	if err == nil {
		_, err = br.Exec()
	}
	if err == nil {
		err = br.QueryRow().Scan(&state, &at, &fenced)
	}
	if err == nil && versioned {
		err = br.QueryRow().Scan(&version)
	}
	if err == nil {
		_, err = br.Exec()
	}
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("fence shard %d: no such shard in the catalog", shard)
	case err != nil:
		return nil, fmt.Errorf("fence shard %d: %w", shard, err)
	case !fenced:
		return nil, fmt.Errorf("fence shard %d: it is %s on node %s: %w", shard, state, at, ErrShardBusy)
	}
	fctx, cancel := context.WithCancelCause(ctx)
	f := &ShardFence{m: m, mv: mv, ctx: fctx, cancel: cancel, Marked: time.Since(t0)}
	f.lease = m.renewLeases(fctx, mv, cancel)
	if versioned {
		err = vf.FenceVersion(fctx, shard, version)
	} else {
		err = m.cfg.Fencer.Fence(fctx, shard)
	}
	if err != nil {
		err = fmt.Errorf("fence shard %d in the routers: %w", shard, err)
		return nil, errors.Join(err, f.Release(context.WithoutCancel(ctx)))
	}
	f.Held = time.Since(t0) - f.Marked
	return f, nil
}

// Context ends when the fence ends: its lease lost (cause ErrFenceLost), or
// Flip or Release called.
func (f *ShardFence) Context() context.Context { return f.ctx }

// Flip ends the fence with the shard changed: one catalog transaction
// consumes the lease (a lapsed one is ErrFenceLost and nothing changes), runs
// in (the caller's own statements: the placement change itself), sets the
// shard 'active' with its epoch + 1 and notifies the routers. Then it stops
// renewing and waits until every router has seen the change (its held
// transactions go where the catalog now says). A failed transaction leaves
// the shard fenced: call Release.
func (f *ShardFence) Flip(ctx context.Context, in func(ctx context.Context, tx pgx.Tx) error) error {
	if f.done {
		return errors.New("flip: the fence has ended")
	}
	ctx, stop := f.untilLeaseLost(ctx)
	defer stop()
	mv := f.mv
	tx, err := f.m.cfg.Catalog.Begin(ctx)
	if err != nil {
		return f.flipFailed(err)
	}
	err = func() error {
		// The lease first: it locks the row a router releasing the fence would
		// delete (the serialisation point, as in a move's flip).
		b := &pgx.Batch{}
		b.Queue(`DELETE FROM pgtenant.fence_leases WHERE shard = $1 AND move_id = $2 AND expires_at > now()`, mv.Shard, mv.ID)
		// The shards table's trigger bumps the map version and notifies the routers.
		b.Queue(`UPDATE pgtenant.shards SET epoch = epoch + 1, state = 'active' WHERE id = $1 AND node = $2 AND state = 'fenced'`, mv.Shard, mv.Source)
		br := tx.SendBatch(ctx, b)
		lease, err := br.Exec()
		if err == nil && lease.RowsAffected() != 1 {
			err = ErrFenceLost
		}
		if err == nil {
			var tag pgconn.CommandTag
			if tag, err = br.Exec(); err == nil && tag.RowsAffected() != 1 {
				err = ErrFlipConflict
			}
		}
		if cerr := br.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if in != nil {
			return in(ctx, tx)
		}
		return nil
	}()
	if err == nil {
		cctx, ccancel := commitContext(ctx)
		err = tx.Commit(cctx)
		ccancel()
	} else {
		_ = tx.Rollback(context.WithoutCancel(ctx))
	}
	if err != nil {
		return f.flipFailed(err)
	}
	return f.flipped(ctx, 0)
}

// commitContext is the context of a flip's COMMIT once every statement of
// its transaction held, the lease's among them (its row is locked: a router
// releasing the fence waits for this transaction), so the flip stands: not
// cut short by ctx. A lease found lapsed by the renewer meanwhile used to
// cancel it, and the caller was told "failed, still on the source" of a
// flip that had committed.
func commitContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
}

// flipFailed wraps the error of a flip that did not commit, with the lost
// lease when that was the cause.
func (f *ShardFence) flipFailed(err error) error {
	if c := context.Cause(f.ctx); errors.Is(c, errLeaseLost) {
		err = errors.Join(err, c)
	}
	return fmt.Errorf("flip shard %d: %w", f.mv.Shard, err)
}

// flipped ends the fence after its flip committed: it stops renewing the
// lease and waits until every router has seen the change (the map version
// the flip made, when known and the fencer can wait for one).
func (f *ShardFence) flipped(ctx context.Context, version int64) error {
	f.FlippedAt = time.Now()
	f.done = true
	f.lease.close()
	f.cancel(nil)
	var err error
	if vf, ok := f.m.cfg.Fencer.(VersionFencer); ok && version > 0 {
		err = vf.UnfenceVersion(context.WithoutCancel(ctx), f.mv.Shard, version)
	} else {
		err = f.m.cfg.Fencer.Unfence(context.WithoutCancel(ctx), f.mv.Shard)
	}
	if err != nil {
		return fmt.Errorf("flipped; %w", err)
	}
	return nil
}

// FlipStatement is one of a caller's statements that FlipStatements runs
// in the flip's transaction.
type FlipStatement struct {
	SQL  string
	Args []any
	// Rows is how many rows the statement must affect, -1 for any number;
	// otherwise nothing is flipped and FlipStatements returns Err (or
	// ErrFlipConflict when Err is nil). With Rows >= 0, SQL is an INSERT,
	// UPDATE or DELETE without RETURNING (the count is checked in the
	// statement: it runs as a WITH query).
	Rows int64
	Err  error
}

// FlipStatements is Flip with the caller's change given as statements, so
// that the flip costs one round trip to the catalog: the transaction (the
// lease consumed, the shard set 'active' with its epoch + 1, stmts, the new
// map version) and its commit go as one pipeline, each row count checked
// by its statement (a wrong one fails it: the rest of the pipeline is
// skipped and nothing commits). The routers' acknowledgement of that
// version is waited for as in Flip.
func (f *ShardFence) FlipStatements(ctx context.Context, stmts ...FlipStatement) error {
	if f.done {
		return errors.New("flip: the fence has ended")
	}
	ctx, stop := f.untilLeaseLost(ctx)
	defer stop()
	version, err := f.flipPipeline(ctx, stmts)
	if err != nil {
		return f.flipFailed(err)
	}
	return f.flipped(ctx, version)
}

// checkRows wraps sql (a data-modifying statement with args params) so
// that it fails with division_by_zero (22012) unless it affected rows rows.
func checkRows(sql string, args []any, rows int64) (string, []any) {
	return fmt.Sprintf(`WITH flip_stmt AS (%s RETURNING 1) SELECT 1 / (count(*) = $%d)::int FROM flip_stmt`, sql, len(args)+1), append(args[:len(args):len(args)], rows)
}

// flipPipeline runs the flip's transaction and its COMMIT in one round
// trip (ROLLBACK when a statement failed or changed the wrong number of
// rows). It returns the map version the flip made. The pipeline is not cut
// short by ctx: its first statement consumes the lease (a lapsed one fails
// it), so once sent the flip stands or fails by itself, and a caller is
// never told "failed" of a flip that committed.
func (f *ShardFence) flipPipeline(ctx context.Context, stmts []FlipStatement) (int64, error) {
	conn, err := f.m.cfg.Catalog.Acquire(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Release()
	mv := f.mv
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	// The lease first: it locks the row a router releasing the fence would
	// delete (the serialisation point, as in a move's flip). The shards
	// table's trigger bumps the map version and notifies the routers.
	errs := []error{nil, ErrFenceLost, ErrFlipConflict} // per queued statement: its row count's error
	sql, args := checkRows(`DELETE FROM pgtenant.fence_leases WHERE shard = $1 AND move_id = $2 AND expires_at > now()`, []any{mv.Shard, mv.ID}, 1)
	b.Queue(sql, args...)
	sql, args = checkRows(`UPDATE pgtenant.shards SET epoch = epoch + 1, state = 'active' WHERE id = $1 AND node = $2 AND state = 'fenced'`, []any{mv.Shard, mv.Source}, 1)
	b.Queue(sql, args...)
	for _, st := range stmts {
		sql, args := st.SQL, st.Args
		var rerr error
		if st.Rows >= 0 {
			sql, args = checkRows(sql, args, st.Rows)
			if rerr = st.Err; rerr == nil {
				rerr = ErrFlipConflict
			}
		}
		b.Queue(sql, args...)
		errs = append(errs, rerr)
	}
	_, versioned := f.m.cfg.Fencer.(VersionFencer)
	var version int64
	if versioned {
		b.Queue(`SELECT version FROM pgtenant.map_version`).QueryRow(func(r pgx.Row) error { return r.Scan(&version) })
	}
	b.Queue(`COMMIT`)
	cctx, ccancel := commitContext(ctx)
	defer ccancel()
	br := conn.SendBatch(cctx, b)
	err = func() error {
		for _, rerr := range errs {
			_, err := br.Exec()
			var pe *pgconn.PgError
			if rerr != nil && errors.As(err, &pe) && pe.Code == "22012" {
				return rerr
			}
			if err != nil {
				return err
			}
		}
		return nil
	}()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		return version, nil
	}
	if conn.Conn().PgConn().TxStatus() != 'I' {
		if _, rerr := conn.Exec(context.WithoutCancel(ctx), `ROLLBACK`); rerr != nil {
			conn.Conn().Close(context.WithoutCancel(ctx)) // not back to the pool in a transaction
		}
	}
	return 0, err
}

// Release ends the fence with nothing changed: the shard is set 'active'
// where it was (its lease deleted) and the routers release its held
// transactions there. It retries for up to 30s while the catalog is
// unreachable (the routers keep the shard held from their cached map
// meanwhile); a lease that lapsed was released by a router already.
func (f *ShardFence) Release(ctx context.Context) error {
	if f.done {
		return nil
	}
	f.done = true
	f.lease.close()
	f.cancel(nil)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	for {
		err := f.m.markActive(ctx, f.mv)
		if err == nil {
			err = f.m.cfg.Fencer.Unfence(ctx, f.mv.Shard)
		}
		if err == nil {
			return nil
		}
		f.m.log.Warn("release fence failed; retrying", "shard", f.mv.Shard, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("release shard %d: %w", f.mv.Shard, err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// untilLeaseLost returns ctx, also cancelled when the fence's lease is lost
// (a lost lease ends a flip too), and its cancel function.
func (f *ShardFence) untilLeaseLost(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, stop := context.WithCancel(ctx)
	go func() {
		select {
		case <-f.ctx.Done():
			stop()
		case <-ctx.Done():
		}
	}()
	return ctx, stop
}
