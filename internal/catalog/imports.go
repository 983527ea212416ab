package catalog

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// applyImports places the shards of a running import that have not been cut
// over on the legacy node, in the legacy schema (pgtenant.import_shards,
// written by internal/importer): routers then serve their tenants from the
// existing database unchanged. A catalog without the import tables (an
// older schema read by a test's own DDL) has no import. Once the tables are
// found, readMap reads the overlay in its own snapshot (queueImports) and
// this is not called again.
func (c *Catalog) applyImports(ctx context.Context, q batcher, m *placement.Map) (int, error) {
	var present bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('pgtenant.import_shards') IS NOT NULL`).Scan(&present); err != nil {
		return 0, fmt.Errorf("look for imports: %w", err)
	}
	if !present {
		return 0, nil
	}
	c.importTables.Store(true)
	b := &pgx.Batch{}
	queueImports(b)
	br := q.SendBatch(ctx, b)
	n, err := readImports(br, m)
	if cerr := br.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("read imports: %w", cerr)
	}
	return n, err
}

// queueImports queues the reads of the import overlay (see readImports).
func queueImports(b *pgx.Batch) {
	b.Queue(`SELECT s.shard, i.legacy_node, i.legacy_schema, i.tenant_column IS NOT NULL, s.state <> 'cutover'
		FROM pgtenant.import_shards s CROSS JOIN pgtenant.imports i
		WHERE i.state <> 'finished'`)
	// A schema per tenant: only the schemas not named like their tenant.
	b.Queue(`SELECT tenant, schema_name FROM pgtenant.import_schemas WHERE tenant <> schema_name`)
}

// readImports reads queueImports' results and lays them over m's shards
// (those not cut over go to the legacy database): it returns how many
// shards the running import has, cut over or not (0: no import runs). All
// of them count: an import rollback can put a cut-over shard back on the
// legacy database even when every shard is cut over.
func readImports(br pgx.BatchResults, m *placement.Map) (int, error) {
	rows, err := br.Query()
	if err != nil {
		return 0, fmt.Errorf("read imports: %w", err)
	}
	n := 0
	var shard int
	var node, schema string
	var perTenant, anyPerTenant, legacy bool
	_, err = pgx.ForEachRow(rows, []any{&shard, &node, &schema, &perTenant, &legacy}, func() error {
		n++
		if legacy && shard >= 0 && shard < len(m.Shards) {
			m.Shards[shard].Node, m.Shards[shard].Schema, m.Shards[shard].SchemaPerTenant = node, schema, perTenant
			anyPerTenant = anyPerTenant || perTenant
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read imports: %w", err)
	}
	rows, err = br.Query()
	if err != nil {
		return 0, fmt.Errorf("read import schemas: %w", err)
	}
	var tenant string
	_, err = pgx.ForEachRow(rows, []any{&tenant, &schema}, func() error {
		if anyPerTenant {
			if m.TenantSchemas == nil {
				m.TenantSchemas = map[string]string{}
			}
			m.TenantSchemas[tenant] = schema
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("read import schemas: %w", err)
	}
	return n, nil
}

// Querier is what LegacyNodes needs of a connection: *pgx.Conn, pgx.Tx and
// *pgxpool.Pool have it.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// LegacyNodes names the legacy node of a running import, if any: a node
// that serves shards from the legacy database, left out of every fan-out
// (shard create, reference tables, extensions, roles, rebalancing) so that
// nothing but the import changes it.
func LegacyNodes(ctx context.Context, q Querier) (map[string]bool, error) {
	var present bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('pgtenant.imports') IS NOT NULL`).Scan(&present); err != nil {
		return nil, fmt.Errorf("look for imports: %w", err)
	}
	out := map[string]bool{}
	if !present {
		return out, nil
	}
	rows, err := q.Query(ctx, `SELECT legacy_node FROM pgtenant.imports WHERE state <> 'finished'`)
	if err != nil {
		return nil, fmt.Errorf("read imports: %w", err)
	}
	var name string
	if _, err := pgx.ForEachRow(rows, []any{&name}, func() error { out[name] = true; return nil }); err != nil {
		return nil, fmt.Errorf("read imports: %w", err)
	}
	return out, nil
}
