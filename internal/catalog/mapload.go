package catalog

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// LoadMap reads a consistent snapshot of the placement map: the map version,
// every shard and every node. Tenants are not read: the map's Directory looks
// them up in the catalog on demand (see SetTenantCache), so the map's size
// and load time do not grow with the number of tenants.
func (c *Catalog) LoadMap(ctx context.Context) (*placement.Map, error) {
	var m *placement.Map
	err := pgx.BeginTxFunc(ctx, c.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		m, err = c.loadMapSince(ctx, tx, nil)
		return err
	})
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
// whole map. Run it in a repeatable-read transaction: map versions commit in
// order (each bump locks the map_version row), so the log holds every
// version up to the one read.
func (c *Catalog) loadMapSince(ctx context.Context, q querier, prev *placement.Map) (*placement.Map, error) {
	var v int64
	if err := q.QueryRow(ctx, `SELECT version FROM pgtenant.map_version`).Scan(&v); err != nil {
		if isUndefinedTable(err) {
			return nil, ErrNotInitialized
		}
		return nil, err
	}
	if prev != nil && v == prev.Version {
		return prev, nil
	}
	if prev != nil && v > prev.Version {
		m, ok, err := c.applyChanges(ctx, q, prev, v)
		if err != nil || ok {
			return m, err
		}
	}
	m := &placement.Map{Version: v, Directory: c.tenants()}
	shards, err := listShards(ctx, q)
	if err != nil {
		return nil, err
	}
	m.Shards = shards
	if m.Nodes, err = c.loadNodes(ctx, q); err != nil {
		return nil, err
	}
	return m, nil
}

// applyChanges builds the map at version v from prev and the change log; ok
// is false when the log cannot (the caller then reads the whole map).
func (c *Catalog) applyChanges(ctx context.Context, q querier, prev *placement.Map, v int64) (*placement.Map, bool, error) {
	rows, err := q.Query(ctx, `SELECT version, kind, coalesce(shards, '{}') FROM pgtenant.map_changes
		WHERE version > $1 AND version <= $2 ORDER BY version`, prev.Version, v)
	if err != nil {
		if isUndefinedTable(err) {
			return nil, false, nil
		}
		return nil, false, err
	}
	var (
		n       int64
		ver     int64
		kind    string
		ids     []int32
		changed = map[int32]bool{}
		nodes   bool
		all     bool
	)
	if _, err := pgx.ForEachRow(rows, []any{&ver, &kind, &ids}, func() error {
		n++
		switch kind {
		case "shards":
			for _, id := range ids {
				changed[id] = true
			}
		case "nodes":
			nodes = true
		case "users":
		default:
			all = true
		}
		return nil
	}); err != nil {
		return nil, false, err
	}
	if all || n != v-prev.Version {
		return nil, false, nil
	}
	m := &placement.Map{Version: v, Shards: prev.Shards, Nodes: prev.Nodes, Directory: prev.Directory, Tenants: prev.Tenants}
	if len(changed) > 0 {
		want := make([]int32, 0, len(changed))
		for id := range changed {
			want = append(want, id)
		}
		rows, err := q.Query(ctx, `SELECT id, schema_name, node, state, epoch FROM pgtenant.shards WHERE id = ANY($1)`, want)
		if err != nil {
			return nil, false, err
		}
		got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (placement.Shard, error) {
			var s placement.Shard
			err := r.Scan(&s.ID, &s.Schema, &s.Node, &s.State, &s.Epoch)
			return s, err
		})
		if err != nil {
			return nil, false, err
		}
		if len(got) != len(want) {
			return nil, false, nil // a shard was deleted: read them all
		}
		m.Shards = slices.Clone(prev.Shards)
		for _, s := range got {
			if s.ID < 0 || s.ID >= len(m.Shards) || m.Shards[s.ID].ID != s.ID {
				return nil, false, nil // a shard was added: read them all
			}
			m.Shards[s.ID] = s
		}
	}
	if nodes {
		if m.Nodes, err = c.loadNodes(ctx, q); err != nil {
			return nil, false, err
		}
	}
	return m, true, nil
}

// loadNodes reads every node, with its DSN's secrets resolved.
func (c *Catalog) loadNodes(ctx context.Context, q querier) (map[string]placement.Node, error) {
	rows, err := q.Query(ctx, `SELECT name, dsn FROM pgtenant.nodes`)
	if err != nil {
		return nil, err
	}
	nodes := map[string]placement.Node{}
	var name, dsn string
	if _, err := pgx.ForEachRow(rows, []any{&name, &dsn}, func() error {
		nodes[name] = placement.Node{Name: name, DSN: dsn}
		return nil
	}); err != nil {
		return nil, err
	}
	c.resolveNodes(nodes)
	return nodes, nil
}
