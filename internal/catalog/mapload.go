package catalog

import (
	"context"
	"fmt"
	"math"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// batcher runs a batch of statements on one connection (*pgx.Conn,
// *pgxpool.Pool).
type batcher interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	querier
}

// LoadMap reads a consistent snapshot of the placement map: the map version,
// every shard and every node. Tenants are not read: the map's Directory looks
// them up in the catalog on demand (see SetTenantCache), so the map's size
// and load time do not grow with the number of tenants.
func (c *Catalog) LoadMap(ctx context.Context) (*placement.Map, error) {
	m, err := c.loadMapSince(ctx, c.pool, nil)
	if err != nil {
		return nil, fmt.Errorf("load map: %w", err)
	}
	return m, nil
}

// loadMapSince reads the map at the current version. With prev it reads
// only what changed since prev's version, as pgtenant.map_changes records it
// (the shard rows a fence or flip touched, the nodes if any changed), and
// shares the rest with prev; when the log does not cover every version since
// prev (pruned, or written by an older pgtenant) or says 'all', it reads the
// whole map. Map versions commit in order (each bump locks the map_version
// row), so in one repeatable-read snapshot the log holds every version up to
// the one read. The statements go as one pipeline: one round trip, which is
// most of the time a router takes to acknowledge a fence.
func (c *Catalog) loadMapSince(ctx context.Context, b batcher, prev *placement.Map) (*placement.Map, error) {
	// While an import runs, every change is read in full: the legacy overlay
	// (applyImports) must be laid over each shard row read (also after every
	// shard was cut over: a rollback puts one back), and imports are
	// short-lived.
	if prev != nil && !c.importing.Load() {
		m, ok, _, err := c.readMap(ctx, b, prev)
		if err != nil || ok {
			return m, err
		}
	}
	m, _, imported, err := c.readMap(ctx, b, nil)
	if err != nil {
		return nil, err
	}
	c.tenantFencesChanged(prev, m.FencedTenants)
	if imported < 0 {
		// The import tables were not known to exist: a second round trip,
		// until they are found (then the overlay is read with the map).
		if imported, err = c.applyImports(ctx, b, m); err != nil {
			return nil, err
		}
	}
	c.importing.Store(imported > 0)
	return m, nil
}

// readMap reads the map: in full without prev, else as changes to prev (ok
// false when the change log cannot say). A full read of a catalog known to
// have the import tables also lays the import overlay over the shards, read
// in the same snapshot (imported: how many shards it placed on a legacy
// database; -1 when not read).
func (c *Catalog) readMap(ctx context.Context, b batcher, prev *placement.Map) (m *placement.Map, ok bool, imported int, err error) {
	full := prev == nil
	since := int64(math.MaxInt64)
	if prev != nil {
		since = prev.Version
	}
	const upTo = `version > $1 AND version <= (SELECT version FROM pgtenant.map_version)`
	batch := &pgx.Batch{}
	batch.Queue(`BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`)
	batch.Queue(`SELECT version FROM pgtenant.map_version`)
	batch.Queue(`SELECT version, kind, coalesce(shards, '{}') FROM pgtenant.map_changes WHERE `+upTo+` ORDER BY version`, since)
	// A shard's running move names its target (Shard.Target): the routers
	// pre-warm their pools to it before the flip (the mover touches the
	// shard's row before the fence, so that they read it then).
	batch.Queue(`SELECT s.id, s.schema_name, s.node, s.state, s.epoch,
			coalesce((SELECT m.target_node FROM pgtenant.moves m WHERE m.shard = s.id AND m.status = 'running'), '')
		FROM pgtenant.shards s
		WHERE $2 OR s.id IN (SELECT unnest(shards) FROM pgtenant.map_changes WHERE `+upTo+`) ORDER BY s.id`, since, full)
	batch.Queue(`SELECT name, dsn FROM pgtenant.nodes
		WHERE $2 OR EXISTS (SELECT FROM pgtenant.map_changes WHERE `+upTo+` AND kind = 'nodes')`, since, full)
	queueTenantFences(batch, upTo, since, full)
	withImports := full && c.importTables.Load()
	if withImports {
		queueImports(batch)
	}
	batch.Queue(`COMMIT`)
	br := b.SendBatch(ctx, batch)
	defer func() {
		if cerr := br.Close(); err == nil && cerr != nil {
			m, ok, imported, err = nil, false, -1, cerr
		}
		if isUndefinedTable(err) {
			err = ErrNotInitialized
		}
	}()
	if _, err := br.Exec(); err != nil {
		return nil, false, -1, err
	}
	var v int64
	if err := br.QueryRow().Scan(&v); err != nil {
		return nil, false, -1, err
	}
	rows, err := br.Query()
	if err != nil {
		return nil, false, -1, err
	}
	var (
		n     int64
		ver   int64
		kind  string
		ids   []int32
		nodes bool
		all   bool
	)
	if _, err := pgx.ForEachRow(rows, []any{&ver, &kind, &ids}, func() error {
		n++
		switch kind {
		case "shards", "users":
		case "nodes":
			nodes = true
		case "tenant_fences":
		default:
			all = true
		}
		return nil
	}); err != nil {
		return nil, false, -1, err
	}
	rows, err = br.Query()
	if err != nil {
		return nil, false, -1, err
	}
	shards, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (placement.Shard, error) {
		var s placement.Shard
		err := r.Scan(&s.ID, &s.Schema, &s.Node, &s.State, &s.Epoch, &s.Target)
		return s, err
	})
	if err != nil {
		return nil, false, -1, err
	}
	rows, err = br.Query()
	if err != nil {
		return nil, false, -1, err
	}
	nodeMap := map[string]placement.Node{}
	var name, dsn string
	if _, err := pgx.ForEachRow(rows, []any{&name, &dsn}, func() error {
		nodeMap[name] = placement.Node{Name: name, DSN: dsn}
		return nil
	}); err != nil {
		return nil, false, -1, err
	}
	fences, fencesRead, err := readTenantFences(br)
	if err != nil {
		return nil, false, -1, err
	}
	if full {
		m = &placement.Map{Version: v, Shards: shards, Nodes: nodeMap, Directory: c.tenants(), FencedTenants: fences}
	}
	imported = -1
	if withImports {
		if imported, err = readImports(br, m); err != nil {
			return nil, false, -1, err
		}
	}
	if _, err := br.Exec(); err != nil {
		return nil, false, -1, err
	}
	if full {
		c.resolveNodes(nodeMap)
		return m, true, imported, nil
	}
	if v == prev.Version {
		return prev, true, -1, nil
	}
	if v < prev.Version || all || n != v-prev.Version {
		return nil, false, -1, nil
	}
	m = &placement.Map{Version: v, Shards: prev.Shards, Nodes: prev.Nodes, Directory: prev.Directory, Tenants: prev.Tenants, FencedTenants: prev.FencedTenants}
	if fencesRead {
		c.tenantFencesChanged(prev, fences)
		m.FencedTenants = fences
	}
	if len(shards) > 0 {
		m.Shards = slices.Clone(prev.Shards)
		for _, s := range shards {
			if s.ID < 0 || s.ID >= len(m.Shards) || m.Shards[s.ID].ID != s.ID {
				return nil, false, -1, nil // a shard was added: read them all
			}
			m.Shards[s.ID] = s
		}
	}
	if nodes {
		c.resolveNodes(nodeMap)
		m.Nodes = nodeMap
	}
	return m, true, -1, nil
}
