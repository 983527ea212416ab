package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/tables"
	"github.com/pgtenant/pgtenant/internal/tenantops"
)

func newTenantCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tenant",
		Short: "Register, locate and remove tenants",
		Long: `A tenant is one customer. Its data lives in exactly one shard. By default the
shard is hashtextextended(id, 0) & (shards - 1), which Postgres computes
without extensions, so imports and audits can place rows in plain SQL:

  SELECT hashtextextended('acme', 0) & 255;   -- acme's shard of 256

Tenant ids are text of 1 to 255 bytes; any characters are allowed.`,
	}
	var shard int
	var file string
	var skipExisting bool
	add := &cobra.Command{
		Use:   "add ID | --file FILE",
		Short: "Register a tenant in its hash shard, or in --shard N; or every id of a file",
		Long: `Register a tenant in the catalog: in its hash shard
(hashtextextended(id, 0) & (shards - 1)), or in --shard N (placed by hand:
'tenant list' shows it as explicit). Nothing is written on the nodes: the
shard's tables are already there (migrate up), and the app's inserts give the
tenant its rows. A running router routes the tenant at once (it looks tenants
up on demand; a refusal of an unknown tenant is kept 50 ms).

--file registers every id of a file in one transaction: a bad, repeated or
registered id stops it with its line number and nothing is added
(--skip-existing keeps registered ids as they are).

Undo: 'pgtenant tenant remove ID' (refused while the tenant has rows in
registered tables; see its --help).`,
		Example: `  pgtenant tenant add acme
  pgtenant tenant add "O'Reilly Media"
  pgtenant tenant add bigcorp --shard 17   # explicit placement overrides the hash
  pgtenant tenant add --file ids.txt       # one id a line, all or nothing ("-": stdin)`,
		Args: func(cmd *cobra.Command, args []string) error {
			if (len(args) == 1) == (file != "") {
				return usagef("give one tenant id or --file FILE")
			}
			return cobra.MaximumNArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				var want *int
				if cmd.Flags().Changed("shard") {
					want = &shard
				}
				if file != "" {
					return a.addTenantFile(ctx, c, cmd.InOrStdin(), file, catalog.TenantFileOptions{Shard: want, SkipExisting: skipExisting})
				}
				if skipExisting {
					return usagef("--skip-existing goes with --file")
				}
				loc, err := c.AddTenant(ctx, args[0], want)
				if errors.Is(err, catalog.ErrTenantExists) {
					return fmt.Errorf("%w (SQLSTATE 23505); `pgtenant tenant locate %s` shows where it is", err, shellQuote(args[0]))
				}
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "tenant %s added: shard %d (schema %s) on node %s\n",
					strconv.Quote(loc.Tenant), loc.Shard.ID, loc.Shard.Schema, loc.Node.Name)
				return nil
			})(cmd, args)
		},
	}
	add.Flags().StringVar(&file, "file", "", "register every id of this file, one a line, in one transaction (\"-\": stdin)")
	add.Flags().BoolVar(&skipExisting, "skip-existing", false, "with --file: leave ids already registered as they are instead of failing")
	add.Flags().IntVar(&shard, "shard", 0, "place the tenant in this shard instead of its hash shard")

	locate := &cobra.Command{
		Use:     "locate ID",
		Short:   "Show a tenant's shard, schema, node and a connection string",
		Example: `  pgtenant tenant locate acme`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				loc, err := c.Locate(ctx, args[0])
				if errors.Is(err, placement.ErrUnknownTenant) {
					return unknownTenant(args[0], err)
				}
				if err != nil {
					return err
				}
				connect := withSearchPath(catalog.RedactDSN(loc.Node.DSN), loc.Shard.Schema)
				if a.json {
					return a.printJSON(tenantLocation{Tenant: loc.Tenant, Shard: loc.Shard.ID, Schema: loc.Shard.Schema,
						Node: loc.Node.Name, State: loc.Shard.State, Connect: connect})
				}
				fmt.Fprintf(a.stdout, "tenant:  %s\nshard:   %d\nschema:  %s\nnode:    %s\nstate:   %s\nconnect: %s\n",
					plainID(loc.Tenant), loc.Shard.ID, loc.Shard.Schema, loc.Node.Name, loc.Shard.State, connect)
				return nil
			})(cmd, args)
		},
	}

	var listShard, limit int
	var shardGiven bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List tenants and their shards",
		Example: `  pgtenant tenant list
  pgtenant tenant list --shard 17`,
		Args: cobra.NoArgs,
		PreRunE: func(cmd *cobra.Command, args []string) error {
			shardGiven = cmd.Flags().Changed("shard")
			if shardGiven && listShard < 0 {
				return usagef("--shard %d: shards are numbered from 0 (`pgtenant shard list` names them); without --shard every shard's tenants are listed", listShard)
			}
			if limit < 0 {
				return usagef("--limit %d: give 0 (all) or more", limit)
			}
			return nil
		},
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			shard := -1 // every shard
			if shardGiven {
				n, err := c.ShardCount(ctx)
				if err != nil {
					return err
				}
				if listShard >= n {
					return fmt.Errorf("shard %d is unknown (SQLSTATE 42704): shards are 0 to %d; `pgtenant shard list` names them", listShard, n-1)
				}
				shard = listShard
			}
			ts, err := c.Tenants(ctx, shard, limit)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(tenantsJSON(ts))
			}
			w := a.table("TENANT", "SHARD", "PLACED")
			for _, t := range ts {
				row(w, plainID(t.ID), t.Shard, placedHow(t))
			}
			return w.Flush()
		}),
	}
	list.Flags().IntVar(&listShard, "shard", 0, "only tenants of this shard (without it: every shard's)")
	list.Flags().IntVar(&limit, "limit", 0, "at most this many (0 = all)")

	var purge, force bool
	var batch int
	remove := &cobra.Command{
		Use:   "remove ID [--purge | --force]",
		Short: "Unregister a tenant (refused while it has rows; --purge deletes them)",
		Long: `Unregister a tenant: the router stops routing it. While the tenant has rows in
any table of the tables registry ('pgtenant table list') it is refused, naming
the tables and row counts: a tenant added again later with the same id could
land on another shard and orphan them. --purge deletes the rows first (child
tables first, in batches, a line per table); --force unregisters anyway and
leaves the rows. Tables without a rule are not looked at.`,
		Example: `  pgtenant tenant remove acme
  pgtenant tenant remove acme --purge`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if purge && force {
				return usagef("--purge and --force exclude each other")
			}
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				opts := tenantops.RemoveOptions{Purge: purge, Force: force, Batch: batch, Progress: func(rc tables.RowCount) {
					fmt.Fprintf(a.stdout, "purged %s from %s\n", plural(rc.Rows, "row"), rc.Table)
				}}
				counts, err := tenantops.New(c, a.logger).Remove(ctx, args[0], opts)
				if err != nil {
					return err
				}
				if force && len(counts) > 0 {
					for _, rc := range counts {
						fmt.Fprintf(a.stderr, "warning: %s left in %s\n", plural(rc.Rows, "row"), rc.Table)
					}
				}
				fmt.Fprintf(a.stdout, "tenant %s removed\n", strconv.Quote(args[0]))
				return nil
			})(cmd, args)
		},
	}
	remove.Flags().BoolVar(&purge, "purge", false, "delete the tenant's rows from every registered table first")
	remove.Flags().BoolVar(&force, "force", false, "unregister even though rows remain")
	remove.Flags().IntVar(&batch, "batch", 5000, "rows deleted per transaction with --purge")
	cmd.AddCommand(add, locate, list, remove)
	addTenantOpsCmds(a, cmd)
	return cmd
}

// withSearchPath adds search_path=schema to a connection string, so that
// psql with it lands in the tenant's shard.
func withSearchPath(dsn, schema string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		return dsn + sep + "options=-csearch_path%3D" + schema
	}
	return dsn + " options='-csearch_path=" + schema + "'"
}

// unknownTenant is the error of a command given an unregistered tenant, as
// tenantops words it for remove, purge, export and move: SQLSTATE 42704 and
// the commands that list and register tenants.
func unknownTenant(id string, err error) error {
	return &tenantops.Error{Code: "42704", Message: fmt.Sprintf("tenant %q is unknown", id),
		Hint: "pgtenant tenant list shows the registered tenants; register it with pgtenant tenant add " + shellQuote(id), Err: err}
}
