package importer

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// SchemaPerTenantOptions describe a legacy database with a schema per
// tenant (InitOptions.SchemaPerTenant).
type SchemaPerTenantOptions struct {
	// Pattern selects the tenant schemas (SQL LIKE); "" means every schema
	// but public, pg_*, information_schema and pgtenant*. Ignored with Map.
	Pattern string
	// Map names the tenant schemas and their tenants (schema → tenant);
	// nil means each schema's tenant is its name.
	Map map[string]string
	// Template is the schema every tenant schema is compared with and whose
	// tables become the shards' baseline; "" means the first tenant schema.
	Template string
	// Column is the tenant column the shards' tables gain; "" means
	// DefaultTenantColumn. ColumnType is its type; "" means text.
	Column, ColumnType string
}

// schemaSig is one schema's tables and their columns (name and type, in
// name order: the copy and the stream name columns, so their order may
// differ between schemas).
type schemaSig map[string][]string

// checkApartment is check for a legacy database with a schema per tenant:
// the prerequisites, then the tenant schemas, each compared with the
// template, and their tenant ids. It returns the survey, the shape to
// record, and every problem found.
func checkApartment(ctx context.Context, c *catalog.Catalog, conn *pgx.Conn, o *SchemaPerTenantOptions, registerTenants bool) (*Survey, *apartment, []Problem, error) {
	sv := &Survey{}
	probs, err := checkPrereqs(ctx, c, conn, sv, MethodLogical, "")
	if err != nil {
		return nil, nil, nil, err
	}
	add := func(code, msg, hint string) { probs = append(probs, Problem{Code: code, Message: msg, Hint: hint}) }
	if o.Column == "" {
		o.Column = DefaultTenantColumn
	}
	if o.ColumnType == "" {
		o.ColumnType = "text"
	}
	if !tables.ValidIdent(o.Column) {
		add("42602", fmt.Sprintf("--tenant-column %q is not a plain identifier", o.Column), "name the tenant column with lowercase letters, digits and _")
	}
	var typ *string
	if err := conn.QueryRow(ctx, `SELECT format_type(to_regtype($1), NULL)`, o.ColumnType).Scan(&typ); err != nil {
		add("42704", fmt.Sprintf("--tenant-column-type %q is not a type: %v", o.ColumnType, err), "give a type the legacy database knows, e.g. text, uuid or bigint")
	} else if typ == nil {
		add("42704", fmt.Sprintf("--tenant-column-type %q is not a type of the legacy database", o.ColumnType), "give a type the legacy database knows, e.g. text, uuid or bigint")
	} else {
		o.ColumnType = *typ
	}

	// The tenant schemas.
	var schemas []string
	if o.Map != nil {
		for s := range o.Map {
			schemas = append(schemas, s)
		}
		sort.Strings(schemas)
		rows, err := conn.Query(ctx, `SELECT s FROM unnest($1::text[]) s WHERE NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = s) ORDER BY s`, schemas)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("look for the tenant map's schemas: %w", err)
		}
		missing, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, nil, nil, fmt.Errorf("look for the tenant map's schemas: %w", err)
		}
		if len(missing) > 0 {
			add("3F000", fmt.Sprintf("%d schema(s) of the tenant map are not in the legacy database, e.g. %s", len(missing), quoteAll(first(missing, maxIDs))),
				"fix the tenant map: one line per tenant schema, schema,tenant")
			return sv, nil, probs, nil
		}
	} else {
		rows, err := conn.Query(ctx, `SELECT nspname FROM pg_namespace
			WHERE nspname NOT LIKE 'pg\_%' AND nspname NOT LIKE 'pgtenant%' AND nspname NOT IN ('public', 'information_schema')
			AND ($1 = '' OR nspname LIKE $1) ORDER BY nspname`, o.Pattern)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("list the tenant schemas: %w", err)
		}
		if schemas, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return nil, nil, nil, fmt.Errorf("list the tenant schemas: %w", err)
		}
	}
	if len(schemas) == 0 {
		add("3F000", "the legacy database has no tenant schema", "name them with --tenant-schemas PATTERN (SQL LIKE) or --tenant-map FILE")
		return sv, nil, probs, nil
	}
	ap := &apartment{column: o.Column, colType: o.ColumnType, template: o.Template, schemas: map[string]string{}, tenants: map[string]string{}}
	if ap.template == "" {
		ap.template = schemas[0]
	}

	// Every tenant schema has the template's tables and columns.
	sigs, err := readSigs(ctx, conn, append([]string{ap.template}, schemas...))
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl, ok := sigs[ap.template]
	if !ok || len(tmpl) == 0 {
		add("3F000", fmt.Sprintf("the template schema %q has no tables", ap.template), "name the schema whose tables every tenant has with --template-schema")
		return sv, nil, probs, nil
	}
	var tableDiffs, colDiffs []string
	nTable, nCol := 0, 0
	for _, s := range schemas {
		if s == ap.template {
			continue
		}
		td, cd := compareSig(tmpl, sigs[s])
		if td != "" {
			nTable++
			if len(tableDiffs) < maxIDs {
				tableDiffs = append(tableDiffs, fmt.Sprintf("%q %s", s, td))
			}
		}
		if cd != "" {
			nCol++
			if len(colDiffs) < maxIDs {
				colDiffs = append(colDiffs, fmt.Sprintf("%q %s", s, cd))
			}
		}
	}
	if nTable > 0 {
		add("42P01", fmt.Sprintf("%d tenant schema(s) do not have the tables of the template schema %q: %s", nTable, ap.template, strings.Join(tableDiffs, "; ")),
			"every tenant schema needs the same tables: migrate the schemas that lag behind (or leave them out with --tenant-schemas or --tenant-map), then run import init again")
	}
	if nCol > 0 {
		add("42804", fmt.Sprintf("%d tenant schema(s) have columns that differ from the template schema %q: %s", nCol, ap.template, strings.Join(colDiffs, "; ")),
			"every tenant schema needs the same columns with the same types: migrate the schemas that differ, then run import init again")
	}
	names := make([]string, 0, len(tmpl))
	for n := range tmpl {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for _, c := range tmpl[n] {
			if strings.HasPrefix(c, o.Column+" ") {
				add("42701", fmt.Sprintf("table %s already has a column %s, the tenant column its shard table gains", n, o.Column), "name another tenant column with --tenant-column")
			}
		}
	}
	// Keys: the shard's key is (tenant, the table's key).
	rows, err := conn.Query(ctx, `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> 'goose_db_version'
		AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) ORDER BY 1`, ap.template)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read the template's primary keys: %w", err)
	}
	keyless, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read the template's primary keys: %w", err)
	}
	if len(keyless) > 0 {
		add("55000", fmt.Sprintf("table(s) without a primary key: %s", strings.Join(keyless, ", ")),
			"give each table a primary key in every tenant schema (its changes are found by it on the shards, where its key gains the tenant column)")
	}

	// The registry: the template's tables are tenant tables with the tenant
	// column, public's are reference tables; rules that say otherwise stop.
	pub, err := tables.AppTables(ctx, conn, "public")
	if err != nil {
		return nil, nil, nil, err
	}
	rules, err := tables.New(c.Pool()).List(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	byName := map[string]tables.Table{}
	for _, t := range rules {
		byName[t.Name] = t
	}
	var conflicts []string
	for _, n := range names {
		sv.Tables = append(sv.Tables, tables.Table{Name: n, Kind: tables.KindTenant, TenantColumn: o.Column})
		if r, ok := byName[n]; ok && (r.Kind != tables.KindTenant || r.TenantColumn != o.Column) {
			conflicts = append(conflicts, fmt.Sprintf("%s (%s; a tenant schema's table gets tenant column %s)", n, r.Describe(), o.Column))
		}
	}
	for _, n := range pub {
		if _, ok := tmpl[n]; ok {
			continue
		}
		if r, ok := byName[n]; ok && r.Kind != tables.KindShared {
			conflicts = append(conflicts, fmt.Sprintf("%s (%s; a table of public is a reference table)", n, r.Describe()))
		}
	}
	if len(conflicts) > 0 {
		add("42P16", fmt.Sprintf("tables registry rule(s) that do not fit a schema per tenant: %s", strings.Join(conflicts, ", ")),
			"remove them (pgtenant table remove NAME): import init registers the rules itself")
	}

	// The tenant ids.
	var invalid []string
	seen := map[string]string{}
	for _, s := range schemas {
		id := s
		if o.Map != nil {
			id = o.Map[s]
		}
		if err := placement.ValidateTenantID(id); err != nil {
			invalid = append(invalid, fmt.Sprintf("schema %q: %q (%v)", s, id, err))
			continue
		}
		if prev, dup := seen[id]; dup {
			invalid = append(invalid, fmt.Sprintf("schemas %q and %q: both tenant %q", prev, s, id))
			continue
		}
		seen[id] = s
		ap.schemas[s], ap.tenants[id] = id, s
		sv.Tenants = append(sv.Tenants, id)
	}
	sort.Strings(sv.Tenants)
	if len(invalid) > 0 {
		add("22023", fmt.Sprintf("%d tenant schema(s) whose tenant id pgtenant cannot register: %s", len(invalid), strings.Join(first(invalid, maxIDs), ", ")),
			"rename those schemas, leave them out (--tenant-schemas), or name each schema's tenant in a --tenant-map file (schema,tenant per line)")
	}
	registered, err := registeredTenants(ctx, c)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, id := range sv.Tenants {
		if !registered[id] {
			sv.Unregistered = append(sv.Unregistered, id)
		}
	}
	if len(sv.Unregistered) > 0 && !registerTenants {
		add("23503", fmt.Sprintf("%d tenant id(s) of the tenant schemas are not registered, e.g. %s", len(sv.Unregistered), quoteAll(first(sv.Unregistered, maxIDs))),
			"register them with `pgtenant tenant add ID` (or `--shard N` to place one by hand), or pass --register-tenants to register every one by hash")
	}
	return sv, ap, probs, nil
}

func quoteAll(s []string) string {
	q := make([]string, len(s))
	for i, v := range s {
		q[i] = fmt.Sprintf("%q", v)
	}
	return strings.Join(q, ", ")
}

// readSigs reads the tables and columns of schemas in one query.
func readSigs(ctx context.Context, conn *pgx.Conn, schemas []string) (map[string]schemaSig, error) {
	rows, err := conn.Query(ctx, `SELECT n.nspname, c.relname, a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
		WHERE n.nspname = ANY ($1) AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> 'goose_db_version'
		ORDER BY 1, 2, 3`, schemas)
	if err != nil {
		return nil, fmt.Errorf("read the tenant schemas' tables: %w", err)
	}
	out := map[string]schemaSig{}
	var schema, table, col string
	if _, err := pgx.ForEachRow(rows, []any{&schema, &table, &col}, func() error {
		s := out[schema]
		if s == nil {
			s = schemaSig{}
			out[schema] = s
		}
		s[table] = append(s[table], col)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read the tenant schemas' tables: %w", err)
	}
	return out, nil
}

// compareSig describes how s differs from the template: its tables, then
// its columns ("" when they are the same).
func compareSig(tmpl, s schemaSig) (tableDiff, colDiff string) {
	var missing, extra, cols []string
	for t, tc := range tmpl {
		sc, ok := s[t]
		if !ok {
			missing = append(missing, t)
			continue
		}
		if strings.Join(tc, ", ") != strings.Join(sc, ", ") {
			cols = append(cols, fmt.Sprintf("%s (%s; template: %s)", t, strings.Join(sc, ", "), strings.Join(tc, ", ")))
		}
	}
	for t := range s {
		if _, ok := tmpl[t]; !ok {
			extra = append(extra, t)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	sort.Strings(cols)
	var td []string
	if len(missing) > 0 {
		td = append(td, "lacks "+strings.Join(missing, ", "))
	}
	if len(extra) > 0 {
		td = append(td, "has more: "+strings.Join(extra, ", "))
	}
	return strings.Join(td, ", "), strings.Join(cols, ", ")
}

// initApartment is Init for a legacy database with a schema per tenant.
func (im *Importer) initApartment(ctx context.Context, conn *pgx.Conn, opts InitOptions, res *InitResult) (*InitResult, error) {
	o := opts.SchemaPerTenant
	sv, ap, probs, err := checkApartment(ctx, im.cat, conn, o, opts.RegisterTenants)
	if err != nil {
		return nil, fmt.Errorf("import init: check: %w", err)
	}
	res.Survey = sv
	if len(probs) > 0 {
		err := &CheckError{Problems: probs}
		im.cat.RecordOperation(ctx, "import init", map[string]any{"node": opts.Node, "check": "failed", "schema_per_tenant": true}, err)
		return res, err
	}
	res.Schema, res.TenantSchemas = ap.template, len(ap.schemas)
	if opts.CheckOnly {
		return res, nil
	}
	report, err := im.cat.AddNode(ctx, opts.Node, opts.DSN)
	if err != nil {
		return res, fmt.Errorf("import init: register the legacy database: %w", err)
	}
	sv.Identity = report.Identity
	if opts.RegisterTenants && len(sv.Unregistered) > 0 {
		if res.Registered, err = im.cat.AddTenants(ctx, sv.Unregistered); err != nil {
			im.undoNode(opts.Node)
			return res, fmt.Errorf("import init: %w", err)
		}
	}
	// The registry's rules: tenant tables with the tenant column, public's
	// tables shared (those without a rule yet).
	reg := tables.New(im.cat.Pool())
	existing, err := reg.List(ctx)
	if err != nil {
		im.undoNode(opts.Node)
		return res, fmt.Errorf("import init: %w", err)
	}
	have := map[string]bool{}
	for _, t := range existing {
		have[t.Name] = true
	}
	tenantRules, sharedRules, err := ap.rules(ctx, conn)
	if err != nil {
		im.undoNode(opts.Node)
		return res, fmt.Errorf("import init: %w", err)
	}
	for _, t := range append(tenantRules, sharedRules...) {
		if have[t.Name] {
			continue
		}
		t.Source = "import init"
		if err := reg.Set(ctx, t); err != nil {
			im.undoNode(opts.Node)
			return res, fmt.Errorf("import init: register table %s: %w", t.Name, err)
		}
	}
	schemas, tenants := make([]string, 0, len(ap.schemas)), make([]string, 0, len(ap.schemas))
	for s, id := range ap.schemas {
		schemas, tenants = append(schemas, s), append(tenants, id)
	}
	err = pgx.BeginFunc(ctx, im.cat.Pool(), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM pgtenant.imports WHERE state = 'finished'`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO pgtenant.imports (legacy_node, legacy_schema, tenant_column, tenant_column_type) VALUES ($1, $2, $3, $4)`,
			opts.Node, ap.template, ap.column, ap.colType); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO pgtenant.import_schemas (schema_name, tenant) SELECT * FROM unnest($1::text[], $2::text[])`, schemas, tenants); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO pgtenant.import_shards (shard) SELECT id FROM pgtenant.shards`)
		res.Shards = int(tag.RowsAffected())
		return err
	})
	im.cat.RecordOperation(ctx, "import init", map[string]any{"node": opts.Node, "template": ap.template, "tenant_schemas": len(ap.schemas),
		"tenant_column": ap.column, "shards": res.Shards, "tables": len(sv.Tables), "registered": res.Registered}, err)
	if err != nil {
		im.undoNode(opts.Node)
		return res, fmt.Errorf("import init: record the import: %w", err)
	}
	im.logger.Info("import registered", "node", opts.Node, "template", ap.template, "tenant_schemas", len(ap.schemas), "shards", res.Shards)
	return res, nil
}
