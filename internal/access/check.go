package access

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// Finding is one line of Check: "ok" or "warn".
type Finding struct {
	Name, Status, Detail string
}

// Check tells whether row-level security would bind the router on the node
// conn is connected to: a runtime role is set, exists, is neither a
// superuser nor BYPASSRLS and may be used by the node's user, and the
// node's shards have the policies the registry asks for.
func (p Plan) Check(ctx context.Context, conn *pgx.Conn, shards []placement.Shard) ([]Finding, error) {
	var out []Finding
	rls := 0
	for _, t := range p.Tables {
		if t.RLS {
			rls++
		}
	}
	if rls == 0 {
		return []Finding{{"row-level security", "ok", "not enabled on any table (`pgtenant rls enable`)"}}, nil
	}
	var user string
	var super, bypass bool
	if err := conn.QueryRow(ctx, `SELECT current_user, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user`).Scan(&user, &super, &bypass); err != nil {
		return nil, fmt.Errorf("read the node's user: %w", err)
	}
	if p.RuntimeRole == "" {
		return append(out, Finding{"row-level security", "warn", fmt.Sprintf("enabled on %d tables, but routers run as the node's user %s, which owns the tables or bypasses RLS: every tenant sees every row of its shard; run `pgtenant rls enable` to set the runtime role", rls, user)}), nil
	}
	var exists, rsuper, rbypass, member bool
	err := conn.QueryRow(ctx, `SELECT true, rolsuper, rolbypassrls, pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = $1`, p.RuntimeRole).Scan(&exists, &rsuper, &rbypass, &member)
	switch {
	case err == pgx.ErrNoRows:
		return append(out, Finding{"row-level security", "warn", fmt.Sprintf("the runtime role %s does not exist on this node: routers cannot connect as it; run `pgtenant access apply`", p.RuntimeRole)}), nil
	case err != nil:
		return nil, fmt.Errorf("read role %s: %w", p.RuntimeRole, err)
	case rsuper || rbypass:
		return append(out, Finding{"row-level security", "warn", fmt.Sprintf("the runtime role %s is a superuser or has BYPASSRLS: row-level security is bypassed; ALTER ROLE %s NOSUPERUSER NOBYPASSRLS", p.RuntimeRole, p.RuntimeRole)}), nil
	case !member && !super:
		return append(out, Finding{"row-level security", "warn", fmt.Sprintf("the node's user %s is not a member of the runtime role %s: routers cannot run as it; run `pgtenant access apply`", user, p.RuntimeRole)}), nil
	}
	missing := 0
	example := ""
	for _, s := range shards {
		for _, t := range p.Tables {
			if !t.RLS {
				continue
			}
			var ok bool
			err := conn.QueryRow(ctx, `SELECT c.relrowsecurity AND c.relforcerowsecurity AND EXISTS (SELECT FROM pg_policy WHERE polrelid = c.oid AND polname = $3)
				FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2`, s.Schema, t.Name, tenantPolicy).Scan(&ok)
			if err == pgx.ErrNoRows {
				continue // not migrated yet
			}
			if err != nil {
				return nil, fmt.Errorf("read policies of %s.%s: %w", s.Schema, t.Name, err)
			}
			if !ok {
				missing++
				if example == "" {
					example = s.Schema + "." + t.Name
				}
			}
		}
	}
	if missing > 0 {
		return append(out, Finding{"row-level security", "warn", fmt.Sprintf("%d tables lack their policy (e.g. %s): their rows are not filtered; run `pgtenant access apply`", missing, example)}), nil
	}
	return append(out, Finding{"row-level security", "ok", fmt.Sprintf("%d tables in each of %d shards; routers run as %s", rls, len(shards), p.RuntimeRole)}), nil
}
