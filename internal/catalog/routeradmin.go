package catalog

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// SetRouterAdminURL records where router id (registered by Heartbeat)
// serves its HTTP endpoints (/metrics, /admin/), so that commands such as
// `pgtenant tenant top` can ask every router.
func (c *Catalog) SetRouterAdminURL(ctx context.Context, id, url string) error {
	if _, err := c.pool.Exec(ctx, `UPDATE pgtenant.routers SET admin_url = $2 WHERE id = $1`, id, url); err != nil {
		return fmt.Errorf("record router admin url: %w", err)
	}
	return nil
}

// RouterAdmin is a live router's HTTP base URL.
type RouterAdmin struct {
	ID  string
	URL string
}

// RouterAdminURLs lists the routers seen within `within` that serve HTTP
// endpoints.
func (c *Catalog) RouterAdminURLs(ctx context.Context, within time.Duration) ([]RouterAdmin, error) {
	rows, err := c.pool.Query(ctx, `SELECT id, admin_url FROM pgtenant.routers
		WHERE last_seen > now() - $1::interval AND admin_url IS NOT NULL ORDER BY id`, within.String())
	if err != nil {
		return nil, fmt.Errorf("list router admin urls: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (RouterAdmin, error) {
		var ra RouterAdmin
		err := r.Scan(&ra.ID, &ra.URL)
		return ra, err
	})
}
