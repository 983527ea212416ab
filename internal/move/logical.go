package move

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// The logical method without CREATE SUBSCRIPTION (which needs a superuser
// on PostgreSQL 15): the mover itself consumes the source's change stream
// (internal/stream) and applies it to the target, as the node role.
//
//	publication  FOR TABLE every table of the shard (the owner may), plus the marker table filtered on the move id
//	subscription a logical slot created on a replication connection, exporting a snapshot
//	copy         every table copied at that snapshot (COPY, several tables at once), the slot's
//	             start recorded on the target (pgtenant_stream.position) when all are in
//	indexes      post-copy schema (unchanged)
//	catchup      the mover streams from the recorded position (see ensureStream) until a marker is applied within MaxLag
//	fence        unchanged: the marker arrives through the stream
//
// A mover killed before the copy is recorded starts the copy over (a new
// slot and snapshot, the target's tables emptied); killed later, it streams
// on from the position recorded on the target, in the same target
// transactions as the changes, so nothing is applied twice or lost.

// copyWorkers is how many tables are copied at once.
const copyWorkers = 4

// liveStream is the move's change stream, run by this process from the catch-up to the flip.
type liveStream struct {
	s       *stream.Stream
	cancel  context.CancelFunc
	done    chan struct{}
	err     error // valid once done is closed
	markers *markerApplier
}

// markerApplier applies the stream to the target and notes the highest
// marker of the move it applied, so that the fence learns that its marker
// is on the target (Apply returns once a batch is durable there) without
// polling the target for it.
type markerApplier struct {
	inner  stream.Applier
	moveID int64
	mu     sync.Mutex
	seq    int64         // the highest marker seq of the move applied
	wake   chan struct{} // signalled (capacity 1) when seq grows
}

// Apply applies txns, then notes the move's markers among them.
func (a *markerApplier) Apply(ctx context.Context, txns []*stream.Txn) error {
	if err := a.inner.Apply(ctx, txns); err != nil {
		return err
	}
	var seq int64
	for _, t := range txns {
		for _, c := range t.Changes {
			if c.Kind != stream.Insert || c.Rel == nil || c.Rel.Schema != markerSchema || c.Rel.Table != "marker" {
				continue
			}
			var id, n int64
			for i, col := range c.Rel.Columns {
				if i >= len(c.New) || c.New[i].Null {
					continue
				}
				switch col.Name {
				case "move_id":
					id, _ = strconv.ParseInt(string(c.New[i].Data), 10, 64)
				case "seq":
					n, _ = strconv.ParseInt(string(c.New[i].Data), 10, 64)
				}
			}
			if id == a.moveID {
				seq = max(seq, n)
			}
		}
	}
	if seq > 0 {
		a.mu.Lock()
		a.seq = max(a.seq, seq)
		a.mu.Unlock()
		select {
		case a.wake <- struct{}{}:
		default:
		}
	}
	return nil
}

// applied reports whether marker seq of the move has been applied.
func (a *markerApplier) applied(seq int64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.seq >= seq
}

// streamErr returns the stream's error once it has stopped, nil while it runs.
func (mv *moveRun) streamErr() error {
	if mv.stream == nil {
		return nil
	}
	select {
	case <-mv.stream.done:
		if mv.stream.err == nil || errors.Is(mv.stream.err, context.Canceled) {
			return errors.New("replication to the target stopped")
		}
		return fmt.Errorf("replication to the target failed: %w", mv.stream.err)
	default:
		return nil
	}
}

// stopStream stops the move's stream, if this process runs one.
func stopStream(mv *moveRun) {
	if mv.stream == nil {
		return
	}
	mv.stream.cancel()
	<-mv.stream.done
	mv.stream = nil
}

func (m *Mover) stepPublication(ctx context.Context, mv *moveRun) error {
	src, dst, err := m.conns(ctx, mv)
	if err != nil {
		return err
	}
	if err := ensureMarker(ctx, src); err != nil {
		return fmt.Errorf("source: %w", err)
	}
	if err := ensureMarker(ctx, dst); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	var exists bool
	if err := src.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)`, repName(mv)).Scan(&exists); err != nil {
		return fmt.Errorf("check publication: %w", err)
	}
	if exists {
		return nil
	}
	names, err := tables(ctx, src, mv.Schema)
	if err != nil {
		return err
	}
	// Tables by name, not FOR TABLES IN SCHEMA: that needs a superuser, this the tables' owner.
	list := make([]string, 0, len(names)+1)
	for _, n := range names {
		list = append(list, ident(mv.Schema, n))
	}
	list = append(list, fmt.Sprintf(`%s WHERE (move_id = %d)`, ident(markerSchema, "marker"), mv.ID))
	if _, err := src.Exec(ctx, `CREATE PUBLICATION `+ident(repName(mv))+` FOR TABLE `+strings.Join(list, ", ")); err != nil {
		return fmt.Errorf("create publication: %w", err)
	}
	return nil
}

// copyRecorded reports whether the initial copy finished (its position is on the target).
func copyRecorded(ctx context.Context, dst *pgx.Conn, mv *moveRun) (bool, error) {
	_, ok, err := stream.LoadPosition(ctx, dst, repName(mv))
	if err != nil {
		return false, fmt.Errorf("read the target's stream position: %w", err)
	}
	return ok, nil
}

// stepSlot creates the move's slot and keeps its exported snapshot for the copy.
func (m *Mover) stepSlot(ctx context.Context, mv *moveRun) error {
	src, dst, err := m.conns(ctx, mv)
	if err != nil {
		return err
	}
	if err := stream.EnsurePositionTable(ctx, dst); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	if done, err := copyRecorded(ctx, dst, mv); err != nil || done {
		return err
	}
	return m.createSlot(ctx, mv, src)
}

// createSlot (re)creates the move's slot; a slot left by an interrupted attempt is dropped first.
func (m *Mover) createSlot(ctx context.Context, mv *moveRun, src *pgx.Conn) error {
	if mv.slot != nil {
		mv.slot.Close(ctx)
		mv.slot = nil
	}
	if err := dropSlots(ctx, src, mv); err != nil {
		return err
	}
	sctx, cancel := context.WithTimeout(ctx, m.cfg.SlotTimeout)
	slot, err := stream.CreateSlot(sctx, mv.SourceDSN, repName(mv))
	cancel()
	if err != nil {
		if ctx.Err() == nil && errors.Is(sctx.Err(), context.DeadlineExceeded) {
			return fmt.Errorf("create replication slot: it waited %s for transactions open on the source server (%s): %w",
				m.cfg.SlotTimeout, openTransactions(ctx, src), err)
		}
		return fmt.Errorf("create replication slot (the node role needs REPLICATION): %w", err)
	}
	mv.slot = slot
	return nil
}

// stepCopy copies every table at the slot's snapshot and records the slot's
// start on the target. Without the snapshot (the process that created the
// slot died) it creates a new slot first.
func (m *Mover) stepCopy(ctx context.Context, mv *moveRun) error {
	src, dst, err := m.conns(ctx, mv)
	if err != nil {
		return err
	}
	if done, err := copyRecorded(ctx, dst, mv); err != nil || done {
		return err
	}
	if mv.slot == nil {
		if err := m.createSlot(ctx, mv, src); err != nil {
			return err
		}
	}
	defer func() {
		mv.slot.Close(context.WithoutCancel(ctx))
		mv.slot = nil
	}()
	names, err := plainTables(ctx, src, mv.Schema)
	if err != nil {
		return err
	}
	quoted := make([]string, len(names))
	for i, n := range names {
		quoted[i] = ident(mv.Schema, n)
	}
	if len(names) > 0 {
		// A copy interrupted earlier left rows behind.
		if _, err := dst.Exec(ctx, `TRUNCATE `+strings.Join(quoted, ", ")); err != nil {
			return fmt.Errorf("empty target tables: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.CatchUpTimeout)
	defer cancel()
	mv.Progress.Tables, mv.Progress.TablesReady, mv.Progress.Rows = len(names), 0, 0
	if err := m.copyAtSnapshot(ctx, mv, quoted, mv.slot.Snapshot); err != nil {
		return err
	}
	if err := stream.SavePosition(ctx, dst, repName(mv), mv.slot.ConsistentLSN); err != nil {
		return fmt.Errorf("target: %w", err)
	}
	_ = dst.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'`, mv.Schema).Scan(&mv.Progress.Bytes)
	m.log.Info("initial copy done", "move", mv.ID, "shard", mv.Shard, "tables", len(names), "rows", mv.Progress.Rows, "lsn", mv.slot.ConsistentLSN)
	return m.saveProgress(ctx, mv)
}

// plainTables lists the schema's ordinary tables (a partitioned table's rows are copied with its partitions).
func plainTables(ctx context.Context, conn *pgx.Conn, schema string) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY pg_relation_size(c.oid) DESC, c.relname`, schema)
	if err != nil {
		return nil, fmt.Errorf("list tables: %w", err)
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// copyAtSnapshot copies tables (quoted names) from the source to the target
// with up to copyWorkers connection pairs, each reading in a transaction
// that imported snapshot.
func (m *Mover) copyAtSnapshot(ctx context.Context, mv *moveRun, tables []string, snapshot string) error {
	work := make(chan string, len(tables))
	for _, t := range tables {
		work <- t
	}
	close(work)
	var mu sync.Mutex
	g, gctx := errgroup.WithContext(ctx)
	for i := 0; i < min(connPairs(mv, copyWorkers), len(tables)); i++ {
		g.Go(func() error {
			src, err := connectWith(gctx, mv.SourceDSN, "source node "+mv.Source, "", m.bulkSettings())
			if err != nil {
				return err
			}
			defer src.Close(context.WithoutCancel(gctx))
			dst, err := connectWith(gctx, mv.TargetDSN, "target node "+mv.Target, "", m.bulkSettings())
			if err != nil {
				return err
			}
			defer dst.Close(context.WithoutCancel(gctx))
			tx, err := src.BeginTx(gctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
			if err != nil {
				return fmt.Errorf("copy: %w", err)
			}
			defer tx.Rollback(context.WithoutCancel(gctx))
			if _, err := tx.Exec(gctx, `SET TRANSACTION SNAPSHOT `+quoteLiteral(snapshot)); err != nil {
				return fmt.Errorf("copy: import the slot's snapshot: %w", err)
			}
			for t := range work {
				var rows int64
				var err error
				if m.cfg.CopyWithoutFreeze {
					rows, err = copyTable(gctx, tx.Conn(), dst, t, false)
				} else {
					rows, err = copyFrozen(gctx, tx.Conn(), dst, t)
				}
				if err != nil {
					return fmt.Errorf("copy %s: %w", t, err)
				}
				mu.Lock()
				mv.Progress.Rows += rows
				mv.Progress.TablesReady++
				err = m.saveProgress(gctx, mv)
				mu.Unlock()
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// copyFrozen empties table (quoted) on the target and copies it from src
// with COPY … FREEZE, in one target transaction (FREEZE needs the table
// emptied in the same transaction): the rows arrive frozen, the pages
// all-visible, so no later read writes them again to set hint bits. The
// target's table is nobody's yet (the routers send the shard's queries to
// the source), so the TRUNCATE's lock waits for no one.
func copyFrozen(ctx context.Context, src, dst *pgx.Conn, table string) (int64, error) {
	var rows int64
	err := pgx.BeginFunc(ctx, dst, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `TRUNCATE `+table); err != nil {
			return fmt.Errorf("empty target table: %w", err)
		}
		var err error
		rows, err = copyTable(ctx, src, tx.Conn(), table, true)
		return err
	})
	return rows, err
}

// DefaultCopyFlushAfter is Config.CopyFlushAfter's default, in kB (as
// PostgreSQL's own checkpoint_flush_after on Linux).
const DefaultCopyFlushAfter = 256

// bulkSettings are the session settings of the connections that read or
// write a whole shard (the initial copy, the comparison): see
// Config.CopyFlushAfter.
func (m *Mover) bulkSettings() map[string]string {
	if m.cfg.CopyFlushAfter < 0 {
		return nil
	}
	return map[string]string{"backend_flush_after": strconv.Itoa(m.cfg.CopyFlushAfter) + "kB"}
}

// ensureStream starts the move's change stream unless this process runs it
// already. The target's triggers that would fire on applied changes are
// disabled first (the native apply worker's session_replication_role needs
// a superuser); the fence enables them again before the flip.
func (m *Mover) ensureStream(ctx context.Context, mv *moveRun) error {
	if mv.stream != nil {
		return mv.streamErr()
	}
	dst, err := m.target(ctx, mv)
	if err != nil {
		return err
	}
	if err := m.quietTriggers(ctx, mv, dst); err != nil {
		return err
	}
	start, ok, err := stream.LoadPosition(ctx, dst, repName(mv))
	if err != nil {
		return fmt.Errorf("read the target's stream position: %w", err)
	}
	if !ok {
		return fmt.Errorf("the initial copy of move %d is not recorded on the target; abort the move and start it again", mv.ID)
	}
	conn, err := connect(ctx, mv.TargetDSN, "target node "+mv.Target)
	if err != nil {
		return err
	}
	schema := mv.Schema
	applier := &stream.TableApplier{Conn: conn, Name: repName(mv), Target: func(rel *stream.Relation) (string, string, bool) {
		return rel.Schema, rel.Table, rel.Schema == schema || (rel.Schema == markerSchema && rel.Table == "marker")
	}}
	markers := &markerApplier{inner: applier, moveID: mv.ID, wake: make(chan struct{}, 1)}
	s := stream.New(stream.Config{DSN: mv.SourceDSN, Slot: repName(mv), Publications: []string{repName(mv)}, Start: start,
		Applier: markers, Logger: m.log.With("move", mv.ID, "shard", mv.Shard)})
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx)) // outlives the step; closeConns stops it
	ls := &liveStream{s: s, cancel: cancel, done: make(chan struct{}), markers: markers}
	go func() {
		defer close(ls.done)
		ls.err = s.Run(sctx)
		conn.Close(context.Background())
	}()
	mv.stream = ls
	return nil
}

// quietTriggers disables the target's enabled triggers of the shard (those
// that fire for ordinary sessions, tgenabled 'O'), recording them first so
// that the fence (enableTriggers) or a resumed move can enable them again.
func (m *Mover) quietTriggers(ctx context.Context, mv *moveRun, dst *pgx.Conn) error {
	rows, err := dst.Query(ctx, `SELECT c.relname::text, t.tgname::text FROM pg_trigger t
		JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND NOT t.tgisinternal AND t.tgenabled = 'O' ORDER BY 1, 2`, mv.Schema)
	if err != nil {
		return fmt.Errorf("list target triggers: %w", err)
	}
	found, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Trigger, error) {
		var t Trigger
		err := r.Scan(&t.Table, &t.Name)
		return t, err
	})
	if err != nil {
		return fmt.Errorf("list target triggers: %w", err)
	}
	if len(found) == 0 {
		return nil
	}
	known := make(map[Trigger]bool)
	for _, t := range mv.Progress.Triggers {
		known[t] = true
	}
	for _, t := range found {
		if !known[t] {
			mv.Progress.Triggers = append(mv.Progress.Triggers, t)
		}
	}
	if err := m.saveProgress(ctx, mv); err != nil {
		return err
	}
	for _, t := range found {
		if _, err := dst.Exec(ctx, `ALTER TABLE `+ident(mv.Schema, t.Table)+` DISABLE TRIGGER `+ident(t.Name)); err != nil {
			return fmt.Errorf("disable trigger %s on %s while streaming: %w", t.Name, t.Table, err)
		}
	}
	return nil
}

// enableTriggers enables the triggers quietTriggers disabled (under the fence, before the flip).
func enableTriggers(ctx context.Context, dst *pgx.Conn, mv *moveRun) error {
	for _, t := range mv.Progress.Triggers {
		if _, err := dst.Exec(ctx, `ALTER TABLE `+ident(mv.Schema, t.Table)+` ENABLE TRIGGER `+ident(t.Name)); err != nil {
			return fmt.Errorf("enable trigger %s on %s: %w", t.Name, t.Table, err)
		}
	}
	return nil
}

// checkMovePrivileges fails before a logical move starts when the source's
// role could not publish the shard's tables or stream them.
func checkMovePrivileges(ctx context.Context, src *pgx.Conn, node, schema string) error {
	var super, repl bool
	var user string
	if err := src.QueryRow(ctx, `SELECT current_user::text, r.rolsuper, r.rolreplication
		OR EXISTS (SELECT 1 FROM pg_roles g WHERE g.rolname = 'rds_replication' AND pg_has_role(r.oid, g.oid, 'MEMBER'))
		FROM pg_roles r WHERE r.rolname = current_user`).Scan(&user, &super, &repl); err != nil {
		return fmt.Errorf("read the source role's privileges: %w", err)
	}
	if super {
		return nil
	}
	if !repl {
		return fmt.Errorf("source node %q: role %q may not stream changes; run ALTER ROLE %s REPLICATION as a superuser (on RDS/Aurora: GRANT rds_replication TO %s), or use --method copy",
			node, user, ident(user), ident(user))
	}
	rows, err := src.Query(ctx, `SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE (n.nspname = $1 OR (n.nspname = 'pgtenant_move' AND c.relname = 'marker'))
		  AND c.relkind IN ('r', 'p') AND NOT pg_has_role(c.relowner, 'USAGE') ORDER BY 1`, schema)
	if err != nil {
		return fmt.Errorf("check table owners: %w", err)
	}
	notOwned, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("check table owners: %w", err)
	}
	if len(notOwned) > 0 {
		return fmt.Errorf("source node %q: role %q does not own %d table(s) (%s) and cannot publish them; run ALTER TABLE %s OWNER TO %s for each",
			node, user, len(notOwned), strings.Join(notOwned, ", "), notOwned[0], ident(user))
	}
	return nil
}

// subOID returns the oid of the move's subscription on the target, 0 if
// there is none (moves started before the mover streamed itself used
// CREATE SUBSCRIPTION; cleanup and abort still drop theirs).
func subOID(ctx context.Context, dst *pgx.Conn, name string) (uint32, error) {
	var oid uint32
	err := dst.QueryRow(ctx, `SELECT oid FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())`, name).Scan(&oid)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return oid, err
}
