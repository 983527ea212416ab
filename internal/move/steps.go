package move

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The marker table lives in its own schema on every node that takes part in
// a move. Each move's publication carries it with a row filter on the move's
// id, so concurrent moves never see each other's markers. A marker row is
// committed on the source and polled for on the target: because the apply
// worker applies transactions in commit order, a visible marker proves that
// everything committed before it on the source has been applied. (Comparing
// pg_current_wal_lsn() with pg_stat_subscription or the slot's
// confirmed_flush_lsn would not do: PG15 skips empty transactions, and the
// feedback positions lag what is applied by up to hundreds of ms.)
const (
	markerSchema = "pgtenant_move"
	markerDDL    = `CREATE SCHEMA IF NOT EXISTS pgtenant_move;
CREATE TABLE IF NOT EXISTS pgtenant_move.marker (move_id bigint NOT NULL, seq bigint NOT NULL,
  at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (move_id, seq))`
)

// repName names a move's publication, subscription and slot.
func repName(mv *moveRun) string { return fmt.Sprintf("pgtenant_move_%d_%d", mv.Shard, mv.ID) }

// movedName is the source schema's name after the move.
func movedName(mv *moveRun) string { return fmt.Sprintf("%s_moved_%d", mv.Schema, mv.ID) }

func closeConns(mv *moveRun) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stopStream(mv)
	if mv.slot != nil {
		mv.slot.Close(ctx)
		mv.slot = nil
	}
	if mv.src != nil {
		mv.src.Close(ctx)
		mv.src = nil
	}
	if mv.dst != nil {
		mv.dst.Close(ctx)
		mv.dst = nil
	}
	mv.snap.close(ctx)
	mv.snap = nil
	closeVerifyPairs(mv.verify)
	mv.verify = nil
	mv.script = nil
}

func connect(ctx context.Context, dsn, what string) (*pgx.Conn, error) {
	return connectApp(ctx, dsn, what, "")
}

// connectApp is connect with application_name set to app (unless empty).
func connectApp(ctx context.Context, dsn, what, app string) (*pgx.Conn, error) {
	return connectWith(ctx, dsn, what, app, nil)
}

// connectWith is connectApp with extra settings for the session (sent at startup).
func connectWith(ctx context.Context, dsn, what, app string, settings map[string]string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", what, err)
	}
	if app != "" {
		cfg.RuntimeParams["application_name"] = app
	}
	for k, v := range settings {
		cfg.RuntimeParams[k] = v
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", what, err)
	}
	return c, nil
}

func (m *Mover) source(ctx context.Context, mv *moveRun) (*pgx.Conn, error) {
	if mv.src != nil && !mv.src.IsClosed() {
		return mv.src, nil
	}
	c, err := connect(ctx, mv.SourceDSN, "source node "+mv.Source)
	mv.src = c
	return c, err
}

func (m *Mover) target(ctx context.Context, mv *moveRun) (*pgx.Conn, error) {
	if mv.dst != nil && !mv.dst.IsClosed() {
		return mv.dst, nil
	}
	c, err := connect(ctx, mv.TargetDSN, "target node "+mv.Target)
	mv.dst = c
	return c, err
}

// prepare runs the pre-checks and records the move.
func (m *Mover) prepare(ctx context.Context, shard int, toNode string, opts Options) (*moveRun, error) {
	mv := &moveRun{Info: Info{Shard: shard, Target: toNode, Method: opts.Method, Progress: Progress{Options: opts}}}
	var state string
	err := m.cfg.Catalog.QueryRow(ctx, `SELECT schema_name, node, state FROM pgtenant.shards WHERE id = $1`, shard).Scan(&mv.Schema, &mv.Source, &state)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("shard %d is unknown (SQLSTATE 42704); `pgtenant shard list` names the shards", shard)
	} else if err != nil {
		return nil, fmt.Errorf("read shard: %w", err)
	}
	var running bool
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pgtenant.moves WHERE shard = $1 AND status = 'running')`, shard).Scan(&running); err != nil {
		return nil, fmt.Errorf("read moves: %w", err)
	}
	if running {
		return nil, ErrMoveRunning
	}
	if err := m.refuseImporting(ctx, shard, toNode); err != nil {
		return nil, err
	}
	if mv.Source == toNode {
		return nil, fmt.Errorf("shard %d is already on node %q", shard, toNode)
	}
	if state != "active" {
		return nil, fmt.Errorf("shard %d is %s, not active: %w", shard, state, ErrMoveRunning)
	}
	if mv.SourceDSN, err = m.nodeDSN(ctx, mv.Source); err != nil {
		return nil, err
	}
	if mv.TargetDSN, err = m.nodeDSN(ctx, toNode); err != nil {
		return nil, err
	}
	if err := m.precheck(ctx, mv); err != nil {
		closeConns(mv)
		return nil, fmt.Errorf("pre-check: %w", err)
	}
	if err := mv.src.QueryRow(ctx, `SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint, coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'`, mv.Schema).Scan(
		&mv.Progress.SourceRows, &mv.Progress.SourceBytes); err != nil {
		closeConns(mv)
		return nil, fmt.Errorf("measure shard: %w", err)
	}
	if err := m.insertMove(ctx, mv); err != nil {
		closeConns(mv)
		return nil, err
	}
	if mv.Method == MethodCopy {
		m.log.Warn("method copy: the shard's writes pause for the whole copy", "move", mv.ID, "shard", shard, "bytes", mv.Progress.SourceBytes)
	}
	m.log.Info("move started", "move", mv.ID, "shard", shard, "from", mv.Source, "to", toNode, "method", mv.Method)
	return mv, nil
}

// precheck verifies that the move can start: the source has logical WAL (for
// the logical method) and every table can be replicated (by the trigger
// method: has a primary key), the target is reachable and does not have the
// schema yet.
func (m *Mover) precheck(ctx context.Context, mv *moveRun) error {
	// Connect to both nodes at once (each connection is a few round trips).
	dstErr := make(chan error, 1)
	go func() {
		_, err := m.target(ctx, mv)
		dstErr <- err
	}()
	_, srcErr := m.source(ctx, mv)
	if err := errors.Join(srcErr, <-dstErr); err != nil {
		return err
	}
	src, dst, err := m.conns(ctx, mv)
	if err != nil {
		return err
	}
	if ok, err := schemaExists(ctx, src, mv.Schema); err != nil {
		return fmt.Errorf("check source schema: %w", err)
	} else if !ok {
		return fmt.Errorf("schema %s does not exist on source node %q", mv.Schema, mv.Source)
	}
	if ok, err := schemaExists(ctx, dst, mv.Schema); err != nil {
		return fmt.Errorf("check target schema: %w", err)
	} else if ok {
		return fmt.Errorf("schema %s already exists on target node %q; drop it there first", mv.Schema, mv.Target)
	}
	if err := missingRoles(ctx, src, dst, mv.Schema); err != nil {
		return err
	}
	if err := missingExtensions(ctx, src, dst, mv.Schema); err != nil {
		return err
	}
	if mv.Method == MethodCopy {
		return nil
	}
	if mv.Method == MethodTrigger {
		return precheckTrigger(ctx, src, mv)
	}
	// The source's prepared transactions, free slots, oldest writing transaction and wal_level, in one round trip.
	var prepared, freeSlots int
	var oldest *float64
	var walLevel string
	if err := src.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()),
		current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots),
		(SELECT extract(epoch FROM now() - min(xact_start)) FROM pg_stat_activity
			WHERE datname = current_database() AND backend_xid IS NOT NULL AND pid <> pg_backend_pid())::float8,
		current_setting('wal_level')`).Scan(&prepared, &freeSlots, &oldest, &walLevel); err != nil {
		return fmt.Errorf("check the source's prepared transactions, replication slots and wal_level: %w", err)
	}
	if prepared > 0 {
		return fmt.Errorf("source node %q has %d prepared transaction(s) in its database; creating a replication slot would wait for them: commit or roll them back first", mv.Source, prepared)
	}
	if freeSlots < 1 {
		return fmt.Errorf("source node %q has %d free replication slot(s); raise max_replication_slots", mv.Source, freeSlots)
	}
	if oldest != nil && *oldest > 60 {
		m.log.Warn("a write transaction has been open on the source for a long time; creating the slot waits for it",
			"shard", mv.Shard, "node", mv.Source, "seconds", int(*oldest))
	}
	if walLevel != "logical" {
		return fmt.Errorf("source node %q has wal_level=%s; set wal_level=logical and restart it, or use --method copy", mv.Source, walLevel)
	}
	if err := checkMovePrivileges(ctx, src, mv.Source, mv.Schema); err != nil {
		return err
	}
	bad, err := badTables(ctx, src, mv.Schema)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return &UnreplicableError{Schema: mv.Schema, Tables: bad}
	}
	return nil
}

// run drives a move from its recorded step to the end.
func (m *Mover) run(ctx context.Context, mv *moveRun) (Result, error) {
	defer closeConns(mv)
	res := Result{MoveID: mv.ID, Shard: mv.Shard, From: mv.Source, To: mv.Target}
	flipped := false
	if mv.resuming && mv.Progress.Undo != "" {
		// Stopped while undoing a flip that failed verification: finish the undo.
		if err := m.undoFlip(ctx, mv); err != nil {
			return res, fmt.Errorf("undo the flip: %w", err)
		}
		return res, errUndone{fmt.Errorf("verify: %w: %s", ErrMismatch, mv.Progress.Undo)}
	}
	if mv.resuming {
		var err error
		if flipped, err = m.isFlipped(ctx, mv); err != nil {
			return res, err
		}
		if flipped {
			// Killed between the flip and the release: release now (idempotent).
			if err := m.cfg.Fencer.Unfence(ctx, mv.Shard); err != nil {
				return res, fmt.Errorf("release fence after flip: %w", err)
			}
		}
		if !flipped && (mv.Step == StepFence || mv.Step == StepCopyData || mv.Step == StepFlipped) {
			// Killed under the fence: release it, then fence again from the catch-up.
			if err := m.unfence(ctx, mv); err != nil {
				return res, err
			}
			if mv.Method != MethodCopy {
				mv.Step = StepCatchUp
			} else {
				mv.Step = StepSchema
			}
		}
	}
	if !flipped {
		var err error
		switch mv.Method {
		case MethodCopy:
			err = m.runCopy(ctx, mv, &res)
		case MethodTrigger:
			err = m.runTrigger(ctx, mv, &res)
		default:
			err = m.runLogical(ctx, mv, &res)
		}
		if err != nil {
			return res, err
		}
	}
	if postFlipVerify(mv) && mv.Step.before(StepCleanup) {
		if err := m.setStep(ctx, mv, StepVerify); err != nil {
			mv.snap.close(context.WithoutCancel(ctx))
			return res, err
		}
		if err := m.verifyAfterFlip(ctx, mv, &res); err != nil {
			return res, err
		}
	}
	if m.cfg.AfterFlip != nil {
		if err := m.cfg.AfterFlip(ctx, mv.Shard, mv.Target, mv.TargetDSN); err != nil {
			return res, fmt.Errorf("after the flip: %w", err)
		}
	}
	if err := m.setStep(ctx, mv, StepCleanup); err != nil {
		return res, err
	}
	if err := m.cleanupMove(ctx, mv); err != nil {
		return res, fmt.Errorf("cleanup: %w", err)
	}
	m.measure(ctx, mv, &res)
	if err := m.finish(ctx, mv, "done", nil); err != nil {
		return res, err
	}
	res.Pause = mv.Pause
	m.log.Info("move done", "move", mv.ID, "shard", mv.Shard, "to", mv.Target, "pause", res.Pause)
	return res, nil
}

type stepFunc struct {
	step Step
	fn   func(context.Context, *moveRun) error
}

// runSteps runs the steps from the recorded one on (all of them for a new move).
func (m *Mover) runSteps(ctx context.Context, mv *moveRun, steps []stepFunc) error {
	from := mv.Step
	for _, s := range steps {
		if s.step.before(from) {
			continue
		}
		if err := m.setStep(ctx, mv, s.step); err != nil {
			return err
		}
		if err := s.fn(ctx, mv); err != nil {
			return err
		}
	}
	return nil
}

func (m *Mover) runLogical(ctx context.Context, mv *moveRun, res *Result) error {
	return m.runSteps(ctx, mv, []stepFunc{
		{StepSchema, m.stepSchema},
		{StepPublication, m.stepPublication},
		{StepSubscription, m.stepSlot},
		{StepCopy, m.stepCopy},
		{StepIndexes, m.stepIndexes},
		{StepCatchUp, m.stepCatchUp},
		{StepFence, func(ctx context.Context, mv *moveRun) error { return m.stepFence(ctx, mv, res) }},
	})
}

// measure fills the result's size from the target (best effort).
func (m *Mover) measure(ctx context.Context, mv *moveRun, res *Result) {
	dst, err := m.target(ctx, mv)
	if err != nil {
		return
	}
	_ = dst.QueryRow(ctx, `SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::bigint, coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'`, mv.Schema).Scan(&res.Rows, &res.Bytes)
}

func (m *Mover) stepSchema(ctx context.Context, mv *moveRun) error {
	dst, err := m.target(ctx, mv)
	if err != nil {
		return err
	}
	// A fence trigger left on the source by an aborted move comes along in
	// the dump; its function must exist on the target.
	if err := ensureMarker(ctx, dst); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	// The pre-copy restore is one transaction: the schema is there entirely or not at all.
	if ok, err := schemaExists(ctx, dst, mv.Schema); err != nil {
		return fmt.Errorf("check target schema: %w", err)
	} else if ok {
		return nil
	}
	if m.cfg.PrepareTarget != nil {
		if err := m.cfg.PrepareTarget(ctx, mv.Shard, mv.Target, mv.TargetDSN); err != nil {
			return fmt.Errorf("prepare the target: %w", err)
		}
	}
	if err := m.copySchema(ctx, mv, false); err != nil {
		return fmt.Errorf("copy schema: %w", err)
	}
	return nil
}

// ensureMarker creates the marker table; concurrent creators may race on the catalog's unique indexes.
func ensureMarker(ctx context.Context, conn *pgx.Conn) error {
	var err error
	for i := 0; i < 3; i++ {
		if _, err = conn.Exec(ctx, markerDDL+";\n"+guardDDL+";\n"+undoCaptureDDL); err == nil {
			return nil
		}
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || (pgErr.Code != "23505" && pgErr.Code != "42P07" && pgErr.Code != "42P06") {
			break
		}
	}
	return fmt.Errorf("create marker table: %w", err)
}

func (m *Mover) stepIndexes(ctx context.Context, mv *moveRun) error {
	src, dst, err := m.conns(ctx, mv)
	if err != nil {
		return err
	}
	want, err := postObjects(ctx, src, mv.Schema)
	if err != nil {
		return fmt.Errorf("count source indexes: %w", err)
	}
	have, err := postObjects(ctx, dst, mv.Schema)
	if err != nil {
		return fmt.Errorf("count target indexes: %w", err)
	}
	if have != want {
		// One transaction: none of the post-copy objects exist yet, or all do.
		if err := m.copySchema(ctx, mv, true); err != nil {
			return fmt.Errorf("build indexes: %w", err)
		}
	}
	names, err := tables(ctx, dst, mv.Schema)
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return nil
	}
	q := make([]string, len(names))
	for i, t := range names {
		q[i] = ident(mv.Schema, t)
	}
	if _, err := dst.Exec(ctx, `ANALYZE `+strings.Join(q, ", ")); err != nil {
		return fmt.Errorf("analyze the shard's tables: %w", err)
	}
	return nil
}

// insertMarkerSQL inserts the next marker row of move $1, returning its seq.
const insertMarkerSQL = `INSERT INTO pgtenant_move.marker (move_id, seq)
	SELECT $1, coalesce(max(seq), 0) + 1 FROM pgtenant_move.marker WHERE move_id = $1 RETURNING seq`

// insertMarker inserts a marker row for the move in tx and returns its seq.
// The transaction commits with synchronous_commit on: a logical WAL sender
// only sends flushed WAL, and with synchronous_commit off the commit would
// wait for the WAL writer (up to wal_writer_delay, 200ms by default).
func insertMarker(ctx context.Context, tx pgx.Tx, moveID int64) (int64, error) {
	if _, err := tx.Exec(ctx, `SET LOCAL synchronous_commit = on`); err != nil {
		return 0, fmt.Errorf("insert marker: %w", err)
	}
	var seq int64
	err := tx.QueryRow(ctx, insertMarkerSQL, moveID).Scan(&seq)
	if err != nil {
		return 0, fmt.Errorf("insert marker: %w", err)
	}
	return seq, nil
}

// waitMarker waits until the marker row is on the target: the stream's
// applier says so as soon as it applied it (this process applies the
// stream), and the target is polled every `every` in case it cannot (a
// stream started by an older process, or none).
func waitMarker(ctx context.Context, dst *pgx.Conn, mv *moveRun, seq int64, every time.Duration) error {
	moveID := mv.ID
	var markers *markerApplier
	var wake <-chan struct{}
	if mv.stream != nil && mv.stream.markers != nil {
		markers, wake = mv.stream.markers, mv.stream.markers.wake
	}
	for {
		if err := mv.streamErr(); err != nil {
			return err
		}
		if markers != nil && markers.applied(seq) {
			return nil
		}
		var ok bool
		if err := dst.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pgtenant_move.marker WHERE move_id = $1 AND seq = $2)`, moveID, seq).Scan(&ok); err != nil {
			return fmt.Errorf("poll marker: %w", err)
		}
		if ok {
			return nil
		}
		t := time.NewTimer(every)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("wait for the target to apply the source's changes: %w", ctx.Err())
		case <-wake:
		case <-t.C:
		}
		t.Stop()
	}
}

// stepCatchUp waits until a marker row committed on the source shows up on
// the target within MaxLag: the lag is then small enough to fence.
func (m *Mover) stepCatchUp(ctx context.Context, mv *moveRun) error {
	m.announceTarget(ctx, mv) // the routers warm the target while it catches up
	src, dst, err := m.conns(ctx, mv)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.CatchUpTimeout)
	defer cancel()
	if err := m.ensureStream(ctx, mv); err != nil {
		return err
	}
	var first time.Duration // the first marker's lag, for the error below
	for {
		t0 := time.Now()
		var seq int64
		if err := pgx.BeginFunc(ctx, src, func(tx pgx.Tx) (err error) {
			seq, err = insertMarker(ctx, tx, mv.ID)
			return err
		}); err != nil {
			return catchUpErr(ctx, err, first, time.Since(t0), m.cfg.CatchUpTimeout)
		}
		if err := waitMarker(ctx, dst, mv, seq, 5*time.Millisecond); err != nil {
			return catchUpErr(ctx, err, first, time.Since(t0), m.cfg.CatchUpTimeout)
		}
		lag := time.Since(t0)
		if first == 0 {
			first = lag
		}
		mv.Progress.LagMS = float64(lag.Microseconds()) / 1000
		_ = src.QueryRow(ctx, `SELECT coalesce((SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1), 0)`,
			repName(mv)).Scan(&mv.Progress.LagBytes)
		if err := m.saveProgress(ctx, mv); err != nil {
			return err
		}
		if lag <= m.cfg.MaxLag {
			m.log.Info("caught up", "move", mv.ID, "shard", mv.Shard, "lag", lag)
			return nil
		}
		m.log.Info("catching up", "move", mv.ID, "shard", mv.Shard, "lag", lag)
	}
}

// catchUpErr explains a catch-up that ran out of time: the shard's writes
// outpaced the stream (one WAL sender decodes them all), so the target never
// came within MaxLag. Other errors pass through.
func catchUpErr(ctx context.Context, err error, first, last time.Duration, limit time.Duration) error {
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) || first == 0 {
		return err
	}
	return fmt.Errorf("the target did not catch up within %s: the first marker took %s to reach it, the last one %s and counting; "+
		"the shard's writes outpace the stream that copies them (one WAL sender decodes them all); move the shard again when they are lower: %w",
		limit, first.Round(time.Millisecond), last.Round(time.Millisecond), err)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// missingRoles fails when roles that own or are granted objects of the schema
// on the source do not exist on the target (the schema restore would fail).
func missingRoles(ctx context.Context, src, dst *pgx.Conn, schema string) error {
	rows, err := src.Query(ctx, `WITH o AS (
		SELECT n.nspowner AS owner, n.nspacl AS acl FROM pg_namespace n WHERE n.nspname = $1
		UNION ALL SELECT c.relowner, c.relacl FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1
		UNION ALL SELECT p.proowner, p.proacl FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1
		UNION ALL SELECT t.typowner, t.typacl FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = $1)
		SELECT DISTINCT r.rolname::text FROM o
		LEFT JOIN LATERAL aclexplode(o.acl) a ON true
		JOIN pg_roles r ON r.oid = o.owner OR r.oid = a.grantee OR r.oid = a.grantor
		ORDER BY 1`, schema)
	missing, err := missingOnTarget(ctx, rows, err, dst, `SELECT rolname FROM pg_roles WHERE rolname = $1`)
	if err != nil {
		return fmt.Errorf("check the schema's roles on the target: %w", err)
	}
	if len(missing) > 0 {
		return fmt.Errorf("role(s) %s own or are granted objects of schema %s but do not exist on the target: create them there first",
			strings.Join(missing, ", "), schema)
	}
	return nil
}

// missingOnTarget collects the names rows (a query on the source, with its
// error) returns and keeps those for which exists (a query on the target
// taking the name as $1) finds no row.
func missingOnTarget(ctx context.Context, rows pgx.Rows, err error, dst *pgx.Conn, exists string) ([]string, error) {
	if err != nil {
		return nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, n := range names {
		var found string
		switch err := dst.QueryRow(ctx, exists, n).Scan(&found); {
		case errors.Is(err, pgx.ErrNoRows):
			missing = append(missing, n)
		case err != nil:
			return nil, err
		}
	}
	return missing, nil
}

// missingExtensions fails when the schema's columns use types of extensions
// that are not installed on the target.
func missingExtensions(ctx context.Context, src, dst *pgx.Conn, schema string) error {
	rows, err := src.Query(ctx, `SELECT DISTINCT e.extname::text FROM pg_attribute a
		JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_type t ON t.oid = a.atttypid
		JOIN pg_depend d ON d.classid = 'pg_type'::regclass AND d.objid IN (t.oid, t.typelem) AND d.deptype = 'e'
		JOIN pg_extension e ON e.oid = d.refobjid
		WHERE n.nspname = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY 1`, schema)
	missing, err := missingOnTarget(ctx, rows, err, dst, `SELECT extname::text FROM pg_extension WHERE extname = $1`)
	if err != nil {
		return fmt.Errorf("check the schema's extensions on the target: %w", err)
	}
	if len(missing) > 0 {
		return fmt.Errorf("extension(s) %s are used by schema %s but not installed on the target: CREATE EXTENSION there first",
			strings.Join(missing, ", "), schema)
	}
	return nil
}

// openTransactions describes the oldest transactions holding a transaction id
// on the server of conn (what creating a logical slot waits for).
func openTransactions(ctx context.Context, conn *pgx.Conn) string {
	var desc string
	if err := conn.QueryRow(ctx, `SELECT coalesce(string_agg(format('pid %s in %s open %s, %s', pid, datname,
			date_trunc('second', now() - xact_start), state), '; '), 'none seen now')
		FROM (SELECT pid, datname, xact_start, state FROM pg_stat_activity
			WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() AND backend_type = 'client backend'
			ORDER BY xact_start LIMIT 5) a`).Scan(&desc); err != nil {
		return "could not list them: " + err.Error()
	}
	return desc
}
