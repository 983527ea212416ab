package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// TenantChannel is the NOTIFY channel on which tenant changes are announced
// (by a statement trigger on pgtenant.tenants, in the changing transaction).
// The payload is the kind of change, 'i' (insert), 'u' (update) or 'd'
// (delete), followed by a JSON array of the ids changed, or by nothing when
// the statement changed too many to name; '*' is a TRUNCATE. Inserts are
// not announced (see UnknownTenantTTL).
const TenantChannel = "pgtenant_tenants"

// DefaultTenantCache is how many tenant lookups a router keeps by default.
const DefaultTenantCache = 200_000

// UnknownTenantTTL is how long a router keeps the answer that a tenant is
// not registered. Registering a tenant announces nothing (see upgrade 9 in
// schema.go), so a tenant a router was asked for just before it was
// registered is routed at most this long after.
const UnknownTenantTTL = 50 * time.Millisecond

// lookupTimeout bounds one lookup of a tenant in the catalog.
const lookupTimeout = 3 * time.Second

// tenantDir is the catalog's placement.Directory: tenants are looked up in
// the catalog on demand, and the answers kept in a bounded cache while a
// Watch on this catalog listens on TenantChannel, which invalidates them
// ("unregistered" answers only for UnknownTenantTTL). While nothing listens (before the router's Watch has
// connected, or while the catalog is unreachable), every lookup asks the
// catalog, and a cached answer is used only when the catalog does not answer.
type tenantDir struct {
	c     *Catalog
	cache *placement.TenantCache
	// live counts Watch connections listening on TenantChannel.
	live atomic.Int32
}

// SetTenantCache sets how many tenant lookups the maps this catalog loads
// keep (DefaultTenantCache when n <= 0). Call it before LoadMap or Watch.
func (c *Catalog) SetTenantCache(n int) { c.tenantCache = n }

// tenants returns the catalog's tenant directory, made on first use.
func (c *Catalog) tenants() *tenantDir {
	c.dirOnce.Do(func() {
		n := c.tenantCache
		if n <= 0 {
			n = DefaultTenantCache
		}
		c.dir = &tenantDir{c: c, cache: placement.NewTenantCache(n, UnknownTenantTTL)}
	})
	return c.dir
}

// TenantShard implements placement.Directory.
func (d *tenantDir) TenantShard(ctx context.Context, id string) (int, error) {
	if d.live.Load() > 0 {
		if s, ok := d.cache.Get(id); ok {
			return answer(id, s)
		}
		f, leader := d.cache.Begin(id)
		if !leader {
			s, err := f.Wait(ctx)
			if err != nil {
				return 0, err
			}
			return answer(id, s)
		}
		s, err := d.query(ctx, id)
		f.Finish(s, err)
		if err != nil {
			if s, ok := d.cache.Known(id); ok {
				return answer(id, s) // the catalog is away: what this router knew
			}
			return 0, err
		}
		return answer(id, s)
	}
	epoch := d.cache.Epoch()
	s, err := d.query(ctx, id)
	if err != nil {
		if s, ok := d.cache.Known(id); ok {
			return answer(id, s) // the catalog is away: what this router knew
		}
		return 0, err
	}
	// Kept to fall back on; Watch's next listening makes it stale for Get.
	d.cache.PutAt(id, s, epoch)
	return answer(id, s)
}

func answer(id string, shard int) (int, error) {
	if shard == placement.NoShard {
		return 0, fmt.Errorf("tenant %q: %w", id, placement.ErrUnknownTenant)
	}
	return shard, nil
}

// query reads tenant id's shard from the catalog (placement.NoShard when it
// is not registered).
func (d *tenantDir) query(ctx context.Context, id string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	var shard int32
	err := d.c.pool.QueryRow(ctx, `SELECT shard FROM pgtenant.tenants WHERE id = $1`, id).Scan(&shard)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) && ctx.Err() == nil {
		// Once more, within the same time limit, on new connections: a
		// read, and the pool may have handed out a connection the server
		// ended while it was idle (pg_terminate_backend of the idle
		// sessions, a restart), which ended its idle neighbours too.
		d.c.pool.Reset()
		err = d.c.pool.QueryRow(ctx, `SELECT shard FROM pgtenant.tenants WHERE id = $1`, id).Scan(&shard)
	}
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return placement.NoShard, nil
	case err != nil:
		return 0, fmt.Errorf("look up tenant %q: %w: %w", id, placement.ErrDirectoryUnavailable, err)
	}
	return int(shard), nil
}

// listening is called by Watch once it LISTENs on TenantChannel: changes
// made while nobody listened were missed, so every answer cached so far is
// asked again before it is used, and kept only to fall back on while the
// catalog does not answer (a router keeps serving the tenants it knew
// through a catalog outage, however many times its Watch reconnected).
func (d *tenantDir) listening() {
	d.cache.Stale()
	d.live.Add(1)
}

// deaf is called by Watch when its connection ends.
func (d *tenantDir) deaf() { d.live.Add(-1) }

// notified applies a TenantChannel payload.
func (d *tenantDir) notified(payload string) {
	if payload == "" || payload == "*" {
		d.cache.Clear()
		return
	}
	op, rest := payload[0], payload[1:]
	if rest == "" {
		if op == 'i' {
			d.cache.DropUnknown() // inserts make only "unregistered" answers wrong
		} else {
			d.cache.Clear()
		}
		return
	}
	var ids []string
	if err := json.Unmarshal([]byte(rest), &ids); err != nil {
		d.c.logger.Warn("tenant change notification not understood; forgetting every cached tenant", "payload", payload, "err", err)
		d.cache.Clear()
		return
	}
	d.cache.Invalidate(ids...)
}
