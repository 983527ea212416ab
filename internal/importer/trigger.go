package importer

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// Methods of following the legacy database's changes (pgtenant.imports.method).
const (
	// MethodLogical reads a logical replication slot (pgoutput): the legacy
	// database needs wal_level=logical and a role with REPLICATION.
	MethodLogical = "logical"
	// MethodTrigger captures every change of the tenant tables with row
	// triggers into a queue table on the legacy database, as shard moves'
	// --method trigger does (internal/move/trigger.go): any wal_level, no
	// REPLICATION, no superuser; the tables' owner installs the triggers.
	MethodTrigger = "trigger"
)

// An import by trigger keeps, on the legacy database, in schema
// pgtenant_import (markerSchema):
//
//	changes      the queue: id, table, op, the writer's pg_current_xact_id(),
//	             old and new row image (ROW::text); one SECURITY DEFINER
//	             capture function per table and an AFTER row trigger on it
//	marker       the cutover markers, captured into the queue too (op 'M'),
//	             so a marker reaches the node behind every change committed
//	             before it, as through the logical stream
//	verify_hold  a verify's request, and the snapshot the applier holds at
//
// and a BEFORE TRUNCATE trigger on every tenant table refusing TRUNCATE
// (55000) while the import runs: a TRUNCATE fires no row trigger, its rows
// would stay on the shards.
//
// Why the copy and the queue lose and repeat nothing (the argument of
// internal/move/trigger.go, per legacy table): the capture triggers are
// created in one transaction, which takes SHARE ROW EXCLUSIVE on every
// table and so waits for every transaction that has written to them; a
// write that fired no trigger was committed before the triggers, hence
// before the copy's snapshot (exported by a REPEATABLE READ transaction
// opened after they committed, and imported by every copy worker), and is
// in the copy. A queued change is applied only if its transaction is not
// visible in the snapshot the node's rows are at. The applier (trigger_apply.go)
// then applies rounds: the transactions visible in a new snapshot and not in
// the last one, in queue id order, in batches, each committed on each node
// with the node's position (pgtenant_stream.import_queue).
const (
	queueTable      = markerSchema + ".changes"
	verifyHoldTable = markerSchema + ".verify_hold"
	// captureTrigger and truncateTrigger name the import's triggers on the
	// legacy tables; the uppercase P sorts them before the foreign keys'
	// RI_ConstraintTrigger_*, so a change is queued before the cascaded
	// changes it causes (as the move's).
	captureTrigger  = "PGTENANT_import_capture"
	truncateTrigger = "PGTENANT_import_truncate"
	// markerTag is the queue's tbl of a marker (no table of the app has it).
	markerTag = ""
)

func validMethod(m string) error {
	switch m {
	case "", MethodLogical, MethodTrigger:
		return nil
	}
	return fmt.Errorf("unknown method %q: use %s (a logical replication slot) or %s (capture triggers, without logical replication)", m, MethodLogical, MethodTrigger)
}

// logicalPrereqs are the problems of a legacy database for MethodLogical.
func logicalPrereqs(walLevel string, super, repl bool) []Problem {
	var probs []Problem
	if walLevel != "logical" {
		probs = append(probs, Problem{Code: "55000",
			Message: fmt.Sprintf("the legacy database has wal_level=%s; the import follows its changes by logical replication", walLevel),
			Hint: "set wal_level = logical (ALTER SYSTEM SET wal_level = logical) and restart the server, or, where that is not possible " +
				"(a managed host, no restart), use --method trigger: capture triggers on the legacy tables, installed by their owner"})
	}
	if !super && !repl {
		probs = append(probs, Problem{Code: "42501",
			Message: "the role the import connects as has neither REPLICATION nor SUPERUSER; it cannot create the replication slot the copy and the change stream read from",
			Hint:    "ALTER ROLE <that role> REPLICATION, or connect as a role that has it, or use --method trigger (no REPLICATION needed: the tables' owner installs capture triggers)"})
	}
	return probs
}

// logicalReady checks the legacy database of conn for MethodLogical.
func logicalReady(ctx context.Context, conn *pgx.Conn) error {
	var wal string
	var super, repl bool
	if err := conn.QueryRow(ctx, `SELECT current_setting('wal_level'), rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user`).
		Scan(&wal, &super, &repl); err != nil {
		return fmt.Errorf("read wal_level and role of the legacy database: %w", err)
	}
	if probs := logicalPrereqs(wal, super, repl); len(probs) > 0 {
		return &CheckError{Problems: probs}
	}
	return nil
}

// triggerPrereqs are the problems of a legacy database for MethodTrigger:
// every tenant and child table has a primary key (a queued row image is
// applied by key) and the role may create triggers on it and a schema in
// the database.
func triggerPrereqs(ctx context.Context, c *catalog.Catalog, conn *pgx.Conn, schema string) ([]Problem, error) {
	rules, err := tables.New(c.Pool()).List(ctx)
	if err != nil {
		return nil, err
	}
	shared := []string{}
	for _, t := range rules {
		if t.Kind == tables.KindShared {
			shared = append(shared, t.Name)
		}
	}
	var noKey, denied []string
	var canCreate bool
	var user string
	if err := conn.QueryRow(ctx, `SELECT has_database_privilege(current_database(), 'CREATE'), current_user::text,
		coalesce((SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relkind = 'r' AND NOT c.relispartition AND c.relname <> ALL ($2) AND c.relname <> 'goose_db_version'
			AND NOT EXISTS (SELECT FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)), '{}'),
		coalesce((SELECT array_agg(c.relname::text ORDER BY c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE n.nspname = $1 AND c.relkind = 'r' AND NOT c.relispartition AND c.relname <> ALL ($2) AND c.relname <> 'goose_db_version'
			AND NOT has_table_privilege(c.oid, 'TRIGGER')), '{}')`, schema, shared).Scan(&canCreate, &user, &noKey, &denied); err != nil {
		return nil, fmt.Errorf("check the legacy tables for --method trigger: %w", err)
	}
	var probs []Problem
	if len(noKey) > 0 {
		probs = append(probs, Problem{Code: "55000", Message: fmt.Sprintf("table(s) without a primary key: %s; --method trigger applies each captured row by its key", strings.Join(noKey, ", ")),
			Hint: "add a primary key to each (ALTER TABLE ... ADD PRIMARY KEY), or use the logical method (wal_level=logical and REPLICATION)"})
	}
	if len(denied) > 0 {
		probs = append(probs, Problem{Code: "42501", Message: fmt.Sprintf("role %s may not create triggers on %s", user, strings.Join(denied, ", ")),
			Hint: "connect as the tables' owner, or GRANT TRIGGER ON those tables TO " + user})
	}
	if !canCreate {
		probs = append(probs, Problem{Code: "42501", Message: fmt.Sprintf("role %s may not create schemas in the legacy database (the change queue lives in schema %s)", user, markerSchema),
			Hint: "GRANT CREATE ON DATABASE <the legacy database> TO " + user + ", or connect as its owner"})
	}
	return probs, nil
}

// SetMethod changes the running import's method; only before anything was
// created on the legacy database (the import is serving).
func (im *Importer) SetMethod(ctx context.Context, method string) error {
	if err := validMethod(method); err != nil {
		return err
	}
	imp, err := im.load(ctx)
	if err != nil {
		return err
	}
	if imp.Method == method {
		return nil
	}
	if imp.State != StateServing {
		return fmt.Errorf("import start --method %s: the import was started with method %s (it is %s); run import start without --method to resume it", method, imp.Method, imp.State)
	}
	if method == MethodTrigger {
		legacy, err := connect(ctx, imp.LegacyDSN)
		if err != nil {
			return fmt.Errorf("connect to the legacy database: %w", err)
		}
		probs, err := triggerPrereqs(ctx, im.cat, legacy, imp.LegacySchema)
		legacy.Close(context.Background())
		if err != nil {
			return err
		}
		if len(probs) > 0 {
			return &CheckError{Problems: probs}
		}
	}
	_, err = im.cat.Pool().Exec(ctx, `UPDATE pgtenant.imports SET method = $1, updated_at = now() WHERE state = 'serving'`, method)
	return err
}

// trigTable is a tenant or child table of the legacy database as the
// trigger method sees it.
type trigTable struct {
	rule tables.Table
	// all are the columns of the row image (every column not dropped, in
	// order); cols those an apply writes (not generated); key the primary key.
	all, cols, key []string
	// route is the index in all of the column that finds the row's tenant
	// (the tenant column, or a child's key to its parent).
	route int
	// refs: the columns children's rules reference (index in all), so the
	// applier remembers the tenant of each parent row it writes.
	refs map[string]int
}

// trigTables reads the columns and keys of the rules' tables.
func trigTables(ctx context.Context, conn *pgx.Conn, schema string, rules []tables.Table) (map[string]*trigTable, error) {
	out := map[string]*trigTable{}
	for _, r := range rules {
		if r.Kind == tables.KindShared {
			continue
		}
		t := &trigTable{rule: r, refs: map[string]int{}, route: -1}
		err := conn.QueryRow(ctx, `SELECT
			coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}'),
			coalesce((SELECT array_agg(a.attname::text ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{}'),
			coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord)
				JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum WHERE i.indrelid = c.oid AND i.indisprimary), '{}')
			FROM pg_class c WHERE c.oid = (quote_ident($1) || '.' || quote_ident($2))::regclass`, schema, r.Name).Scan(&t.all, &t.cols, &t.key)
		if err != nil {
			return nil, fmt.Errorf("read the columns of %s: %w", r.Name, err)
		}
		if len(t.key) == 0 {
			return nil, fmt.Errorf("table %s has no primary key; --method trigger applies each captured row by its key: add one", r.Name)
		}
		col := r.TenantColumn
		if r.Kind == tables.KindChild {
			col = r.ParentKey
		}
		for i, c := range t.all {
			if c == col {
				t.route = i
			}
		}
		if t.route < 0 {
			return nil, fmt.Errorf("table %s has no column %s", r.Name, col)
		}
		out[r.Name] = t
	}
	for _, r := range rules {
		if r.Kind != tables.KindChild || out[r.Parent] == nil {
			continue
		}
		p := out[r.Parent]
		for i, c := range p.all {
			if c == r.ParentColumn {
				p.refs[r.ParentColumn] = i
			}
		}
	}
	return out, nil
}

// captureDDL is the queue, the marker and verify tables, and the capture
// functions and triggers of ts, in schema markerSchema of the legacy database.
func captureDDL(schema string, ts map[string]*trigTable) string {
	q := pgx.Identifier{markerSchema, "changes"}.Sanitize()
	var b strings.Builder
	fmt.Fprintf(&b, `CREATE SCHEMA IF NOT EXISTS %[1]s;
CREATE TABLE IF NOT EXISTS %[1]s.%[2]s (shard int NOT NULL, seq bigint NOT NULL, at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (shard, seq));
CREATE TABLE %[3]s (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tbl text NOT NULL, op "char" NOT NULL,
  xid xid8 NOT NULL DEFAULT pg_current_xact_id(), old text, new text);
CREATE INDEX changes_xid ON %[3]s (xid);
CREATE TABLE IF NOT EXISTS %[4]s (seq bigint PRIMARY KEY, snapshot text, held_at timestamptz, released_at timestamptz, created_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION %[1]s.refuse_truncate() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  RAISE EXCEPTION 'TRUNCATE of %%.%% is refused while pgtenant imports this database (--method trigger)', TG_TABLE_SCHEMA, TG_TABLE_NAME
    USING ERRCODE = '55000', HINT = 'delete the rows instead (the import applies row changes only), or finish the import first (pgtenant import finish)';
END $f$;
CREATE FUNCTION %[1]s.capture_marker() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  INSERT INTO %[3]s (tbl, op, new) VALUES ('', 'M', NEW::text);
  RETURN NULL;
END $f$;
CREATE TRIGGER %[5]s AFTER INSERT ON %[1]s.%[2]s FOR EACH ROW EXECUTE FUNCTION %[1]s.capture_marker();
`, markerSchema, markerTable, q, verifyHoldTable, pgx.Identifier{captureTrigger}.Sanitize())
	i := 0
	for _, name := range sortedKeys(ts) {
		t := ts[name]
		fn := pgx.Identifier{markerSchema, fmt.Sprintf("capture_%d", i)}.Sanitize()
		i++
		// The old image is kept when the update changes the key or the
		// column that finds the tenant: the applier then deletes the old
		// row (from the old tenant's shard).
		watch := append(append([]string{}, t.key...), t.all[t.route])
		oldCols, newCols := make([]string, len(watch)), make([]string, len(watch))
		for j, c := range watch {
			oldCols[j], newCols[j] = "OLD."+pgx.Identifier{c}.Sanitize(), "NEW."+pgx.Identifier{c}.Sanitize()
		}
		lit := "'" + strings.ReplaceAll(name, "'", "''") + "'"
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
CREATE TRIGGER %[6]s AFTER INSERT OR UPDATE OR DELETE ON %[7]s FOR EACH ROW EXECUTE FUNCTION %[1]s();
CREATE TRIGGER %[8]s BEFORE TRUNCATE ON %[7]s FOR EACH STATEMENT EXECUTE FUNCTION %[9]s.refuse_truncate();
`, fn, q, lit, strings.Join(oldCols, ", "), strings.Join(newCols, ", "), pgx.Identifier{captureTrigger}.Sanitize(),
			pgx.Identifier{schema, name}.Sanitize(), pgx.Identifier{truncateTrigger}.Sanitize(), markerSchema)
	}
	return b.String()
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// captureInstalled reports whether the queue exists on the legacy database.
func captureInstalled(ctx context.Context, legacy *pgx.Conn) (bool, error) {
	var ok bool
	err := legacy.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, queueTable).Scan(&ok)
	return ok, err
}

// installCapture creates the queue and the capture triggers in one legacy
// transaction (all or nothing), retrying while the app's writers keep the
// trigger's table locks from being granted quickly (the move's LockedDDL).
func (im *Importer) installCapture(ctx context.Context, legacy *pgx.Conn, imp *Import, ts map[string]*trigTable) error {
	if ok, err := captureInstalled(ctx, legacy); err != nil {
		return fmt.Errorf("look for the change queue: %w", err)
	} else if ok {
		return nil
	}
	if err := im.mover(0).LockedDDL(ctx, legacy, captureDDL(imp.LegacySchema, ts), true); err != nil {
		return fmt.Errorf("create the change queue and the capture triggers on the legacy database: %w", err)
	}
	im.logger.Info("import: capturing the legacy database's changes", "queue", queueTable, "tables", len(ts))
	return nil
}

// dropCapture drops the capture triggers, the queue and the import's schema
// on the legacy database (import finish), the triggers first with the
// move's lock-patient DDL, one table at a time: the legacy rows are not
// touched.
func (im *Importer) dropCapture(ctx context.Context, legacy *pgx.Conn, imp *Import) error {
	if err := im.dropTriggers(ctx, legacy, imp.LegacySchema, captureTrigger, truncateTrigger); err != nil {
		return err
	}
	if _, err := legacy.Exec(ctx, `DROP SCHEMA IF EXISTS `+markerSchema+` CASCADE`); err != nil {
		return fmt.Errorf("drop schema %s: %w", markerSchema, err)
	}
	return nil
}

// dropTriggers drops the triggers named trigger and also on every table of
// schema that has trigger, one table at a time, with the move's
// lock-patient DDL (never queued ahead of the tables' writers for long).
func (im *Importer) dropTriggers(ctx context.Context, conn *pgx.Conn, schema, trigger string, also ...string) error {
	rows, err := conn.Query(ctx, `SELECT c.relname::text FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		WHERE n.nspname = $1 AND t.tgname = $2 ORDER BY 1`, schema, trigger)
	if err != nil {
		return fmt.Errorf("list the capture triggers: %w", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("list the capture triggers: %w", err)
	}
	m := im.mover(0)
	for _, n := range names {
		tbl := pgx.Identifier{schema, n}.Sanitize()
		ddl := ""
		for _, t := range append([]string{trigger}, also...) {
			ddl += `DROP TRIGGER IF EXISTS ` + pgx.Identifier{t}.Sanitize() + ` ON ` + tbl + `;`
		}
		if err := m.LockedDDL(ctx, conn, ddl, false); err != nil {
			return fmt.Errorf("drop the capture triggers of %s: %w", n, err)
		}
	}
	return nil
}

// parseRecord splits a row's text form (record_out: "(a,,\"b c\")") into
// its fields; a NULL field is nil.
func parseRecord(s string) ([]*string, error) {
	if len(s) < 2 || s[0] != '(' || s[len(s)-1] != ')' {
		return nil, fmt.Errorf("not a row image: %.40q", s)
	}
	body := s[1 : len(s)-1]
	var out []*string
	i := 0
	for {
		if i >= len(body) || body[i] == ',' {
			out = append(out, nil) // empty, unquoted: NULL
		} else if body[i] == '"' {
			var b strings.Builder
			i++
			for {
				if i >= len(body) {
					return nil, fmt.Errorf("unterminated quote in a row image: %.40q", s)
				}
				c := body[i]
				if c == '\\' && i+1 < len(body) {
					b.WriteByte(body[i+1])
					i += 2
					continue
				}
				if c == '"' {
					if i+1 < len(body) && body[i+1] == '"' {
						b.WriteByte('"')
						i += 2
						continue
					}
					i++
					break
				}
				b.WriteByte(c)
				i++
			}
			v := b.String()
			out = append(out, &v)
		} else {
			j := strings.IndexByte(body[i:], ',')
			if j < 0 {
				j = len(body) - i
			}
			v := body[i : i+j]
			out = append(out, &v)
			i += j
		}
		if i >= len(body) {
			return out, nil
		}
		if body[i] != ',' {
			return nil, fmt.Errorf("malformed row image: %.40q", s)
		}
		i++
		if i == len(body) { // a trailing empty field
			out = append(out, nil)
			return out, nil
		}
	}
}

// errQueueGone: the queue was dropped (import finish) under a follower.
var errQueueGone = errors.New("the change queue is gone (import finish)")
