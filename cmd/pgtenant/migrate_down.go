package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/migrate"
)

func newMigrateDownCmd(a *app) *cobra.Command {
	var (
		dir          string
		to           int64
		concurrency  int
		allowChanged bool
	)
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Roll back the latest migration (or down to --to VERSION) on every shard",
		Long: `Run the '-- +goose Down' sections of applied migrations on every shard,
newest first, each file in a transaction together with the removal of its
version row. By default one step: the highest version applied on any shard is
rolled back on the shards that have it. With --to VERSION, every version above
VERSION is rolled back (--to 0 undoes them all).

Before anything runs, every version to roll back must have its file in --dir,
unchanged (or --allow-changed), with a Down section; otherwise nothing runs
and the error names the files and shards. Shards run in parallel as in
'migrate up', and a failure stops new work the same way.`,
		Example: `  # undo the latest migration everywhere
  pgtenant migrate down --dir ./migrations

  # back to version 20260101120000: undo everything after it
  pgtenant migrate down --dir ./migrations --to 20260101120000`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("to") && to < 0 {
				return usagef("--to %d: give a version (0 rolls back every migration)", to)
			}
			if !cmd.Flags().Changed("to") {
				to = migrate.OneStep
			}
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				abs, err := migrationsDir(dir)
				if err != nil {
					return err
				}
				if _, err := migrate.Versions(os.DirFS(abs)); err != nil {
					return fmt.Errorf("read migrations in %s: %w", abs, err)
				}
				shards, err := c.Shards(ctx)
				if err != nil {
					return err
				}
				if len(shards) == 0 {
					return errors.New("no shards yet: nothing to roll back")
				}
				_, err = a.runMigrations(ctx, c, "down", abs, shards, migrate.Options{Concurrency: concurrency, AllowChanged: allowChanged}, to)
				return err
			})(cmd, args)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "migrations", "directory of migration files")
	cmd.Flags().Int64Var(&to, "to", 0, "roll back every version above this one (default: one step)")
	cmd.Flags().IntVar(&concurrency, "concurrency", 0, "shards rolled back at once per node (0 = 4)")
	cmd.Flags().BoolVar(&allowChanged, "allow-changed", false, "go on (with a warning) when applied files changed, and record the new checksums")
	return cmd
}
