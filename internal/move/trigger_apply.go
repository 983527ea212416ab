package move

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// applyBatch is how many queue entries one target transaction applies.
const applyBatch = 1000

// The queue is applied in rounds. pgtenant_move.applied on the target holds,
// per move: prev_snapshot P (every transaction visible in P is applied; the
// copy's snapshot at first), and while a round is under way cur_snapshot N and
// last_id (the entries of transactions visible in N but not in P with an id up
// to last_id are applied). A round takes N = pg_current_snapshot() on the
// source and applies the entries of the transactions visible in N and not in
// P, in id order, in batches; the last batch sets P = N. Entries of
// transactions not visible in P have xid >= xmin(P) (the xid index finds
// where the round starts); entries of transactions still running at N wait for
// a later round, whatever their id.

// queueEntry is one row of a move's change queue.
type queueEntry struct {
	id       int64
	table    string
	op       string
	old, new *string
}

// applier applies a move's queue to the target.
type applier struct {
	mv       *moveRun
	src, dst *pgx.Conn
	tables   map[string]keyedTable
	batch    int
}

func (m *Mover) newApplier(ctx context.Context, mv *moveRun, src, dst *pgx.Conn) (*applier, error) {
	list, bad, err := triggerTables(ctx, src, mv.Schema)
	if err != nil {
		return nil, err
	}
	if len(bad) > 0 {
		return nil, &TriggerTablesError{Schema: mv.Schema, Tables: bad}
	}
	// A table created in the shard after the capture step has no trigger: its
	// changes would be lost. (Verification under the fence would see it too,
	// but not with SkipVerify.)
	var uncaptured []string
	if err := src.QueryRow(ctx, `SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{}')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind = 'r' AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND t.tgname = $2)`,
		mv.Schema, captureTrigger).Scan(&uncaptured); err != nil {
		return nil, fmt.Errorf("check the capture triggers: %w", err)
	}
	if len(uncaptured) > 0 {
		return nil, fmt.Errorf("table(s) %s of schema %s were created during the move, so their changes were not captured: move the shard again (schema changes go before or after a move)",
			strings.Join(uncaptured, ", "), mv.Schema)
	}
	a := &applier{mv: mv, src: src, dst: dst, tables: map[string]keyedTable{}, batch: applyBatch}
	for _, t := range list {
		a.tables[t.name] = t
	}
	return a, nil
}

// applyState is the move's row of pgtenant_move.applied.
type applyState struct {
	prev, cur string // cur is empty between rounds
	last      int64
	applied   int64
}

func (a *applier) state(ctx context.Context) (applyState, error) {
	var s applyState
	var cur *string
	err := a.dst.QueryRow(ctx, `SELECT prev_snapshot::text, cur_snapshot::text, last_id, applied FROM pgtenant_move.applied WHERE move_id = $1`,
		a.mv.ID).Scan(&s.prev, &cur, &s.last, &s.applied)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, fmt.Errorf("the target has no record of the initial copy of move %d", a.mv.ID)
	}
	if err != nil {
		return s, fmt.Errorf("read the applied position: %w", err)
	}
	if cur != nil {
		s.cur = *cur
	}
	return s, nil
}

// step applies one batch of the current round, starting a round if none is
// under way. It reports whether the round is complete and how many entries it
// applied.
func (a *applier) step(ctx context.Context) (done bool, n int, err error) {
	s, err := a.state(ctx)
	if err != nil {
		return false, 0, err
	}
	q := ident(captureSchema(a.mv), "changes")
	if s.cur == "" {
		if err := a.src.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&s.cur); err != nil {
			return false, 0, fmt.Errorf("source: take a snapshot: %w", err)
		}
		var lo *int64
		if err := a.src.QueryRow(ctx, `SELECT min(id) FROM `+q+` WHERE xid >= pg_snapshot_xmin($1::text::pg_snapshot)
			AND pg_visible_in_snapshot(xid, $2::text::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)`,
			s.prev, s.cur).Scan(&lo); err != nil {
			return false, 0, fmt.Errorf("source: read the change queue: %w", err)
		}
		if lo == nil { // nothing committed since P
			_, err := a.dst.Exec(ctx, `UPDATE pgtenant_move.applied SET prev_snapshot = $2::text::pg_snapshot, cur_snapshot = NULL, last_id = 0,
				at = clock_timestamp() WHERE move_id = $1`, a.mv.ID, s.cur)
			if err != nil {
				return false, 0, fmt.Errorf("record the applied position: %w", err)
			}
			return true, 0, nil
		}
		s.last = *lo - 1
	}
	rows, err := a.src.Query(ctx, `SELECT id, tbl, op::text, old, new FROM `+q+` WHERE id > $3
		AND xid >= pg_snapshot_xmin($1::text::pg_snapshot)
		AND pg_visible_in_snapshot(xid, $2::text::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::text::pg_snapshot)
		ORDER BY id LIMIT $4`, s.prev, s.cur, s.last, a.batch)
	if err != nil {
		return false, 0, fmt.Errorf("source: read the change queue: %w", err)
	}
	entries, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (queueEntry, error) {
		var e queueEntry
		err := r.Scan(&e.id, &e.table, &e.op, &e.old, &e.new)
		return e, err
	})
	if err != nil {
		return false, 0, fmt.Errorf("source: read the change queue: %w", err)
	}
	done = len(entries) < a.batch
	err = pgx.BeginFunc(ctx, a.dst, func(tx pgx.Tx) error {
		if err := a.apply(ctx, tx, entries); err != nil {
			return err
		}
		last := s.last
		if len(entries) > 0 {
			last = entries[len(entries)-1].id
		}
		var err error
		if done {
			_, err = tx.Exec(ctx, `UPDATE pgtenant_move.applied SET prev_snapshot = $2::text::pg_snapshot, cur_snapshot = NULL, last_id = 0,
				applied = applied + $3, at = clock_timestamp() WHERE move_id = $1`, a.mv.ID, s.cur, len(entries))
		} else {
			_, err = tx.Exec(ctx, `UPDATE pgtenant_move.applied SET cur_snapshot = $2::text::pg_snapshot, last_id = $3,
				applied = applied + $4, at = clock_timestamp() WHERE move_id = $1`, a.mv.ID, s.cur, last, len(entries))
		}
		if err != nil {
			return fmt.Errorf("record the applied position: %w", err)
		}
		return nil
	})
	if err != nil {
		return false, 0, err
	}
	a.mv.Progress.Applied = s.applied + int64(len(entries))
	return done, len(entries), nil
}

// round applies batches until a round is complete: the one under way, or a
// new one. It returns the entries applied.
func (a *applier) round(ctx context.Context) (n int, err error) {
	for {
		done, k, err := a.step(ctx)
		n += k
		if err != nil {
			return n, err
		}
		if done {
			return n, nil
		}
	}
}

// apply applies entries, in order, in tx.
func (a *applier) apply(ctx context.Context, tx pgx.Tx, entries []queueEntry) error {
	if len(entries) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	for _, e := range entries {
		t, ok := a.tables[e.table]
		if !ok {
			return fmt.Errorf("change %d is for table %s, not in the shard when the move started: apply migrations after the move", e.id, e.table)
		}
		switch {
		case e.op == "D" && e.old != nil:
			b.Queue(deleteSQL(a.mv.Schema, t), *e.old)
		case (e.op == "I" || e.op == "U") && e.new != nil:
			if e.old != nil { // the primary key changed
				b.Queue(deleteSQL(a.mv.Schema, t), *e.old)
			}
			b.Queue(upsertSQL(a.mv.Schema, t), *e.new)
		default:
			return fmt.Errorf("change %d: malformed queue entry (op %q)", e.id, e.op)
		}
	}
	br := tx.SendBatch(ctx, b)
	for i := 0; i < b.Len(); i++ {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return fmt.Errorf("apply changes %d..%d to the target: %w", entries[0].id, entries[len(entries)-1].id, err)
		}
	}
	return br.Close()
}

// rowOf is the row image $1 (the row's text form) read as the table's row type.
func rowOf(schema, table string) string { return `($1::text::` + ident(schema, table) + `)` }

// upsertSQL inserts the row image $1, or updates the row with its key. The
// image is parsed once (OFFSET 0 keeps the subquery from being flattened into
// one parse per column).
func upsertSQL(schema string, t keyedTable) string {
	r := "(x.r)"
	cols, vals, sets := make([]string, len(t.cols)), make([]string, len(t.cols)), []string{}
	isKey := map[string]bool{}
	for _, k := range t.key {
		isKey[k] = true
	}
	for i, c := range t.cols {
		cols[i], vals[i] = ident(c), r+"."+ident(c)
		if !isKey[c] {
			sets = append(sets, ident(c)+" = excluded."+ident(c))
		}
	}
	keys := make([]string, len(t.key))
	for i, k := range t.key {
		keys[i] = ident(k)
	}
	action := "DO NOTHING"
	if len(sets) > 0 {
		action = "DO UPDATE SET " + strings.Join(sets, ", ")
	}
	return fmt.Sprintf(`INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM (SELECT %s AS r OFFSET 0) x ON CONFLICT (%s) %s`,
		ident(schema, t.name), strings.Join(cols, ", "), strings.Join(vals, ", "), rowOf(schema, t.name), strings.Join(keys, ", "), action)
}

// deleteSQL deletes the row with the key of the row image $1.
func deleteSQL(schema string, t keyedTable) string {
	r := rowOf(schema, t.name)
	conds := make([]string, len(t.key))
	for i, k := range t.key {
		conds[i] = ident(k) + " = " + r + "." + ident(k)
	}
	return fmt.Sprintf(`DELETE FROM %s WHERE %s`, ident(schema, t.name), strings.Join(conds, " AND "))
}

// stepTriggerCatchUp applies the queue in rounds until a whole round, from
// its snapshot to its last entry, takes at most MaxLag: the fence's drain is
// then about as short.
func (m *Mover) stepTriggerCatchUp(ctx context.Context, mv *moveRun) error {
	m.announceTarget(ctx, mv) // the routers warm the target while it catches up
	src, dst, err := m.conns(ctx, mv)
	if err != nil {
		return err
	}
	if err := setTargetTriggers(ctx, src, dst, mv.Schema, false); err != nil {
		return err
	}
	a, err := m.newApplier(ctx, mv, src, dst)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.CatchUpTimeout)
	defer cancel()
	// Statistics for the queue, so its reads are index scans from where the
	// round starts, never a scan of the whole queue (again before the fence).
	analyze := func() error {
		if _, err := src.Exec(ctx, `ANALYZE `+ident(captureSchema(mv), "changes")); err != nil {
			return fmt.Errorf("source: analyze the change queue: %w", err)
		}
		return nil
	}
	if err := analyze(); err != nil {
		return err
	}
	// A round left half done by a mover that died is finished first; it is not timed.
	if s, err := a.state(ctx); err != nil {
		return err
	} else if s.cur != "" {
		if _, err := a.round(ctx); err != nil {
			return err
		}
	}
	lastSave := time.Time{}
	for {
		t0 := time.Now()
		n, err := a.round(ctx)
		if err != nil {
			return err
		}
		lag := time.Since(t0)
		mv.Progress.LagMS = float64(lag.Microseconds()) / 1000
		caught := lag <= m.cfg.MaxLag
		if caught || time.Since(lastSave) > time.Second {
			if err := m.saveProgress(ctx, mv); err != nil {
				return err
			}
			lastSave = time.Now()
		}
		if caught {
			m.log.Info("caught up", "move", mv.ID, "shard", mv.Shard, "round", lag, "applied", mv.Progress.Applied)
			return analyze()
		}
		m.log.Info("catching up", "move", mv.ID, "shard", mv.Shard, "round", lag, "changes", n, "applied", mv.Progress.Applied)
	}
}

// drainQueue runs under the fence, after the source's tables were locked and
// guarded: every transaction that wrote to the shard has ended, and none can
// write again, so a round up to a snapshot taken now applies everything. Then
// the target's triggers are set as on the source.
func (m *Mover) drainQueue(ctx context.Context, mv *moveRun, src, dst *pgx.Conn) error {
	a, err := m.newApplier(ctx, mv, src, dst)
	if err != nil {
		return err
	}
	s, err := a.state(ctx)
	if err != nil {
		return err
	}
	n := 0
	if s.cur != "" { // the round under way started before the fence
		if n, err = a.round(ctx); err != nil {
			return fmt.Errorf("drain the change queue: %w", err)
		}
	}
	k, err := a.round(ctx)
	if err != nil {
		return fmt.Errorf("drain the change queue: %w", err)
	}
	m.log.Info("drained the change queue", "move", mv.ID, "shard", mv.Shard, "changes", n+k)
	return setTargetTriggers(ctx, src, dst, mv.Schema, true)
}
