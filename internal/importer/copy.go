package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

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

// StartOptions tune Start.
type StartOptions struct {
	// Parallel is how many shards are copied at once; 0 means 4.
	Parallel int
	// MaxRate caps the bytes per second read from the legacy database by
	// all copies together; 0 means no cap.
	MaxRate int64
	// Progress, when set, is called about once a second and after each
	// shard, with the progress of every node.
	Progress func([]NodeProgress)
	// BeforeShard, when set, is called before each shard's copy (tests use
	// it to stop a run part way).
	BeforeShard func(ctx context.Context, shard int) error
}

// NodeProgress is the copy's progress towards one node.
type NodeProgress struct {
	Node         string
	Shards, Done int
	Bytes        int64
	Elapsed      time.Duration
	// ETA is the estimated time left, from the pace so far (0 until a shard is done).
	ETA time.Duration
}

// StartResult sums up a Start.
type StartResult struct {
	Slot     string
	StartLSN string
	// CopyLSN is the consistent point of this run's snapshot (StartLSN on
	// the first run; later on a resumed one).
	CopyLSN          string
	Shards, Copied   int // shards of the import, shards copied by this run
	Rows, Bytes      int64
	Reference        []string // reference tables loaded on every node
	Duration         time.Duration
	AlreadyCopied    int
	ResumedFromShard bool
}

// copyTable is one table to copy, with its registry rule and columns.
type copyTable struct {
	rule tables.Table
	cols []string
}

// Start creates the publication and the replication slot on the legacy
// database (once), then copies each tenant's rows into its shard schema on
// the shard's node at the slot's snapshot, shards in parallel. Each shard is
// copied in one target transaction (its tables emptied first) and recorded
// as copied in the catalog after it commits, with the consistent point of
// its snapshot; a killed run resumes with the shards not recorded, at a new
// snapshot whose point is recorded with them (the change stream skips, per
// shard, what its copy already holds).
func (im *Importer) Start(ctx context.Context, opts StartOptions) (*StartResult, error) {
	t0 := time.Now()
	if opts.Parallel <= 0 {
		opts.Parallel = 4
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
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return nil, fmt.Errorf("import start: connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
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
	// start, for the shards left.
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
		res.ResumedFromShard = true
		snap, err = createSlot(ctx, imp.LegacyDSN, fmt.Sprintf("pgtenant_import_resume_%d", time.Now().UnixNano()%1e9), true)
		if err != nil {
			return nil, fmt.Errorf("import start: resume: %w", err)
		}
	}
	defer snap.Close(context.Background())
	res.Slot, res.StartLSN, res.CopyLSN = imp.Slot, imp.StartLSN, snap.ConsistentLSN

	// Reference tables: the same rows on every node's shared schema.
	if res.Reference, err = im.copyReference(ctx, imp, snap.Snapshot, shared); err != nil {
		return nil, fmt.Errorf("import start: %w", err)
	}

	all, err := im.shards(ctx)
	if err != nil {
		return nil, err
	}
	res.Shards = len(all)
	tenants, err := im.tenantsByShard(ctx)
	if err != nil {
		return nil, err
	}
	var todo []ShardProgress
	progress := map[string]*NodeProgress{}
	for _, s := range all {
		np := progress[s.Node]
		if np == nil {
			np = &NodeProgress{Node: s.Node}
			progress[s.Node] = np
		}
		np.Shards++
		if s.State == ShardLegacy || s.State == ShardCopying {
			todo = append(todo, s)
		} else {
			np.Done++
			res.AlreadyCopied++
		}
	}
	todo = interleave(todo)
	lim := newLimiter(opts.MaxRate)

	var mu sync.Mutex
	report := func() {
		if opts.Progress == nil {
			return
		}
		mu.Lock()
		out := make([]NodeProgress, 0, len(progress))
		for _, np := range progress {
			p := *np
			p.Elapsed = time.Since(t0)
			out = append(out, p)
		}
		mu.Unlock()
		sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
		opts.Progress(out)
	}
	stopTicker := make(chan struct{})
	var tickerDone sync.WaitGroup
	if opts.Progress != nil {
		tickerDone.Add(1)
		go func() {
			defer tickerDone.Done()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-t.C:
					report()
				case <-stopTicker:
					return
				}
			}
		}()
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	jobs := make(chan ShardProgress)
	var wg sync.WaitGroup
	var rows, bytes atomic.Int64
	var copied atomic.Int32
	nodeStart := map[string]time.Time{}
	for w := 0; w < opts.Parallel && w < len(todo); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cp, err := newCopier(ctx, imp, snap.Snapshot, order, lim)
			if err != nil {
				cancel(err)
				return
			}
			defer cp.close()
			for s := range jobs {
				if opts.BeforeShard != nil {
					if err := opts.BeforeShard(ctx, s.Shard); err != nil {
						cancel(err)
						return
					}
				}
				mu.Lock()
				if _, ok := nodeStart[s.Node]; !ok {
					nodeStart[s.Node] = time.Now()
				}
				mu.Unlock()
				n, b, err := cp.copyShard(ctx, s, tenants[s.Shard], &progressBytes{mu: &mu, np: progress[s.Node]})
				if err != nil {
					cancel(fmt.Errorf("copy shard %d to node %s: %w", s.Shard, s.Node, err))
					return
				}
				if _, err := im.cat.Pool().Exec(ctx, `UPDATE pgtenant.import_shards SET state = 'copied', copy_lsn = $2::pg_lsn, rows = $3, bytes = $4,
					tables_done = $5, updated_at = now() WHERE shard = $1`, s.Shard, snap.ConsistentLSN, n, b, cp.names()); err != nil {
					cancel(fmt.Errorf("record shard %d copied: %w", s.Shard, err))
					return
				}
				rows.Add(n)
				bytes.Add(b)
				copied.Add(1)
				mu.Lock()
				np := progress[s.Node]
				np.Done++
				if d := np.Done - countDoneBefore(all, s.Node); d > 0 {
					el := time.Since(nodeStart[s.Node])
					np.ETA = el / time.Duration(d) * time.Duration(np.Shards-np.Done)
				}
				mu.Unlock()
				im.logger.Info("shard copied", "shard", s.Shard, "node", s.Node, "rows", n, "bytes", b)
				report()
			}
		}()
	}
feed:
	for _, s := range todo {
		select {
		case jobs <- s:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	close(stopTicker)
	tickerDone.Wait()
	res.Copied, res.Rows, res.Bytes = int(copied.Load()), rows.Load(), bytes.Load()
	res.Duration = time.Since(t0)
	if err := context.Cause(ctx); err != nil {
		im.cat.RecordOperation(context.WithoutCancel(ctx), "import start", map[string]any{"copied": res.Copied, "rows": res.Rows, "bytes": res.Bytes}, err)
		return res, fmt.Errorf("import start: %w (run it again to resume: %d of %d shards are copied)", err, res.AlreadyCopied+res.Copied, res.Shards)
	}
	_, err = im.cat.Pool().Exec(ctx, `UPDATE pgtenant.imports SET state = 'copied', updated_at = now()
		WHERE NOT EXISTS (SELECT FROM pgtenant.import_shards WHERE state IN ('legacy', 'copying'))`)
	im.cat.RecordOperation(ctx, "import start", map[string]any{"copied": res.Copied, "rows": res.Rows, "bytes": res.Bytes,
		"seconds": res.Duration.Seconds(), "slot": res.Slot, "copy_lsn": res.CopyLSN}, err)
	if err != nil {
		return res, fmt.Errorf("import start: record the copy: %w", err)
	}
	return res, nil
}

func countDoneBefore(all []ShardProgress, node string) int {
	n := 0
	for _, s := range all {
		if s.Node == node && s.State != ShardLegacy && s.State != ShardCopying {
			n++
		}
	}
	return n
}

// progressBytes adds copied bytes to a node's progress as they flow.
type progressBytes struct {
	mu *sync.Mutex
	np *NodeProgress
}

func (p *progressBytes) add(n int64) {
	p.mu.Lock()
	p.np.Bytes += n
	p.mu.Unlock()
}

// interleave orders shards so that consecutive ones go to different nodes.
func interleave(shards []ShardProgress) []ShardProgress {
	byNode := map[string][]ShardProgress{}
	var nodes []string
	for _, s := range shards {
		if _, ok := byNode[s.Node]; !ok {
			nodes = append(nodes, s.Node)
		}
		byNode[s.Node] = append(byNode[s.Node], s)
	}
	sort.Strings(nodes)
	out := make([]ShardProgress, 0, len(shards))
	for i := 0; len(out) < len(shards); i++ {
		for _, n := range nodes {
			if i < len(byNode[n]) {
				out = append(out, byNode[n][i])
			}
		}
	}
	return out
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

// copyOrder lists the tenant tables parents first (by the foreign keys
// among them), with the columns a copy writes (not generated ones).
func copyOrder(ctx context.Context, conn *pgx.Conn, schema string, rules []tables.Table) ([]copyTable, error) {
	deps := map[string][]string{}
	in := map[string]bool{}
	for _, t := range rules {
		in[t.Name] = true
	}
	rows, err := conn.Query(ctx, `SELECT c.relname, p.relname FROM pg_constraint k
		JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class p ON p.oid = k.confrelid
		JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_namespace pn ON pn.oid = p.relnamespace
		WHERE k.contype = 'f' AND n.nspname = $1 AND pn.nspname = $1 AND c.oid <> p.oid`, schema)
	if err != nil {
		return nil, fmt.Errorf("read foreign keys: %w", err)
	}
	var child, parent string
	if _, err := pgx.ForEachRow(rows, []any{&child, &parent}, func() error {
		if in[child] && in[parent] {
			deps[child] = append(deps[child], parent)
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read foreign keys: %w", err)
	}
	sorted := append([]tables.Table(nil), rules...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	byName := map[string]tables.Table{}
	for _, t := range sorted {
		byName[t.Name] = t
	}
	var out []copyTable
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string) error
	visit = func(name string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("the foreign keys of table %s form a cycle; the copy needs an order", name)
		case 2:
			return nil
		}
		state[name] = 1
		for _, p := range deps[name] {
			if err := visit(p); err != nil {
				return err
			}
		}
		state[name] = 2
		cols, err := copyColumns(ctx, conn, schema, name)
		if err != nil {
			return err
		}
		out = append(out, copyTable{rule: byName[name], cols: cols})
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

// tenantArray is a SQL array literal of ids (COPY takes no parameters).
func tenantArray(ids []string) string {
	var b strings.Builder
	b.WriteString("ARRAY[")
	for i, id := range ids {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString("'" + strings.ReplaceAll(id, "'", "''") + "'")
	}
	b.WriteString("]::text[]")
	return b.String()
}

// selectTenants is the query of t's rows that belong to tenants.
func selectTenants(schema string, t copyTable, byName map[string]tables.Table, tenants []string) string {
	cols := make([]string, len(t.cols))
	for i, c := range t.cols {
		cols[i] = "pgtenant_t." + pgx.Identifier{c}.Sanitize()
	}
	arr := tenantArray(tenants)
	var cond string
	switch t.rule.Kind {
	case tables.KindTenant:
		cond = "pgtenant_t." + pgx.Identifier{t.rule.TenantColumn}.Sanitize() + "::text = ANY (" + arr + ")"
	case tables.KindChild:
		p := byName[t.rule.Parent]
		cond = fmt.Sprintf("EXISTS (SELECT FROM %s pgtenant_p WHERE pgtenant_p.%s = pgtenant_t.%s AND pgtenant_p.%s::text = ANY (%s))",
			pgx.Identifier{schema, p.Name}.Sanitize(), pgx.Identifier{t.rule.ParentColumn}.Sanitize(),
			pgx.Identifier{t.rule.ParentKey}.Sanitize(), pgx.Identifier{p.TenantColumn}.Sanitize(), arr)
	}
	return "SELECT " + strings.Join(cols, ", ") + " FROM " + pgx.Identifier{schema, t.rule.Name}.Sanitize() + " pgtenant_t WHERE " + cond
}

// errStopped is returned by a copy whose context ended.
var errStopped = errors.New("copy stopped")

// copier copies shards with one legacy transaction at the snapshot and one
// connection per target node.
type copier struct {
	imp     *Import
	order   []copyTable
	byName  map[string]tables.Table
	legacy  *pgx.Conn
	targets map[string]*pgx.Conn
	lim     *limiter
}

func newCopier(ctx context.Context, imp *Import, snapshot string, order []copyTable, lim *limiter) (*copier, error) {
	conn, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return nil, fmt.Errorf("connect to the legacy database: %w", err)
	}
	if _, err := conn.Exec(ctx, `BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY`); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	if _, err := conn.Exec(ctx, `SET TRANSACTION SNAPSHOT '`+strings.ReplaceAll(snapshot, "'", "''")+`'`); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("import the slot's snapshot: %w", err)
	}
	cp := &copier{imp: imp, order: order, legacy: conn, targets: map[string]*pgx.Conn{}, lim: lim, byName: map[string]tables.Table{}}
	for _, t := range order {
		cp.byName[t.rule.Name] = t.rule
	}
	return cp, nil
}

func (cp *copier) names() []string {
	out := make([]string, len(cp.order))
	for i, t := range cp.order {
		out[i] = t.rule.Name
	}
	return out
}

func (cp *copier) close() {
	cp.legacy.Close(context.Background())
	for _, c := range cp.targets {
		c.Close(context.Background())
	}
}

// copyShard empties the shard's tables on its node and copies its tenants'
// rows into them, in one target transaction. It returns rows and bytes.
func (cp *copier) copyShard(ctx context.Context, s ShardProgress, tenants []string, pb *progressBytes) (int64, int64, error) {
	dst := cp.targets[s.Node]
	if dst == nil {
		var err error
		if dst, err = connect(ctx, s.NodeDSN); err != nil {
			return 0, 0, fmt.Errorf("connect to node %s: %w", s.Node, err)
		}
		cp.targets[s.Node] = dst
	}
	var rows, bytes int64
	err := pgx.BeginFunc(ctx, dst, func(tx pgx.Tx) error {
		names := make([]string, len(cp.order))
		for i, t := range cp.order {
			names[i] = pgx.Identifier{s.Schema, t.rule.Name}.Sanitize()
		}
		// A copy killed after its commit and before the catalog recorded it
		// left rows: empty the tables (TRUNCATE only when needed: it costs
		// a new file per table).
		probe := make([]string, len(names))
		for i, n := range names {
			probe[i] = "EXISTS (SELECT FROM " + n + ")"
		}
		var dirty bool
		if err := tx.QueryRow(ctx, "SELECT "+strings.Join(probe, " OR ")).Scan(&dirty); err != nil {
			return fmt.Errorf("read the shard's tables (has `pgtenant migrate up` applied the baseline?): %w", err)
		}
		if dirty {
			if _, err := tx.Exec(ctx, "TRUNCATE "+strings.Join(names, ", ")); err != nil {
				return fmt.Errorf("empty the shard's tables: %w", err)
			}
		}
		if len(tenants) == 0 {
			return nil
		}
		for i, t := range cp.order {
			n, b, err := cp.copyTable(ctx, tx, names[i], selectTenants(cp.imp.LegacySchema, t, cp.byName, tenants), t.cols, pb)
			if err != nil {
				return fmt.Errorf("table %s: %w", t.rule.Name, err)
			}
			rows += n
			bytes += b
		}
		return nil
	})
	return rows, bytes, err
}

// copyTable streams one query's rows from the legacy transaction into a
// target table (binary COPY, throttled).
func (cp *copier) copyTable(ctx context.Context, tx pgx.Tx, target, query string, cols []string, pb *progressBytes) (int64, int64, error) {
	pr, pw := io.Pipe()
	var bytes atomic.Int64
	done := make(chan error, 1)
	go func() {
		w := &meteredWriter{ctx: ctx, w: pw, lim: cp.lim, n: &bytes, pb: pb}
		_, err := cp.legacy.PgConn().CopyTo(ctx, w, "COPY ("+query+") TO STDOUT (FORMAT binary)")
		pw.CloseWithError(err)
		done <- err
	}()
	quoted := make([]string, len(cols))
	for i, c := range cols {
		quoted[i] = pgx.Identifier{c}.Sanitize()
	}
	tag, err := tx.Conn().PgConn().CopyFrom(ctx, pr, "COPY "+target+" ("+strings.Join(quoted, ", ")+") FROM STDIN (FORMAT binary)")
	pr.CloseWithError(err)
	srcErr := <-done
	if srcErr != nil && !errors.Is(srcErr, io.ErrClosedPipe) {
		return 0, 0, fmt.Errorf("read from the legacy database: %w", srcErr)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("write to the shard: %w", err)
	}
	return tag.RowsAffected(), bytes.Load(), nil
}

// meteredWriter counts and throttles the bytes of a copy.
type meteredWriter struct {
	ctx context.Context
	w   io.Writer
	lim *limiter
	n   *atomic.Int64
	pb  *progressBytes
}

func (m *meteredWriter) Write(p []byte) (int, error) {
	if err := m.lim.wait(m.ctx, len(p)); err != nil {
		return 0, err
	}
	n, err := m.w.Write(p)
	m.n.Add(int64(n))
	m.pb.add(int64(n))
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
