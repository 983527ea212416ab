package stream

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TableApplier applies transactions to one target database: each batch in
// one target transaction (mirroring the source's commits, several per
// batch) that also records the batch's position under Name (SavePosition).
// Values are sent as text and converted by the target's column types, so
// the target tables need the source's column names, not its oids.
//
// An update or delete whose row is missing on the target is skipped (as
// PostgreSQL's own apply worker does; an ON DELETE CASCADE that already ran
// on the target is the usual cause) and counted in Missing. Deferrable
// constraints are checked at the end of each target transaction (SET
// CONSTRAINTS ALL DEFERRED).
type TableApplier struct {
	// Conn is the target connection; the applier owns it while streaming.
	Conn *pgx.Conn
	// Name is the position's key in pgtenant_stream.position (EnsurePositionTable).
	Name string
	// Target maps a source relation to the target table. Nil keeps the
	// source's schema and table names; ok = false skips the relation's changes.
	Target func(rel *Relation) (schema, table string, ok bool)
	// Missing counts updates and deletes that found no row.
	Missing int64
	// Guarded makes each transaction advance the recorded position only
	// from the one this applier knows (From, then the end of each batch it
	// committed): a second applier of the same batches, e.g. the server
	// session of a killed stream that was blocked mid-transaction and
	// commits later, makes one of the two fail with ErrPositionMoved and
	// roll back, so no batch is applied twice. Without it the position is
	// overwritten (an upsert).
	Guarded bool
	// From is the recorded position the first guarded transaction advances
	// from (LoadPosition; 0: none is recorded yet). ApplyWith moves it.
	From LSN

	stmts map[string]string // SQL → prepared statement name
}

// Apply implements Applier.
func (a *TableApplier) Apply(ctx context.Context, txns []*Txn) error {
	_, err := a.ApplyWith(ctx, txns, ApplyOptions{})
	return err
}

// ApplyOptions change how ApplyWith commits.
type ApplyOptions struct {
	// Async commits with synchronous_commit = off: the changes are visible
	// when ApplyWith returns, and durable once the target has flushed its
	// WAL up to the result's CommitLSN (a later commit with it on, the WAL
	// writer within 3 × wal_writer_delay, or any other session's flushed
	// commit: WAL is flushed in order). A crash of the target before then
	// loses the transaction, position included, so the caller must not
	// confirm it to the source until then. The zero value waits for the flush.
	Async bool
	// Notify are (channel, payload) notifications sent right after the
	// commit (by a transaction of their own that does not wait for a
	// flush: a NOTIFY takes an xid), the payload's %s replaced by a
	// position of the target's WAL then, past the commit record: without
	// Async the flushed one (durable: a crash of the target keeps the
	// transaction and all WAL before that position; the insert position
	// may lie past the flush, on other sessions' WAL a crash could lose
	// and rewrite), with Async the insert one (they may arrive before the
	// transaction is durable).
	Notify [][2]string
}

// ApplyResult is where a transaction of ApplyWith ended on the target.
type ApplyResult struct {
	// CommitLSN is the target's WAL insert position right after the
	// commit (past its commit record); FlushLSN the target's flushed WAL
	// position read at the same time (without Async, past the commit
	// record too: the transaction is durable up to it).
	CommitLSN, FlushLSN LSN
}

// ApplyWith is Apply with options: an asynchronous commit, notifications.
func (a *TableApplier) ApplyWith(ctx context.Context, txns []*Txn, opts ApplyOptions) (ApplyResult, error) {
	if a.stmts == nil {
		a.stmts = make(map[string]string)
	}
	// BEGIN, the changes, the position and COMMIT go in one round trip.
	pc := a.Conn.PgConn()
	b := &pgconn.Batch{}
	b.ExecParams(`BEGIN`, nil, nil, nil, nil)
	if opts.Async {
		b.ExecParams(`SET LOCAL synchronous_commit = off`, nil, nil, nil, nil)
	} else {
		b.ExecParams(`SET LOCAL synchronous_commit = on`, nil, nil, nil, nil)
	}
	b.ExecParams(`SET CONSTRAINTS ALL DEFERRED`, nil, nil, nil, nil)
	var kinds []Kind // per batch entry after the two SETs: what to count as missing
	for _, t := range txns {
		for i := range t.Changes {
			c := &t.Changes[i]
			if c.Kind == Truncate {
				sql, ok := a.truncateSQL(c)
				if ok {
					b.ExecParams(sql, nil, nil, nil, nil)
					kinds = append(kinds, Truncate)
				}
				continue
			}
			sql, params, ok, err := a.statement(c)
			if err != nil {
				return ApplyResult{}, err
			}
			if !ok {
				continue
			}
			name, err := a.prepare(ctx, pc, sql) // outside the transaction: a failure leaves nothing open
			if err != nil {
				return ApplyResult{}, err
			}
			b.ExecPrepared(name, params, nil, nil)
			kinds = append(kinds, c.Kind)
		}
	}
	last := txns[len(txns)-1].EndLSN
	switch {
	case !a.Guarded:
		b.ExecParams(`INSERT INTO pgtenant_stream.position (name, lsn) VALUES ($1, $2::text::pg_lsn)
		ON CONFLICT (name) DO UPDATE SET lsn = excluded.lsn, updated_at = now()`,
			[][]byte{[]byte(a.Name), []byte(last.String())}, nil, nil, nil)
	case a.From == 0:
		// A row recorded meanwhile by another applier: 23505.
		b.ExecParams(`INSERT INTO pgtenant_stream.position (name, lsn) VALUES ($1, $2::text::pg_lsn)`,
			[][]byte{[]byte(a.Name), []byte(last.String())}, nil, nil, nil)
	default:
		// The row moved by another applier (committed, or still open: the
		// update waits for it, then finds the position changed): the
		// insert meets the row and fails with 23505.
		b.ExecParams(`WITH u AS (UPDATE pgtenant_stream.position SET lsn = $3::text::pg_lsn, updated_at = now()
			WHERE name = $1 AND lsn = $2::text::pg_lsn RETURNING 1)
		INSERT INTO pgtenant_stream.position (name, lsn) SELECT $1, $3::text::pg_lsn WHERE NOT EXISTS (SELECT FROM u)`,
			[][]byte{[]byte(a.Name), []byte(a.From.String()), []byte(last.String())}, nil, nil, nil)
	}
	b.ExecParams(`COMMIT`, nil, nil, nil, nil)
	commit := len(kinds) + 4 // BEGIN, two SETs, the changes, the position
	// After the commit, in the same round trip: the notifications and the
	// WAL positions.
	if len(opts.Notify) > 0 {
		b.ExecParams(`BEGIN`, nil, nil, nil, nil)
		b.ExecParams(`SET LOCAL synchronous_commit = off`, nil, nil, nil, nil)
		notify := `SELECT pg_notify($1, format($2, pg_current_wal_insert_lsn()))`
		if !opts.Async { // the commit waited for its flush: the flushed position is past it
			notify = `SELECT pg_notify($1, format($2, pg_current_wal_flush_lsn()))`
		}
		for _, n := range opts.Notify {
			b.ExecParams(notify, [][]byte{[]byte(n[0]), []byte(n[1])}, nil, nil, nil)
		}
		b.ExecParams(`COMMIT`, nil, nil, nil, nil)
	}
	b.ExecParams(`SELECT pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text`, nil, nil, nil, nil)
	results, err := pc.ExecBatch(ctx, b).ReadAll()
	if err != nil {
		if pc.TxStatus() != 'I' && !pc.IsClosed() {
			_, _ = pc.Exec(context.WithoutCancel(ctx), `ROLLBACK`).ReadAll()
		}
		if len(results) > commit && results[commit].CommandTag.String() == "COMMIT" {
			a.From = last
			return ApplyResult{}, fmt.Errorf("after applying changes: %w", err)
		}
		var pe *pgconn.PgError
		if a.Guarded && errors.As(err, &pe) && pe.Code == "23505" && pe.SchemaName == "pgtenant_stream" && pe.TableName == "position" {
			return ApplyResult{}, fmt.Errorf("apply changes up to %s as %s: %w", last, a.Name, ErrPositionMoved)
		}
		return ApplyResult{}, fmt.Errorf("apply changes: %w", err)
	}
	if tag := results[commit].CommandTag; tag.String() != "COMMIT" {
		return ApplyResult{}, fmt.Errorf("apply changes: target transaction ended with %q", tag.String())
	}
	a.From = last
	for i, k := range kinds {
		if (k == Update || k == Delete) && results[i+3].CommandTag.RowsAffected() == 0 {
			a.Missing++
		}
	}
	var res ApplyResult
	r := results[len(results)-1]
	if len(r.Rows) != 1 || len(r.Rows[0]) != 2 {
		return ApplyResult{}, errors.New("after applying changes: no WAL position")
	}
	if res.CommitLSN, err = ParseLSN(string(r.Rows[0][0])); err == nil {
		res.FlushLSN, err = ParseLSN(string(r.Rows[0][1]))
	}
	if err != nil {
		return ApplyResult{}, fmt.Errorf("after applying changes: %w", err)
	}
	return res, nil
}

func (a *TableApplier) target(rel *Relation) (string, bool) {
	schema, table, ok := rel.Schema, rel.Table, true
	if a.Target != nil {
		schema, table, ok = a.Target(rel)
	}
	return pgx.Identifier{schema, table}.Sanitize(), ok
}

func (a *TableApplier) prepare(ctx context.Context, pc *pgconn.PgConn, sql string) (string, error) {
	if name, ok := a.stmts[sql]; ok {
		return name, nil
	}
	name := fmt.Sprintf("pgtenant_stream_%d", len(a.stmts)+1)
	if _, err := pc.Prepare(ctx, name, sql, nil); err != nil {
		return "", fmt.Errorf("prepare %q: %w", sql, err)
	}
	a.stmts[sql] = name
	return name, nil
}

func (a *TableApplier) truncateSQL(c *Change) (string, bool) {
	var names []string
	for _, rel := range c.Truncated {
		if n, ok := a.target(rel); ok {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		return "", false
	}
	sql := "TRUNCATE " + strings.Join(names, ", ")
	if c.RestartIdentity {
		sql += " RESTART IDENTITY"
	}
	if c.Cascade {
		sql += " CASCADE"
	}
	return sql, true
}

// ErrPositionMoved is returned by a Guarded applier whose transaction found
// the recorded position moved by another applier of the same name (one
// left by a killed stream): it rolled back, applying nothing. Load the
// position again and stream from there.
var ErrPositionMoved = errors.New("40001: the stream position was moved by another applier; this transaction rolled back (start the stream again: it resumes from the recorded position)")

// ErrNoIdentity is returned for an update or delete of a table without a
// replica identity (no primary key, REPLICA IDENTITY NOTHING): its rows cannot be found on the target.
var ErrNoIdentity = errors.New("table has no replica identity")

// statement builds the SQL and text parameters of one row change.
func (a *TableApplier) statement(c *Change) (string, [][]byte, bool, error) {
	table, ok := a.target(c.Rel)
	if !ok {
		return "", nil, false, nil
	}
	cols := c.Rel.Columns
	var sb strings.Builder
	var params [][]byte
	param := func(v Value) string {
		if v.Null {
			params = append(params, nil)
		} else {
			params = append(params, v.Data)
		}
		return fmt.Sprintf("$%d", len(params))
	}
	switch c.Kind {
	case Insert:
		sb.WriteString("INSERT INTO " + table + " (")
		var vals []string
		for i, col := range cols {
			if i > 0 {
				sb.WriteString(", ")
			}
			sb.WriteString(pgx.Identifier{col.Name}.Sanitize())
			vals = append(vals, param(c.New[i]))
		}
		// OVERRIDING SYSTEM VALUE: GENERATED ALWAYS identity columns take the source's values.
		sb.WriteString(") OVERRIDING SYSTEM VALUE VALUES (" + strings.Join(vals, ", ") + ")")
		return sb.String(), params, true, nil
	case Update:
		sb.WriteString("UPDATE " + table + " SET ")
		n := 0
		for i, col := range cols {
			// Unchanged TOAST values are not sent; an unchanged key is left
			// alone (a GENERATED ALWAYS identity column may not be set).
			if c.New[i].Unchanged || (col.Key && c.Old == nil) {
				continue
			}
			if n > 0 {
				sb.WriteString(", ")
			}
			n++
			sb.WriteString(pgx.Identifier{col.Name}.Sanitize() + " = " + param(c.New[i]))
		}
		if n == 0 {
			return "", nil, false, nil
		}
	case Delete:
		sb.WriteString("DELETE FROM " + table)
	default:
		return "", nil, false, fmt.Errorf("apply: unexpected change kind %s", c.Kind)
	}
	where, err := a.where(c, param)
	if err != nil {
		return "", nil, false, err
	}
	if c.Rel.Identity == 'f' {
		// Without a key, change one row of those that match, like the apply worker.
		sb.WriteString(" WHERE ctid = (SELECT ctid FROM " + table + " WHERE " + where + " LIMIT 1)")
	} else {
		sb.WriteString(" WHERE " + where)
	}
	return sb.String(), params, true, nil
}

func (a *TableApplier) where(c *Change, param func(Value) string) (string, error) {
	key := c.Key()
	var conds []string
	for i, col := range c.Rel.Columns {
		if !col.Key || key[i].Unchanged {
			continue
		}
		name := pgx.Identifier{col.Name}.Sanitize()
		if c.Rel.Identity == 'f' {
			conds = append(conds, name+" IS NOT DISTINCT FROM "+param(key[i]))
		} else {
			conds = append(conds, name+" = "+param(key[i]))
		}
	}
	if len(conds) == 0 {
		return "", fmt.Errorf("apply %s to %s.%s: %w; add a primary key or set REPLICA IDENTITY FULL on the source",
			c.Kind, c.Rel.Schema, c.Rel.Table, ErrNoIdentity)
	}
	return strings.Join(conds, " AND "), nil
}

func isUndefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000")
}
