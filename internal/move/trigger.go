package move

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// MethodTrigger moves a shard online without logical replication (for hosts
// that offer none, or no REPLICATION privilege): row triggers on the source
// capture every change into a queue, the rows are copied at a snapshot taken
// after the triggers exist, the queue is applied to the target, then the
// usual fence, drain, sequences and flip. The node role needs to own the
// shard's tables (to create triggers) and to create schemas in its database;
// no superuser, no REPLICATION, any wal_level.
const MethodTrigger Method = "trigger"

// StepCapture is the step of a trigger-method move that creates the change
// queue and the capture triggers on the source.
const StepCapture Step = "capture"

// The steps of a trigger-method move:
//
//	start     pre-checks (every table has a primary key; the node role may create triggers and schemas)
//	schema    the pre-copy part of the schema restored on the target (as for logical)
//	capture   on the source, in one transaction: schema pgtenant_capture_<move> with the
//	          queue table "changes" and one capture function per table, and on every table of
//	          the shard an AFTER INSERT/UPDATE/DELETE row trigger writing to the queue and a
//	          BEFORE TRUNCATE trigger refusing TRUNCATE (55000) while the move runs
//	copy      one REPEATABLE READ transaction on the source (its snapshot S0 recorded) streams
//	          every table with binary COPY into one target transaction that also records S0
//	          in pgtenant_move.applied on the target
//	indexes   post-copy schema (indexes, FKs, triggers) restored on the target; user triggers
//	          there are disabled while changes are applied (they fired on the source already)
//	catchup   the queue is applied in rounds until a round takes less than MaxLag
//	fence     as for logical, but the drain applies the queue up to a snapshot taken after the
//	          source's tables were locked and guarded, instead of waiting for a marker row;
//	          then the target's triggers are enabled as on the source, verification, sequences, flip
//	cleanup   the capture schema is dropped (with its functions, CASCADE drops the triggers),
//	          the applied row on the target deleted, the source schema retired
//
// Why nothing is lost or applied twice (see trigger_apply.go for the rounds):
//
//   - Every write not in the copy is captured. The capture transaction takes
//     SHARE ROW EXCLUSIVE on every table (CREATE TRIGGER), which waits for every
//     transaction that has written to them. So a transaction with an uncaptured
//     write committed before the triggers did, hence before S0 was taken, and
//     its writes are in the copy. A transaction that writes after the triggers
//     commit fires them (it opens the table after the commit).
//   - Nothing in the copy is applied again: a queue entry is applied only if
//     its transaction (xid8 from pg_current_xact_id()) is not visible in S0.
//     Entries of transactions visible in S0 are in the copy already.
//   - Order: entries are applied in rounds; a round is the transactions visible
//     in a new source snapshot N and not in the previous one P, applied in queue
//     id order. Two changes of one row by different transactions come in
//     commit order: the second writer waited for the first one's row lock (or
//     its unique-index entry) until it committed, and the id is taken by the
//     trigger while the lock is held. If the later one is visible in N so is
//     the earlier one, so the earlier is never in a later round; within a
//     round, ids follow commit order for each row. (Plain id order would not
//     do: a sequence number is not commit order, and a transaction still open
//     may commit an entry with an id below one already applied.)
//   - Every entry carries the whole row (NEW::text, read back with the table's
//     row type), so applying it is "set the row to this image": upsert by
//     primary key for inserts and updates (a row the copy lacks is inserted),
//     delete by key (a row already gone is no-op), and a primary key change is
//     a delete of the old key then an upsert.
//   - Each batch is applied in one target transaction that also records how far
//     it got (the round's snapshots and the last id applied), so a mover killed
//     at any point resumes where the target's last commit left it.
//   - At the fence the source's tables are locked (every writer finished) and
//     guarded (no new writer), so one more round up to a snapshot taken then
//     applies everything that was ever committed.

// captureTrigger and truncateTrigger name the triggers a trigger-method move
// puts on the shard's tables. The uppercase P sorts before the
// RI_ConstraintTrigger_* of foreign keys, so a change is queued before the
// cascaded changes it causes (the target's own cascade then does the same).
const (
	captureTrigger  = "PGTENANT_capture"
	truncateTrigger = "PGTENANT_capture_truncate"
)

// captureSchema is the source schema holding a move's queue and capture functions.
func captureSchema(mv *moveRun) string { return fmt.Sprintf("pgtenant_capture_%d", mv.ID) }

// appliedDDL is the target table recording how far each move's queue was applied.
const appliedDDL = `CREATE TABLE IF NOT EXISTS pgtenant_move.applied (move_id bigint PRIMARY KEY,
  prev_snapshot pg_snapshot NOT NULL, cur_snapshot pg_snapshot, last_id bigint NOT NULL DEFAULT 0,
  applied bigint NOT NULL DEFAULT 0, at timestamptz NOT NULL DEFAULT clock_timestamp())`

// TriggerTablesError lists every table of the shard that --method trigger
// cannot move (no primary key). Reported before the move starts.
type TriggerTablesError struct {
	Schema string
	Tables []BadTable
}

// Error lists the tables and what to do about them.
func (e *TriggerTablesError) Error() string {
	s := fmt.Sprintf("%d table(s) in schema %s cannot be moved with --method trigger:", len(e.Tables), e.Schema)
	for _, t := range e.Tables {
		s += fmt.Sprintf(" %s (%s);", t.Name, t.Reason)
	}
	return s + " add a primary key, or use --method copy"
}

// keyedTable is a table of the shard with its primary key and insertable columns.
type keyedTable struct {
	name string
	key  []string // primary key columns, in index order
	cols []string // every column but generated and dropped ones, in order
}

// triggerTables lists the shard's ordinary tables (partitions included,
// partitioned parents not: their rows live in the partitions) with their keys.
func triggerTables(ctx context.Context, conn *pgx.Conn, schema string) ([]keyedTable, []BadTable, error) {
	rows, err := conn.Query(ctx, `SELECT c.relname::text,
		coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i
			CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
			JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
			WHERE i.indrelid = c.oid AND i.indisprimary), '{}'),
		coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a
			WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{}')
		FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.relname`, schema)
	if err != nil {
		return nil, nil, fmt.Errorf("list tables and keys: %w", err)
	}
	all, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (keyedTable, error) {
		var t keyedTable
		err := r.Scan(&t.name, &t.key, &t.cols)
		return t, err
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list tables and keys: %w", err)
	}
	var bad []BadTable
	for _, t := range all {
		if len(t.key) == 0 {
			bad = append(bad, BadTable{Name: t.name, Reason: "no primary key"})
		}
	}
	return all, bad, nil
}

// precheckTrigger verifies what a trigger-method move needs on the source:
// a primary key on every table, TRIGGER on them and CREATE on the database.
func precheckTrigger(ctx context.Context, src *pgx.Conn, mv *moveRun) error {
	_, bad, err := triggerTables(ctx, src, mv.Schema)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return &TriggerTablesError{Schema: mv.Schema, Tables: bad}
	}
	var canCreate bool
	var user string
	var denied []string
	if err := src.QueryRow(ctx, `SELECT has_database_privilege(current_database(), 'CREATE'), current_user::text,
		coalesce((SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relkind = 'r' AND NOT has_table_privilege(c.oid, 'TRIGGER')), '{}')`, mv.Schema).Scan(&canCreate, &user, &denied); err != nil {
		return fmt.Errorf("check privileges: %w", err)
	}
	if !canCreate {
		return fmt.Errorf("role %s may not create schemas in the source node's database (the change queue lives in one): GRANT CREATE ON DATABASE to it, or make it the owner", user)
	}
	if len(denied) > 0 {
		return fmt.Errorf("role %s may not create triggers on %s in schema %s: make it the tables' owner or GRANT TRIGGER", user, strings.Join(denied, ", "), mv.Schema)
	}
	return nil
}

func (m *Mover) runTrigger(ctx context.Context, mv *moveRun, res *Result) error {
	return m.runSteps(ctx, mv, []stepFunc{
		{StepSchema, m.stepSchema},
		{StepCapture, m.stepCapture},
		{StepCopy, m.stepTriggerCopy},
		{StepIndexes, m.stepIndexes},
		{StepCatchUp, m.stepTriggerCatchUp},
		{StepFence, func(ctx context.Context, mv *moveRun) error { return m.stepFence(ctx, mv, res) }},
	})
}

// captureDDL is the queue table and capture functions of a move, and the
// triggers on each table.
func captureDDL(mv *moveRun, tables []keyedTable) string {
	cs := captureSchema(mv)
	q := ident(cs, "changes")
	var b strings.Builder
	fmt.Fprintf(&b, `CREATE SCHEMA %s;
CREATE TABLE %s (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tbl text NOT NULL, op "char" NOT NULL,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(), old text, new text);
CREATE INDEX changes_xid ON %s (xid);
CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  RAISE EXCEPTION 'TRUNCATE of %%.%% is refused while shard move %d copies the shard (method trigger)', TG_TABLE_SCHEMA, TG_TABLE_NAME
    USING ERRCODE = '55000', HINT = 'delete the rows instead, or wait for the move to finish (pgtenant shard moves)';
END $f$;
`, ident(cs), q, q, ident(cs, "refuse_truncate"), mv.ID)
	for i, t := range tables {
		fn := ident(cs, fmt.Sprintf("capture_%d", i))
		oldKey, newKey := make([]string, len(t.key)), make([]string, len(t.key))
		for j, k := range t.key {
			oldKey[j], newKey[j] = "OLD."+ident(k), "NEW."+ident(k)
		}
		name := quoteLiteral(t.name)
		// SECURITY DEFINER: any role writing to the table may queue its
		// changes, nobody may write to the queue directly.
		fmt.Fprintf(&b, `CREATE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO %[2]s (tbl, op, new) VALUES (%[3]s, 'I', NEW::text);
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO %[2]s (tbl, op, old, new) VALUES (%[3]s, 'U', CASE WHEN (%[4]s) IS DISTINCT FROM (%[5]s) THEN OLD::text END, NEW::text);
  ELSE
    INSERT INTO %[2]s (tbl, op, old) VALUES (%[3]s, 'D', OLD::text);
  END IF;
  RETURN NULL;
END $f$;
CREATE OR REPLACE TRIGGER %[6]s AFTER INSERT OR UPDATE OR DELETE ON %[7]s FOR EACH ROW EXECUTE FUNCTION %[1]s();
CREATE OR REPLACE TRIGGER %[8]s BEFORE TRUNCATE ON %[7]s FOR EACH STATEMENT EXECUTE FUNCTION %[9]s();
`, fn, q, name, strings.Join(oldKey, ", "), strings.Join(newKey, ", "), ident(captureTrigger), ident(mv.Schema, t.name),
			ident(truncateTrigger), ident(cs, "refuse_truncate"))
	}
	return b.String()
}

// stepCapture creates the queue and the triggers in one source transaction
// (nothing or everything), retrying while the tables' writers keep the
// trigger locks from being granted within LockTimeout.
func (m *Mover) stepCapture(ctx context.Context, mv *moveRun) error {
	src, err := m.source(ctx, mv)
	if err != nil {
		return err
	}
	if ok, err := schemaExists(ctx, src, captureSchema(mv)); err != nil {
		return fmt.Errorf("check capture schema: %w", err)
	} else if ok {
		return nil
	}
	tables, bad, err := triggerTables(ctx, src, mv.Schema)
	if err != nil {
		return err
	}
	if len(bad) > 0 { // a table was added since the pre-checks
		return &TriggerTablesError{Schema: mv.Schema, Tables: bad}
	}
	if err := m.lockedDDL(ctx, src, mv, captureDDL(mv, tables)); err != nil {
		return fmt.Errorf("create the capture triggers: %w", err)
	}
	m.log.Info("capturing changes", "move", mv.ID, "shard", mv.Shard, "tables", len(tables), "queue", captureSchema(mv)+".changes")
	return nil
}

// ddlLockTimeout bounds each wait for a table lock of the capture DDL. It is
// well below deadlock_timeout (1s by default): the DDL locks the shard's
// tables one after the other while writers hold some and want others (an FK
// check locks the parent), and it must be the DDL that gives up and retries,
// not Postgres' deadlock detector that fails a writer.
const ddlLockTimeout = 100 * time.Millisecond

// lockedDDL runs ddl in one source transaction, retrying (up to a minute)
// when it waits too long for a lock held by the shard's writers. Every tenth
// attempt waits longer than deadlock_timeout: an autovacuum worker on one of
// the tables (a freshly loaded or busy one) is cancelled by Postgres only for
// a waiter that has waited that long, and the DDL, waiting first, is the one
// whose deadlock check runs first should a writer queue up behind it.
func (m *Mover) lockedDDL(ctx context.Context, src *pgx.Conn, mv *moveRun, ddl string) error {
	return m.lockedDDLWait(ctx, src, mv, ddl, true)
}

// lockedDDLWait is lockedDDL; without patient it never waits past
// deadlock_timeout, so a writer queued behind it can never be the one
// Postgres' deadlock check fails (for drops, which cleanup can redo).
func (m *Mover) lockedDDLWait(ctx context.Context, src *pgx.Conn, mv *moveRun, ddl string, patient bool) error {
	deadline := time.Now().Add(time.Minute)
	for attempt := 1; ; attempt++ {
		wait := ddlLockTimeout
		if patient && attempt%10 == 0 {
			wait = 1500 * time.Millisecond
		}
		err := pgx.BeginFunc(ctx, src, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, fmt.Sprintf(`SET LOCAL lock_timeout = '%dms'`, wait.Milliseconds())); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, ddl)
			return err
		})
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || (pgErr.Code != "55P03" && pgErr.Code != "40P01") || time.Now().After(deadline) {
			return err
		}
		if attempt%10 == 0 {
			m.log.Info("capture DDL waits for the shard's writers; retrying", "move", mv.ID, "shard", mv.Shard, "attempt", attempt)
		}
		if err := sleep(ctx, time.Duration(20+rand.IntN(80))*time.Millisecond); err != nil {
			return err
		}
	}
}

// stepTriggerCopy copies every table at one source snapshot (S0) taken after
// the capture triggers exist, into one target transaction that also records
// S0: either the whole copy and its snapshot are on the target, or nothing.
func (m *Mover) stepTriggerCopy(ctx context.Context, mv *moveRun) error {
	src, dst, err := m.conns(ctx, mv)
	if err != nil {
		return err
	}
	if _, err := dst.Exec(ctx, appliedDDL); err != nil {
		return fmt.Errorf("target: create applied table: %w", err)
	}
	var done bool
	if err := dst.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pgtenant_move.applied WHERE move_id = $1)`, mv.ID).Scan(&done); err != nil {
		return fmt.Errorf("read copy state: %w", err)
	}
	if done {
		return nil
	}
	tables, _, err := triggerTables(ctx, src, mv.Schema)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.CatchUpTimeout)
	defer cancel()
	stx, err := src.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return fmt.Errorf("source: begin copy: %w", err)
	}
	defer stx.Rollback(context.WithoutCancel(ctx))
	var snap string
	if err := stx.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snap); err != nil {
		return fmt.Errorf("source: take the copy's snapshot: %w", err)
	}
	dtx, err := dst.Begin(ctx)
	if err != nil {
		return fmt.Errorf("target: begin copy: %w", err)
	}
	defer dtx.Rollback(context.WithoutCancel(ctx))
	quoted := make([]string, len(tables))
	for i, t := range tables {
		quoted[i] = ident(mv.Schema, t.name)
	}
	if len(quoted) > 0 {
		if _, err := dtx.Exec(ctx, `TRUNCATE `+strings.Join(quoted, ", ")); err != nil {
			return fmt.Errorf("empty target tables: %w", err)
		}
	}
	mv.Progress.Rows, mv.Progress.Tables, mv.Progress.TablesReady = 0, len(tables), 0
	for i, t := range tables {
		rows, err := copyTable(ctx, stx.Conn(), dtx.Conn(), quoted[i], false)
		if err != nil {
			return fmt.Errorf("copy %s: %w", t.name, err)
		}
		mv.Progress.Rows += rows
		mv.Progress.TablesReady = i + 1
		if err := m.saveProgress(ctx, mv); err != nil {
			return err
		}
	}
	if _, err := dtx.Exec(ctx, `INSERT INTO pgtenant_move.applied (move_id, prev_snapshot) VALUES ($1, $2::pg_snapshot)`, mv.ID, snap); err != nil {
		return fmt.Errorf("record the copy's snapshot: %w", err)
	}
	if err := dtx.Commit(ctx); err != nil {
		return fmt.Errorf("target: commit copy: %w", err)
	}
	m.log.Info("copied", "move", mv.ID, "shard", mv.Shard, "rows", mv.Progress.Rows, "snapshot", snap)
	return nil
}

// setTargetTriggers disables the user triggers of the shard's tables on the
// target (enable false: while changes are applied, since they fired on the
// source already), or sets each to its state on the source (enable true).
func setTargetTriggers(ctx context.Context, src, dst *pgx.Conn, schema string, enable bool) error {
	const q = `SELECT c.relname::text, t.tgname::text, t.tgenabled::text FROM pg_trigger t
		JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND NOT t.tgisinternal AND t.tgname NOT IN ($2, $3, $4) ORDER BY 1, 2`
	type trig struct{ table, name, state string }
	list := func(conn *pgx.Conn) (map[[2]string]string, error) {
		rows, err := conn.Query(ctx, q, schema, captureTrigger, truncateTrigger, guardTrigger)
		if err != nil {
			return nil, err
		}
		ts, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (trig, error) {
			var t trig
			err := r.Scan(&t.table, &t.name, &t.state)
			return t, err
		})
		out := map[[2]string]string{}
		for _, t := range ts {
			out[[2]string{t.table, t.name}] = t.state
		}
		return out, err
	}
	have, err := list(dst)
	if err != nil {
		return fmt.Errorf("list target triggers: %w", err)
	}
	want := map[[2]string]string{}
	if enable {
		if want, err = list(src); err != nil {
			return fmt.Errorf("list source triggers: %w", err)
		}
	}
	var b strings.Builder
	for k, state := range have {
		w, ok := want[k]
		if !ok {
			w = "D"
		}
		if w == state {
			continue
		}
		verb := map[string]string{"D": "DISABLE TRIGGER", "O": "ENABLE TRIGGER", "R": "ENABLE REPLICA TRIGGER", "A": "ENABLE ALWAYS TRIGGER"}[w]
		if verb == "" {
			continue
		}
		fmt.Fprintf(&b, "ALTER TABLE %s %s %s;\n", ident(schema, k[0]), verb, ident(k[1]))
	}
	if b.Len() == 0 {
		return nil
	}
	if _, err := dst.Exec(ctx, b.String()); err != nil {
		return fmt.Errorf("set target triggers: %w", err)
	}
	return nil
}

// dropCapture drops a move's capture schema on the source: the queue, the
// functions and (CASCADE) the triggers on the shard's tables. Dropping a
// trigger needs a brief ACCESS EXCLUSIVE lock on its table: it retries while
// busy writers keep it from being granted within the lock timeout.
func (m *Mover) dropCapture(ctx context.Context, src *pgx.Conn, mv *moveRun) error {
	cs := captureSchema(mv)
	if ok, err := schemaExists(ctx, src, cs); err != nil {
		return fmt.Errorf("check capture schema: %w", err)
	} else if !ok {
		return nil
	}
	if err := m.lockedDDLWait(ctx, src, mv, `DROP SCHEMA IF EXISTS `+ident(cs)+` CASCADE`, false); err != nil {
		return fmt.Errorf("drop the change queue and capture triggers (%s): %w", cs, err)
	}
	return nil
}

// forgetApplied deletes the move's row of pgtenant_move.applied on the target.
func forgetApplied(ctx context.Context, dst *pgx.Conn, mv *moveRun) error {
	if _, err := dst.Exec(ctx, `DELETE FROM pgtenant_move.applied WHERE move_id = $1`, mv.ID); err != nil && !isUndefined(err) {
		return fmt.Errorf("delete the applied position on the target: %w", err)
	}
	return nil
}
