package importer

// A legacy database with a schema per tenant (the Rails apartment style):
// every tenant has a schema of its own holding the same tables, and the
// tables of `public` are shared by all (reference tables). The tenant of a
// row is its schema's tenant: the schema's name, or what a tenant map says.
// On the shards the tables gain a tenant column (first in every primary
// key, unique constraint and foreign key between tenant tables: ids are
// unique per schema only). Until its shard is cut over, the router serves a
// tenant from its own schema on the legacy database (placement
// Shard.SchemaPerTenant); the copy reads each schema's tables with the
// tenant as a constant column; the stream routes each change by its
// relation's schema (pgoutput's Relation message names it) and adds the
// tenant column; verify compares the rows without it; a rollback writes a
// node's rows back into the tenant's schema without it.

import (
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/stream"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// DefaultTenantColumn is the column the shards' tables gain when the
// legacy database has a schema per tenant.
const DefaultTenantColumn = "tenant_id"

// apartment is a running import's schema-per-tenant shape.
type apartment struct {
	column, colType string
	template        string
	schemas         map[string]string // schema → tenant
	tenants         map[string]string // tenant → schema
	// cols are the template tables' columns a copy writes (not generated
	// ones), filled by loadColumns.
	cols map[string][]string
}

// apartmentOf reads the running import's schema-per-tenant shape, nil when
// the legacy database keeps its tenants in one schema.
func (im *Importer) apartmentOf(ctx context.Context) (*apartment, error) {
	var col, typ *string
	var template string
	err := im.cat.Pool().QueryRow(ctx, `SELECT tenant_column, tenant_column_type, legacy_schema FROM pgtenant.imports WHERE state <> 'finished'`).Scan(&col, &typ, &template)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read the import: %w", err)
	}
	if col == nil {
		return nil, nil
	}
	ap := &apartment{column: *col, colType: "text", template: template, schemas: map[string]string{}, tenants: map[string]string{}}
	if typ != nil {
		ap.colType = *typ
	}
	rows, err := im.cat.Pool().Query(ctx, `SELECT schema_name, tenant FROM pgtenant.import_schemas`)
	if err != nil {
		return nil, fmt.Errorf("read the tenant schemas: %w", err)
	}
	var schema, tenant string
	if _, err := pgx.ForEachRow(rows, []any{&schema, &tenant}, func() error {
		ap.schemas[schema], ap.tenants[tenant] = tenant, schema
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read the tenant schemas: %w", err)
	}
	return ap, nil
}

// sortedSchemas lists the tenant schemas in name order.
func (ap *apartment) sortedSchemas() []string {
	out := make([]string, 0, len(ap.schemas))
	for s := range ap.schemas {
		out = append(out, s)
	}
	sort.Strings(out)
	return out
}

// rules are the registry rules of an apartment import: every table of the
// template schema is a tenant table with the tenant column; the tables of
// public are reference tables, except those named like a tenant table
// (the tenant schemas' tables hide them on the app's search_path, e.g.
// Rails' schema_migrations).
func (ap *apartment) rules(ctx context.Context, conn *pgx.Conn) (tenant, shared []tables.Table, err error) {
	app, err := tables.AppTables(ctx, conn, ap.template)
	if err != nil {
		return nil, nil, err
	}
	pub, err := tables.AppTables(ctx, conn, "public")
	if err != nil {
		return nil, nil, err
	}
	in := map[string]bool{}
	for _, n := range app {
		in[n] = true
		tenant = append(tenant, tables.Table{Name: n, Kind: tables.KindTenant, TenantColumn: ap.column})
	}
	for _, n := range pub {
		if !in[n] {
			shared = append(shared, tables.Table{Name: n, Kind: tables.KindShared})
		}
	}
	return tenant, shared, nil
}

// apartmentRules are ap's rules (the template schema's tables) without the
// tables not in the import: once import start made the publication, the
// template's tables not in it (created after import start; unimported.go
// names them), and the tables excluded with import exclude.
func (im *Importer) apartmentRules(ctx context.Context, conn *pgx.Conn, ap *apartment) (tenant, shared []tables.Table, err error) {
	tenant, shared, err = ap.rules(ctx, conn)
	if err != nil {
		return nil, nil, err
	}
	var pub string
	var ex []string
	err = im.cat.Pool().QueryRow(ctx, `SELECT coalesce(publication, ''), excluded_tables FROM pgtenant.imports WHERE state <> 'finished'`).Scan(&pub, &ex)
	if errors.Is(err, pgx.ErrNoRows) {
		return tenant, shared, nil // import init: no import yet
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read the import: %w", err)
	}
	published := map[string]bool{}
	if pub != "" {
		rows, err := conn.Query(ctx, `SELECT DISTINCT tablename::text FROM pg_publication_tables WHERE pubname = $1 AND schemaname <> $2`, pub, markerSchema)
		if err != nil {
			return nil, nil, fmt.Errorf("read publication %s: %w", pub, err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, nil, fmt.Errorf("read publication %s: %w", pub, err)
		}
		for _, n := range names {
			published[n] = true
		}
	}
	tenant = slices.DeleteFunc(tenant, func(t tables.Table) bool {
		return slices.Contains(ex, t.Name) || pub != "" && !published[t.Name]
	})
	return tenant, shared, nil
}

// loadColumns reads the columns of the template's tables.
func (ap *apartment) loadColumns(ctx context.Context, conn *pgx.Conn, rules []tables.Table) error {
	ap.cols = map[string][]string{}
	for _, t := range rules {
		cols, err := copyColumns(ctx, conn, ap.template, t.Name)
		if err != nil {
			return err
		}
		ap.cols[t.Name] = cols
	}
	return nil
}

// ReadTenantMap reads a tenant map: one line per tenant schema, "schema,tenant"
// (CSV; a line starting with # is a comment). It returns schema → tenant.
func ReadTenantMap(r io.Reader) (map[string]string, error) {
	cr := csv.NewReader(r)
	cr.Comment = '#'
	cr.FieldsPerRecord = 2
	cr.TrimLeadingSpace = true
	out := map[string]string{}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read the tenant map (lines of schema,tenant): %w", err)
		}
		if _, dup := out[rec[0]]; dup {
			return nil, fmt.Errorf("the tenant map names schema %q twice", rec[0])
		}
		out[rec[0]] = rec[1]
	}
}

// quoteLiteral is s as an SQL string constant (an E” string, so it reads
// the same whatever standard_conforming_strings says).
func quoteLiteral(s string) string {
	return "E'" + strings.ReplaceAll(strings.ReplaceAll(s, `\`, `\\`), `'`, `''`) + "'"
}

// tenantRelation is rel (a table of a tenant schema) with the tenant
// column appended as a key column: the shard table's key is (tenant, id).
func (a *applier) tenantRelation(rel *stream.Relation) *stream.Relation {
	if r, ok := a.apRels[rel]; ok {
		return r
	}
	r := *rel
	r.Columns = append(append([]stream.Column(nil), rel.Columns...), stream.Column{Name: a.ap.column, TypeOID: 25, TypeMod: -1, Key: true})
	a.apRels[rel] = &r
	return &r
}

// loadApartment reads the import's shape once (the applier of a
// schema-per-tenant import routes by schema).
func (a *applier) loadApartment(ctx context.Context) error {
	if a.apLoaded {
		return nil
	}
	ap, err := a.im.apartmentOf(ctx)
	if err != nil {
		return err
	}
	a.ap, a.apLoaded, a.apRels = ap, true, map[*stream.Relation]*stream.Relation{}
	return nil
}

// routeSchemaChange routes a change of a tenant schema's table: its tenant
// is the schema's, and the change gains the tenant column. Changes of
// other schemas (public's reference tables) are not applied.
func (a *applier) routeSchemaChange(ctx context.Context, t *stream.Txn, c stream.Change, add func(string, stream.Change)) error {
	tenant, ok := a.ap.schemas[c.Rel.Schema]
	if !ok {
		return nil
	}
	v := stream.Value{Data: []byte(tenant)}
	c.Rel = a.tenantRelation(c.Rel)
	if c.New != nil {
		c.New = append(append(stream.Tuple(nil), c.New...), v)
	}
	if c.Old != nil {
		c.Old = append(append(stream.Tuple(nil), c.Old...), v)
	}
	return a.route(ctx, t, c, tenant, add)
}

// legacySums reads, for each tenant, each table's row count and checksum
// in the tenant's schema (at snapshot when given): the rows as the shard's
// side reads them without the tenant column (shardSums).
func (ap *apartment) legacySums(ctx context.Context, conn *pgx.Conn, snapshot, _ string, rules []tables.Table, tenants []string) (map[[2]string]sum, error) {
	out := map[[2]string]sum{}
	err := inSnapshot(ctx, conn, snapshot, func(tx pgx.Tx) error {
		for _, t := range rules {
			if t.Kind == tables.KindShared {
				continue
			}
			row := ap.rowExpr(t.Name)
			for start := 0; start < len(tenants); start += 200 {
				var parts []string
				for _, id := range tenants[start:min(start+200, len(tenants))] {
					schema, ok := ap.tenants[id]
					if !ok {
						continue
					}
					parts = append(parts, fmt.Sprintf(`SELECT %s::text, count(*), md5(string_agg(%s::text, E'\n' ORDER BY %[2]s::text COLLATE "C")) FROM %s pgtenant_t HAVING count(*) > 0`,
						quoteLiteral(id), row, pgx.Identifier{schema, t.Name}.Sanitize()))
				}
				if len(parts) == 0 {
					continue
				}
				if err := collectSums(ctx, tx, out, t.Name, strings.Join(parts, " UNION ALL ")); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return out, err
}

// shardSums is legacySums' other side: the shard's rows per tenant column
// value, without that column.
func (ap *apartment) shardSums(ctx context.Context, conn *pgx.Conn, snapshot, schema string, rules []tables.Table, tenants []string) (map[[2]string]sum, error) {
	out := map[[2]string]sum{}
	err := inSnapshot(ctx, conn, snapshot, func(tx pgx.Tx) error {
		for _, t := range rules {
			if t.Kind == tables.KindShared {
				continue
			}
			row := ap.rowExpr(t.Name)
			col := "pgtenant_t." + pgx.Identifier{ap.column}.Sanitize() + "::text"
			if err := collectSums(ctx, tx, out, t.Name, fmt.Sprintf(`SELECT %s, count(*), md5(string_agg(%s::text, E'\n' ORDER BY %[2]s::text COLLATE "C"))
				FROM %s pgtenant_t WHERE %[1]s = ANY ($1) GROUP BY 1`, col, row, pgx.Identifier{schema, t.Name}.Sanitize()), tenants); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// rowExpr is ROW(the template's columns of table) over alias pgtenant_t.
func (ap *apartment) rowExpr(table string) string {
	parts := make([]string, len(ap.cols[table]))
	for i, c := range ap.cols[table] {
		parts[i] = "pgtenant_t." + pgx.Identifier{c}.Sanitize()
	}
	return "ROW(" + strings.Join(parts, ", ") + ")"
}

// seqPairs lists the shard's sequences with a legacy counterpart: for a
// schema per tenant, every tenant schema of the shard's tenants has one
// (a shard sequence appears once per tenant; setSequences takes the
// highest).
func (im *Importer) seqPairs(ctx context.Context, legacy, node *pgx.Conn, imp *Import, s ShardProgress) ([]seqPair, error) {
	ap, err := im.apartmentOf(ctx)
	if err != nil {
		return nil, err
	}
	if ap == nil {
		return sequencePairs(ctx, legacy, node, imp.LegacySchema, s.Schema)
	}
	rows, err := im.cat.Pool().Query(ctx, `SELECT id FROM pgtenant.tenants WHERE shard = $1 ORDER BY id`, s.Shard)
	if err != nil {
		return nil, fmt.Errorf("read the shard's tenants: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read the shard's tenants: %w", err)
	}
	var schemas []string
	for _, id := range ids {
		if schema, ok := ap.tenants[id]; ok { // else a tenant registered after init: no legacy schema
			schemas = append(schemas, schema)
		}
	}
	return schemaSequencePairs(ctx, legacy, node, schemas, s.Schema)
}

// schemaSequencePairs is sequencePairs for many legacy schemas with the
// same tables: the shard's sequences read once, their legacy counterparts
// in every schema in one statement (a shard of a schema-per-tenant import
// holds hundreds of tenants: one round trip per schema made a cutover of
// 2,000 schemas spend seconds here). The pairs come per schema in order,
// then in the shard's order of sequences.
func schemaSequencePairs(ctx context.Context, legacy, node *pgx.Conn, schemas []string, shardSchema string) ([]seqPair, error) {
	if len(schemas) == 0 {
		return nil, nil
	}
	rows, err := node.Query(ctx, `SELECT c.relname::text, a.attname::text, pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident(c.relname), a.attname)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
		AND pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident(c.relname), a.attname) IS NOT NULL`, shardSchema)
	if err != nil {
		return nil, fmt.Errorf("list the shard's sequences: %w", err)
	}
	var tbls, cols, seqs []string
	var tbl, col, seq string
	if _, err := pgx.ForEachRow(rows, []any{&tbl, &col, &seq}, func() error {
		tbls, cols, seqs = append(tbls, tbl), append(cols, col), append(seqs, seq)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("list the shard's sequences: %w", err)
	}
	if len(seqs) == 0 {
		return nil, nil
	}
	rows, err = legacy.Query(ctx, `SELECT q.i::int, CASE WHEN to_regclass(quote_ident(s.name) || '.' || quote_ident(q.t)) IS NOT NULL
			THEN pg_get_serial_sequence(quote_ident(s.name) || '.' || quote_ident(q.t), q.c) END
		FROM unnest($1::text[]) WITH ORDINALITY AS s(name, o), unnest($2::text[], $3::text[]) WITH ORDINALITY AS q(t, c, i)
		ORDER BY s.o, q.i`, schemas, tbls, cols)
	if err != nil {
		return nil, fmt.Errorf("find the legacy sequences: %w", err)
	}
	var out []seqPair
	var i int
	var legacySeq *string
	if _, err := pgx.ForEachRow(rows, []any{&i, &legacySeq}, func() error {
		if legacySeq != nil { // else one of the shard's own tables (goose's versions)
			out = append(out, seqPair{shard: seqs[i-1], legacy: *legacySeq})
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("find the legacy sequences: %w", err)
	}
	return out, nil
}

// reverseTransform returns, for a rollback of shard schema's rows into
// their tenants' schemas, a function that rewrites the node's changes: each
// change of a shard table goes to the table of its tenant's schema, without
// the tenant column. Nil when the legacy database keeps its tenants in one
// schema.
func (im *Importer) reverseTransform(ctx context.Context, schema string) (func([]*stream.Txn) error, error) {
	ap, err := im.apartmentOf(ctx)
	if err != nil || ap == nil {
		return nil, err
	}
	type relKey struct {
		rel    *stream.Relation
		schema string
	}
	rels := map[relKey]*stream.Relation{}
	return func(txns []*stream.Txn) error {
		for _, t := range txns {
			for i := range t.Changes {
				c := &t.Changes[i]
				if c.Rel == nil || c.Rel.Schema != schema {
					continue
				}
				idx := column(c.Rel, ap.column)
				if idx < 0 {
					return fmt.Errorf("table %s.%s has no column %s", schema, c.Rel.Table, ap.column)
				}
				tup := c.New
				if c.Kind == stream.Delete || (c.Kind == stream.Update && c.Old != nil) {
					tup = c.Old
				}
				tenant, ok := value(tup, idx)
				if !ok {
					return fmt.Errorf("a %s of %s.%s carries no %s", c.Kind, schema, c.Rel.Table, ap.column)
				}
				target, ok := ap.tenants[tenant]
				if !ok {
					return fmt.Errorf("a %s of %s.%s belongs to tenant %q, which has no schema on the legacy database", c.Kind, schema, c.Rel.Table, tenant)
				}
				k := relKey{c.Rel, target}
				r, ok := rels[k]
				if !ok {
					nr := *c.Rel
					nr.Schema = target
					nr.Columns = append(append([]stream.Column(nil), c.Rel.Columns[:idx]...), c.Rel.Columns[idx+1:]...)
					r = &nr
					rels[k] = r
				}
				drop := func(t stream.Tuple) stream.Tuple {
					if t == nil {
						return nil
					}
					return append(append(stream.Tuple(nil), t[:idx]...), t[idx+1:]...)
				}
				c.Rel, c.New, c.Old = r, drop(c.New), drop(c.Old)
			}
		}
		return nil
	}, nil
}
