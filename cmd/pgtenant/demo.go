package main

import (
	"context"
	"fmt"
	"net"

	"github.com/jackc/pgx/v5"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/devcluster"
	"github.com/pgtenant/pgtenant/internal/placement"
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
			if err := checkClusterFlags(cmd, opts.Cluster.Nodes, opts.Cluster.Shards); err != nil {
				return err
			}
			if opts.Tenants < 1 {
				return usagef("--tenants %d: give at least 1", opts.Tenants)
			}
			opts.Out = a.stdout
			opts.Logger = a.logger
			opts.Cluster.Logger = a.logger
			if !cmd.Flags().Changed("shards") {
				opts.Cluster.Shards = 0 // the existing cluster's count, or 256
			}
			var routerAddr string
			opts.Started = func(ctx context.Context, cl *devcluster.Cluster) error {
				addr, err := a.startDevRouter(ctx, cl.Dir)
				routerAddr = addr
				return err
			}
			opts.Query = func(ctx context.Context, tenant string, _ placement.Location, sql string) (pgx.Rows, func(), error) {
				return queryThroughRouter(ctx, routerAddr, tenant, sql)
			}
			res, err := demo.Run(cmd.Context(), opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "\nThe cluster and its router keep running in %s. Try:\n", res.Cluster.Dir)
			loc := res.Shown[0]
			fmt.Fprintf(a.stdout, "  %s\n", psqlLine(routerAddr, loc.Tenant))
			for _, c := range nextSteps(res.Cluster.Dir, fmt.Sprintf("pgtenant tenant locate %q", loc.Tenant), "pgtenant shard list") {
				fmt.Fprintf(a.stdout, "  %s\n", c)
			}
			fmt.Fprintf(a.stdout, "The router's URL, for DATABASE_URL: %s\n", routerURL(routerAddr))
			return nil
		},
	}
	cmd.Flags().StringVar(&opts.Cluster.Dir, "dir", ".pgtenant", "directory for the local cluster")
	cmd.Flags().IntVar(&opts.Cluster.Nodes, "nodes", 2, "number of Postgres servers")
	cmd.Flags().IntVar(&opts.Cluster.Shards, "shards", 256, "number of logical shards (power of two)")
	cmd.Flags().IntVar(&opts.Tenants, "tenants", 1000, "number of tenants")
	return cmd
}

// queryThroughRouter runs sql for tenant through the router at addr, naming
// the tenant in the connection's options as an app would.
func queryThroughRouter(ctx context.Context, addr, tenant, sql string) (pgx.Rows, func(), error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%s user=postgres dbname=app sslmode=disable", host, port))
	if err != nil {
		return nil, nil, err
	}
	cfg.RuntimeParams["options"] = "-c pgtenant.tenant=" + escapeOption(tenant)
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("connect to the router: %w", err)
	}
	rows, err := conn.Query(ctx, sql, tenant)
	if err != nil {
		conn.Close(ctx)
		return nil, nil, err
	}
	return rows, func() { rows.Close(); conn.Close(ctx) }, nil
}

// escapeOption escapes spaces and backslashes as libpq's options parser expects.
func escapeOption(s string) string {
	var b []byte
	for i := 0; i < len(s); i++ {
		if s[i] == ' ' || s[i] == '\\' {
			b = append(b, '\\')
		}
		b = append(b, s[i])
	}
	return string(b)
}
