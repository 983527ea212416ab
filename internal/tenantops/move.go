package tenantops

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/importer"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/tablelock"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// MoveOptions tune Move.
type MoveOptions struct {
	// ToShard is the target shard (ignored with Isolate).
	ToShard int
	// Isolate picks the target: the lowest shard without any tenant (not
	// the source, not fenced, not an import's legacy shard).
	Isolate bool
	// Batch is the rows deleted per transaction from the source after the
	// flip; 0 means 5000.
	Batch int
	// FenceTimeout bounds the wait for every live router to hold the
	// tenant; 0 means 10s.
	FenceTimeout time.Duration
	// Lease is the fence lease (routers release a fence whose mover
	// stopped renewing it); 0 means 5s, renewed every second.
	Lease time.Duration
	// MaxLag: catch-up rounds run until one takes fewer queue entries
	// than this; 0 means 50.
	MaxLag int64
	// LockWait bounds the wait for the source's tables when the capture
	// triggers are created: autovacuum is waited out (see capture.go's
	// lockedDDL), writers are not kept waiting behind it; 0 means a
	// minute.
	LockWait time.Duration
	// Progress, when set, is told each step.
	Progress func(step string)
}

// MoveResult says what Move did.
type MoveResult struct {
	MoveID           int64
	Tenant           string
	From, To         int
	FromNode, ToNode string
	// Copied is the rows copied at the snapshot; CaughtUp the queue
	// entries applied after it (under the fence: FinalRound).
	Copied, CaughtUp, FinalRound int64
	// Stale is the rows of the tenant found in the target shard before the
	// copy (left by an interrupted move; the router never routed there) and deleted.
	Stale int64
	// Deleted is the rows deleted from the source after the flip.
	Deleted int64
	// Pause is from the fence to the flip's commit: how long the tenant's
	// new transactions were held. FenceAck is the part spent waiting for
	// every router to hold the tenant.
	Pause, FenceAck time.Duration
	// Tables are the rows of the tenant per table on the target at the flip.
	Tables   []TableRows
	Duration time.Duration
}

// moving is one move in progress.
type moving struct {
	id     int64
	tenant string
	to     int // the target shard
	// blocks is the shard count an import's id blocks are cut by, while
	// an import is recorded in the catalog (0: none; see seqPlan).
	blocks   int
	src, dst *pgx.Conn
	srcNode  string       // the source's node
	sst      *shardTables // source schema
	dst_     *shardTables // target schema
	// keyTypes caches the SQL types of each table's key (by index in sst.list).
	keyTypes map[int][]string
}

// Move moves tenant id to another shard online (see the package doc and
// capture.go): checks, stale rows of the tenant in the target deleted,
// key collisions refused (23505 with the keys), target sequences set past
// both shards', capture triggers, copy at a snapshot, catch-up rounds, then
// the fence of that tenant only (routers hold its new transactions and wait
// for those in flight), a last round, sequences, row counts compared, and
// the flip of its placement (explicit from then on) with the fence deleted
// in one catalog transaction. Then the triggers are dropped and the rows
// deleted from the source in batches. Anything failing before the flip is
// undone (fence lifted, triggers dropped, copied rows deleted); the tenant
// stays where it was. A move whose process died after the flip is finished
// (old rows deleted) by running the same command again.
func (o *Ops) Move(ctx context.Context, id string, opts MoveOptions) (MoveResult, error) {
	start := time.Now()
	res := MoveResult{Tenant: id}
	step := func(s string) {
		o.log.Info("tenant move", "tenant", id, "step", s, "move", res.MoveID)
		if opts.Progress != nil {
			opts.Progress(s)
		}
	}
	if opts.FenceTimeout <= 0 {
		opts.FenceTimeout = 10 * time.Second
	}
	if opts.Lease <= 0 {
		opts.Lease = 5 * time.Second
	}
	if opts.MaxLag <= 0 {
		opts.MaxLag = 50
	}
	// One mover per tenant: a session lock on the catalog, held until the
	// move returns (a mover that dies loses it with its connection).
	lock, err := o.cat.Pool().Acquire(ctx)
	if err != nil {
		return res, fmt.Errorf("tenant move: %w", err)
	}
	defer lock.Release()
	var locked bool
	if err := lock.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended('pgtenant tenant move ' || $1, 0))`, id).Scan(&locked); err != nil {
		return res, fmt.Errorf("tenant move: %w", err)
	}
	if !locked {
		return res, &Error{Code: "55000", Message: fmt.Sprintf("another move of tenant %q is running", id), Hint: "wait for it to end"}
	}
	defer lock.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtextextended('pgtenant tenant move ' || $1, 0))`, id)
	if done, err := o.finishFlipped(ctx, id, opts, &res); done || err != nil {
		return res, err
	}
	loc, err := o.locate(ctx, id)
	if err != nil {
		return res, err
	}
	res.From, res.FromNode = loc.Shard.ID, loc.Node.Name
	to, err := o.target(ctx, loc, opts)
	if err != nil {
		return res, err
	}
	res.To, res.ToNode = to.Shard.ID, to.Node.Name
	src, err := connect(ctx, loc.dsn, "node "+loc.Node.Name)
	if err != nil {
		return res, err
	}
	defer src.Close(context.WithoutCancel(ctx))
	dst, err := connect(ctx, to.dsn, "node "+to.Node.Name)
	if err != nil {
		return res, err
	}
	defer dst.Close(context.WithoutCancel(ctx))
	sst, err := o.loadTables(ctx, src, loc.Shard.Schema)
	if err != nil {
		return res, err
	}
	tst, err := o.loadTables(ctx, dst, to.Shard.Schema)
	if err != nil {
		return res, err
	}
	if err := sameTables(sst, tst); err != nil {
		return res, err
	}
	var nokey []string
	for _, t := range sst.list {
		if len(t.key) == 0 {
			nokey = append(nokey, t.rule.Name)
		}
	}
	if len(nokey) > 0 {
		return res, &Error{Code: "55000", Message: "a tenant move needs a primary key on every table with tenant rows; these have none: " + strings.Join(nokey, ", "),
			Hint: "add a primary key (pgtenant migrate up), or move the whole shard (pgtenant shard move)"}
	}
	mv := &moving{tenant: id, to: res.To, src: src, dst: dst, srcNode: loc.Node.Name, sst: sst, dst_: tst, keyTypes: map[int][]string{}}
	if mv.blocks, err = o.idBlockShards(ctx); err != nil {
		return res, err
	}
	if err := o.cat.Pool().QueryRow(ctx, `INSERT INTO pgtenant.tenant_moves (tenant, source_shard, target_shard, step)
		VALUES ($1, $2, $3, 'check') RETURNING id`, id, res.From, res.To).Scan(&mv.id); err != nil {
		if strings.Contains(err.Error(), "23505") {
			return res, &Error{Code: "55000", Message: fmt.Sprintf("another move of tenant %q is running", id), Err: err}
		}
		return res, fmt.Errorf("record the move: %w", err)
	}
	res.MoveID = mv.id
	flipped := false
	err = o.moveRows(ctx, mv, opts, &res, step, &flipped)
	if err != nil && !flipped {
		o.undo(ctx, mv, err)
		return res, err
	}
	if err != nil {
		o.setMove(ctx, mv.id, "flipped", "running", err.Error())
		return res, fmt.Errorf("tenant %q moved to shard %d, but the cleanup failed (run the same command again to finish it): %w", id, res.To, err)
	}
	res.Duration = time.Since(start)
	if _, err := o.cat.Pool().Exec(ctx, `UPDATE pgtenant.tenant_moves SET step = 'done', status = 'done', rows = $2, pause_ms = $3,
		updated_at = now(), finished_at = now() WHERE id = $1`, mv.id, res.Copied+res.CaughtUp, float64(res.Pause.Microseconds())/1000); err != nil {
		o.log.Warn("record the end of the move", "move", mv.id, "err", err)
	}
	step("done")
	return res, nil
}

// moveRows is Move once checked and recorded.
func (o *Ops) moveRows(ctx context.Context, mv *moving, opts MoveOptions, res *MoveResult, step func(string), flipped *bool) error {
	src, dst, sst, tst, id := mv.src, mv.dst, mv.sst, mv.dst_, mv.tenant
	// Rows of the tenant in the target are stale (the router routes it to
	// the source): an interrupted move's. They go first.
	stale, err := tables.CountTenantRows(ctx, dst, tst.schema, id, tst.deleteOrder())
	if err != nil {
		return err
	}
	for _, rc := range stale {
		res.Stale += rc.Rows
	}
	if res.Stale > 0 {
		step(fmt.Sprintf("deleting %d stale rows of the tenant in the target", res.Stale))
		if err := tables.PurgeTenant(ctx, dst, tst.schema, id, tst.deleteOrder(), 0, nil); err != nil {
			return err
		}
	}
	step("checking keys")
	if err := collisions(ctx, mv); err != nil {
		return err
	}
	if err := bumpTargetSequences(ctx, mv, 1_000_000); err != nil {
		return err
	}
	step("capture")
	o.setMove(ctx, mv.id, "capture", "running", "")
	locks := ddlLocks{node: mv.srcNode, schemas: []string{sst.schema}, modes: tablelock.ConflictsShareRowExclusive, wait: opts.LockWait}
	for _, t := range sst.list {
		locks.tables = append(locks.tables, pgx.Identifier{sst.schema, t.rule.Name}.Sanitize())
	}
	if err := lockedDDL(ctx, src, locks, captureDDL(mv.id, sst, id)); err != nil {
		return fmt.Errorf("create the capture triggers: %w", err)
	}
	step("copy")
	o.setMove(ctx, mv.id, "copy", "running", "")
	if err := copyTenant(ctx, mv, res); err != nil {
		return err
	}
	step("catch-up")
	o.setMove(ctx, mv.id, "catchup", "running", "")
	for i := 0; i < 100; i++ {
		n, err := mv.round(ctx)
		if err != nil {
			return err
		}
		res.CaughtUp += n
		if n < opts.MaxLag {
			break
		}
	}
	// The fence: this tenant's new transactions wait in the routers.
	step("fence")
	o.setMove(ctx, mv.id, "fence", "running", "")
	t0 := time.Now()
	v, err := o.cat.FenceTenant(ctx, id, res.From, mv.id, opts.Lease)
	if err != nil {
		return err
	}
	rctx, stopRenew := context.WithCancel(ctx)
	renewErr := make(chan error, 1)
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-rctx.Done():
				renewErr <- nil
				return
			case <-t.C:
				if err := o.cat.RenewTenantFence(rctx, id, mv.id, opts.Lease); err != nil && rctx.Err() == nil {
					renewErr <- err
					return
				}
			}
		}
	}()
	defer stopRenew()
	wctx, cancel := context.WithTimeout(ctx, opts.FenceTimeout)
	err = o.cat.WaitAcked(wctx, v, 3*time.Second, 2*time.Millisecond)
	cancel()
	if err != nil {
		return fmt.Errorf("fence: %w", err)
	}
	res.FenceAck = time.Since(t0)
	n, err := mv.round(ctx)
	if err != nil {
		return err
	}
	res.FinalRound = n
	res.CaughtUp += n
	if err := syncSequencesFrom(ctx, mv); err != nil {
		return err
	}
	// The target as the last round left it, for the comparison after the
	// flip (the source keeps the tenant's rows frozen until then: no router
	// routes it there any more).
	vtx, err := dst.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("target: snapshot for the comparison: %w", err)
	}
	defer vtx.Rollback(context.WithoutCancel(ctx))
	if _, err := vtx.Exec(ctx, `SELECT 1`); err != nil {
		return fmt.Errorf("target: snapshot for the comparison: %w", err)
	}
	select {
	case err := <-renewErr:
		if err != nil {
			return err
		}
	default:
	}
	fv, err := o.cat.FlipTenant(ctx, id, res.From, res.To, mv.id)
	if err != nil {
		return err
	}
	*flipped = true
	res.Pause = time.Since(t0)
	stopRenew()
	o.setMove(ctx, mv.id, "flipped", "running", "")
	step(fmt.Sprintf("flipped (pause %s, of which the routers' acknowledgement of the fence %s)", res.Pause.Round(time.Microsecond), res.FenceAck.Round(time.Microsecond)))
	// Off the pause: the tenant's rows per table in the target as of the
	// flip and in the frozen source must be equal, or the old rows stay.
	if res.Tables, err = compareCounts(ctx, mv); err != nil {
		return err
	}
	if err := vtx.Rollback(ctx); err != nil {
		return err
	}
	// Routers route the tenant to the target from their next map; wait
	// for them before the old rows go (nothing reads them any more).
	wctx, cancel = context.WithTimeout(ctx, opts.FenceTimeout)
	if err := o.cat.WaitAcked(wctx, fv, 3*time.Second, 2*time.Millisecond); err != nil {
		o.log.Warn("routers did not acknowledge the flip in time; deleting the old rows anyway", "tenant", id, "err", err)
	}
	cancel()
	return o.cleanupSource(ctx, mv.id, src, mv.srcNode, sst, id, opts.Batch, res, step)
}

// cleanupSource drops the capture and deletes the tenant's rows from the
// source after the flip.
func (o *Ops) cleanupSource(ctx context.Context, moveID int64, src *pgx.Conn, srcNode string, sst *shardTables, id string, batch int, res *MoveResult, step func(string)) error {
	step("cleanup")
	if err := dropCapture(ctx, src, srcNode, moveID); err != nil {
		return err
	}
	return tables.PurgeTenant(ctx, src, sst.schema, id, sst.deleteOrder(), batch, func(rc tables.RowCount) { res.Deleted += rc.Rows })
}

// finishFlipped finishes a move of tenant id whose process died after the
// flip (its row says 'flipped'): the capture is dropped and the old rows
// deleted. A move that died before the flip is undone. done reports whether
// there was a flipped move to finish.
func (o *Ops) finishFlipped(ctx context.Context, id string, opts MoveOptions, res *MoveResult) (bool, error) {
	var moveID int64
	var from, to int
	var stepName string
	err := o.cat.Pool().QueryRow(ctx, `SELECT id, source_shard, target_shard, step FROM pgtenant.tenant_moves
		WHERE tenant = $1 AND status = 'running'`, id).Scan(&moveID, &from, &to, &stepName)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look for an unfinished move: %w", err)
	}
	loc, err := o.locate(ctx, id)
	if err != nil {
		return false, err
	}
	srcLoc, err := o.shardLocation(ctx, from)
	if err != nil {
		return false, err
	}
	src, err := connect(ctx, srcLoc.dsn, "node "+srcLoc.Node.Name)
	if err != nil {
		return false, err
	}
	defer src.Close(context.WithoutCancel(ctx))
	sst, err := o.loadTables(ctx, src, srcLoc.Shard.Schema)
	if err != nil {
		return false, err
	}
	if loc.Shard.ID == from {
		// Died before the flip: the fence lapsed; undo and start again.
		o.log.Warn("an earlier move of the tenant did not finish; undoing it", "tenant", id, "move", moveID, "step", stepName)
		dstLoc, err := o.shardLocation(ctx, to)
		if err != nil {
			return false, err
		}
		dst, err := connect(ctx, dstLoc.dsn, "node "+dstLoc.Node.Name)
		if err != nil {
			return false, err
		}
		defer dst.Close(context.WithoutCancel(ctx))
		tst, err := o.loadTables(ctx, dst, dstLoc.Shard.Schema)
		if err != nil {
			return false, err
		}
		o.undo(ctx, &moving{id: moveID, tenant: id, src: src, dst: dst, srcNode: srcLoc.Node.Name, sst: sst, dst_: tst, keyTypes: map[int][]string{}}, errors.New("the mover stopped before the flip"))
		return false, nil
	}
	*res = MoveResult{MoveID: moveID, Tenant: id, From: from, To: loc.Shard.ID, FromNode: srcLoc.Node.Name, ToNode: loc.Node.Name}
	if err := o.cleanupSource(ctx, moveID, src, srcLoc.Node.Name, sst, id, opts.Batch, res, func(s string) { o.log.Info("tenant move", "tenant", id, "step", s, "move", moveID) }); err != nil {
		return true, err
	}
	o.setMove(ctx, moveID, "done", "done", "")
	return true, nil
}

// undo rolls back a move that failed before its flip.
func (o *Ops) undo(ctx context.Context, mv *moving, cause error) {
	ctx = context.WithoutCancel(ctx)
	var errs []string
	if _, err := o.cat.UnfenceTenant(ctx, mv.tenant); err != nil {
		errs = append(errs, err.Error())
	}
	if err := dropCapture(ctx, mv.src, mv.srcNode, mv.id); err != nil {
		errs = append(errs, err.Error())
	}
	if err := tables.PurgeTenant(ctx, mv.dst, mv.dst_.schema, mv.tenant, mv.dst_.deleteOrder(), 0, nil); err != nil {
		errs = append(errs, "delete the copied rows from the target: "+err.Error())
	}
	status := "aborted"
	msg := cause.Error()
	if len(errs) > 0 {
		status = "failed"
		msg += "; undo: " + strings.Join(errs, "; ")
		o.log.Error("tenant move: undo incomplete (run the move again to finish it)", "tenant", mv.tenant, "move", mv.id, "errors", errs)
	}
	o.setMove(ctx, mv.id, "undone", status, msg)
	if status == "aborted" {
		o.cat.RecordOperation(ctx, "tenant move", map[string]any{"tenant": mv.tenant, "move": mv.id}, cause)
	}
}

func (o *Ops) setMove(ctx context.Context, id int64, step, status, msg string) {
	var e *string
	if msg != "" {
		e = &msg
	}
	if _, err := o.cat.Pool().Exec(context.WithoutCancel(ctx), `UPDATE pgtenant.tenant_moves SET step = $2, status = $3, error = coalesce($4, error),
		updated_at = now(), finished_at = CASE WHEN $3 <> 'running' THEN now() END WHERE id = $1`, id, step, status, e); err != nil {
		o.log.Warn("record the move's step", "move", id, "err", err)
	}
}

// idBlockShards is the catalog's shard count while an import is recorded
// (its shards' sequences hand out ids from blocks cut by it), else 0.
func (o *Ops) idBlockShards(ctx context.Context) (int, error) {
	var importing bool
	if err := o.cat.Pool().QueryRow(ctx, `SELECT EXISTS (SELECT FROM pgtenant.imports)`).Scan(&importing); err != nil {
		return 0, fmt.Errorf("read the catalog's imports: %w", err)
	}
	if !importing {
		return 0, nil
	}
	return o.cat.ShardCount(ctx)
}

// target resolves the move's target shard.
func (o *Ops) target(ctx context.Context, from located, opts MoveOptions) (located, error) {
	shard := opts.ToShard
	if opts.Isolate {
		err := o.cat.Pool().QueryRow(ctx, `SELECT s.id FROM pgtenant.shards s
			WHERE s.state = 'active' AND s.id <> $1 AND NOT EXISTS (SELECT FROM pgtenant.tenants t WHERE t.shard = s.id)
			AND NOT EXISTS (SELECT FROM pgtenant.import_shards i JOIN pgtenant.imports m ON m.state <> 'finished' WHERE i.shard = s.id AND i.state <> 'cutover')
			ORDER BY s.id LIMIT 1`, from.Shard.ID).Scan(&shard)
		if errors.Is(err, pgx.ErrNoRows) {
			return located{}, &Error{Code: "55000", Message: "no shard is without tenants: --isolate needs an empty shard",
				Hint: "name a shard with --to-shard N (pgtenant shard list shows their tenant counts), or free one by moving its tenants"}
		}
		if err != nil {
			return located{}, fmt.Errorf("find an empty shard: %w", err)
		}
	}
	if shard == from.Shard.ID {
		return located{}, &Error{Code: "22023", Message: fmt.Sprintf("tenant %q is already in shard %d", from.Tenant, shard)}
	}
	to, err := o.shardLocation(ctx, shard)
	if err != nil {
		return located{}, err
	}
	if to.Shard.State != placement.StateActive || from.Shard.State != placement.StateActive {
		return located{}, &Error{Code: "55000", Message: fmt.Sprintf("shard %d or %d is fenced (a shard move runs)", from.Shard.ID, shard),
			Hint: "wait for the shard move to end (pgtenant shard moves)"}
	}
	return to, nil
}

// shardLocation is a shard with its node (22023 when it does not exist,
// 55000 when an import still serves it from its legacy database).
func (o *Ops) shardLocation(ctx context.Context, shard int) (located, error) {
	shards, err := o.cat.Shards(ctx)
	if err != nil {
		return located{}, err
	}
	for _, s := range shards {
		if s.ID != shard {
			continue
		}
		if err := o.notLegacy(ctx, shard); err != nil {
			return located{}, err
		}
		m, err := o.cat.LoadMap(ctx)
		if err != nil {
			return located{}, err
		}
		node, ok := m.Nodes[s.Node]
		if !ok {
			return located{}, fmt.Errorf("shard %d: node %s is not in the map", shard, s.Node)
		}
		dsn, err := o.cat.ResolveDSN(node.DSN)
		if err != nil {
			return located{}, err
		}
		return located{Location: placement.Location{Shard: s, Node: node}, dsn: dsn}, nil
	}
	return located{}, &Error{Code: "22023", Message: fmt.Sprintf("shard %d does not exist (there are %d shards)", shard, len(shards)),
		Hint: "pgtenant shard list shows the shards"}
}

// sameTables checks that both shards have the same tables with tenant rows,
// keys and columns.
func sameTables(a, b *shardTables) error {
	if len(a.list) == len(b.list) {
		same := true
		for i := range a.list {
			x, y := a.list[i], b.list[i]
			same = same && x.rule.Name == y.rule.Name && slices.Equal(x.cols, y.cols) && slices.Equal(x.key, y.key)
		}
		if same {
			return nil
		}
	}
	return &Error{Code: "55000", Message: fmt.Sprintf("the tables of %s and %s differ (names, columns or keys)", a.schema, b.schema),
		Hint: "bring every shard to the same migration version first (pgtenant migrate status)"}
}

// collisions refuses a move whose rows would take keys another tenant's
// rows hold in the target shard (23505, with up to 10 keys per table).
func collisions(ctx context.Context, mv *moving) error {
	if _, err := mv.src.Exec(ctx, `SELECT set_config('pgtenant.op_tenant', $1, false)`, mv.tenant); err != nil {
		return err
	}
	tx, err := mv.dst.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var found []string
	for i, t := range mv.sst.list {
		dt := pgx.Identifier{mv.dst_.schema, t.rule.Name}.Sanitize()
		kt := fmt.Sprintf("pgtenant_c%d", i)
		if _, err := tx.Exec(ctx, fmt.Sprintf("CREATE TEMP TABLE %s ON COMMIT DROP AS SELECT %s FROM %s WITH NO DATA", kt, colList(t.key), dt)); err != nil {
			return fmt.Errorf("target: %w", err)
		}
		q := fmt.Sprintf("SELECT %s FROM %s pgtenant_t WHERE %s", prefixed("pgtenant_t", t.key), pgx.Identifier{mv.sst.schema, t.rule.Name}.Sanitize(), mv.sst.cond(t, tenantSetting))
		if _, err := pipeCopy(ctx, mv.src, mv.dst, q, kt); err != nil {
			return fmt.Errorf("check the keys of %s: %w", t.rule.Name, err)
		}
		rows, err := tx.Query(ctx, fmt.Sprintf("SELECT (%s)::text FROM %s JOIN %s pgtenant_t ON (%s) = (%s) ORDER BY 1 LIMIT 10",
			prefixed(kt, t.key), kt, dt, prefixed(kt, t.key), prefixed("pgtenant_t", t.key)))
		if err != nil {
			return fmt.Errorf("check the keys of %s: %w", t.rule.Name, err)
		}
		keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("check the keys of %s: %w", t.rule.Name, err)
		}
		if len(keys) > 0 {
			found = append(found, fmt.Sprintf("%s (%s) = %s", t.rule.Name, strings.Join(t.key, ", "), strings.Join(keys, ", ")))
		}
	}
	if len(found) > 0 {
		return &Error{Code: "23505", Message: fmt.Sprintf("rows of tenant %q have keys that rows of shard %s already hold: %s", mv.tenant, mv.dst_.schema, strings.Join(found, "; ")),
			Hint: "keys from per-shard sequences repeat across shards: move to an empty shard (--isolate), or give the tables keys unique across shards (uuid, or one sequence range per shard)"}
	}
	return nil
}

// copyTenant copies the tenant's rows at one source snapshot (taken after
// the capture triggers exist) into one target transaction, parents first.
func copyTenant(ctx context.Context, mv *moving, res *MoveResult) error {
	stx, err := mv.src.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("source: begin copy: %w", err)
	}
	defer stx.Rollback(context.WithoutCancel(ctx))
	if _, err := stx.Exec(ctx, setTenantSQL, mv.tenant); err != nil {
		return err
	}
	dtx, err := mv.dst.Begin(ctx)
	if err != nil {
		return fmt.Errorf("target: begin copy: %w", err)
	}
	defer dtx.Rollback(context.WithoutCancel(ctx))
	for _, t := range mv.sst.list {
		q := fmt.Sprintf("SELECT %s FROM %s pgtenant_t WHERE %s", colList(t.cols), pgx.Identifier{mv.sst.schema, t.rule.Name}.Sanitize(), mv.sst.cond(t, tenantSetting))
		n, err := pipeCopy(ctx, mv.src, mv.dst, q, pgx.Identifier{mv.dst_.schema, t.rule.Name}.Sanitize()+" ("+colList(t.cols)+")")
		if err != nil {
			return fmt.Errorf("copy %s: %w", t.rule.Name, err)
		}
		res.Copied += n
	}
	if err := dtx.Commit(ctx); err != nil {
		return fmt.Errorf("target: commit copy: %w", err)
	}
	return stx.Commit(ctx)
}

// ownedSequences lists the sequences owned by columns of the shard's
// tenant tables: "table.column" → the sequence's qualified name.
func ownedSequences(ctx context.Context, conn *pgx.Conn, st *shardTables) (map[string]string, error) {
	names := make([]string, len(st.list))
	for i, t := range st.list {
		names[i] = t.rule.Name
	}
	rows, err := conn.Query(ctx, `SELECT c.relname || '.' || a.attname, s.oid::regclass::text
		FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
		JOIN pg_class c ON c.oid = d.refobjid JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.refobjsubid
		WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
		AND n.nspname = $1 AND c.relname = ANY($2)`, st.schema, names)
	if err != nil {
		return nil, fmt.Errorf("list the sequences of %s: %w", st.schema, err)
	}
	out := map[string]string{}
	var k, v string
	_, err = pgx.ForEachRow(rows, []any{&k, &v}, func() error { out[k] = v; return nil })
	return out, err
}

// lastValue is a sequence's last value given out (or start - 1).
func lastValue(ctx context.Context, conn *pgx.Conn, seq string) (int64, error) {
	var v int64
	err := conn.QueryRow(ctx, `SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM `+seq).Scan(&v)
	return v, err
}

// bumpTargetSequences sets each target sequence headroom past the larger
// of the two shards' last values: ids given out in either shard while the
// move runs cannot meet. With an import's id blocks (seqPlan) a target
// sequence stays in its shard's block.
func bumpTargetSequences(ctx context.Context, mv *moving, headroom int64) error {
	plan, err := seqPlan(ctx, mv, headroom)
	if err != nil {
		return err
	}
	for _, p := range plan {
		if _, err := mv.dst.Exec(ctx, `SELECT setval($1::regclass, least($2::bigint, (SELECT seqmax FROM pg_sequence WHERE seqrelid = $1::regclass)))`, p.seq, p.to); err != nil {
			return fmt.Errorf("set target sequence %s: %w", p.seq, err)
		}
	}
	return nil
}

// syncSequencesFrom sets each target sequence at least to its source's
// last value (under the fence): the tenant's ids came from the source's.
// With an import's id blocks (seqPlan) a target sequence stays in its
// shard's block.
func syncSequencesFrom(ctx context.Context, mv *moving) error {
	plan, err := seqPlan(ctx, mv, 0)
	if err != nil {
		return err
	}
	for _, p := range plan {
		if _, err := mv.dst.Exec(ctx, `SELECT setval($1::regclass, $2) WHERE $2 > (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM `+p.seq+`)`, p.seq, p.to); err != nil {
			return fmt.Errorf("set target sequence %s: %w", p.seq, err)
		}
	}
	return nil
}

// seqSet is a target sequence and the value it is raised to.
type seqSet struct {
	seq string
	to  int64
}

// seqPlan is what bumpTargetSequences (headroom > 0) and syncSequencesFrom
// (headroom 0) raise the target's sequences to: past both shards' last
// values plus headroom, or to the source's.
//
// While an import is recorded in the catalog (mv.blocks > 0), each
// cut-over shard's sequence hands out ids from a block of its own
// (importer/idblocks.go), so that a rollback writing shards back into the
// legacy tables meets no id twice. Raising the target's sequence to the
// source's would put it in the source's block: both shards would then hand
// out the same ids. So a target sequence in its own block is left there
// when the source's ids are outside that block: the moved rows keep the
// ids the source's sequence (or the legacy database, below every block)
// gave them, which the target's sequence, inside its block, never reaches;
// the ids stay unique across shards, and a rollback of either shard writes
// back ids the legacy database's sequence is set past (the end of the
// span; or, for a block in a later span, a block's width ahead of it).
// A source sequence found in the target's block (set there before) is
// followed as usual, within the block. A raise that would leave the
// target's block, or move a sequence outside its own block into another
// shard's, is refused (55000) before anything is changed.
func seqPlan(ctx context.Context, mv *moving, headroom int64) ([]seqSet, error) {
	ss, err := ownedSequences(ctx, mv.src, mv.sst)
	if err != nil {
		return nil, err
	}
	ts, err := ownedSequences(ctx, mv.dst, mv.dst_)
	if err != nil {
		return nil, err
	}
	cols := make([]string, 0, len(ts))
	for col := range ts {
		cols = append(cols, col)
	}
	slices.Sort(cols)
	var plan []seqSet
	for _, col := range cols {
		tseq := ts[col]
		sseq, ok := ss[col]
		if !ok {
			continue
		}
		sv, err := lastValue(ctx, mv.src, sseq)
		if err != nil {
			return nil, fmt.Errorf("read source sequence %s: %w", sseq, err)
		}
		tv, err := lastValue(ctx, mv.dst, tseq)
		if err != nil {
			return nil, fmt.Errorf("read target sequence %s: %w", tseq, err)
		}
		want := sv
		if headroom > 0 {
			want = max(sv, tv) + headroom
		}
		if mv.blocks > 0 {
			var smax, inc int64
			if err := mv.dst.QueryRow(ctx, `SELECT seqmax, seqincrement FROM pg_sequence WHERE seqrelid = $1::regclass`, tseq).Scan(&smax, &inc); err != nil {
				return nil, fmt.Errorf("read target sequence %s: %w", tseq, err)
			}
			own, end := importer.IDBlockOf(smax, inc, mv.blocks, tv+inc)
			if own == mv.to {
				if from, _ := importer.IDBlockOf(smax, inc, mv.blocks, sv); from != mv.to {
					continue // the source's ids are not in the target's block
				}
				if want >= end {
					return nil, blockError(mv, tseq, want, fmt.Sprintf("past the end of the shard's id block (%d)", end))
				}
			} else if other, _ := importer.IDBlockOf(smax, inc, mv.blocks, want+inc); other >= 0 && other != mv.to {
				return nil, blockError(mv, tseq, want, fmt.Sprintf("into shard %d's id block", other))
			}
		}
		plan = append(plan, seqSet{seq: tseq, to: want})
	}
	return plan, nil
}

// blockError refuses a sequence raise that would break an import's id blocks.
func blockError(mv *moving, seq string, want int64, where string) error {
	return &Error{Code: "55000", Message: fmt.Sprintf("tenant %q cannot move to shard %d: its sequence %s would have to be raised to %d, %s, and then hand out ids another shard's rows can hold (an import's shards each hand out ids from their own block)",
		mv.tenant, mv.to, seq, want, where),
		Hint: "move the tenant to another shard; once the import is finished (pgtenant import finish) no rollback writes the shards back and the move is allowed"}
}

// compareCounts compares the tenant's row count per table on both sides
// (under the fence, after the last round).
func compareCounts(ctx context.Context, mv *moving) ([]TableRows, error) {
	s, err := tables.CountTenantRows(ctx, mv.src, mv.sst.schema, mv.tenant, mv.sst.deleteOrder())
	if err != nil {
		return nil, err
	}
	d, err := tables.CountTenantRows(ctx, mv.dst, mv.dst_.schema, mv.tenant, mv.dst_.deleteOrder())
	if err != nil {
		return nil, err
	}
	if fmt.Sprint(s) != fmt.Sprint(d) {
		return nil, &Error{Code: "XX000", Message: fmt.Sprintf("the tenant's row counts differ between the old shard %s %v and the new one %s at the flip %v: the tenant runs in the new shard, its old rows were kept",
			mv.sst.schema, s, mv.dst_.schema, d),
			Hint: "compare the two shards' rows of the tenant (a write made on the node directly, not through a router, is not captured), then delete the old ones with the same tenant move command"}
	}
	out := make([]TableRows, len(d))
	for i, rc := range d {
		out[i] = TableRows{Table: rc.Table, Rows: rc.Rows}
	}
	return out, nil
}
