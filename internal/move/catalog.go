package move

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// Progress is what a move reports in pgtenant.moves.progress.
type Progress struct {
	// Options are the options the move was started with (kept for Resume).
	Options Options `json:"options"`
	// SourceRows (estimated) and SourceBytes are the shard's size on the source when the move started.
	SourceRows  int64 `json:"source_rows,omitempty"`
	SourceBytes int64 `json:"source_bytes,omitempty"`
	// Tables and TablesReady count the tables in the subscription and those copied.
	Tables      int `json:"tables,omitempty"`
	TablesReady int `json:"tables_ready,omitempty"`
	// Rows and Bytes are copied so far (rows inserted into, and size of, the target's tables).
	Rows  int64 `json:"rows,omitempty"`
	Bytes int64 `json:"bytes,omitempty"`
	// LagMS is the last measured replication lag: time for a marker row to reach the target.
	LagMS float64 `json:"lag_ms,omitempty"`
	// Applied counts the changes applied from the change queue (method trigger).
	Applied int64 `json:"applied,omitempty"`
	// LagBytes is the source's WAL position minus the slot's confirmed flush position.
	LagBytes int64 `json:"lag_bytes,omitempty"`
	// SubOID is the subscription's oid on the target (names its table-sync slots).
	SubOID uint32 `json:"sub_oid,omitempty"`
	// FenceLSN is the source WAL position after the fence marker committed.
	FenceLSN string `json:"fence_lsn,omitempty"`
	// Revoked are write privileges that older pgtenant versions took from
	// non-superuser roles under the fence; an abort grants them back. (The
	// fence now write-protects the source with a leased trigger instead.)
	Revoked []Grant `json:"revoked,omitempty"`
	// VerifyMS is how long the comparison after the flip took.
	VerifyMS float64 `json:"verify_ms,omitempty"`
	// VerifySkipped says why a move that should have been verified was not.
	VerifySkipped string `json:"verify_skipped,omitempty"`
	// Undo is set when verification after the flip found a difference: the
	// flip is being (or was) undone, and says what differed.
	Undo string `json:"undo,omitempty"`
	// UndoPauseMS is the pause of undoing the flip.
	UndoPauseMS float64 `json:"undo_pause_ms,omitempty"`
	// OrphanSlot is set when the subscription was dropped while the source was
	// unreachable: the slot on the source still has to be dropped (Cleanup does it).
	OrphanSlot bool `json:"orphan_slot,omitempty"`
	// Triggers are the target's triggers disabled while the mover applies
	// the change stream; the fence enables them again before the flip.
	Triggers []Trigger `json:"triggers,omitempty"`
}

// Trigger is one trigger of a shard table.
type Trigger struct {
	Table string `json:"table"`
	Name  string `json:"name"`
}

// Grant is a set of privileges of one role (or PUBLIC) on one table.
type Grant struct {
	Table string `json:"table"` // qualified and quoted
	Role  string `json:"role"`  // quoted role name, or PUBLIC
	Privs string `json:"privs"` // e.g. "INSERT, UPDATE"
}

// Info is one row of pgtenant.moves.
type Info struct {
	ID         int64
	Shard      int
	Source     string
	Target     string
	Method     Method
	Step       Step
	Status     string
	Error      string
	Progress   Progress
	Pause      time.Duration
	StartedAt  time.Time
	UpdatedAt  time.Time
	FinishedAt *time.Time
}

// moveRun is a move being driven by this process.
type moveRun struct {
	Info
	Schema    string
	SourceDSN string
	TargetDSN string
	resuming  bool
	src, dst  *pgx.Conn
	slot      *stream.Slot // the slot just created, holding its snapshot for the copy
	stream    *liveStream  // the change stream this process applies to the target
	// snap is the target's snapshot at the flip, for verification after it.
	snap *verifyAfter
	// verify are the comparison's connections, opened before the fence.
	verify []verifyPair
	// script is the source's schema as SQL, once dumped.
	script *schemaScript
	// batch holds the schema dumps of the MoveAll batch the move is part of (nil: none).
	batch *schemaCache
	// mapVersion is the map version this process's last fence or flip of
	// the shard made (0: unknown), for the routers' acknowledgement.
	mapVersion int64
}

const moveColumns = `id, shard, source_node, target_node, method, step, status, coalesce(error, ''), progress, pause_ms, started_at, updated_at, finished_at`

func scanInfo(row pgx.Row) (Info, error) {
	var in Info
	var method, step string
	var prog []byte
	var pause *float64
	if err := row.Scan(&in.ID, &in.Shard, &in.Source, &in.Target, &method, &step, &in.Status, &in.Error, &prog, &pause,
		&in.StartedAt, &in.UpdatedAt, &in.FinishedAt); err != nil {
		return in, err
	}
	in.Method, in.Step = Method(method), Step(step)
	if len(prog) > 0 {
		if err := json.Unmarshal(prog, &in.Progress); err != nil {
			return in, fmt.Errorf("decode progress: %w", err)
		}
	}
	if pause != nil {
		in.Pause = time.Duration(*pause * float64(time.Millisecond))
	}
	return in, nil
}

// List returns every move in the catalog, newest first.
func (m *Mover) List(ctx context.Context) ([]Info, error) {
	rows, err := m.cfg.Catalog.Query(ctx, `SELECT `+moveColumns+` FROM pgtenant.moves ORDER BY id DESC`)
	if err != nil {
		return nil, fmt.Errorf("list moves: %w", err)
	}
	defer rows.Close()
	var out []Info
	for rows.Next() {
		in, err := scanInfo(rows)
		if err != nil {
			return nil, fmt.Errorf("list moves: %w", err)
		}
		out = append(out, in)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list moves: %w", err)
	}
	return out, nil
}

// Running returns the running moves, oldest first.
func (m *Mover) Running(ctx context.Context) ([]Info, error) {
	rows, err := m.cfg.Catalog.Query(ctx, `SELECT `+moveColumns+` FROM pgtenant.moves WHERE status = 'running' ORDER BY id`)
	if err != nil {
		return nil, fmt.Errorf("list running moves: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Info, error) { return scanInfo(r) })
	if err != nil {
		return nil, fmt.Errorf("list running moves: %w", err)
	}
	return out, nil
}

// Get returns one move.
func (m *Mover) Get(ctx context.Context, moveID int64) (Info, error) {
	in, err := scanInfo(m.cfg.Catalog.QueryRow(ctx, `SELECT `+moveColumns+` FROM pgtenant.moves WHERE id = $1`, moveID))
	if err != nil {
		return in, fmt.Errorf("get move %d: %w", moveID, err)
	}
	return in, nil
}

// loadMove reads a move and the DSNs of its nodes.
func (m *Mover) loadMove(ctx context.Context, moveID int64) (*moveRun, error) {
	in, err := m.Get(ctx, moveID)
	if err != nil {
		return nil, err
	}
	mv := &moveRun{Info: in}
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT schema_name FROM pgtenant.shards WHERE id = $1`, in.Shard).Scan(&mv.Schema); err != nil {
		return nil, fmt.Errorf("read shard %d: %w", in.Shard, err)
	}
	if mv.SourceDSN, err = m.nodeDSN(ctx, in.Source); err != nil {
		return nil, err
	}
	if mv.TargetDSN, err = m.nodeDSN(ctx, in.Target); err != nil {
		return nil, err
	}
	return mv, nil
}

func (m *Mover) nodeDSN(ctx context.Context, node string) (string, error) {
	var dsn string
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT dsn FROM pgtenant.nodes WHERE name = $1`, node).Scan(&dsn); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return "", fmt.Errorf("node %q is unknown (SQLSTATE 42704); `pgtenant node list` names the nodes", node)
		}
		return "", fmt.Errorf("read node %q: %w", node, err)
	}
	resolved, err := m.cfg.ResolveDSN(dsn)
	if err != nil {
		return "", fmt.Errorf("node %q: %w", node, err)
	}
	return resolved, nil
}

// insertMove records a new running move; the unique index makes a second running move of a shard fail.
func (m *Mover) insertMove(ctx context.Context, mv *moveRun) error {
	prog, err := json.Marshal(mv.Progress)
	if err != nil {
		return err
	}
	err = m.cfg.Catalog.QueryRow(ctx, `INSERT INTO pgtenant.moves (shard, source_node, target_node, method, step, progress)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, started_at`,
		mv.Shard, mv.Source, mv.Target, string(mv.Method), string(StepStart), prog).Scan(&mv.ID, &mv.StartedAt)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			return ErrMoveRunning
		}
		return fmt.Errorf("record move: %w", err)
	}
	mv.Step, mv.Status = StepStart, "running"
	return nil
}

// setStep records the step a running move is about to take, then calls the BeforeStep hook.
func (m *Mover) setStep(ctx context.Context, mv *moveRun, step Step) error {
	tag, err := m.cfg.Catalog.Exec(ctx, `UPDATE pgtenant.moves SET step = $2, updated_at = now() WHERE id = $1 AND status = 'running'`, mv.ID, string(step))
	if err != nil {
		return fmt.Errorf("record step %s: %w", step, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("record step %s: %w", step, ErrNotRunning)
	}
	mv.Step = step
	m.log.Info("move step", "move", mv.ID, "shard", mv.Shard, "step", step)
	return m.checkStop(ctx, mv)
}

// saveProgress writes mv.Progress to the catalog.
func (m *Mover) saveProgress(ctx context.Context, mv *moveRun) error {
	prog, err := json.Marshal(mv.Progress)
	if err != nil {
		return err
	}
	if _, err := m.cfg.Catalog.Exec(ctx, `UPDATE pgtenant.moves SET progress = $2, updated_at = now() WHERE id = $1`, mv.ID, prog); err != nil {
		return fmt.Errorf("record progress: %w", err)
	}
	return nil
}

// finish sets a move's final status.
func (m *Mover) finish(ctx context.Context, mv *moveRun, status string, cause error) error {
	var msg *string
	if cause != nil {
		s := cause.Error()
		msg = &s
	}
	step := mv.Step
	if status == "done" {
		step = StepDone
	}
	prog, err := json.Marshal(mv.Progress)
	if err != nil {
		return err
	}
	if _, err := m.cfg.Catalog.Exec(ctx, `UPDATE pgtenant.moves SET status = $2, error = $3, step = $4, progress = $5,
		updated_at = now(), finished_at = now() WHERE id = $1`, mv.ID, status, msg, string(step), prog); err != nil {
		return fmt.Errorf("record move %s: %w", status, err)
	}
	mv.Status, mv.Step = status, step
	return nil
}

// recordError stores an error on a move that stays running.
func (m *Mover) recordError(ctx context.Context, moveID int64, cause error) {
	if _, err := m.cfg.Catalog.Exec(ctx, `UPDATE pgtenant.moves SET error = $2, updated_at = now() WHERE id = $1`, moveID, cause.Error()); err != nil {
		m.log.Warn("record move error", "move", moveID, "err", err)
	}
}

// isFlipped reports whether the catalog already places the shard on the move's target.
func (m *Mover) isFlipped(ctx context.Context, mv *moveRun) (bool, error) {
	var node string
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT node FROM pgtenant.shards WHERE id = $1`, mv.Shard).Scan(&node); err != nil {
		return false, fmt.Errorf("read shard %d: %w", mv.Shard, err)
	}
	return node == mv.Target, nil
}

// markFenced sets the shard's state to 'fenced' while it is still on the
// source and takes the fence lease in the catalog (a resumed move takes over
// the lease of the process that died). The shards table's trigger bumps the
// map version and notifies the routers: one notification, one reload per
// router (a NOTIFY of the mover's own, with another payload, made them read
// the map twice).
//
// It is inside the pause, so it is one round trip that also reads the map
// version the routers must acknowledge (mv.mapVersion, for fenceRouters),
// and its commit does not wait for the WAL flush, as FenceShard's: the flip
// (which waits for its own) flushes the fence with it, and a catalog that
// crashed before the flush comes back without the fence, which its routers
// then release and the flip finds gone (ErrFlipConflict).
func (m *Mover) markFenced(ctx context.Context, mv *moveRun) error {
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SET LOCAL synchronous_commit = off`)
	var fenced bool
	b.Queue(`WITH u AS (UPDATE pgtenant.shards SET state = 'fenced' WHERE id = $1 AND node = $2 RETURNING id),
		l AS (INSERT INTO pgtenant.fence_leases (shard, move_id, expires_at) SELECT id, $3, now() + $4::bigint * interval '1 millisecond' FROM u
			ON CONFLICT (shard) DO UPDATE SET move_id = excluded.move_id, expires_at = excluded.expires_at)
		SELECT EXISTS (SELECT FROM u)`, mv.Shard, mv.Source, mv.ID, m.cfg.FenceLease.Milliseconds()).QueryRow(func(r pgx.Row) error { return r.Scan(&fenced) })
	var version int64
	m.queueVersion(b, &version)
	b.Queue(`COMMIT`)
	if err := m.cfg.Catalog.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("mark shard fenced: %w", err)
	}
	if !fenced {
		return fmt.Errorf("mark shard fenced: %w", ErrFlipConflict)
	}
	mv.mapVersion = version
	return nil
}

// queueVersion reads the map version into v in b's transaction, when the
// Fencer can wait for one (see fenceRouters).
func (m *Mover) queueVersion(b *pgx.Batch, v *int64) {
	if _, ok := m.cfg.Fencer.(VersionFencer); ok {
		b.Queue(`SELECT version FROM pgtenant.map_version`).QueryRow(func(r pgx.Row) error { return r.Scan(v) })
	}
}

// fenceRouters waits until every router holds the shard's transactions: for
// the map version markFenced read when the Fencer can wait for one (a round
// trip less in the pause), else for the catalog's current one.
func (m *Mover) fenceRouters(ctx context.Context, mv *moveRun) error {
	if vf, ok := m.cfg.Fencer.(VersionFencer); ok && mv.mapVersion > 0 {
		return vf.FenceVersion(ctx, mv.Shard, mv.mapVersion)
	}
	return m.cfg.Fencer.Fence(ctx, mv.Shard)
}

// unfenceRouters waits until every router has seen the shard released by
// the flip: for the map version the flip read, when known (see fenceRouters).
func (m *Mover) unfenceRouters(ctx context.Context, mv *moveRun) error {
	if vf, ok := m.cfg.Fencer.(VersionFencer); ok && mv.mapVersion > 0 && mv.Step == StepFlipped {
		return vf.UnfenceVersion(ctx, mv.Shard, mv.mapVersion)
	}
	return m.cfg.Fencer.Unfence(ctx, mv.Shard)
}

// markActive sets the shard back to 'active' on the source and drops its
// fence lease (abort of a fence); the trigger notifies the routers.
func (m *Mover) markActive(ctx context.Context, mv *moveRun) error {
	_, err := m.cfg.Catalog.Exec(ctx, `WITH l AS (DELETE FROM pgtenant.fence_leases WHERE shard = $1)
		UPDATE pgtenant.shards SET state = 'active' WHERE id = $1 AND node = $2 AND state = 'fenced'`, mv.Shard, mv.Source)
	if err != nil {
		return fmt.Errorf("mark shard active: %w", err)
	}
	return nil
}

// flip is the point of no return: one catalog transaction moves the shard to
// the target (compare-and-swap on node and state), bumps its epoch, records
// the step "flipped" and notifies the routers. When the commit's outcome is
// unknown (catalog connection lost), the shard's row decides.
func (m *Mover) flip(ctx context.Context, mv *moveRun) error {
	// One statement and the map version it made, in one round trip and one
	// commit (it is inside the pause).
	// The lease is locked first (FOR UPDATE, as a router releasing lapsed
	// fences locks it before the shard): a lapsed or released lease means
	// the shard may already serve from the source again, and the move must
	// not flip. The lease is consumed and the step recorded only with the
	// flip; routers are notified by the catalog's map-version trigger.
	var flipped, leased bool
	var version int64
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`WITH s AS (
			UPDATE pgtenant.shards SET node = $3, epoch = epoch + 1, state = 'active'
			WHERE id = $1 AND node = $2 AND state = 'fenced'
				AND EXISTS (SELECT FROM pgtenant.fence_leases WHERE shard = $1 AND move_id = $4 AND expires_at > now() FOR UPDATE)
			RETURNING id),
		l AS (DELETE FROM pgtenant.fence_leases WHERE shard = $1 AND move_id = $4 AND EXISTS (SELECT FROM s)),
		mv AS (UPDATE pgtenant.moves SET step = $5, updated_at = now() WHERE id = $4 AND EXISTS (SELECT FROM s))
		SELECT EXISTS (SELECT FROM s),
			EXISTS (SELECT FROM pgtenant.fence_leases WHERE shard = $1 AND move_id = $4 AND expires_at > now())`,
		mv.Shard, mv.Source, mv.Target, mv.ID, string(StepFlipped)).QueryRow(func(r pgx.Row) error { return r.Scan(&flipped, &leased) })
	m.queueVersion(b, &version)
	b.Queue(`COMMIT`)
	err := m.cfg.Catalog.SendBatch(ctx, b).Close()
	if err == nil && !flipped {
		err = ErrFlipConflict
		if !leased {
			err = fmt.Errorf("%w: %w", ErrFlipConflict, errLeaseLost)
		}
	}
	if err != nil && !errors.Is(err, ErrFlipConflict) {
		// The commit may or may not have happened (also when ctx expired
		// during it): ask the catalog, retrying briefly, with a fresh context.
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		for i := 0; i < 20 && qctx.Err() == nil; i++ {
			if flipped, ferr := m.isFlipped(qctx, mv); ferr == nil {
				if flipped {
					err = nil
				}
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if err != nil {
		return fmt.Errorf("flip shard %d to %s: %w", mv.Shard, mv.Target, err)
	}
	mv.Step, mv.mapVersion = StepFlipped, version // version 0: the outcome was read afterwards
	return nil
}
