package importer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/move"
	"github.com/pgtenant/pgtenant/internal/stream"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// queuePosTable on each node records how far the queue is applied there: every
// transaction visible in prev_snapshot is applied; while a round is under
// way, those visible in cur_snapshot and not in prev_snapshot with a queue id
// up to last_id too (the move's pgtenant_move.applied, one row per node).
const queuePosTable = "pgtenant_stream.import_queue"

const queuePosDDL = `CREATE TABLE IF NOT EXISTS ` + queuePosTable + ` (one boolean PRIMARY KEY DEFAULT true CHECK (one),
  prev_snapshot text NOT NULL, cur_snapshot text, last_id bigint NOT NULL DEFAULT 0, applied bigint NOT NULL DEFAULT 0,
  at timestamptz NOT NULL DEFAULT clock_timestamp())`

// queueBatch is how many queue entries one node transaction applies at most.
const queueBatch = 1000

// snapshot is a parsed pg_snapshot (xmin:xmax:xip,...).
type snapshot struct {
	xmin, xmax uint64
	xip        map[uint64]bool
}

func parseSnapshot(s string) (snapshot, error) {
	parts := strings.SplitN(s, ":", 3)
	if len(parts) != 3 {
		return snapshot{}, fmt.Errorf("not a snapshot: %q", s)
	}
	var sn snapshot
	var err error
	if sn.xmin, err = strconv.ParseUint(parts[0], 10, 64); err != nil {
		return sn, fmt.Errorf("snapshot %q: %w", s, err)
	}
	if sn.xmax, err = strconv.ParseUint(parts[1], 10, 64); err != nil {
		return sn, fmt.Errorf("snapshot %q: %w", s, err)
	}
	sn.xip = map[uint64]bool{}
	if parts[2] != "" {
		for _, x := range strings.Split(parts[2], ",") {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return sn, fmt.Errorf("snapshot %q: %w", s, err)
			}
			sn.xip[v] = true
		}
	}
	return sn, nil
}

// visible is pg_visible_in_snapshot for a committed transaction's xid.
func (s snapshot) visible(xid uint64) bool {
	return xid < s.xmin || (xid < s.xmax && !s.xip[xid])
}

// qnode is one node the queue is applied to.
type qnode struct {
	name      string
	conn      *pgx.Conn
	prev, cur string
	last      int64
	// only, when set, limits the node to these tables (a resumed copy
	// brings the tables complete there to its new snapshot); markers are
	// then not applied.
	only map[string]bool
}

// qshard is what the queue applier needs of a shard.
type qshard struct {
	schema, node, state string
	// skip, when set: changes of transactions visible in it are on the
	// node already (the shard was rolled back at that legacy snapshot).
	skip *snapshot
}

// qapplier applies the legacy database's change queue to the shards.
type qapplier struct {
	im      *Importer
	legacy  *pgx.Conn // reads the queue
	tables  map[string]*trigTable
	nodes   map[string]*qnode
	tenants map[string]int
	shards  map[int]qshard
	version int64
	parents map[[2]string]string // (parent table, referenced value) → tenant
	log     *slog.Logger
	// rejected are the rows (table, key) whose change was rejected and not
	// resolved yet (trigger_reject.go); nil until loaded.
	rejected map[[2]string]bool

	TenantChanges, Skipped, Applied, Rejected atomic.Int64
}

func (im *Importer) newQApplier(legacy *pgx.Conn, ts map[string]*trigTable) *qapplier {
	return &qapplier{im: im, legacy: legacy, tables: ts, nodes: map[string]*qnode{}, parents: map[[2]string]string{}, log: im.logger}
}

func (a *qapplier) close() {
	for _, n := range a.nodes {
		if n.conn != nil {
			n.conn.Close(context.Background())
		}
	}
}

// openNode connects to a node (session_replication_role = replica where
// the role may: the changes' triggers and foreign keys ran on the legacy
// database), creates its position table and reads its position.
func (a *qapplier) openNode(ctx context.Context, name, dsn string) (*qnode, bool, error) {
	conn, err := connect(ctx, dsn)
	if err != nil {
		return nil, false, fmt.Errorf("connect to node %s: %w", name, err)
	}
	if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "42501" {
			conn.Close(context.Background())
			return nil, false, fmt.Errorf("node %s: %w", name, err)
		}
	}
	n := &qnode{name: name, conn: conn}
	a.nodes[name] = n
	if err := stream.EnsurePositionTable(ctx, conn); err != nil {
		return nil, false, fmt.Errorf("node %s: %w", name, err)
	}
	if _, err := conn.Exec(ctx, queuePosDDL+`; CREATE TABLE IF NOT EXISTS `+nodeMarkers+` (shard int NOT NULL, seq bigint NOT NULL, at timestamptz, PRIMARY KEY (shard, seq))`); err != nil {
		return nil, false, fmt.Errorf("node %s: create %s: %w", name, queuePosTable, err)
	}
	var cur *string
	err = conn.QueryRow(ctx, `SELECT prev_snapshot, cur_snapshot, last_id FROM `+queuePosTable).Scan(&n.prev, &cur, &n.last)
	if errors.Is(err, pgx.ErrNoRows) {
		return n, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("node %s: read %s: %w", name, queuePosTable, err)
	}
	n.cur = deref(cur)
	return n, true, nil
}

// setPosition records on n that every transaction visible in snap is applied.
func setPosition(ctx context.Context, n *qnode, snap string) error {
	if _, err := n.conn.Exec(ctx, `INSERT INTO `+queuePosTable+` (prev_snapshot) VALUES ($1)
		ON CONFLICT (one) DO UPDATE SET prev_snapshot = excluded.prev_snapshot, cur_snapshot = NULL, last_id = 0, at = clock_timestamp()`, snap); err != nil {
		return fmt.Errorf("node %s: record the queue position: %w", n.name, err)
	}
	n.prev, n.cur, n.last = snap, "", 0
	return nil
}

// reload reads the shards' routes again when the map version changed.
func (a *qapplier) reload(ctx context.Context) error {
	v, err := a.im.cat.MapVersion(ctx)
	if err != nil {
		return err
	}
	if a.shards != nil && v == a.version {
		return nil
	}
	rows, err := a.im.cat.Pool().Query(ctx, `SELECT s.id, s.schema_name, s.node, i.state, i.copy_snapshot::text
		FROM pgtenant.import_shards i JOIN pgtenant.shards s ON s.id = i.shard`)
	if err != nil {
		return fmt.Errorf("read import shards: %w", err)
	}
	m := map[int]qshard{}
	var id int
	var s qshard
	var skip *string
	if _, err := pgx.ForEachRow(rows, []any{&id, &s.schema, &s.node, &s.state, &skip}, func() error {
		s.skip = nil
		if skip != nil {
			sn, err := parseSnapshot(*skip)
			if err != nil {
				return err
			}
			s.skip = &sn
		}
		m[id] = s
		return nil
	}); err != nil {
		return fmt.Errorf("read import shards: %w", err)
	}
	a.shards, a.version = m, v
	return nil
}

func (a *qapplier) reloadTenants(ctx context.Context) error {
	m, err := a.im.tenantShards(ctx)
	if err != nil {
		return err
	}
	a.tenants = m
	return nil
}

// entry is one row of the queue.
type entry struct {
	id       int64
	xid      uint64
	table    string
	op       string
	old, new *string
}

// stmt is one statement for a node.
type stmt struct {
	sql  string
	args []any
}

// round applies the queue's transactions visible in snapshot n and not in
// the nodes' prev (all nodes share it), in id order, in batches, each batch
// in one transaction per node that records the node's position. A node
// whose cur is n resumes after its last id. When nothing is to be applied
// and record is set, the nodes' position becomes n all the same. It returns
// the entries applied.
func (a *qapplier) round(ctx context.Context, nodes []*qnode, n string, record bool) (int, error) {
	p := nodes[0].prev
	last := int64(-1)
	for _, nd := range nodes {
		if nd.cur == n && (last < 0 || nd.last < last) {
			last = nd.last
		}
	}
	if last < 0 {
		var lo *int64
		if err := a.legacy.QueryRow(ctx, `SELECT min(id) FROM `+queueTable+` WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot)
			AND pg_visible_in_snapshot(xid, $2::text::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)`, p, n).Scan(&lo); err != nil {
			return 0, queueErr(fmt.Errorf("read the change queue: %w", err))
		}
		if lo == nil {
			if record {
				for _, nd := range nodes {
					if err := setPosition(ctx, nd, n); err != nil {
						return 0, err
					}
				}
			}
			return 0, nil
		}
		last = *lo - 1
	}
	if err := a.reload(ctx); err != nil {
		return 0, err
	}
	byName := map[string]*qnode{}
	for _, nd := range nodes {
		byName[nd.name] = nd
	}
	total := 0
	for {
		rows, err := a.legacy.Query(ctx, `SELECT id, xid::text::bigint, tbl, op::text, old, new FROM `+queueTable+` WHERE id > $3
			AND xid >= pg_snapshot_xmin($1::text::pg_snapshot)
			AND pg_visible_in_snapshot(xid, $2::text::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)
			ORDER BY id LIMIT $4`, p, n, last, queueBatch)
		if err != nil {
			return total, queueErr(fmt.Errorf("read the change queue: %w", err))
		}
		entries, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (entry, error) {
			var e entry
			var xid int64
			err := r.Scan(&e.id, &xid, &e.table, &e.op, &e.old, &e.new)
			e.xid = uint64(xid)
			return e, err
		})
		if err != nil {
			return total, queueErr(fmt.Errorf("read the change queue: %w", err))
		}
		done := len(entries) < queueBatch
		per := map[string][]stmt{}
		for _, e := range entries {
			if err := a.route(ctx, e, byName, per); err != nil {
				return total, err
			}
		}
		if len(entries) > 0 {
			last = entries[len(entries)-1].id
		}
		for _, nd := range nodes {
			if err := a.commit(ctx, nd, per[nd.name], p, n, last, done); err != nil {
				return total, err
			}
		}
		total += len(entries)
		a.Applied.Add(int64(len(entries)))
		if done {
			return total, nil
		}
	}
}

// commit applies one batch's statements on node nd with its position.
func (a *qapplier) commit(ctx context.Context, nd *qnode, ss []stmt, p, n string, last int64, done bool) error {
	err := pgx.BeginFunc(ctx, nd.conn, func(tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(`SET LOCAL synchronous_commit = on`)
		b.Queue(`SET CONSTRAINTS ALL DEFERRED`)
		for _, s := range ss {
			b.Queue(s.sql, s.args...)
		}
		if done {
			b.Queue(`INSERT INTO `+queuePosTable+` (prev_snapshot, applied) VALUES ($1, $2) ON CONFLICT (one) DO UPDATE
				SET prev_snapshot = excluded.prev_snapshot, cur_snapshot = NULL, last_id = 0, applied = `+queuePosTable+`.applied + $2, at = clock_timestamp()`, n, len(ss))
		} else {
			b.Queue(`INSERT INTO `+queuePosTable+` (prev_snapshot, cur_snapshot, last_id, applied) VALUES ($1, $2, $3, $4) ON CONFLICT (one) DO UPDATE
				SET prev_snapshot = excluded.prev_snapshot, cur_snapshot = excluded.cur_snapshot, last_id = excluded.last_id,
				applied = `+queuePosTable+`.applied + $4, at = clock_timestamp()`, p, n, last, len(ss))
		}
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return fmt.Errorf("apply queued changes to node %s: %w", nd.name, err)
	}
	if done {
		nd.prev, nd.cur, nd.last = n, "", 0
	} else {
		nd.prev, nd.cur, nd.last = p, n, last
	}
	return nil
}

// route adds the statements of queue entry e to the nodes' lists.
func (a *qapplier) route(ctx context.Context, e entry, byName map[string]*qnode, per map[string][]stmt) error {
	take := func(node string) *qnode {
		nd := byName[node]
		if nd == nil || (nd.cur != "" && e.id <= nd.last) {
			return nil
		}
		return nd
	}
	if e.op == "M" {
		return a.routeMarker(e, take, per)
	}
	t := a.tables[e.table]
	if t == nil {
		return fmt.Errorf("queued change %d is for table %s, which has no tenant rule", e.id, e.table)
	}
	img := e.new
	if e.op == "D" {
		img = e.old
	}
	if img == nil {
		return fmt.Errorf("queued change %d of %s: malformed (op %q without its row)", e.id, e.table, e.op)
	}
	fields, err := parseRecord(*img)
	if err != nil {
		return fmt.Errorf("queued change %d of %s: %w", e.id, e.table, err)
	}
	if err := a.loadRejects(ctx); err != nil {
		return err
	}
	tenant, terr := a.tenantOf(ctx, t, fields)
	if terr != nil && !errors.Is(terr, errNoTenant) {
		return fmt.Errorf("queued change %d of %s: %w", e.id, e.table, terr)
	}
	add := func(tenant, sql, img string) error {
		if tenant == "" {
			a.Skipped.Add(1) // a child whose parent no shard holds
			return nil
		}
		shard, ok := a.tenants[tenant]
		if !ok {
			if err := a.reloadTenants(ctx); err != nil {
				return err
			}
			if shard, ok = a.tenants[tenant]; !ok {
				return &UnregisteredTenantError{Table: e.table, Tenant: tenant}
			}
		}
		s := a.shards[shard]
		nd := take(s.node)
		if nd == nil || (nd.only != nil && !nd.only[e.table]) || (s.skip != nil && s.skip.visible(e.xid)) {
			a.Skipped.Add(1)
			return nil
		}
		if nd.only == nil && s.state == ShardCutover {
			a.log.Warn("import: a write on the legacy database for a shard already cut over is not applied", "shard", shard, "table", e.table, "change", e.id)
			a.Skipped.Add(1)
			return nil
		}
		per[nd.name] = append(per[nd.name], stmt{sql: sqlFor(s.schema, t, sql), args: []any{img}})
		return nil
	}
	// upsert writes the new row image to its tenant's shard, rejects it
	// (as the logical stream does) when the row has no tenant or one not
	// registered, and resolves an earlier reject of the row once it lands.
	upsert := func(was bool, before []*string) error {
		if terr != nil {
			return a.reject(ctx, e, t, fields, was, before, tenant, terr.Error())
		}
		for col, i := range t.refs { // children find their tenant here (as the logical stream's remember)
			if i < len(fields) && fields[i] != nil {
				a.parents[[2]string{t.rule.Name, *fields[i] + "\x00" + col}] = tenant
			}
		}
		if err := add(tenant, "U", *e.new); err != nil {
			if u := (*UnregisteredTenantError)(nil); errors.As(err, &u) {
				return a.reject(ctx, e, t, fields, was, before, tenant, fmt.Sprintf("tenant %q is not registered", tenant))
			}
			return err
		}
		if was {
			return a.resolve(ctx, e, t, before, fmt.Sprintf("applied to tenant %q", tenant))
		}
		return nil
	}
	switch e.op {
	case "D":
		if a.wasRejected(t, fields) { // no shard holds the row
			a.Skipped.Add(1)
			return a.resolve(ctx, e, t, fields, "the row was deleted on the legacy database")
		}
		if terr != nil {
			a.Skipped.Add(1)
			return nil
		}
		return add(tenant, "D", *e.old)
	case "I":
		return upsert(false, fields)
	case "U":
		before := fields
		if e.old != nil {
			of, err := parseRecord(*e.old)
			if err != nil {
				return fmt.Errorf("queued change %d of %s: %w", e.id, e.table, err)
			}
			before = of
		}
		was := a.wasRejected(t, before)
		if e.old != nil && !was {
			old, err := a.tenantOf(ctx, t, before)
			if err != nil && !errors.Is(err, errNoTenant) {
				return fmt.Errorf("queued change %d of %s: %w", e.id, e.table, err)
			}
			if err == nil {
				if old != tenant {
					a.TenantChanges.Add(1)
					a.log.Warn("import: an update moved a row to another tenant", "table", e.table, "from", old, "to", tenant, "change", e.id)
				}
				if err := add(old, "D", *e.old); err != nil {
					return err
				}
			}
		}
		return upsert(was, before)
	}
	return fmt.Errorf("queued change %d: unknown op %q", e.id, e.op)
}

// sqlFor is the upsert ("U") or delete ("D") by row image of t in schema.
func sqlFor(schema string, t *trigTable, op string) string {
	if op == "D" {
		return move.DeleteRowSQL(schema, t.rule.Name, t.key)
	}
	return move.UpsertRowSQL(schema, t.rule.Name, t.key, t.cols)
}

// routeMarker adds a cutover marker to its shard's node.
func (a *qapplier) routeMarker(e entry, take func(string) *qnode, per map[string][]stmt) error {
	if e.new == nil {
		return nil
	}
	f, err := parseRecord(*e.new)
	if err != nil || len(f) < 3 || f[0] == nil || f[1] == nil {
		return fmt.Errorf("queued marker %d: malformed %q", e.id, deref(e.new))
	}
	shard, err1 := strconv.Atoi(*f[0])
	seq, err2 := strconv.ParseInt(*f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("queued marker %d: malformed %q", e.id, *e.new)
	}
	s, ok := a.shards[shard]
	if !ok { // a verify's or a catch-up's marker of the logical method
		return nil
	}
	nd := take(s.node)
	if nd == nil || nd.only != nil {
		return nil
	}
	per[nd.name] = append(per[nd.name], stmt{sql: `INSERT INTO ` + nodeMarkers + ` (shard, seq, at) VALUES ($1, $2, $3::text::timestamptz) ON CONFLICT DO NOTHING`,
		args: []any{shard, seq, f[2]}})
	return nil
}

// tenantOf finds the tenant of a row image of t: its tenant column, or
// for a child its parent's (remembered, else looked up on the nodes). A
// row without a tenant is errNoTenant (wrapped), as for the logical
// stream; a child of a rejected parent row a ChildRejectError.
func (a *qapplier) tenantOf(ctx context.Context, t *trigTable, fields []*string) (string, error) {
	if t.route >= len(fields) {
		return "", fmt.Errorf("the row image has %d fields, the table %d columns (was the legacy table altered during the import?)", len(fields), len(t.all))
	}
	v := fields[t.route]
	if t.rule.Kind == tables.KindTenant {
		if v == nil {
			return "", fmt.Errorf("table %s: %w (column %s is NULL)", t.rule.Name, errNoTenant, t.rule.TenantColumn)
		}
		return *v, nil
	}
	if v == nil {
		return "", fmt.Errorf("table %s: %w (column %s is NULL)", t.rule.Name, errNoTenant, t.rule.ParentKey)
	}
	parent := a.tables[t.rule.Parent]
	if parent == nil {
		return "", fmt.Errorf("child table %s: its parent %s has no tenant rule", t.rule.Name, t.rule.Parent)
	}
	if tenant, ok := a.parents[[2]string{parent.rule.Name, *v + "\x00" + t.rule.ParentColumn}]; ok {
		return tenant, nil
	}
	schemas := map[string][]string{}
	for _, s := range a.shards {
		schemas[s.node] = append(schemas[s.node], s.schema)
	}
	for node, list := range schemas {
		nd := a.nodes[node]
		if nd == nil {
			continue
		}
		parts := make([]string, len(list))
		for i, sc := range list {
			parts[i] = fmt.Sprintf("SELECT %s::text FROM %s WHERE %s::text = $1", pgx.Identifier{parent.rule.TenantColumn}.Sanitize(),
				pgx.Identifier{sc, parent.rule.Name}.Sanitize(), pgx.Identifier{t.rule.ParentColumn}.Sanitize())
		}
		var tenant string
		err := nd.conn.QueryRow(ctx, strings.Join(parts, " UNION ALL ")+" LIMIT 1", *v).Scan(&tenant)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("find the tenant of %s %s on node %s: %w", parent.rule.Name, *v, node, err)
		}
		a.parents[[2]string{parent.rule.Name, *v + "\x00" + t.rule.ParentColumn}] = tenant
		return tenant, nil
	}
	return a.im.rejectedParent(ctx, a.rejected, t.rule, *v) // a parent rejected: the child is rejected too
}

// catchUpNode brings node nd to snapshot target: it finishes the round under
// way, then applies one round up to target (limited to nd.only when set),
// and records target as its position.
func (a *qapplier) catchUpNode(ctx context.Context, nd *qnode, target string) (int, error) {
	n := 0
	if nd.cur != "" {
		k, err := a.round(ctx, []*qnode{nd}, nd.cur, true)
		if err != nil {
			return k, err
		}
		n += k
	}
	if nd.prev == target {
		return n, nil
	}
	k, err := a.round(ctx, []*qnode{nd}, target, true)
	return n + k, err
}

// queueErr marks a missing queue (dropped by import finish) as errQueueGone.
func queueErr(err error) error {
	var pe *pgconn.PgError
	if errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "3F000") {
		return errors.Join(errQueueGone, err)
	}
	return err
}
