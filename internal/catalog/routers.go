package catalog

import (
	"context"
	"fmt"
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
	_, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.routers (id, addr, acked_version) VALUES ($1, $2, $3)
		ON CONFLICT (id) DO UPDATE SET addr = excluded.addr, last_seen = now(),
			acked_version = greatest(pgtenant.routers.acked_version, excluded.acked_version)`, id, addr, acked)
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
		v, err = bumpMapVersion(ctx, tx)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("set shard %d %s: %w", shard, state, err)
	}
	return v, nil
}

// WaitAcked waits until every router seen within `within` has acknowledged map
// version v, polling every `every`, or until ctx ends.
func (c *Catalog) WaitAcked(ctx context.Context, v int64, within, every time.Duration) error {
	for {
		routers, err := c.LiveRouters(ctx, within)
		if err != nil {
			return err
		}
		behind := 0
		for _, r := range routers {
			if r.AckedVersion < v {
				behind++
			}
		}
		if behind == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %d routers to apply map version %d: %w", behind, v, ctx.Err())
		case <-time.After(every):
		}
	}
}

// Compile-time check that the states used here exist.
var _ = placement.StateFenced
