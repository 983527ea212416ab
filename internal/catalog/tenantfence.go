package catalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// Tenant fences: a tenant move (internal/tenantops) fences one tenant by
// inserting its row in pgtenant.tenant_fences (a lease the mover renews);
// the map-version trigger announces it, routers hold that tenant's new
// transactions and acknowledge the version once its transactions in flight
// ended (router.Server.SetMap). FlipTenant moves the tenant and deletes the
// fence in one transaction; a lease that lapsed is deleted by a router
// (ReleaseExpiredTenantFences), which releases the tenant to the shard it
// never left.

// ErrTenantFenced means a tenant is already fenced (another move runs).
var ErrTenantFenced = errors.New("the tenant is fenced by another move")

// ErrTenantFenceLost means the fence lapsed (or was deleted) before the flip.
var ErrTenantFenceLost = errors.New("the tenant's fence lease lapsed before the flip")

// queueTenantFences queues the read of the fenced tenants (in full, or when
// a version since `since` changed them) on readMap's batch.
func queueTenantFences(b *pgx.Batch, upTo string, since int64, full bool) {
	b.Queue(`SELECT tenant, shard, $2 OR EXISTS (SELECT FROM pgtenant.map_changes WHERE `+upTo+` AND kind = 'tenant_fences')
		FROM pgtenant.tenant_fences
		UNION ALL SELECT NULL, NULL, $2 OR EXISTS (SELECT FROM pgtenant.map_changes WHERE `+upTo+` AND kind = 'tenant_fences')`, since, full)
}

// readTenantFences reads queueTenantFences' result: the fenced tenants (nil
// when none) and whether they were read (false: unchanged since prev).
func readTenantFences(br pgx.BatchResults) (map[string]int, bool, error) {
	rows, err := br.Query()
	if err != nil {
		return nil, false, err
	}
	var out map[string]int
	read := false
	var id *string
	var shard *int32
	var changed bool
	if _, err := pgx.ForEachRow(rows, []any{&id, &shard, &changed}, func() error {
		read = changed
		if id != nil && shard != nil {
			if out == nil {
				out = map[string]int{}
			}
			out[*id] = int(*shard)
		}
		return nil
	}); err != nil {
		return nil, false, err
	}
	return out, read, nil
}

// tenantFencesChanged drops the cached shard of every tenant fenced in prev
// and not in now (released: perhaps flipped to another shard), before a map
// that releases them is handed to the router, so its held transactions look
// the tenant up again.
func (c *Catalog) tenantFencesChanged(prev *placement.Map, now map[string]int) {
	if prev == nil {
		return
	}
	for id := range prev.FencedTenants {
		if _, ok := now[id]; !ok {
			c.tenants().cache.Invalidate(id)
		}
	}
}

// FenceTenant fences tenant id in shard for the tenant move moveID, with a
// lease of `lease`, and returns the map version that announces it (wait for
// the routers with WaitAcked). A tenant already fenced is ErrTenantFenced.
func (c *Catalog) FenceTenant(ctx context.Context, id string, shard int, moveID int64, lease time.Duration) (int64, error) {
	var v int64
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO pgtenant.tenant_fences (tenant, shard, move_id, expires_at)
			VALUES ($1, $2, $3, now() + $4::interval)`, id, shard, moveID, lease.String())
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			return fmt.Errorf("tenant %q: %w", id, ErrTenantFenced)
		}
		if err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT version FROM pgtenant.map_version`).Scan(&v)
	})
	if err != nil {
		return 0, fmt.Errorf("fence tenant: %w", err)
	}
	return v, nil
}

// RenewTenantFence extends the lease of tenant id's fence held by moveID;
// ErrTenantFenceLost when it is gone.
func (c *Catalog) RenewTenantFence(ctx context.Context, id string, moveID int64, lease time.Duration) error {
	tag, err := c.pool.Exec(ctx, `UPDATE pgtenant.tenant_fences SET expires_at = now() + $3::interval
		WHERE tenant = $1 AND move_id = $2`, id, moveID, lease.String())
	if err != nil {
		return fmt.Errorf("renew the fence of tenant %q: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("tenant %q: %w", id, ErrTenantFenceLost)
	}
	return nil
}

// UnfenceTenant deletes tenant id's fence (the tenant stays where it is)
// and returns the map version that announces it.
func (c *Catalog) UnfenceTenant(ctx context.Context, id string) (int64, error) {
	var v int64
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM pgtenant.tenant_fences WHERE tenant = $1`, id); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT version FROM pgtenant.map_version`).Scan(&v)
	})
	if err != nil {
		return 0, fmt.Errorf("unfence tenant %q: %w", id, err)
	}
	return v, nil
}

// FlipTenant places tenant id in shard `to` (explicitly: it no longer
// follows the hash) if it is still in `from` and still fenced by moveID,
// and deletes the fence, in one transaction; it returns the map version
// that releases the tenant. ErrTenantFenceLost when the fence lapsed (the
// routers may already run the tenant's transactions in `from` again).
func (c *Catalog) FlipTenant(ctx context.Context, id string, from, to int, moveID int64) (int64, error) {
	var v int64
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		// The tenant row first: its notification (routers drop the cached
		// shard) precedes the map version's in the commit.
		tag, err := tx.Exec(ctx, `UPDATE pgtenant.tenants SET shard = $3, explicit = true WHERE id = $1 AND shard = $2`, id, from, to)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("tenant %q is no longer in shard %d", id, from)
		}
		tag, err = tx.Exec(ctx, `DELETE FROM pgtenant.tenant_fences WHERE tenant = $1 AND move_id = $2 AND expires_at > now()`, id, moveID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("tenant %q: %w", id, ErrTenantFenceLost)
		}
		if err := logOpIn(ctx, tx, "tenant move", map[string]any{"tenant": id, "from": from, "to": to, "move": moveID}, nil); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT version FROM pgtenant.map_version`).Scan(&v)
	})
	if err != nil {
		return 0, fmt.Errorf("flip tenant %q to shard %d: %w", id, to, err)
	}
	return v, nil
}

// ReleaseExpiredTenantFences deletes the tenant fences whose lease lapsed
// (their mover stopped renewing them): the tenants run again in the shard
// they never left. Routers call it while their map fences a tenant; one
// statement, so concurrent routers release each fence once.
func (c *Catalog) ReleaseExpiredTenantFences(ctx context.Context) ([]string, error) {
	rows, err := c.pool.Query(ctx, `DELETE FROM pgtenant.tenant_fences WHERE expires_at < now() RETURNING tenant`)
	if err != nil {
		return nil, fmt.Errorf("release expired tenant fences: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("release expired tenant fences: %w", err)
	}
	for _, id := range ids {
		c.logger.Warn("tenant fence lease lapsed; tenant released to its shard", "tenant", id)
	}
	return ids, nil
}
