package tables

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
)

// ErrTenantHasRows means a tenant still has rows in registered tables.
var ErrTenantHasRows = errors.New("the tenant still has rows")

// RemoveOptions choose what RemoveTenant does with a tenant's rows.
type RemoveOptions struct {
	// Purge deletes the tenant's rows from every registered table first.
	Purge bool
	// Force unregisters the tenant even though it has rows (they stay).
	Force bool
	// Batch is the rows deleted per transaction when purging; 0 means 5000.
	Batch int
	// Progress, when set, is called after each table is purged.
	Progress func(RowCount)
}

// RemoveTenant unregisters tenant id. While the tenant has rows in any
// registered table it is refused with ErrTenantHasRows naming the tables
// and counts, unless opts.Purge (the rows are deleted, then the tenant
// unregistered, then rows written meanwhile deleted too) or opts.Force.
// It returns the rows found (before a purge).
func RemoveTenant(ctx context.Context, c *catalog.Catalog, id string, opts RemoveOptions) ([]RowCount, error) {
	loc, err := c.Locate(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("remove tenant: %w", err)
	}
	rules, err := New(c.Pool()).List(ctx)
	if err != nil {
		return nil, fmt.Errorf("remove tenant: %w", err)
	}
	conn, err := pgx.Connect(ctx, loc.Node.DSN)
	if err != nil {
		return nil, fmt.Errorf("remove tenant: connect to node %s: %w", loc.Node.Name, err)
	}
	defer conn.Close(context.Background())
	counts, err := CountTenantRows(ctx, conn, loc.Shard.Schema, id, rules)
	if err != nil {
		return nil, fmt.Errorf("remove tenant: %w", err)
	}
	if len(counts) > 0 && !opts.Purge && !opts.Force {
		var parts []string
		for _, rc := range counts {
			parts = append(parts, fmt.Sprintf("%s (%d)", rc.Table, rc.Rows))
		}
		return counts, fmt.Errorf("tenant %q has rows in %s: %w; delete them with `pgtenant tenant remove --purge`, or keep them with --force", id, strings.Join(parts, ", "), ErrTenantHasRows)
	}
	if len(counts) > 0 && opts.Purge {
		if err := PurgeTenant(ctx, conn, loc.Shard.Schema, id, rules, opts.Batch, opts.Progress); err != nil {
			return counts, fmt.Errorf("remove tenant: purge (the tenant is still registered; run again): %w", err)
		}
	}
	if err := c.RemoveTenant(ctx, id); err != nil {
		return counts, err
	}
	if opts.Purge {
		// Transactions routed before the routers reloaded may have written since.
		if err := PurgeTenant(ctx, conn, loc.Shard.Schema, id, rules, opts.Batch, nil); err != nil {
			return counts, fmt.Errorf("remove tenant: unregistered, but deleting rows written meanwhile failed: %w", err)
		}
	}
	return counts, nil
}
