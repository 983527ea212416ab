package move

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/catalog"
)

// A follower split (node split NODE --via-follower DSN) splits a node
// without copying a row: given a physical standby of NODE (a Heroku
// follower, or one made with pg_basebackup -R), it
//
//  1. fences the half of NODE's shards that moves, with the moves' fence
//     and lease (markSplitFenced, Fencer.Fence, lockSplit arming each
//     shard's guard: the routers hold the shards' new transactions,
//     in-flight ones end, the source refuses writes to their tables), reads pg_current_wal_insert_lsn()
//     on NODE and waits until the standby's pg_last_wal_replay_lsn() is
//     past it (at most MaxWait, else the fence is released and nothing
//     changed), and checks that the standby shows this fence;
//  2. makes the fence durable: the source guard never lapses and the
//     catalog leases are dropped (a fenced shard without a lease is never
//     released by routers), in the transaction that records step
//     "promote". From here on a dead mover leaves the moved half held
//     until --resume or --abort: it cannot know whether the standby was
//     promoted, and a shard released to NODE then would take writes the
//     promoted copy lacks;
//  3. promotes the standby (PromoteCommand, else pg_promote(true, N)),
//     writes its promoted identity (catalog.MarkPromoted), removes the
//     copied fence from it and registers it as NewNode;
//  4. flips the moved half to NewNode in one catalog transaction and
//     releases the routers: the pause ends;
//  5. drops the moved half's schemas from NODE and the kept half's from
//     NewNode (Mover.Cleanup redoes what failed).
//
// Abort is possible until the flip, also after the promotion: the fence is
// released on NODE (which never stopped holding every row), NewNode is
// unregistered if it was registered, and the promoted standby is simply no
// longer used (delete it). After the flip the moved shards live on NewNode.
//
// Steps recorded in pgtenant.splits: start, fence, promote, promoted,
// flipped, cleanup, done.

// StepPromote and StepPromoted are the steps of a follower split around
// the promotion of the standby (see SplitViaFollower).
const (
	StepPromote  Step = "promote"
	StepPromoted Step = "promoted"
	// StepFenced is passed to Config.BeforeStep (not recorded) once a
	// follower split's fence is held, before it waits for the standby.
	StepFenced Step = "fenced"
)

var splitOrder = map[Step]int{StepStart: 0, StepFence: 1, StepPromote: 2, StepPromoted: 3, StepFlipped: 4, StepCleanup: 5, StepDone: 6}

// MethodFollower is the method a follower split's shards move by (in
// pgtenant.moves it never appears; the fence leases of a split carry the
// split's id negated).
const MethodFollower Method = "follower"

// Errors of follower splits that callers branch on.
var (
	// ErrNotStandby: the follower DSN does not reach a server in recovery.
	ErrNotStandby = errors.New("the follower is not a standby (pg_is_in_recovery() is false)")
	// ErrNotFollower: the standby is not a copy of the node's database.
	ErrNotFollower = errors.New("the standby is not a follower of the node")
	// ErrFollowerLag: the standby did not replay past the fence within MaxWait.
	ErrFollowerLag = errors.New("the follower did not replay past the fence in time")
	// ErrSplitRunning: the node already has a running split.
	ErrSplitRunning = errors.New("the node already has a running follower split; resume it with --resume or roll it back with --abort")
)

// RegisterFunc registers the promoted follower as a node (name, DSN as
// given, and the identity read from it after its promotion was recorded)
// in the catalog: catalog.Catalog.AddPromotedNode.
type RegisterFunc func(ctx context.Context, name, dsn, identity string) error

// SplitOptions are the choices of a follower split. They are stored with
// the split (Register excepted) so a resume keeps them.
type SplitOptions struct {
	// Node is the node split. Required.
	Node string `json:"node"`
	// NewNode is the name the promoted follower is registered under. Required.
	NewNode string `json:"new_node"`
	// FollowerDSN reaches the standby's copy of Node's database, as stored
	// for NewNode ($NAME references resolved with Config.ResolveDSN). Required.
	FollowerDSN string `json:"-"`
	// Shards are the shards that move; nil means every other shard of Node
	// by id (as placement.PlanSplit).
	Shards []int `json:"-"`
	// PromoteCommand, when set, promotes the standby (run with sh -c; for
	// hosted services, e.g. `heroku pg:unfollow ...`); the split then waits
	// until the standby leaves recovery. Empty means SELECT pg_promote(true, N)
	// on the standby, which needs a superuser or GRANT EXECUTE ON FUNCTION
	// pg_promote(boolean, integer) to the role of FollowerDSN.
	PromoteCommand string `json:"promote_command,omitempty"`
	// PromoteTimeout bounds the promotion. Zero means 60s.
	PromoteTimeout time.Duration `json:"promote_timeout,omitempty"`
	// MaxWait bounds the wait for the standby to replay past the fence
	// (the fence is then released and the split aborted). Zero means 30s.
	MaxWait time.Duration `json:"max_wait,omitempty"`
	// Register registers the promoted follower as NewNode. Required.
	Register RegisterFunc `json:"-"`
}

// SplitPlan is what a follower split would do (SplitViaFollower's checks,
// nothing changed).
type SplitPlan struct {
	Node, NewNode string
	Moved, Kept   []int
	// Bytes is the size of the moved half on Node (no row is copied).
	Bytes int64
	// ReplayLagBytes is how far the standby's replay is behind Node.
	ReplayLagBytes int64
}

// SplitResult describes a finished follower split.
type SplitResult struct {
	SplitID       int64
	Node, NewNode string
	Moved, Kept   []int
	// Pause is fence start to release of the held transactions: it holds
	// ReplayWait and Promote.
	Pause time.Duration
	// ReplayWait is the wait for the standby to replay past the fence.
	ReplayWait time.Duration
	// Promote is the promotion (command or pg_promote) until writable.
	Promote time.Duration
	// Duration is the whole split, cleanup included.
	Duration time.Duration
	// Dropped are the schemas cleanup dropped, as node.schema.
	Dropped []string
	// CleanupError is set when cleanup did not finish; `shard cleanup`
	// redoes it.
	CleanupError string
}

// SplitInfo is one row of pgtenant.splits.
type SplitInfo struct {
	ID          int64
	Node        string
	NewNode     string
	FollowerDSN string
	Shards      []int
	Step        Step
	Status      string
	Error       string
	Progress    SplitProgress
	Pause       time.Duration
	StartedAt   time.Time
	FinishedAt  *time.Time
}

// SplitProgress is a follower split's state in pgtenant.splits.progress.
type SplitProgress struct {
	Options SplitOptions `json:"options"`
	// Kept are Node's shards that stay.
	Kept []int `json:"kept"`
	// RetiredCopies are retired schemas (<schema>_moved_<id>) Node held at
	// the start: the promoted copy has them too, and cleanup drops them there.
	RetiredCopies []string `json:"retired_copies,omitempty"`
	// PromotedID is the id written into the promoted follower (catalog.MarkPromoted).
	PromotedID string `json:"promoted_id"`
	// FenceLSN is Node's WAL position after the fence.
	FenceLSN     string  `json:"fence_lsn,omitempty"`
	ReplayWaitMS float64 `json:"replay_wait_ms,omitempty"`
	PromoteMS    float64 `json:"promote_ms,omitempty"`
	// Promoted is set once the standby left recovery.
	Promoted bool `json:"promoted,omitempty"`
	// Registered is set once NewNode is in the catalog.
	Registered bool `json:"registered,omitempty"`
	// CleanupPending is set on a done split whose cleanup did not finish.
	CleanupPending bool     `json:"cleanup_pending,omitempty"`
	CleanupError   string   `json:"cleanup_error,omitempty"`
	Dropped        []string `json:"dropped,omitempty"`
}

// splitRun is a follower split being driven by this process.
type splitRun struct {
	SplitInfo
	sourceDSN   string
	followerDSN string // resolved
	register    RegisterFunc
	moves       []*moveRun // one per moved shard, ID = -split id
	kept        map[int]string
	src         *pgx.Conn // Node
	fol         *pgx.Conn // the follower, kept open through the pause
	fenceStart  time.Time // when this process started the fence (the pause)
	resuming    bool
	durable     bool   // the fence no longer lapses (step promote reached)
	stopLeases  func() // stops renewing the fence leases, while they are renewed
}

func (sr *splitRun) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	sr.endLeases()
	if sr.fol != nil {
		sr.fol.Close(ctx)
		sr.fol = nil
	}
	if sr.src != nil {
		sr.src.Close(ctx)
		sr.src = nil
	}
	for _, mv := range sr.moves {
		mv.src = nil // shared with sr.src
	}
}

// endLeases stops renewing the fence leases (they lapse unless consumed).
func (sr *splitRun) endLeases() {
	if sr.stopLeases != nil {
		sr.stopLeases()
		sr.stopLeases = nil
	}
}

func (sr *splitRun) shardIDs() []int {
	ids := make([]int, len(sr.moves))
	for i, mv := range sr.moves {
		ids[i] = mv.Shard
	}
	return ids
}

func (sr *splitRun) schemas() []string {
	out := make([]string, len(sr.moves))
	for i, mv := range sr.moves {
		out[i] = mv.Schema
	}
	return out
}

// leaseID is the move id a split's fences carry: its id negated, so it
// never equals a move's.
func (sr *splitRun) leaseID() int64 { return -sr.ID }

// PlanFollowerSplit runs a follower split's checks and returns what it
// would move; it changes nothing.
func (m *Mover) PlanFollowerSplit(ctx context.Context, opts SplitOptions) (SplitPlan, error) {
	sr, err := m.prepareSplit(ctx, opts)
	if err != nil {
		return SplitPlan{}, fmt.Errorf("follower split of %s: %w", opts.Node, err)
	}
	defer sr.close()
	p := SplitPlan{Node: sr.Node, NewNode: sr.NewNode, Moved: sr.shardIDs(), Kept: sr.Progress.Kept}
	_ = sr.src.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ANY($1) AND c.relkind = 'r'`, sr.schemas()).Scan(&p.Bytes)
	if f, err := m.follower(ctx, sr); err == nil {
		var replay string
		if f.QueryRow(ctx, `SELECT coalesce(pg_last_wal_replay_lsn()::text, '0/0')`).Scan(&replay) == nil {
			_ = sr.src.QueryRow(ctx, `SELECT greatest(pg_current_wal_insert_lsn() - $1::pg_lsn, 0)::bigint`, replay).Scan(&p.ReplayLagBytes)
		}
	}
	return p, nil
}

// SplitViaFollower splits opts.Node: the moved half goes to the promoted
// follower, registered as opts.NewNode (see the comment at the top of
// follower.go). A failure before the flip aborts the split (the fence is
// released, nothing is lost); after the flip it stays running for ResumeSplit.
func (m *Mover) SplitViaFollower(ctx context.Context, opts SplitOptions) (SplitResult, error) {
	if opts.Register == nil {
		return SplitResult{}, errors.New("follower split: no Register function")
	}
	sr, err := m.prepareSplit(ctx, opts)
	if err != nil {
		return SplitResult{}, fmt.Errorf("follower split of %s: %w", opts.Node, err)
	}
	if err := m.insertSplit(ctx, sr); err != nil {
		sr.close()
		return SplitResult{}, fmt.Errorf("follower split of %s: %w", opts.Node, err)
	}
	m.log.Info("follower split started", "split", sr.ID, "node", sr.Node, "new_node", sr.NewNode, "shards", sr.Shards)
	return m.driveSplit(ctx, sr)
}

// ResumeSplit continues a running follower split from its recorded step.
func (m *Mover) ResumeSplit(ctx context.Context, id int64, register RegisterFunc) (SplitResult, error) {
	sr, err := m.loadSplit(ctx, id)
	if err != nil {
		return SplitResult{}, fmt.Errorf("resume split %d: %w", id, err)
	}
	if sr.Status != "running" {
		sr.close()
		return SplitResult{}, fmt.Errorf("resume split %d: status %s: %w", id, sr.Status, ErrNotRunning)
	}
	sr.register, sr.resuming = register, true
	return m.driveSplit(ctx, sr)
}

// AbortSplit rolls back a follower split that has not flipped: the moved
// half is released on its node, the new node unregistered if it was
// registered; a promoted follower is left alone (it is no longer used).
func (m *Mover) AbortSplit(ctx context.Context, id int64) error {
	sr, err := m.loadSplit(ctx, id)
	if err != nil {
		return fmt.Errorf("abort split %d: %w", id, err)
	}
	defer sr.close()
	if sr.Status != "running" && sr.Status != "failed" {
		return fmt.Errorf("abort split %d: status %s: %w", id, sr.Status, ErrNotRunning)
	}
	if err := m.abortSplit(ctx, sr, errors.New("aborted by request")); err != nil {
		return fmt.Errorf("abort split %d: %w", id, err)
	}
	return nil
}

// GetSplit returns one follower split.
func (m *Mover) GetSplit(ctx context.Context, id int64) (SplitInfo, error) {
	var in SplitInfo
	var step string
	var prog []byte
	var pause *float64
	err := m.cfg.Catalog.QueryRow(ctx, `SELECT id, source_node, new_node, follower_dsn, shards, step, status, coalesce(error, ''),
		progress, pause_ms, started_at, finished_at FROM pgtenant.splits WHERE id = $1`, id).Scan(
		&in.ID, &in.Node, &in.NewNode, &in.FollowerDSN, &in.Shards, &step, &in.Status, &in.Error, &prog, &pause, &in.StartedAt, &in.FinishedAt)
	if err != nil {
		return in, fmt.Errorf("get split %d: %w", id, err)
	}
	in.Step = Step(step)
	if err := json.Unmarshal(prog, &in.Progress); err != nil {
		return in, fmt.Errorf("get split %d: decode progress: %w", id, err)
	}
	if pause != nil {
		in.Pause = time.Duration(*pause * float64(time.Millisecond))
	}
	return in, nil
}

// prepareSplit checks everything before anything changes: the node and its
// shards, the new node's name, no running move or split on the node, the
// follower (a standby, of this node's database, replaying, allowed to
// promote and to create a schema), no unlogged table in the moved half.
func (m *Mover) prepareSplit(ctx context.Context, opts SplitOptions) (*splitRun, error) {
	if opts.Node == "" || opts.NewNode == "" || opts.FollowerDSN == "" {
		return nil, errors.New("give the node, the new node's name and the follower's DSN")
	}
	if opts.Node == opts.NewNode {
		return nil, fmt.Errorf("the new node's name %q is the node's", opts.NewNode)
	}
	sr := &splitRun{SplitInfo: SplitInfo{Node: opts.Node, NewNode: opts.NewNode, FollowerDSN: opts.FollowerDSN,
		Progress: SplitProgress{Options: opts}}, register: opts.Register}
	var err error
	if sr.sourceDSN, err = m.nodeDSN(ctx, opts.Node); err != nil {
		return nil, err
	}
	var exists bool
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pgtenant.nodes WHERE name = $1)`, opts.NewNode).Scan(&exists); err != nil {
		return nil, fmt.Errorf("read nodes: %w", err)
	}
	if exists {
		return nil, fmt.Errorf("node %q is already registered; name the promoted follower otherwise", opts.NewNode)
	}
	var running int64
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT coalesce((SELECT id FROM pgtenant.moves WHERE status = 'running' AND $1 IN (source_node, target_node) LIMIT 1), 0)`,
		opts.Node).Scan(&running); err != nil {
		return nil, fmt.Errorf("read moves: %w", err)
	}
	if running != 0 {
		return nil, fmt.Errorf("move %d of node %q is running: finish it (--resume) or abort it first", running, opts.Node)
	}
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT coalesce((SELECT id FROM pgtenant.splits WHERE status = 'running' AND source_node = $1), 0)`,
		opts.Node).Scan(&running); err != nil {
		return nil, fmt.Errorf("read splits: %w", err)
	}
	if running != 0 {
		return nil, fmt.Errorf("split %d: %w", running, ErrSplitRunning)
	}
	if err := m.planSplitShards(ctx, sr, opts.Shards); err != nil {
		return nil, err
	}
	if sr.followerDSN, err = m.cfg.ResolveDSN(opts.FollowerDSN); err != nil {
		return nil, fmt.Errorf("follower DSN: %w", err)
	}
	if sr.src, err = connect(ctx, sr.sourceDSN, "node "+sr.Node); err != nil {
		return nil, err
	}
	for _, mv := range sr.moves {
		mv.SourceDSN, mv.src = sr.sourceDSN, sr.src
	}
	if err := m.checkFollower(ctx, sr, true); err != nil {
		sr.close()
		return nil, err
	}
	if err := checkLoggedTables(ctx, sr); err != nil {
		sr.close()
		return nil, err
	}
	rows, err := sr.src.Query(ctx, `SELECT nspname::text FROM pg_namespace WHERE nspname ~ '^shard_[0-9]+_moved_[0-9]+$' ORDER BY 1`)
	if err == nil {
		sr.Progress.RetiredCopies, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		sr.close()
		return nil, fmt.Errorf("list retired schemas on %s: %w", sr.Node, err)
	}
	return sr, nil
}

// planSplitShards picks the moved half (want, or every other shard of the
// node by id) and the kept half; every shard of the node must be active.
func (m *Mover) planSplitShards(ctx context.Context, sr *splitRun, want []int) error {
	rows, err := m.cfg.Catalog.Query(ctx, `SELECT id, schema_name, state FROM pgtenant.shards WHERE node = $1 ORDER BY id`, sr.Node)
	if err != nil {
		return fmt.Errorf("read shards: %w", err)
	}
	type shard struct {
		id            int
		schema, state string
	}
	shards, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (shard, error) {
		var s shard
		err := r.Scan(&s.id, &s.schema, &s.state)
		return s, err
	})
	if err != nil {
		return fmt.Errorf("read shards: %w", err)
	}
	wanted := map[int]bool{}
	for _, id := range want {
		wanted[id] = true
	}
	sr.kept = map[int]string{}
	for i, s := range shards {
		if s.state != "active" {
			return fmt.Errorf("shard %d of node %q is %s: finish or abort its move first", s.id, sr.Node, s.state)
		}
		moves := (want == nil && i%2 == 1) || wanted[s.id]
		delete(wanted, s.id)
		if !moves {
			sr.kept[s.id] = s.schema
			sr.Progress.Kept = append(sr.Progress.Kept, s.id)
			continue
		}
		sr.Shards = append(sr.Shards, s.id)
		sr.moves = append(sr.moves, &moveRun{Info: Info{Shard: s.id, Source: sr.Node, Target: sr.NewNode, Method: MethodFollower,
			Status: "running"}, Schema: s.schema})
	}
	for id := range wanted {
		return fmt.Errorf("shard %d is not on node %q", id, sr.Node)
	}
	if len(sr.moves) == 0 {
		return fmt.Errorf("node %q has no shard to move (it has %d)", sr.Node, len(shards))
	}
	return nil
}

// checkFollower checks that the follower DSN reaches a standby (unless it
// was promoted by this split) of the node's database, and, before a split
// starts, that its replay is not paused, that its role may promote it (when
// no command does) and create a schema in the database.
func (m *Mover) checkFollower(ctx context.Context, sr *splitRun, starting bool) error {
	f, err := m.follower(ctx, sr)
	if err != nil {
		return err
	}
	var recovery, paused, canPromote, canCreate bool
	if err := f.QueryRow(ctx, `SELECT pg_is_in_recovery(), pg_is_in_recovery() AND pg_is_wal_replay_paused(),
		has_function_privilege('pg_promote(boolean, integer)', 'EXECUTE'),
		has_database_privilege(current_database(), 'CREATE')`).Scan(&recovery, &paused, &canPromote, &canCreate); err != nil {
		return fmt.Errorf("check the follower: %w", err)
	}
	if !recovery && (starting || !sr.Progress.Promoted) {
		return fmt.Errorf("%w: promote nothing by hand; give the DSN of a follower (a physical standby) of node %q", ErrNotStandby, sr.Node)
	}
	srcID, err := catalog.ReadNodeIdentity(ctx, sr.src)
	if err != nil {
		return fmt.Errorf("node %q: %w", sr.Node, err)
	}
	fID, err := catalog.ReadNodeIdentity(ctx, f)
	if err != nil {
		return fmt.Errorf("follower: %w", err)
	}
	if !recovery {
		// Promoted by this split: its identity is the node's plus the promoted id.
		fID = strings.TrimSuffix(fID, " promoted "+sr.Progress.PromotedID)
	}
	if fID != srcID {
		return fmt.Errorf("%w: the follower's database is %s, node %q's is %s (a standby of another server, or another database: the DSN must name the node's database)",
			ErrNotFollower, fID, sr.Node, srcID)
	}
	if !starting {
		return nil
	}
	if paused {
		return fmt.Errorf("the follower's WAL replay is paused: run SELECT pg_wal_replay_resume() on it first")
	}
	if sr.Progress.Options.PromoteCommand == "" && !canPromote {
		var role string
		_ = f.QueryRow(ctx, `SELECT current_user`).Scan(&role)
		return fmt.Errorf("the follower's role %s may not run pg_promote(): run GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO %s on node %q (it replicates to the follower), or give --promote-command",
			role, ident(role), sr.Node)
	}
	if !canCreate {
		return fmt.Errorf("the follower's role may not create schemas in its database: it must be the node's role (owner of the database)")
	}
	return nil
}

// checkLoggedTables refuses moved shards with unlogged tables: a standby
// has them empty.
func checkLoggedTables(ctx context.Context, sr *splitRun) error {
	rows, err := sr.src.Query(ctx, `SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = ANY($1) AND c.relpersistence = 'u' AND c.relkind IN ('r', 'p') ORDER BY 1`, sr.schemas())
	if err != nil {
		return fmt.Errorf("check unlogged tables: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("check unlogged tables: %w", err)
	}
	if len(names) > 0 {
		return fmt.Errorf("unlogged table(s) %s are empty on a follower: ALTER TABLE … SET LOGGED, or split by moves (node split --to)", strings.Join(names, ", "))
	}
	return nil
}

func (m *Mover) insertSplit(ctx context.Context, sr *splitRun) error {
	prog, err := json.Marshal(sr.Progress)
	if err != nil {
		return err
	}
	err = m.cfg.Catalog.QueryRow(ctx, `INSERT INTO pgtenant.splits (source_node, new_node, follower_dsn, shards, step, progress)
		VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, started_at`, sr.Node, sr.NewNode, sr.FollowerDSN, sr.Shards, string(StepStart), prog).Scan(&sr.ID, &sr.StartedAt)
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" {
			return ErrSplitRunning
		}
		return fmt.Errorf("record split: %w", err)
	}
	sr.Step, sr.Status = StepStart, "running"
	for _, mv := range sr.moves {
		mv.ID = sr.leaseID()
	}
	return nil
}

// loadSplit reads a split and rebuilds its per-shard state.
func (m *Mover) loadSplit(ctx context.Context, id int64) (*splitRun, error) {
	in, err := m.GetSplit(ctx, id)
	if err != nil {
		return nil, err
	}
	sr := &splitRun{SplitInfo: in, kept: map[int]string{}}
	sr.Progress.Options.FollowerDSN = in.FollowerDSN
	if sr.sourceDSN, err = m.nodeDSN(ctx, in.Node); err != nil {
		return nil, err
	}
	if sr.followerDSN, err = m.cfg.ResolveDSN(in.FollowerDSN); err != nil {
		return nil, fmt.Errorf("follower DSN: %w", err)
	}
	rows, err := m.cfg.Catalog.Query(ctx, `SELECT id, schema_name FROM pgtenant.shards WHERE id = ANY($1) OR id = ANY($2) ORDER BY id`, in.Shards, in.Progress.Kept)
	if err != nil {
		return nil, fmt.Errorf("read shards: %w", err)
	}
	schemas := map[int]string{}
	for rows.Next() {
		var sid int
		var schema string
		if err := rows.Scan(&sid, &schema); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read shards: %w", err)
		}
		schemas[sid] = schema
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read shards: %w", err)
	}
	for _, k := range in.Progress.Kept {
		sr.kept[k] = schemas[k]
	}
	if sr.src, err = connect(ctx, sr.sourceDSN, "node "+in.Node); err != nil {
		return nil, err
	}
	for _, s := range in.Shards {
		sr.moves = append(sr.moves, &moveRun{Info: Info{ID: -id, Shard: s, Source: in.Node, Target: in.NewNode, Method: MethodFollower, Status: "running"},
			Schema: schemas[s], SourceDSN: sr.sourceDSN, src: sr.src})
	}
	sr.durable = !in.Step.splitBefore(StepPromote)
	return sr, nil
}

func (a Step) splitBefore(b Step) bool { return splitOrder[a] < splitOrder[b] }

// setSplitStep records the step a running split is about to take, then
// calls the BeforeStep hook.
func (m *Mover) setSplitStep(ctx context.Context, sr *splitRun, step Step) error {
	tag, err := m.cfg.Catalog.Exec(ctx, `UPDATE pgtenant.splits SET step = $2, updated_at = now() WHERE id = $1 AND status = 'running'`, sr.ID, string(step))
	if err != nil {
		return fmt.Errorf("record step %s: %w", step, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("record step %s: %w", step, ErrNotRunning)
	}
	sr.Step = step
	m.log.Info("split step", "split", sr.ID, "node", sr.Node, "step", step)
	return m.splitHook(ctx, sr, step)
}

// splitHook calls Config.BeforeStep with the split's id.
func (m *Mover) splitHook(ctx context.Context, sr *splitRun, step Step) error {
	if m.cfg.BeforeStep != nil {
		if err := m.cfg.BeforeStep(ctx, sr.ID, step); err != nil {
			return fmt.Errorf("%w: %w", ErrInterrupted, errHookStop{err})
		}
	}
	return nil
}

// errHookStop is a stop by Config.BeforeStep: like a dead process, it
// releases nothing.
type errHookStop struct{ error }

func (e errHookStop) Unwrap() error { return e.error }

func (m *Mover) saveSplit(ctx context.Context, sr *splitRun) error {
	prog, err := json.Marshal(sr.Progress)
	if err != nil {
		return err
	}
	if _, err := m.cfg.Catalog.Exec(ctx, `UPDATE pgtenant.splits SET progress = $2, updated_at = now() WHERE id = $1`, sr.ID, prog); err != nil {
		return fmt.Errorf("record split progress: %w", err)
	}
	return nil
}

func (m *Mover) finishSplit(ctx context.Context, sr *splitRun, status string, cause error) error {
	var msg *string
	if cause != nil {
		s := cause.Error()
		msg = &s
	}
	step := sr.Step
	if status == "done" {
		step = StepDone
	}
	prog, err := json.Marshal(sr.Progress)
	if err != nil {
		return err
	}
	if _, err := m.cfg.Catalog.Exec(ctx, `UPDATE pgtenant.splits SET status = $2, error = $3, step = $4, progress = $5,
		updated_at = now(), finished_at = now() WHERE id = $1`, sr.ID, status, msg, string(step), prog); err != nil {
		return fmt.Errorf("record split %s: %w", status, err)
	}
	sr.Status, sr.Step = status, step
	return nil
}

// splitFlipped reports whether the catalog places the moved half on the new node.
func (m *Mover) splitFlipped(ctx context.Context, sr *splitRun) (bool, error) {
	var n int
	if err := m.cfg.Catalog.QueryRow(ctx, `SELECT count(*) FROM pgtenant.shards WHERE id = ANY($1) AND node = $2`, sr.Shards, sr.NewNode).Scan(&n); err != nil {
		return false, fmt.Errorf("read shards: %w", err)
	}
	return n == len(sr.Shards) && n > 0, nil
}

// driveSplit runs a split and handles its failure: abort before the flip,
// leave it running after the flip or when stopped.
func (m *Mover) driveSplit(ctx context.Context, sr *splitRun) (SplitResult, error) {
	defer sr.close()
	start := time.Now()
	res, err := m.runSplit(ctx, sr)
	sr.endLeases()
	res.Duration = time.Since(start)
	if err == nil {
		return res, nil
	}
	err = fmt.Errorf("follower split %d of %s: step %s: %w", sr.ID, sr.Node, sr.Step, err)
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if stop := (errHookStop{}); errors.As(err, &stop) {
		return res, err // as if the process had died: nothing released
	}
	if flipped, ferr := m.splitFlipped(bg, sr); ferr != nil || flipped {
		if ferr == nil {
			_, _ = m.cfg.Catalog.Exec(bg, `UPDATE pgtenant.splits SET error = $2, updated_at = now() WHERE id = $1`, sr.ID, err.Error())
		}
		m.log.Error("follower split failed after the flip; resume it", "split", sr.ID, "err", err)
		return res, err
	}
	if (errors.Is(err, ErrInterrupted) || ctx.Err() != nil) && sr.durable {
		// The standby may be promoted: keep the durable fence for --resume or --abort.
		if !errors.Is(err, ErrInterrupted) {
			err = fmt.Errorf("%w: %w", ErrInterrupted, err)
		}
		_, _ = m.cfg.Catalog.Exec(bg, `UPDATE pgtenant.splits SET error = $2, updated_at = now() WHERE id = $1`, sr.ID, err.Error())
		return res, err
	}
	if errors.Is(err, ErrInterrupted) || ctx.Err() != nil {
		// Stopped under a lapsing fence: release it, stay running for --resume.
		if !errors.Is(err, ErrInterrupted) {
			err = fmt.Errorf("%w: %w", ErrInterrupted, err)
		}
		if sr.Step == StepFence {
			if uerr := m.releaseSplitFence(bg, sr); uerr != nil {
				err = errors.Join(err, uerr)
			}
		}
		return res, err
	}
	if aerr := m.abortSplit(bg, sr, err); aerr != nil {
		return res, errors.Join(err, fmt.Errorf("abort: %w", aerr))
	}
	return res, err
}

// releaseSplitFence releases the moved half on its node: source guards
// removed, shards active again, routers released (the moves' unfence per shard).
func (m *Mover) releaseSplitFence(ctx context.Context, sr *splitRun) error {
	var errs []error
	for _, mv := range sr.moves {
		if err := m.unfence(ctx, mv); err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", mv.Shard, err))
		}
	}
	return errors.Join(errs...)
}

// abortSplit rolls a split back before its flip (see AbortSplit).
func (m *Mover) abortSplit(ctx context.Context, sr *splitRun, cause error) error {
	m.log.Warn("aborting follower split", "split", sr.ID, "node", sr.Node, "step", sr.Step, "cause", cause)
	if flipped, err := m.splitFlipped(ctx, sr); err != nil {
		return fmt.Errorf("cannot read the shards' placement, nothing undone (abort again later): %w", err)
	} else if flipped {
		return fmt.Errorf("the moved shards are on %s: %w", sr.NewNode, ErrFlipped)
	}
	var errs []error
	if sr.src == nil || sr.src.IsClosed() {
		c, err := connect(ctx, sr.sourceDSN, "node "+sr.Node)
		if err != nil {
			errs = append(errs, err)
		}
		sr.src = c
		for _, mv := range sr.moves {
			mv.src = c
		}
	}
	if sr.src != nil {
		if err := m.releaseSplitFence(ctx, sr); err != nil {
			errs = append(errs, err)
		}
		if _, err := sr.src.Exec(ctx, `DELETE FROM pgtenant_move.marker WHERE move_id = $1`, sr.leaseID()); err != nil && !isUndefined(err) {
			errs = append(errs, fmt.Errorf("delete markers: %w", err))
		}
	}
	if _, err := m.cfg.Catalog.Exec(ctx, `DELETE FROM pgtenant.nodes n WHERE name = $1 AND NOT EXISTS (SELECT FROM pgtenant.shards s WHERE s.node = n.name)`,
		sr.NewNode); err != nil && sr.Progress.Registered {
		errs = append(errs, fmt.Errorf("unregister node %s: %w", sr.NewNode, err))
	}
	note := ""
	if f, err := connect(ctx, sr.followerDSN, "follower"); err == nil {
		var recovery bool
		if f.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&recovery) == nil && !recovery {
			note = fmt.Sprintf("; the follower was promoted and no longer follows %s: pgtenant does not use it, delete it", sr.Node)
		}
		f.Close(ctx)
	} else if sr.Progress.Promoted {
		note = fmt.Sprintf("; the follower was promoted and no longer follows %s: pgtenant does not use it, delete it", sr.Node)
	}
	if len(errs) > 0 {
		err := errors.Join(errs...)
		if ferr := m.finishSplit(ctx, sr, "failed", fmt.Errorf("%v; abort incomplete, run abort again: %w", cause, err)); ferr != nil {
			return errors.Join(err, ferr)
		}
		return err
	}
	m.log.Warn("follower split aborted"+note, "split", sr.ID, "node", sr.Node)
	return m.finishSplit(ctx, sr, "aborted", fmt.Errorf("%v%s", cause, note))
}

// refuseSplitting refuses to move a shard of a running follower split (a
// catalog without the splits table has none).
func (m *Mover) refuseSplitting(ctx context.Context, shard int) error {
	var id int64
	err := m.cfg.Catalog.QueryRow(ctx, `SELECT CASE WHEN to_regclass('pgtenant.splits') IS NULL THEN 0 ELSE
		(SELECT coalesce(max(id), 0) FROM pgtenant.splits WHERE status = 'running' AND $1 = ANY(shards)) END`, shard).Scan(&id)
	if err != nil && !isUndefined(err) {
		return fmt.Errorf("read splits: %w", err)
	}
	if id != 0 {
		return fmt.Errorf("shard %d is in follower split %d, still running: resume or abort it first (pgtenant node split --resume/--abort %d): %w", shard, id, id, ErrMoveRunning)
	}
	return nil
}

// follower returns the split's connection to the follower, connecting
// again when it was closed (a hosted promotion may restart the server).
func (m *Mover) follower(ctx context.Context, sr *splitRun) (*pgx.Conn, error) {
	if sr.fol != nil && !sr.fol.IsClosed() {
		return sr.fol, nil
	}
	c, err := connect(ctx, sr.followerDSN, "follower")
	if err != nil {
		return nil, err
	}
	sr.fol = c
	return c, nil
}

// dropFollower closes the follower connection after an error on it, so
// the next use connects again.
func (sr *splitRun) dropFollower() {
	if sr.fol != nil {
		sr.fol.Close(context.Background())
		sr.fol = nil
	}
}
