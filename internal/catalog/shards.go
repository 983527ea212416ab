package catalog

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// ShardInfo is a shard with its usage.
type ShardInfo struct {
	placement.Shard
	Bytes   int64 // total size of the schema's tables and indexes; -1 when the node is unreachable
	Tenants int
}

// CreateShards creates every shard that does not exist yet: its schema on a
// node and its catalog row. New shards go to the nodes holding the fewest
// shards, so a fresh catalog spreads them evenly; once all shards exist, a node
// added later gets shards only by moving them. It returns the shards created.
func (c *Catalog) CreateShards(ctx context.Context) ([]placement.Shard, error) {
	count, err := c.ShardCount(ctx)
	if err != nil {
		return nil, err
	}
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	if len(nodes) == 0 {
		return nil, ErrNoNodes
	}
	existing := map[int]bool{}
	rows, err := c.pool.Query(ctx, `SELECT id FROM pgtenant.shards`)
	if err != nil {
		return nil, fmt.Errorf("list shards: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return nil, fmt.Errorf("list shards: %w", err)
	}
	for _, id := range ids {
		existing[int(id)] = true
	}
	var created []placement.Shard
	for id := 0; id < count; id++ {
		if existing[id] {
			continue
		}
		sort.Slice(nodes, func(i, j int) bool {
			if nodes[i].Shards != nodes[j].Shards {
				return nodes[i].Shards < nodes[j].Shards
			}
			return nodes[i].Name < nodes[j].Name
		})
		n := &nodes[0]
		n.Shards++
		created = append(created, placement.Shard{ID: id, Schema: placement.SchemaName(id), Node: n.Name, State: placement.StateActive})
	}
	if len(created) == 0 {
		return nil, nil
	}
	byNode := map[string][]placement.Shard{}
	for _, s := range created {
		byNode[s.Node] = append(byNode[s.Node], s)
	}
	for _, n := range nodes {
		dsn, err := c.resolve(n.DSN)
		if err == nil {
			err = createSchemas(ctx, dsn, byNode[n.Name])
		}
		if err != nil {
			err = fmt.Errorf("create shards on node %s: %w", n.Name, err)
			c.logOp(ctx, "shard create", map[string]any{"node": n.Name}, err)
			return nil, err
		}
	}
	err = pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		for _, s := range created {
			if _, err := tx.Exec(ctx, `INSERT INTO pgtenant.shards (id, schema_name, node) VALUES ($1, $2, $3)`, s.ID, s.Schema, s.Node); err != nil {
				return fmt.Errorf("record shard %d: %w", s.ID, err)
			}
		}
		return nil
	})
	c.logOp(ctx, "shard create", map[string]any{"created": len(created)}, err)
	if err != nil {
		return nil, err
	}
	c.logger.Info("shards created", "count", len(created))
	return created, nil
}

func createSchemas(ctx context.Context, dsn string, shards []placement.Shard) error {
	if len(shards) == 0 {
		return nil
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	batch := &pgx.Batch{}
	for _, s := range shards {
		batch.Queue("CREATE SCHEMA IF NOT EXISTS " + pgx.Identifier{s.Schema}.Sanitize())
	}
	return conn.SendBatch(ctx, batch).Close()
}

// Shards lists every shard, in id order.
func (c *Catalog) Shards(ctx context.Context) ([]placement.Shard, error) {
	return listShards(ctx, c.pool)
}

func listShards(ctx context.Context, q querier) ([]placement.Shard, error) {
	rows, err := q.Query(ctx, `SELECT id, schema_name, node, state, epoch FROM pgtenant.shards ORDER BY id`)
	if err != nil {
		if isUndefinedTable(err) {
			return nil, ErrNotInitialized
		}
		return nil, fmt.Errorf("list shards: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (placement.Shard, error) {
		var s placement.Shard
		err := r.Scan(&s.ID, &s.Schema, &s.Node, &s.State, &s.Epoch)
		return s, err
	})
}

// ShardStats lists every shard with its size in bytes (asked of its node) and
// its tenant count. An unreachable node's shards report Bytes = -1 and the
// error is returned alongside the list.
func (c *Catalog) ShardStats(ctx context.Context) ([]ShardInfo, error) {
	shards, err := c.Shards(ctx)
	if err != nil {
		return nil, err
	}
	counts := map[int]int{}
	rows, err := c.pool.Query(ctx, `SELECT shard, count(*)::int FROM pgtenant.tenants GROUP BY shard`)
	if err != nil {
		return nil, fmt.Errorf("count tenants: %w", err)
	}
	var id, n int
	if _, err := pgx.ForEachRow(rows, []any{&id, &n}, func() error { counts[id] = n; return nil }); err != nil {
		return nil, fmt.Errorf("count tenants: %w", err)
	}
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	sizes := map[string]int64{}
	var errs []error
	for _, node := range nodes {
		dsn, err := c.resolve(node.DSN)
		var s map[string]int64
		if err == nil {
			s, err = schemaSizes(ctx, dsn)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", node.Name, err))
			continue
		}
		for k, v := range s {
			sizes[node.Name+"/"+k] = v
		}
	}
	out := make([]ShardInfo, len(shards))
	for i, s := range shards {
		b, ok := sizes[s.Node+"/"+s.Schema]
		if !ok {
			b = -1
		}
		out[i] = ShardInfo{Shard: s, Bytes: b, Tenants: counts[s.ID]}
	}
	return out, errors.Join(errs...)
}

func schemaSizes(ctx context.Context, dsn string) (map[string]int64, error) {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	rows, err := conn.Query(ctx, `SELECT n.nspname, coalesce(sum(pg_total_relation_size(c.oid)) FILTER (WHERE c.relkind IN ('r', 'm')), 0)::bigint
		FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid
		WHERE n.nspname LIKE 'shard\_%' GROUP BY n.nspname`)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	var name string
	var size int64
	_, err = pgx.ForEachRow(rows, []any{&name, &size}, func() error { out[name] = size; return nil })
	return out, err
}

// LoadMap reads a consistent snapshot of the whole placement map.
func (c *Catalog) LoadMap(ctx context.Context) (*placement.Map, error) {
	var m *placement.Map
	err := pgx.BeginTxFunc(ctx, c.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var err error
		m, err = loadMap(ctx, tx)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("load map: %w", err)
	}
	c.resolveMap(m)
	return m, nil
}

func loadMap(ctx context.Context, q querier) (*placement.Map, error) {
	m := &placement.Map{Nodes: map[string]placement.Node{}, Tenants: map[string]int{}}
	if err := q.QueryRow(ctx, `SELECT version FROM pgtenant.map_version`).Scan(&m.Version); err != nil {
		if isUndefinedTable(err) {
			return nil, ErrNotInitialized
		}
		return nil, err
	}
	shards, err := listShards(ctx, q)
	if err != nil {
		return nil, err
	}
	m.Shards = shards
	if err := applyImports(ctx, q, m); err != nil {
		return nil, err
	}
	rows, err := q.Query(ctx, `SELECT name, dsn FROM pgtenant.nodes`)
	if err != nil {
		return nil, err
	}
	var name, dsn string
	if _, err := pgx.ForEachRow(rows, []any{&name, &dsn}, func() error {
		m.Nodes[name] = placement.Node{Name: name, DSN: dsn}
		return nil
	}); err != nil {
		return nil, err
	}
	rows, err = q.Query(ctx, `SELECT id, shard FROM pgtenant.tenants`)
	if err != nil {
		return nil, err
	}
	var tenant string
	var shard int
	if _, err := pgx.ForEachRow(rows, []any{&tenant, &shard}, func() error {
		m.Tenants[tenant] = shard
		return nil
	}); err != nil {
		return nil, err
	}
	return m, nil
}

// MapVersion returns the current map version.
func (c *Catalog) MapVersion(ctx context.Context) (int64, error) {
	var v int64
	if err := c.pool.QueryRow(ctx, `SELECT version FROM pgtenant.map_version`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read map version: %w", err)
	}
	return v, nil
}
