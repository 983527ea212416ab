package main

import (
	"fmt"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/devcluster"
)

func newDevCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run a local sharded cluster on this machine's Postgres binaries",
		Long: `Run a local cluster: N Postgres servers started from the machine's own
binaries (initdb and pg_ctl, found on PATH, through pg_config, or in
/usr/lib/postgresql/*/bin) on free loopback ports with wal_level=logical, a
catalog database on the first, every node registered and every shard created.
When run as root, the servers run as the 'postgres' OS user.

'dev up' writes DIR/pgtenant.yaml, which later commands run from the same
directory pick up, so 'pgtenant tenant add acme' just works.`,
	}
	var opts devcluster.Options
	var noRouter bool
	up := &cobra.Command{
		Use:   "up",
		Short: "Start (or reuse) the local cluster",
		Example: `  pgtenant dev up
  pgtenant dev up --nodes 4 --shards 256 --dir /tmp/pgtenant`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts.Logger = a.logger
			if !cmd.Flags().Changed("shards") {
				opts.Shards = 0 // the existing cluster's count, or 256
			}
			cl, err := devcluster.Up(cmd.Context(), opts)
			if err != nil {
				return err
			}
			a.printCluster(cl)
			if noRouter {
				return nil
			}
			addr, err := a.startDevRouter(cmd.Context(), cl.Dir)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "router:  %s (log in %s/router.log)\n", addr, cl.Dir)
			fmt.Fprintf(a.stdout, "url:     %s (DATABASE_URL; name the tenant per transaction or add &options=-c%%20pgtenant.tenant%%3Dacme)\n", routerURL(addr))
			fmt.Fprintf(a.stdout, "  %s\n", psqlLine(addr, "acme"))
			return nil
		},
	}
	up.Flags().StringVar(&opts.Dir, "dir", ".pgtenant", "directory for the servers' data")
	up.Flags().IntVar(&opts.Nodes, "nodes", 2, "number of Postgres servers")
	up.Flags().IntVar(&opts.Shards, "shards", 256, "number of logical shards (power of two); an existing cluster keeps its own")
	up.Flags().BoolVar(&noRouter, "no-router", false, "do not start the router in the background")

	var dir string
	var destroy bool
	status := &cobra.Command{
		Use:     "status",
		Short:   "Show the local cluster's servers and catalog",
		Example: `  pgtenant dev status`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := devcluster.Status(cmd.Context(), dir)
			if err != nil {
				return err
			}
			a.printCluster(cl)
			return nil
		},
	}
	status.Flags().StringVar(&dir, "dir", ".pgtenant", "the cluster's directory")
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop the local cluster (and remove it with --destroy)",
		Example: `  pgtenant dev down
  pgtenant dev down --destroy`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := devcluster.Down(cmd.Context(), dir, destroy); err != nil {
				return err
			}
			if destroy {
				fmt.Fprintf(a.stdout, "local cluster in %s stopped and removed\n", dir)
			} else {
				fmt.Fprintf(a.stdout, "local cluster in %s stopped; 'pgtenant dev up' starts it again\n", dir)
			}
			return nil
		},
	}
	down.Flags().StringVar(&dir, "dir", ".pgtenant", "the cluster's directory")
	down.Flags().BoolVar(&destroy, "destroy", false, "also delete the data directory")
	cmd.AddCommand(up, status, down)
	return cmd
}

func (a *app) printCluster(cl *devcluster.Cluster) {
	fmt.Fprintf(a.stdout, "local cluster in %s\n", cl.Dir)
	w := a.table("NODE", "PORT", "RUNNING", "DSN")
	for _, n := range cl.Nodes {
		row(w, n.Name, n.Port, n.Running, n.DSN)
	}
	w.Flush()
	fmt.Fprintf(a.stdout, "catalog: %s\n", catalog.RedactDSN(cl.CatalogDSN))
	if cl.Shards > 0 {
		fmt.Fprintf(a.stdout, "shards:  %d\n", cl.Shards)
	}
	fmt.Fprintf(a.stdout, "config:  %s/%s\n", cl.Dir, devcluster.ConfigFile)
	running := false
	for _, n := range cl.Nodes {
		running = running || n.Running
	}
	if !running {
		up := "pgtenant dev up"
		if def, _ := filepath.Abs(".pgtenant"); cl.Dir != def {
			up += " --dir " + shellQuote(cl.Dir)
		}
		fmt.Fprintf(a.stdout, "\nthe cluster is stopped; start it again with:\n  %s\n", up)
		return
	}
	fmt.Fprintf(a.stdout, "\nnext:\n")
	for _, c := range nextSteps(cl.Dir, "pgtenant tenant add acme", "pgtenant tenant locate acme", "pgtenant migrate up --dir ./migrations", "pgtenant console   # the web console on http://"+defaultConsoleListen+"/") {
		fmt.Fprintf(a.stdout, "  %s\n", c)
	}
}
