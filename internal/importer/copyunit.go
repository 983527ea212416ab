package importer

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/stream"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// copyProgressTable on each node records the tables complete there (every
// range committed) with the consistent point of the snapshot their rows
// are at. `import finish` drops it.
const copyProgressTable = "pgtenant_stream.import_copy"

// copyState is what every worker of a Start shares: the shards, the
// tenants' shards, and per node what is complete.
type copyState struct {
	legacySchema string
	shards       map[int]ShardProgress
	tenants      map[string]int
	nodes        map[string]*copyNode
	// limit is the bytes a shard's buffer holds before it is written.
	limit int
	// copySQL per table and shard: the COPY FROM of the shard's table.
	copySQL map[string]map[int]string
	// ap is the import's schema-per-tenant shape (nil: one schema).
	ap *apartment
}

type copyNode struct {
	name, dsn string
	conn      *pgx.Conn
	schemas   []string
	shards    int
	// complete: table → the consistent point its rows are at.
	complete map[string]string
}

func (im *Importer) newCopyState(ctx context.Context, imp *Import, order []copyTable) (*copyState, error) {
	all, err := im.shards(ctx)
	if err != nil {
		return nil, err
	}
	cs := &copyState{legacySchema: imp.LegacySchema, shards: map[int]ShardProgress{}, nodes: map[string]*copyNode{}, copySQL: map[string]map[int]string{}}
	if cs.tenants, err = im.tenantShards(ctx); err != nil {
		return nil, err
	}
	for _, s := range all {
		cs.shards[s.Shard] = s
		n := cs.nodes[s.Node]
		if n == nil {
			n = &copyNode{name: s.Node, dsn: s.NodeDSN, complete: map[string]string{}}
			cs.nodes[s.Node] = n
		}
		n.schemas = append(n.schemas, s.Schema)
		n.shards++
	}
	// A shard's buffer: 16 MB over every shard, between 32 kB and 1 MB.
	cs.limit = min(max((16<<20)/max(len(all), 1), 32<<10), 1<<20)
	if cs.ap, err = im.apartmentOf(ctx); err != nil {
		return nil, err
	}
	for _, t := range order {
		quoted := make([]string, 0, len(t.cols)+1)
		if cs.ap != nil {
			quoted = append(quoted, pgx.Identifier{cs.ap.column}.Sanitize()) // the shard's tenant column first
		}
		for _, c := range t.cols {
			quoted = append(quoted, pgx.Identifier{c}.Sanitize())
		}
		m := map[int]string{}
		for _, s := range all {
			m[s.Shard] = "COPY " + pgx.Identifier{s.Schema, t.rule.Name}.Sanitize() + " (" + strings.Join(quoted, ", ") + ") FROM STDIN (FORMAT binary)"
		}
		cs.copySQL[t.rule.Name] = m
	}
	for _, n := range cs.nodes {
		if n.conn, err = connect(ctx, n.dsn); err != nil {
			cs.close()
			return nil, fmt.Errorf("connect to node %s: %w", n.name, err)
		}
		if err := stream.EnsurePositionTable(ctx, n.conn); err != nil {
			cs.close()
			return nil, fmt.Errorf("node %s: %w", n.name, err)
		}
		if _, err := n.conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+copyProgressTable+` (tbl text PRIMARY KEY, copy_lsn pg_lsn NOT NULL, at timestamptz NOT NULL DEFAULT now())`); err != nil {
			cs.close()
			return nil, fmt.Errorf("node %s: create %s: %w", n.name, copyProgressTable, err)
		}
		if err := ensureDeferredIndexTable(ctx, n.conn); err != nil {
			cs.close()
			return nil, fmt.Errorf("node %s: %w", n.name, err)
		}
		rows, err := n.conn.Query(ctx, `SELECT tbl, copy_lsn::text FROM `+copyProgressTable)
		if err != nil {
			cs.close()
			return nil, fmt.Errorf("node %s: read %s: %w", n.name, copyProgressTable, err)
		}
		var tbl, lsn string
		if _, err := pgx.ForEachRow(rows, []any{&tbl, &lsn}, func() error { n.complete[tbl] = lsn; return nil }); err != nil {
			cs.close()
			return nil, fmt.Errorf("node %s: read %s: %w", n.name, copyProgressTable, err)
		}
	}
	return cs, nil
}

func (cs *copyState) close() {
	for _, n := range cs.nodes {
		if n.conn != nil {
			n.conn.Close(context.Background())
			n.conn = nil
		}
	}
}

func (cs *copyState) completeEverywhere(table string) bool {
	for _, n := range cs.nodes {
		if _, ok := n.complete[table]; !ok {
			return false
		}
	}
	return true
}

// incomplete returns the nodes where table is not complete.
func (cs *copyState) incomplete(table string) map[string]bool {
	nodes := map[string]bool{}
	for _, n := range cs.nodes {
		if _, ok := n.complete[table]; !ok {
			nodes[n.name] = true
		}
	}
	return nodes
}

func (cs *copyState) anyComplete() bool {
	for _, n := range cs.nodes {
		if len(n.complete) > 0 {
			return true
		}
	}
	return false
}

// emptyIncomplete empties, on every node, the shard tables of the tables
// not complete there (rows of a killed run's units), in one TRUNCATE per
// node when any has rows. Tables referencing an incomplete table are
// incomplete too (they come after it), so the TRUNCATE names them all.
func (cs *copyState) emptyIncomplete(ctx context.Context, order []copyTable) error {
	for _, n := range cs.nodes {
		var names []string
		for _, t := range order {
			if _, ok := n.complete[t.rule.Name]; ok {
				continue
			}
			for _, sc := range n.schemas {
				names = append(names, pgx.Identifier{sc, t.rule.Name}.Sanitize())
			}
		}
		if len(names) == 0 {
			continue
		}
		probe := make([]string, len(names))
		for i, nm := range names {
			probe[i] = "EXISTS (SELECT FROM " + nm + ")"
		}
		var dirty bool
		if err := n.conn.QueryRow(ctx, "SELECT "+strings.Join(probe, " OR ")).Scan(&dirty); err != nil {
			return fmt.Errorf("node %s: read the shards' tables (has `pgtenant migrate up` applied the baseline?): %w", n.name, err)
		}
		if dirty {
			if _, err := n.conn.Exec(ctx, "TRUNCATE "+strings.Join(names, ", ")); err != nil {
				return fmt.Errorf("node %s: empty the incomplete tables: %w", n.name, err)
			}
		}
	}
	return nil
}

// markComplete records table complete, at the snapshot's point lsn, on
// the nodes it was copied to.
func (cs *copyState) markComplete(ctx context.Context, table, lsn string) error {
	for _, n := range cs.nodes {
		if _, ok := n.complete[table]; ok {
			continue
		}
		if _, err := n.conn.Exec(ctx, `INSERT INTO `+copyProgressTable+` (tbl, copy_lsn) VALUES ($1, $2::pg_lsn)
			ON CONFLICT (tbl) DO UPDATE SET copy_lsn = excluded.copy_lsn, at = now()`, table, lsn); err != nil {
			return fmt.Errorf("node %s: record table %s complete: %w", n.name, table, err)
		}
		n.complete[table] = lsn
	}
	return nil
}

// copyUnit is a range of heap blocks of one legacy table [from, to) (to
// -1: to the end), copied to the shards of nodes.
type copyUnit struct {
	table    *copyTable
	index    int
	from, to int64
	// est is the blocks the unit reads (for progress).
	est   int64
	nodes map[string]bool
	query string
	// parent is a child table's parent rule (to name rows without a tenant).
	parent tables.Table
}

func (u copyUnit) blocks() string {
	if u.to < 0 {
		return fmt.Sprintf("%d-", u.from)
	}
	return fmt.Sprintf("%d-%d", u.from, u.to-1)
}

// plan cuts the tables not complete everywhere into units of about
// unitBytes of heap each.
func (cs *copyState) plan(ctx context.Context, legacy *pgx.Conn, schema string, order []copyTable, unitBytes int64) ([]copyUnit, error) {
	if cs.ap != nil {
		return cs.planApartment(ctx, legacy, order, unitBytes)
	}
	byName := map[string]tables.Table{}
	for _, t := range order {
		byName[t.rule.Name] = t.rule
	}
	var units []copyUnit
	for i := range order {
		t := &order[i]
		nodes := cs.incomplete(t.rule.Name)
		if len(nodes) == 0 {
			continue
		}
		var blocks, blockSize int64
		if err := legacy.QueryRow(ctx, `SELECT pg_relation_size((quote_ident($1) || '.' || quote_ident($2))::regclass), current_setting('block_size')::bigint`,
			schema, t.rule.Name).Scan(&blocks, &blockSize); err != nil {
			return nil, fmt.Errorf("read the size of %s: %w", t.rule.Name, err)
		}
		blocks /= blockSize
		per := max(unitBytes/blockSize, 1)
		if t.selfRef || blocks <= per {
			units = append(units, copyUnit{table: t, from: 0, to: -1, est: max(blocks, 1), nodes: nodes, query: unitQuery(schema, *t, byName, 0, -1), parent: byName[t.rule.Parent]})
			continue
		}
		for k, from := 0, int64(0); from < blocks; k, from = k+1, from+per {
			to := from + per
			if to >= blocks {
				to = -1 // the last range takes what the table grew by since
			}
			est := per
			if to < 0 {
				est = blocks - from
			}
			units = append(units, copyUnit{table: t, index: k, from: from, to: to, est: est, nodes: nodes, query: unitQuery(schema, *t, byName, from, to), parent: byName[t.rule.Parent]})
		}
	}
	return units, nil
}

// unitQuery reads blocks [from, to) of t with each row's tenant id first
// (a child table's from its parent, joined).
func unitQuery(schema string, t copyTable, byName map[string]tables.Table, from, to int64) string {
	var b strings.Builder
	b.WriteString("SELECT ")
	switch t.rule.Kind {
	case tables.KindChild:
		p := byName[t.rule.Parent]
		b.WriteString("pgtenant_p." + pgx.Identifier{p.TenantColumn}.Sanitize() + "::text")
	default:
		b.WriteString("pgtenant_t." + pgx.Identifier{t.rule.TenantColumn}.Sanitize() + "::text")
	}
	for _, c := range t.cols {
		b.WriteString(", pgtenant_t." + pgx.Identifier{c}.Sanitize())
	}
	b.WriteString(" FROM " + pgx.Identifier{schema, t.rule.Name}.Sanitize() + " pgtenant_t")
	if t.rule.Kind == tables.KindChild {
		p := byName[t.rule.Parent]
		fmt.Fprintf(&b, " LEFT JOIN %s pgtenant_p ON pgtenant_p.%s = pgtenant_t.%s", pgx.Identifier{schema, p.Name}.Sanitize(),
			pgx.Identifier{t.rule.ParentColumn}.Sanitize(), pgx.Identifier{t.rule.ParentKey}.Sanitize())
	}
	b.WriteString(blockRange(from, to))
	return b.String()
}

// blockRange is the WHERE clause of a read of heap blocks [from, to) of
// pgtenant_t (to -1: to the end), empty for the whole table.
func blockRange(from, to int64) string {
	var conds []string
	if from > 0 {
		conds = append(conds, fmt.Sprintf("pgtenant_t.ctid >= '(%d,0)'::tid", from))
	}
	if to >= 0 {
		conds = append(conds, fmt.Sprintf("pgtenant_t.ctid < '(%d,0)'::tid", to))
	}
	if len(conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(conds, " AND ")
}

// copyWorker copies units: one legacy connection in the slot's snapshot
// and one connection per node, each unit in one transaction per node.
type copyWorker struct {
	cs       *copyState
	imp      *Import
	snapshot string
	lim      *limiter
	prog     *copyProgress
	legacy   *pgx.Conn
	nodes    map[string]*pgx.Conn
	// keepTriggers: foreign key checks and triggers run on the nodes.
	keepTriggers bool
	// bufs are the shards' COPY buffers, kept from unit to unit (grown
	// once, not per unit).
	bufs map[int]*bytes.Buffer
}

func (w *copyWorker) close() {
	if w.legacy != nil {
		w.legacy.Close(context.Background())
		w.legacy = nil
	}
	for k, c := range w.nodes {
		c.Close(context.Background())
		delete(w.nodes, k)
	}
}

// connectNode opens a connection to node name. Unless the copy keeps
// triggers, it runs with session_replication_role = replica where the role
// may set it (a superuser, or GRANT SET ON PARAMETER): the rows are copied
// as they were at the snapshot, where their foreign keys held, so the
// per-row foreign key checks and the app's triggers are skipped; elsewhere
// (42501) they run.
func (w *copyWorker) connectNode(ctx context.Context, name string) (*pgx.Conn, error) {
	conn, err := connect(ctx, w.cs.nodes[name].dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to node %s: %w", name, err)
	}
	if !w.keepTriggers {
		if _, err := conn.Exec(ctx, `SET session_replication_role = replica`); err != nil {
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "42501" {
				conn.Close(context.Background())
				return nil, fmt.Errorf("node %s: %w", name, err)
			}
		}
	}
	return conn, nil
}

func (w *copyWorker) openLegacy(ctx context.Context) error {
	if w.legacy != nil {
		return nil
	}
	conn, err := connect(ctx, w.imp.LegacyDSN)
	if err != nil {
		return fmt.Errorf("connect to the legacy database: %w", err)
	}
	if _, err := conn.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`); err != nil {
		conn.Close(context.Background())
		return err
	}
	if _, err := conn.Exec(ctx, `SET TRANSACTION SNAPSHOT '`+strings.ReplaceAll(w.snapshot, "'", "''")+`'`); err != nil {
		conn.Close(context.Background())
		return fmt.Errorf("import the slot's snapshot: %w", err)
	}
	w.legacy = conn
	return nil
}

// copyUnit copies one unit; on error the worker's connections are closed
// (their transactions roll back) and opened again by the next unit.
func (w *copyWorker) copyUnit(ctx context.Context, u copyUnit) (rows, bytes int64, err error) {
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	if err := w.openLegacy(ctx); err != nil {
		return 0, 0, err
	}
	for name := range u.nodes {
		conn := w.nodes[name]
		if conn == nil {
			if conn, err = w.connectNode(ctx, name); err != nil {
				return 0, 0, err
			}
			w.nodes[name] = conn
		}
		if _, err := conn.Exec(ctx, `BEGIN`); err != nil {
			return 0, 0, fmt.Errorf("node %s: %w", name, err)
		}
	}
	table := u.table.rule.Name
	sqls := w.cs.copySQL[table]
	shardOf := func(tenant []byte) (int, error) {
		shard, ok := w.cs.tenants[string(tenant)]
		if !ok {
			via := ""
			if u.table.rule.Kind == tables.KindChild {
				via = " (through its parent row of " + u.table.rule.Parent + ")"
			}
			return 0, coded("23503", fmt.Sprintf("a row of %s belongs%s to tenant %q, which is not registered; register it (pgtenant tenant add) and run import start again", table, via, tenant))
		}
		if !u.nodes[w.cs.shards[shard].Node] {
			return -1, nil
		}
		return shard, nil
	}
	flush := func(shard int, data []byte) error {
		node := w.cs.shards[shard].Node
		if _, err := w.nodes[node].PgConn().CopyFrom(ctx, bytesReader(data), sqls[shard]); err != nil {
			return fmt.Errorf("write to shard %d on node %s: %w", shard, node, err)
		}
		w.prog.addNode(node, int64(len(data)))
		return nil
	}
	d := newDemux(shardOf, flush, w.cs.limit)
	d.bufs = w.emptyBuffers()
	d.atEnd = u.table.selfRef
	var read atomic.Int64
	mw := &meteredWriter{ctx: ctx, w: d, lim: w.lim, n: &read}
	if _, err := w.legacy.PgConn().CopyTo(ctx, mw, "COPY ("+u.query+") TO STDOUT (FORMAT binary)"); err != nil {
		if err == errNoTenant || strings.Contains(err.Error(), errNoTenant.Error()) {
			return 0, 0, w.noTenantError(ctx, u)
		}
		return 0, 0, fmt.Errorf("read from the legacy database: %w", err)
	}
	if err := d.finish(); err != nil {
		return 0, 0, err
	}
	for name := range u.nodes {
		if _, err := w.nodes[name].Exec(ctx, `COMMIT`); err != nil {
			return 0, 0, fmt.Errorf("node %s: commit: %w", name, err)
		}
	}
	for s, n := range d.rows {
		rows += n
		w.prog.addShard(s, n, d.bytes[s])
	}
	w.prog.unitDone(u.est)
	return rows, read.Load(), nil
}

// noTenantError is the error of a copy that met a row of u's table without
// a tenant: it counts and names such rows (their primary keys; read again
// outside the copy's snapshot, so rows fixed since are not named).
func (w *copyWorker) noTenantError(ctx context.Context, u copyUnit) error {
	rule := u.table.rule
	what := "a NULL tenant id in " + rule.TenantColumn
	if rule.Kind == tables.KindChild {
		what = fmt.Sprintf("no row of %s behind %s, or one with a NULL tenant id", rule.Parent, rule.ParentKey)
	}
	msg := fmt.Sprintf("rows of %s have no tenant (%s)", rule.Name, what)
	hint := ": fix them on the legacy database (give each its tenant, or delete it) and run import start again (it resumes; the tables copied stay)"
	conn, err := connect(ctx, w.imp.LegacyDSN)
	if err != nil {
		return coded("23502", msg+hint)
	}
	defer conn.Close(context.Background())
	keys, n, err := rowsWithoutTenant(ctx, conn, w.cs.legacySchema, rule, map[string]tables.Table{u.parent.Name: u.parent})
	if err != nil || n == 0 {
		return coded("23502", msg+hint)
	}
	return coded("23502", fmt.Sprintf("%d row(s) of %s have no tenant (%s), e.g. key(s) %s%s", n, rule.Name, what, strings.Join(keys, ", "), hint))
}

// emptyBuffers returns the worker's shard buffers, emptied.
func (w *copyWorker) emptyBuffers() map[int]*bytes.Buffer {
	if w.bufs == nil {
		w.bufs = map[int]*bytes.Buffer{}
	}
	for _, b := range w.bufs {
		b.Reset()
	}
	return w.bufs
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// tenantShards reads every tenant's shard.
func (im *Importer) tenantShards(ctx context.Context) (map[string]int, error) {
	rows, err := im.cat.Pool().Query(ctx, `SELECT id, shard FROM pgtenant.tenants`)
	if err != nil {
		return nil, fmt.Errorf("read tenants: %w", err)
	}
	m := map[string]int{}
	var id string
	var shard int
	if _, err := pgx.ForEachRow(rows, []any{&id, &shard}, func() error { m[id] = shard; return nil }); err != nil {
		return nil, fmt.Errorf("read tenants: %w", err)
	}
	return m, nil
}

// copyProgress keeps the copy's progress per node and calls the
// callback about once a second.
type copyProgress struct {
	mu          sync.Mutex
	t0          time.Time
	nodes       map[string]*NodeProgress
	tableNodes  map[string][]string
	totalBlocks int64
	doneBlocks  int64
	rows, bytes map[int]int64
	cb          func([]NodeProgress)
	stopc       chan struct{}
	once        sync.Once
	wg          sync.WaitGroup
}

func newCopyProgress(cs *copyState, units []copyUnit, cb func([]NodeProgress), t0 time.Time) *copyProgress {
	p := &copyProgress{t0: t0, nodes: map[string]*NodeProgress{}, tableNodes: map[string][]string{}, rows: map[int]int64{}, bytes: map[int]int64{}, cb: cb, stopc: make(chan struct{})}
	seen := map[string]bool{}
	for _, n := range cs.nodes {
		p.nodes[n.name] = &NodeProgress{Node: n.name, Shards: n.shards, TablesDone: len(n.complete), Tables: len(n.complete)}
	}
	for _, u := range units {
		p.totalBlocks += u.est
		if seen[u.table.rule.Name] {
			continue
		}
		seen[u.table.rule.Name] = true
		for n := range u.nodes {
			p.nodes[n].Tables++
			p.tableNodes[u.table.rule.Name] = append(p.tableNodes[u.table.rule.Name], n)
		}
	}
	if cb != nil {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					p.report()
				case <-p.stopc:
					return
				}
			}
		}()
	}
	return p
}

func (p *copyProgress) stop() {
	p.once.Do(func() {
		close(p.stopc)
		p.wg.Wait()
		if p.cb != nil {
			for _, np := range p.nodes {
				if np.TablesDone == np.Tables {
					np.Done = np.Shards
				}
			}
			p.report()
		}
	})
}

func (p *copyProgress) report() {
	if p.cb == nil {
		return
	}
	p.mu.Lock()
	out := make([]NodeProgress, 0, len(p.nodes))
	el := time.Since(p.t0)
	var eta time.Duration
	if p.doneBlocks > 0 && p.totalBlocks > p.doneBlocks {
		eta = time.Duration(float64(el) * float64(p.totalBlocks-p.doneBlocks) / float64(p.doneBlocks))
	}
	for _, np := range p.nodes {
		c := *np
		c.Elapsed, c.ETA = el, eta
		out = append(out, c)
	}
	p.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	p.cb(out)
}

func (p *copyProgress) addNode(node string, n int64) {
	p.mu.Lock()
	p.nodes[node].Bytes += n
	p.mu.Unlock()
}

func (p *copyProgress) addShard(shard int, rows, bytes int64) {
	p.mu.Lock()
	p.rows[shard] += rows
	p.bytes[shard] += bytes
	p.mu.Unlock()
}

func (p *copyProgress) unitDone(blocks int64) {
	p.mu.Lock()
	p.doneBlocks += blocks
	p.mu.Unlock()
}

func (p *copyProgress) tableDone(table string) {
	p.mu.Lock()
	for _, n := range p.tableNodes[table] {
		p.nodes[n].TablesDone++
	}
	p.mu.Unlock()
	p.report()
}

func (p *copyProgress) shardRows() string  { return jsonCounts(p, p.rows) }
func (p *copyProgress) shardBytes() string { return jsonCounts(p, p.bytes) }

func jsonCounts(p *copyProgress, m map[int]int64) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[strconv.Itoa(k)] = v
	}
	b, _ := json.Marshal(out)
	return string(b)
}
