package tablelock

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Lock modes (as pg_locks names them) that conflict with SHARE UPDATE
// EXCLUSIVE, SHARE ROW EXCLUSIVE (CREATE TRIGGER), EXCLUSIVE and ACCESS
// EXCLUSIVE (DROP TRIGGER), for Failed. Read only.
var (
	ConflictsShareUpdateExclusive = []string{"ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}
	ConflictsShareRowExclusive    = append([]string{"RowExclusiveLock"}, ConflictsShareUpdateExclusive...)
	ConflictsExclusive            = append([]string{"RowShareLock"}, ConflictsShareRowExclusive...)
	ConflictsAccessExclusive      = append([]string{"AccessShareLock"}, ConflictsExclusive...)
)

// CancelAutovacuum cancels the autovacuum workers busy with the schemas'
// tables in conn's database. A role that may not signal autovacuum gets
// 42501 (not a superuser, and before PostgreSQL 18 without
// pg_signal_autovacuum_worker): the caller then leaves it to Postgres,
// which cancels a worker for a lock request that waited deadlock_timeout
// (QueueHoldOff waits longer).
func CancelAutovacuum(ctx context.Context, conn *pgx.Conn, schemas []string) error {
	_, err := conn.Exec(ctx, `SELECT pg_cancel_backend(a.pid) FROM pg_stat_activity a
		WHERE a.backend_type = 'autovacuum worker' AND a.datname = current_database() AND EXISTS (SELECT 1 FROM pg_locks l
			JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE l.pid = a.pid AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND n.nspname = ANY($1))`, schemas)
	if err != nil {
		return fmt.Errorf("cancel autovacuum on the tables of %s: %w", strings.Join(schemas, ", "), err)
	}
	return nil
}

// QueueHoldOff queues on b, for a transaction begun before them, the
// statements that take SHARE UPDATE EXCLUSIVE on tables (quoted,
// qualified; none: only the timeout is set), with the transaction's
// lock_timeout set to the greater of wait and deadlock_timeout + extra,
// which is read into *timeout (as SHOW prints it) when b runs.
func QueueHoldOff(b *pgx.Batch, tables []string, wait, extra time.Duration, timeout *string) {
	b.Queue(`SELECT set_config('lock_timeout', greatest($1::bigint, (SELECT setting::bigint FROM pg_settings WHERE name = 'deadlock_timeout') + $2::bigint) || 'ms', true)`,
		wait.Milliseconds(), extra.Milliseconds())
	b.Queue(`SELECT current_setting('lock_timeout')`).QueryRow(func(r pgx.Row) error { return r.Scan(timeout) })
	if len(tables) > 0 {
		b.Queue(`LOCK TABLE ` + strings.Join(tables, ", ") + ` IN SHARE UPDATE EXCLUSIVE MODE`)
	}
}

// Failed describes a lock that could not be taken on node (at dsn), what
// saying which: after 55P03 (lock_timeout) or 40P01 (deadlock), which of
// the schemas' tables other sessions hold in one of modes, and who they
// are as far as pg_stat_activity shows the role of dsn. The result is an
// *Error unwrapping to err.
func Failed(ctx context.Context, node, dsn, what string, schemas, modes []string, err error) error {
	le := &Error{Node: node, What: what, Err: err}
	if !isCode(err, "55P03") && !isCode(err, "40P01") {
		return le
	}
	le.Holders = holders(ctx, dsn, schemas, modes)
	return le
}

// holders lists the sessions holding locks in modes on the schemas' tables
// at dsn (a connection of its own: the failed one is in an aborted
// transaction): pid, backend type, role, state, application and
// transaction age as far as dsn's role may see them; never the query text,
// which may carry tenants' data into an error recorded in the catalog.
// Best effort: nil when the server does not answer.
func holders(ctx context.Context, dsn string, schemas, modes []string) []string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return nil
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT l.relation::regclass::text, l.mode, l.pid, coalesce(a.backend_type, ''), coalesce(a.usename::text, ''),
			coalesce(a.state, ''), coalesce(extract(epoch FROM now() - a.xact_start)::float8, -1), coalesce(a.application_name, '')
		FROM pg_locks l JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
		LEFT JOIN pg_stat_activity a ON a.pid = l.pid
		WHERE l.locktype = 'relation' AND c.relkind IN ('r', 'p') AND l.granted AND l.pid <> pg_backend_pid() AND n.nspname = ANY($1) AND l.mode = ANY($2)
			AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
		ORDER BY 1, 3 LIMIT 5`, schemas, modes)
	if err != nil {
		return nil
	}
	var out []string
	var table, mode, kind, user, state, app string
	var pid int32
	var age float64
	_, _ = pgx.ForEachRow(rows, []any{&table, &mode, &pid, &kind, &user, &state, &age, &app}, func() error {
		var who []string
		for _, s := range []string{kind, user, state} {
			if s != "" {
				who = append(who, s)
			}
		}
		if app != "" {
			who = append(who, fmt.Sprintf("application %q", app))
		}
		if age >= 0 {
			who = append(who, fmt.Sprintf("transaction %.1fs old", age))
		}
		if len(who) == 0 { // usename is visible to every role, so no user means a background worker
			who = append(who, "no user: autovacuum or another background worker; details not visible to this role")
		}
		out = append(out, fmt.Sprintf("%s in %s by pid %d (%s)", table, mode, pid, strings.Join(who, ", ")))
		return nil
	})
	return out
}

// Error is a lock on a node's tables that could not be taken. It unwraps
// to the server's error (SQLSTATE 55P03 or 40P01 when the wait ran out).
type Error struct {
	// Node names the server; What says which lock, and why it was wanted.
	Node, What string
	// Holders describes the sessions holding conflicting locks (at most
	// five; none when they let go before they were looked up).
	Holders []string
	// Err is the server's error.
	Err error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("node %s: %s: %v", e.Node, e.What, e.Err)
	if len(e.Holders) > 0 {
		s += "; held by: " + strings.Join(e.Holders, "; ") + "; retry once they let go"
	} else if isCode(e.Err, "55P03") || isCode(e.Err, "40P01") {
		s += "; no conflicting lock left to name"
	}
	return s
}

// Unwrap gives the server's error.
func (e *Error) Unwrap() error { return e.Err }

func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}
