package importer

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/shared"
)

// ErrNoImport means the catalog has no import running.
var ErrNoImport = coded("42704", "no import is registered; start one with `pgtenant import init --from DSN`")

// Importer runs the import commands against one catalog.
type Importer struct {
	cat          *catalog.Catalog
	logger       *slog.Logger
	sharedSchema string
	trace        func(shard int, step string, at time.Time) // SetTrace
}

// New returns an Importer over an open catalog. It does no I/O. A nil
// logger discards logs.
func New(c *catalog.Catalog, logger *slog.Logger) *Importer {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Importer{cat: c, logger: logger, sharedSchema: shared.DefaultSchema}
}

// SetSharedSchema names the nodes' shared schema (the router's
// shared_schema) that reference tables are loaded into; "" means public.
func (im *Importer) SetSharedSchema(s string) {
	if s == "" {
		s = shared.DefaultSchema
	}
	im.sharedSchema = s
}

// InitOptions say which database to import and how.
type InitOptions struct {
	// DSN reaches the legacy database (may name secrets as $NAME).
	DSN string
	// Node is the name the legacy database gets as a node; "" means "legacy".
	Node string
	// Schema holds the app's tables; "" means "public".
	Schema string
	// RegisterTenants registers, by hash, the tenant ids found in the legacy
	// rows that the catalog does not know; without it they stop the import.
	RegisterTenants bool
	// CheckOnly runs the checks and changes nothing.
	CheckOnly bool
	// Method is how import start will follow the legacy database's
	// changes: MethodLogical ("" means it: a logical replication slot,
	// which needs wal_level=logical and REPLICATION) or MethodTrigger
	// (capture triggers, installed by the tables' owner).
	Method string
	// SchemaPerTenant, when set, says the legacy database has a schema per
	// tenant (Schema is then ignored; see apartment.go).
	SchemaPerTenant *SchemaPerTenantOptions
}

func (o *InitOptions) defaults() {
	if o.Node == "" {
		o.Node = "legacy"
	}
	if o.Schema == "" {
		o.Schema = "public"
	}
	if o.Method == "" {
		o.Method = MethodLogical
	}
}

// InitResult is what Init found and did.
type InitResult struct {
	Survey     *Survey
	Node       string
	Schema     string
	Shards     int
	Registered int // tenants registered by --register-tenants
	// TenantSchemas counts the tenant schemas of a legacy database with a
	// schema per tenant (Schema is then the template schema).
	TenantSchemas int
}

// Init checks the legacy database and the catalog (see Problem) and, when
// nothing is wrong, registers the legacy database as a node that serves
// every shard from its schema: routers send each tenant there until its
// shard is cut over. A failed check returns a *CheckError and changes
// nothing. Nothing is written to the legacy database.
func (im *Importer) Init(ctx context.Context, opts InitOptions) (*InitResult, error) {
	opts.defaults()
	if err := validMethod(opts.Method); err != nil {
		return nil, fmt.Errorf("import init: %w", err)
	}
	res := &InitResult{Node: opts.Node, Schema: opts.Schema}
	dsn, err := im.cat.ResolveDSN(opts.DSN)
	if err != nil {
		return nil, fmt.Errorf("import init: %w", err)
	}
	conn, err := connect(ctx, dsn)
	if err != nil {
		return nil, fmt.Errorf("import init: connect to the legacy database: %w", err)
	}
	defer conn.Close(context.Background())
	if opts.SchemaPerTenant != nil {
		if opts.Method == MethodTrigger {
			return nil, &CheckError{Problems: []Problem{{Code: "0A000", Message: "a legacy database with a schema per tenant is imported by logical replication only",
				Hint: "give the legacy database wal_level=logical and the import's role REPLICATION, and import without --method trigger"}}}
		}
		return im.initApartment(ctx, conn, opts, res)
	}
	sv, probs, err := check(ctx, im.cat, conn, opts.Schema, opts.RegisterTenants, opts.Method)
	if err != nil {
		return nil, fmt.Errorf("import init: check: %w", err)
	}
	res.Survey = sv
	if len(probs) > 0 {
		err := &CheckError{Problems: probs}
		im.cat.RecordOperation(ctx, "import init", map[string]any{"node": opts.Node, "check": "failed"}, err)
		return res, err
	}
	if opts.CheckOnly {
		return res, nil
	}
	report, err := im.cat.AddNode(ctx, opts.Node, opts.DSN)
	if err != nil {
		return res, fmt.Errorf("import init: register the legacy database: %w", err)
	}
	sv.Identity = report.Identity
	if opts.RegisterTenants && len(sv.Unregistered) > 0 {
		if res.Registered, err = im.cat.AddTenants(ctx, sv.Unregistered); err != nil {
			im.undoNode(opts.Node)
			return res, fmt.Errorf("import init: %w", err)
		}
	}
	err = pgx.BeginFunc(ctx, im.cat.Pool(), func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM pgtenant.imports WHERE state = 'finished'`); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO pgtenant.imports (legacy_node, legacy_schema, method) VALUES ($1, $2, $3)`, opts.Node, opts.Schema, opts.Method); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO pgtenant.import_shards (shard) SELECT id FROM pgtenant.shards`)
		res.Shards = int(tag.RowsAffected())
		return err
	})
	im.cat.RecordOperation(ctx, "import init", map[string]any{"node": opts.Node, "schema": opts.Schema, "shards": res.Shards,
		"tables": len(sv.Tables), "tenants": len(sv.Tenants), "registered": res.Registered}, err)
	if err != nil {
		im.undoNode(opts.Node)
		return res, fmt.Errorf("import init: record the import: %w", err)
	}
	im.logger.Info("import registered", "node", opts.Node, "schema", opts.Schema, "shards", res.Shards)
	return res, nil
}

// undoNode removes the legacy node registered by a failed Init.
func (im *Importer) undoNode(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := im.cat.RemoveNode(ctx, name); err != nil {
		im.logger.Error("remove the legacy node after a failed import init", "node", name, "err", err)
	}
}

func connect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, err
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 10*time.Second {
		cfg.ConnectTimeout = 10 * time.Second
	}
	return pgx.ConnectConfig(ctx, cfg)
}
