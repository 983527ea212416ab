package catalog

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// TenantCounts returns the number of tenants registered in each shard that
// has any (shard id → count).
func (c *Catalog) TenantCounts(ctx context.Context) (map[int]int, error) {
	counts := map[int]int{}
	rows, err := c.pool.Query(ctx, `SELECT shard, count(*)::int FROM pgtenant.tenants GROUP BY shard`)
	if err != nil {
		return nil, fmt.Errorf("count tenants: %w", err)
	}
	var id, n int
	if _, err := pgx.ForEachRow(rows, []any{&id, &n}, func() error { counts[id] = n; return nil }); err != nil {
		return nil, fmt.Errorf("count tenants: %w", err)
	}
	return counts, nil
}

// SchemaSizes returns, for a node's connection, the size in bytes of every
// shard schema there (shard_*; tables with their indexes and TOAST, and
// materialized views), by schema name. Renamed schemas kept after a move
// (shard_NNNN_moved_M) are listed too.
func SchemaSizes(ctx context.Context, conn *pgx.Conn) (map[string]int64, error) {
	rows, err := conn.Query(ctx, `SELECT n.nspname, coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relkind IN ('r', 'm')), 0)::bigint
		FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid
		WHERE n.nspname LIKE 'shard\_%' GROUP BY n.nspname`)
	if err != nil {
		return nil, fmt.Errorf("read shard sizes: %w", err)
	}
	out := map[string]int64{}
	var name string
	var size int64
	if _, err := pgx.ForEachRow(rows, []any{&name, &size}, func() error { out[name] = size; return nil }); err != nil {
		return nil, fmt.Errorf("read shard sizes: %w", err)
	}
	return out, nil
}
