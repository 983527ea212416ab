package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/access"
	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/nodedsn"
	"github.com/pgtenant/pgtenant/internal/placement"
)

func newNodeCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Register, check and remove the Postgres servers that hold shards",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "add NAME DSN",
		Short: "Check a Postgres server and register it as a node",
		Long: `Check a Postgres server and register it as a node. The check requires that it is
reachable, runs PostgreSQL 14 or newer, and lets the user create schemas; it
warns when wal_level is not 'logical' or the user lacks REPLICATION, since
online shard moves need both.

A name already registered is refused (SQLSTATE 42710) before anything is
checked or created on the server. A node is a database: one that is already
registered (under another name or DSN), or the catalog database, is refused.
The DSN is stored as given: keep the password out of it with a reference such
as password=$NODE1_PASSWORD (resolved from the environment, or the router's
--secrets-file, by the process that connects) or with a passfile
(PGPASSFILE); a literal password draws a warning.

Nodes added before 'shard create' receive shards; nodes added later receive
shards only by moving them ('pgtenant shard move', 'pgtenant node split').`,
		Example: `  pgtenant node add node1 'postgres://pgtenant:$NODE1_PASSWORD@db1.internal:5432/app'
  pgtenant node add node2 'host=db2.internal user=pgtenant dbname=app'   # password from PGPASSFILE`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				if nodedsn.LiteralPassword(args[1]) {
					fmt.Fprintf(a.stderr, "warning: the connection string of node %s carries a password in clear text, readable by anyone who can read the catalog; "+
						"prefer a reference resolved where pgtenant connects (password=$%s_PASSWORD, set in the environment or the router's --secrets-file), "+
						"or no password and a passfile (PGPASSFILE or passfile=...)\n", args[0], envName(args[0]))
				}
				report, err := c.AddNode(ctx, args[0], args[1])
				a.printReport(report)
				if err != nil {
					return err
				}
				dsn, err := c.ResolveDSN(args[1]) // AddNode resolved it already
				if err != nil {
					return err
				}
				if err := access.PrepareNode(ctx, c.Pool(), placement.Node{Name: args[0], DSN: dsn}); err != nil {
					return fmt.Errorf("node %s added, but creating pgtenant's roles there failed (run `pgtenant access apply`): %w", args[0], err)
				}
				if err := a.installExtensions(ctx, c, args[0], dsn); err != nil {
					return fmt.Errorf("node %s added, but: %w (run `pgtenant extension add NAME` once it is fixed)", args[0], err)
				}
				fmt.Fprintf(a.stdout, "node %s added\n", args[0])
				return nil
			})(cmd, args)
		},
	}, &cobra.Command{
		Use:     "list",
		Short:   "List nodes and how many shards each holds",
		Example: `  pgtenant node list`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			nodes, err := c.Nodes(ctx)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(nodesJSON(nodes))
			}
			w := a.table("NODE", "SHARDS", "DSN")
			for _, n := range nodes {
				row(w, n.Name, n.Shards, catalog.RedactDSN(n.DSN))
			}
			return w.Flush()
		}),
	}, &cobra.Command{
		Use:   "check [NAME...]",
		Short: "Check that nodes are reachable and fit for pgtenant",
		Long: `Check registered nodes (all of them, or those named): reachable, PostgreSQL 14
or newer, privileges to create schemas, and wal_level=logical plus replication
rights for online moves, and that no other node is the same database (the
node's identity is recorded). Exits non-zero when a check fails.`,
		Example: `  pgtenant node check
  pgtenant node check node2`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				nodes, err := c.Nodes(ctx)
				if err != nil {
					return err
				}
				want := map[string]bool{}
				for _, n := range args {
					want[n] = true
				}
				plan, err := access.Load(ctx, c.Pool())
				if err != nil {
					return err
				}
				shards, err := c.Shards(ctx)
				if err != nil {
					return err
				}
				failed := 0
				for _, n := range nodes {
					if len(want) > 0 && !want[n.Name] {
						continue
					}
					delete(want, n.Name)
					r := c.CheckRegisteredNode(ctx, n)
					if r.Version > 0 {
						r.Checks = append(r.Checks, a.accessChecks(ctx, c, plan, n, shards)...)
					}
					a.printReport(r)
					if r.Failed() || !a.checkExtensions(ctx, c, n.Name, resolvedDSN(c, n.DSN)) {
						failed++
					}
				}
				for n := range want {
					return catalog.UnknownNode(n)
				}
				if failed > 0 {
					return fmt.Errorf("%s failed their check", plural(failed, "node"))
				}
				return nil
			})(cmd, args)
		},
	}, &cobra.Command{
		Use:     "remove NAME",
		Short:   "Unregister a node that holds no shard",
		Example: `  pgtenant node remove node3`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				if err := c.RemoveNode(ctx, args[0]); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "node %s removed\n", args[0])
				return nil
			})(cmd, args)
		},
	}, newNodeStatsCmd(a))
	return cmd
}

func (a *app) printReport(r catalog.NodeReport) {
	for _, c := range r.Checks {
		fmt.Fprintf(a.stdout, "%-5s %s %s: %s\n", c.Status, r.Node, c.Name, c.Detail)
	}
}

// envName suggests an environment variable name for a node's secret: NODE1 for node1.
func envName(node string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, node)
}
