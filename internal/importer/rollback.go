package importer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/move"
	"github.com/pgtenant/pgtenant/internal/stream"
)

// A rollback moves a cut-over shard back to the legacy database with every
// write it took on its node since the cutover. The cutover prepares it: on
// the shard's node, before the fence, a publication naming the shard's
// tables and the node's marker table, and a logical slot (created before the
// fence: a slot's creation waits for the node's running transactions); under
// the fence it reads the node's WAL position with the marker, past every
// change the forward stream applied for the shard, and stores it with the
// slot's name in import_shards (reverse_lsn, reverse_slot) in the flip's
// transaction. (Without logical replication on the node, an import by
// trigger captures the shard's changes there with triggers instead:
// rollback_queue.go.) Rollback streams from that position (internal/stream): each
// change of the shard's tables is written to the legacy table of the same
// name, rows as they are (the tenant column is in them), each batch in one
// legacy transaction that records its position in the legacy database's
// pgtenant_stream.position, so a rollback killed at any point resumes with
// nothing lost or applied twice. Then the fence, a marker through the
// reverse stream, the legacy sequences set past the node's id block
// (idblocks.go), and a flip that
// serves the shard from the legacy database again: state 'copied' with the
// legacy WAL position read after the last write back as its copy_lsn, so the
// forward stream applies to the node only what the legacy database takes
// from then on, and the shard can be cut over again.

// reverseSlotTimeout bounds the creation of a reverse slot.
const reverseSlotTimeout = 30 * time.Second

// reverseName names a shard's reverse publication (per node database) and
// the stream's position on the legacy database.
func reverseName(shard int) string { return fmt.Sprintf("pgtenant_import_rev_%d", shard) }

// reverseSlotName names a shard's reverse slot; slot names are per server,
// so the node database's oid is in it.
func reverseSlotName(ctx context.Context, node *pgx.Conn, shard int) (string, error) {
	var oid uint32
	if err := node.QueryRow(ctx, `SELECT oid FROM pg_database WHERE datname = current_database()`).Scan(&oid); err != nil {
		return "", fmt.Errorf("read the node database's oid: %w", err)
	}
	return fmt.Sprintf("pgtenant_import_rev_%d_%d", oid, shard), nil
}

// prepareReverse creates, when missing, the shard's reverse publication and
// slot on its node, and returns the slot's name. Tables of the shard with no
// replica identity get REPLICA IDENTITY FULL first (a published table
// without one refuses updates and deletes).
func (im *Importer) prepareReverse(ctx context.Context, legacy, node *pgx.Conn, imp *Import, s ShardProgress) (*string, error) {
	rules, _, err := im.rules(ctx, legacy, imp.LegacySchema)
	if err != nil {
		return nil, err
	}
	names := []string{nodeMarkers}
	for _, t := range rules {
		q := pgx.Identifier{s.Schema, t.Name}.Sanitize()
		var keyless bool
		if err := node.QueryRow(ctx, `SELECT c.relreplident = 'n' OR (c.relreplident = 'd' AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary))
			FROM pg_class c WHERE c.oid = $1::text::regclass`, q).Scan(&keyless); err != nil {
			return nil, fmt.Errorf("read the replica identity of %s: %w", q, err)
		}
		if keyless {
			if _, err := node.Exec(ctx, `ALTER TABLE `+q+` REPLICA IDENTITY FULL`); err != nil {
				return nil, fmt.Errorf("set REPLICA IDENTITY FULL on %s: %w", q, err)
			}
		}
		names = append(names, q)
	}
	pub := reverseName(s.Shard)
	var exists bool
	if err := node.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = $1)`, pub).Scan(&exists); err != nil {
		return nil, fmt.Errorf("look for publication %s: %w", pub, err)
	}
	if !exists {
		if _, err := node.Exec(ctx, `CREATE PUBLICATION `+pgx.Identifier{pub}.Sanitize()+` FOR TABLE `+strings.Join(names, ", ")); err != nil {
			return nil, fmt.Errorf("create publication %s on node %s: %w", pub, s.Node, err)
		}
	}
	slot, err := reverseSlotName(ctx, node, s.Shard)
	if err != nil {
		return nil, err
	}
	if err := node.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $1)`, slot).Scan(&exists); err != nil {
		return nil, fmt.Errorf("look for slot %s: %w", slot, err)
	}
	if !exists {
		// Creating a slot waits for every transaction open on the node's
		// server; a long one would hold the cutover up: bounded.
		cctx, cancel := context.WithTimeout(ctx, reverseSlotTimeout)
		sl, err := stream.CreateSlot(cctx, s.NodeDSN, slot)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", s.Node, err)
		}
		sl.Close(context.WithoutCancel(ctx))
	}
	return &slot, nil
}

// dropReverse drops a shard's reverse slot and publication, or its capture
// queue, on its node and forgets the rollback's position on the legacy
// database. With slot "" (the catalog names none: a rollback killed after
// its flip cleared it), the slot of the shard's name is dropped if there.
func dropReverse(ctx context.Context, legacy, node *pgx.Conn, shard int, slot string) error {
	// A capture queue (rollback_queue.go), also one a failed cutover left:
	// its schema holds the trigger functions, so the triggers go with it.
	if _, err := node.Exec(ctx, `DROP SCHEMA IF EXISTS `+pgx.Identifier{reverseQueueSchema(shard)}.Sanitize()+` CASCADE`); err != nil {
		return fmt.Errorf("drop schema %s: %w", reverseQueueSchema(shard), err)
	}
	if legacy != nil {
		if _, err := legacy.Exec(ctx, `DELETE FROM pgtenant_stream.reverse_queue WHERE name = $1`, reverseQueueSchema(shard)); err != nil && !isUndefinedTable(err) {
			return fmt.Errorf("forget the rollback's position: %w", err)
		}
	}
	if slot == "" {
		var err error
		if slot, err = reverseSlotName(ctx, node, shard); err != nil {
			return err
		}
	}
	if !isReverseQueue(slot) {
		if err := stream.DropSlot(ctx, node, slot); err != nil {
			return err
		}
	}
	if _, err := node.Exec(ctx, `DROP PUBLICATION IF EXISTS `+pgx.Identifier{reverseName(shard)}.Sanitize()); err != nil {
		return fmt.Errorf("drop publication %s: %w", reverseName(shard), err)
	}
	if legacy != nil {
		if err := stream.DeletePosition(ctx, legacy, reverseName(shard)); err != nil && !isUndefinedTable(err) {
			return err
		}
	}
	return nil
}

// RollbackOptions say which shard to roll back and how.
type RollbackOptions struct {
	Shard int
	// FenceLease, MarkerTimeout and PollInterval are as for Cutover.
	FenceLease    time.Duration
	MarkerTimeout time.Duration
	PollInterval  time.Duration
}

// RollbackResult is one shard's rollback.
type RollbackResult struct {
	Shard int
	Node  string
	// Changes counts the row changes written back to the legacy database.
	Changes int64
	// Pause, Fenced, Marked, Flipped and Lag are as in CutoverResult.
	Pause, Fenced, Marked, Flipped, Lag time.Duration
	// Leftovers: the shard was served from the legacy database already (a
	// rollback died after its flip) and only what that rollback left on
	// the node was dropped.
	Leftovers bool
}

// ErrNoReverse: the shard was cut over without a reverse slot or capture
// queue on its node.
var ErrNoReverse = coded("55000", "the shard was cut over without a way back: with --no-rollback, or, for an import by logical replication, "+
	"onto a node without logical replication (wal_level is not logical there, or the node's role lacks REPLICATION), so its writes since cannot be read back "+
	"(an import by --method trigger captures them with triggers on such a node instead; the cutover's log says why it kept none); "+
	"the shard stays on its node: it is served there with nothing lost")

// Rollback serves a cut-over shard from the legacy database again, with
// every write its node took since the cutover (see the comment at the top of
// rollback.go). It needs the forward stream running (import start), which
// then keeps the shard's copy on its node up to date again.
func (im *Importer) Rollback(ctx context.Context, opts RollbackOptions) (*RollbackResult, error) {
	co := CutoverOptions{FenceLease: opts.FenceLease, MarkerTimeout: opts.MarkerTimeout, PollInterval: opts.PollInterval}
	if co.FenceLease <= 0 {
		co.FenceLease = move.DefaultFenceLease
	}
	if co.MarkerTimeout <= 0 {
		co.MarkerTimeout = 30 * time.Second
	}
	if co.PollInterval <= 0 {
		co.PollInterval = 2 * time.Millisecond
	}
	imp, err := im.load(ctx)
	if err != nil {
		return nil, err
	}
	if imp.State != StateStreaming {
		return nil, fmt.Errorf("import rollback: the import is %s; a rollback needs the change stream running (pgtenant import start)", imp.State)
	}
	shards, err := im.shards(ctx)
	if err != nil {
		return nil, err
	}
	var s *ShardProgress
	for i := range shards {
		if shards[i].Shard == opts.Shard {
			s = &shards[i]
		}
	}
	if s == nil {
		return nil, fmt.Errorf("import rollback: shard %d is not part of the import", opts.Shard)
	}
	if s.State == ShardCopied {
		// A rollback killed after its flip: the shard is back, what it
		// left on the node (capture triggers, queue, slot) goes now.
		if left, err := im.dropRollbackLeftovers(ctx, imp, *s); err != nil {
			return nil, fmt.Errorf("import rollback: shard %d: %w", s.Shard, err)
		} else if left {
			return &RollbackResult{Shard: s.Shard, Node: s.Node, Leftovers: true}, nil
		}
	}
	if s.State != ShardCutover {
		return nil, fmt.Errorf("import rollback: shard %d is %s: only a cut-over shard rolls back (it is served from the legacy database already)", s.Shard, s.State)
	}
	var slot, startText *string
	if err := im.cat.Pool().QueryRow(ctx, `SELECT reverse_slot, reverse_lsn::text FROM pgtenant.import_shards WHERE shard = $1`, s.Shard).Scan(&slot, &startText); err != nil {
		return nil, fmt.Errorf("import rollback: %w", err)
	}
	if slot == nil || (startText == nil && !isReverseQueue(*slot)) {
		return nil, fmt.Errorf("import rollback: shard %d: %w", s.Shard, ErrNoReverse)
	}
	if startText == nil {
		startText = new(string)
	}
	res := &RollbackResult{Shard: s.Shard, Node: s.Node}
	err = im.rollback(ctx, imp, *s, *slot, *startText, co, res)
	im.cat.RecordOperation(context.WithoutCancel(ctx), "import rollback", map[string]any{"shard": s.Shard, "node": s.Node, "changes": res.Changes,
		"pause_ms": ms(res.Pause), "fenced_ms": ms(res.Fenced), "marked_ms": ms(res.Marked), "flipped_ms": ms(res.Flipped), "lag_ms": ms(res.Lag)}, err)
	if err != nil {
		return res, fmt.Errorf("import rollback: shard %d: %w", s.Shard, err)
	}
	return res, nil
}

// dropRollbackLeftovers drops what a rollback of shard s killed after its
// flip left behind (capture triggers and queue, or reverse slot and
// publication, on the node; the write back's position on the legacy
// database), and reports whether there was any. Nothing of it is needed:
// the shard is served from the legacy database, and its next cutover
// prepares a new way back.
func (im *Importer) dropRollbackLeftovers(ctx context.Context, imp *Import, s ShardProgress) (bool, error) {
	node, err := connect(ctx, s.NodeDSN)
	if err != nil {
		return false, fmt.Errorf("connect to node %s: %w", s.Node, err)
	}
	defer node.Close(context.Background())
	slot, err := reverseSlotName(ctx, node, s.Shard)
	if err != nil {
		return false, err
	}
	var left bool
	if err := node.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1) OR EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = $2)
		OR EXISTS (SELECT FROM pg_publication WHERE pubname = $3)`, reverseQueueSchema(s.Shard), slot, reverseName(s.Shard)).Scan(&left); err != nil {
		return false, fmt.Errorf("node %s: look for a rollback's leftovers: %w", s.Node, err)
	}
	if !left {
		return false, nil
	}
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return false, fmt.Errorf("connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
	if err := im.dropQueueTriggers(ctx, node, s.Schema); err != nil {
		return false, err
	}
	if err := dropReverse(ctx, legacy, node, s.Shard, slot); err != nil {
		return false, err
	}
	im.logger.Info("rollback: the shard is on the legacy database already; dropped what an earlier rollback left on its node", "shard", s.Shard, "node", s.Node)
	return true, nil
}

// reverser writes the node's changes of a shard back to the legacy
// database: a logical stream from the reverse slot (logicalReverser) or
// rounds over a capture queue on the node (queueReverser, rollback_queue.go).
type reverser interface {
	// round writes back what the node committed for the shard before it
	// began, and returns how long that took.
	round(ctx context.Context) (time.Duration, error)
	// changes counts the row changes written back.
	changes() int64
}

func (im *Importer) rollback(ctx context.Context, imp *Import, s ShardProgress, slot, startText string, opts CutoverOptions, res *RollbackResult) error {
	legacy, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return fmt.Errorf("connect to the legacy database: %w", err)
	}
	defer legacy.Close(context.Background())
	node, err := connect(ctx, s.NodeDSN)
	if err != nil {
		return fmt.Errorf("connect to node %s: %w", s.Node, err)
	}
	defer node.Close(context.Background())
	if _, err := node.Exec(ctx, `SET synchronous_commit = on`); err != nil {
		return fmt.Errorf("node %s: %w", s.Node, err)
	}
	applyConn, err := connect(ctx, imp.LegacyDSN)
	if err != nil {
		return fmt.Errorf("connect to the legacy database: %w", err)
	}
	defer applyConn.Close(context.Background())
	pairs, err := im.seqPairs(ctx, legacy, node, imp, s)
	if err != nil {
		return err
	}
	ids, err := im.idPlan(ctx, node, s.Shard, pairs) // idblocks.go
	if err != nil {
		return err
	}
	var rev reverser
	if isReverseQueue(slot) {
		if rev, err = im.openQueueReverser(ctx, applyConn, node, imp, s, slot); err != nil {
			return err
		}
	} else {
		lr, err := im.openLogicalReverser(ctx, applyConn, node, imp, s, slot, startText, opts)
		if err != nil {
			return err
		}
		defer lr.stop()
		rev = lr
	}

	// Off the pause: the node's writes since the cutover are written back
	// and the write back keeps up (a round under maxLag), and the legacy
	// sequences are past the node's block.
	deadline := time.Now().Add(opts.MarkerTimeout)
	for {
		if res.Lag, err = rev.round(ctx); err != nil {
			return err
		}
		if res.Lag <= maxLag || time.Now().After(deadline) {
			break
		}
	}
	if last, err := nodeSequences(ctx, node, pairs); err != nil {
		return err
	} else if _, err := setLegacySequences(ctx, legacy, pairs, ids.legacyFloors(last)); err != nil {
		return err
	}

	t0 := time.Now()
	fence, err := im.mover(opts.FenceLease).FenceShard(ctx, s.Shard, s.Node, importFenceOwner)
	if err != nil {
		return err
	}
	res.Fenced = time.Since(t0)
	fctx := fence.Context()
	fail := func(err error) error {
		if c := context.Cause(fctx); c != nil && !errors.Is(c, context.Canceled) {
			err = errors.Join(err, c)
		}
		return errors.Join(err, fence.Release(ctx))
	}
	if _, err := rev.round(fctx); err != nil {
		return fail(err)
	}
	last, err := nodeSequences(fctx, node, pairs)
	if err != nil {
		return fail(err)
	}
	lsn, err := setLegacySequences(fctx, legacy, pairs, ids.legacyFloors(last))
	if err != nil {
		return fail(err)
	}
	// The trigger method's copy point: the queued changes of the writes
	// back (all visible in this snapshot) are on the node already.
	var skip *string
	if imp.Method == MethodTrigger {
		var sn string
		if err := legacy.QueryRow(fctx, `SELECT pg_current_snapshot()::text`).Scan(&sn); err != nil {
			return fail(fmt.Errorf("read the legacy snapshot: %w", err))
		}
		skip = &sn
	}
	res.Marked = time.Since(t0)
	err = fence.Flip(fctx, func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE pgtenant.import_shards SET state = 'copied', copy_lsn = $2::text::pg_lsn, copy_snapshot = $3::text::pg_snapshot,
			reverse_slot = NULL, reverse_lsn = NULL, pause_ms = NULL, updated_at = now() WHERE shard = $1 AND state = 'cutover'`, s.Shard, lsn, skip)
		if err == nil && tag.RowsAffected() != 1 {
			err = fmt.Errorf("shard %d is no longer cut over", s.Shard)
		}
		return err
	})
	res.Pause = time.Since(t0)
	if !fence.FlippedAt.IsZero() {
		res.Flipped = fence.FlippedAt.Sub(t0)
	}
	if err != nil && !fence.Ended() {
		return fail(err)
	}
	if err != nil {
		im.logger.Warn("rollback: routers have not all acknowledged the flip yet", "shard", s.Shard, "err", err)
	}
	if lr, ok := rev.(*logicalReverser); ok {
		lr.stop()
	}
	res.Changes = rev.changes()
	im.logger.Info("shard rolled back to the legacy database", "shard", s.Shard, "node", s.Node, "changes", res.Changes, "pause", res.Pause,
		"fenced", res.Fenced, "marked", res.Marked-res.Fenced, "flipped", res.Flipped-res.Marked, "released", res.Pause-res.Flipped, "lag", res.Lag)
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	err = im.dropQueueTriggers(bg, node, s.Schema)
	if err == nil {
		err = dropReverse(bg, legacy, node, s.Shard, slot)
	}
	if err != nil {
		im.logger.Warn("rollback: drop the reverse stream; import finish drops it", "shard", s.Shard, "err", err)
	}
	return nil
}

// logicalReverser streams the shard's changes from the reverse slot on its
// node to the legacy tables; a round is a marker's trip.
type logicalReverser struct {
	*reverseApplier
	node       *pgx.Conn
	timeout    time.Duration
	streamDone chan error
	cancel     context.CancelFunc
	stopped    bool
}

// openLogicalReverser starts the reverse stream from the slot at startText
// (or where a rollback that died left it).
func (im *Importer) openLogicalReverser(ctx context.Context, applyConn, node *pgx.Conn, imp *Import, s ShardProgress, slot, startText string, opts CutoverOptions) (*logicalReverser, error) {
	if err := stream.EnsurePositionTable(ctx, applyConn); err != nil {
		return nil, fmt.Errorf("legacy database: %w", err)
	}
	start, err := stream.ParseLSN(startText)
	if err != nil {
		return nil, fmt.Errorf("reverse_lsn: %w", err)
	}
	if pos, ok, err := stream.LoadPosition(ctx, applyConn, reverseName(s.Shard)); err != nil {
		return nil, fmt.Errorf("legacy database: %w", err)
	} else if ok && pos > start {
		start = pos // a rollback that died wrote back up to here
	}
	rev := &reverseApplier{shard: s.Shard, seen: map[int64]bool{}, wake: make(chan struct{}),
		ta: &stream.TableApplier{Conn: applyConn, Name: reverseName(s.Shard), Target: func(rel *stream.Relation) (string, string, bool) {
			return imp.LegacySchema, rel.Table, rel.Schema == s.Schema
		}}}
	if rev.transform, err = im.reverseTransform(ctx, s.Schema); err != nil {
		return nil, err
	} else if rev.transform != nil { // a schema per tenant: rows go to their tenant's schema
		rev.ta.Target = func(rel *stream.Relation) (string, string, bool) {
			return rel.Schema, rel.Table, rel.Schema != "pgtenant_stream"
		}
	}
	sctx, cancel := context.WithCancel(ctx)
	lr := &logicalReverser{reverseApplier: rev, node: node, timeout: opts.MarkerTimeout, streamDone: make(chan error, 1), cancel: cancel}
	go func() {
		st := stream.New(stream.Config{DSN: s.NodeDSN, Slot: slot, Publications: []string{reverseName(s.Shard)}, Start: start, Applier: rev, Logger: im.logger})
		lr.streamDone <- st.Run(sctx)
	}()
	return lr, nil
}

// stop ends the reverse stream and waits for it.
func (lr *logicalReverser) stop() {
	if !lr.stopped {
		lr.stopped = true
		lr.cancel()
		<-lr.streamDone
	}
}

// round commits a marker on the node and waits until the reverse stream
// brought it to the legacy database.
func (lr *logicalReverser) round(ctx context.Context) (time.Duration, error) {
	t0 := time.Now()
	seq, _, err := nodeMark(ctx, lr.node, lr.shard, nil)
	if err != nil {
		return 0, err
	}
	deadline := time.NewTimer(lr.timeout)
	defer deadline.Stop()
	for {
		wake, ok := lr.has(seq)
		if ok {
			return time.Since(t0), nil
		}
		select {
		case <-wake:
		case err := <-lr.streamDone:
			lr.stopped = true
			return 0, fmt.Errorf("the reverse stream stopped: %w", err)
		case <-deadline.C:
			return 0, errors.New("the reverse stream did not bring the marker to the legacy database in time")
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
}

func (lr *logicalReverser) changes() int64 {
	lr.mu.Lock()
	defer lr.mu.Unlock()
	return lr.reverseApplier.changes
}

// nodeSequences reads the node's sequences of pairs.
func nodeSequences(ctx context.Context, node *pgx.Conn, pairs []seqPair) ([]int64, error) {
	names := make([]string, len(pairs))
	for i, p := range pairs {
		names[i] = p.shard
	}
	rows, err := node.Query(ctx, `SELECT coalesce(pg_sequence_last_value(u.s::regclass), 0) FROM unnest($1::text[]) WITH ORDINALITY AS u(s, i) ORDER BY u.i`, names)
	if err != nil {
		return nil, fmt.Errorf("read the node's sequences: %w", err)
	}
	last, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return nil, fmt.Errorf("read the node's sequences: %w", err)
	}
	return last, nil
}

// nodeMark commits a marker for shard on the node (it reaches the legacy
// database through the reverse stream) and reads the node's sequences of
// pairs, in one statement.
func nodeMark(ctx context.Context, node *pgx.Conn, shard int, pairs []seqPair) (int64, []int64, error) {
	seq := rand.Int64N(1 << 62)
	names := make([]string, len(pairs))
	for i, p := range pairs {
		names[i] = p.shard
	}
	rows, err := node.Query(ctx, `WITH m AS (INSERT INTO `+nodeMarkers+` (shard, seq, at) VALUES ($1, $2, now()) RETURNING seq)
		SELECT coalesce(pg_sequence_last_value(u.s::regclass), 0) FROM (SELECT count(*) FROM m) AS mm, unnest($3::text[]) WITH ORDINALITY AS u(s, i) ORDER BY u.i`,
		shard, seq, names)
	if err != nil {
		return 0, nil, fmt.Errorf("write the marker on the node: %w", err)
	}
	last, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return 0, nil, fmt.Errorf("write the marker on the node: %w", err)
	}
	return seq, last, nil
}

// setLegacySequences sets each legacy sequence of pairs to last[i] when that
// is higher, and returns the legacy database's WAL position after it.
func setLegacySequences(ctx context.Context, legacy *pgx.Conn, pairs []seqPair, last []int64) (string, error) {
	names := make([]string, len(pairs))
	for i, p := range pairs {
		names[i] = p.legacy
	}
	var lsn string
	if err := legacy.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text FROM (SELECT count(setval(s::regclass, v)) FROM unnest($1::text[], $2::bigint[]) AS u(s, v)
		WHERE v > coalesce(pg_sequence_last_value(s::regclass), 0)) AS x`, names, last).Scan(&lsn); err != nil {
		return "", fmt.Errorf("set the legacy sequences: %w", err)
	}
	return lsn, nil
}

// reverseApplier writes a shard's changes back to the legacy tables and
// tells waiters which of the shard's markers have come through.
type reverseApplier struct {
	shard int
	ta    *stream.TableApplier
	// transform, when set, rewrites the changes before they are applied
	// (a schema per tenant: importer.reverseTransform).
	transform func([]*stream.Txn) error

	mu      sync.Mutex
	seen    map[int64]bool
	wake    chan struct{} // closed and replaced when markers come through
	changes int64
}

// has reports whether marker seq came through, and else a channel closed
// when more do.
func (r *reverseApplier) has(seq int64) (<-chan struct{}, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.wake, r.seen[seq]
}

// Apply implements stream.Applier.
func (r *reverseApplier) Apply(ctx context.Context, txns []*stream.Txn) error {
	var marks []int64
	var n int64
	for _, t := range txns {
		for _, c := range t.Changes {
			if c.Rel == nil || c.Rel.Schema+"."+c.Rel.Table != nodeMarkers {
				n++
				continue
			}
			if c.Kind != stream.Insert {
				continue
			}
			var shard int
			var seq int64
			sv, _ := value(c.New, column(c.Rel, "shard"))
			qv, _ := value(c.New, column(c.Rel, "seq"))
			if _, err := fmt.Sscan(sv, &shard); err != nil || shard != r.shard {
				continue
			}
			if _, err := fmt.Sscan(qv, &seq); err == nil {
				marks = append(marks, seq)
			}
		}
	}
	if r.transform != nil {
		if err := r.transform(txns); err != nil {
			return err
		}
	}
	if err := r.ta.Apply(ctx, txns); err != nil {
		return idCollision(r.shard, err)
	}
	r.mu.Lock()
	r.changes += n
	if len(marks) > 0 {
		for _, m := range marks {
			r.seen[m] = true
		}
		close(r.wake)
		r.wake = make(chan struct{})
	}
	r.mu.Unlock()
	return nil
}

// isUndefinedTable reports a 42P01 (undefined_table) or 3F000
// (invalid_schema_name): an object never created.
func isUndefinedTable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "42P01" || pe.Code == "3F000")
}
