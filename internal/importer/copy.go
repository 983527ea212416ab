package importer

import (
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/stream"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// PublicationName is the publication Start creates on the legacy database;
// its slot is named pgtenant_import_OID after the database's oid (slot
// names are per server).
const PublicationName = "pgtenant_import"

// slotName is the import slot's name for the database of conn.
func slotName(ctx context.Context, conn *pgx.Conn) (string, error) {
	var oid uint32
	if err := conn.QueryRow(ctx, `SELECT oid FROM pg_database WHERE datname = current_database()`).Scan(&oid); err != nil {
		return "", fmt.Errorf("read the legacy database's oid: %w", err)
	}
	return fmt.Sprintf("pgtenant_import_%d", oid), nil
}

// DefaultUnitBytes is the size of the legacy table ranges (by heap blocks)
// that Start copies as one unit of work.
const DefaultUnitBytes = 64 << 20

// StartOptions tune Start.
type StartOptions struct {
	// Parallel is how many table ranges are copied at once (each by a
	// worker with its own legacy connection in the slot's snapshot and its
	// own connection to each node); 0 means 4.
	Parallel int
	// MaxRate caps the bytes per second read from the legacy database by
	// all copies together; 0 means no cap.
	MaxRate int64
	// UnitBytes is the size of a unit of work: a range of a legacy table's
	// heap of about this many bytes; 0 means DefaultUnitBytes.
	UnitBytes int64
	// Progress, when set, is called about once a second and after each
	// table, with the progress of every node.
	Progress func([]NodeProgress)
	// KeepTriggers makes the copy check foreign keys and fire triggers on
	// the nodes, row by row; by default a node role that may set
	// session_replication_role copies without them (the rows are as
	// consistent as the snapshot they are read at).
	KeepTriggers bool
	// BeforeUnit, when set, is called before each unit's copy (tests use
	// it to stop a run part way).
	BeforeUnit func(ctx context.Context, table string, unit int) error
}

// NodeProgress is the copy's progress towards one node.
type NodeProgress struct {
	Node string
	// Shards on the node; Done of them have every table copied (all at
	// the end: a shard is consistent only when every table is).
	Shards, Done int
	// Tables to copy to the node and those complete there (a table is
	// complete on a node once every range of it is committed there).
	Tables, TablesDone int
	// Bytes written to the node's shards (the binary COPY rows).
	Bytes   int64
	Elapsed time.Duration
	// ETA is the estimated time left of the whole copy, from the share of
	// the legacy tables' blocks read so far (0 until a unit is done).
	ETA time.Duration
}

// StartResult sums up a Start.
type StartResult struct {
	Slot     string
	StartLSN string
	// CopyLSN is the consistent point of this run's snapshot (StartLSN on
	// the first run; later on a resumed one), at which every shard's rows
	// are once the run ends.
	CopyLSN string
	// Shards of the import; Copied of them recorded copied by this run.
	Shards, Copied int
	// Tables copied by this run; TablesKept were complete on every node
	// from an earlier, killed run (brought to this run's snapshot by the
	// change stream).
	Tables, TablesKept int
	// Rows and Bytes copied by this run.
	Rows, Bytes int64
	// CaughtUp counts the change stream's transactions applied to the
	// kept tables to bring them to this run's snapshot.
	CaughtUp  int64
	Reference []string // reference tables loaded on every node
	Duration  time.Duration
	Resumed   bool
}

// copyTable is one table to copy, with its registry rule and columns.
type copyTable struct {
	rule tables.Table
	cols []string
	// level is the table's depth in the foreign keys among tenant tables:
	// a table is copied after every table it references is complete.
	level int
	// selfRef: the table references itself; it is copied as one unit and
	// each shard's rows in one COPY (checked at the end of the statement).
	selfRef bool
}

// Start creates the publication and the replication slot on the legacy
// database (once), then copies every tenant table to the shards at the
// slot's snapshot: each table is read once (a range of its heap blocks per
// unit of work, several units at once, each worker in the snapshot), each
// row routed by its tenant to its shard's buffer, and the buffers written
// to the shards' tables by binary COPY; a child table is read joined to
// its parent, which gives each row its tenant. Tables are copied parents
// first (by their foreign keys), level by level.
//
// Each unit commits on each node by itself; a table complete on a node is
// recorded there (pgtenant_stream.import_copy, with the snapshot's
// consistent point). A killed run resumes from the complete tables: a
// rerun takes a new snapshot, empties the incomplete tables on every node
// (TRUNCATE of their shard tables: the unfinished unit's rows go), brings
// the complete tables to the new snapshot through the change stream (the
// import's slot, applied to those tables only, up to the new snapshot's
// consistent point, so a child table copied at the new snapshot finds its
// parents), then copies the rest at the new snapshot. Every shard ends
// with all its rows at one snapshot, whose point is recorded as its
// copy_lsn: the change stream applies what comes after it.
func (im *Importer) Start(ctx context.Context, opts StartOptions) (*StartResult, error) {
	t0 := time.Now()
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	if opts.UnitBytes <= 0 {
		opts.UnitBytes = DefaultUnitBytes
	}
	imp, err := im.load(ctx)
	if err != nil {
		return nil, err
	}
	switch imp.State {
	case StateServing, StateCopying:
	default:
		return nil, fmt.Errorf("import start: the import is %s; every shard is copied already", imp.State)
	}
	if imp.Method == MethodTrigger {
		return im.startTrigger(ctx, imp, opts)
	}
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return nil, fmt.Errorf("import start: connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
	if imp.Slot == "" {
		if err := logicalReady(ctx, legacy); err != nil {
			return nil, fmt.Errorf("import start: %w", err)
		}
	}
	rules, shared, err := im.rules(ctx, legacy, imp.LegacySchema)
	if err != nil {
		return nil, fmt.Errorf("import start: %w", err)
	}
	order, err := copyOrder(ctx, legacy, imp.LegacySchema, rules)
	if err != nil {
		return nil, fmt.Errorf("import start: %w", err)
	}
	if err := im.prepareLegacy(ctx, legacy, imp, rules); err != nil {
		return nil, fmt.Errorf("import start: %w", err)
	}

	// The slot: created on the first run (its snapshot is the copy's); a
	// resumed run takes a temporary slot's snapshot, later than the slot's
	// start.
	res := &StartResult{}
	var snap *slot
	if imp.Slot == "" {
		name, err := slotName(ctx, legacy)
		if err != nil {
			return nil, fmt.Errorf("import start: %w", err)
		}
		snap, err = createSlot(ctx, imp.LegacyDSN, name, false)
		if isDuplicate(err) {
			// Created by a run killed before it recorded it: nothing was
			// copied at its snapshot, so it goes.
			if _, derr := legacy.Exec(ctx, `SELECT pg_drop_replication_slot($1)`, name); derr != nil {
				return nil, fmt.Errorf("import start: drop the unrecorded slot %s: %w", name, derr)
			}
			snap, err = createSlot(ctx, imp.LegacyDSN, name, false)
		}
		if err != nil {
			return nil, fmt.Errorf("import start: %w", err)
		}
		if _, err := im.cat.Pool().Exec(ctx, `UPDATE pgtenant.imports SET slot_name = $1, start_lsn = $2::pg_lsn, state = 'copying', updated_at = now()`,
			snap.Name, snap.ConsistentLSN); err != nil {
			snap.Close(context.Background())
			return nil, fmt.Errorf("import start: record the slot: %w", err)
		}
		imp.Slot, imp.StartLSN = snap.Name, snap.ConsistentLSN
	} else {
		res.Resumed = true
		snap, err = createSlot(ctx, imp.LegacyDSN, fmt.Sprintf("pgtenant_import_resume_%d", time.Now().UnixNano()%1e9), true)
		if err != nil {
			return nil, fmt.Errorf("import start: resume: %w", err)
		}
	}
	defer snap.Close(context.Background())
	res.Slot, res.StartLSN, res.CopyLSN = imp.Slot, imp.StartLSN, snap.ConsistentLSN
	copyLSN, err := stream.ParseLSN(snap.ConsistentLSN)
	if err != nil {
		return nil, fmt.Errorf("import start: %w", err)
	}

	sc := snapshotCopy{snapshot: snap.Snapshot, point: snap.ConsistentLSN, shardLSN: &snap.ConsistentLSN,
		log: map[string]any{"slot": res.Slot, "copy_lsn": res.CopyLSN}}
	sc.catchUp = func(ctx context.Context, cs *copyState) (int64, error) {
		if !res.Resumed || !cs.anyComplete() {
			return 0, nil
		}
		return im.catchUp(ctx, imp, rules, cs, copyLSN)
	}
	return res, im.copyAtSnapshot(ctx, imp, opts, t0, legacy, order, shared, sc, res)
}

// snapshotCopy is what a method of Start hands copyAtSnapshot: the
// snapshot the workers import, and how the tables an earlier run completed
// are brought to it.
type snapshotCopy struct {
	// snapshot is the exported snapshot's name (a slot's, or a REPEATABLE
	// READ transaction's for the trigger method).
	snapshot string
	// point is recorded with each table complete on a node
	// (pgtenant_stream.import_copy): the slot's consistent point, or 0/0
	// for the trigger method (whose point is the node's queue position).
	point string
	// shardLSN becomes import_shards.copy_lsn of the shards copied (nil:
	// NULL, the trigger method).
	shardLSN *string
	// catchUp brings the tables complete on a node from an earlier run to
	// the snapshot (before the incomplete ones are emptied) and returns the
	// transactions applied.
	catchUp func(ctx context.Context, cs *copyState) (int64, error)
	// log holds the method's own fields of the operation log's entry.
	log map[string]any
}

// copyAtSnapshot is the copy both methods of Start share: the reference
// tables, the tables an earlier run completed brought to the snapshot
// (sc.catchUp), the incomplete ones emptied, then every tenant table not
// complete everywhere copied at the snapshot in units, level by level of
// the foreign keys, each level's tables recorded complete on the nodes,
// and the shards recorded copied. It fills res.
func (im *Importer) copyAtSnapshot(ctx context.Context, imp *Import, opts StartOptions, t0 time.Time, legacy *pgx.Conn, order []copyTable, shared []tables.Table, sc snapshotCopy, res *StartResult) error {
	logFields := func(fields map[string]any) map[string]any {
		for k, v := range sc.log {
			fields[k] = v
		}
		return fields
	}
	// Reference tables: the same rows on every node's shared schema.
	var err error
	if res.Reference, err = im.copyReference(ctx, imp, sc.snapshot, shared); err != nil {
		return fmt.Errorf("import start: %w", err)
	}
	cs, err := im.newCopyState(ctx, imp, order)
	if err != nil {
		return fmt.Errorf("import start: %w", err)
	}
	defer cs.close()
	res.Shards = len(cs.shards)
	// What earlier runs completed, per node.
	for _, t := range order {
		if cs.completeEverywhere(t.rule.Name) {
			res.TablesKept++
		}
	}
	if res.CaughtUp, err = sc.catchUp(ctx, cs); err != nil {
		return fmt.Errorf("import start: bring the tables copied before to the new snapshot: %w", err)
	}
	if err := cs.emptyIncomplete(ctx, order); err != nil {
		return fmt.Errorf("import start: %w", err)
	}

	// Units of work, level by level.
	units, err := cs.plan(ctx, legacy, imp.LegacySchema, order, opts.UnitBytes)
	if err != nil {
		return fmt.Errorf("import start: %w", err)
	}
	lim := newLimiter(opts.MaxRate)
	prog := newCopyProgress(cs, units, opts.Progress, t0)
	defer prog.stop()
	workers := make([]*copyWorker, opts.Parallel)
	for i := range workers {
		workers[i] = &copyWorker{cs: cs, imp: imp, snapshot: sc.snapshot, lim: lim, prog: prog, nodes: map[string]*pgx.Conn{}, keepTriggers: opts.KeepTriggers}
	}
	defer func() {
		for _, w := range workers {
			w.close()
		}
	}()
	var rows, bytes atomic.Int64
	levels := map[int][]copyUnit{}
	var levelIDs []int
	for _, u := range units {
		if _, ok := levels[u.table.level]; !ok {
			levelIDs = append(levelIDs, u.table.level)
		}
		levels[u.table.level] = append(levels[u.table.level], u)
	}
	sort.Ints(levelIDs)
	for _, lv := range levelIDs {
		// The level's tables: their indexes dropped on the nodes they are
		// copied to, built again once every unit is in (copyindex.go).
		done := map[string]bool{}
		for _, u := range levels[lv] {
			if !done[u.table.rule.Name] {
				done[u.table.rule.Name] = true
				if err := cs.deferIndexes(ctx, u.table.rule.Name, u.nodes); err != nil {
					return fmt.Errorf("import start: %w", err)
				}
			}
		}
		names := sortedKeys(done)
		err := runUnits(ctx, workers, levels[lv], opts.BeforeUnit, &rows, &bytes)
		if err == nil {
			err = cs.buildIndexes(ctx, workers, names)
		}
		if err != nil {
			res.Rows, res.Bytes, res.Duration = rows.Load(), bytes.Load(), time.Since(t0)
			im.cat.RecordOperation(context.WithoutCancel(ctx), "import start", logFields(map[string]any{"tables": res.Tables, "rows": res.Rows, "bytes": res.Bytes}), err)
			return fmt.Errorf("import start: %w (run it again to resume: %d of %d tables are complete)", err, res.TablesKept+res.Tables, len(order))
		}
		// The level's tables are complete on the nodes they were copied to.
		for _, name := range names {
			if err := cs.markComplete(ctx, name, sc.point); err != nil {
				return fmt.Errorf("import start: %w", err)
			}
			res.Tables++
			prog.tableDone(name)
		}
	}
	res.Rows, res.Bytes = rows.Load(), bytes.Load()

	// Every shard is at the snapshot.
	tag, err := im.cat.Pool().Exec(ctx, `UPDATE pgtenant.import_shards i SET state = 'copied', copy_lsn = $1::pg_lsn, copy_snapshot = NULL,
		rows = coalesce(($2::jsonb ->> i.shard::text)::bigint, 0), bytes = coalesce(($3::jsonb ->> i.shard::text)::bigint, 0), tables_done = $4, updated_at = now()
		WHERE state IN ('legacy', 'copying')`, sc.shardLSN, prog.shardRows(), prog.shardBytes(), tableNames(order))
	if err == nil {
		res.Copied = int(tag.RowsAffected())
		_, err = im.cat.Pool().Exec(ctx, `UPDATE pgtenant.imports SET state = 'copied', updated_at = now()
			WHERE NOT EXISTS (SELECT FROM pgtenant.import_shards WHERE state IN ('legacy', 'copying'))`)
	}
	res.Duration = time.Since(t0)
	prog.stop()
	im.cat.RecordOperation(ctx, "import start", logFields(map[string]any{"tables": res.Tables, "kept": res.TablesKept, "rows": res.Rows, "bytes": res.Bytes,
		"seconds": res.Duration.Seconds(), "caught_up": res.CaughtUp}), err)
	if err != nil {
		return fmt.Errorf("import start: record the copy: %w", err)
	}
	return nil
}

func tableNames(order []copyTable) []string {
	out := make([]string, len(order))
	for i, t := range order {
		out[i] = t.rule.Name
	}
	return out
}

// runUnits copies units with the workers, at most one unit per worker at
// a time; the first error stops the others.
func runUnits(ctx context.Context, workers []*copyWorker, units []copyUnit, before func(context.Context, string, int) error, rows, bytes *atomic.Int64) error {
	return runJobs(ctx, workers, units, func(ctx context.Context, w *copyWorker, u copyUnit) error {
		if before != nil {
			if err := before(ctx, u.table.rule.Name, u.index); err != nil {
				return err
			}
		}
		n, b, err := w.copyUnit(ctx, u)
		if err != nil {
			return fmt.Errorf("copy %s (blocks %s): %w", u.table.rule.Name, u.blocks(), err)
		}
		rows.Add(n)
		bytes.Add(b)
		return nil
	})
}

// runJobs hands jobs to the workers, one job per worker at a time, in
// order; the first error stops the others and is returned.
func runJobs[J any](ctx context.Context, workers []*copyWorker, jobs []J, do func(context.Context, *copyWorker, J) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ch := make(chan J)
	var wg sync.WaitGroup
	for _, w := range workers[:min(len(workers), len(jobs))] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range ch {
				if err := do(ctx, w, j); err != nil {
					cancel(err)
					return
				}
			}
		}()
	}
feed:
	for _, j := range jobs {
		select {
		case ch <- j:
		case <-ctx.Done():
			break feed
		}
	}
	close(ch)
	wg.Wait()
	return context.Cause(ctx)
}

// copyOrder lists the tenant tables parents first (by the foreign keys
// among them) with their level, and the columns a copy writes (not
// generated ones).
func copyOrder(ctx context.Context, conn *pgx.Conn, schema string, rules []tables.Table) ([]copyTable, error) {
	deps := map[string][]string{}
	self := map[string]bool{}
	in := map[string]bool{}
	for _, t := range rules {
		in[t.Name] = true
	}
	rows, err := conn.Query(ctx, `SELECT c.relname, p.relname FROM pg_constraint k
		JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_namespace pn ON pn.oid = p.relnamespace
		WHERE k.contype = 'f' AND n.nspname = $1 AND pn.nspname = $1`, schema)
	if err != nil {
		return nil, fmt.Errorf("read foreign keys: %w", err)
	}
	var child, parent string
	if _, err := pgx.ForEachRow(rows, []any{&child, &parent}, func() error {
		if child == parent {
			self[child] = true
		} else if in[child] && in[parent] {
			deps[child] = append(deps[child], parent)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read foreign keys: %w", err)
	}
	// A child table is read joined to its parent: it comes after it even
	// without a foreign key.
	for _, t := range rules {
		if t.Kind == tables.KindChild && in[t.Parent] {
			deps[t.Name] = append(deps[t.Name], t.Parent)
		}
	}
	sorted := append([]tables.Table(nil), rules...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	byName := map[string]tables.Table{}
	for _, t := range sorted {
		byName[t.Name] = t
	}
	var out []copyTable
	state := map[string]int{} // 1 visiting, 2 done
	level := map[string]int{}
	var visit func(name string) error
	visit = func(name string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("the foreign keys of table %s form a cycle; the copy needs an order", name)
		case 2:
			return nil
		}
		state[name] = 1
		lv := 0
		for _, p := range deps[name] {
			if err := visit(p); err != nil {
				return err
			}
			lv = max(lv, level[p]+1)
		}
		state[name] = 2
		level[name] = lv
		cols, err := copyColumns(ctx, conn, schema, name)
		if err != nil {
			return err
		}
		out = append(out, copyTable{rule: byName[name], cols: cols, level: lv, selfRef: self[name]})
		return nil
	}
	for _, t := range sorted {
		if err := visit(t.Name); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// copyColumns lists the columns of schema.table a copy writes, in order.
func copyColumns(ctx context.Context, conn *pgx.Conn, schema, table string) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT attname FROM pg_attribute
		WHERE attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
		ORDER BY attnum`, schema, table)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", table, err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// tenantsByShard reads the catalog's tenants grouped by shard.
func (im *Importer) tenantsByShard(ctx context.Context) (map[int][]string, error) {
	rows, err := im.cat.Pool().Query(ctx, `SELECT shard, id FROM pgtenant.tenants ORDER BY shard, id`)
	if err != nil {
		return nil, fmt.Errorf("read tenants: %w", err)
	}
	out := map[int][]string{}
	var shard int
	var id string
	if _, err := pgx.ForEachRow(rows, []any{&shard, &id}, func() error { out[shard] = append(out[shard], id); return nil }); err != nil {
		return nil, fmt.Errorf("read tenants: %w", err)
	}
	return out, nil
}

// meteredWriter counts and throttles the bytes of a copy.
type meteredWriter struct {
	ctx context.Context
	w   io.Writer
	lim *limiter
	n   *atomic.Int64
}

func (m *meteredWriter) Write(p []byte) (int, error) {
	if err := m.lim.wait(m.ctx, len(p)); err != nil {
		return 0, err
	}
	n, err := m.w.Write(p)
	m.n.Add(int64(n))
	return n, err
}

// limiter spreads bytes over time at rate bytes per second (0: no limit).
type limiter struct {
	rate int64
	mu   sync.Mutex
	next time.Time
}

func newLimiter(rate int64) *limiter { return &limiter{rate: rate} }

func (l *limiter) wait(ctx context.Context, n int) error {
	if l == nil || l.rate <= 0 {
		return nil
	}
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	at := l.next
	l.next = l.next.Add(time.Duration(float64(n) / float64(l.rate) * float64(time.Second)))
	l.mu.Unlock()
	if d := time.Until(at); d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
