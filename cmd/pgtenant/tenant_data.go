package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/tenantops"
)

// addTenantOpsCmds adds the operations on a tenant's rows to the tenant
// command: purge, export, import and move.
func addTenantOpsCmds(a *app, cmd *cobra.Command) {
	cmd.AddCommand(newTenantPurgeCmd(a), newTenantExportCmd(a), newTenantImportCmd(a), newTenantMoveCmd(a))
}

func newTenantPurgeCmd(a *app) *cobra.Command {
	var batch int
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "purge ID [--batch N] [--dry-run]",
		Short: "Delete every row of a tenant in every registered table (erasure requests)",
		Long: `Delete every row of the tenant from every table of the tables registry in its
shard: child tables first (found through their parent), then the tables with a
tenant column, in batches of --batch rows per transaction, and print the rows
deleted per table. The tenant stays registered (pgtenant tenant remove
unregisters it). A table of the shard without a rule in the registry stops the
purge before anything is deleted: register it first. --dry-run counts only.`,
		Example: `  pgtenant tenant purge acme --dry-run
  pgtenant tenant purge acme --batch 10000`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				rep, err := tenantops.New(c, a.logger).Purge(ctx, args[0], tenantops.PurgeOptions{Batch: batch, DryRun: dryRun})
				if err != nil {
					return err
				}
				if a.json {
					return a.printJSON(purgeReportJSON(rep))
				}
				verb := "deleted"
				if dryRun {
					verb = "found (dry run, nothing deleted)"
				}
				fmt.Fprintf(a.stdout, "tenant %s, shard %d on node %s: %s %s\n", strconv.Quote(rep.Tenant), rep.Shard, rep.Node, plural(rep.Total(), "row"), verb)
				w := a.table("TABLE", "ROWS", "DELETED")
				for _, t := range rep.Tables {
					row(w, t.Table, t.Rows, t.Deleted)
				}
				return w.Flush()
			})(cmd, args)
		},
	}
	cmd.Flags().IntVar(&batch, "batch", 5000, "rows deleted per transaction")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "count the rows, delete nothing")
	return cmd
}

func newTenantExportCmd(a *app) *cobra.Command {
	var format, out string
	cmd := &cobra.Command{
		Use:   "export ID [--format sql|csv|jsonl] [-o FILE]",
		Short: "Write every row of a tenant to stdout (or a file), in one snapshot",
		Long: `Write every row of the tenant in every table of the tables registry, read in
one snapshot of its shard, parents first. Formats:

  sql    COPY blocks psql can run (it sets pgtenant.tenant, so it also loads
         through the router)
  csv    a CSV section per table after a "#pgtenant table NAME" line, with a
         header row; every value but NULL quoted
  jsonl  one {"table": ..., "row": {...}} a line, values in PostgreSQL's text form

Each file starts with a header line (tenant, tables, columns) that
'pgtenant tenant import' reads.`,
		Example: `  pgtenant tenant export acme > acme.sql
  pgtenant tenant export acme --format jsonl -o acme.jsonl`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			f, err := tenantops.ParseFormat(format)
			if err != nil {
				return usagef("%v", err)
			}
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				w := a.stdout
				var file *os.File
				if out != "" && out != "-" {
					if file, err = os.OpenFile(out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600); err != nil {
						return fmt.Errorf("export: %w", err)
					}
					w = file
				}
				rep, err := tenantops.New(c, a.logger).Export(ctx, args[0], f, w)
				if file != nil {
					if cerr := file.Close(); err == nil {
						err = cerr
					}
					if err != nil {
						os.Remove(out)
					}
				}
				if err != nil {
					return err
				}
				for _, t := range rep.Tables {
					fmt.Fprintf(a.stderr, "exported %s of %s\n", plural(t.Rows, "row"), t.Table)
				}
				return nil
			})(cmd, args)
		},
	}
	cmd.Flags().StringVar(&format, "format", "sql", "sql, csv or jsonl")
	cmd.Flags().StringVarP(&out, "output", "o", "", "write to this file (created; must not exist) instead of stdout")
	return cmd
}

func newTenantImportCmd(a *app) *cobra.Command {
	var tenant string
	cmd := &cobra.Command{
		Use:   "import FILE [--tenant NEWID]",
		Short: "Load a file written by 'tenant export' (also into another catalog)",
		Long: `Load the rows of an export file into the tenant's shard, in one transaction on
its node: all rows or none. --tenant loads them as another tenant (the tenant
column of tenant tables is rewritten; child rows keep their keys). A tenant
this catalog does not know is registered by hash, so one customer can be
restored into a staging cluster. Refused before anything changes: a tenant
that already has rows (purge it first), a table of the file missing from the
shard or without a rule in the registry, a missing column. Rows whose keys
another tenant of the shard holds fail the load (23505, with the key).
Sequences owned by the tables' columns are set past the largest value loaded.
FILE "-" reads stdin.`,
		Example: `  pgtenant tenant import acme.sql
  pgtenant tenant import acme.jsonl --tenant acme-staging --catalog "$STAGING_CATALOG"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				var r io.Reader = cmd.InOrStdin()
				if args[0] != "-" {
					f, err := os.Open(args[0])
					if err != nil {
						return fmt.Errorf("import: %w", err)
					}
					defer f.Close()
					r = f
				}
				rep, err := tenantops.New(c, a.logger).Import(ctx, r, tenantops.ImportOptions{Tenant: tenant})
				if err != nil {
					return err
				}
				if a.json {
					return a.printJSON(importReportJSON(rep))
				}
				if rep.Registered {
					fmt.Fprintf(a.stdout, "tenant %s registered in shard %d\n", strconv.Quote(rep.Tenant), rep.Shard)
				}
				var n int64
				for _, t := range rep.Tables {
					fmt.Fprintf(a.stdout, "loaded %s into %s\n", plural(t.Rows, "row"), t.Table)
					n += t.Rows
				}
				fmt.Fprintf(a.stdout, "tenant %s: %s loaded into shard %d on node %s\n", strconv.Quote(rep.Tenant), plural(n, "row"), rep.Shard, rep.Node)
				return nil
			})(cmd, args)
		},
	}
	cmd.Flags().StringVar(&tenant, "tenant", "", "load the rows as this tenant instead of the file's")
	return cmd
}
