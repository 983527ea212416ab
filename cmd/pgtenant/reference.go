package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/shared"
)

func newReferenceCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "reference",
		Short: "Reference tables: the same rows for every tenant, on every node",
		Long: `Reference tables (plans, countries, tariffs: the same rows for every tenant)
live in the shared schema of every node (public by default). Every tenant's
transactions read them and join them with their own tables; only these
commands write them, on every node: a Postgres trigger refuses writes from
anywhere else (42501), the router's clients included.

Declare them in reference migrations: a directory of VERSION_name.sql files
(goose's format or plain SQL) kept apart from the shard migrations and applied
to every node's shared schema, before 'migrate up' so that shard migrations
can refer to them. Every table a reference migration creates is a reference
table.`,
	}
	var schema, dir string
	migrateCmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply reference migrations to the shared schema of every node",
		Example: `  pgtenant reference migrate --dir ./reference
  pgtenant migrate up --dir ./migrations`,
		Args: cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			abs, err := migrationsDir(dir)
			if err != nil {
				return err
			}
			ms, err := shared.ReadMigrations(os.DirFS(abs))
			if err != nil {
				return err
			}
			nodes, err := sharedNodes(ctx, c)
			if err != nil {
				return err
			}
			res, err := shared.Migrate(ctx, nodes, schema, ms)
			c.RecordOperation(ctx, "reference migrate", map[string]any{"dir": abs, "schema": schema}, err)
			for _, r := range res {
				if len(r.Applied) > 0 {
					fmt.Fprintf(a.stdout, "node %s: applied %s\n", r.Node, strings.Join(r.Applied, ", "))
				}
			}
			if err != nil {
				return fmt.Errorf("reference migrate: %w", err)
			}
			fmt.Fprintf(a.stdout, "%s current with %s from %s\n", plural(len(nodes), "node"), plural(len(ms), "reference migration"), abs)
			return nil
		}),
	}
	migrateCmd.Flags().StringVar(&dir, "dir", "reference", "directory of reference migration files")

	var file string
	var replace, header bool
	load := &cobra.Command{
		Use:   "load TABLE --file ROWS.csv",
		Short: "Copy CSV rows into a reference table on every node",
		Long: `Copy the CSV rows of --file into TABLE in the shared schema of every node,
each node in one transaction (a node that fails is named; the others keep the
rows). Without --replace the rows are added; with it the table ends up holding
exactly the file's rows: by primary key, rows not in the file are deleted and
the others updated, so tenants' foreign keys to kept rows stay valid (a table
without a primary key is emptied first). Columns are in the table's order;
--header skips the first line.`,
		Example: `  pgtenant reference load plans --file plans.csv --header --replace
  pgtenant reference load countries --file countries.csv`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				b, err := os.ReadFile(file)
				if err != nil {
					return fmt.Errorf("read rows: %w", err)
				}
				nodes, err := sharedNodes(ctx, c)
				if err != nil {
					return err
				}
				err = shared.Load(ctx, nodes, schema, args[0], b, shared.LoadOptions{Replace: replace, Header: header})
				c.RecordOperation(ctx, "reference load", map[string]any{"table": args[0], "file": file, "replace": replace}, err)
				if err != nil {
					return fmt.Errorf("reference load %s: %w", args[0], err)
				}
				fmt.Fprintf(a.stdout, "%s loaded on %s\n", args[0], plural(len(nodes), "node"))
				return nil
			})(cmd, args)
		},
	}
	load.Flags().StringVar(&file, "file", "", "CSV file of rows (required)")
	load.Flags().BoolVar(&replace, "replace", false, "make the table hold exactly the file's rows: by primary key, rows not in the file are deleted and the others updated (without a key: emptied first)")
	load.Flags().BoolVar(&header, "header", false, "the file's first line names the columns")
	load.MarkFlagRequired("file")

	exec := &cobra.Command{
		Use:   "exec SQL",
		Short: "Run SQL that writes reference tables on every node",
		Long: `Run SQL on every node with search_path set to the shared schema and
pgtenant.reference_write set, which the trigger guarding reference tables
lets through: the way to change reference rows outside 'reference load'. Each
node runs it in one transaction; a node that fails is named, the others keep
the change.`,
		Example: `  pgtenant reference exec "UPDATE plans SET price = 12 WHERE name = 'pro'"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				nodes, err := sharedNodes(ctx, c)
				if err != nil {
					return err
				}
				err = shared.Exec(ctx, nodes, schema, args[0])
				c.RecordOperation(ctx, "reference exec", map[string]any{"sql": args[0]}, err)
				if err != nil {
					return fmt.Errorf("reference exec: %w", err)
				}
				fmt.Fprintf(a.stdout, "done on %s\n", plural(len(nodes), "node"))
				return nil
			})(cmd, args)
		},
	}
	for _, c := range []*cobra.Command{migrateCmd, load, exec} {
		c.Flags().StringVar(&schema, "schema", shared.DefaultSchema, "the shared schema")
	}
	cmd.AddCommand(migrateCmd, load, exec)
	return cmd
}
