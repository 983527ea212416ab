package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// Tenant is a registered tenant.
type Tenant struct {
	ID       string
	Shard    int
	Explicit bool // placed by hand rather than by the hash
}

// AddTenant registers tenant id. With shard nil the tenant goes to its hash
// shard, computed by the server as hashtextextended(id, 0) & (shards - 1); with
// a shard it is placed there explicitly.
func (c *Catalog) AddTenant(ctx context.Context, id string, shard *int) (placement.Location, error) {
	if err := placement.ValidateTenantID(id); err != nil {
		return placement.Location{}, fmt.Errorf("add tenant: %w", err)
	}
	count, err := c.ShardCount(ctx)
	if err != nil {
		return placement.Location{}, fmt.Errorf("add tenant: %w", err)
	}
	if shard != nil && (*shard < 0 || *shard >= count) {
		return placement.Location{}, fmt.Errorf("add tenant: shard %d is unknown (SQLSTATE 42704): shards are 0 to %d; `pgtenant shard list` names them", *shard, count-1)
	}
	// One statement, so one round trip and one commit: the tenant, its
	// operation-log row (the same transaction) and where it went. The shards'
	// statement-level check (23503) fails the whole statement.
	var s placement.Shard
	var n placement.Node
	var schema, node, state, dsn *string
	var epoch *int64
	err = c.pool.QueryRow(ctx, `
		WITH t AS (
			INSERT INTO pgtenant.tenants (id, shard, explicit)
			VALUES ($1, coalesce($2, (hashtextextended($1, 0) & ($3::bigint - 1))::int), $2 IS NOT NULL)
			RETURNING shard
		), op AS (
			INSERT INTO pgtenant.operations (op, detail, ok)
			SELECT 'tenant add', jsonb_build_object('tenant', $1::text, 'shard', t.shard, 'explicit', $2::int IS NOT NULL), true FROM t
		)
		SELECT t.shard, s.schema_name, s.node, s.state, s.epoch, n.dsn FROM t
		LEFT JOIN pgtenant.shards s ON s.id = t.shard LEFT JOIN pgtenant.nodes n ON n.name = s.node`,
		id, shard, count).Scan(&s.ID, &schema, &node, &state, &epoch, &dsn)
	if err != nil {
		var pgErr *pgconn.PgError
		switch {
		case errors.As(err, &pgErr) && pgErr.Code == "23505":
			err = fmt.Errorf("tenant %q: %w", id, ErrTenantExists)
		case errors.As(err, &pgErr) && pgErr.Code == "23503":
			want := placement.ShardOf(id, count)
			if shard != nil {
				want = *shard
			}
			err = fmt.Errorf("shard %d has not been created yet; run `pgtenant shard create`", want)
		}
		c.logOp(ctx, "tenant add", map[string]any{"tenant": id, "explicit": shard != nil}, err)
		return placement.Location{}, fmt.Errorf("add tenant: %w", err)
	}
	if schema == nil || node == nil || state == nil || epoch == nil || dsn == nil {
		// Not possible while the check holds; said plainly if it ever is.
		return placement.Location{}, fmt.Errorf("add tenant: tenant %q was added to shard %d, whose node cannot be read", id, s.ID)
	}
	s.Schema, s.Node, s.State, s.Epoch = *schema, *node, *state, *epoch
	n.Name, n.DSN = s.Node, *dsn
	return placement.Location{Tenant: id, Shard: s, Node: n}, nil
}

// AddTenants registers many tenants by hash in one transaction (for demos and
// imports); ids already registered are left as they are. It returns how many
// were added.
func (c *Catalog) AddTenants(ctx context.Context, ids []string) (int, error) {
	for _, id := range ids {
		if err := placement.ValidateTenantID(id); err != nil {
			return 0, fmt.Errorf("add tenants: %w", err)
		}
	}
	count, err := c.ShardCount(ctx)
	if err != nil {
		return 0, err
	}
	var added int64
	err = pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO pgtenant.tenants (id, shard)
			SELECT id, (hashtextextended(id, 0) & ($2::bigint - 1))::int FROM unnest($1::text[]) AS id
			ON CONFLICT (id) DO NOTHING`, ids, count)
		if err != nil {
			return err
		}
		added = tag.RowsAffected()
		return nil
	})
	c.logOp(ctx, "tenant add", map[string]any{"tenants": len(ids), "added": added}, err)
	if err != nil {
		return 0, fmt.Errorf("add tenants: %w", err)
	}
	return int(added), nil
}

// Locate returns where tenant id lives.
func (c *Catalog) Locate(ctx context.Context, id string) (placement.Location, error) {
	loc := placement.Location{Tenant: id}
	err := c.pool.QueryRow(ctx, `SELECT s.id, s.schema_name, s.node, s.state, s.epoch, n.dsn
		FROM pgtenant.tenants t JOIN pgtenant.shards s ON s.id = t.shard JOIN pgtenant.nodes n ON n.name = s.node
		WHERE t.id = $1`, id).Scan(&loc.Shard.ID, &loc.Shard.Schema, &loc.Shard.Node, &loc.Shard.State, &loc.Shard.Epoch, &loc.Node.DSN)
	if errors.Is(err, pgx.ErrNoRows) {
		return loc, fmt.Errorf("tenant %q: %w; register it with `pgtenant tenant add`", id, placement.ErrUnknownTenant)
	}
	if err != nil {
		if isUndefinedTable(err) {
			return loc, ErrNotInitialized
		}
		return loc, fmt.Errorf("locate tenant %q: %w", id, err)
	}
	loc.Node.Name = loc.Shard.Node
	return loc, nil
}

// Tenants lists tenants in id order, at most limit (0 = all), optionally only
// those of one shard (shard < 0 = all shards).
func (c *Catalog) Tenants(ctx context.Context, shard, limit int) ([]Tenant, error) {
	sql := `SELECT id, shard, explicit FROM pgtenant.tenants WHERE ($1 < 0 OR shard = $1) ORDER BY id`
	args := []any{shard}
	if limit > 0 {
		sql += ` LIMIT $2`
		args = append(args, limit)
	}
	rows, err := c.pool.Query(ctx, sql, args...)
	if err != nil {
		if isUndefinedTable(err) {
			return nil, ErrNotInitialized
		}
		return nil, fmt.Errorf("list tenants: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Tenant, error) {
		var t Tenant
		err := r.Scan(&t.ID, &t.Shard, &t.Explicit)
		return t, err
	})
}

// RemoveTenant unregisters tenant id. Its rows in the shard's tables are the
// application's and are left alone.
func (c *Catalog) RemoveTenant(ctx context.Context, id string) error {
	err := pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM pgtenant.tenants WHERE id = $1`, id)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("tenant %q: %w", id, placement.ErrUnknownTenant)
		}
		return nil
	})
	c.logOp(ctx, "tenant remove", map[string]any{"tenant": id}, err)
	if err != nil {
		return fmt.Errorf("remove tenant: %w", err)
	}
	return nil
}
