package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/access"
	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/placement"
)

func newRoleCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "role",
		Short: "Roles with granular privileges on every shard (read-only, insert-no-delete, ...)",
		Long: `A role is a Postgres role (NOLOGIN) that pgtenant creates on every node, with
the privileges given on the tables of every shard schema, and default
privileges for tables later migrations add; moves and new shards get them too.
Map a router user to it with 'pgtenant user add NAME --role ROLE': the router
then runs that user's transactions as the role, and Postgres refuses what the
role may not do (DELETE as a read-only role gets 42501 from the server).`,
	}
	var grant string
	create := &cobra.Command{
		Use:   "create NAME --grant SELECT[,INSERT,UPDATE,DELETE]",
		Short: "Create a role on every node with these privileges on every shard's tables",
		Example: `  pgtenant role create readonly --grant SELECT
  pgtenant role create appender --grant SELECT,INSERT,UPDATE`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			privs, err := access.ParsePrivileges(grant)
			if err != nil {
				return usagef("%v", err)
			}
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				if err := access.CreateRole(ctx, c.Pool(), access.Role{Name: args[0], Privileges: privs}); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "role %s: %s on every shard's tables\n", args[0], strings.Join(privs, ", "))
				return a.applyAccess(ctx, c, nil)
			})(cmd, args)
		},
	}
	create.Flags().StringVar(&grant, "grant", "", "privileges: SELECT, INSERT, UPDATE, DELETE, comma-separated")
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the roles",
		Example: `  pgtenant role list`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			roles, err := access.ListRoles(ctx, c.Pool())
			if err != nil {
				return err
			}
			w := a.table("ROLE", "PRIVILEGES")
			for _, r := range roles {
				row(w, r.Name, strings.Join(r.Privileges, ","))
			}
			return w.Flush()
		}),
	}
	drop := &cobra.Command{
		Use:     "drop NAME",
		Short:   "Drop a role from every node (refused while users run as it)",
		Example: `  pgtenant role drop readonly`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				nodes, err := c.Nodes(ctx)
				if err != nil {
					return err
				}
				pn := make([]placement.Node, len(nodes))
				for i, n := range nodes {
					dsn, err := c.ResolveDSN(n.DSN)
					if err != nil {
						return fmt.Errorf("node %s: %w", n.Name, err)
					}
					pn[i] = placement.Node{Name: n.Name, DSN: dsn}
				}
				err = access.DropRole(ctx, c.Pool(), args[0], pn)
				c.RecordOperation(ctx, "role drop", map[string]any{"role": args[0]}, err)
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "role %s dropped\n", args[0])
				return nil
			})(cmd, args)
		},
	}
	cmd.AddCommand(create, list, drop)
	return cmd
}
