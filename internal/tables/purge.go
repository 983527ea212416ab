package tables

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// RowCount is how many rows one tenant has in one table of its shard.
type RowCount struct {
	Table string
	Rows  int64
}

// tenantCond is the WHERE condition selecting tenant $1's rows of t in
// schema (t aliased as pgtenant_t), or "" for shared tables.
func tenantCond(schema string, t Table, byName map[string]Table) (string, error) {
	return TenantCondition(schema, t, byName, "$1")
}

// TenantCondition is the WHERE condition selecting the rows of t in schema
// (t aliased as pgtenant_t) whose tenant is the SQL expression value (a bind
// parameter such as "$1", or current_setting(...) where parameters cannot
// go, as in COPY): the tenant column for tenant tables, the parent's tenant
// column through the join path for child tables, "" for shared tables.
// byName holds the registry's rules by table name.
func TenantCondition(schema string, t Table, byName map[string]Table, value string) (string, error) {
	switch t.Kind {
	case KindTenant:
		return "pgtenant_t." + pgx.Identifier{t.TenantColumn}.Sanitize() + "::text = " + value, nil
	case KindChild:
		p, ok := byName[t.Parent]
		if !ok || p.Kind != KindTenant {
			return "", fmt.Errorf("table %s: parent %s has no tenant column in the registry", t.Name, t.Parent)
		}
		return fmt.Sprintf("EXISTS (SELECT FROM %s pgtenant_p WHERE pgtenant_p.%s = pgtenant_t.%s AND pgtenant_p.%s::text = %s)",
			pgx.Identifier{schema, p.Name}.Sanitize(), pgx.Identifier{t.ParentColumn}.Sanitize(),
			pgx.Identifier{t.ParentKey}.Sanitize(), pgx.Identifier{p.TenantColumn}.Sanitize(), value), nil
	}
	return "", nil
}

// purgeOrder lists the tables with tenant rows, child tables first (their
// rows are found through the parent's, and foreign keys usually point
// from child to parent).
func purgeOrder(rules []Table) []Table {
	var out []Table
	for _, t := range rules {
		if t.Kind == KindChild {
			out = append(out, t)
		}
	}
	for _, t := range rules {
		if t.Kind == KindTenant {
			out = append(out, t)
		}
	}
	return out
}

// CountTenantRows counts tenant's rows in every registered table present in
// schema, on a connection as the tables' owner; tables without rows are
// left out.
func CountTenantRows(ctx context.Context, conn *pgx.Conn, schema, tenant string, rules []Table) ([]RowCount, error) {
	byName := map[string]Table{}
	for _, t := range rules {
		byName[t.Name] = t
	}
	present, err := AppTables(ctx, conn, schema)
	if err != nil {
		return nil, err
	}
	has := map[string]bool{}
	for _, n := range present {
		has[n] = true
	}
	var out []RowCount
	for _, t := range purgeOrder(rules) {
		if !has[t.Name] {
			continue
		}
		cond, err := tenantCond(schema, t, byName)
		if err != nil {
			return nil, err
		}
		var n int64
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, t.Name}.Sanitize()+" pgtenant_t WHERE "+cond, tenant).Scan(&n); err != nil {
			return nil, fmt.Errorf("count rows of tenant in %s.%s: %w", schema, t.Name, err)
		}
		if n > 0 {
			out = append(out, RowCount{Table: t.Name, Rows: n})
		}
	}
	return out, nil
}

// PurgeTenant deletes tenant's rows from every registered table in schema,
// child tables first, batch rows per transaction, calling progress after
// each table with the rows it deleted there.
func PurgeTenant(ctx context.Context, conn *pgx.Conn, schema, tenant string, rules []Table, batch int, progress func(RowCount)) error {
	if batch <= 0 {
		batch = 5000
	}
	byName := map[string]Table{}
	for _, t := range rules {
		byName[t.Name] = t
	}
	present, err := AppTables(ctx, conn, schema)
	if err != nil {
		return err
	}
	has := map[string]bool{}
	for _, n := range present {
		has[n] = true
	}
	for _, t := range purgeOrder(rules) {
		if !has[t.Name] {
			continue
		}
		cond, err := tenantCond(schema, t, byName)
		if err != nil {
			return err
		}
		tbl := pgx.Identifier{schema, t.Name}.Sanitize()
		// tableoid too: ctids repeat across the partitions of a partitioned table.
		sql := "DELETE FROM " + tbl + " WHERE (tableoid, ctid) IN (SELECT pgtenant_t.tableoid, pgtenant_t.ctid FROM " + tbl + " pgtenant_t WHERE " + cond + " LIMIT $2)"
		var total int64
		for {
			tag, err := conn.Exec(ctx, sql, tenant, batch)
			if err != nil {
				return fmt.Errorf("delete rows of tenant from %s.%s (%d deleted so far): %w", schema, t.Name, total, err)
			}
			total += tag.RowsAffected()
			if tag.RowsAffected() == 0 {
				break
			}
		}
		if progress != nil {
			progress(RowCount{Table: t.Name, Rows: total})
		}
	}
	return nil
}
