package catalog

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// RouterInfo is a router that follows the map.
type RouterInfo struct {
	ID           string
	Addr         string
	LastSeen     time.Time
	AckedVersion int64
}

// Heartbeat records that router id (listening on addr) is alive and has
// applied map version acked.
func (c *Catalog) Heartbeat(ctx context.Context, id, addr string, acked int64) error {
	// Not waiting for the WAL flush: a heartbeat or an acknowledgement lost
	// in a crash of the catalog is sent again a second later, and what it
	// says (this router applied that map) is true whether or not it is on
	// disk. A mover waiting for it sees it a flush sooner. One round trip:
	// the statements go as one pipeline. The commit notifies AckChannel
	// with "version id" (WaitAcked listens there rather than polling, and
	// takes the announcement as the acknowledgement without reading the
	// row again; a mover of an older pgtenant, which expects only the
	// version, reads the acknowledgements every 20ms instead).
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SET LOCAL synchronous_commit = off`)
	b.Queue(`INSERT INTO pgtenant.routers (id, addr, acked_version) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, last_seen = now(),
			acked_version = greatest(pgtenant.routers.acked_version, excluded.acked_version)`, id, addr, acked)
	if acked > 0 {
		b.Queue(`SELECT pg_notify('`+AckChannel+`', $1::bigint::text || ' ' || $2)`, acked, id)
	}
	b.Queue(`COMMIT`)
	err := c.pool.SendBatch(ctx, b).Close()
	if err != nil {
		return fmt.Errorf("router heartbeat: %w", err)
	}
	return nil
}

// RemoveRouter forgets a router that shut down cleanly.
func (c *Catalog) RemoveRouter(ctx context.Context, id string) error {
	_, err := c.pool.Exec(ctx, `DELETE FROM pgtenant.routers WHERE id = $1`, id)
	return err
}

// LiveRouters lists routers seen within the last `within`.
func (c *Catalog) LiveRouters(ctx context.Context, within time.Duration) ([]RouterInfo, error) {
	rows, err := c.pool.Query(ctx, `SELECT id, addr, last_seen, acked_version FROM pgtenant.routers
		WHERE last_seen > now() - $1::interval ORDER BY id`, within.String())
	if err != nil {
		return nil, fmt.Errorf("list routers: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (RouterInfo, error) {
		var ri RouterInfo
		err := r.Scan(&ri.ID, &ri.Addr, &ri.LastSeen, &ri.AckedVersion)
		return ri, err
	})
}

// SetShardState sets a shard's state (placement.StateActive or
// placement.StateFenced), bumps the map version and notifies routers. It
// returns the new map version.
func (c *Catalog) SetShardState(ctx context.Context, shard int, state string) (int64, error) {
	var v int64
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE pgtenant.shards SET state = $2 WHERE id = $1`, shard, state)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("shard %d does not exist", shard)
		}
		// The update's trigger bumped the map version and notified.
		return tx.QueryRow(ctx, `SELECT version FROM pgtenant.map_version`).Scan(&v)
	})
	if err != nil {
		return 0, fmt.Errorf("set shard %d %s: %w", shard, state, err)
	}
	return v, nil
}

// Follow keeps a router in step with the catalog: it calls apply with every
// new map (see Watch) and, once apply has returned, acknowledges the map's
// version under the router's id (a map apply refuses is logged and not
// acknowledged), so that a mover fencing a shard knows every
// router holds its transactions. It also sends a heartbeat every `every`
// (zero means 1s). While the last map it was given has a fenced shard, it
// also releases fences whose lease lapsed (ReleaseExpiredFences) at every
// heartbeat, so a shard whose mover died serves again from its source with
// only routers running. It returns when ctx ends, after removing the router's row.
func (c *Catalog) Follow(ctx context.Context, id, addr string, every time.Duration, apply func(context.Context, *placement.Map) error) error {
	if every <= 0 {
		every = time.Second
	}
	var acked atomic.Int64
	var fenced atomic.Bool
	release := func() {
		if !fenced.Load() {
			return
		}
		rctx, cancel := context.WithTimeout(ctx, every)
		defer cancel()
		if _, err := c.ReleaseExpiredFences(rctx); err != nil && ctx.Err() == nil {
			c.logger.Warn("release expired fences failed", "err", err)
		}
		if _, err := c.ReleaseExpiredTenantFences(rctx); err != nil && ctx.Err() == nil {
			c.logger.Warn("release expired tenant fences failed", "err", err)
		}
	}
	beat := func() bool {
		hctx, cancel := context.WithTimeout(ctx, every)
		defer cancel()
		if err := c.Heartbeat(hctx, id, addr, acked.Load()); err != nil {
			if ctx.Err() == nil {
				c.logger.Warn("router heartbeat failed", "err", err)
			}
			return false
		}
		return true
	}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if beat() { // a catalog that missed the heartbeat would fail the release too
					release()
				}
			}
		}
	}()
	err := c.Watch(ctx, WatchOptions{}, func(ctx context.Context, m *placement.Map) error {
		fenced.Store(hasFenced(m))
		if err := apply(ctx, m); err != nil {
			if ctx.Err() != nil {
				return ctx.Err() // superseded by a newer map
			}
			// Not acknowledged: a mover waiting on this version times out
			// and aborts rather than trusting this router.
			c.logger.Error("apply map", "map_version", m.Version, "err", err)
			return nil
		}
		acked.Store(m.Version)
		beat()
		return nil
	})
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	c.RemoveRouter(rctx, id)
	return err
}

// RouterFencer fences shards through the routers that follow this catalog:
// the shard's state is already 'fenced' in the map (the mover sets it, bumping
// the map version), and Fence waits until every live router has acknowledged
// that version, which a router does only after it holds the shard's new
// transactions and its in-flight ones have ended. It satisfies move.Fencer
// and move.VersionFencer.
type RouterFencer struct {
	Catalog *Catalog
	// Within is how recent a heartbeat must be for a router to count as live.
	// Zero means 3s.
	Within time.Duration
	// Poll is how often acknowledgements are read when no router announced
	// one (see WaitAcked). Zero means 20ms.
	Poll time.Duration
}

func (f RouterFencer) wait(ctx context.Context) error {
	v, err := f.Catalog.MapVersion(ctx)
	if err != nil {
		return err
	}
	return f.waitVersion(ctx, v)
}

func (f RouterFencer) waitVersion(ctx context.Context, v int64) error {
	within, poll := f.Within, f.Poll
	if within <= 0 {
		within = 3 * time.Second
	}
	if poll <= 0 {
		poll = 20 * time.Millisecond
	}
	return f.Catalog.WaitAcked(ctx, v, within, poll)
}

// Prepare readies what waiting for the routers needs before a fence's pause
// starts: the connection that listens for their acknowledgements (otherwise
// opened by the first wait, inside the pause: tens of ms on a busy catalog,
// in every `shard move` process). It satisfies move.FencePreparer.
func (f RouterFencer) Prepare(ctx context.Context) error {
	if f.Catalog.ackListener(ctx) == nil {
		return errors.New("listen for the routers' acknowledgements: see the log; waits will poll")
	}
	return nil
}

// FenceVersion waits until every live router has acknowledged map version v
// (which fenced shard), read by the caller in the fence's transaction.
func (f RouterFencer) FenceVersion(ctx context.Context, shard int, v int64) error {
	if err := f.waitVersion(ctx, v); err != nil {
		return fmt.Errorf("fence shard %d: %w", shard, err)
	}
	return nil
}

// UnfenceVersion waits until every live router has acknowledged map
// version v (which released shard), read by the caller in the flip's
// transaction.
func (f RouterFencer) UnfenceVersion(ctx context.Context, shard int, v int64) error {
	if err := f.waitVersion(ctx, v); err != nil {
		return fmt.Errorf("unfence shard %d: %w", shard, err)
	}
	return nil
}

// Fence waits until every live router holds shard's transactions.
func (f RouterFencer) Fence(ctx context.Context, shard int) error {
	if err := f.wait(ctx); err != nil {
		return fmt.Errorf("fence shard %d: %w", shard, err)
	}
	return nil
}

// Unfence waits until every live router has seen the shard released (active
// again, on the source after an abort or on the target after a flip).
func (f RouterFencer) Unfence(ctx context.Context, shard int) error {
	if err := f.wait(ctx); err != nil {
		return fmt.Errorf("unfence shard %d: %w", shard, err)
	}
	return nil
}

// hasFenced reports whether any shard or tenant of m is fenced.
func hasFenced(m *placement.Map) bool {
	if len(m.FencedTenants) > 0 {
		return true
	}
	for _, s := range m.Shards {
		if s.State == placement.StateFenced {
			return true
		}
	}
	return false
}
