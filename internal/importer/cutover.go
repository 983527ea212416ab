package importer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/move"
	"github.com/pgtenant/pgtenant/internal/stream"
)

// CutoverOptions say which shards to cut over and how.
type CutoverOptions struct {
	// Shards to cut over; with All, every shard copied and not cut over yet.
	Shards []int
	All    bool
	// Parallel is how many shards are cut over at once; 0 means 1.
	Parallel int
	// FenceLease is the fence's lease, renewed every second; 0 means
	// move.DefaultFenceLease. A cutover that dies leaves the shard fenced
	// at most this long: a router then serves it from the legacy database again.
	FenceLease time.Duration
	// MarkerTimeout bounds the wait for the stream to apply up to the
	// marker under the fence, and, before the fence, the wait while no
	// stream reads the import's slot; 0 means 30s.
	MarkerTimeout time.Duration
	// CatchUpTimeout bounds the wait, before the fence, for a stream that
	// reads the slot but is behind the legacy database (restarted after a
	// kill while the app kept writing) to catch up; 0 means 10 minutes.
	CatchUpTimeout time.Duration
	// PollInterval is how often the node is asked for the marker; 0 means 2ms.
	PollInterval time.Duration
	// NoRollback cuts over without a reverse stream: no logical slot is
	// kept on the shard's node until import finish (each holds the node's
	// WAL since its cutover), and import rollback refuses the shard.
	NoRollback bool
	// TenantFiltered confirms, for an import from a schema per tenant, that
	// the app's statements filter by the tenant column (or row-level
	// security does): on its shard a tenant's tables also hold the shard's
	// other tenants' rows, which a statement written for a schema of its own
	// would read and change. Without it such a cutover is refused (55000).
	TenantFiltered bool
}

// CutoverResult is one shard's cutover.
type CutoverResult struct {
	Shard int
	Node  string
	// Pause is how long the shard's new transactions were held: from the
	// fence until every router had seen the flip.
	Pause time.Duration
	// Fenced, Written, Marked and Flipped are when (from the fence's
	// start) every router held the shard, the marker was committed on the
	// legacy database, the marker was applied on the node, and the flip
	// committed; the rest of the pause is the routers' release.
	Fenced, Written, Marked, Flipped time.Duration
	// Lag is the stream's lag measured before the fence (a marker's trip
	// from the legacy database to the node).
	Lag time.Duration
	Err error
}

// ErrMarkerTimeout: the stream did not apply the marker in time (before
// the fence: no stream read the import's slot for MarkerTimeout).
var ErrMarkerTimeout = coded("55000", "the change stream did not bring the cutover marker to the node in time; is `pgtenant import start` (or `import follow`) running?")

// ErrStreamBehind: a stream reads the slot but did not catch up with the
// legacy database within CatchUpTimeout.
var ErrStreamBehind = coded("55000", "the change stream is running but has not caught up with the legacy database's writes; cut over when it has (`pgtenant import status` shows its lag)")

// importFenceOwner is the owner id of the import's fences in
// pgtenant.fence_leases (move ids are positive).
const importFenceOwner = -1

// maxLag is the stream lag (a marker's trip) below which a shard is fenced.
const maxLag = 100 * time.Millisecond

// mover returns the move package's fence machinery over the catalog, with
// the routers as its Fencer.
func (im *Importer) mover(lease time.Duration) *move.Mover {
	return move.New(move.Config{Catalog: im.cat.Pool(), Fencer: catalog.RouterFencer{Catalog: im.cat}, Logger: im.logger,
		FenceLease: lease, ResolveDSN: im.cat.ResolveDSN})
}

// Cutover moves shards from the legacy database to their nodes, each with
// the fence of shard moves (move.FenceShard: the shard fenced in the
// catalog with a lease, every router holding its new transactions and its
// running ones ended). Under the fence one statement on the legacy database
// commits a marker row and reads the sequences; the node's sequences are set
// past them while the stream brings the marker to the node; one catalog
// transaction then flips the shard to its node (import_shards.state
// 'cutover', epoch + 1, active) and the routers release the held
// transactions there. Before the fence, the stream is shown running and
// caught up (a marker's trip under 100ms) and the connections are open, so
// the pause holds only what needs the fence. A failure before the flip gives
// the shard back to the legacy database. Each shard pauses only its own
// tenants.
func (im *Importer) Cutover(ctx context.Context, opts CutoverOptions) ([]CutoverResult, error) {
	if opts.Parallel <= 0 {
		opts.Parallel = 1
	}
	if opts.FenceLease <= 0 {
		opts.FenceLease = move.DefaultFenceLease
	}
	if opts.MarkerTimeout <= 0 {
		opts.MarkerTimeout = 30 * time.Second
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = 2 * time.Millisecond
	}
	if opts.CatchUpTimeout <= 0 {
		opts.CatchUpTimeout = 10 * time.Minute
	}
	imp, err := im.load(ctx)
	if err != nil {
		return nil, err
	}
	if imp.State != StateStreaming {
		return nil, fmt.Errorf("import cutover: the import is %s; cutover needs every shard copied and the change stream running (pgtenant import start)", imp.State)
	}
	if !opts.TenantFiltered {
		ap, err := im.apartmentOf(ctx)
		if err != nil {
			return nil, err
		}
		if ap != nil {
			return nil, &CheckError{Problems: []Problem{{Code: "55000",
				Message: fmt.Sprintf("the legacy database has a schema per tenant: on its shard, a tenant's tables also hold the shard's other tenants' rows, which the app's statements must filter out by %s", ap.column),
				Hint:    fmt.Sprintf("make every statement name the tenant column (WHERE %s = current_setting('pgtenant.tenant_id')) and test the app against a canary shard, then cut over with --tenant-filtered", ap.column)}}}
		}
	}
	all, err := im.shards(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[int]ShardProgress{}
	for _, s := range all {
		byID[s.Shard] = s
	}
	var todo []ShardProgress
	if opts.All {
		for _, s := range all {
			if s.State == ShardCopied {
				todo = append(todo, s)
			}
		}
	}
	for _, id := range opts.Shards {
		s, ok := byID[id]
		switch {
		case !ok:
			return nil, fmt.Errorf("import cutover: shard %d is not part of the import", id)
		case s.State == ShardCutover:
			return nil, fmt.Errorf("import cutover: shard %d is cut over already", id)
		case s.State != ShardCopied:
			return nil, fmt.Errorf("import cutover: shard %d is %s, not copied", id, s.State)
		}
		todo = append(todo, s)
	}
	if !opts.NoRollback && imp.Method != MethodTrigger {
		if err := checkReverseSlots(ctx, todo); err != nil {
			return nil, err
		}
	}
	mover := im.mover(opts.FenceLease)
	results := make([]CutoverResult, len(todo))
	var wg sync.WaitGroup
	sem := make(chan struct{}, opts.Parallel)
	for i, s := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			r := CutoverResult{Shard: s.Shard, Node: s.Node}
			r.Err = im.cutoverShard(ctx, mover, imp, s, opts, &r)
			results[i] = r
			im.cat.RecordOperation(context.WithoutCancel(ctx), "import cutover", map[string]any{"shard": s.Shard, "node": s.Node,
				"pause_ms": ms(r.Pause), "fenced_ms": ms(r.Fenced), "written_ms": ms(r.Written), "marked_ms": ms(r.Marked), "flipped_ms": ms(r.Flipped), "lag_ms": ms(r.Lag)}, r.Err)
		}()
	}
	wg.Wait()
	sort.Slice(results, func(i, j int) bool { return results[i].Shard < results[j].Shard })
	var errs []error
	for _, r := range results {
		if r.Err != nil {
			errs = append(errs, fmt.Errorf("shard %d: %w", r.Shard, r.Err))
		}
	}
	return results, errors.Join(errs...)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// checkReverseSlots refuses, before any shard is fenced, a cutover whose
// shards' nodes lack the free replication slots their reverse streams
// need (one per shard until import finish, for import rollback): without
// the check each shard was cut over anyway, with a warning that it could
// not be rolled back. The error is 53400 (configuration_limit_exceeded),
// with a line per node short of slots.
func checkReverseSlots(ctx context.Context, todo []ShardProgress) error {
	byNode := map[string][]ShardProgress{}
	var nodes []string
	for _, s := range todo {
		if _, ok := byNode[s.Node]; !ok {
			nodes = append(nodes, s.Node)
		}
		byNode[s.Node] = append(byNode[s.Node], s)
	}
	sort.Strings(nodes)
	var problems []Problem
	for _, name := range nodes {
		shards := byNode[name]
		p, err := reverseSlotsShort(ctx, name, shards)
		if err != nil {
			return err
		}
		if p != nil {
			problems = append(problems, *p)
		}
	}
	if len(problems) == 0 {
		return nil
	}
	var b strings.Builder
	b.WriteString("not enough replication slots for the reverse streams (nothing was changed)")
	for _, p := range problems {
		fmt.Fprintf(&b, "\n  %s\n    hint: %s", p.Message, p.Hint)
	}
	return fmt.Errorf("import cutover: %w", coded(problems[0].Code, b.String()))
}

// reverseSlotsShort is checkReverseSlots for the shards of one node: nil
// when the node has a free slot for each shard without its reverse slot.
func reverseSlotsShort(ctx context.Context, name string, shards []ShardProgress) (*Problem, error) {
	node, err := connect(ctx, shards[0].NodeDSN)
	if err != nil {
		return nil, fmt.Errorf("connect to node %s: %w", name, err)
	}
	defer node.Close(context.WithoutCancel(ctx))
	var limit, used int
	if err := node.QueryRow(ctx, `SELECT current_setting('max_replication_slots')::int, (SELECT count(*) FROM pg_replication_slots)`).Scan(&limit, &used); err != nil {
		return nil, fmt.Errorf("node %s: count replication slots: %w", name, err)
	}
	need := 0
	for _, s := range shards {
		slot, err := reverseSlotName(ctx, node, s.Shard)
		if err != nil {
			return nil, err
		}
		var exists bool
		if err := node.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)`, slot).Scan(&exists); err != nil {
			return nil, fmt.Errorf("node %s: look for slot %s: %w", name, slot, err)
		}
		if !exists {
			need++
		}
	}
	if free := limit - used; need > free {
		return &Problem{Code: "53400",
			Message: fmt.Sprintf("node %s has %d free replication slot(s) (max_replication_slots = %d, %d in use); cutting over %d shard(s) there keeps a reverse slot for each until import finish, for import rollback", name, max(free, 0), limit, used, need),
			Hint:    fmt.Sprintf("raise max_replication_slots on node %s to at least %d (a restart), or cut over fewer shards now (--shard N), or cut over with --no-rollback (those shards cannot be rolled back)", name, used+need)}, nil
	}
	return nil, nil
}

func (im *Importer) cutoverShard(ctx context.Context, mover *move.Mover, imp *Import, s ShardProgress, opts CutoverOptions, r *CutoverResult) error {
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return fmt.Errorf("connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
	// synchronous_commit on: the WAL sender sends only flushed WAL, and a
	// server running with it off would flush the marker up to
	// wal_writer_delay later.
	if _, err := legacy.Exec(ctx, `SET synchronous_commit = on`); err != nil {
		return fmt.Errorf("legacy database: %w", err)
	}
	node, err := connect(ctx, s.NodeDSN)
	if err != nil {
		return fmt.Errorf("connect to node %s: %w", s.Node, err)
	}
	defer node.Close(context.Background())
	pairs, err := im.seqPairs(ctx, legacy, node, imp, s)
	if err != nil {
		return err
	}
	ids, err := im.idPlan(ctx, node, s.Shard, pairs) // idblocks.go
	if err != nil {
		return err
	}
	// The import's applier notifies the node's marker channel of the shard
	// when it applied a marker (applypipe.go): the waits for markers need
	// no polling. (The trigger method's applier does not notify.)
	listen := imp.Method != MethodTrigger
	if listen {
		if _, err := node.Exec(ctx, `LISTEN `+pgx.Identifier{markerChannel(s.Shard)}.Sanitize()); err != nil {
			return fmt.Errorf("listen for the markers on node %s: %w", s.Node, err)
		}
	}
	// Off the pause: the stream runs and is caught up, and the sequences are
	// set once (under the fence they move only by what was written since).
	if r.Lag, err = im.waitCaughtUp(ctx, legacy, node, imp.Slot, s.Shard, opts, listen); err != nil {
		return err
	}
	if err := syncSequences(ctx, legacy, node, pairs, ids); err != nil {
		return err
	}
	// The reverse stream's slot on the node, for import rollback: created
	// before the fence (creating a slot waits for the node's running
	// transactions); it starts reading at the node's position at the flip.
	var revSlot *string
	if !opts.NoRollback {
		if revSlot, err = im.prepareReverse(ctx, legacy, node, imp, s); err != nil && imp.Method == MethodTrigger {
			// No logical replication on the node: capture triggers there (rollback_queue.go).
			var qerr error
			if revSlot, qerr = im.prepareReverseQueue(ctx, legacy, node, imp, s); qerr == nil {
				err = nil
			} else {
				err = errors.Join(err, qerr)
			}
		}
		if err != nil {
			im.logger.Warn("cutover: no reverse stream; this shard cannot be rolled back with import rollback", "shard", s.Shard, "node", s.Node, "err", err)
		}
	}

	t0 := time.Now()
	im.traceStep(s.Shard, StepFence, t0)
	fence, err := mover.FenceShard(ctx, s.Shard, s.Node, importFenceOwner)
	if err != nil {
		return err
	}
	r.Fenced = time.Since(t0)
	im.traceStep(s.Shard, StepFenceCommitted, t0.Add(fence.Marked))
	im.traceStep(s.Shard, StepRoutersHold, t0.Add(r.Fenced))
	fctx := fence.Context()
	fail := func(err error) error {
		if c := context.Cause(fctx); c != nil && !errors.Is(c, context.Canceled) {
			err = errors.Join(err, c)
		}
		return errors.Join(err, fence.Release(ctx))
	}
	seq, last, err := markAndRead(fctx, legacy, s.Shard, pairs)
	if err != nil {
		return fail(err)
	}
	r.Written = time.Since(t0)
	im.traceStep(s.Shard, StepMarkerCommitted, t0.Add(r.Written))
	nodeLSN, err := im.waitMarker(fctx, node, s, seq, pairs, ids.nodeStarts(last), opts, listen)
	if err != nil {
		return fail(err)
	}
	if err := markReverseCut(fctx, node, revSlot); err != nil { // rollback_queue.go
		return fail(err)
	}
	r.Marked = time.Since(t0)
	var revLSN *string
	if revSlot != nil && !isReverseQueue(*revSlot) {
		l := nodeLSN.String()
		revLSN = &l
	}
	err = fence.FlipStatements(fctx, move.FlipStatement{
		SQL: `UPDATE pgtenant.import_shards SET state = 'cutover', reverse_slot = $2, reverse_lsn = $3::text::pg_lsn, updated_at = now()
			WHERE shard = $1 AND state = 'copied'`,
		Args: []any{s.Shard, revSlot, revLSN},
		Rows: 1, Err: fmt.Errorf("shard %d is no longer copied", s.Shard),
	})
	r.Pause = time.Since(t0)
	if !fence.FlippedAt.IsZero() {
		r.Flipped = fence.FlippedAt.Sub(t0)
		im.traceStep(s.Shard, StepFlipped, fence.FlippedAt)
		if err == nil {
			im.traceStep(s.Shard, StepReleased, t0.Add(r.Pause))
		}
	}
	if err != nil && !fence.Ended() {
		return fail(err)
	}
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := im.cat.Pool().Exec(bg, `UPDATE pgtenant.import_shards SET pause_ms = $2 WHERE shard = $1`, s.Shard, ms(r.Pause)); err != nil {
		im.logger.Warn("record the cutover pause", "shard", s.Shard, "err", err)
	}
	im.logger.Info("shard cut over", "shard", s.Shard, "node", s.Node, "pause", r.Pause, "fenced", r.Fenced,
		"written", r.Written-r.Fenced, "marked", r.Marked-r.Written, "flipped", r.Flipped-r.Marked, "released", r.Pause-r.Flipped, "lag", r.Lag)
	if err != nil { // flipped; some router has not acknowledged yet
		im.logger.Warn("cutover: routers have not all acknowledged the flip yet", "shard", s.Shard, "err", err)
	}
	return nil
}

// waitCaughtUp writes markers on the legacy database until one reaches the
// node within maxLag, and returns the last trip's time. With listen (conn
// LISTENs on the shard's marker channel) it waits for the applier's
// notification of each marker; else it polls every opts.PollInterval.
//
// A marker travels behind every change committed before it: a stream that
// runs but is behind (restarted after a kill while the app kept writing)
// brings it only once it has applied that backlog. So while a stream reads
// the import's slot, the wait lasts up to opts.CatchUpTimeout
// (ErrStreamBehind), logging how far behind it is; ErrMarkerTimeout when no
// stream read the slot for opts.MarkerTimeout. When no trip is as short as
// maxLag within opts.MarkerTimeout (a loaded machine, a busy legacy
// database) from the first marker's arrival, the last trip's time is
// returned: the stream runs, and the pause grows by about that lag.
func (im *Importer) waitCaughtUp(ctx context.Context, legacy, node *pgx.Conn, slot string, shard int, opts CutoverOptions, listen bool) (time.Duration, error) {
	start := time.Now()
	var deadline time.Time // for a trip under maxLag: MarkerTimeout from the first arrival
	w := &slotWatch{legacy: legacy, slot: slot, since: start, logged: start}
	for {
		t0 := time.Now()
		seq, _, err := markAndRead(ctx, legacy, shard, nil)
		if err != nil {
			return 0, err
		}
		for {
			var ok bool
			if err := node.QueryRow(ctx, `SELECT EXISTS (SELECT FROM `+nodeMarkers+` WHERE shard = $1 AND seq = $2)`, shard, seq).Scan(&ok); err != nil {
				return 0, fmt.Errorf("wait for the marker on the node: %w", err)
			}
			if ok {
				break
			}
			if err := w.read(ctx); err != nil {
				return 0, err
			}
			switch {
			case time.Since(w.since) > opts.MarkerTimeout:
				return 0, ErrMarkerTimeout
			case time.Since(start) > opts.CatchUpTimeout:
				return 0, fmt.Errorf("%w (waited %s; %s of the legacy database's WAL not confirmed yet)", ErrStreamBehind, opts.CatchUpTimeout, humanLag(w.behind))
			case time.Since(w.logged) > 10*time.Second:
				im.logger.Info("cutover: waiting for the change stream to catch up with the legacy database", "shard", shard,
					"behind_bytes", w.behind, "waited", time.Since(start).Round(time.Second))
				w.logged = time.Now()
			}
			if listen { // the applier's notification, or a look again after notifyWait
				if _, _, err := waitNotified(ctx, node, seq, notifyWait); err != nil {
					return 0, fmt.Errorf("wait for the marker on the node: %w", err)
				}
			} else if err := sleepCtx(ctx, opts.PollInterval); err != nil {
				return 0, err
			}
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(opts.MarkerTimeout)
		}
		if lag := time.Since(t0); lag <= maxLag || time.Now().After(deadline) {
			return lag, nil
		}
	}
}

// slotWatch reads, about once a second, whether a stream reads the
// import's slot and how far behind the legacy database's WAL it confirmed.
type slotWatch struct {
	legacy *pgx.Conn
	slot   string
	since  time.Time // since when no stream has been seen reading the slot
	behind int64     // bytes of WAL past the slot's confirmed position
	last   time.Time // the last read
	logged time.Time
}

func (w *slotWatch) read(ctx context.Context) error {
	now := time.Now()
	if now.Sub(w.last) < time.Second {
		return nil
	}
	w.last = now
	var active bool
	var behind *int64
	err := w.legacy.QueryRow(ctx, `SELECT active, pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint
		FROM pg_replication_slots WHERE slot_name = $1`, w.slot).Scan(&active, &behind)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("read the import slot: %w", err)
	}
	if active {
		w.since = now
	}
	if behind != nil {
		w.behind = *behind
	}
	return nil
}

func humanLag(b int64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(b)/(1<<20))
	case b >= 1<<10:
		return fmt.Sprintf("%.1f kB", float64(b)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", b)
}

// markAndRead commits a marker for shard on the legacy database and reads
// the legacy sequences of pairs, in one statement.
func markAndRead(ctx context.Context, legacy *pgx.Conn, shard int, pairs []seqPair) (int64, []int64, error) {
	seq := rand.Int64N(1 << 62)
	names := make([]string, len(pairs))
	for i, p := range pairs {
		names[i] = p.legacy
	}
	rows, err := legacy.Query(ctx, `WITH m AS (INSERT INTO `+markerSchema+`.`+markerTable+` (shard, seq) VALUES ($1, $2) RETURNING seq)
		SELECT coalesce(pg_sequence_last_value(u.s::regclass), 0) FROM (SELECT count(*) FROM m) AS mm, unnest($3::text[]) WITH ORDINALITY AS u(s, i) ORDER BY u.i`,
		shard, seq, names)
	if err != nil {
		return 0, nil, fmt.Errorf("write the marker on the legacy database: %w", err)
	}
	last, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, nil, fmt.Errorf("write the marker on the legacy database: %w", err)
	}
	return seq, last, nil
}

// waitMarker sets the node's sequences past last and waits until the
// stream applied the marker seq on the node and the node's WAL is flushed
// past every change the stream applied to the shard. It returns that
// position: where the shard's reverse stream starts (import rollback).
//
// The sequences go in one round trip sent when the legacy database
// committed the marker (its commit flushes the node only when a sequence
// moved: the shard's block is chosen so that it seldom does), beside the
// marker's trip. With listen it then waits for the applier's notification,
// which names a position: where the node is flushed past the shard's
// changes (the applier flushes the rounds that change a fenced shard, and
// the node when a shard is fenced, while the routers hold it and the
// legacy database commits the marker), or, with a second position, the
// node's position after the shard's last change, not known flushed: the
// node is flushed then, unless it already was that far. Without a
// notification (one lost with a restarted stream) it looks at the node
// every notifyWait, and once the marker is there flushes the node and
// returns the flushed position; without listen (the trigger method) the
// round trip flushes the node too, and it polls every opts.PollInterval.
func (im *Importer) waitMarker(ctx context.Context, node *pgx.Conn, s ShardProgress, seq int64, pairs []seqPair, last []int64, opts CutoverOptions, listen bool) (stream.LSN, error) {
	const poll = `SELECT EXISTS (SELECT FROM ` + nodeMarkers + ` WHERE shard = $1 AND seq = $2), pg_current_wal_lsn()::text`
	deadline := time.Now().Add(opts.MarkerTimeout)
	var ok bool
	var lsn, flushedText string
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SET LOCAL synchronous_commit = on`) // a sequence set is WAL: the COMMIT then waits for its flush
	if len(pairs) > 0 {
		queueSetSequences(b, pairs, last)
	}
	if !listen {
		b.Queue(poll, s.Shard, seq).QueryRow(func(r pgx.Row) error { return r.Scan(&ok, &lsn) })
		b.Queue(stream.FlushSQL)
	}
	b.Queue(`COMMIT`)
	b.Queue(`SELECT pg_current_wal_flush_lsn()::text`).QueryRow(func(r pgx.Row) error { return r.Scan(&flushedText) })
	if err := node.SendBatch(ctx, b).Close(); err != nil {
		if node.PgConn().TxStatus() != 'I' {
			_, _ = node.Exec(context.WithoutCancel(ctx), `ROLLBACK`)
		}
		return 0, fmt.Errorf("set the shard's sequences on node %s: %w", s.Node, err)
	}
	flushed, err := stream.ParseLSN(flushedText)
	if err != nil {
		return 0, err
	}
	if !listen {
		im.traceStep(s.Shard, StepNodeFlushed, time.Now())
	}
	for !ok {
		if time.Now().After(deadline) {
			return 0, ErrMarkerTimeout
		}
		if listen {
			var err error
			if ok, lsn, err = waitNotified(ctx, node, seq, min(notifyWait, time.Until(deadline))); err != nil {
				return 0, fmt.Errorf("wait for the marker on node %s: %w", s.Node, err)
			}
			if ok {
				im.traceStep(s.Shard, StepMarkerNotified, time.Now())
				at, need, async := strings.Cut(lsn, " ")
				if !async { // durable there
					return stream.ParseLSN(at)
				}
				changed, err := stream.ParseLSN(need)
				if err != nil {
					return 0, err
				}
				if changed > flushed {
					if _, err = stream.Flush(ctx, node); err != nil {
						return 0, fmt.Errorf("node %s: %w", s.Node, err)
					}
					im.traceStep(s.Shard, StepNodeReflushed, time.Now())
				}
				return changed, nil
			}
		} else if err := sleepCtx(ctx, opts.PollInterval); err != nil {
			return 0, err
		}
		if err := node.QueryRow(ctx, poll, s.Shard, seq).Scan(&ok, &lsn); err != nil {
			return 0, fmt.Errorf("wait for the marker on node %s: %w", s.Node, err)
		}
		if ok && listen { // no notification: flush past the marker's round
			im.traceStep(s.Shard, StepMarkerNotified, time.Now())
			f, err := stream.Flush(ctx, node)
			if err != nil {
				return 0, fmt.Errorf("node %s: %w", s.Node, err)
			}
			im.traceStep(s.Shard, StepNodeReflushed, time.Now())
			return f, nil
		}
	}
	im.traceStep(s.Shard, StepMarkerNotified, time.Now())
	return stream.ParseLSN(lsn)
}

// notifyWait is how long waitMarker waits for a notification before it
// looks at the node.
const notifyWait = 100 * time.Millisecond

// waitNotified waits up to d for the notification of marker seq on conn
// (LISTENing to its shard's channel) and returns the node's WAL position
// it carries; false when none came in time.
func waitNotified(ctx context.Context, conn *pgx.Conn, seq int64, d time.Duration) (bool, string, error) {
	if d <= 0 {
		return false, "", nil
	}
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	want := strconv.FormatInt(seq, 10) + " "
	for {
		n, err := conn.WaitForNotification(wctx)
		if err != nil {
			if ctx.Err() == nil && wctx.Err() != nil {
				return false, "", nil // timed out; the connection stays usable
			}
			return false, "", err
		}
		if lsn, ok := strings.CutPrefix(n.Payload, want); ok {
			return true, lsn, nil
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// seqPair is a sequence of the shard's schema and the legacy sequence of
// the same table column.
type seqPair struct{ shard, legacy string }

// sequencePairs lists the shard's sequences that have a legacy counterpart.
func sequencePairs(ctx context.Context, legacy, node *pgx.Conn, legacySchema, schema string) ([]seqPair, error) {
	rows, err := node.Query(ctx, `SELECT c.relname, a.attname, pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident(c.relname), a.attname)
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a ON a.attrelid = c.oid
		WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
		AND pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident(c.relname), a.attname) IS NOT NULL`, schema)
	if err != nil {
		return nil, fmt.Errorf("list the shard's sequences: %w", err)
	}
	type seqCol struct{ table, col, seq string }
	var seqs []seqCol
	var sc seqCol
	if _, err := pgx.ForEachRow(rows, []any{&sc.table, &sc.col, &sc.seq}, func() error { seqs = append(seqs, sc); return nil }); err != nil {
		return nil, fmt.Errorf("list the shard's sequences: %w", err)
	}
	var out []seqPair
	for _, sc := range seqs {
		var seq *string
		err := legacy.QueryRow(ctx, `SELECT CASE WHEN to_regclass(quote_ident($1) || '.' || quote_ident($2)) IS NOT NULL
			THEN pg_get_serial_sequence(quote_ident($1) || '.' || quote_ident($2), $3) END`, legacySchema, sc.table, sc.col).Scan(&seq)
		if err != nil {
			return nil, fmt.Errorf("find the legacy sequence of %s.%s: %w", sc.table, sc.col, err)
		}
		if seq != nil { // else one of the shard's own tables (goose's versions)
			out = append(out, seqPair{shard: sc.seq, legacy: *seq})
		}
	}
	return out, nil
}

// syncSequences sets each shard sequence to the start of the shard's id
// block past its legacy sequence's value (ids.nodeStarts) when that is
// higher, so ids the shard hands out next are past every id copied: one
// round trip to each side.
func syncSequences(ctx context.Context, legacy, node *pgx.Conn, pairs []seqPair, ids *idPlan) error {
	if len(pairs) == 0 {
		return nil
	}
	names := make([]string, len(pairs))
	for i, p := range pairs {
		names[i] = p.legacy
	}
	rows, err := legacy.Query(ctx, `SELECT coalesce(pg_sequence_last_value(s::regclass), 0) FROM unnest($1::text[]) WITH ORDINALITY AS u(s, i) ORDER BY i`, names)
	if err != nil {
		return fmt.Errorf("read the legacy sequences: %w", err)
	}
	last, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("read the legacy sequences: %w", err)
	}
	return setSequences(ctx, node, pairs, ids.nodeStarts(last))
}

// setSequences sets each shard sequence of pairs to last[i] when that is
// higher than its value (the highest, for a sequence named more than once:
// a schema per tenant pairs it with each tenant's).
func setSequences(ctx context.Context, node *pgx.Conn, pairs []seqPair, last []int64) error {
	b := &pgx.Batch{}
	queueSetSequences(b, pairs, last)
	if err := node.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("set the shard's sequences: %w", err)
	}
	return nil
}

// queueSetSequences queues setSequences' statement.
func queueSetSequences(b *pgx.Batch, pairs []seqPair, last []int64) {
	shardNames := make([]string, len(pairs))
	for i, p := range pairs {
		shardNames[i] = p.shard
	}
	b.Queue(`SELECT setval(s::regclass, max(v)) FROM unnest($1::text[], $2::bigint[]) AS u(s, v)
		GROUP BY s HAVING max(v) > coalesce(pg_sequence_last_value(s::regclass), 0)`, shardNames, last)
}
