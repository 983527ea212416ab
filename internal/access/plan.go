package access

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// DefaultRuntimeRole is the role the router runs ordinary users'
// transactions as once row-level security is enabled.
const DefaultRuntimeRole = "pgtenant_app"

// MetaRuntimeRole is the catalog setting (pgtenant.meta) naming the runtime
// role; unset means the router runs transactions as the node DSN's role.
const MetaRuntimeRole = "runtime_role"

// TenantSetting is the server setting the router sets to the transaction's
// tenant id, which the row-level security policies compare with.
const TenantSetting = "pgtenant.tenant_id"

// Policy names pgtenant creates; nothing else is touched.
const (
	tenantPolicy = "pgtenant_tenant"
	ownerPolicy  = "pgtenant_owner"
)

// Privileges a role may be granted on the shards' tables.
var Privileges = []string{"SELECT", "INSERT", "UPDATE", "DELETE"}

// RestrictedRole is the role restricted users of tenants in shard run as:
// USAGE on that shard's schema only.
func RestrictedRole(shard int) string { return "pgtenant_" + placement.SchemaName(shard) }

// Role is a granular role of `pgtenant role create`.
type Role struct {
	Name       string
	Privileges []string // a subset of Privileges
}

// Plan is what every node must have: roles, grants and policies.
type Plan struct {
	// RuntimeRole is the role of ordinary router users; "" when none.
	RuntimeRole string
	// Roles are the granular roles.
	Roles []Role
	// Tables is the registry.
	Tables []tables.Table
	// Restricted holds the shards that have restricted users.
	Restricted map[int]bool
}

// Load computes the plan from the catalog.
func Load(ctx context.Context, db *pgxpool.Pool) (Plan, error) {
	var p Plan
	ts, err := tables.New(db).List(ctx)
	if err != nil {
		return p, err
	}
	p.Tables = ts
	if err := db.QueryRow(ctx, `SELECT coalesce((SELECT value FROM pgtenant.meta WHERE key = $1), '')`, MetaRuntimeRole).Scan(&p.RuntimeRole); err != nil {
		return p, fmt.Errorf("read runtime role: %w", err)
	}
	if p.Roles, err = ListRoles(ctx, db); err != nil {
		return p, err
	}
	p.Restricted = map[int]bool{}
	rows, err := db.Query(ctx, `SELECT DISTINCT t.shard FROM pgtenant.users u JOIN pgtenant.tenants t ON t.id = u.tenant`)
	if err != nil {
		return p, fmt.Errorf("read restricted users: %w", err)
	}
	shards, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return p, fmt.Errorf("read restricted users: %w", err)
	}
	for _, s := range shards {
		p.Restricted[int(s)] = true
	}
	return p, nil
}

// ListRoles returns the granular roles.
func ListRoles(ctx context.Context, db *pgxpool.Pool) ([]Role, error) {
	rows, err := db.Query(ctx, `SELECT name, privileges FROM pgtenant.roles ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("list roles: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Role, error) {
		var ro Role
		err := r.Scan(&ro.Name, &ro.Privileges)
		return ro, err
	})
}

// ParsePrivileges reads "SELECT,INSERT" into the privileges, in a fixed
// order, refusing anything else.
func ParsePrivileges(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.ToUpper(strings.TrimSpace(f))
		if f == "" {
			continue
		}
		if !slices.Contains(Privileges, f) {
			return nil, fmt.Errorf("privilege %q: use a comma-separated list of SELECT, INSERT, UPDATE, DELETE", f)
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no privileges given: use --grant SELECT[,INSERT,UPDATE,DELETE]")
	}
	slices.SortFunc(out, func(a, b string) int { return slices.Index(Privileges, a) - slices.Index(Privileges, b) })
	return out, nil
}

// ErrUnknownRole means no granular role of that name exists.
var ErrUnknownRole = errors.New("unknown role")

// CreateRole records a granular role in the catalog (Apply creates it on
// the nodes).
func CreateRole(ctx context.Context, db *pgxpool.Pool, r Role) error {
	_, err := db.Exec(ctx, `INSERT INTO pgtenant.roles (name, privileges) VALUES ($1, $2)`, r.Name, r.Privileges)
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "23505":
		return fmt.Errorf("role %q already exists; drop it first to change its privileges", r.Name)
	case errors.As(err, &pgErr) && pgErr.Code == "23514":
		return fmt.Errorf("role name %q: use lower-case letters, digits and _ (not starting with pg_ or pgtenant_), at most 63 bytes", r.Name)
	case err != nil:
		return fmt.Errorf("create role %s: %w", r.Name, err)
	}
	return nil
}

// DropRole removes a granular role from every node (its grants first) and
// from the catalog. Users mapped to it are refused.
func DropRole(ctx context.Context, db *pgxpool.Pool, name string, nodes []placement.Node) error {
	var users []string
	rows, err := db.Query(ctx, `SELECT name FROM pgtenant.users WHERE role = $1 ORDER BY name`, name)
	if err == nil {
		users, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		return fmt.Errorf("drop role %s: %w", name, err)
	}
	if len(users) > 0 {
		return fmt.Errorf("drop role %s: users %s run as it; remove them or give them another role first", name, strings.Join(users, ", "))
	}
	var exists bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pgtenant.roles WHERE name = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("drop role %s: %w", name, err)
	}
	if !exists {
		return fmt.Errorf("drop role %s: %w", name, ErrUnknownRole)
	}
	id := pgx.Identifier{name}.Sanitize()
	// Roles belong to the server, grants to each database: clear every
	// node's database first, then drop the role where it still exists.
	for _, n := range nodes {
		if err := onNode(ctx, n, func(conn *pgx.Conn) error {
			var has bool
			if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)`, name).Scan(&has); err != nil || !has {
				return err
			}
			_, err := conn.Exec(ctx, "DROP OWNED BY "+id)
			return err
		}); err != nil {
			return fmt.Errorf("drop role %s on node %s: %w", name, n.Name, err)
		}
	}
	for _, n := range nodes {
		if err := onNode(ctx, n, func(conn *pgx.Conn) error {
			_, err := conn.Exec(ctx, "DROP ROLE IF EXISTS "+id)
			return err
		}); err != nil {
			return fmt.Errorf("drop role %s on node %s: %w", name, n.Name, err)
		}
	}
	if _, err := db.Exec(ctx, `DELETE FROM pgtenant.roles WHERE name = $1`, name); err != nil {
		return fmt.Errorf("drop role %s: %w", name, err)
	}
	return nil
}

func onNode(ctx context.Context, n placement.Node, fn func(*pgx.Conn) error) error {
	conn, err := pgx.Connect(ctx, n.DSN)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	return fn(conn)
}
