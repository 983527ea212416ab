package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/migrate"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/shared"
)

// metaMigrationsDir is the catalog setting that remembers the last migrations
// directory, so that shards created later get every migration.
const metaMigrationsDir = "migrations_dir"

func newMigrateCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply, check, roll back and create versioned SQL migrations on every shard",
		Long: `Apply versioned SQL files to every shard schema, with search_path set to the
shard, each file in a transaction together with its version row (kept per
shard in shard_NNNN.goose_db_version, with the file's name and SHA-256).

Files are named VERSION_name.sql in goose's format: '-- +goose Up' then the
SQL, and '-- +goose Down' then the SQL that undoes it (needed by 'migrate
down'). A file with no annotations is applied whole as its Up step.
'pgtenant migrate create NAME' writes a new file with a timestamp version
(YYYYMMDDHHMMSS, UTC, as Rails does).

Shards run in parallel, --concurrency at a time per node. On the first failure
no new shard is started; the error names the shard, the file and the Postgres
error, and every shard stays at a whole version. Fix the file and run again:
each shard continues where it stopped.

An applied file is never run again, so changing it changes nothing on the
shards: 'up', 'down' and 'status' refuse (exit 1) when an applied file changed
or is missing, naming the files, versions and shards; --allow-changed goes on
with a warning and records the new checksums. A file with another name for an
applied version (say, your 00001_users.sql after the demo's
00001_energy_schema.sql) is always refused: give it a new version.
Versions applied before pgtenant recorded checksums get the current files'
on the next 'up' or 'down'.`,
	}
	var dir string
	var concurrency int
	var allowChanged bool
	up := &cobra.Command{
		Use:   "up",
		Short: "Apply pending migrations to every shard",
		Long: `Apply every pending migration in --dir to every shard. Before anything runs,
every shard's applied versions are checked against the files: a changed,
missing or renamed applied file stops the run (see 'pgtenant migrate --help').`,
		Example: `  pgtenant migrate up --dir ./migrations
  pgtenant migrate up --dir ./migrations --concurrency 8

  # an applied file was edited on purpose (a comment, a fix that is already
  # on every shard): go on and record its new checksum
  pgtenant migrate up --dir ./migrations --allow-changed`,
		Args: cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
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
				return errors.New("no shards yet: run `pgtenant shard create` first")
			}
			opts := migrate.Options{Concurrency: concurrency, AllowChanged: allowChanged}
			var out *migrateUpJSON
			stdout := a.stdout
			if a.json {
				out = &migrateUpJSON{Dir: abs, Migrated: []shardMigratedJSON{}, Failures: []shardFailureJSON{}, Accepted: []string{}}
				var mu sync.Mutex
				opts.Progress = func(e migrate.Event) { mu.Lock(); out.add(e); mu.Unlock() }
				a.stdout = a.stderr // the lines for people; stdout gets the JSON
			}
			sum, err := a.runMigrations(ctx, c, "up", abs, shards, opts, 0)
			a.stdout = stdout
			var drift *migrate.DriftError
			if !errors.As(err, &drift) { // else not the directory to remember
				if merr := c.SetMeta(ctx, metaMigrationsDir, abs); merr != nil && err == nil {
					err = merr
				}
			}
			if out != nil {
				out.finish(sum, err)
				if jerr := a.printJSON(out); jerr != nil {
					return jerr
				}
			}
			return err
		}),
	}
	up.Flags().StringVar(&dir, "dir", "migrations", "directory of migration files")
	up.Flags().IntVar(&concurrency, "concurrency", 0, "shards migrated at once per node (0 = 4)")
	up.Flags().BoolVar(&allowChanged, "allow-changed", false, "go on (with a warning) when applied files changed or are missing, and record the new checksums")
	up.Flags().BoolVar(&a.json, "json", false, "print the outcome as JSON (shape: docs/cli-json.md); the summary goes to stderr")

	var all, dirChanged bool
	status := &cobra.Command{
		PreRun: func(cmd *cobra.Command, args []string) { dirChanged = cmd.Flags().Changed("dir") },
		Use:    "status",
		Short:  "List shards that are behind, and applied files that changed",
		Long: `List the shards that have pending migrations (exit 1 if any). Exit 1 too,
naming the files, versions and shards, when an applied file changed, is
missing or has another name in the directory (--allow-changed: a warning).
Without --dir, the directory of the last 'migrate up' is used.`,
		Example: `  pgtenant migrate status --dir ./migrations
  pgtenant migrate status --all`,
		Args: cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			d := dir
			if !dirChanged {
				d = "migrations"
				if remembered, err := c.Meta(ctx, metaMigrationsDir); err == nil && remembered != "" {
					d = remembered
				}
			}
			d, err := migrationsDir(d)
			if err != nil {
				return err
			}
			targets, err := a.targets(ctx, c, nil)
			if err != nil {
				return err
			}
			st, err := migrate.Status(ctx, os.DirFS(d), targets)
			if err != nil {
				return err
			}
			return a.printMigrateStatus(d, st, all, allowChanged)
		}),
	}
	status.Flags().StringVar(&dir, "dir", "", "directory of migration files (default: the one the last 'migrate up' applied, else ./migrations)")
	status.Flags().BoolVar(&all, "all", false, "list every shard, not only those behind")
	status.Flags().BoolVar(&allowChanged, "allow-changed", false, "warn instead of failing when applied files changed or are missing")
	cmd.AddCommand(up, status, newMigrateDownCmd(a), newMigrateCreateCmd(a))
	return cmd
}

// migrationsDir returns dir as an absolute path, or an error naming it when
// it is not a directory: checked before anything runs, so a mistyped --dir
// is not taken for a directory without migrations.
func migrationsDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("no migrations directory %s; pass --dir", abs)
	}
	return abs, nil
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
		if dsn[n.Name], err = c.ResolveDSN(n.DSN); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
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
	_, err := a.runMigrations(ctx, c, "up", dir, shards, migrate.Options{Concurrency: concurrency}, 0)
	return err
}

// runMigrations runs migrate up, or down to version to, on shards with a
// progress bar on a terminal, prints a summary and the warnings, and records
// the operation.
func (a *app) runMigrations(ctx context.Context, c *catalog.Catalog, verb, dir string, shards []placement.Shard, opts migrate.Options, to int64) (migrate.Summary, error) {
	targets, err := a.targets(ctx, c, shards)
	if err != nil {
		return migrate.Summary{}, err
	}
	doing := "migrating"
	if verb == "down" {
		doing = "rolling back"
	}
	var bar *progressbar.ProgressBar
	if f, ok := a.stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		bar = progressbar.NewOptions(len(targets), progressbar.OptionSetWriter(a.stderr),
			progressbar.OptionSetDescription(doing+" shards"), progressbar.OptionShowCount(),
			progressbar.OptionClearOnFinish())
	}
	lastPrint := time.Now()
	opts.Logger = a.logger
	if opts.SharedSchema == "" {
		opts.SharedSchema = a.sharedSchema()
	}
	caller := opts.Progress
	opts.Progress = func(e migrate.Event) {
		if caller != nil {
			caller(e)
		}
		if bar != nil {
			bar.Add(1)
		} else if time.Since(lastPrint) > 2*time.Second {
			fmt.Fprintf(a.stderr, "%s: %d/%d shards\n", doing, e.Done, e.Total)
			lastPrint = time.Now()
		}
	}
	var sum migrate.Summary
	if verb == "down" {
		sum, err = migrate.Down(ctx, os.DirFS(dir), targets, to, opts)
	} else {
		sum, err = migrate.Up(ctx, os.DirFS(dir), targets, opts)
	}
	if bar != nil {
		bar.Finish()
	}
	for _, d := range sum.Accepted {
		fmt.Fprintf(a.stderr, "warning: %s; going on (--allow-changed)\n", d)
	}
	var refused *migrate.DriftError
	var noDown *migrate.NoDownError
	var order *migrate.OutOfOrderError
	var emptyUp *migrate.EmptyUpError
	if errors.As(err, &refused) || errors.As(err, &noDown) || errors.As(err, &order) || errors.As(err, &emptyUp) {
		return sum, err // refused before anything ran
	}
	if unreachable := (*pgconn.ConnectError)(nil); errors.As(err, &unreachable) && sum.Migrated+sum.Current+sum.Failed == 0 {
		// A node down is not the migration's fault, and nothing ran.
		return sum, fmt.Errorf("%w\nnothing was applied: start the node or fix its DSN (`pgtenant node check` tests every node), then run `pgtenant migrate %s` again", err, verb)
	}
	if sum.Adopted > 0 {
		fmt.Fprintf(a.stdout, "recorded the current files' checksums for %s (summed over shards) "+
			"that had none, applied before pgtenant kept checksums; later changes to those files are refused\n", plural(sum.Adopted, "applied migration"))
	}
	detail := map[string]any{"dir": dir, "shards": sum.Shards, "applied": sum.Applied, "failed": sum.Failed}
	switch {
	case verb == "down" && sum.Applied == 0 && err == nil:
		fmt.Fprintf(a.stdout, "migrate down: nothing to roll back above version %d on %s\n", sum.To, plural(sum.Shards, "shard"))
	case verb == "down":
		detail["to"] = sum.To
		fmt.Fprintf(a.stdout, "migrate down: %s, %d rolled back to version %d, %d already there, %d failed, %d not started; %s rolled back in %s\n",
			plural(sum.Shards, "shard"), sum.Migrated, sum.To, sum.Current, sum.Failed, sum.Skipped, plural(sum.Applied, "file"), sum.Duration.Round(time.Millisecond))
	default:
		fmt.Fprintf(a.stdout, "migrate: %s, %d migrated, %d already current, %d failed, %d not started; %s applied in %s\n",
			plural(sum.Shards, "shard"), sum.Migrated, sum.Current, sum.Failed, sum.Skipped, plural(sum.Applied, "file"), sum.Duration.Round(time.Millisecond))
	}
	c.RecordOperation(ctx, "migrate "+verb, detail, err)
	if err != nil {
		if len(sum.Failures) > 1 {
			err = shardFailures(sum.Failures)
		}
		if verb == "down" {
			return sum, fmt.Errorf("%w%s\nfix the file's Down section and run `pgtenant migrate down --to %d` again; each shard continues where it stopped", err, missingObjectHint(err), sum.To)
		}
		return sum, fmt.Errorf("%w%s\nfix the migration and run `pgtenant migrate up` again (with --allow-changed if the file "+
			"was applied on some shards: those keep what they ran); each shard continues where it stopped", err, missingObjectHint(err))
	}
	return sum, a.afterMigrate(ctx, c, dir, shards)
}

// sharedSchema is the schema migrations find after the shard's: the
// router's shared_schema from the config file, or public.
func (a *app) sharedSchema() string {
	if a.cfg != nil && a.cfg.Router.SharedSchema != nil {
		return *a.cfg.Router.SharedSchema
	}
	return shared.DefaultSchema
}

// shardFailures is the error of a migration that failed on several shards:
// one line per cause with the shards it failed on (a failing file usually
// fails alike on every shard that ran it). Each shard's own error is logged
// at info (--log-level info).
type shardFailures []*migrate.ShardError

func (e shardFailures) Error() string {
	var causes []string
	shards := map[string][]int{}
	for _, f := range e {
		c := f.Cause()
		if shards[c] == nil {
			causes = append(causes, c)
		}
		shards[c] = append(shards[c], f.Target.Shard)
	}
	line := func(c string) string {
		ids := shards[c]
		slices.Sort(ids)
		on := migrate.ShardRanges(ids)
		if i := strings.LastIndex(on[:min(len(on), 60)], ", "); len(on) > 60 && i > 0 { // scattered shards: the first ranges
			on = on[:i] + ", …"
		}
		return fmt.Sprintf("%s (%s): %s", on, plural(len(ids), "shard"), c)
	}
	if len(causes) == 1 {
		return "migrate failed on " + line(causes[0])
	}
	var b strings.Builder
	fmt.Fprintf(&b, "migrate failed on %s:", plural(len(e), "shard"))
	for _, c := range causes {
		b.WriteString("\n  " + line(c))
	}
	return b.String()
}

// Unwrap is the first failure.
func (e shardFailures) Unwrap() error { return e[0] }
