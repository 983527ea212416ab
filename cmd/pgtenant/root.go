package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
)

// app carries what every subcommand shares: output streams and the resolved
// config. It is built per run; there is no global state.
type app struct {
	stdout, stderr io.Writer
	configPath     string
	logLevel       string
	logFormat      string
	cfg            *Config
	logger         *slog.Logger
	// jsonLogs is set when the logger writes JSON: a failure is then
	// reported as a JSON record too (reportFailure).
	jsonLogs bool
	// level is the logger's level; the router changes it on SIGHUP.
	level slog.LevelVar
	// onSignal, when set, receives SIGINT/SIGTERM/SIGHUP instead of the
	// command being cancelled (see dispatchSignals).
	onSignal atomic.Pointer[func(os.Signal)]
	// json is set by --json on list and show commands.
	json bool
}

func newRootCmd(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "pgtenant",
		Short: "Tenant sharding for PostgreSQL",
		Long: `pgtenant splits a multi-tenant Postgres database by customer.

Tenants are hashed (or placed by hand) into a fixed number of logical shards,
each a Postgres schema (shard_0000, shard_0001, ...), spread over a few
physical nodes. A catalog database keeps the map. The router speaks the
Postgres protocol, so apps connect to it as to one database and name the
tenant; it runs each transaction on that tenant's shard.

Configuration comes from flags, then environment variables (PGTENANT_*), then
a config file (--config, PGTENANT_CONFIG, ./pgtenant.yaml or
./.pgtenant/pgtenant.yaml, which 'pgtenant dev up' writes).`,
		Example: `  # Try it: a local 2-node cluster with sample data
  pgtenant demo

  # A local cluster to develop against
  pgtenant dev up --nodes 2 --shards 256
  pgtenant tenant add acme
  pgtenant migrate up --dir ./migrations

  # Against your own servers
  export PGTENANT_CATALOG=postgres://admin@catalog-host/pgtenant
  pgtenant init --shards 256
  pgtenant node add node1 postgres://admin@db1/app
  pgtenant shard create
  pgtenant user add app
  pgtenant router --listen 0.0.0.0:6432

  # A node fills up: add one and move half its shards there, online
  pgtenant node add node3 postgres://admin@db3/app
  pgtenant node split node1 --to node3`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			cfg, path, err := loadConfig(a.configPath)
			if err != nil {
				return err
			}
			a.cfg, a.configPath = cfg, path
			return a.setupLogger(cmd)
		},
	}
	root.PersistentFlags().StringVar(&a.configPath, "config", "", "config file (default: $PGTENANT_CONFIG, ./pgtenant.yaml, ./.pgtenant/pgtenant.yaml)")
	root.PersistentFlags().String("catalog", "", "catalog database connection string (env PGTENANT_CATALOG)")
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "warn", "log level: debug, info, warn, error (config file: log_level)")
	root.PersistentFlags().StringVar(&a.logFormat, "log-format", "text", "log format on stderr: text, or json (one object per line, for log drains; config file: log_format)")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageError{err} })

	root.AddCommand(
		newInitCmd(a),
		group(newNodeCmd(a)),
		group(newShardCmd(a)),
		newRouterCmd(a),
		group(newTenantCmd(a)),
		group(newUserCmd(a)),
		group(newTableCmd(a)),
		group(newRLSCmd(a)),
		group(newRoleCmd(a)),
		group(newAccessCmd(a)),
		group(newMigrateCmd(a)),
		group(newExtensionCmd(a)),
		group(newReferenceCmd(a)),
		group(newDevCmd(a)),
		newDemoCmd(a),
		newOpsCmd(a),
		newConsoleCmd(a),
		group(newImportCmd(a)),
	)
	splits := newSplitCmds(a) // node split, rebalance, node drain
	for _, c := range root.Commands() {
		switch c.Name() {
		case "shard":
			c.AddCommand(newMoveCmds(a)...)
		case "node":
			c.AddCommand(splits[0], splits[2])
		case "tenant":
			c.AddCommand(newTenantTopCmd(a))
		}
	}
	root.AddCommand(splits[1])
	root.AddCommand(newVersionCmd(a))
	a.addJSONFlags(root)
	root.SetUsageTemplate(root.UsageTemplate() + exitCodesHelp)
	return root
}

// exitCodesHelp ends every command's --help (main.go's exit codes).
const exitCodesHelp = `
Exit codes: 0 success, 1 failure (the error says what failed, and what to do),
2 usage error (an unknown flag, a missing or bad argument).
`

// group makes a command that only holds subcommands refuse unknown ones
// with a usage error instead of printing help and exiting 0.
func group(cmd *cobra.Command) *cobra.Command {
	cmd.Args = cobra.ArbitraryArgs
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return usagef("unknown command %q for %q", args[0], cmd.CommandPath())
		}
		return cmd.Help()
	}
	for _, sub := range cmd.Commands() {
		if sub.HasSubCommands() {
			group(sub)
		}
	}
	return cmd
}

// isCobraUsage recognises cobra's own argument errors.
func isCobraUsage(err error) bool {
	s := err.Error()
	return strings.HasPrefix(s, "unknown command") || strings.HasPrefix(s, "accepts ") ||
		strings.HasPrefix(s, "requires ") || strings.HasPrefix(s, "unknown flag") ||
		strings.HasPrefix(s, "unknown shorthand flag") || strings.HasPrefix(s, "required flag(s)")
}

// catalogDSN resolves the catalog connection string or explains how to give one.
func (a *app) catalogDSN(cmd *cobra.Command) (string, error) {
	dsn := setting(cmd, "catalog", "PGTENANT_CATALOG", a.cfg.Catalog)
	if dsn == "" {
		return "", usagef("no catalog database given: pass --catalog, set PGTENANT_CATALOG, or start a local cluster with `pgtenant dev up`")
	}
	return dsn, nil
}

// openCatalog connects to the catalog.
func (a *app) openCatalog(cmd *cobra.Command) (*catalog.Catalog, error) {
	dsn, err := a.catalogDSN(cmd)
	if err != nil {
		return nil, err
	}
	c := catalog.New(dsn, a.logger)
	if err := c.Open(cmd.Context()); err != nil {
		return nil, a.catalogUnreachable(cmd, err)
	}
	return c, nil
}

// catalogUnreachable adds to a failed connection to the catalog where its
// DSN came from and, for a local cluster's config file, that the cluster
// may be stopped.
func (a *app) catalogUnreachable(cmd *cobra.Command, err error) error {
	if ne := (*net.OpError)(nil); !errors.As(err, &ne) { // not a refused or timed-out dial: the server answered
		return err
	}
	switch {
	case cmd.Flag("catalog") != nil && cmd.Flag("catalog").Changed:
		return fmt.Errorf("%w\nhint: is the catalog's server running at the address --catalog gives?", err)
	case os.Getenv("PGTENANT_CATALOG") != "":
		return fmt.Errorf("%w\nhint: is the catalog's server running at the address PGTENANT_CATALOG gives?", err)
	}
	if a.configPath == "" {
		return err
	}
	dir := filepath.Dir(absPath(a.configPath))
	if _, serr := os.Stat(filepath.Join(dir, "node1", "data")); serr == nil {
		return fmt.Errorf("%w\nhint: the catalog is the local cluster's in %s (config %s): is it stopped? `%s` starts it", err, dir, a.configPath, devUpLine(dir))
	}
	return fmt.Errorf("%w\nhint: is the catalog's server running at the address the config file %s gives?", err, a.configPath)
}

// withCatalog runs fn with an open catalog and closes it after.
func (a *app) withCatalog(fn func(ctx context.Context, c *catalog.Catalog) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		c, err := a.openCatalog(cmd)
		if err != nil {
			return err
		}
		defer c.Close()
		return fn(cmd.Context(), c)
	}
}

// table writes aligned columns to stdout.
func (a *app) table(header ...string) *tabwriter.Writer {
	w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(header, "\t"))
	return w
}

func row(w io.Writer, cols ...any) {
	for i, c := range cols {
		if i > 0 {
			fmt.Fprint(w, "\t")
		}
		fmt.Fprint(w, c)
	}
	fmt.Fprintln(w)
}
