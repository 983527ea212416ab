package router

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// arTypeMap is the query ActiveRecord runs when it connects, before the app
// names a tenant.
const arTypeMap = `SELECT t.oid, t.typname, t.typelem, t.typdelim, t.typinput, r.rngsubtype, t.typtype, t.typbasetype
FROM pg_type as t
LEFT JOIN pg_range as r ON oid = rngtypid
WHERE
  t.typname IN ('int2', 'int4', 'int8', 'oid', 'float4', 'float8', 'numeric', 'bool', 'timestamp', 'timestamptz')`

// TestNoShardWithoutTenant: statements that read only the system catalogs
// run without a tenant, in every exec mode and both pool modes; statements
// that touch a table are refused with 3D000 and say why (issue 11, item 1).
func TestNoShardWithoutTenant(t *testing.T) {
	for _, pm := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(pm), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: pm}, nil)
			for _, mode := range execModes {
				t.Run(mode.String(), func(t *testing.T) {
					c := connect(t, s, "", mode)
					ctx := ctx(t)
					rows, err := c.Query(ctx, arTypeMap)
					if err != nil {
						t.Fatalf("type map: %v", err)
					}
					n := 0
					for rows.Next() {
						n++
					}
					if err := rows.Err(); err != nil || n != 10 {
						t.Fatalf("type map: %d rows, %v; want 10", n, err)
					}
					var count int
					if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = $1", "shard_0000").Scan(&count); err != nil || count != 3 {
						t.Fatalf("pg_tables: %d, %v; want 3 (shard 0's node)", count, err)
					}
					// Unqualified names resolve in pg_catalog only.
					var path string
					if err := c.QueryRow(ctx, "SELECT array_to_string(current_schemas(false), ',') FROM pg_catalog.pg_class LIMIT 1").Scan(&path); err != nil || path != "pg_catalog" {
						t.Fatalf("search_path without a tenant: %q, %v; want pg_catalog", path, err)
					}
					var version string
					if err := c.QueryRow(ctx, "SELECT version()").Scan(&version); err != nil || !strings.HasPrefix(version, "PostgreSQL") {
						t.Fatalf("version(): %q, %v", version, err)
					}
					var tables []string
					rows, err = c.Query(ctx, "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
					if err == nil {
						tables, err = pgx.CollectRows(rows, pgx.RowTo[string])
					}
					if err != nil || len(tables) == 0 {
						// current_schema() is pg_catalog without a tenant.
						t.Fatalf("information_schema.tables: %v, %v", tables, err)
					}
					// A table, even next to catalog reads, needs a tenant.
					for _, q := range []string{
						"SELECT * FROM items",
						"SELECT c.relname FROM pg_class c JOIN items i ON true",
						"SELECT (SELECT count(*) FROM whoami) FROM pg_namespace",
						"SELECT * FROM shard_0001.items",
						"SELECT nextval('shard_0001.sink_id_seq')",
					} {
						_, err := c.Exec(ctx, q)
						var pe *pgconn.PgError
						if !errors.As(err, &pe) || pe.Code != "3D000" || !strings.Contains(pe.Hint, "pgtenant.tenant") {
							t.Fatalf("%s: %v, want 3D000 with a hint", q, err)
						}
						if !strings.Contains(pe.Detail, "needs a shard") {
							t.Fatalf("%s: detail %q does not say why", q, pe.Detail)
						}
					}
					// With a tenant the same catalog query sees the shard's
					// tables through its search_path.
					if _, err := c.Exec(ctx, "SET pgtenant.tenant = 't5'"); err != nil {
						t.Fatal(err)
					}
					if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_catalog.pg_class c WHERE c.relkind = 'r' AND pg_catalog.pg_table_is_visible(c.oid) AND c.relnamespace <> 'pg_catalog'::regnamespace").Scan(&count); err != nil || count != 3 {
						t.Fatalf("tables visible with tenant t5: %d, %v; want 3", count, err)
					}
				})
			}
		})
	}
}

// TestNoShardInTransaction: a catalog read in a transaction block without
// a tenant runs, and the block can still name its tenant afterwards.
func TestNoShardInTransaction(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	c := connect(t, s, "", pgx.QueryExecModeCacheStatement)
	ctx := ctx(t)
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRow(ctx, "SELECT count(*) FROM pg_type WHERE typname = $1", "int4").Scan(&n); err != nil || n != 1 {
		t.Fatalf("catalog read in a block: %d, %v", n, err)
	}
	if _, err := tx.Exec(ctx, "SET LOCAL pgtenant.tenant = 't2'"); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&n); err != nil || n != 2 {
		t.Fatalf("after the catalog read: shard %d, %v; want 2", n, err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
}
