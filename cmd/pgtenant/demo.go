package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/demo"
)

func newDemoCmd(a *app) *cobra.Command {
	var opts demo.Options
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Start a local cluster with a sample SaaS app and 1,000 tenants, and query it",
		Long: `Start a local cluster (as 'pgtenant dev up' does), apply a sample
energy-monitoring schema (customers, buildings, meters, hourly readings,
tariffs) to every shard, register 1,000 tenants with realistic, uneven data,
and run ad-hoc per-tenant queries (joins, a CTE, a window function) on each
tenant's shard, printing where the tenant lives and what came back.

Running it again reuses the cluster and its data. Stop it with
'pgtenant dev down' (add --destroy to delete it).`,
		Example: `  pgtenant demo
  pgtenant demo --nodes 4 --dir /tmp/pgtenant-demo`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Out = a.stdout
			opts.Logger = a.logger
			opts.Cluster.Logger = a.logger
			res, err := demo.Run(cmd.Context(), opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "\nThe cluster keeps running in %s. Try:\n", res.Cluster.Dir)
			loc := res.Shown[0]
			fmt.Fprintf(a.stdout, "  pgtenant tenant locate %q\n", loc.Tenant)
			fmt.Fprintf(a.stdout, "  psql %q\n", withSearchPath(loc.Node.DSN, loc.Shard.Schema))
			fmt.Fprintf(a.stdout, "  pgtenant shard list\n  pgtenant dev down\n")
			return nil
		},
	}
	cmd.Flags().StringVar(&opts.Cluster.Dir, "dir", ".pgtenant", "directory for the local cluster")
	cmd.Flags().IntVar(&opts.Cluster.Nodes, "nodes", 2, "number of Postgres servers")
	cmd.Flags().IntVar(&opts.Cluster.Shards, "shards", 256, "number of logical shards (power of two)")
	cmd.Flags().IntVar(&opts.Tenants, "tenants", 1000, "number of tenants")
	return cmd
}
