package tenantops

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/tablelock"
)

// A tenant move keeps the target in step with the source by key: a row
// trigger on every table with tenant rows queues the primary key of each row
// the tenant's transactions (tenant tables: rows whose old or new tenant is
// the tenant; child tables: every row, filtered when applied) insert, update
// or delete, in pgtenant_tmove_<move>.changes on the source. A round takes
// the queue entries visible in one REPEATABLE READ snapshot of the source
// (deleting them in that transaction), reads the current rows of those keys
// in the same snapshot, and on the target deletes the tenant's rows with
// those keys and inserts the tenant's rows read, in one transaction,
// committed before the source's (a round that dies is done again: it is
// idempotent). Why nothing is lost:
//
//   - A write the copy does not hold fires the trigger. The triggers are
//     created before the copy's snapshot is taken, and CREATE TRIGGER waits
//     for every transaction that wrote to the table; so a write without a
//     queue entry committed before the snapshot, and is in the copy.
//   - A round leaves on the target, for every key it names, the row the
//     source has in its snapshot; rows it does not name kept their state
//     since the copy or an earlier round. So after a round the target holds
//     the source's snapshot for every key written since the copy.
//   - Under the fence no transaction of the tenant runs (the routers hold
//     new ones and waited for those in flight), so a last round takes every
//     queue entry there will ever be.

// captureTrigger names the trigger a tenant move puts on the source tables;
// truncateTrigger the one that refuses TRUNCATE of them during the move (a
// TRUNCATE fires no row trigger: the copied rows would come back in the
// target).
const (
	captureTrigger  = "PGTENANT_tenant_move"
	truncateTrigger = "PGTENANT_tenant_move_truncate"
)

func captureSchema(moveID int64) string { return fmt.Sprintf("pgtenant_tmove_%d", moveID) }

// captureDDL creates the queue and a trigger per table.
func captureDDL(moveID int64, st *shardTables, tenant string) string {
	cs := pgx.Identifier{captureSchema(moveID)}.Sanitize()
	var b strings.Builder
	fmt.Fprintf(&b, "CREATE SCHEMA %s;\nCREATE TABLE %s.changes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, tbl text NOT NULL, key text[] NOT NULL);\n", cs, cs)
	refuse := cs + ".refuse_truncate"
	fmt.Fprintf(&b, `CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  RAISE EXCEPTION 'TRUNCATE of %%.%% is refused while a tenant moves out of this shard (tenant move %d)', TG_TABLE_SCHEMA, TG_TABLE_NAME
    USING ERRCODE = '55000', HINT = 'delete the rows instead, or wait for the move to finish (pgtenant tenant move)';
END $f$;
`, refuse, moveID)
	for i, t := range st.list {
		fn := fmt.Sprintf("%s.capture_%d", cs, i)
		oldKey, newKey := make([]string, len(t.key)), make([]string, len(t.key))
		for j, k := range t.key {
			oldKey[j] = "OLD." + pgx.Identifier{k}.Sanitize() + "::text"
			newKey[j] = "NEW." + pgx.Identifier{k}.Sanitize() + "::text"
		}
		oldCond, newCond := "true", "true"
		if t.rule.TenantColumn != "" {
			tc := pgx.Identifier{t.rule.TenantColumn}.Sanitize()
			oldCond, newCond = "OLD."+tc+"::text = TG_ARGV[0]", "NEW."+tc+"::text = TG_ARGV[0]"
		}
		fmt.Fprintf(&b, `CREATE FUNCTION %[1]s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $f$
BEGIN
  IF TG_OP <> 'INSERT' AND %[4]s THEN
    INSERT INTO %[2]s.changes (tbl, key) VALUES (%[3]s, ARRAY[%[5]s]);
  END IF;
  IF TG_OP <> 'DELETE' AND %[6]s THEN
    INSERT INTO %[2]s.changes (tbl, key) VALUES (%[3]s, ARRAY[%[7]s]);
  END IF;
  RETURN NULL;
END $f$;
CREATE TRIGGER %[8]s AFTER INSERT OR UPDATE OR DELETE ON %[9]s FOR EACH ROW EXECUTE FUNCTION %[1]s(%[10]s);
CREATE TRIGGER %[11]s BEFORE TRUNCATE ON %[9]s FOR EACH STATEMENT EXECUTE FUNCTION %[12]s();
`, fn, cs, quoteLiteral(t.rule.Name), oldCond, strings.Join(oldKey, ", "), newCond, strings.Join(newKey, ", "),
			pgx.Identifier{captureTrigger}.Sanitize(), pgx.Identifier{st.schema, t.rule.Name}.Sanitize(), quoteLiteral(tenant),
			pgx.Identifier{truncateTrigger}.Sanitize(), refuse)
	}
	return b.String()
}

// ddlLocks says which tables a DDL of lockedDDL locks, on which node.
type ddlLocks struct {
	node    string   // the node conn is to, for errors
	schemas []string // the tables' schemas
	tables  []string // quoted, qualified
	// modes are the lock modes that conflict with the DDL's
	// (tablelock.Conflicts*), for naming who holds the tables.
	modes []string
	// wait bounds the retries; 0 means a minute.
	wait time.Duration
}

// lockedDDL runs ddl in one transaction on conn, its locks on the tables of
// l taken without stalling the tables' writers or being starved by
// autovacuum (see internal/tablelock): autovacuum's workers on the tables
// are cancelled (best effort) and SHARE UPDATE EXCLUSIVE, which no writer
// conflicts with, is taken first, waiting past deadlock_timeout for
// Postgres to cancel a worker that still holds it; then the DDL waits at
// most 100 ms for the writers (so the DDL, never a writer, gives way). A
// timeout is retried for up to l.wait; the last one names who holds the
// tables.
func lockedDDL(ctx context.Context, conn *pgx.Conn, l ddlLocks, ddl string) error {
	wait := l.wait
	if wait <= 0 {
		wait = time.Minute
	}
	deadline := time.Now().Add(wait)
	for {
		if len(l.tables) > 0 {
			// Best effort: a role that may not (42501) leaves it to
			// Postgres, after deadlock_timeout.
			_ = tablelock.CancelAutovacuum(ctx, conn, l.schemas)
		}
		what, modes := "hold autovacuum off the tables", tablelock.ConflictsShareUpdateExclusive
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			var timeout string
			b := &pgx.Batch{}
			tablelock.QueueHoldOff(b, l.tables, 0, 100*time.Millisecond, &timeout)
			if err := tx.SendBatch(ctx, b).Close(); err != nil {
				what += " (lock_timeout " + timeout + ")"
				return err
			}
			what, modes = "lock the tables for a schema change (lock_timeout 100ms)", l.modes
			if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '100ms'; SET LOCAL standard_conforming_strings = on`); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, ddl)
			return err
		})
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || (pgErr.Code != "55P03" && pgErr.Code != "40P01") {
			return err
		}
		if time.Now().After(deadline) {
			return tablelock.Failed(ctx, l.node, conn.Config().ConnString(), what, l.schemas, modes, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(20+rand.IntN(80)) * time.Millisecond):
		}
	}
}

// dropCapture drops the move's queue, functions and (CASCADE) triggers on
// src (node names it).
func dropCapture(ctx context.Context, src *pgx.Conn, node string, moveID int64) error {
	l := ddlLocks{node: node, modes: tablelock.ConflictsAccessExclusive}
	rows, err := src.Query(ctx, `SELECT DISTINCT n.nspname, format('%I.%I', n.nspname, c.relname) FROM pg_trigger t
		JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
		WHERE pn.nspname = $1`, captureSchema(moveID))
	if err == nil {
		var schema, table string
		_, err = pgx.ForEachRow(rows, []any{&schema, &table}, func() error {
			if !slices.Contains(l.schemas, schema) {
				l.schemas = append(l.schemas, schema)
			}
			l.tables = append(l.tables, table)
			return nil
		})
	}
	if err != nil {
		return fmt.Errorf("find the tables with the move's triggers (%s): %w", captureSchema(moveID), err)
	}
	if err := lockedDDL(ctx, src, l, "DROP SCHEMA IF EXISTS "+pgx.Identifier{captureSchema(moveID)}.Sanitize()+" CASCADE"); err != nil {
		return fmt.Errorf("drop the change queue and triggers (%s): %w", captureSchema(moveID), err)
	}
	return nil
}

// keyTypes returns the SQL type of each key column of t in schema.
func keyTypes(ctx context.Context, conn *pgx.Conn, schema string, t tenantTable) ([]string, error) {
	rows, err := conn.Query(ctx, `SELECT format_type(a.atttypid, a.atttypmod) FROM unnest($3::text[]) WITH ORDINALITY k(name, ord)
		JOIN pg_attribute a ON a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass AND a.attname = k.name ORDER BY k.ord`,
		schema, t.rule.Name, t.key)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// pipeCopy streams `COPY (query) TO STDOUT` on src into `COPY into FROM
// STDIN` on dst and returns the rows copied.
func pipeCopy(ctx context.Context, src, dst *pgx.Conn, query, into string) (int64, error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := src.PgConn().CopyTo(ctx, pw, "COPY ("+query+") TO STDOUT")
		pw.CloseWithError(err)
		done <- err
	}()
	tag, err := dst.PgConn().CopyFrom(ctx, pr, "COPY "+into+" FROM STDIN")
	pr.CloseWithError(io.ErrClosedPipe)
	serr := <-done
	if serr != nil && !errors.Is(serr, io.ErrClosedPipe) {
		return 0, fmt.Errorf("read: %w", serr)
	}
	if err != nil {
		return 0, fmt.Errorf("write: %w", err)
	}
	return tag.RowsAffected(), nil
}

// round applies the queue entries visible in a new source snapshot to the
// target (see the comment at the top) and returns how many it took.
func (mv *moving) round(ctx context.Context) (int64, error) {
	src, dst := mv.src, mv.dst
	cs := pgx.Identifier{captureSchema(mv.id)}.Sanitize()
	stx, err := src.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead})
	if err != nil {
		return 0, fmt.Errorf("source: begin round: %w", err)
	}
	defer stx.Rollback(context.WithoutCancel(ctx))
	if _, err := stx.Exec(ctx, setTenantSQL, mv.tenant); err != nil {
		return 0, err
	}
	tag, err := stx.Exec(ctx, `CREATE TEMP TABLE pgtenant_round (tbl text, key text[]) ON COMMIT DROP;
		WITH d AS (DELETE FROM `+cs+`.changes RETURNING tbl, key) INSERT INTO pgtenant_round SELECT DISTINCT tbl, key FROM d`)
	if err != nil {
		return 0, fmt.Errorf("source: take the queue: %w", err)
	}
	n := tag.RowsAffected()
	if n == 0 {
		return 0, nil
	}
	dtx, err := dst.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("target: begin round: %w", err)
	}
	defer dtx.Rollback(context.WithoutCancel(ctx))
	rows, err := stx.Query(ctx, `SELECT DISTINCT tbl FROM pgtenant_round`)
	if err != nil {
		return 0, fmt.Errorf("source: %w", err)
	}
	touched, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return 0, fmt.Errorf("source: %w", err)
	}
	var used []int
	for i, t := range mv.sst.list {
		if !slices.Contains(touched, t.rule.Name) {
			continue
		}
		used = append(used, i)
		types := mv.keyTypes[i]
		if types == nil {
			if types, err = keyTypes(ctx, src, mv.sst.schema, t); err != nil {
				return 0, fmt.Errorf("key types of %s: %w", t.rule.Name, err)
			}
			mv.keyTypes[i] = types
		}
		casts := make([]string, len(t.key))
		for j := range t.key {
			casts[j] = fmt.Sprintf("key[%d]::%s", j+1, types[j])
		}
		keys := fmt.Sprintf("SELECT %s FROM pgtenant_round WHERE tbl = %s", strings.Join(casts, ", "), quoteLiteral(t.rule.Name))
		dt := pgx.Identifier{mv.dst_.schema, t.rule.Name}.Sanitize()
		kt, rt := fmt.Sprintf("pgtenant_k%d", i), fmt.Sprintf("pgtenant_r%d", i)
		if _, err := dtx.Exec(ctx, fmt.Sprintf(`CREATE TEMP TABLE %s ON COMMIT DROP AS SELECT %s FROM %s WITH NO DATA;
			CREATE TEMP TABLE %s ON COMMIT DROP AS SELECT %s FROM %s WITH NO DATA`, kt, colList(t.key), dt, rt, colList(t.cols), dt)); err != nil {
			return 0, fmt.Errorf("target: %w", err)
		}
		if _, err := pipeCopy(ctx, src, dst, keys, kt+" ("+colList(t.key)+")"); err != nil {
			return 0, fmt.Errorf("round: keys of %s: %w", t.rule.Name, err)
		}
		q := fmt.Sprintf("SELECT %s FROM %s pgtenant_t WHERE %s AND (%s) IN (%s)", colList(t.cols), pgx.Identifier{mv.sst.schema, t.rule.Name}.Sanitize(),
			mv.sst.cond(t, tenantSetting), prefixed("pgtenant_t", t.key), keys)
		if _, err := pipeCopy(ctx, src, dst, q, rt+" ("+colList(t.cols)+")"); err != nil {
			return 0, fmt.Errorf("round: rows of %s: %w", t.rule.Name, err)
		}
	}
	// Deletes children first, inserts parents first.
	for k := len(used) - 1; k >= 0; k-- {
		i := used[k]
		t := mv.dst_.list[i]
		kt := fmt.Sprintf("pgtenant_k%d", i)
		if _, err := dtx.Exec(ctx, fmt.Sprintf("DELETE FROM %s pgtenant_t USING %s WHERE (%s) = (%s) AND %s",
			pgx.Identifier{mv.dst_.schema, t.rule.Name}.Sanitize(), kt, prefixed("pgtenant_t", t.key), prefixed(kt, t.key), mv.dst_.cond(t, "$1")), mv.tenant); err != nil {
			return 0, fmt.Errorf("target: delete changed rows of %s: %w", t.rule.Name, err)
		}
	}
	for _, i := range used {
		t := mv.dst_.list[i]
		if _, err := dtx.Exec(ctx, fmt.Sprintf("INSERT INTO %s (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM pgtenant_r%d",
			pgx.Identifier{mv.dst_.schema, t.rule.Name}.Sanitize(), colList(t.cols), colList(t.cols), i)); err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "23505" {
				return 0, &Error{Code: "23505", Message: fmt.Sprintf("table %s: a row the tenant wrote during the move collides with a row of the target shard: %s", t.rule.Name, pgErr.Detail),
					Hint: "the move was undone; keys must be unique across both shards (see README, Tenant operations)", Err: err}
			}
			return 0, fmt.Errorf("target: write changed rows of %s: %w", t.rule.Name, err)
		}
	}
	if err := dtx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("target: commit round: %w", err)
	}
	if err := stx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("source: commit round: %w", err)
	}
	return n, nil
}

// prefixed is "alias.c1, alias.c2".
func prefixed(alias string, cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = alias + "." + pgx.Identifier{c}.Sanitize()
	}
	return strings.Join(q, ", ")
}
