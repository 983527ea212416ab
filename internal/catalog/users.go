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
}

// SetUser creates a router user or replaces its verifiers.
func (c *Catalog) SetUser(ctx context.Context, u User) error {
	_, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.users (name, scram, md5) VALUES ($1, $2, $3)
		ON CONFLICT (name) DO UPDATE SET scram = excluded.scram, md5 = excluded.md5`, u.Name, u.SCRAM, u.MD5)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23514" {
		err = fmt.Errorf("user %q: name must be 1 to 63 bytes and verifiers well formed", u.Name)
	}
	c.logOp(ctx, "user set", map[string]any{"user": u.Name}, err)
	if err != nil {
		return fmt.Errorf("set user: %w", err)
	}
	return nil
}

// Users lists the router users.
func (c *Catalog) Users(ctx context.Context) ([]User, error) {
	rows, err := c.pool.Query(ctx, `SELECT name, scram, md5 FROM pgtenant.users ORDER BY name`)
	if err != nil {
		if isUndefinedTable(err) {
			return nil, ErrNotInitialized
		}
		return nil, fmt.Errorf("list users: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (User, error) {
		var u User
		err := r.Scan(&u.Name, &u.SCRAM, &u.MD5)
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
