package main

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/access"
	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/tables"
)

func newRLSCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rls",
		Short: "Row-level security: each transaction sees only its tenant's rows",
		Long: `A shard holds several tenants. With row-level security enabled on a table,
every shard's copy gets ENABLE and FORCE ROW LEVEL SECURITY and a policy
  USING/WITH CHECK (tenant_column = current_setting('pgtenant.tenant_id'))
(through the parent for a child table), so a statement without a WHERE on the
tenant sees only its tenant's rows and an INSERT of another tenant's id fails
with 42501. The tables' owner (the node DSN's user, which runs migrations and
moves) keeps seeing every row through a policy of its own.

Policies bind only roles that are neither the owner nor superusers: enabling
also sets the runtime role (pgtenant_app by default), which pgtenant creates
on every node with the privileges the app needs; routers then run ordinary
users' transactions as it. DDL through the router then fails: use migrate up.`,
	}
	var runtime string
	enable := &cobra.Command{
		Use:   "enable [TABLE...]",
		Short: "Enable row-level security on the tables (all registered tables with a tenant by default)",
		Long: `Enable row-level security on registered tables (every table with a tenant
column or a parent, or those named) in every shard of every node, with the
policy of 'pgtenant rls --help', and make the routers run ordinary users'
transactions as --runtime-role, created NOLOGIN on every node with the
privileges the app needs. Names are checked first: an unknown or shared table
changes nothing. A new runtime role is recorded (and routers switch to it)
only once every node has it: when a node fails, routers keep their role; run
the command again once the node is fixed. From then on DDL through the
router fails (42501): apply schema changes with 'pgtenant migrate up'.

Undo: 'pgtenant rls disable' removes the policies; routers keep running users
as the runtime role, which still has its privileges.`,
		Example: `  pgtenant rls enable
  pgtenant rls enable invoices payments`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				return a.setRLS(ctx, c, args, true, runtime)
			})(cmd, args)
		},
	}
	enable.Flags().StringVar(&runtime, "runtime-role", access.DefaultRuntimeRole, "the role routers run ordinary users' transactions as")
	disable := &cobra.Command{
		Use:     "disable [TABLE...]",
		Short:   "Remove pgtenant's row-level security from the tables (all by default)",
		Example: `  pgtenant rls disable invoices`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				return a.setRLS(ctx, c, args, false, "")
			})(cmd, args)
		},
	}
	cmd.AddCommand(enable, disable)
	return cmd
}

func (a *app) setRLS(ctx context.Context, c *catalog.Catalog, names []string, on bool, runtime string) error {
	if on && !tables.ValidIdent(runtime) {
		return usagef("--runtime-role %q: use a plain identifier", runtime)
	}
	// The registry first: it refuses unknown and shared tables, and nothing
	// may change before that (a typo must not switch the routers' role).
	changed, err := tables.New(c.Pool()).SetRLS(ctx, names, on)
	if err != nil {
		return err
	}
	newRuntime := false
	if on {
		cur, err := c.Meta(ctx, access.MetaRuntimeRole)
		if err != nil {
			return err
		}
		newRuntime = cur != runtime
	}
	state := "disabled"
	if on {
		state = "enabled"
	}
	for _, t := range changed {
		fmt.Fprintf(a.stdout, "row-level security %s on %s (%s)\n", state, t.Name, t.Describe())
	}
	if len(changed) == 0 {
		fmt.Fprintln(a.stdout, "no tables with a tenant in the registry; declare them with `pgtenant table set NAME --tenant-column COL`")
	}
	if !newRuntime {
		return a.applyAccess(ctx, c, nil)
	}
	// A new runtime role is created on every node first and recorded only
	// then: routers read it with the users at the next map change, and a
	// node without it would refuse their connections.
	if err := a.applyAccessAs(ctx, c, nil, runtime); err != nil {
		return fmt.Errorf("%w; routers keep their role until every node has role %s: run `pgtenant rls enable` again once the node is fixed",
			err, pgx.Identifier{runtime}.Sanitize())
	}
	if err := c.SetMeta(ctx, access.MetaRuntimeRole, runtime); err != nil {
		return err
	}
	// Routers read the runtime role with the users: make them reload, now
	// that every node has the role.
	if err := c.BumpMapVersion(ctx); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "routers now run ordinary users' transactions as role %s\n", pgx.Identifier{runtime}.Sanitize())
	return nil
}
