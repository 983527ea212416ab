package migrate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"maps"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
	"github.com/pressly/goose/v3/lock"
)

// DefaultConcurrency is the number of workers per node when
// Options.Concurrency is zero.
const DefaultConcurrency = 4

// ErrNoSchema is returned (inside a *ShardError) when a shard's schema does
// not exist on its node. Up never creates schemas: that is the catalog's job,
// and creating one on a stale node would resurrect a shard that moved away.
var ErrNoSchema = errors.New("shard schema does not exist on its node")

// Target is one shard to migrate: its schema on a node.
type Target struct {
	// Shard is the shard id, used in errors, events and logs.
	Shard int
	// Schema is the shard's schema name, e.g. "shard_0005".
	Schema string
	// Node is the node's name. Targets with the same Node share workers and
	// must have the same DSN.
	Node string
	// DSN is the connection string of the node's database.
	DSN string
}

// Options tune Up. The zero value is usable.
type Options struct {
	// Concurrency is the number of shards migrated at once on each node, each
	// over its own connection. Zero means DefaultConcurrency.
	Concurrency int
	// Progress, when set, is called once per target as it finishes (migrated,
	// failed, or skipped because the run stopped). Calls are serialised, from
	// worker goroutines; a slow Progress slows the run.
	Progress func(Event)
	// Logger receives one line per failed shard and one per run. Nil means no
	// logging.
	Logger *slog.Logger
	// AllowChanged lets a run go on when applied files changed or are
	// missing from the directory (Summary.Accepted lists them; changed
	// files' new checksums are recorded). False refuses with a *DriftError.
	// A file with another name for an applied version is refused either way.
	AllowChanged bool
	// SharedSchema, when set, follows the shard's schema in the search_path
	// migrations run with (see searchPath), so that they can use the types
	// of extensions installed there and refer to reference tables. Empty
	// means the shard's schema alone.
	SharedSchema string
}

// Event reports one finished target to Options.Progress.
type Event struct {
	Target Target
	// Applied are the versions applied to this shard by this run, ascending
	// (for Down: rolled back, newest first).
	Applied []int64
	// Skipped is true when the shard was not started because the run stopped
	// after a failure or a cancelled context.
	Skipped bool
	// Err is the shard's failure, a *ShardError; nil on success.
	Err error
	// Done counts targets finished so far, this one included, out of Total.
	Done, Total int
}

// Summary describes a finished Up run.
type Summary struct {
	// Shards is the number of targets given.
	Shards int
	// Migrated counts shards that had pending migrations and got them all.
	Migrated int
	// Current counts shards that were already up to date.
	Current int
	// Failed counts shards whose run failed; the first failure is Up's error,
	// all of them are in Failures.
	Failed int
	// Skipped counts shards not started because the run stopped.
	Skipped int
	// Applied counts migration files applied (rolled back, for Down),
	// summed over shards.
	Applied int
	// Adopted counts applied versions, summed over shards, that had no
	// checksum (applied before pgtenant recorded them) and got the current
	// file's name and checksum.
	Adopted int
	// Accepted are the changed or missing files let through by
	// Options.AllowChanged.
	Accepted []Drift
	// To is, for Down, the version the shards were rolled back to.
	To int64
	// Failures are the shards that failed, in the order they failed.
	Failures []*ShardError
	// Duration is the wall time of the run.
	Duration time.Duration
}

// ShardError is a failure on one shard. Unwrap reaches the underlying error,
// a *pgconn.PgError when Postgres refused a statement.
type ShardError struct {
	Target Target
	// File is the migration file that failed, empty when the failure was not
	// inside a file (connecting, locking, the version table).
	File string
	// Version is File's version, zero when File is empty.
	Version int64
	// Err is the cause.
	Err error
}

func (e *ShardError) Error() string {
	return fmt.Sprintf("migrate shard %d (schema %s on node %s): %s", e.Target.Shard, e.Target.Schema, e.Target.Node, e.Cause())
}

// Cause is the error without the shard: the file and what failed in it,
// the same on every shard a migration failed on alike.
func (e *ShardError) Cause() string {
	where := ""
	if e.File != "" {
		where = fmt.Sprintf("file %s: ", e.File)
	}
	var pgErr *pgconn.PgError
	if errors.As(e.Err, &pgErr) {
		// goose's own wrapping repeats the statement; the Postgres error
		// is what a user acts on. Unwrap still reaches the full chain.
		msg := fmt.Sprintf("%s%s: %s (SQLSTATE %s)", where, pgErr.Severity, pgErr.Message, pgErr.Code)
		if pgErr.Detail != "" {
			msg += ": " + pgErr.Detail
		}
		return msg
	}
	return fmt.Sprintf("%s%v", where, e.Err)
}

func (e *ShardError) Unwrap() error { return e.Err }

// Up applies every pending migration in fsys (files at its root) to every
// target. Each file runs in its own transaction on the shard together with
// its goose version row, which records the file's name and checksum, so
// every shard is always at a whole version, and a rerun after a failure or a
// kill continues where the shard stopped.
//
// Before anything runs, Up reads every target and refuses with a
// *DriftError when an applied file changed, is missing, or another file has
// its version, and with an *OutOfOrderError when a pending file is older
// than a version a shard already has (Options.AllowChanged lets changed and missing files through:
// they are then in Summary.Accepted, and changed files' new checksums are
// recorded). Applied versions recorded before checksums were kept get the
// current files' names and checksums (counted in Summary.Adopted).
//
// On the first failure no new shard is started; shards already in flight
// finish their pending files (or roll back the one that fails). The returned
// error is then the first *ShardError; the Summary is valid either way. A
// cancelled ctx aborts in-flight transactions, which roll back.
func Up(ctx context.Context, fsys fs.FS, targets []Target, opts Options) (Summary, error) {
	start := time.Now()
	sum := Summary{Shards: len(targets)}
	files, err := Files(fsys)
	if err != nil {
		return sum, err
	}
	if vs, err := Versions(fsys); err != nil {
		return sum, err
	} else if len(vs) == 0 {
		return sum, fmt.Errorf("migrate up: %w", goose.ErrNoMigrations)
	}
	statuses, err := status(ctx, files, targets)
	if err != nil {
		return sum, err
	}
	if err := checkDrift(&sum, statuses, opts.AllowChanged); err != nil {
		return sum, err
	}
	if err := checkOrder(files, statuses); err != nil {
		return sum, err
	}
	if err := checkEmptyUp(fsys, files, statuses); err != nil {
		return sum, err
	}
	return run(ctx, "up", files, plainSQL{fsys}, targets, opts, sum, start, func(ctx context.Context, p *goose.Provider) ([]*goose.MigrationResult, error) {
		return p.Up(ctx)
	})
}

// OneStep is Down's to for rolling back one version: the highest version
// applied on any shard.
const OneStep = -1

// Down rolls back, on every target, each applied version above to, newest
// first, running the files' "-- +goose Down" sections; each file in its own
// transaction with the removal of its version row. to = OneStep rolls back
// the highest version applied on any shard (on the shards that have it):
// one step. Summary.To is the version the shards end at.
//
// Before anything runs, Down reads every target and refuses what Up refuses
// (a *DriftError), and refuses with a *NoDownError when a version to roll
// back has no file or its file has no Down section. Failures stop the run
// as in Up.
func Down(ctx context.Context, fsys fs.FS, targets []Target, to int64, opts Options) (Summary, error) {
	start := time.Now()
	sum := Summary{Shards: len(targets)}
	files, err := Files(fsys)
	if err != nil {
		return sum, err
	}
	if _, err := Versions(fsys); err != nil {
		return sum, err
	}
	statuses, err := status(ctx, files, targets)
	if err != nil {
		return sum, err
	}
	if err := checkDrift(&sum, statuses, opts.AllowChanged); err != nil {
		return sum, err
	}
	if to < 0 {
		to = stepTarget(statuses)
	}
	sum.To = to
	byVersion := map[int64]File{}
	for _, f := range files {
		byVersion[f.Version] = f
	}
	undo := map[int64][]int{} // version -> shards
	for _, s := range statuses {
		for _, a := range s.Applied {
			if a.Version > to {
				undo[a.Version] = append(undo[a.Version], s.Target.Shard)
			}
		}
	}
	var bad NoDownError
	for _, v := range slices.Sorted(maps.Keys(undo)) {
		if f, ok := byVersion[v]; !ok || !f.HasDown {
			slices.Sort(undo[v])
			bad.Files = append(bad.Files, NoDown{Version: v, File: f.Name, Shards: undo[v]})
		}
	}
	if len(bad.Files) > 0 {
		return sum, &bad
	}
	return run(ctx, "down", files, plainSQL{fsys}, targets, opts, sum, start, func(ctx context.Context, p *goose.Provider) ([]*goose.MigrationResult, error) {
		return p.DownTo(ctx, to)
	})
}

// stepTarget is the version one step below the highest applied on any
// shard: the highest applied version below it on any shard, or zero.
func stepTarget(statuses []ShardStatus) int64 {
	var all []int64
	for _, s := range statuses {
		for _, a := range s.Applied {
			all = append(all, a.Version)
		}
	}
	slices.Sort(all)
	all = slices.Compact(all)
	if len(all) < 2 {
		return 0
	}
	return all[len(all)-2]
}

// NoDown is a version Down would roll back but cannot.
type NoDown struct {
	Version int64
	// File is the version's file; empty when the directory has none.
	File string
	// Shards are the shards where the version is applied, ascending.
	Shards []int
}

// NoDownError refuses a Down run, before anything ran, because versions to
// roll back have no "-- +goose Down" section or no file.
type NoDownError struct {
	Files []NoDown
}

func (e *NoDownError) Error() string {
	var b strings.Builder
	b.WriteString("cannot roll back; nothing was run:")
	for _, f := range e.Files {
		if f.File == "" {
			fmt.Fprintf(&b, "\n  version %d (applied on %s) has no file in the directory", f.Version, ShardRanges(f.Shards))
		} else {
			fmt.Fprintf(&b, "\n  %s (version %d, applied on %s) has no '-- +goose Down' section", f.File, f.Version, ShardRanges(f.Shards))
		}
	}
	b.WriteString("\nadd a '-- +goose Down' section with the SQL that undoes the file's Up section " +
		"(an empty one if nothing needs undoing), or roll back less with --to VERSION")
	return b.String()
}

// OutOfOrderError refuses an Up run, before anything ran, because files
// have versions below versions already applied on some shards (say, a
// migration from a branch merged after a newer one was applied). Files
// apply in version order only.
type OutOfOrderError struct {
	Files []OutOfOrder
}

// OutOfOrder is one pending file older than what some shards have.
type OutOfOrder struct {
	File File
	// Newer is the highest version applied on those shards.
	Newer int64
	// Shards are the shards where File is pending below Newer, ascending.
	Shards []int
}

func (e *OutOfOrderError) Error() string {
	var b strings.Builder
	b.WriteString("files older than versions already applied; nothing was run:")
	for _, o := range e.Files {
		fmt.Fprintf(&b, "\n  %s (version %d) is not applied on %s, which already have version %d",
			o.File.Name, o.File.Version, ShardRanges(o.Shards), o.Newer)
	}
	b.WriteString("\nmigrations apply in version order: give each such file a version after the applied ones " +
		"(rename it with a new timestamp, as `pgtenant migrate create NAME` makes)")
	return b.String()
}

// checkOrder refuses pending files with versions below a shard's current
// one (goose would refuse them shard by shard, halfway through the run).
func checkOrder(files []File, statuses []ShardStatus) error {
	var e OutOfOrderError
	idx := map[[2]int64]int{}
	for _, s := range statuses {
		for _, v := range s.Pending {
			if v >= s.Current {
				continue
			}
			i, ok := idx[[2]int64{v, s.Current}]
			if !ok {
				f, _ := slices.BinarySearchFunc(files, v, func(f File, v int64) int { return cmpInt64(f.Version, v) })
				i = len(e.Files)
				idx[[2]int64{v, s.Current}] = i
				e.Files = append(e.Files, OutOfOrder{File: files[f], Newer: s.Current})
			}
			e.Files[i].Shards = append(e.Files[i].Shards, s.Target.Shard)
		}
	}
	if len(e.Files) == 0 {
		return nil
	}
	for i := range e.Files {
		slices.Sort(e.Files[i].Shards)
	}
	slices.SortFunc(e.Files, func(a, b OutOfOrder) int {
		if c := cmpInt64(a.File.Version, b.File.Version); c != 0 {
			return c
		}
		return cmpInt64(a.Newer, b.Newer)
	})
	return &e
}

// checkDrift refuses the drifts statuses show, or accepts them into sum.
func checkDrift(sum *Summary, statuses []ShardStatus, allowChanged bool) error {
	drifts := Drifts(statuses)
	if refused := Refused(drifts, allowChanged); len(refused) > 0 {
		return &DriftError{Drifts: refused}
	}
	sum.Accepted = drifts
	return nil
}

// run fans op out over targets, Options.Concurrency workers per node, each
// shard first prepared (version table columns, checksums adopted or
// accepted) and then handed to op with a goose provider for it.
func run(ctx context.Context, verb string, files []File, fsys fs.FS, targets []Target, opts Options, sum Summary, start time.Time,
	op func(context.Context, *goose.Provider) ([]*goose.MigrationResult, error)) (Summary, error) {
	nodes, err := groupByNode(targets)
	if err != nil {
		return sum, err
	}
	conc := opts.Concurrency
	if conc <= 0 {
		conc = DefaultConcurrency
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}

	var (
		stop atomic.Bool
		mu   sync.Mutex // guards sum, done and calls to Progress
		done int
		wg   sync.WaitGroup
	)
	finish := func(ev Event, adopted int) {
		mu.Lock()
		defer mu.Unlock()
		done++
		ev.Done, ev.Total = done, len(targets)
		sum.Adopted += adopted
		switch {
		case ev.Skipped:
			sum.Skipped++
		case ev.Err != nil:
			sum.Failed++
			sum.Failures = append(sum.Failures, ev.Err.(*ShardError))
			sum.Applied += len(ev.Applied) // before the failing file
		case len(ev.Applied) > 0:
			sum.Migrated++
			sum.Applied += len(ev.Applied)
		default:
			sum.Current++
		}
		if opts.Progress != nil {
			opts.Progress(ev)
		}
	}

	for _, n := range nodes {
		queue := make(chan Target, len(n.targets))
		for _, t := range n.targets {
			queue <- t
		}
		close(queue)
		workers := min(conc, len(n.targets))
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w := newWorker(n.cfg, opts.SharedSchema)
				defer w.db.Close()
				for t := range queue {
					if stop.Load() || ctx.Err() != nil {
						finish(Event{Target: t, Skipped: true}, 0)
						continue
					}
					applied, adopted, err := w.migrate(ctx, files, fsys, t, opts.AllowChanged, op)
					if err != nil {
						var se *ShardError
						if !errors.As(err, &se) {
							se = &ShardError{Target: t, Err: err}
						}
						stop.Store(true)
						// Info: the caller reports the error (the command
						// groups the shards that failed alike); this is the
						// per-shard detail.
						log.InfoContext(ctx, "shard migration failed", "shard", t.Shard, "node", t.Node, "file", se.File, "err", se.Err)
						finish(Event{Target: t, Applied: applied, Err: se}, adopted)
						continue
					}
					finish(Event{Target: t, Applied: applied}, adopted)
				}
			}()
		}
	}
	wg.Wait()
	sum.Duration = time.Since(start)
	log.InfoContext(ctx, "migrate "+verb+" finished", "shards", sum.Shards, "migrated", sum.Migrated, "current", sum.Current,
		"failed", sum.Failed, "skipped", sum.Skipped, "applied", sum.Applied, "adopted", sum.Adopted, "duration", sum.Duration)
	if len(sum.Failures) > 0 {
		return sum, sum.Failures[0]
	}
	if err := ctx.Err(); err != nil {
		return sum, fmt.Errorf("migrate %s: %w", verb, err)
	}
	return sum, nil
}

type nodeTargets struct {
	name, dsn string
	cfg       *pgx.ConnConfig
	targets   []Target
}

// groupByNode splits targets per node, in node-name order, parses each
// node's DSN and checks that each node has one DSN and each schema appears
// once per node.
func groupByNode(targets []Target) ([]*nodeTargets, error) {
	byName := map[string]*nodeTargets{}
	seen := map[[2]string]bool{}
	for _, t := range targets {
		if t.Schema == "" {
			return nil, fmt.Errorf("shard %d has no schema name", t.Shard)
		}
		n := byName[t.Node]
		if n == nil {
			cfg, err := pgx.ParseConfig(t.DSN)
			if err != nil {
				return nil, fmt.Errorf("parse connection string of node %s: %w", t.Node, err)
			}
			n = &nodeTargets{name: t.Node, dsn: t.DSN, cfg: cfg}
			byName[t.Node] = n
		} else if n.dsn != t.DSN {
			return nil, fmt.Errorf("node %s is given two connection strings", t.Node)
		}
		key := [2]string{t.Node, t.Schema}
		if seen[key] {
			return nil, fmt.Errorf("schema %s on node %s is given twice", t.Schema, t.Node)
		}
		seen[key] = true
		n.targets = append(n.targets, t)
	}
	nodes := make([]*nodeTargets, 0, len(byName))
	for _, n := range byName {
		nodes = append(nodes, n)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].name < nodes[j].name })
	return nodes, nil
}

// worker migrates shards one after another over a single connection.
type worker struct {
	db *sql.DB
	// schema is the shard the connection points at. AfterConnect reads it, so
	// a connection that database/sql replaces behind our back still gets
	// the right search_path before goose touches it. Atomic because
	// database/sql may open connections from its own goroutine.
	schema atomic.Value // string
	// shared is Options.SharedSchema.
	shared string
}

func newWorker(node *pgx.ConnConfig, shared string) *worker {
	cfg := node.Copy()
	// No named statements: the same SQL text means a different table after
	// search_path changes, so nothing is cached per connection.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	w := &worker{shared: shared}
	w.db = stdlib.OpenDB(*cfg, stdlib.OptionAfterConnect(func(ctx context.Context, c *pgx.Conn) error {
		schema, _ := w.schema.Load().(string)
		if schema == "" {
			return nil
		}
		_, err := c.Exec(ctx, "SELECT set_config('search_path', $1, false)", searchPath(schema, w.shared))
		return err
	}))
	// One connection: goose runs SQL files on the connection it locks.
	w.db.SetMaxOpenConns(1)
	w.db.SetMaxIdleConns(1)
	return w
}

// migrate points the connection at t's schema, prepares its version table
// and runs op there. It returns the versions op applied (or rolled back) and
// how many applied versions got their checksum recorded for the first time.
func (w *worker) migrate(ctx context.Context, files []File, fsys fs.FS, t Target, allowChanged bool,
	op func(context.Context, *goose.Provider) ([]*goose.MigrationResult, error)) ([]int64, int, error) {
	w.schema.Store(t.Schema)
	var exists bool
	err := w.db.QueryRowContext(ctx,
		"SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $2) FROM set_config('search_path', $1, false)",
		searchPath(t.Schema, w.shared), t.Schema).Scan(&exists)
	if err != nil {
		return nil, 0, &ShardError{Target: t, Err: fmt.Errorf("set search_path: %w", err)}
	}
	if !exists {
		return nil, 0, &ShardError{Target: t, Err: ErrNoSchema}
	}
	adopted, err := w.prepare(ctx, t, files, allowChanged)
	if err != nil {
		return nil, 0, &ShardError{Target: t, Err: err}
	}
	p, err := newProvider(w.db, fsys, t.Schema, files)
	if err != nil {
		return nil, adopted, &ShardError{Target: t, Err: err}
	}
	// Not p.Close: that would close the worker's connection.
	results, err := op(ctx, p)
	var applied []int64
	for _, r := range results {
		applied = append(applied, r.Source.Version)
	}
	if err != nil {
		se := &ShardError{Target: t, Err: err}
		var partial *goose.PartialError
		if errors.As(err, &partial) {
			for _, r := range partial.Applied {
				applied = append(applied, r.Source.Version)
			}
			se.File = path.Base(partial.Failed.Source.Path)
			se.Version = partial.Failed.Source.Version
			se.Err = partial.Err
		}
		return applied, adopted, se
	}
	return applied, adopted, nil
}

// prepare gives the shard's version table (when it exists) the file_name
// and checksum columns, records the current files' names and checksums for
// applied versions that have none, and with allowChanged records the new
// checksums of changed files. One transaction, under the shard's migration
// lock (the same key goose's session lock takes).
func (w *worker) prepare(ctx context.Context, t Target, files []File, allowChanged bool) (adopted int, err error) {
	tx, err := w.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("prepare version table: %w", err)
	}
	defer func() {
		if err != nil {
			tx.Rollback()
		}
	}()
	// Another run holding this shard: wait up to five minutes, as goose does.
	if _, err = tx.ExecContext(ctx, "SET LOCAL lock_timeout = '300s'"); err != nil {
		return 0, fmt.Errorf("prepare version table: %w", err)
	}
	if _, err = tx.ExecContext(ctx, "SELECT pg_advisory_xact_lock($1)", lockID(t.Schema)); err != nil {
		return 0, fmt.Errorf("lock shard for migrating: %w", err)
	}
	var tableExists, recorded bool
	err = tx.QueryRowContext(ctx, `SELECT
		EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'goose_db_version'),
		EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relname = 'goose_db_version' AND a.attname = 'checksum' AND NOT a.attisdropped)`,
		t.Schema).Scan(&tableExists, &recorded)
	if err != nil {
		return 0, fmt.Errorf("read version table: %w", err)
	}
	if !tableExists {
		return 0, tx.Commit()
	}
	if !recorded {
		if _, err = tx.ExecContext(ctx, `ALTER TABLE goose_db_version
			ADD COLUMN IF NOT EXISTS file_name text, ADD COLUMN IF NOT EXISTS checksum text`); err != nil {
			return 0, fmt.Errorf("add checksum columns to goose_db_version: %w", err)
		}
	}
	versions := make([]int64, len(files))
	names := make([]string, len(files))
	sums := make([]string, len(files))
	for i, f := range files {
		versions[i], names[i], sums[i] = f.Version, f.Name, f.Checksum
	}
	err = tx.QueryRowContext(ctx, `WITH f AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[]) AS f(version, name, sum)),
		u AS (UPDATE goose_db_version g SET file_name = f.name, checksum = f.sum FROM f
			WHERE g.version_id = f.version AND g.checksum IS NULL RETURNING g.version_id)
		SELECT count(DISTINCT version_id) FROM u`, versions, names, sums).Scan(&adopted)
	if err != nil {
		return 0, fmt.Errorf("record checksums: %w", err)
	}
	if allowChanged {
		if _, err = tx.ExecContext(ctx, `UPDATE goose_db_version g SET checksum = f.sum
			FROM unnest($1::bigint[], $2::text[], $3::text[]) AS f(version, name, sum)
			WHERE g.version_id = f.version AND g.file_name = f.name AND g.checksum <> f.sum`, versions, names, sums); err != nil {
			return 0, fmt.Errorf("record changed checksums: %w", err)
		}
	}
	return adopted, tx.Commit()
}

// newProvider returns a goose provider for one schema. The version table is
// left unqualified ("goose_db_version") and found through search_path, which
// migrate sets to the shard schema (then the shared one, see searchPath)
// after checking it exists; goose's
// own schema-qualified form glues the name into SQL unquoted.
func newProvider(db *sql.DB, fsys fs.FS, schema string, files []File) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(lockID(schema)),
		// Another run holding this shard: wait up to five minutes.
		lock.WithLockTimeout(1, 300),
	)
	if err != nil {
		return nil, fmt.Errorf("create lock: %w", err)
	}
	store, err := newVersionStore(files)
	if err != nil {
		return nil, err
	}
	p, err := goose.NewProvider(goose.DialectCustom, db, fsys,
		goose.WithStore(store),
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	return p, nil
}

// versionStore is goose's Postgres version table with two more columns,
// file_name and checksum, written by the same INSERT (so in the same
// transaction as the file) that records a version.
type versionStore struct {
	database.Store
	files map[int64]File
}

func newVersionStore(files []File) (*versionStore, error) {
	st, err := database.NewStore(database.DialectPostgres, versionTable)
	if err != nil {
		return nil, fmt.Errorf("version table: %w", err)
	}
	s := &versionStore{Store: st, files: make(map[int64]File, len(files))}
	for _, f := range files {
		s.files[f.Version] = f
	}
	return s, nil
}

// versionTable is goose's version table, unqualified: found through the
// shard's search_path.
const versionTable = "goose_db_version"

func (s *versionStore) CreateVersionTable(ctx context.Context, db database.DBTxConn) error {
	_, err := db.ExecContext(ctx, `CREATE TABLE goose_db_version (
		id integer PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY,
		version_id bigint NOT NULL,
		is_applied boolean NOT NULL,
		tstamp timestamp NOT NULL DEFAULT now(),
		file_name text,
		checksum text
	)`)
	if err != nil {
		return fmt.Errorf("create version table: %w", err)
	}
	return nil
}

func (s *versionStore) Insert(ctx context.Context, db database.DBTxConn, req database.InsertRequest) error {
	f, ok := s.files[req.Version]
	if !ok {
		return s.Store.Insert(ctx, db, req)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO goose_db_version (version_id, is_applied, file_name, checksum)
		VALUES ($1, true, $2, $3)`, req.Version, f.Name, f.Checksum); err != nil {
		return fmt.Errorf("insert version %d: %w", req.Version, err)
	}
	return nil
}

// TableExists keeps goose's catalog lookup (goose falls back to a failing
// query without it).
func (s *versionStore) TableExists(ctx context.Context, db database.DBTxConn) (bool, error) {
	if ext, ok := s.Store.(database.StoreExtender); ok {
		return ext.TableExists(ctx, db)
	}
	return false, errors.ErrUnsupported
}

// lockID is the advisory lock key for migrating one schema. goose's default
// key is one for the whole database, which would serialise every shard on a
// node.
func lockID(schema string) int64 {
	h := fnv.New64a()
	h.Write([]byte("pgtenant migrate "))
	h.Write([]byte(schema))
	return int64(h.Sum64())
}
