package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/migrate"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// metaMigrationsDir is the catalog setting that remembers the last migrations
// directory, so that shards created later get every migration.
const metaMigrationsDir = "migrations_dir"

func newMigrateCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply versioned SQL migrations to every shard",
		Long: `Apply versioned SQL files to every shard schema, with search_path set to the
shard, each file in a transaction together with its version row (kept per
shard in shard_NNNN.goose_db_version).

Files are named VERSION_name.sql (e.g. 00001_create_meters.sql) in goose's
format: '-- +goose Up' then the SQL ('-- +goose Down' optional). A file with
no annotations is applied whole as its Up step.

Shards run in parallel, --concurrency at a time per node. On the first failure
no new shard is started; the error names the shard, the file and the Postgres
error, and every shard stays at a whole version. Fix the file and run again:
each shard continues where it stopped.`,
	}
	var dir string
	var concurrency int
	up := &cobra.Command{
		Use:   "up",
		Short: "Apply pending migrations to every shard",
		Example: `  pgtenant migrate up --dir ./migrations
  pgtenant migrate up --dir ./migrations --concurrency 8`,
		Args: cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			abs, err := filepath.Abs(dir)
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
				return errors.New("no shards yet: run `pgtenant shard create` first")
			}
			if err := c.SetMeta(ctx, metaMigrationsDir, abs); err != nil {
				return err
			}
			return a.migrateUp(ctx, c, abs, shards, concurrency)
		}),
	}
	up.Flags().StringVar(&dir, "dir", "migrations", "directory of migration files")
	up.Flags().IntVar(&concurrency, "concurrency", 0, "shards migrated at once per node (0 = 4)")

	var all, dirChanged bool
	status := &cobra.Command{
		PreRun: func(cmd *cobra.Command, args []string) { dirChanged = cmd.Flags().Changed("dir") },
		Use:    "status",
		Short:  "List shards that are behind",
		Example: `  pgtenant migrate status --dir ./migrations
  pgtenant migrate status --all`,
		Args: cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			d := dir
			if !dirChanged {
				if remembered, err := c.Meta(ctx, metaMigrationsDir); err == nil && remembered != "" {
					d = remembered
				}
			}
			if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
				return fmt.Errorf("no migrations directory %s; pass --dir", d)
			}
			targets, err := a.targets(ctx, c, nil)
			if err != nil {
				return err
			}
			st, err := migrate.Status(ctx, os.DirFS(d), targets)
			if err != nil {
				return err
			}
			behind := 0
			w := a.table("SHARD", "SCHEMA", "NODE", "CURRENT", "LATEST", "PENDING")
			for _, s := range st {
				if s.Behind() {
					behind++
				}
				if s.Behind() || all {
					row(w, s.Target.Shard, s.Target.Schema, s.Target.Node, s.Current, s.Latest, len(s.Pending))
				}
			}
			w.Flush()
			if behind == 0 {
				fmt.Fprintf(a.stdout, "all %d shards are current (migrations from %s)\n", len(st), d)
				return nil
			}
			return fmt.Errorf("%d of %d shards are behind; run `pgtenant migrate up --dir %s`", behind, len(st), d)
		}),
	}
	status.Flags().StringVar(&dir, "dir", "migrations", "directory of migration files (default: the one last applied)")
	status.Flags().BoolVar(&all, "all", false, "list every shard, not only those behind")
	cmd.AddCommand(up, status)
	return cmd
}

// targets turns shards (all when nil) into migration targets.
func (a *app) targets(ctx context.Context, c *catalog.Catalog, shards []placement.Shard) ([]migrate.Target, error) {
	if shards == nil {
		var err error
		if shards, err = c.Shards(ctx); err != nil {
			return nil, err
		}
	}
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	dsn := map[string]string{}
	for _, n := range nodes {
		dsn[n.Name] = n.DSN
	}
	out := make([]migrate.Target, len(shards))
	for i, s := range shards {
		out[i] = migrate.Target{Shard: s.ID, Schema: s.Schema, Node: s.Node, DSN: dsn[s.Node]}
	}
	return out, nil
}

// migrateUp applies the migrations in dir to shards with a progress bar on a
// terminal, and prints a summary.
func (a *app) migrateUp(ctx context.Context, c *catalog.Catalog, dir string, shards []placement.Shard, concurrency int) error {
	targets, err := a.targets(ctx, c, shards)
	if err != nil {
		return err
	}
	var bar *progressbar.ProgressBar
	if f, ok := a.stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		bar = progressbar.NewOptions(len(targets), progressbar.OptionSetWriter(a.stderr),
			progressbar.OptionSetDescription("migrating shards"), progressbar.OptionShowCount(),
			progressbar.OptionClearOnFinish())
	}
	lastPrint := time.Now()
	sum, err := migrate.Up(ctx, os.DirFS(dir), targets, migrate.Options{
		Concurrency: concurrency,
		Logger:      a.logger,
		Progress: func(e migrate.Event) {
			if bar != nil {
				bar.Add(1)
			} else if time.Since(lastPrint) > 2*time.Second {
				fmt.Fprintf(a.stderr, "migrating: %d/%d shards\n", e.Done, e.Total)
				lastPrint = time.Now()
			}
		},
	})
	if bar != nil {
		bar.Finish()
	}
	fmt.Fprintf(a.stdout, "migrate: %d shards, %d migrated, %d already current, %d failed, %d not started; %d files applied in %s\n",
		sum.Shards, sum.Migrated, sum.Current, sum.Failed, sum.Skipped, sum.Applied, sum.Duration.Round(time.Millisecond))
	detail := map[string]any{"dir": dir, "shards": sum.Shards, "applied": sum.Applied, "failed": sum.Failed}
	c.RecordOperation(ctx, "migrate up", detail, err)
	if err != nil {
		if len(sum.Failures) > 1 {
			for _, f := range sum.Failures[1:] {
				fmt.Fprintln(a.stderr, "also failed:", f)
			}
		}
		return fmt.Errorf("%w\nfix the migration and run `pgtenant migrate up` again; each shard continues where it stopped", err)
	}
	return a.afterMigrate(ctx, c, dir, shards)
}
