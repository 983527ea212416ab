package migrate

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
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
	// SharedSchema, when set, follows the shard's schema in the search_path
	// migrations run with (see searchPath), so that they can use the types
	// of extensions installed there and refer to reference tables. Empty
	// means the shard's schema alone.
	SharedSchema string
}

// Event reports one finished target to Options.Progress.
type Event struct {
	Target Target
	// Applied are the versions applied to this shard by this run, ascending.
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
	// Applied counts migration files applied, summed over shards.
	Applied int
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
	where := fmt.Sprintf("migrate shard %d (schema %s on node %s)", e.Target.Shard, e.Target.Schema, e.Target.Node)
	if e.File != "" {
		where += fmt.Sprintf(": file %s", e.File)
	}
	var pgErr *pgconn.PgError
	if errors.As(e.Err, &pgErr) {
		// goose's own wrapping repeats the statement; the Postgres error
		// is what a user acts on. Unwrap still reaches the full chain.
		msg := fmt.Sprintf("%s: %s: %s (SQLSTATE %s)", where, pgErr.Severity, pgErr.Message, pgErr.Code)
		if pgErr.Detail != "" {
			msg += ": " + pgErr.Detail
		}
		return msg
	}
	return fmt.Sprintf("%s: %v", where, e.Err)
}

func (e *ShardError) Unwrap() error { return e.Err }

// Up applies every pending migration in fsys (files at its root) to every
// target. Each file runs in its own transaction on the shard together with
// its goose version row, so every shard is always at a whole version, and a
// rerun after a failure or a kill continues where the shard stopped.
//
// On the first failure no new shard is started; shards already in flight
// finish their pending files (or roll back the one that fails). The returned
// error is then the first *ShardError; the Summary is valid either way. A
// cancelled ctx aborts in-flight transactions, which roll back.
func Up(ctx context.Context, fsys fs.FS, targets []Target, opts Options) (Summary, error) {
	start := time.Now()
	sum := Summary{Shards: len(targets)}
	if vs, err := Versions(fsys); err != nil {
		return sum, err
	} else if len(vs) == 0 {
		return sum, fmt.Errorf("migrate up: %w", goose.ErrNoMigrations)
	}
	fsys = plainSQL{fsys}
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
	finish := func(ev Event) {
		mu.Lock()
		defer mu.Unlock()
		done++
		ev.Done, ev.Total = done, len(targets)
		switch {
		case ev.Skipped:
			sum.Skipped++
		case ev.Err != nil:
			sum.Failed++
			sum.Failures = append(sum.Failures, ev.Err.(*ShardError))
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
						finish(Event{Target: t, Skipped: true})
						continue
					}
					applied, err := w.migrate(ctx, fsys, t)
					if err != nil {
						var se *ShardError
						if !errors.As(err, &se) {
							se = &ShardError{Target: t, Err: err}
						}
						stop.Store(true)
						log.ErrorContext(ctx, "shard migration failed", "shard", t.Shard, "node", t.Node, "file", se.File, "err", se.Err)
						finish(Event{Target: t, Applied: applied, Err: se})
						continue
					}
					finish(Event{Target: t, Applied: applied})
				}
			}()
		}
	}
	wg.Wait()
	sum.Duration = time.Since(start)
	log.InfoContext(ctx, "migrate up finished", "shards", sum.Shards, "migrated", sum.Migrated, "current", sum.Current,
		"failed", sum.Failed, "skipped", sum.Skipped, "applied", sum.Applied, "duration", sum.Duration)
	if len(sum.Failures) > 0 {
		return sum, sum.Failures[0]
	}
	if err := ctx.Err(); err != nil {
		return sum, fmt.Errorf("migrate up: %w", err)
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

// migrate points the connection at t's schema and runs goose up there.
func (w *worker) migrate(ctx context.Context, fsys fs.FS, t Target) ([]int64, error) {
	w.schema.Store(t.Schema)
	var exists bool
	err := w.db.QueryRowContext(ctx,
		"SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $2) FROM set_config('search_path', $1, false)",
		searchPath(t.Schema, w.shared), t.Schema).Scan(&exists)
	if err != nil {
		return nil, &ShardError{Target: t, Err: fmt.Errorf("set search_path: %w", err)}
	}
	if !exists {
		return nil, &ShardError{Target: t, Err: ErrNoSchema}
	}
	p, err := newProvider(w.db, fsys, t.Schema)
	if err != nil {
		return nil, &ShardError{Target: t, Err: err}
	}
	// Not p.Close: that would close the worker's connection.
	results, err := p.Up(ctx)
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
		return applied, se
	}
	return applied, nil
}

// newProvider returns a goose provider for one schema. The version table is
// left unqualified ("goose_db_version") and found through search_path, which
// migrate sets to the shard schema (then the shared one, see searchPath)
// after checking it exists; goose's
// own schema-qualified form glues the name into SQL unquoted.
func newProvider(db *sql.DB, fsys fs.FS, schema string) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker(
		lock.WithLockID(lockID(schema)),
		// Another run holding this shard: wait up to five minutes.
		lock.WithLockTimeout(1, 300),
	)
	if err != nil {
		return nil, fmt.Errorf("create lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	return p, nil
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
