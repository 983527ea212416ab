package tenantops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// ImportOptions tune Import.
type ImportOptions struct {
	// Tenant is the tenant the rows are loaded for; "" means the tenant the
	// file was exported from. The tenant column of tenant tables is set to
	// it; child tables keep their keys.
	Tenant string
}

// ImportReport says what Import loaded.
type ImportReport struct {
	// From is the tenant the file was exported from; Tenant the one loaded.
	From, Tenant string
	Shard        int
	Node         string
	// Registered is true when Import registered the tenant (by hash).
	Registered bool
	Tables     []TableRows
}

// Import loads an export file (any format Export writes) into the shard of
// the tenant (opts.Tenant, or the file's), in one transaction on its node:
// all rows or none. A tenant that is not registered in this catalog is
// registered by hash in the same step (so a customer can be restored into
// another catalog, a staging one). Refused before anything changes: a
// tenant that already has rows in a registered table (23505: purge it
// first), a table of the file missing from the shard (42P01) or without a
// rule (42704), a column missing (42703). Rows whose key another tenant's
// row holds fail the load (23505, with the key). Sequences owned by the
// tables' columns are set past the largest value loaded.
func (o *Ops) Import(ctx context.Context, r io.Reader, opts ImportOptions) (ImportReport, error) {
	f, err := openExport(r)
	if err != nil {
		return ImportReport{}, err
	}
	id := opts.Tenant
	if id == "" {
		id = f.header.Tenant
	}
	rep := ImportReport{From: f.header.Tenant, Tenant: id}
	if err := placement.ValidateTenantID(id); err != nil {
		return rep, &Error{Code: "22023", Message: fmt.Sprintf("tenant id %q: %v", id, err)}
	}
	loc, err := o.locate(ctx, id)
	var te *Error
	register := false
	if errors.As(err, &te) && te.Code == "42704" && errors.Is(err, placement.ErrUnknownTenant) {
		register = true
		if loc, err = o.hashLocation(ctx, id); err != nil {
			return rep, err
		}
	} else if err != nil {
		return rep, err
	}
	rep.Shard, rep.Node, rep.Registered = loc.Shard.ID, loc.Node.Name, register
	conn, err := connect(ctx, loc.dsn, "node "+loc.Node.Name)
	if err != nil {
		return rep, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	st, err := o.loadTables(ctx, conn, loc.Shard.Schema)
	if err != nil {
		return rep, err
	}
	inShard := map[string]tenantTable{}
	for _, t := range st.list {
		inShard[t.rule.Name] = t
	}
	for _, ft := range f.header.Tables {
		t, ok := inShard[ft.Name]
		if !ok {
			if _, registered := st.byName[ft.Name]; registered {
				return rep, &Error{Code: "42P01", Message: fmt.Sprintf("table %s of the file is not in shard %d (%s) or holds no tenant rows there", ft.Name, loc.Shard.ID, loc.Shard.Schema),
					Hint: "apply the same migrations as the exporting cluster (pgtenant migrate up)"}
			}
			return rep, &Error{Code: "42704", Message: fmt.Sprintf("table %s of the file has no rule in the tables registry", ft.Name),
				Hint: "pgtenant table set " + ft.Name + " --tenant-column COL | --parent T --via COL"}
		}
		for _, c := range ft.Columns {
			if !slices.Contains(t.cols, c) {
				return rep, &Error{Code: "42703", Message: fmt.Sprintf("column %s of table %s in the file is not in shard %d", c, ft.Name, loc.Shard.ID),
					Hint: "apply the same migrations as the exporting cluster (pgtenant migrate up)"}
			}
		}
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return rep, fmt.Errorf("import: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	counts, err := tables.CountTenantRows(ctx, conn, st.schema, id, st.deleteOrder())
	if err != nil {
		return rep, err
	}
	if len(counts) > 0 {
		return rep, &Error{Code: "23505", Message: fmt.Sprintf("tenant %q already has %d rows in %s (and perhaps more tables)", id, counts[0].Rows, counts[0].Table),
			Hint: fmt.Sprintf("import into a tenant without rows: purge it first (pgtenant tenant purge %s), or load as another id with --tenant", quoteArg(id))}
	}
	for {
		sec, err := f.next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return rep, err
		}
		var fix func([]string)
		if id != f.header.Tenant && sec.table.TenantColumn != "" {
			i := slices.Index(sec.table.Columns, sec.table.TenantColumn)
			if i >= 0 {
				val := copyEscape(id)
				fix = func(fields []string) {
					if i < len(fields) {
						fields[i] = val
					}
				}
			}
		}
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			err := sec.write(pw, fix)
			pw.CloseWithError(err)
			done <- err
		}()
		tag, err := tx.Conn().PgConn().CopyFrom(ctx, pr, fmt.Sprintf("COPY %s (%s) FROM STDIN",
			pgx.Identifier{st.schema, sec.table.Name}.Sanitize(), colList(sec.table.Columns)))
		pr.CloseWithError(io.ErrClosedPipe)
		werr := <-done
		if werr != nil && !errors.Is(werr, io.ErrClosedPipe) {
			return rep, werr
		}
		if err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "23505" {
				return rep, &Error{Code: "23505", Message: fmt.Sprintf("table %s: %s (%s); nothing was loaded", sec.table.Name, pgErr.Message, pgErr.Detail),
					Hint: "another tenant of the shard holds these keys: import into another shard (pgtenant tenant add ID --shard N first) or give the rows new keys", Err: err}
			}
			return rep, fmt.Errorf("import %s (nothing was loaded): %w", sec.table.Name, err)
		}
		rep.Tables = append(rep.Tables, TableRows{Table: sec.table.Name, Rows: tag.RowsAffected()})
	}
	if err := syncSequences(ctx, tx, st); err != nil {
		return rep, err
	}
	if register {
		if _, err := o.cat.AddTenant(ctx, id, nil); err != nil {
			return rep, fmt.Errorf("import: register tenant: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		if register {
			o.cat.RemoveTenant(context.WithoutCancel(ctx), id)
		}
		return rep, fmt.Errorf("import: commit: %w", err)
	}
	o.cat.RecordOperation(ctx, "tenant import", map[string]any{"tenant": id, "from": rep.From, "shard": rep.Shard, "registered": register}, nil)
	return rep, nil
}

// hashLocation is where an unregistered tenant would be placed by hash.
func (o *Ops) hashLocation(ctx context.Context, id string) (located, error) {
	n, err := o.cat.ShardCount(ctx)
	if err != nil {
		return located{}, err
	}
	shard := placement.ShardOf(id, n)
	shards, err := o.cat.Shards(ctx)
	if err != nil {
		return located{}, err
	}
	for _, s := range shards {
		if s.ID != shard {
			continue
		}
		if err := o.notLegacy(ctx, shard); err != nil {
			return located{}, err
		}
		m, err := o.cat.LoadMap(ctx)
		if err != nil {
			return located{}, err
		}
		node, ok := m.Nodes[s.Node]
		if !ok {
			return located{}, fmt.Errorf("shard %d: node %s is not in the map", shard, s.Node)
		}
		dsn, err := o.cat.ResolveDSN(node.DSN)
		if err != nil {
			return located{}, err
		}
		return located{Location: placement.Location{Tenant: id, Shard: s, Node: node}, dsn: dsn}, nil
	}
	return located{}, &Error{Code: "55000", Message: fmt.Sprintf("shard %d (the hash shard of %q) has not been created", shard, id), Hint: "pgtenant shard create"}
}

// syncSequences sets every sequence owned by a column of the shard's tenant
// tables past the largest value of its column, so rows inserted later do
// not take keys of rows loaded with explicit values.
func syncSequences(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
	Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
}, st *shardTables) error {
	names := make([]string, len(st.list))
	for i, t := range st.list {
		names[i] = t.rule.Name
	}
	rows, err := q.Query(ctx, `SELECT c.relname::text, a.attname::text, s.oid::regclass::text
		FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
		JOIN pg_class c ON c.oid = d.refobjid JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.refobjsubid
		WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
		AND n.nspname = $1 AND c.relname = ANY($2)`, st.schema, names)
	if err != nil {
		return fmt.Errorf("list the shard's sequences: %w", err)
	}
	type seq struct{ table, col, seq string }
	seqs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (seq, error) {
		var s seq
		err := r.Scan(&s.table, &s.col, &s.seq)
		return s, err
	})
	if err != nil {
		return fmt.Errorf("list the shard's sequences: %w", err)
	}
	for _, s := range seqs {
		// setval only upward: is_called keeps the next value past max.
		sql := fmt.Sprintf(`SELECT setval($1::regclass, m) FROM (SELECT max(%s)::bigint AS m FROM %s) x
			WHERE m IS NOT NULL AND m > (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM %s)`,
			pgx.Identifier{s.col}.Sanitize(), pgx.Identifier{st.schema, s.table}.Sanitize(), s.seq)
		if _, err := q.Exec(ctx, sql, s.seq); err != nil {
			return fmt.Errorf("set sequence %s past %s.%s: %w", s.seq, s.table, s.col, err)
		}
	}
	return nil
}
