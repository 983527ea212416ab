package main

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/tables"
)

func newTableCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "table",
		Short: "The tables registry: which column holds each table's tenant id",
		Long: `The tables registry says, for each table of the application, the column that
holds the tenant id, or that the table is shared by all tenants (reference
data), or, for a child table without such a column, the parent it reaches its
tenant through. Row-level security ('pgtenant rls enable') and tenant purges
('pgtenant tenant remove --purge') use it.

Declare it in migration files, on the line before CREATE TABLE:
  -- pgtenant: tenant_column=customer_id
  -- pgtenant: shared
  -- pgtenant: parent=invoices via=invoice_id references=id
or with 'pgtenant table set'.`,
	}
	var col, parent, via, refs string
	var shared bool
	set := &cobra.Command{
		Use:   "set NAME (--tenant-column COL | --shared | --parent TABLE --via COL [--references COL])",
		Short: "Declare how a table's rows belong to tenants",
		Long: `Record in the catalog how a table's rows belong to tenants: its tenant
column, --shared (the same rows for every tenant), or --parent and --via for a
child table that reaches its tenant through a parent's key. Tenant purges,
exports, moves, imports and row-level security read the rule; roles, grants
and policies are then applied again to every shard (as 'access apply' does).
Nothing in the shards' tables changes. The same rules come from
'-- pgtenant:' annotations in migration files.

Undo: 'pgtenant table remove NAME' (it also removes the table's row-level
security).`,
		Example: `  pgtenant table set invoices --tenant-column customer_id
  pgtenant table set countries --shared
  pgtenant table set invoice_lines --parent invoices --via invoice_id --references id`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			t := tables.Table{Name: args[0]}
			n := 0
			if col != "" {
				t.Kind, t.TenantColumn = tables.KindTenant, col
				n++
			}
			if shared {
				t.Kind = tables.KindShared
				n++
			}
			if parent != "" {
				t.Kind, t.Parent, t.ParentKey, t.ParentColumn = tables.KindChild, parent, via, refs
				n++
				if via == "" {
					return usagef("--parent needs --via COL (the column of %s that references %s)", args[0], parent)
				}
			}
			if n != 1 {
				return usagef("give exactly one of --tenant-column COL, --shared, --parent TABLE")
			}
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				if err := tables.New(c.Pool()).Set(ctx, t); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "table %s: %s\n", t.Name, t.Describe())
				// A rule may come before the migration that makes its table;
				// a typo would otherwise pass without a word.
				if schema, app, err := shard0Tables(ctx, c); err == nil && schema != "" && !slices.Contains(app, t.Name) {
					fmt.Fprintf(a.stderr, "note: shard 0 (%s) has no table %s yet: the rule applies once a migration creates it (check the name; 'pgtenant table remove %s' undoes it)\n", schema, t.Name, t.Name)
				}
				return a.applyAccess(ctx, c, nil)
			})(cmd, args)
		},
	}
	set.Flags().StringVar(&col, "tenant-column", "", "the column that holds the tenant id")
	set.Flags().BoolVar(&shared, "shared", false, "the table is shared by every tenant (no tenant column)")
	set.Flags().StringVar(&parent, "parent", "", "a child table: the registered table its rows belong to")
	set.Flags().StringVar(&via, "via", "", "a child table: its column that references the parent")
	set.Flags().StringVar(&refs, "references", "id", "a child table: the parent's column that --via references")

	list := &cobra.Command{
		Use:     "list",
		Short:   "List the registry, and the tables of shard 0 that have no rule",
		Example: `  pgtenant table list`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			rules, err := tables.New(c.Pool()).List(ctx)
			if err != nil {
				return err
			}
			w := a.table("TABLE", "RULE", "RLS", "SOURCE")
			for _, t := range rules {
				rls := "off"
				if t.RLS {
					rls = "on"
				}
				if t.Kind == tables.KindShared {
					rls = "-"
				}
				row(w, t.Name, t.Describe(), rls, t.Source)
			}
			w.Flush()
			missing, err := unregisteredTables(ctx, c, rules)
			if err != nil {
				return err
			}
			if len(missing) > 0 {
				fmt.Fprintf(a.stdout, "tables without a rule (shard 0): %s\n  declare each with `pgtenant table set NAME --tenant-column COL` or --shared\n", strings.Join(missing, ", "))
			}
			return nil
		}),
	}
	remove := &cobra.Command{
		Use:     "remove NAME",
		Short:   "Remove a table's rule (and its row-level security)",
		Example: `  pgtenant table remove invoices`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				reg := tables.New(c.Pool())
				// Turn its policies off on the shards before the rule goes.
				if _, err := reg.SetRLS(ctx, args, false); err == nil {
					if err := a.applyAccess(ctx, c, nil); err != nil {
						return err
					}
				}
				if err := reg.Remove(ctx, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "table %s removed from the registry\n", args[0])
				return nil
			})(cmd, args)
		},
	}
	cmd.AddCommand(set, list, remove)
	return cmd
}

// unregisteredTables names the tables of shard 0's schema that the registry
// has no rule for (every shard has the same tables).
func unregisteredTables(ctx context.Context, c *catalog.Catalog, rules []tables.Table) ([]string, error) {
	_, app, err := shard0Tables(ctx, c)
	if err != nil || app == nil {
		return nil, err
	}
	return tables.Unregistered(app, rules), nil
}

// shard0Tables returns shard 0's schema and the application's tables in it
// ("" and nil before any shard exists).
func shard0Tables(ctx context.Context, c *catalog.Catalog) (string, []string, error) {
	shards, err := c.Shards(ctx)
	if err != nil || len(shards) == 0 {
		return "", nil, err
	}
	n, err := c.Node(ctx, shards[0].Node)
	if err != nil {
		return "", nil, err
	}
	dsn, err := c.ResolveDSN(n.DSN)
	if err != nil {
		return "", nil, fmt.Errorf("node %s: %w", n.Name, err)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", nil, fmt.Errorf("connect to node %s: %w", n.Name, err)
	}
	defer conn.Close(context.Background())
	app, err := tables.AppTables(ctx, conn, shards[0].Schema)
	if err != nil {
		return "", nil, err
	}
	if app == nil {
		app = []string{}
	}
	return shards[0].Schema, app, nil
}
