package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

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

'dev up' writes DIR/pgtenant.yaml. Later commands find it by themselves when
run from the directory that holds .pgtenant (the default DIR), so
'pgtenant tenant add acme' just works there; elsewhere, or with another DIR,
export PGTENANT_CONFIG=DIR/pgtenant.yaml (dev up prints the line).`,
	}
	var opts devcluster.Options
	var noRouter bool
	up := &cobra.Command{
		Use:   "up",
		Short: "Start (or reuse) the local cluster",
		Long: `Start a local cluster in DIR (default ./.pgtenant), or start again the one
there: N Postgres servers from this machine's PostgreSQL (initdb and pg_ctl:
'apt-get install postgresql' on Debian/Ubuntu), each on a free loopback port
with wal_level=logical; a catalog database on the first; every node
registered and every shard created; and the router in the background (log in
DIR/router.log, port kept in DIR/router.port). It prints the router's
postgres:// URL, for DATABASE_URL, and the commands to try next.

Run as root, the servers run as the 'postgres' OS user (PostgreSQL refuses to
run as root), which must be able to enter every parent directory of DIR: not
under /root; /tmp or /srv will do.

Running it again reuses the cluster: stopped servers start, a different
--shards is ignored (the count is fixed when the catalog is made), and an
initdb cut short by a killed 'dev up' is done again. When another program took
the router's port meanwhile, the router moves to a new one and a warning says
so. Stop the cluster with 'pgtenant dev down'.`,
		Example: `  pgtenant dev up
  pgtenant dev up --nodes 4 --shards 256 --dir /tmp/pgtenant`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkClusterFlags(cmd, opts.Nodes, opts.Shards); err != nil {
				return err
			}
			opts.Logger = a.logger
			if !cmd.Flags().Changed("shards") {
				opts.Shards = 0 // the existing cluster's count, or 256
			}
			before := keptRouterPort(opts.Dir)
			cl, err := devcluster.Up(cmd.Context(), opts)
			if err != nil {
				return err
			}
			if after := keptRouterPort(cl.Dir); before != 0 && after != before {
				fmt.Fprintf(a.stderr, "warning: the router's port %d is taken by another program: the router moves to port %d; update DATABASE_URL (and any saved port) to the url below\n", before, after)
			}
			a.printCluster(cl)
			if !noRouter {
				addr, err := a.startDevRouter(cmd.Context(), cl.Dir)
				if err != nil {
					return err
				}
				a.printDevRouter(cl.Dir, addr)
			}
			a.printNext(cl)
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
		Use:   "status",
		Short: "Show the local cluster's servers and catalog",
		Long: `Show the local cluster's servers (port, running, DSN), its catalog, shard
count and config file, and its router (URL and a psql line), or the command
that starts what is stopped. Without --dir: ./.pgtenant, else the cluster
whose pgtenant.yaml --config or PGTENANT_CONFIG names.`,
		Example: `  pgtenant dev status
  pgtenant dev status --dir ~/myapp-pg`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := devcluster.Status(cmd.Context(), a.devDir(cmd, dir))
			if err != nil {
				return err
			}
			a.printCluster(cl)
			if addr, running := devRouterRunning(cl.Dir); running {
				a.printDevRouter(cl.Dir, addr)
			} else if clusterRunning(cl) {
				fmt.Fprintf(a.stdout, "router:  not running (`%s` starts it; its log is %s)\n",
					devUpLine(cl.Dir), filepath.Join(cl.Dir, "router.log"))
			}
			a.printNext(cl)
			return nil
		},
	}
	status.Flags().StringVar(&dir, "dir", ".pgtenant", "the cluster's directory (without it and ./.pgtenant, the one whose pgtenant.yaml --config or PGTENANT_CONFIG names)")
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop the local cluster (and remove it with --destroy)",
		Long: `Stop the local cluster's router and servers (a fast shutdown: open
transactions are rolled back). The data stays, and 'pgtenant dev up' starts
it again; --destroy also deletes the directory. The router is found by its
command line as well as by its pid file, so one left by a killed 'dev up' or
'demo' stops too (SIGKILL after 30 s). Without --dir: ./.pgtenant, else the
cluster whose pgtenant.yaml --config or PGTENANT_CONFIG names. A directory
without a cluster is an error (exit 1).`,
		Example: `  pgtenant dev down
  pgtenant dev down --destroy`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := a.devDir(cmd, dir)
			if err := devcluster.Down(cmd.Context(), dir, destroy); err != nil {
				return err
			}
			if destroy {
				fmt.Fprintf(a.stdout, "local cluster in %s stopped and removed\n", dir)
			} else {
				fmt.Fprintf(a.stdout, "local cluster in %s stopped; `%s` starts it again\n", dir, devUpLine(absPath(dir)))
			}
			return nil
		},
	}
	down.Flags().StringVar(&dir, "dir", ".pgtenant", "the cluster's directory (without it and ./.pgtenant, the one whose pgtenant.yaml --config or PGTENANT_CONFIG names)")
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
}

// printDevRouter prints where the local cluster's router in dir listens.
func (a *app) printDevRouter(dir, addr string) {
	fmt.Fprintf(a.stdout, "router:  %s (log in %s/router.log)\n", addr, dir)
	fmt.Fprintf(a.stdout, "url:     %s (DATABASE_URL; name the tenant per transaction or add &options=-c%%20pgtenant.tenant%%3Dacme)\n", routerURL(addr))
	fmt.Fprintf(a.stdout, "psql:    %s\n", psqlLine(addr, "acme"))
}

// clusterRunning reports whether any server of cl runs.
func clusterRunning(cl *devcluster.Cluster) bool {
	for _, n := range cl.Nodes {
		if n.Running {
			return true
		}
	}
	return false
}

// devUpLine is the command that starts the local cluster in dir again.
func devUpLine(dir string) string {
	up := "pgtenant dev up"
	if def, _ := filepath.Abs(".pgtenant"); dir != def {
		up += " --dir " + shellQuote(dir)
	}
	return up
}

// printNext prints what to run on the local cluster cl, or how to start it
// when it is stopped.
func (a *app) printNext(cl *devcluster.Cluster) {
	if !clusterRunning(cl) {
		fmt.Fprintf(a.stdout, "\nthe cluster is stopped; start it again with:\n  %s\n", devUpLine(cl.Dir))
		return
	}
	fmt.Fprintf(a.stdout, "\nnext:\n")
	for _, c := range nextSteps(cl.Dir, "pgtenant migrate create create_invoices --dir ./migrations   # then write its SQL", "pgtenant migrate up --dir ./migrations", "pgtenant tenant add acme", "pgtenant tenant locate acme", "pgtenant console   # the web console on http://"+defaultConsoleListen+"/") {
		fmt.Fprintf(a.stdout, "  %s\n", c)
	}
}

// devDir is the local cluster directory dev status and dev down act on: --dir
// when given; else ./.pgtenant when it exists; else the directory of the
// config file in use (--config, PGTENANT_CONFIG) when it is a dev cluster's,
// as the `export PGTENANT_CONFIG=...` that dev up prints for a --dir names.
func (a *app) devDir(cmd *cobra.Command, dir string) string {
	if cmd.Flags().Changed("dir") || a.configPath == "" || filepath.Base(a.configPath) != devcluster.ConfigFile {
		return dir
	}
	if _, err := os.Stat(dir); err == nil {
		return dir
	}
	return filepath.Dir(a.configPath)
}

// checkClusterFlags refuses a local cluster's --nodes and --shards before
// any server starts, so a typo leaves nothing running behind it.
func checkClusterFlags(cmd *cobra.Command, nodes, shards int) error {
	if nodes < 1 {
		return usagef("--nodes %d: give at least 1", nodes)
	}
	if cmd.Flags().Changed("shards") && (shards < 1 || shards > 65536 || shards&(shards-1) != 0) {
		return usagef("--shards %d: %v", shards, catalog.ErrBadShardCount)
	}
	return nil
}

// keptRouterPort is the dev router's port kept in dir (router.port), or 0.
func keptRouterPort(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "router.port"))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// absPath is p made absolute, or p when that fails.
func absPath(p string) string {
	if abs, err := filepath.Abs(p); err == nil {
		return abs
	}
	return p
}
