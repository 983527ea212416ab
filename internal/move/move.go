package move

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/nodedsn"
)

// Step is one recorded step of a move (pgtenant.moves.step).
type Step string

// The steps of a move, in order. See the package documentation.
const (
	StepStart        Step = "start"
	StepSchema       Step = "schema"
	StepPublication  Step = "publication"
	StepSubscription Step = "subscription"
	StepCopy         Step = "copy"
	StepIndexes      Step = "indexes"
	StepCatchUp      Step = "catchup"
	StepFence        Step = "fence"
	StepFlipped      Step = "flipped"
	StepVerify       Step = "verify"
	StepCleanup      Step = "cleanup"
	StepDone         Step = "done"
	// StepCopyData is the step of a copy-method move that copies the rows under the fence.
	StepCopyData Step = "copydata"
)

var stepOrder = map[Step]int{
	StepStart: 0, StepSchema: 1, StepPublication: 2, StepSubscription: 3, StepCopy: 4, StepIndexes: 5,
	StepCatchUp: 6, StepFence: 7, StepCopyData: 7, StepFlipped: 8, StepVerify: 9, StepCleanup: 10, StepDone: 11,
	StepCapture: 2,
}

// before reports whether step a comes before step b.
func (a Step) before(b Step) bool { return stepOrder[a] < stepOrder[b] }

// Method is how the data is moved.
type Method string

const (
	// MethodLogical copies and catches up with logical replication; the pause is the cutover only.
	MethodLogical Method = "logical"
	// MethodCopy fences the shard for the whole copy (COPY per table): the pause equals the copy time.
	MethodCopy Method = "copy"
)

// Fencer holds and releases one shard's transactions in the routers.
// Fence returns once every router holds new transactions of the shard and the
// shard's in-flight transactions have finished (or were ended); it must honour
// ctx's deadline. Unfence releases the held transactions; they then go to
// whatever node the catalog names (after a flip, the target). Both must be
// idempotent: Unfence may be called for a shard that is not fenced.
//
// Before calling Fence the Mover sets pgtenant.shards.state to 'fenced' (the
// table's trigger sends NOTIFY pgtenant_map); before Unfence on abort it sets
// it back to 'active'.
type Fencer interface {
	Fence(ctx context.Context, shard int) error
	Unfence(ctx context.Context, shard int) error
}

// NopFencer fences nothing in the routers. Writers are then stopped only in
// the database: they wait on the table locks, then non-superuser roles fail
// with 42501 (write privileges revoked) while superusers could still write to
// the old copy. Use it only when nothing writes through superuser roles.
type NopFencer struct{}

// Fence does nothing.
func (NopFencer) Fence(context.Context, int) error { return nil }

// Unfence does nothing.
func (NopFencer) Unfence(context.Context, int) error { return nil }

// Config configures a Mover. Zero durations mean the defaults given.
type Config struct {
	// Catalog is the catalog database (schema pgtenant). Required.
	Catalog *pgxpool.Pool
	// Fencer holds the shard in the routers. Nil means NopFencer.
	Fencer Fencer
	// Logger receives one line per step and state change. Nil discards.
	Logger *slog.Logger
	// FenceTimeout bounds the whole pause: fence start to flip. Zero means 5s.
	FenceTimeout time.Duration
	// FenceLease is how long the fence outlives its mover: the mover renews
	// its leases (catalog and source) every FenceLease/5, and when it stops,
	// routers release the shard to its source and the source takes writes
	// again FenceLease after the last renewal. Zero means DefaultFenceLease (5s).
	FenceLease time.Duration
	// CatchUpTimeout bounds the initial copy plus catch-up. Zero means 1h.
	CatchUpTimeout time.Duration
	// LockTimeout is lock_timeout for the LOCK TABLE on the source under the fence. Zero means 1s.
	LockTimeout time.Duration
	// PollInterval is how often the target is polled while fenced. Zero means 2ms.
	PollInterval time.Duration
	// MaxLag is the replication lag (time for a marker row to appear on the
	// target) below which the shard is fenced. Zero means 100ms.
	MaxLag time.Duration
	// SlotTimeout bounds the creation of the move's replication slot, which waits
	// for every transaction open on the source server (any database) when
	// it starts. Zero means 5 minutes; then the move aborts and names the
	// oldest open transactions.
	SlotTimeout time.Duration
	// ResolveDSN resolves the secret references ($NAME, ${NAME}) of a node
	// DSN stored in the catalog. Nil means from the environment
	// (nodedsn.Expand with nodedsn.Env).
	ResolveDSN func(dsn string) (string, error)
	// BinDir holds pg_dump and pg_restore, of at least the nodes' PostgreSQL
	// version. Empty means localpg.FindClientBinDir ($PGTENANT_PG_BIN, else
	// the machine's own PostgreSQL).
	BinDir string
	// BeforeStep, when set, is called after a step is recorded and before it
	// runs. Returning an error stops the move as if the process had died: no
	// abort, the move stays 'running' for Resume or Abort. For fault tests.
	BeforeStep func(ctx context.Context, moveID int64, step Step) error
	// PrepareTarget, when set, runs before the shard's schema is restored
	// on the target node (given by name and DSN): the roles its grants
	// name must exist there. An error aborts the move.
	PrepareTarget func(ctx context.Context, shard int, node, dsn string) error
	// VerifyParallel is how many tables are compared at once after the
	// flip, each on a connection to the source and one to the target.
	// Zero means 2.
	VerifyParallel int
	// VerifyDelay is how long the comparison after the flip waits, once the
	// routers have released the shard, before it starts scanning: the
	// shard's held transactions run on the target first, without the
	// checksum scans taking the CPUs (on a small machine the scans made
	// them wait as long as the comparison). Zero means 250ms; negative
	// means no wait.
	VerifyDelay time.Duration
	// VerifyPace paces the comparison's scans (PostgreSQL 14 and later):
	// each reads its table VerifyChunk at a time and rests after each chunk
	// for VerifyPace times as long as the chunk took, so that a scan takes
	// at most 1/(1+VerifyPace) of a CPU; VerifyParallel scans run on each
	// node at once. Zero means 1 (half a CPU per scan); negative means no
	// rest (one query per table).
	VerifyPace float64
	// VerifyChunk is how many bytes of a table one paced checksum query
	// reads: the longest the scan holds a CPU at a stretch. Zero means
	// DefaultVerifyChunk (1 MB).
	VerifyChunk int64
	// CopyFlushAfter is the backend_flush_after (kB) of the initial copy's
	// and the comparison's sessions on both nodes: the server asks the
	// kernel to start writing their dirty pages every CopyFlushAfter kB,
	// so a large copy reaches the disk at the pace it is written. Left to
	// the kernel (the server's default, 0), a 1 GB copy stays dirty in the
	// page cache until the flusher writes it out at once 30 s later
	// (dirty_expire_centisecs), and every commit on the machine waits
	// behind that burst for its WAL flush (bench/README.md, session 8).
	// Zero means DefaultCopyFlushAfter; negative means the server's setting.
	CopyFlushAfter int
	// CopyWithoutFreeze copies without COPY … FREEZE. By default each
	// table of the logical method's initial copy is emptied and filled in
	// one target transaction with FREEZE: its rows arrive frozen and its
	// pages all-visible, so the first reads (the comparison, the clients,
	// autovacuum) do not dirty and write every page again to set hint bits.
	CopyWithoutFreeze bool
	// AfterFlip, when set, runs once the shard is on the target, before
	// cleanup (again on resume): grants and row-level security policies
	// are re-applied there. An error leaves the move for --resume.
	AfterFlip func(ctx context.Context, shard int, node, dsn string) error
}

// Options are per-move choices. They are stored with the move so Resume keeps them.
type Options struct {
	// Method is MethodLogical (the zero value), MethodCopy or MethodTrigger.
	Method Method `json:"method,omitempty"`
	// DropSource drops the source schema after the flip instead of renaming it.
	DropSource bool `json:"drop_source,omitempty"`
	// SkipVerify skips comparing row counts and checksums. The logical
	// method compares after the flip (the target's snapshot at the flip
	// against the frozen source; the flip is undone on a difference), the
	// copy method under the fence.
	SkipVerify bool `json:"skip_verify,omitempty"`
}

// Result describes a finished move.
type Result struct {
	MoveID   int64
	Shard    int
	From, To string
	// Pause is fence start to release of the held transactions.
	Pause time.Duration
	// Rows and Bytes are the target's row count and size after the move.
	Rows, Bytes int64
	// Duration is the whole move, including cleanup.
	Duration time.Duration
	// Verified is true when row counts and checksums matched (after the
	// flip for the logical method, under the fence for copy).
	Verified bool
	// VerifyTime is how long the comparison after the flip took (not part of the pause).
	VerifyTime time.Duration
}

// Mover runs shard moves. It is safe for concurrent use by moves of different shards.
type Mover struct {
	cfg Config
	log *slog.Logger
	// dumpHook, when set, is called before each pg_dump (tests count them).
	dumpHook func()
}

// New returns a Mover. It does no I/O.
func New(cfg Config) *Mover {
	if cfg.Fencer == nil {
		cfg.Fencer = NopFencer{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if cfg.ResolveDSN == nil {
		cfg.ResolveDSN = func(dsn string) (string, error) { return nodedsn.Expand(dsn, nodedsn.Env()) }
	}
	def(&cfg.FenceTimeout, 5*time.Second)
	def(&cfg.FenceLease, DefaultFenceLease)
	def(&cfg.CatchUpTimeout, time.Hour)
	def(&cfg.LockTimeout, time.Second)
	def(&cfg.PollInterval, 2*time.Millisecond)
	def(&cfg.MaxLag, 100*time.Millisecond)
	def(&cfg.SlotTimeout, 5*time.Minute)
	if cfg.VerifyParallel <= 0 {
		cfg.VerifyParallel = 2
	}
	if cfg.VerifyPace == 0 {
		cfg.VerifyPace = 1
	}
	if cfg.VerifyDelay == 0 {
		cfg.VerifyDelay = 250 * time.Millisecond
	}
	if cfg.CopyFlushAfter == 0 {
		cfg.CopyFlushAfter = DefaultCopyFlushAfter
	}
	return &Mover{cfg: cfg, log: cfg.Logger}
}

// Errors callers branch on.
var (
	// ErrMoveRunning: the shard already has a running move.
	ErrMoveRunning = errors.New("the shard already has a running move; resume it with --resume or roll it back with --abort")
	// ErrFlipped: the move is past its point of no return and cannot be aborted; move the shard back instead.
	ErrFlipped = errors.New("the move already flipped the shard to the target; move it back instead")
	// ErrNotRunning: the move is not running (done or aborted).
	ErrNotRunning = errors.New("the move is not running")
	// ErrFlipConflict: the shard's catalog row changed under the move (not on the source, or not fenced).
	ErrFlipConflict = errors.New("the shard's placement changed during the move")
	// ErrInterrupted: the move was stopped by context cancellation or
	// Config.BeforeStep; it stays running (any fence released) for Resume or Abort.
	ErrInterrupted = errors.New("move interrupted; resume or abort it")
)

// BadTable is a table that logical replication cannot move.
type BadTable struct {
	Name   string
	Reason string
}

// UnreplicableError lists every table of the shard that logical replication
// cannot move (no primary key or replica identity, or unlogged). Reported
// before the move starts.
type UnreplicableError struct {
	Schema string
	Tables []BadTable
}

// Error lists the tables and what to do about them.
func (e *UnreplicableError) Error() string {
	s := fmt.Sprintf("%d table(s) in schema %s cannot be moved with logical replication:", len(e.Tables), e.Schema)
	for _, t := range e.Tables {
		s += fmt.Sprintf(" %s (%s);", t.Name, t.Reason)
	}
	return s + " add a primary key or REPLICA IDENTITY USING INDEX, or use --method copy"
}

// Move moves shard to node toNode and returns once the move is done or aborted.
// A failure before the flip aborts the move (routing stays on the source) and
// is returned; a failure after the flip leaves the move running for Resume.
func (m *Mover) Move(ctx context.Context, shard int, toNode string, opts Options) (Result, error) {
	return m.move(ctx, shard, toNode, opts, nil)
}

// move is Move as one of a batch whose schema dumps it shares (batch nil: none).
func (m *Mover) move(ctx context.Context, shard int, toNode string, opts Options, batch *schemaCache) (Result, error) {
	if opts.Method == "" {
		opts.Method = MethodLogical
	}
	mv, err := m.prepare(ctx, shard, toNode, opts)
	if err != nil {
		return Result{}, fmt.Errorf("move shard %d: %w", shard, err)
	}
	mv.batch = batch
	return m.drive(ctx, mv)
}

// Resume continues a running move from its recorded step.
func (m *Mover) Resume(ctx context.Context, moveID int64) (Result, error) {
	mv, err := m.loadMove(ctx, moveID)
	if err != nil {
		return Result{}, fmt.Errorf("resume move %d: %w", moveID, err)
	}
	if mv.Status != "running" {
		return Result{}, fmt.Errorf("resume move %d: status %s: %w", moveID, mv.Status, ErrNotRunning)
	}
	mv.resuming = true
	return m.drive(ctx, mv)
}

// drive runs a move and handles its failure: abort before the flip, leave it
// running after the flip or when stopped.
func (m *Mover) drive(ctx context.Context, mv *moveRun) (Result, error) {
	start := time.Now()
	res, err := m.run(ctx, mv)
	if err == nil {
		res.Duration = time.Since(start)
		return res, nil
	}
	err = fmt.Errorf("move shard %d: step %s: %w", mv.Shard, mv.Step, err)
	if u := (errUndone{}); errors.As(err, &u) {
		// Verification failed and the flip was undone: the move is finished (aborted).
		return res, err
	}
	if errors.Is(err, ErrInterrupted) || ctx.Err() != nil {
		if !errors.Is(err, ErrInterrupted) {
			err = fmt.Errorf("%w: %w", ErrInterrupted, err)
		}
		m.log.Warn("move stopped; resume or abort it", "move", mv.ID, "shard", mv.Shard, "step", mv.Step, "err", err)
		return res, err
	}
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	if flipped, ferr := m.isFlipped(bg, mv); ferr == nil && flipped {
		m.recordError(bg, mv.ID, err)
		m.log.Error("move failed after the flip; resume it to finish cleanup", "move", mv.ID, "shard", mv.Shard, "err", err)
		return res, err
	}
	if aerr := m.abort(bg, mv, err); aerr != nil {
		return res, errors.Join(err, fmt.Errorf("abort: %w", aerr))
	}
	return res, err
}

// Abort rolls back a move that has not flipped: routing stays on the source
// and everything the move created is dropped. A move whose earlier abort was
// incomplete (status 'failed') can be aborted again.
func (m *Mover) Abort(ctx context.Context, moveID int64) error {
	mv, err := m.loadMove(ctx, moveID)
	if err != nil {
		return fmt.Errorf("abort move %d: %w", moveID, err)
	}
	if mv.Status != "running" && mv.Status != "failed" {
		return fmt.Errorf("abort move %d: status %s: %w", moveID, mv.Status, ErrNotRunning)
	}
	flipped, err := m.isFlipped(ctx, mv)
	if err != nil {
		return fmt.Errorf("abort move %d: %w", moveID, err)
	}
	if flipped {
		return fmt.Errorf("abort move %d: %w", moveID, ErrFlipped)
	}
	if err := m.abort(ctx, mv, errors.New("aborted by request")); err != nil {
		return fmt.Errorf("abort move %d: %w", moveID, err)
	}
	return nil
}

// checkStop calls the BeforeStep hook and maps context cancellation to ErrInterrupted.
func (m *Mover) checkStop(ctx context.Context, mv *moveRun) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrInterrupted, ctx.Err())
	}
	if m.cfg.BeforeStep != nil {
		if err := m.cfg.BeforeStep(ctx, mv.ID, mv.Step); err != nil {
			return fmt.Errorf("%w: %w", ErrInterrupted, err)
		}
	}
	return nil
}

// smallShard is the size (on the source, when the move started) below which
// a shard's tables are copied and compared on one pair of connections: for
// a few MB, connecting more pairs costs more than copying in parallel saves.
const smallShard = 16 << 20

// connPairs is how many source/target connection pairs to open for the
// move's copy or comparison: want, or 1 for a small shard.
func connPairs(mv *moveRun, want int) int {
	if mv.Progress.SourceBytes < smallShard {
		return 1
	}
	return want
}
