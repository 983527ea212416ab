package tenantops

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// Error is an operation refused before it changed anything (or, for Move,
// rolled back): a SQLSTATE, a message and a hint a user can act on.
type Error struct {
	// Code is the SQLSTATE: 42704 an unknown tenant or a table without a
	// rule, 42P01 a table missing from a shard, 55000 a shard that is not
	// ready (an import's legacy shard, a fenced shard), 23505 rows that
	// would collide, 22023 a bad argument (a shard that does not exist).
	Code    string
	Message string
	Hint    string
	Err     error
}

func (e *Error) Error() string {
	s := e.Message + " (SQLSTATE " + e.Code + ")"
	if e.Hint != "" {
		s += "; hint: " + e.Hint
	}
	return s
}

// Unwrap returns the underlying error, if any.
func (e *Error) Unwrap() error { return e.Err }

// SQLState is the error's code.
func (e *Error) SQLState() string { return e.Code }

// Ops runs tenant operations against a catalog and its nodes.
type Ops struct {
	cat *catalog.Catalog
	log *slog.Logger
}

// New returns Ops over an open catalog. It does no I/O; a nil logger discards.
func New(c *catalog.Catalog, logger *slog.Logger) *Ops {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Ops{cat: c, log: logger}
}

// tenantTable is a table of a shard with tenant rows: its rule, its
// columns (generated ones left out) and its primary key.
type tenantTable struct {
	rule tables.Table
	cols []string
	key  []string
}

// shardTables is what an operation knows of one shard's tables.
type shardTables struct {
	schema string
	byName map[string]tables.Table
	// list holds the tables with tenant rows (tenant and child kinds)
	// present in the shard, parents before the tables that reference them.
	list []tenantTable
}

// cond is the condition selecting the tenant's rows of t, with the tenant as value.
func (st *shardTables) cond(t tenantTable, value string) string {
	c, _ := tables.TenantCondition(st.schema, t.rule, st.byName, value)
	return c
}

// rules lists the rules of the tables in list, children first and every
// table before the ones it references (the order rows are deleted in).
func (st *shardTables) deleteOrder() []tables.Table {
	out := make([]tables.Table, 0, len(st.list))
	for i := len(st.list) - 1; i >= 0; i-- {
		out = append(out, st.list[i].rule)
	}
	return out
}

// loadTables reads the registry and the shard schema's tables on conn. A
// table of the schema without a rule is refused (42704, every one named).
func (o *Ops) loadTables(ctx context.Context, conn *pgx.Conn, schema string) (*shardTables, error) {
	return o.loadTablesLax(ctx, conn, schema, false)
}

// loadTablesLax is loadTables; with lax, tables without a rule are left out
// instead of refused.
func (o *Ops) loadTablesLax(ctx context.Context, conn *pgx.Conn, schema string, lax bool) (*shardTables, error) {
	rules, err := tables.New(o.cat.Pool()).List(ctx)
	if err != nil {
		return nil, err
	}
	app, err := tables.AppTables(ctx, conn, schema)
	if err != nil {
		return nil, err
	}
	if missing := tables.Unregistered(app, rules); len(missing) > 0 && !lax {
		return nil, &Error{Code: "42704",
			Message: fmt.Sprintf("%d table(s) of %s have no rule in the tables registry: %s", len(missing), schema, strings.Join(missing, ", ")),
			Hint:    "say where each keeps its tenant: pgtenant table set NAME --tenant-column COL | --parent T --via COL | --shared"}
	}
	st := &shardTables{schema: schema, byName: map[string]tables.Table{}}
	for _, r := range rules {
		st.byName[r.Name] = r
	}
	present := map[string]bool{}
	for _, n := range app {
		present[n] = true
	}
	rows, err := conn.Query(ctx, `SELECT c.relname::text,
		coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
			WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{}'),
		coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i
			CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
			JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
			WHERE i.indrelid = c.oid AND i.indisprimary), '{}'),
		coalesce((SELECT array_agg(DISTINCT r.relname::text) FROM pg_constraint f JOIN pg_class r ON r.oid = f.confrelid
			WHERE f.conrelid = c.oid AND f.contype = 'f' AND r.oid <> c.oid AND r.relnamespace = c.relnamespace), '{}')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition`, schema)
	if err != nil {
		return nil, fmt.Errorf("read the tables of %s: %w", schema, err)
	}
	type info struct {
		cols, key, refs []string
	}
	infos := map[string]info{}
	var name string
	var in info
	if _, err := pgx.ForEachRow(rows, []any{&name, &in.cols, &in.key, &in.refs}, func() error {
		infos[name] = info{cols: in.cols, key: in.key, refs: in.refs}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read the tables of %s: %w", schema, err)
	}
	// Parents first: a table comes after every table it references, and
	// a child table after its registry parent.
	var names []string
	for _, r := range rules {
		if r.Kind != tables.KindShared && present[r.Name] {
			names = append(names, r.Name)
		}
	}
	sort.Strings(names)
	done := map[string]bool{}
	visiting := map[string]bool{}
	var visit func(n string)
	visit = func(n string) {
		if done[n] || visiting[n] {
			return
		}
		visiting[n] = true
		deps := append([]string(nil), infos[n].refs...)
		if r := st.byName[n]; r.Kind == tables.KindChild {
			deps = append(deps, r.Parent)
		}
		sort.Strings(deps)
		for _, d := range deps {
			if r, ok := st.byName[d]; ok && r.Kind != tables.KindShared && present[d] {
				visit(d)
			}
		}
		visiting[n] = false
		done[n] = true
		in := infos[n]
		st.list = append(st.list, tenantTable{rule: st.byName[n], cols: in.cols, key: in.key})
	}
	for _, n := range names {
		visit(n)
	}
	for _, t := range st.list {
		if _, err := tables.TenantCondition(schema, t.rule, st.byName, "$1"); err != nil {
			return nil, &Error{Code: "42704", Message: err.Error(), Hint: "register the parent with pgtenant table set PARENT --tenant-column COL", Err: err}
		}
	}
	return st, nil
}

// located is where a tenant lives, with its node's resolved DSN.
type located struct {
	placement.Location
	dsn string
}

// locate finds tenant id: unknown tenants are 42704, tenants of a shard an
// import still serves from its legacy database 55000.
func (o *Ops) locate(ctx context.Context, id string) (located, error) {
	loc, err := o.cat.Locate(ctx, id)
	if errors.Is(err, placement.ErrUnknownTenant) {
		return located{}, &Error{Code: "42704", Message: fmt.Sprintf("tenant %q is unknown", id),
			Hint: fmt.Sprintf("pgtenant tenant list shows the registered tenants; register it with pgtenant tenant add %s", quoteArg(id)), Err: err}
	}
	if err != nil {
		return located{}, err
	}
	if err := o.notLegacy(ctx, loc.Shard.ID); err != nil {
		return located{}, err
	}
	dsn, err := o.cat.ResolveDSN(loc.Node.DSN)
	if err != nil {
		return located{}, fmt.Errorf("node %s: %w", loc.Node.Name, err)
	}
	return located{Location: loc, dsn: dsn}, nil
}

// notLegacy refuses a shard that a running import still serves from its
// legacy database: its rows are the legacy tables', shared by every shard.
func (o *Ops) notLegacy(ctx context.Context, shard int) error {
	var legacy bool
	err := o.cat.Pool().QueryRow(ctx, `SELECT to_regclass('pgtenant.import_shards') IS NOT NULL AND EXISTS (
		SELECT FROM pgtenant.import_shards s CROSS JOIN pgtenant.imports i
		WHERE s.shard = $1 AND s.state <> 'cutover' AND i.state <> 'finished')`, shard).Scan(&legacy)
	if err != nil {
		// The to_regclass guard does not stop the parser from resolving the
		// tables: a catalog without them has no import.
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
			return nil
		}
		return fmt.Errorf("look for an import of shard %d: %w", shard, err)
	}
	if legacy {
		return &Error{Code: "55000",
			Message: fmt.Sprintf("shard %d is still served from the legacy database of a running import", shard),
			Hint:    fmt.Sprintf("cut it over first (pgtenant import cutover --shard %d), or wait for pgtenant import finish", shard)}
	}
	return nil
}

// connect opens a connection to a node.
func connect(ctx context.Context, dsn, what string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", what, err)
	}
	return conn, nil
}

// quoteArg quotes a tenant id for a shell command line when it needs it.
func quoteArg(s string) string {
	for _, r := range s {
		if !(r == '-' || r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		}
	}
	return s
}

// colList is the quoted, comma-separated column list.
func colList(cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = pgx.Identifier{c}.Sanitize()
	}
	return strings.Join(q, ", ")
}

// setTenantSQL sets the setting the COPY queries read the tenant from
// (COPY takes no bind parameters).
const setTenantSQL = `SELECT set_config('pgtenant.op_tenant', $1, true)`

// tenantSetting is the SQL expression of that setting.
const tenantSetting = `current_setting('pgtenant.op_tenant')`
