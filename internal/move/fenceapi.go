package move

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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

// FenceShard fences shard, placed on node in the catalog, for a caller that
// is not a move: it sets the shard 'fenced' with a lease in
// pgtenant.fence_leases under owner (a fence id of the caller's, stored as
// the lease's move id: never the id of a move), renews the lease every
// Config.FenceLease/5, and waits until every router holds the shard's new
// transactions and drained its running ones (Config.Fencer). On error the
// shard is released. The returned fence must end with Flip or Release.
func (m *Mover) FenceShard(ctx context.Context, shard int, node string, owner int64) (*ShardFence, error) {
	var state, at string
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT state, node FROM pgtenant.shards WHERE id = $1`, shard).Scan(&state, &at); err != nil {
		return nil, fmt.Errorf("fence shard %d: read it: %w", shard, err)
	}
	if state != "active" || at != node {
		return nil, fmt.Errorf("fence shard %d: it is %s on node %s: %w", shard, state, at, ErrShardBusy)
	}
	mv := &moveRun{Info: Info{ID: owner, Shard: shard, Source: node, Target: node}}
	t0 := time.Now()
	if err := m.markFenced(ctx, mv); err != nil {
		return nil, fmt.Errorf("fence shard %d: %w", shard, err)
	}
	fctx, cancel := context.WithCancelCause(ctx)
	f := &ShardFence{m: m, mv: mv, ctx: fctx, cancel: cancel, Marked: time.Since(t0)}
	f.lease = m.renewLeases(fctx, mv, cancel)
	if err := m.cfg.Fencer.Fence(fctx, shard); err != nil {
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
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go func() { // a lost lease ends the flip too
		select {
		case <-f.ctx.Done():
			stop()
		case <-ctx.Done():
		}
	}()
	mv := f.mv
	err := pgx.BeginFunc(ctx, f.m.cfg.Catalog, func(tx pgx.Tx) error {
		// The lease first: it locks the row a router releasing the fence would
		// delete (the serialisation point, as in a move's flip).
		b := &pgx.Batch{}
		b.Queue(`DELETE FROM pgtenant.fence_leases WHERE shard = $1 AND move_id = $2 AND expires_at > now()`, mv.Shard, mv.ID)
		b.Queue(`UPDATE pgtenant.shards SET epoch = epoch + 1, state = 'active' WHERE id = $1 AND node = $2 AND state = 'fenced'`, mv.Shard, mv.Source)
		b.Queue(`SELECT pg_notify('pgtenant_map', $1)`, strconv.Itoa(mv.Shard))
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
		if err == nil {
			_, err = br.Exec()
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
	})
	if err != nil {
		if c := context.Cause(f.ctx); errors.Is(c, errLeaseLost) {
			err = errors.Join(err, c)
		}
		return fmt.Errorf("flip shard %d: %w", mv.Shard, err)
	}
	f.FlippedAt = time.Now()
	f.done = true
	f.lease.close()
	f.cancel(nil)
	if err := f.m.cfg.Fencer.Unfence(context.WithoutCancel(ctx), mv.Shard); err != nil {
		return fmt.Errorf("flipped; %w", err)
	}
	return nil
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
