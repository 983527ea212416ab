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

// Problem is one reason the legacy database cannot be imported yet.
type Problem struct {
	// Code is the SQLSTATE that fits the problem (55000 a prerequisite,
	// 42501 a privilege, 42704/42P01/42703 a registry gap, 23502 NULL tenant
	// ids, 23503 rows whose tenant is not registered or has no parent).
	Code    string
	Message string
	Hint    string
}

// CheckError is the list of problems Check found; nothing was changed.
type CheckError struct {
	Problems []Problem
}

func (e *CheckError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the legacy database cannot be imported yet (%d problem(s); nothing was changed)", len(e.Problems))
	for _, p := range e.Problems {
		// At the line's end: a problem's message often starts with
		// the table it is about ("table t: ...").
		fmt.Fprintf(&b, "\n  %s%s", p.Message, sqlstate(p.Code))
		if p.Hint != "" {
			fmt.Fprintf(&b, "\n    hint: %s", p.Hint)
		}
	}
	return b.String()
}

// SQLState is the code of the first problem.
func (e *CheckError) SQLState() string {
	if len(e.Problems) == 0 {
		return ""
	}
	return e.Problems[0].Code
}

// Has reports whether a problem with code was found.
func (e *CheckError) Has(code string) bool {
	for _, p := range e.Problems {
		if p.Code == code {
			return true
		}
	}
	return false
}

// maxIDs is how many row ids or tenant ids a problem names.
const maxIDs = 10

// Survey is what Check learned about the legacy database.
type Survey struct {
	Tables []tables.Table // the registry rules of the legacy schema's tables, in name order
	// Tenants are the distinct tenant ids found in the legacy rows.
	Tenants []string
	// Unregistered are the tenant ids found in rows but not in the catalog.
	Unregistered []string
	WalLevel     string
	Identity     string
}

// check connects nothing itself: conn is the legacy database, c the catalog.
// It returns every problem it finds rather than the first.
func check(ctx context.Context, c *catalog.Catalog, conn *pgx.Conn, schema string, registerTenants bool, method string) (*Survey, []Problem, error) {
	sv := &Survey{}
	probs, err := checkPrereqs(ctx, c, conn, sv, method, schema)
	if err != nil {
		return nil, nil, err
	}
	add := func(code, msg, hint string) { probs = append(probs, Problem{Code: code, Message: msg, Hint: hint}) }
	var schemaOK bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)`, schema).Scan(&schemaOK); err != nil {
		return nil, nil, fmt.Errorf("look for schema %s: %w", schema, err)
	}
	if !schemaOK {
		add("3F000", fmt.Sprintf("the legacy database has no schema %q", schema), "name the schema that holds the app's tables with --schema")
		return sv, probs, nil
	}
	return checkRegistry(ctx, c, conn, schema, registerTenants, sv, probs)
}

// checkPrereqs checks what every import needs: what its method needs of
// the legacy database (wal_level and REPLICATION for logical, the tables'
// ownership for trigger, in schema), and a catalog ready for an import.
func checkPrereqs(ctx context.Context, c *catalog.Catalog, conn *pgx.Conn, sv *Survey, method, schema string) ([]Problem, error) {
	var probs []Problem
	add := func(code, msg, hint string) { probs = append(probs, Problem{Code: code, Message: msg, Hint: hint}) }

	var super, repl bool
	if err := conn.QueryRow(ctx, `SELECT current_setting('wal_level'), rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user`).
		Scan(&sv.WalLevel, &super, &repl); err != nil {
		return nil, fmt.Errorf("read wal_level and role of the legacy database: %w", err)
	}
	if method == MethodTrigger {
		tp, err := triggerPrereqs(ctx, c, conn, schema)
		if err != nil {
			return nil, err
		}
		probs = append(probs, tp...)
	} else {
		probs = append(probs, logicalPrereqs(sv.WalLevel, super, repl)...)
	}
	// The catalog side: shards exist, no import yet, no roles the legacy
	// tables know nothing of.
	count, err := c.ShardCount(ctx)
	if err != nil {
		return nil, err
	}
	shards, err := c.Shards(ctx)
	if err != nil {
		return nil, err
	}
	if len(shards) < count {
		add("55000", fmt.Sprintf("the catalog has %d of its %d shards", len(shards), count),
			"register the nodes the shards go to (pgtenant node add) and run `pgtenant shard create` first")
	}
	var importing bool
	if err := c.Pool().QueryRow(ctx, `SELECT EXISTS (SELECT FROM pgtenant.imports WHERE state <> 'finished')`).Scan(&importing); err != nil {
		return nil, fmt.Errorf("read imports: %w", err)
	}
	if importing {
		add("55000", "an import is already registered in this catalog", "see `pgtenant import status`")
	}
	role, err := c.Meta(ctx, "runtime_role")
	if err != nil {
		return nil, err
	}
	if role != "" {
		add("55000", fmt.Sprintf("routers run as the runtime role %s (rls enable), which has no grants on the legacy tables", role),
			"run `pgtenant rls disable` for the import and enable it after `import finish`")
	}
	var restricted int
	if err := c.Pool().QueryRow(ctx, `SELECT count(*) FROM pgtenant.users WHERE role IS NOT NULL OR tenant IS NOT NULL`).Scan(&restricted); err != nil {
		return nil, fmt.Errorf("read users: %w", err)
	}
	if restricted > 0 {
		add("55000", fmt.Sprintf("%d router user(s) run as a granular role or are restricted to a tenant; those roles have no grants on the legacy tables", restricted),
			"add them after `import finish`")
	}
	return probs, nil
}

// checkRegistry is check's part for a legacy database with its tenants
// in one schema.
func checkRegistry(ctx context.Context, c *catalog.Catalog, conn *pgx.Conn, schema string, registerTenants bool, sv *Survey, probs []Problem) (*Survey, []Problem, error) {
	add := func(code, msg, hint string) { probs = append(probs, Problem{Code: code, Message: msg, Hint: hint}) }
	// The registry covers every table of the legacy schema.
	app, err := tables.AppTables(ctx, conn, schema)
	if err != nil {
		return nil, nil, err
	}
	rules, err := tables.New(c.Pool()).List(ctx)
	if err != nil {
		return nil, nil, err
	}
	byName := map[string]tables.Table{}
	for _, t := range rules {
		byName[t.Name] = t
	}
	if missing := tables.Unregistered(app, rules); len(missing) > 0 {
		add("42704", fmt.Sprintf("table(s) with no tenant rule: %s", strings.Join(missing, ", ")),
			"say where each table's tenant is: pgtenant table set NAME --tenant-column COL, --shared, or --parent TABLE --via COL")
	}
	present := map[string]bool{}
	for _, n := range app {
		present[n] = true
	}
	for _, t := range rules {
		if !present[t.Name] {
			continue
		}
		cols, err := columns(ctx, conn, schema, t.Name)
		if err != nil {
			return nil, nil, err
		}
		switch t.Kind {
		case tables.KindTenant:
			if !cols[t.TenantColumn] {
				add("42703", fmt.Sprintf("table %s has no column %s (its tenant column in the registry)", t.Name, t.TenantColumn), "fix the rule with pgtenant table set")
				continue
			}
		case tables.KindChild:
			p, ok := byName[t.Parent]
			if !ok || p.Kind != tables.KindTenant || !present[p.Name] {
				add("42P01", fmt.Sprintf("child table %s: its parent %s is not a tenant table of schema %s", t.Name, t.Parent, schema),
					"register the parent with --tenant-column, or the child's own tenant column")
				continue
			}
			if !cols[t.ParentKey] {
				add("42703", fmt.Sprintf("child table %s has no column %s (its join column)", t.Name, t.ParentKey), "fix the rule with pgtenant table set")
				continue
			}
		}
		sv.Tables = append(sv.Tables, t)
	}
	sort.Slice(sv.Tables, func(i, j int) bool { return sv.Tables[i].Name < sv.Tables[j].Name })
	if len(probs) > 0 {
		// Row checks need a sound registry.
		return sv, probs, nil
	}

	// Every row has a tenant, and every tenant is registered.
	found := map[string]bool{}
	for _, t := range sv.Tables {
		ids, n, err := rowsWithoutTenant(ctx, conn, schema, t, byName)
		if err != nil {
			return nil, nil, err
		}
		if n > 0 {
			what := "a NULL tenant id in " + t.TenantColumn
			code := "23502"
			if t.Kind == tables.KindChild {
				what = fmt.Sprintf("no row of %s (or one with a NULL tenant id) behind %s", t.Parent, t.ParentKey)
				code = "23503"
			}
			add(code, fmt.Sprintf("table %s: %d row(s) with %s, e.g. %s", t.Name, n, what, strings.Join(ids, ", ")),
				"give each row its tenant (or delete it) on the legacy database, then run import init again")
		}
		if t.Kind != tables.KindTenant {
			continue
		}
		rows, err := conn.Query(ctx, fmt.Sprintf("SELECT DISTINCT %s::text FROM %s WHERE %[1]s IS NOT NULL",
			pgx.Identifier{t.TenantColumn}.Sanitize(), pgx.Identifier{schema, t.Name}.Sanitize()))
		if err != nil {
			return nil, nil, fmt.Errorf("read tenant ids of %s: %w", t.Name, err)
		}
		var id string
		if _, err := pgx.ForEachRow(rows, []any{&id}, func() error { found[id] = true; return nil }); err != nil {
			return nil, nil, fmt.Errorf("read tenant ids of %s: %w", t.Name, err)
		}
	}
	var invalid []string
	for id := range found {
		sv.Tenants = append(sv.Tenants, id)
		if err := placement.ValidateTenantID(id); err != nil {
			invalid = append(invalid, fmt.Sprintf("%q (%v)", id, err))
		}
	}
	sort.Strings(sv.Tenants)
	sort.Strings(invalid)
	if len(invalid) > 0 {
		add("22023", fmt.Sprintf("%d tenant id(s) pgtenant cannot register: %s", len(invalid), strings.Join(first(invalid, maxIDs), ", ")),
			"fix those rows on the legacy database")
	}
	registered, err := registeredTenants(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	for _, id := range sv.Tenants {
		if !registered[id] {
			sv.Unregistered = append(sv.Unregistered, id)
		}
	}
	if len(sv.Unregistered) > 0 && !registerTenants {
		quoted := make([]string, 0, maxIDs)
		for _, id := range first(sv.Unregistered, maxIDs) {
			quoted = append(quoted, fmt.Sprintf("%q", id))
		}
		add("23503", fmt.Sprintf("%d tenant id(s) in the legacy rows are not registered, e.g. %s", len(sv.Unregistered), strings.Join(quoted, ", ")),
			"register them with `pgtenant tenant add ID` (or `--shard N` to place one by hand), or pass --register-tenants to register every one by hash")
	}
	return sv, probs, nil
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// columns lists the columns of schema.table.
func columns(ctx context.Context, conn *pgx.Conn, schema, table string) (map[string]bool, error) {
	rows, err := conn.Query(ctx, `SELECT a.attname FROM pg_attribute a
		WHERE a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass AND a.attnum > 0 AND NOT a.attisdropped`, schema, table)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", schema, table, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", schema, table, err)
	}
	out := map[string]bool{}
	for _, n := range names {
		out[n] = true
	}
	return out, nil
}

// primaryKey lists the primary key columns of schema.table, nil without one.
func primaryKey(ctx context.Context, conn *pgx.Conn, schema, table string) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT a.attname FROM pg_index i
		JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
		JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
		WHERE i.indrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass AND i.indisprimary ORDER BY k.ord`, schema, table)
	if err != nil {
		return nil, fmt.Errorf("read primary key of %s.%s: %w", schema, table, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// rowsWithoutTenant finds the rows of t that belong to no tenant: a NULL
// tenant column, or a child row whose parent is missing or has none. It
// returns up to maxIDs of their primary keys (ctid without one) and the count.
func rowsWithoutTenant(ctx context.Context, conn *pgx.Conn, schema string, t tables.Table, byName map[string]tables.Table) ([]string, int64, error) {
	var cond string
	switch t.Kind {
	case tables.KindTenant:
		cond = "pgtenant_t." + pgx.Identifier{t.TenantColumn}.Sanitize() + " IS NULL"
	case tables.KindChild:
		p := byName[t.Parent]
		cond = fmt.Sprintf("NOT EXISTS (SELECT FROM %s pgtenant_p WHERE pgtenant_p.%s = pgtenant_t.%s AND pgtenant_p.%s IS NOT NULL)",
			pgx.Identifier{schema, p.Name}.Sanitize(), pgx.Identifier{t.ParentColumn}.Sanitize(),
			pgx.Identifier{t.ParentKey}.Sanitize(), pgx.Identifier{p.TenantColumn}.Sanitize())
	default:
		return nil, 0, nil
	}
	pk, err := primaryKey(ctx, conn, schema, t.Name)
	if err != nil {
		return nil, 0, err
	}
	key := "pgtenant_t.ctid::text"
	if len(pk) > 0 {
		parts := make([]string, len(pk))
		for i, c := range pk {
			parts[i] = "pgtenant_t." + pgx.Identifier{c}.Sanitize() + "::text"
		}
		key = strings.Join(parts, " || ',' || ")
		if len(pk) > 1 {
			key = "'(' || " + key + " || ')'"
		}
	}
	from := pgx.Identifier{schema, t.Name}.Sanitize() + " pgtenant_t WHERE " + cond
	var n int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+from).Scan(&n); err != nil {
		return nil, 0, fmt.Errorf("count rows without a tenant in %s: %w", t.Name, err)
	}
	if n == 0 {
		return nil, 0, nil
	}
	rows, err := conn.Query(ctx, fmt.Sprintf("SELECT %s FROM %s LIMIT %d", key, from, maxIDs))
	if err != nil {
		return nil, 0, fmt.Errorf("list rows without a tenant in %s: %w", t.Name, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, 0, fmt.Errorf("list rows without a tenant in %s: %w", t.Name, err)
	}
	return ids, n, nil
}

// registeredTenants reads every tenant id of the catalog.
func registeredTenants(ctx context.Context, c *catalog.Catalog) (map[string]bool, error) {
	rows, err := c.Pool().Query(ctx, `SELECT id FROM pgtenant.tenants`)
	if err != nil {
		return nil, fmt.Errorf("read tenants: %w", err)
	}
	out := map[string]bool{}
	var id string
	if _, err := pgx.ForEachRow(rows, []any{&id}, func() error { out[id] = true; return nil }); err != nil {
		return nil, fmt.Errorf("read tenants: %w", err)
	}
	return out, nil
}
