package catalog

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// ErrUnknownUser means no router user of that name exists.
var ErrUnknownUser = errors.New("unknown user")

// User is a router user: the name clients log in with and its password
// verifiers. The password itself is never stored.
type User struct {
	Name string
	// SCRAM is a SCRAM-SHA-256 verifier in Postgres' format.
	SCRAM string
	// MD5 is "md5" followed by hex(md5(password + name)).
	MD5 string
	// Role is the granular role (`pgtenant role create`) the user's
	// transactions run as; "" means the runtime role.
	Role string
	// Tenant restricts the user to one tenant; "" means unrestricted.
	Tenant string
	// Shard is Tenant's shard when Users reads it, -1 when unknown.
	Shard int
}

// SetUser creates a router user or replaces its verifiers.
func (c *Catalog) SetUser(ctx context.Context, u User) error {
	_, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.users (name, scram, md5, role, tenant) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (name) DO UPDATE SET scram = excluded.scram, md5 = excluded.md5, role = excluded.role, tenant = excluded.tenant`,
		u.Name, u.SCRAM, u.MD5, nullIfEmpty(u.Role), nullIfEmpty(u.Tenant))
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23514" {
		err = fmt.Errorf("user %q: name must be 1 to 63 bytes, verifiers well formed, and a role and a tenant are not given together", u.Name)
	} else if errors.As(err, &pgErr) && pgErr.Code == "23503" {
		err = fmt.Errorf("user %q: role %q does not exist; create it with `pgtenant role create %s --grant SELECT`", u.Name, u.Role, u.Role)
	}
	c.logOp(ctx, "user set", map[string]any{"user": u.Name, "role": u.Role, "tenant": u.Tenant}, err)
	if err != nil {
		return fmt.Errorf("set user: %w", err)
	}
	return nil
}

// Users lists the router users.
func (c *Catalog) Users(ctx context.Context) ([]User, error) {
	rows, err := c.pool.Query(ctx, `SELECT u.name, u.scram, u.md5, coalesce(u.role, ''), coalesce(u.tenant, ''), coalesce(t.shard, -1)
		FROM pgtenant.users u LEFT JOIN pgtenant.tenants t ON t.id = u.tenant ORDER BY u.name`)
	if err != nil {
		if isUndefinedTable(err) {
			return nil, ErrNotInitialized
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42703" {
			return nil, fmt.Errorf("list users: the catalog schema is older than this pgtenant; upgrade it with `pgtenant init --shards N` (the same N): %w", err)
		}
		return nil, fmt.Errorf("list users: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (User, error) {
		var u User
		err := r.Scan(&u.Name, &u.SCRAM, &u.MD5, &u.Role, &u.Tenant, &u.Shard)
		return u, err
	})
}

// RemoveUser deletes a router user.
func (c *Catalog) RemoveUser(ctx context.Context, name string) error {
	tag, err := c.pool.Exec(ctx, `DELETE FROM pgtenant.users WHERE name = $1`, name)
	if err == nil && tag.RowsAffected() == 0 {
		err = fmt.Errorf("user %q: %w", name, ErrUnknownUser)
	}
	c.logOp(ctx, "user remove", map[string]any{"user": name}, err)
	if err != nil {
		return fmt.Errorf("remove user: %w", err)
	}
	return nil
}

func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// BumpMapVersion makes every router reload the map and the users (for
// changes to what they read with the users, such as the runtime role).
func (c *Catalog) BumpMapVersion(ctx context.Context) error {
	_, err := c.pool.Exec(ctx, `WITH v AS (UPDATE pgtenant.map_version SET version = version + 1 RETURNING version),
		x AS (INSERT INTO pgtenant.map_changes (version, kind) SELECT version, 'all' FROM v)
		SELECT pg_notify($1, version::text) FROM v`, Channel)
	if err != nil {
		return fmt.Errorf("bump map version: %w", err)
	}
	return nil
}
