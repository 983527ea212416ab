package catalog

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// ExpiredFence is a fence released by ReleaseExpiredFences.
type ExpiredFence struct {
	Shard int
	Node  string // the source node the shard stays on
	Move  int64  // the running move now waiting for --resume, 0 if none
}

// ReleaseExpiredFences gives back every fenced shard whose lease (a row of
// pgtenant.fence_leases, renewed by the mover that holds the fence) has
// lapsed by the catalog's clock: the lease is deleted, the shard becomes
// 'active' again on its node (no node change, so routers release its held
// transactions to the source) and the shard's running move records that it
// needs --resume. One statement does it, so any number of routers may call
// it at once: only one of them releases a given fence, and a lease that was
// renewed, or that a flip consumed, is left alone (the flip deletes the lease
// in the transaction that moves the shard). A fenced shard without a lease
// row (fenced by hand or by an older pgtenant) never lapses. The shard
// UPDATE's trigger bumps the map version and notifies.
func (c *Catalog) ReleaseExpiredFences(ctx context.Context) ([]ExpiredFence, error) {
	rows, err := c.pool.Query(ctx, `WITH x AS (
			DELETE FROM pgtenant.fence_leases WHERE expires_at < now() RETURNING shard),
		r AS (
			UPDATE pgtenant.shards s SET state = 'active' FROM x
			WHERE s.id = x.shard AND s.state = 'fenced'
			RETURNING s.id, s.node),
		m AS (
			UPDATE pgtenant.moves mv SET error = format('the fence lease lapsed at %s (the mover stopped renewing it): the shard was released to its source node %s; run pgtenant shard move --resume %s',
					now(), r.node, mv.id), updated_at = now()
			FROM r WHERE mv.shard = r.id AND mv.status = 'running'
			RETURNING mv.shard, mv.id)
		SELECT r.id, r.node, coalesce(m.id, 0) FROM r LEFT JOIN m ON m.shard = r.id ORDER BY r.id`)
	if err != nil {
		return nil, fmt.Errorf("release expired fences: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ExpiredFence, error) {
		var f ExpiredFence
		err := r.Scan(&f.Shard, &f.Node, &f.Move)
		return f, err
	})
	if err != nil {
		return nil, fmt.Errorf("release expired fences: %w", err)
	}
	for _, f := range out {
		c.logger.Warn("fence lease lapsed; shard released to its source", "shard", f.Shard, "node", f.Node, "move", f.Move)
	}
	return out, nil
}
