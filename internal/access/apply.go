package access

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// policyVersion marks the policies pgtenant made (in their comment), with
// the rule they were made from, so an unchanged policy is left alone (a
// CREATE POLICY locks the table against every reader and writer).
const policyVersion = "pgtenant v1: "

// NodeReport says what Apply found and did on one node.
type NodeReport struct {
	Node     string
	Schemas  int      // shard schemas seen
	Policies int      // tables with row-level security, counted per schema
	Changed  int      // policies created, replaced or dropped
	Missing  []string // registered tables not (yet) in some shard, "schema.table"
}

// roles returns every role the plan makes on a node: restricted roles of
// every shard with restricted users, wherever the shard is (a move's
// pre-check wants them on the target before the schema comes).
func (p Plan) roles() []string {
	var out []string
	if p.RuntimeRole != "" {
		out = append(out, p.RuntimeRole)
	}
	for _, r := range p.Roles {
		out = append(out, r.Name)
	}
	ids := make([]int, 0, len(p.Restricted))
	for id, on := range p.Restricted {
		if on {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		out = append(out, RestrictedRole(id))
	}
	return out
}

// EnsureRoles creates the plan's roles on the node conn is connected to
// NOLOGIN, and makes the
// connection's user a member of each, so the router, logging in as that
// user, may run as them. A role that exists and is a superuser, bypasses
// row-level security or is the user itself is refused.
func (p Plan) EnsureRoles(ctx context.Context, conn *pgx.Conn, shards []placement.Shard) error {
	var owner string
	var super bool
	if err := conn.QueryRow(ctx, `SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user`).Scan(&owner, &super); err != nil {
		return fmt.Errorf("read the node's user: %w", err)
	}
	for _, r := range p.roles() {
		if r == owner {
			return fmt.Errorf("role %s is the node connection's own user; the runtime and granular roles must be other roles", r)
		}
		id := pgx.Identifier{r}.Sanitize()
		// Two nodes may share a server (roles are the server's): a
		// concurrent CREATE ROLE is not an error.
		if _, err := conn.Exec(ctx, `DO $pgtenant$ BEGIN
			IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = `+quoteLiteral(r)+`) THEN
				CREATE ROLE `+id+` NOLOGIN;
			END IF;
		EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
		END $pgtenant$`); err != nil {
			return fmt.Errorf("create role %s: %w", r, err)
		}
		var rsuper, bypass, member bool
		if err := conn.QueryRow(ctx, `SELECT rolsuper, rolbypassrls, pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = $1`, r).Scan(&rsuper, &bypass, &member); err != nil {
			return fmt.Errorf("read role %s: %w", r, err)
		}
		if rsuper || bypass {
			return fmt.Errorf("role %s is a superuser or has BYPASSRLS: row-level security would not apply to it; use another name or ALTER ROLE %s NOSUPERUSER NOBYPASSRLS", r, id)
		}
		if !super && !member {
			if _, err := conn.Exec(ctx, "GRANT "+id+" TO "+pgx.Identifier{owner}.Sanitize()); err != nil {
				return fmt.Errorf("grant role %s to %s (the router logs in as %s and runs as %s): %w", r, owner, owner, r, err)
			}
		}
	}
	return nil
}

// ApplyNode gives the shard schemas on the node conn is connected to the
// plan's roles, grants and row-level security policies, in one
// transaction. Shards whose schema is not on this node are skipped. It is
// idempotent.
func (p Plan) ApplyNode(ctx context.Context, conn *pgx.Conn, node string, shards []placement.Shard) (NodeReport, error) {
	rep := NodeReport{Node: node}
	if err := p.EnsureRoles(ctx, conn, shards); err != nil {
		return rep, fmt.Errorf("node %s: %w", node, err)
	}
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		var owner string
		if err := tx.QueryRow(ctx, `SELECT current_user`).Scan(&owner); err != nil {
			return err
		}
		for _, s := range shards {
			schema := s.Schema
			if schema == "" {
				schema = placement.SchemaName(s.ID)
			}
			var exists bool
			if err := tx.QueryRow(ctx, `SELECT to_regnamespace($1) IS NOT NULL`, pgx.Identifier{schema}.Sanitize()).Scan(&exists); err != nil {
				return err
			}
			if !exists {
				continue
			}
			rep.Schemas++
			if err := p.applySchema(ctx, tx, owner, s.ID, schema, &rep); err != nil {
				return fmt.Errorf("schema %s: %w", schema, err)
			}
		}
		return nil
	})
	if err != nil {
		return rep, fmt.Errorf("apply access on node %s: %w", node, err)
	}
	return rep, nil
}

func (p Plan) applySchema(ctx context.Context, tx pgx.Tx, owner string, shard int, schema string, rep *NodeReport) error {
	sch := pgx.Identifier{schema}.Sanitize()
	var b strings.Builder
	grantAll := func(role string, privs []string) {
		r := pgx.Identifier{role}.Sanitize()
		priv := strings.Join(privs, ", ")
		fmt.Fprintf(&b, "GRANT USAGE ON SCHEMA %s TO %s;\n", sch, r)
		fmt.Fprintf(&b, "REVOKE ALL ON ALL TABLES IN SCHEMA %s FROM %s;\n", sch, r)
		fmt.Fprintf(&b, "GRANT %s ON ALL TABLES IN SCHEMA %s TO %s;\n", priv, sch, r)
		fmt.Fprintf(&b, "ALTER DEFAULT PRIVILEGES IN SCHEMA %s REVOKE ALL ON TABLES FROM %s;\n", sch, r)
		fmt.Fprintf(&b, "ALTER DEFAULT PRIVILEGES IN SCHEMA %s GRANT %s ON TABLES TO %s;\n", sch, priv, r)
		seq := "SELECT"
		if slices.Contains(privs, "INSERT") || slices.Contains(privs, "UPDATE") {
			seq = "USAGE, SELECT" // nextval for serial and identity columns
		}
		fmt.Fprintf(&b, "GRANT %s ON ALL SEQUENCES IN SCHEMA %s TO %s;\n", seq, sch, r)
		fmt.Fprintf(&b, "ALTER DEFAULT PRIVILEGES IN SCHEMA %s GRANT %s ON SEQUENCES TO %s;\n", sch, seq, r)
		// goose's version table is pgtenant's, not the application's.
		fmt.Fprintf(&b, "REVOKE INSERT, UPDATE, DELETE ON TABLE %s.goose_db_version FROM %s;\n", sch, r)
	}
	present, err := schemaTables(ctx, tx, schema)
	if err != nil {
		return err
	}
	if p.RuntimeRole != "" {
		grantAll(p.RuntimeRole, Privileges)
	}
	for _, r := range p.Roles {
		grantAll(r.Name, r.Privileges)
	}
	if p.Restricted[shard] {
		// Only what row-level security guards (and shared tables, read
		// only): a table without a rule stays out of reach.
		r := pgx.Identifier{RestrictedRole(shard)}.Sanitize()
		fmt.Fprintf(&b, "GRANT USAGE ON SCHEMA %s TO %s;\n", sch, r)
		fmt.Fprintf(&b, "REVOKE ALL ON ALL TABLES IN SCHEMA %s FROM %s;\n", sch, r)
		fmt.Fprintf(&b, "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %s TO %s;\n", sch, r)
		for _, t := range p.Tables {
			if _, ok := present[t.Name]; !ok {
				continue
			}
			tbl := pgx.Identifier{schema, t.Name}.Sanitize()
			switch {
			case t.Kind == tables.KindShared:
				fmt.Fprintf(&b, "GRANT SELECT ON TABLE %s TO %s;\n", tbl, r)
			case t.RLS:
				fmt.Fprintf(&b, "GRANT SELECT, INSERT, UPDATE, DELETE ON TABLE %s TO %s;\n", tbl, r)
			}
		}
	}
	sql := b.String()
	if _, ok := present["goose_db_version"]; !ok {
		var kept []string
		for _, l := range strings.Split(sql, "\n") {
			if !strings.Contains(l, "goose_db_version") {
				kept = append(kept, l)
			}
		}
		sql = strings.Join(kept, "\n")
	}
	if sql != "" {
		if _, err := tx.Exec(ctx, sql); err != nil {
			return fmt.Errorf("grants: %w", err)
		}
	}
	return p.applyPolicies(ctx, tx, owner, schema, present, rep)
}

// schemaTables maps the tables of schema to whether row-level security is
// enabled and forced on them.
func schemaTables(ctx context.Context, tx pgx.Tx, schema string) (map[string][2]bool, error) {
	rows, err := tx.Query(ctx, `SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')`, schema)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	out := map[string][2]bool{}
	var name string
	var on, force bool
	_, err = pgx.ForEachRow(rows, []any{&name, &on, &force}, func() error {
		out[name] = [2]bool{on, force}
		return nil
	})
	return out, err
}

// applyPolicies makes the row-level security of every registered table in
// schema match the registry: for tables with RLS, ENABLE and FORCE ROW
// LEVEL SECURITY, a policy pgtenant_tenant comparing the tenant column (or
// the parent's, for a child table) with the pgtenant.tenant_id setting,
// and a policy pgtenant_owner that lets the tables' owner (migrations,
// moves, purges) see every row; for tables without, pgtenant's policies
// dropped.
func (p Plan) applyPolicies(ctx context.Context, tx pgx.Tx, owner, schema string, present map[string][2]bool, rep *NodeReport) error {
	byName := map[string]tables.Table{}
	for _, t := range p.Tables {
		byName[t.Name] = t
	}
	for _, t := range p.Tables {
		st, ok := present[t.Name]
		if !ok {
			if t.RLS {
				rep.Missing = append(rep.Missing, schema+"."+t.Name)
			}
			continue
		}
		tbl := pgx.Identifier{schema, t.Name}.Sanitize()
		var comment string
		if err := tx.QueryRow(ctx, `SELECT coalesce((SELECT obj_description(pol.oid, 'pg_policy') FROM pg_policy pol
			WHERE pol.polrelid = $1::regclass AND pol.polname = $2), '')`, tbl, tenantPolicy).Scan(&comment); err != nil {
			return fmt.Errorf("read policy of %s: %w", t.Name, err)
		}
		if !t.RLS {
			if strings.HasPrefix(comment, policyVersion) {
				if _, err := tx.Exec(ctx, fmt.Sprintf(`DROP POLICY IF EXISTS %s ON %s; DROP POLICY IF EXISTS %s ON %s;
					ALTER TABLE %s NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY`,
					tenantPolicy, tbl, ownerPolicy, tbl, tbl)); err != nil {
					return fmt.Errorf("disable row-level security on %s: %w", t.Name, err)
				}
				rep.Changed++
			}
			continue
		}
		expr, err := policyExpr(ctx, tx, schema, t, byName)
		if err != nil {
			return err
		}
		want := policyVersion + expr + " owner=" + owner
		if comment != want {
			sql := fmt.Sprintf(`DROP POLICY IF EXISTS %[1]s ON %[3]s; DROP POLICY IF EXISTS %[2]s ON %[3]s;
				CREATE POLICY %[1]s ON %[3]s USING (%[4]s) WITH CHECK (%[4]s);
				CREATE POLICY %[2]s ON %[3]s TO %[5]s USING (true) WITH CHECK (true);
				COMMENT ON POLICY %[1]s ON %[3]s IS %[6]s`,
				tenantPolicy, ownerPolicy, tbl, expr, pgx.Identifier{owner}.Sanitize(), quoteLiteral(want))
			if _, err := tx.Exec(ctx, sql); err != nil {
				return fmt.Errorf("create row-level security policy on %s: %w", tbl, err)
			}
			rep.Changed++
		}
		if !st[0] || !st[1] {
			if _, err := tx.Exec(ctx, "ALTER TABLE "+tbl+" ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY"); err != nil {
				return fmt.Errorf("enable row-level security on %s: %w", tbl, err)
			}
		}
		rep.Policies++
	}
	return nil
}

// policyExpr is the condition a row of t must meet for the transaction's
// tenant.
func policyExpr(ctx context.Context, tx pgx.Tx, schema string, t tables.Table, byName map[string]tables.Table) (string, error) {
	setting := "pg_catalog.current_setting(" + quoteLiteral(TenantSetting) + ", true)"
	switch t.Kind {
	case tables.KindTenant:
		col, err := asText(ctx, tx, schema, t.Name, t.TenantColumn)
		if err != nil {
			return "", err
		}
		return col + " = " + setting, nil
	case tables.KindChild:
		parent, ok := byName[t.Parent]
		if !ok || parent.Kind != tables.KindTenant {
			return "", fmt.Errorf("table %s: parent %s has no tenant column in the registry", t.Name, t.Parent)
		}
		if _, err := asText(ctx, tx, schema, t.Name, t.ParentKey); err != nil {
			return "", err
		}
		pcol, err := asText(ctx, tx, schema, t.Parent, parent.TenantColumn)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("EXISTS (SELECT FROM %s pgtenant_parent WHERE pgtenant_parent.%s = %s.%s AND pgtenant_parent.%s = %s)",
			pgx.Identifier{schema, t.Parent}.Sanitize(), pgx.Identifier{t.ParentColumn}.Sanitize(),
			pgx.Identifier{t.Name}.Sanitize(), pgx.Identifier{t.ParentKey}.Sanitize(),
			pcol, setting), nil
	}
	return "", fmt.Errorf("table %s is shared: no row-level security", t.Name)
}

// asText returns column col of schema.table as text for comparing with the
// tenant setting: as is when it is text or varchar (so an index on it
// serves the policy), else cast.
func asText(ctx context.Context, tx pgx.Tx, schema, table, col string) (string, error) {
	var typ string
	err := tx.QueryRow(ctx, `SELECT format_type(a.atttypid, NULL) FROM pg_attribute a
		WHERE a.attrelid = $1::regclass AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped`,
		pgx.Identifier{schema, table}.Sanitize(), col).Scan(&typ)
	if err == pgx.ErrNoRows {
		return "", fmt.Errorf("table %s.%s has no column %s; fix the registry with `pgtenant table set %s ...`", schema, table, col, table)
	}
	if err != nil {
		return "", fmt.Errorf("read column %s.%s.%s: %w", schema, table, col, err)
	}
	id := pgx.Identifier{col}.Sanitize()
	switch typ {
	case "text", "character varying":
		return id, nil
	}
	return id + "::text", nil
}

// quoteLiteral quotes s as an SQL string literal (standard_conforming_strings on).
func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}
