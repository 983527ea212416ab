package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/nodedsn"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// Channel is the NOTIFY channel on which map changes are announced; the
// payload is the new map version.
const Channel = "pgtenant_map"

// upgradeLockID is the advisory lock that serialises catalog upgrades.
const upgradeLockID = 0x70677465 // "pgte"

// Sentinel errors callers branch on.
var (
	// ErrNotInitialized means the catalog database has no pgtenant schema yet.
	ErrNotInitialized = errors.New("catalog is not initialized (SQLSTATE 55000); hint: run `pgtenant init --shards 256` first")
	// ErrUnknownNode means no node of that name is registered.
	ErrUnknownNode = errors.New("unknown node")
	// ErrNodeInUse means a node still holds shards.
	ErrNodeInUse = errors.New("node still holds shards")
	// ErrTenantExists means the tenant id is already registered.
	ErrTenantExists = errors.New("tenant already exists")
	// ErrNoNodes means shards cannot be created because no node is registered.
	ErrNoNodes = errors.New("no nodes registered; add one with `pgtenant node add NAME DSN`")
	// ErrOutdated means the catalog schema is older than this pgtenant.
	ErrOutdated = errors.New("the catalog schema is older than this pgtenant; upgrade it with `pgtenant init --shards N` (its current shard count)")
	// ErrTooNew means the catalog was written by a newer pgtenant.
	ErrTooNew = errors.New("catalog schema is newer than this pgtenant; upgrade the binary")
)

// UnknownNode is the error for a node name that is not registered: it says
// so with SQLSTATE 42704 and where the names are, and matches ErrUnknownNode.
func UnknownNode(name string) error { return unknownNodeError{name} }

type unknownNodeError struct{ name string }

func (e unknownNodeError) Error() string {
	return fmt.Sprintf("node %q is unknown (SQLSTATE 42704); `pgtenant node list` names the nodes", e.name)
}

func (e unknownNodeError) Unwrap() error { return ErrUnknownNode }

// AlreadyRegistered is the error for a node name that is taken: it says so
// with SQLSTATE 42710 (duplicate_object) and what to do.
func AlreadyRegistered(name string) error { return nodeExistsError{name} }

type nodeExistsError struct{ name string }

func (e nodeExistsError) Error() string {
	return fmt.Sprintf("node %q is already registered (SQLSTATE 42710); choose another name (`pgtenant node list` shows the nodes and their DSNs), "+
		"or remove it first with `pgtenant node remove %s` once it holds no shards", e.name, e.name)
}

// Catalog is a handle on the catalog database. Create it with New and Open it
// before use.
type Catalog struct {
	dsn     string
	logger  *slog.Logger
	pool    *pgxpool.Pool
	secrets nodedsn.Lookup

	// tenantCache is the capacity of dir's cache (SetTenantCache).
	tenantCache int
	dirOnce     sync.Once
	dir         *tenantDir
	// shardCount caches ShardCount once read.
	shardCount atomic.Int64
	// importing is set while the last full map read found an import
	// running, even with every shard cut over (a rollback puts one back on
	// the legacy database): loadMapSince reads every change in full then.
	importing atomic.Bool
	// importTables is set once the import tables were found: full map
	// reads then read the import overlay in the map's own snapshot.
	importTables atomic.Bool
	// acks is the listener of the routers' acknowledgements (acks.go),
	// started by the first WaitAcked.
	acksMu sync.Mutex
	acks   *ackListener
}

// SetSecrets sets where $NAME references in node DSNs are resolved (see
// package nodedsn). Call it before Open. The default is the environment.
func (c *Catalog) SetSecrets(l nodedsn.Lookup) { c.secrets = l }

// ResolveDSN resolves the secret references of a stored node DSN for
// connecting to the node. Errors name the missing secret, never a value.
func (c *Catalog) ResolveDSN(dsn string) (string, error) { return c.resolve(dsn) }

func (c *Catalog) resolve(dsn string) (string, error) {
	l := c.secrets
	if l == nil {
		l = nodedsn.Env()
	}
	return nodedsn.Expand(dsn, l)
}

// resolveNodes resolves the DSNs of freshly loaded nodes in place. A node
// whose DSN names a missing secret keeps the stored DSN (connections to it
// then fail) and is logged.
func (c *Catalog) resolveNodes(nodes map[string]placement.Node) {
	for name, n := range nodes {
		dsn, err := c.resolve(n.DSN)
		if err != nil {
			c.logger.Error("node connection string", "node", name, "err", err)
			continue
		}
		n.DSN = dsn
		nodes[name] = n
	}
}

// New returns a Catalog for the database at dsn. It does no I/O. A nil logger
// discards logs.
func New(dsn string, logger *slog.Logger) *Catalog {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Catalog{dsn: dsn, logger: logger}
}

// Open connects to the catalog database.
func (c *Catalog) Open(ctx context.Context) error {
	cfg, err := pgxpool.ParseConfig(c.dsn)
	if err != nil {
		return fmt.Errorf("parse catalog connection string: %w", err)
	}
	if _, set := cfg.ConnConfig.RuntimeParams["pool_max_conns"]; !set && !strings.Contains(c.dsn, "pool_max_conns") {
		cfg.MaxConns = 4
	}
	cfg.ConnConfig.RuntimeParams["application_name"] = "pgtenant"
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to catalog: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return fmt.Errorf("connect to catalog %s: %w", RedactDSN(c.dsn), err)
	}
	c.pool = pool
	return nil
}

// Close releases the catalog's connections.
func (c *Catalog) Close() {
	c.stopAcks()
	if c.pool != nil {
		c.pool.Close()
	}
}

// Pool exposes the catalog's connection pool to packages that keep their own
// state in the catalog (move).
func (c *Catalog) Pool() *pgxpool.Pool { return c.pool }

// DSN is the catalog's connection string.
func (c *Catalog) DSN() string { return c.dsn }

// Version returns the catalog schema version, 0 when uninitialized.
func (c *Catalog) Version(ctx context.Context) (int, error) {
	return schemaVersion(ctx, c.pool)
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func schemaVersion(ctx context.Context, q querier) (int, error) {
	var exists bool
	if err := q.QueryRow(ctx, `SELECT to_regclass('pgtenant.meta') IS NOT NULL`).Scan(&exists); err != nil {
		return 0, fmt.Errorf("read catalog version: %w", err)
	}
	if !exists {
		return 0, nil
	}
	var v string
	err := q.QueryRow(ctx, `SELECT value FROM pgtenant.meta WHERE key = 'schema_version'`).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read catalog version: %w", err)
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("catalog version %q: %w", v, err)
	}
	return n, nil
}

// Upgrade brings the catalog schema to the latest version in place. It is
// safe to run concurrently and repeatedly.
func (c *Catalog) Upgrade(ctx context.Context) error {
	return c.upgradeTo(ctx, LatestVersion())
}

func (c *Catalog) upgradeTo(ctx context.Context, target int) error {
	return pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, upgradeLockID); err != nil {
			return fmt.Errorf("lock catalog for upgrade: %w", err)
		}
		v, err := schemaVersion(ctx, tx)
		if err != nil {
			return err
		}
		if v > LatestVersion() {
			return fmt.Errorf("catalog version %d, this build knows %d: %w", v, LatestVersion(), ErrTooNew)
		}
		for i := v; i < target; i++ {
			if _, err := tx.Exec(ctx, upgrades[i]); err != nil {
				return fmt.Errorf("upgrade catalog to version %d: %w", i+1, err)
			}
			if _, err := tx.Exec(ctx, `INSERT INTO pgtenant.meta (key, value) VALUES ('schema_version', $1)
				ON CONFLICT (key) DO UPDATE SET value = excluded.value`, strconv.Itoa(i+1)); err != nil {
				return fmt.Errorf("record catalog version %d: %w", i+1, err)
			}
			c.logger.Info("catalog upgraded", "version", i+1)
		}
		return nil
	})
}

// Init creates or upgrades the catalog and fixes the shard count. Running it
// again with the same count is a no-op; a different count is refused, since
// tenants are placed by the hash modulo the count.
func (c *Catalog) Init(ctx context.Context, shards int) error {
	if !placement.ValidShardCount(shards) {
		return fmt.Errorf("init: shard count %d: %w", shards, ErrBadShardCount)
	}
	if err := c.Upgrade(ctx); err != nil {
		return fmt.Errorf("init: %w", err)
	}
	var existing string
	err := c.pool.QueryRow(ctx, `SELECT value FROM pgtenant.meta WHERE key = 'shard_count'`).Scan(&existing)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		if _, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.meta (key, value) VALUES ('shard_count', $1) ON CONFLICT DO NOTHING`, strconv.Itoa(shards)); err != nil {
			return fmt.Errorf("init: record shard count: %w", err)
		}
		c.logOp(ctx, "init", map[string]any{"shards": shards}, nil)
		return c.Init(ctx, shards) // re-check against a concurrent init
	case err != nil:
		return fmt.Errorf("init: read shard count: %w", err)
	case existing != strconv.Itoa(shards):
		return fmt.Errorf("init: catalog already has %s shards, not %d: the shard count is fixed once tenants are placed; use a new catalog database for another count", existing, shards)
	}
	return nil
}

// ErrBadShardCount explains which shard counts are accepted.
var ErrBadShardCount = errors.New("the shard count must be a power of two from 1 to 65536 (e.g. 256), so that shards split evenly when nodes are added")

// ShardCount returns the configured number of shards (read once: it never
// changes after init).
func (c *Catalog) ShardCount(ctx context.Context) (int, error) {
	if n := c.shardCount.Load(); n > 0 {
		return int(n), nil
	}
	var v string
	err := c.pool.QueryRow(ctx, `SELECT value FROM pgtenant.meta WHERE key = 'shard_count'`).Scan(&v)
	if err != nil {
		if isUndefinedTable(err) || errors.Is(err, pgx.ErrNoRows) {
			return 0, ErrNotInitialized
		}
		return 0, fmt.Errorf("read shard count: %w", err)
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("read shard count: %w", err)
	}
	c.shardCount.Store(int64(n))
	return n, nil
}

// SetMeta stores a catalog-wide setting (for example the migrations directory).
func (c *Catalog) SetMeta(ctx context.Context, key, value string) error {
	_, err := c.pool.Exec(ctx, `INSERT INTO pgtenant.meta (key, value) VALUES ($1, $2)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value`, key, value)
	if err != nil {
		return fmt.Errorf("set %s: %w", key, err)
	}
	return nil
}

// Meta returns a catalog-wide setting, "" when unset.
func (c *Catalog) Meta(ctx context.Context, key string) (string, error) {
	var v string
	err := c.pool.QueryRow(ctx, `SELECT value FROM pgtenant.meta WHERE key = $1`, key).Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", key, err)
	}
	return v, nil
}

func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000")
}

// logOp records a control-plane operation. Failing to log does not fail the
// operation; it is logged instead.
func (c *Catalog) logOp(ctx context.Context, op string, detail map[string]any, opErr error) {
	if err := logOpIn(ctx, c.pool, op, detail, opErr); err != nil {
		c.logger.Warn("record operation", "op", op, "err", err)
	}
}

// logOpIn records a control-plane operation with q (a transaction, so that
// a change and its record commit together).
func logOpIn(ctx context.Context, q querier, op string, detail map[string]any, opErr error) error {
	b, _ := json.Marshal(detail)
	var errText *string
	if opErr != nil {
		s := opErr.Error()
		errText = &s
	}
	_, err := q.Exec(ctx, `INSERT INTO pgtenant.operations (op, detail, ok, error) VALUES ($1, $2, $3, $4)`,
		op, b, opErr == nil, errText)
	return err
}

// Operation is one entry of the control-plane log.
type Operation struct {
	ID     int64
	At     time.Time
	Actor  string
	Op     string
	Detail string // a JSON object
	OK     bool
	Error  string
}

// Operations returns the newest limit entries of the operation log.
func (c *Catalog) Operations(ctx context.Context, limit int) ([]Operation, error) {
	rows, err := c.pool.Query(ctx, `SELECT id, at, actor, op, detail::text, ok, coalesce(error, '')
		FROM pgtenant.operations ORDER BY id DESC LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("list operations: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Operation, error) {
		var o Operation
		err := r.Scan(&o.ID, &o.At, &o.Actor, &o.Op, &o.Detail, &o.OK, &o.Error)
		return o, err
	})
}

// RecordOperation adds an entry to the control-plane log for work done
// outside the catalog package (migrations, moves).
func (c *Catalog) RecordOperation(ctx context.Context, op string, detail map[string]any, opErr error) {
	c.logOp(ctx, op, detail, opErr)
}

func isUndefinedColumn(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "42703"
}
