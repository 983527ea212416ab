package tables

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"regexp"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Kind says how a table's rows belong to tenants.
type Kind string

// Kinds of registered tables.
const (
	// KindTenant: each row holds its tenant's id in Table.TenantColumn.
	KindTenant Kind = "tenant"
	// KindShared: reference data shared by every tenant of a shard.
	KindShared Kind = "shared"
	// KindChild: rows belong to the tenant of the Parent row that
	// ParentKey references (Parent.ParentColumn = ParentKey).
	KindChild Kind = "child"
)

// Table is one rule of the registry.
type Table struct {
	Name string // unqualified: the same table in every shard schema
	Kind Kind
	// TenantColumn holds the tenant id (KindTenant).
	TenantColumn string
	// Parent, ParentKey and ParentColumn are a child table's join path:
	// Name.ParentKey references Parent.ParentColumn (KindChild).
	Parent, ParentKey, ParentColumn string
	// RLS is true when row-level security is enabled for the table.
	RLS bool
	// Source is where the rule came from: "cli" or a migration file name.
	Source string
}

// Describe is the rule in words for listings.
func (t Table) Describe() string {
	switch t.Kind {
	case KindTenant:
		return "tenant_column=" + t.TenantColumn
	case KindChild:
		return fmt.Sprintf("via %s -> %s.%s", t.ParentKey, t.Parent, t.ParentColumn)
	}
	return "shared"
}

// ErrUnknownTable means the registry has no rule for a table.
var ErrUnknownTable = errors.New("table is not in the registry")

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}$`)

// ValidIdent reports whether s is a plain SQL identifier pgtenant accepts as
// a table or column name (quoted with pgx.Identifier wherever it is used).
func ValidIdent(s string) bool { return identRE.MatchString(s) }

// Validate checks a rule before it is stored.
func (t Table) Validate() error {
	if !ValidIdent(t.Name) {
		return fmt.Errorf("table name %q: use a plain identifier (letters, digits, _; at most 63 bytes)", t.Name)
	}
	switch t.Kind {
	case KindTenant:
		if !ValidIdent(t.TenantColumn) {
			return fmt.Errorf("table %s: tenant column %q is not a plain identifier", t.Name, t.TenantColumn)
		}
	case KindShared:
	case KindChild:
		for _, s := range []string{t.Parent, t.ParentKey, t.ParentColumn} {
			if !ValidIdent(s) {
				return fmt.Errorf("table %s: join path %q is not a plain identifier", t.Name, s)
			}
		}
		if t.Parent == t.Name {
			return fmt.Errorf("table %s cannot be its own parent", t.Name)
		}
	default:
		return fmt.Errorf("table %s: kind %q is not tenant, shared or child", t.Name, t.Kind)
	}
	return nil
}

// Registry reads and writes the tables registry in the catalog database.
type Registry struct {
	db *pgxpool.Pool
}

// New returns a Registry over the catalog's pool. It does no I/O.
func New(db *pgxpool.Pool) *Registry { return &Registry{db: db} }

// Set creates or replaces the rule for t.Name. Whether RLS is enabled is
// kept as it was (see SetRLS); a table that becomes shared loses it.
func (r *Registry) Set(ctx context.Context, t Table) error {
	if err := t.Validate(); err != nil {
		return err
	}
	if t.Source == "" {
		t.Source = "cli"
	}
	err := pgx.BeginFunc(ctx, r.db, func(tx pgx.Tx) error {
		if t.Kind == KindChild {
			var pk Kind
			err := tx.QueryRow(ctx, `SELECT kind FROM pgtenant.tables WHERE name = $1`, t.Parent).Scan(&pk)
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("table %s: parent %s is not registered; register it first with `pgtenant table set %s --tenant-column COL`", t.Name, t.Parent, t.Parent)
			}
			if err != nil {
				return err
			}
			if pk != KindTenant {
				return fmt.Errorf("table %s: parent %s must have a tenant column (it is %s)", t.Name, t.Parent, pk)
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO pgtenant.tables (name, kind, tenant_column, parent, parent_key, parent_column, source)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, tenant_column = excluded.tenant_column,
				parent = excluded.parent, parent_key = excluded.parent_key, parent_column = excluded.parent_column,
				rls = pgtenant.tables.rls AND excluded.kind <> 'shared', source = excluded.source, updated_at = now()`,
			t.Name, string(t.Kind), nullIf(t.TenantColumn), nullIf(t.Parent), nullIf(t.ParentKey), nullIf(t.ParentColumn), t.Source)
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
			return errNotInitialized
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("set table %s: %w", t.Name, err)
	}
	return nil
}

var errNotInitialized = errors.New("the catalog has no tables registry; run `pgtenant init` to upgrade it")

func nullIf(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// Remove deletes the rule for a table.
func (r *Registry) Remove(ctx context.Context, name string) error {
	tag, err := r.db.Exec(ctx, `DELETE FROM pgtenant.tables WHERE name = $1`, name)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "23503":
		return fmt.Errorf("remove table %s: child tables reach their tenant through it; remove or change them first", name)
	case err != nil:
		return fmt.Errorf("remove table %s: %w", name, err)
	case tag.RowsAffected() == 0:
		return fmt.Errorf("remove table %s: %w", name, ErrUnknownTable)
	}
	return nil
}

// List returns every rule, by name.
func (r *Registry) List(ctx context.Context) ([]Table, error) {
	rows, err := r.db.Query(ctx, `SELECT name, kind, coalesce(tenant_column, ''), coalesce(parent, ''),
		coalesce(parent_key, ''), coalesce(parent_column, ''), rls, source FROM pgtenant.tables ORDER BY name`)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
			return nil, errNotInitialized
		}
		return nil, fmt.Errorf("list tables: %w", err)
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Table, error) {
		var t Table
		err := row.Scan(&t.Name, &t.Kind, &t.TenantColumn, &t.Parent, &t.ParentKey, &t.ParentColumn, &t.RLS, &t.Source)
		return t, err
	})
}

// SetRLS turns row-level security on or off for the named tables (every
// table with a tenant, tenant or child, when names is empty) and returns the
// tables changed. Shared tables and unknown names are refused.
func (r *Registry) SetRLS(ctx context.Context, names []string, on bool) ([]Table, error) {
	var changed []Table
	err := pgx.BeginFunc(ctx, r.db, func(tx pgx.Tx) error {
		all, err := New(r.db).listTx(ctx, tx)
		if err != nil {
			return err
		}
		byName := map[string]Table{}
		for _, t := range all {
			byName[t.Name] = t
		}
		var pick []Table
		if len(names) == 0 {
			for _, t := range all {
				if t.Kind != KindShared {
					pick = append(pick, t)
				}
			}
		}
		for _, n := range names {
			t, ok := byName[n]
			switch {
			case !ok:
				return fmt.Errorf("table %s: %w; declare its tenant column first with `pgtenant table set %s --tenant-column COL`", n, ErrUnknownTable, n)
			case t.Kind == KindShared:
				return fmt.Errorf("table %s is shared by all tenants; row-level security needs a tenant column", n)
			}
			pick = append(pick, t)
		}
		for _, t := range pick {
			if _, err := tx.Exec(ctx, `UPDATE pgtenant.tables SET rls = $2, updated_at = now() WHERE name = $1`, t.Name, on); err != nil {
				return err
			}
			t.RLS = on
			changed = append(changed, t)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("set row-level security: %w", err)
	}
	return changed, nil
}

func (r *Registry) listTx(ctx context.Context, tx pgx.Tx) ([]Table, error) {
	rows, err := tx.Query(ctx, `SELECT name, kind, coalesce(tenant_column, ''), coalesce(parent, ''),
		coalesce(parent_key, ''), coalesce(parent_column, ''), rls, source FROM pgtenant.tables ORDER BY name FOR UPDATE`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (Table, error) {
		var t Table
		err := row.Scan(&t.Name, &t.Kind, &t.TenantColumn, &t.Parent, &t.ParentKey, &t.ParentColumn, &t.RLS, &t.Source)
		return t, err
	})
}

// AppTables lists the ordinary and partitioned tables of a shard schema on
// a node, leaving out goose's version table.
func AppTables(ctx context.Context, conn *pgx.Conn, schema string) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> 'goose_db_version'
		ORDER BY c.relname`, schema)
	if err != nil {
		return nil, fmt.Errorf("list tables of %s: %w", schema, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// Unregistered returns the names in app that have no rule in rules.
func Unregistered(app []string, rules []Table) []string {
	known := map[string]bool{}
	for _, t := range rules {
		known[t.Name] = true
	}
	var out []string
	for _, n := range app {
		if !known[n] {
			out = append(out, n)
		}
	}
	return out
}

// annotationRE matches "-- pgtenant: ..." lines in migration files.
var annotationRE = regexp.MustCompile(`(?m)^[ \t]*--[ \t]*pgtenant:[ \t]*(.*)$`)

// createTableRE finds the table a CREATE TABLE statement makes.
var createTableRE = regexp.MustCompile(`(?is)\bcreate\s+(?:(?:global\s+|local\s+)?(?:temporary|temp)\s+|unlogged\s+)?table\s+(?:if\s+not\s+exists\s+)?(?:"?[A-Za-z_][A-Za-z0-9_$]*"?\s*\.\s*)?"?([A-Za-z_][A-Za-z0-9_$]*)"?`)

// ParseAnnotations reads the registry rules a migration file declares, one
// per annotation line:
//
//	-- pgtenant: tenant_column=customer_id
//	-- pgtenant: shared
//	-- pgtenant: parent=invoices via=invoice_id references=id
//
// each about the next CREATE TABLE after it in the file, or about the table
// named with table=NAME on the same line. source names the file in errors.
func ParseAnnotations(source, sql string) ([]Table, error) {
	var out []Table
	for _, m := range annotationRE.FindAllStringSubmatchIndex(sql, -1) {
		line := strings.TrimSpace(sql[m[2]:m[3]])
		t := Table{Source: source}
		for _, f := range strings.Fields(line) {
			k, v, _ := strings.Cut(f, "=")
			switch strings.ToLower(k) {
			case "table":
				t.Name = v
			case "tenant_column":
				t.Kind, t.TenantColumn = KindTenant, v
			case "shared":
				t.Kind = KindShared
			case "parent":
				t.Kind, t.Parent = KindChild, v
			case "via":
				t.ParentKey = v
			case "references":
				t.ParentColumn = v
			default:
				return nil, fmt.Errorf("%s: annotation %q: unknown key %q (use tenant_column=COL, shared, or parent=TABLE via=COL references=COL, and optionally table=NAME)", source, line, k)
			}
		}
		if t.Kind == "" {
			return nil, fmt.Errorf("%s: annotation %q says neither tenant_column=COL, shared nor parent=TABLE", source, line)
		}
		if t.Name == "" {
			ct := createTableRE.FindStringSubmatch(sql[m[1]:])
			if ct == nil {
				return nil, fmt.Errorf("%s: annotation %q is followed by no CREATE TABLE; add table=NAME", source, line)
			}
			t.Name = ct[1]
		}
		if err := t.Validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", source, err)
		}
		out = append(out, t)
	}
	return out, nil
}

// FromDir reads the annotations of every migration file (*.sql) in fsys, in
// file name order (the order goose applies them).
func FromDir(fsys fs.FS) ([]Table, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, err
	}
	sort.Strings(names)
	var out []Table
	for _, n := range names {
		b, err := fs.ReadFile(fsys, n)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", n, err)
		}
		ts, err := ParseAnnotations(n, string(b))
		if err != nil {
			return nil, err
		}
		out = append(out, ts...)
	}
	return out, nil
}
