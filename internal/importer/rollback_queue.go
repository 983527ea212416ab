package importer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/stream"
)

// A rollback without logical replication on the shard's node (a node at
// wal_level=replica, or a role without REPLICATION there). When the cutover
// of an import by trigger cannot create the reverse slot, it installs on
// the node, before the fence, a capture queue like the legacy database's
// (trigger.go): in schema pgtenant_import_rev_<shard> of the node database
// a table changes (id, tbl, op, the writer's transaction id, old and new row
// image) and a cut row, and on each of the shard's tenant tables an AFTER
// row trigger queueing each change. Under the fence, once the marker is on
// the node, the cut row gets the node's snapshot: every transaction of the
// forward stream that wrote the shard is visible in it, none of the app's
// on the node (they run after the flip). import_shards.reverse_slot says
// "trigger:" and the schema; reverse_lsn stays NULL.
//
// Rollback then writes the queue back to the legacy tables in rounds, as
// the importer's trigger follower does the other way: each round reads, in
// a REPEATABLE READ transaction on the node, its snapshot S and the changes
// of transactions visible in S but neither in the last round's snapshot nor
// in the cut, in queue order, and applies them in one legacy transaction
// that also records S (pgtenant_stream.reverse_queue): a rollback killed at
// any point resumes with nothing lost or applied twice. Inserts are plain
// INSERTs (a key the legacy database holds stops the rollback: 23505,
// IDCollisionError), updates and deletes go by the row's key (its old key
// when the update changed it). Rounds run until one takes under maxLag;
// then the fence, a last round at a snapshot taken under it (the fence ended
// every transaction of the shard), the legacy sequences, and the flip of
// rollback.go. The triggers and the queue are dropped after the flip (and by
// import finish).
//
// It needs the node's shard tables to have the legacy tables' columns in
// the same order (a row image is read back with the legacy table's row
// type) and a primary key; a schema per tenant is not supported (its rows
// lose the tenant column on the way back): such a cutover keeps no reverse
// path and the rollback says why.

// reverseQueuePrefix marks in import_shards.reverse_slot a shard whose
// rollback reads a capture queue on its node.
const reverseQueuePrefix = "trigger:"

// reverseQueueTrigger names the capture triggers on the node's shard tables.
const reverseQueueTrigger = "PGTENANT_import_rev_capture"

// reverseQueueSchema is the schema of shard's capture queue on its node.
func reverseQueueSchema(shard int) string { return fmt.Sprintf("pgtenant_import_rev_%d", shard) }

// isReverseQueue reports whether a reverse_slot names a capture queue.
func isReverseQueue(slot string) bool { return strings.HasPrefix(slot, reverseQueuePrefix) }

// prepareReverseQueue installs, when missing, shard s's capture queue and
// triggers on its node (see the comment at the top of rollback_queue.go),
// and returns the reverse_slot value naming it.
func (im *Importer) prepareReverseQueue(ctx context.Context, legacy, node *pgx.Conn, imp *Import, s ShardProgress) (*string, error) {
	if ap, err := im.apartmentOf(ctx); err != nil {
		return nil, err
	} else if ap != nil {
		return nil, errors.New("a rollback by capture triggers on the node does not support a schema per tenant")
	}
	ts, err := im.reverseQueueTables(ctx, legacy, node, imp, s)
	if err != nil {
		return nil, err
	}
	schema := reverseQueueSchema(s.Shard)
	slot := reverseQueuePrefix + schema
	// Installed before (a cutover that failed before its flip): kept, but
	// only with a trigger on every table. A rollback killed after its flip
	// may have dropped some of them and left the queue: the DDL below is
	// idempotent and puts them back.
	var ok bool
	if err := node.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL AND (SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
		WHERE c.relnamespace = $2::text::regnamespace AND t.tgname = $3 AND c.relname::text = ANY ($4::text[])) = cardinality($4::text[])`,
		pgx.Identifier{schema, "cut"}.Sanitize(), pgx.Identifier{s.Schema}.Sanitize(), reverseQueueTrigger, sortedKeys(ts)).Scan(&ok); err != nil {
		return nil, fmt.Errorf("look for the capture queue on node %s: %w", s.Node, err)
	}
	if ok {
		return &slot, nil
	}
	if err := im.mover(0).LockedDDL(ctx, node, reverseQueueDDL(schema, s.Schema, ts), true); err != nil {
		return nil, fmt.Errorf("create the capture queue and triggers on node %s: %w", s.Node, err)
	}
	im.logger.Info("cutover: capturing the shard's changes on its node for import rollback (no logical replication there)", "shard", s.Shard, "node", s.Node, "tables", len(ts))
	return &slot, nil
}

// reverseQueueTables reads the shard's tenant tables on the node and checks
// that each has the legacy table's columns in the same order and a key.
func (im *Importer) reverseQueueTables(ctx context.Context, legacy, node *pgx.Conn, imp *Import, s ShardProgress) (map[string]*trigTable, error) {
	rules, _, err := im.rules(ctx, legacy, imp.LegacySchema)
	if err != nil {
		return nil, err
	}
	onNode, err := trigTables(ctx, node, s.Schema, rules)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", s.Node, err)
	}
	onLegacy, err := trigTables(ctx, legacy, imp.LegacySchema, rules)
	if err != nil {
		return nil, fmt.Errorf("legacy database: %w", err)
	}
	for name, t := range onNode {
		if l := onLegacy[name]; l == nil || !slices.Equal(l.all, t.all) {
			return nil, fmt.Errorf("table %s has other columns (or another order) on node %s than on the legacy database; a row captured on the node is written back with the legacy table's row type", name, s.Node)
		}
	}
	return onNode, nil
}

// reverseQueueDDL is the capture queue in schema and the capture triggers on
// the tables ts of the shard schema shardSchema.
func reverseQueueDDL(schema, shardSchema string, ts map[string]*trigTable) string {
	sc := pgx.Identifier{schema}.Sanitize()
	q := pgx.Identifier{schema, "changes"}.Sanitize()
	var b strings.Builder
	fmt.Fprintf(&b, `CREATE SCHEMA IF NOT EXISTS %[1]s;
CREATE TABLE IF NOT EXISTS %[2]s (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tbl text NOT NULL, op "char" NOT NULL,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(), old text, new text);
CREATE INDEX IF NOT EXISTS changes_xid ON %[2]s (xid);
CREATE TABLE IF NOT EXISTS %[1]s.cut (one bool PRIMARY KEY DEFAULT true CHECK (one), snapshot text);
INSERT INTO %[1]s.cut (snapshot) VALUES (NULL) ON CONFLICT DO NOTHING;
`, sc, q)
	for i, name := range sortedKeys(ts) {
		t := ts[name]
		fn := pgx.Identifier{schema, fmt.Sprintf("capture_%d", i)}.Sanitize()
		watch := t.key
		oldCols, newCols := make([]string, len(watch)), make([]string, len(watch))
		for j, c := range watch {
			oldCols[j], newCols[j] = "OLD."+pgx.Identifier{c}.Sanitize(), "NEW."+pgx.Identifier{c}.Sanitize()
		}
		lit := "'" + strings.ReplaceAll(name, "'", "''") + "'"
		fmt.Fprintf(&b, `CREATE OR REPLACE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  IF TG_OP = 'INSERT' THEN
    INSERT INTO %[2]s (tbl, op, new) VALUES (%[3]s, 'I', NEW::text);
  ELSIF TG_OP = 'UPDATE' THEN
    INSERT INTO %[2]s (tbl, op, old, new) VALUES (%[3]s, 'U', CASE WHEN ROW(%[4]s) IS DISTINCT FROM ROW(%[5]s) THEN OLD::text END, NEW::text);
  ELSE
    INSERT INTO %[2]s (tbl, op, old) VALUES (%[3]s, 'D', OLD::text);
  END IF;
  RETURN NULL;
END $f$;
DROP TRIGGER IF EXISTS %[6]s ON %[7]s;
CREATE TRIGGER %[6]s AFTER INSERT OR UPDATE OR DELETE ON %[7]s FOR EACH ROW EXECUTE FUNCTION %[1]s();
`, fn, q, lit, strings.Join(oldCols, ", "), strings.Join(newCols, ", "), pgx.Identifier{reverseQueueTrigger}.Sanitize(),
			pgx.Identifier{shardSchema, name}.Sanitize())
	}
	return b.String()
}

// markReverseCut records, under the cutover's fence once the marker is on
// the node, the node's snapshot as the capture queue's cut: what the
// rollback writes back starts after it. Nothing for a reverse slot.
func markReverseCut(ctx context.Context, node *pgx.Conn, slot *string) error {
	if slot == nil || !isReverseQueue(*slot) {
		return nil
	}
	schema := strings.TrimPrefix(*slot, reverseQueuePrefix)
	if _, err := node.Exec(ctx, `UPDATE `+pgx.Identifier{schema, "cut"}.Sanitize()+` SET snapshot = pg_current_snapshot()::text`); err != nil {
		return fmt.Errorf("record the capture queue's cut on the node: %w", err)
	}
	return nil
}

// dropQueueTriggers drops shard's capture triggers on its node with the
// move's lock-patient DDL, one table at a time (dropReverse then drops the
// queue).
func (im *Importer) dropQueueTriggers(ctx context.Context, node *pgx.Conn, shardSchema string) error {
	return im.dropTriggers(ctx, node, shardSchema, reverseQueueTrigger)
}

// queueReverser writes a shard's capture queue on its node back to the
// legacy tables, a round at a time.
type queueReverser struct {
	shard        int
	schema       string // the queue's, on the node
	legacySchema string
	node, legacy *pgx.Conn
	ts           map[string]*trigTable
	cut, last    string // the cutover's snapshot; the last round's (or the cut)
	n            int64
}

// openQueueReverser reads the cut and the last round's snapshot.
func (im *Importer) openQueueReverser(ctx context.Context, legacy, node *pgx.Conn, imp *Import, s ShardProgress, slot string) (*queueReverser, error) {
	r := &queueReverser{shard: s.Shard, schema: strings.TrimPrefix(slot, reverseQueuePrefix), legacySchema: imp.LegacySchema, node: node, legacy: legacy}
	var err error
	if r.ts, err = im.reverseQueueTables(ctx, legacy, node, imp, s); err != nil {
		return nil, err
	}
	var cut *string
	if err := node.QueryRow(ctx, `SELECT snapshot FROM `+pgx.Identifier{r.schema, "cut"}.Sanitize()).Scan(&cut); err != nil {
		return nil, fmt.Errorf("read the capture queue's cut on node %s: %w", s.Node, err)
	}
	if cut == nil {
		return nil, fmt.Errorf("the capture queue on node %s has no cut: the shard's cutover did not record it", s.Node)
	}
	r.cut, r.last = *cut, *cut
	// The position table too: import finish drops schema pgtenant_stream
	// once it holds no position.
	if err := stream.EnsurePositionTable(ctx, legacy); err != nil {
		return nil, fmt.Errorf("legacy database: %w", err)
	}
	if _, err := legacy.Exec(ctx, `CREATE TABLE IF NOT EXISTS pgtenant_stream.reverse_queue (name text PRIMARY KEY, snapshot text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("legacy database: create the rollback's position table: %w", err)
	}
	var last string
	err = legacy.QueryRow(ctx, `SELECT snapshot FROM pgtenant_stream.reverse_queue WHERE name = $1`, r.schema).Scan(&last)
	switch {
	case err == nil:
		r.last = last // a rollback that died wrote back up to here
	case !errors.Is(err, pgx.ErrNoRows):
		return nil, fmt.Errorf("legacy database: read the rollback's position: %w", err)
	}
	return r, nil
}

type queued struct {
	tbl, op   string
	old, new_ *string
}

// round writes back the changes of the transactions committed on the node
// since the last round, and returns how long it took.
func (r *queueReverser) round(ctx context.Context) (time.Duration, error) {
	t0 := time.Now()
	tx, err := r.node.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return 0, fmt.Errorf("node: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var snap string
	if err := tx.QueryRow(ctx, `SELECT pg_current_snapshot()::text`).Scan(&snap); err != nil {
		return 0, fmt.Errorf("node: read a snapshot: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT tbl, op::text, old, new FROM `+pgx.Identifier{r.schema, "changes"}.Sanitize()+`
		WHERE xid >= pg_snapshot_xmin($1::pg_snapshot)
		AND pg_visible_in_snapshot(xid, $3::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $1::pg_snapshot) AND NOT pg_visible_in_snapshot(xid, $2::pg_snapshot)
		ORDER BY id`, r.last, r.cut, snap)
	if err != nil {
		return 0, fmt.Errorf("node: read the capture queue: %w", err)
	}
	var q []queued
	var c queued
	if _, err := pgx.ForEachRow(rows, []any{&c.tbl, &c.op, &c.old, &c.new_}, func() error { q = append(q, c); return nil }); err != nil {
		return 0, fmt.Errorf("node: read the capture queue: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("node: %w", err)
	}
	if err := r.apply(ctx, q, snap); err != nil {
		return 0, err
	}
	r.last = snap
	r.n += int64(len(q))
	return time.Since(t0), nil
}

// apply writes the changes q back in one legacy transaction that records
// snap as the rollback's position.
func (r *queueReverser) apply(ctx context.Context, q []queued, snap string) error {
	b := &pgx.Batch{}
	b.Queue(`SET LOCAL synchronous_commit = on`)
	b.Queue(`SET CONSTRAINTS ALL DEFERRED`)
	for _, c := range q {
		t := r.ts[c.tbl]
		if t == nil {
			return fmt.Errorf("the capture queue names table %q, not one of the shard's", c.tbl)
		}
		switch c.op {
		case "I":
			b.Queue(reverseInsertSQL(r.legacySchema, t), *c.new_)
		case "U":
			if c.old != nil { // the key changed: the old row goes, the new one comes
				b.Queue(reverseDeleteSQL(r.legacySchema, t), *c.old)
				b.Queue(reverseInsertSQL(r.legacySchema, t), *c.new_)
				continue
			}
			if sql := reverseUpdateSQL(r.legacySchema, t); sql != "" {
				b.Queue(sql, *c.new_)
			}
		case "D":
			b.Queue(reverseDeleteSQL(r.legacySchema, t), *c.old)
		default:
			return fmt.Errorf("the capture queue has an entry of kind %q", c.op)
		}
	}
	b.Queue(`INSERT INTO pgtenant_stream.reverse_queue (name, snapshot) VALUES ($1, $2)
		ON CONFLICT (name) DO UPDATE SET snapshot = excluded.snapshot, updated_at = now()`, r.schema, snap)
	err := pgx.BeginFunc(ctx, r.legacy, func(tx pgx.Tx) error {
		return tx.SendBatch(ctx, b).Close()
	})
	if err != nil {
		return idCollision(r.shard, fmt.Errorf("write the node's changes back to the legacy database: %w", err))
	}
	return nil
}

func (r *queueReverser) changes() int64 { return r.n }

// rowImage is the row image $n read back with the legacy table's row type.
func rowImage(schema, table string, n int) string {
	return fmt.Sprintf("($%d::text::%s)", n, pgx.Identifier{schema, table}.Sanitize())
}

// reverseInsertSQL inserts the row image $1 (a key the table holds fails:
// 23505).
func reverseInsertSQL(schema string, t *trigTable) string {
	cols, vals := make([]string, len(t.cols)), make([]string, len(t.cols))
	for i, c := range t.cols {
		cols[i], vals[i] = pgx.Identifier{c}.Sanitize(), "(x.r)."+pgx.Identifier{c}.Sanitize()
	}
	return fmt.Sprintf(`INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM (SELECT %s AS r OFFSET 0) x`,
		pgx.Identifier{schema, t.rule.Name}.Sanitize(), strings.Join(cols, ", "), strings.Join(vals, ", "), rowImage(schema, t.rule.Name, 1))
}

// reverseUpdateSQL sets the columns but the key of the row with the key of
// the row image $1 to the image's; "" when the table has only key columns.
func reverseUpdateSQL(schema string, t *trigTable) string {
	var sets []string
	for _, c := range t.cols {
		if !slices.Contains(t.key, c) {
			sets = append(sets, pgx.Identifier{c}.Sanitize()+" = (x.r)."+pgx.Identifier{c}.Sanitize())
		}
	}
	if len(sets) == 0 {
		return ""
	}
	return fmt.Sprintf(`UPDATE %s SET %s FROM (SELECT %s AS r OFFSET 0) x WHERE %s`, pgx.Identifier{schema, t.rule.Name}.Sanitize(),
		strings.Join(sets, ", "), rowImage(schema, t.rule.Name, 1), keyMatch(schema, t, 1))
}

// reverseDeleteSQL deletes the row with the key of the row image $1.
func reverseDeleteSQL(schema string, t *trigTable) string {
	return fmt.Sprintf(`DELETE FROM %s WHERE %s`, pgx.Identifier{schema, t.rule.Name}.Sanitize(), keyMatch(schema, t, 1))
}

func keyMatch(schema string, t *trigTable, n int) string {
	conds := make([]string, len(t.key))
	for i, k := range t.key {
		conds[i] = pgx.Identifier{t.rule.Name, k}.Sanitize() + " = " + rowImage(schema, t.rule.Name, n) + "." + pgx.Identifier{k}.Sanitize()
	}
	return strings.Join(conds, " AND ")
}
