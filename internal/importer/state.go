package importer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/tables"
)

// Import states (pgtenant.imports.state).
const (
	StateServing   = "serving"   // registered; every shard served from the legacy database
	StateCopying   = "copying"   // import start is copying rows
	StateCopied    = "copied"    // every shard's rows copied
	StateStreaming = "streaming" // rows copied; changes follow
	StateFinished  = "finished"
)

// Shard states (pgtenant.import_shards.state).
const (
	ShardLegacy  = "legacy"  // nothing copied yet
	ShardCopying = "copying" // some tables copied (TablesDone)
	ShardCopied  = "copied"  // every table copied at the snapshot
	ShardCutover = "cutover" // served from its node
)

// Import is the catalog's record of the running import.
type Import struct {
	LegacyNode, LegacySchema string
	// LegacyDSN is the legacy node's DSN with secrets resolved.
	LegacyDSN   string
	State       string
	Publication string
	Slot        string
	// StartLSN is the slot's consistent point: where its change stream starts.
	StartLSN  string
	StartedAt time.Time
	// Method is how the legacy database's changes are followed:
	// MethodLogical (a logical replication slot) or MethodTrigger (capture
	// triggers and a queue table, trigger.go).
	Method string
}

// ShardProgress is one shard's import state.
type ShardProgress struct {
	Shard      int
	Schema     string
	Node       string // where the shard's schema is (its target)
	NodeDSN    string
	State      string
	CopyLSN    string // the consistent point of the snapshot its rows were copied at
	TablesDone []string
	Rows       int64
	Bytes      int64
	PauseMS    *float64
}

// load reads the running import.
func (im *Importer) load(ctx context.Context) (*Import, error) {
	imp := &Import{}
	var pub, slot, lsn *string
	var dsn string
	err := im.cat.Pool().QueryRow(ctx, `SELECT i.legacy_node, i.legacy_schema, n.dsn, i.state, i.publication, i.slot_name, i.start_lsn::text, i.started_at, i.method
		FROM pgtenant.imports i JOIN pgtenant.nodes n ON n.name = i.legacy_node WHERE i.state <> 'finished'`).
		Scan(&imp.LegacyNode, &imp.LegacySchema, &dsn, &imp.State, &pub, &slot, &lsn, &imp.StartedAt, &imp.Method)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNoImport
	}
	if err != nil {
		return nil, fmt.Errorf("read the import: %w", err)
	}
	imp.Publication, imp.Slot, imp.StartLSN = deref(pub), deref(slot), deref(lsn)
	if imp.LegacyDSN, err = im.cat.ResolveDSN(dsn); err != nil {
		return nil, fmt.Errorf("legacy node %s: %w", imp.LegacyNode, err)
	}
	return imp, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// shards reads every shard's import progress with its node.
func (im *Importer) shards(ctx context.Context) ([]ShardProgress, error) {
	rows, err := im.cat.Pool().Query(ctx, `SELECT s.id, s.schema_name, s.node, n.dsn, i.state, coalesce(i.copy_lsn::text, ''), i.tables_done, i.rows, i.bytes, i.pause_ms
		FROM pgtenant.import_shards i JOIN pgtenant.shards s ON s.id = i.shard JOIN pgtenant.nodes n ON n.name = s.node ORDER BY s.id`)
	if err != nil {
		return nil, fmt.Errorf("read import shards: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (ShardProgress, error) {
		var p ShardProgress
		err := r.Scan(&p.Shard, &p.Schema, &p.Node, &p.NodeDSN, &p.State, &p.CopyLSN, &p.TablesDone, &p.Rows, &p.Bytes, &p.PauseMS)
		return p, err
	})
	if err != nil {
		return nil, fmt.Errorf("read import shards: %w", err)
	}
	for i := range out {
		if out[i].NodeDSN, err = im.cat.ResolveDSN(out[i].NodeDSN); err != nil {
			return nil, fmt.Errorf("node %s: %w", out[i].Node, err)
		}
	}
	return out, nil
}

// Shards returns every shard's import progress, in shard order.
func (im *Importer) Shards(ctx context.Context) ([]ShardProgress, error) {
	if _, err := im.load(ctx); err != nil {
		return nil, err
	}
	return im.shards(ctx)
}

// rules reads the registry rules of the tables present in the legacy
// schema; a table of the schema without a rule, not excluded (import
// exclude), is an error.
func (im *Importer) rules(ctx context.Context, conn *pgx.Conn, schema string) (tenant, shared []tables.Table, err error) {
	return im.rulesOf(ctx, conn, schema, true)
}

// streamRules is rules for the change stream and verify, which leave the
// tables without a rule alone: a table created on the legacy database
// after import start does not stop them (status, verify, cutover and
// finish name it: unimported.go).
func (im *Importer) streamRules(ctx context.Context, conn *pgx.Conn, schema string) (tenant, shared []tables.Table, err error) {
	return im.rulesOf(ctx, conn, schema, false)
}

func (im *Importer) rulesOf(ctx context.Context, conn *pgx.Conn, schema string, strict bool) (tenant, shared []tables.Table, err error) {
	if ap, err := im.apartmentOf(ctx); err != nil || ap != nil {
		if err != nil {
			return nil, nil, err
		}
		return im.apartmentRules(ctx, conn, ap) // a schema per tenant (apartment.go)
	}
	app, err := tables.AppTables(ctx, conn, schema)
	if err != nil {
		return nil, nil, err
	}
	all, err := tables.New(im.cat.Pool()).List(ctx)
	if err != nil {
		return nil, nil, err
	}
	ex, err := im.excluded(ctx)
	if err != nil && !errors.Is(err, ErrNoImport) {
		return nil, nil, err
	}
	app = slices.DeleteFunc(app, func(n string) bool { return slices.Contains(ex, n) })
	present := map[string]bool{}
	for _, n := range app {
		present[n] = true
	}
	if missing := tables.Unregistered(app, all); len(missing) > 0 && strict {
		return nil, nil, fmt.Errorf("table(s) with no tenant rule: %v: %w", missing, tables.ErrUnknownTable)
	}
	for _, t := range all {
		if !present[t.Name] {
			continue
		}
		if t.Kind == tables.KindShared {
			shared = append(shared, t)
		} else {
			tenant = append(tenant, t)
		}
	}
	return tenant, shared, nil
}
