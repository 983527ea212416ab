package move

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Waiting for the shard's tables before the pause.
//
// Under the routers' pause a fence locks the shard's tables IN EXCLUSIVE
// MODE with a short lock_timeout (Config.LockTimeout, 1s): the pause is the
// clients' wait, so that lock may not wait long. What most often holds a
// conflicting lock once the routers drained the shard is an autovacuum
// worker (SHARE UPDATE EXCLUSIVE) on a freshly loaded or busy table.
// Postgres cancels a worker that blocks a lock request only once the
// request has waited deadlock_timeout (1s), no sooner than that
// lock_timeout; and a role that is not a superuser may not cancel one
// itself before PostgreSQL 18 (pg_signal_autovacuum_worker).
//
// So the fence's transaction starts before the pause, with the shard still
// taking writes (preLock): it cancels what autovacuum workers it may and
// takes SHARE UPDATE EXCLUSIVE on the tables, autovacuum's own lock, which
// conflicts with no reader or writer (ROW EXCLUSIVE). That wait may outlast
// deadlock_timeout, for Postgres to cancel a worker, without stalling any
// client. Held from then on, it keeps autovacuum off the tables (a worker
// skips a table it cannot lock), and the EXCLUSIVE lock under the pause is
// an upgrade in the same transaction that waits only for sessions that
// bypassed the routers, for LockTimeout as before.

// Lock modes (as pg_locks names them) that conflict with the fence's locks.
var (
	conflictsShareUpdateExclusive = []string{"ShareUpdateExclusiveLock", "ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}
	conflictsExclusive            = append([]string{"RowShareLock", "RowExclusiveLock"}, conflictsShareUpdateExclusive...)
)

// preLock begins the fence's transaction on conn (to node, at dsn),
// cancels the autovacuum workers on the schemas' tables (best effort) and
// takes SHARE UPDATE EXCLUSIVE on tables (quoted, qualified), waiting up
// to FenceTimeout and at least deadlock_timeout + LockTimeout. On error the
// transaction is rolled back and the error names who holds the tables.
func (m *Mover) preLock(ctx context.Context, conn *pgx.Conn, node, dsn string, schemas, tables []string, logArgs ...any) error {
	if len(tables) > 0 {
		m.cancelAutovacuum(ctx, conn, schemas, logArgs...)
	}
	wait := "?"
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	// Idle in transaction until the routers drained the shard: a node's
	// idle_in_transaction_session_timeout must not end it.
	b.Queue(`SELECT set_config('idle_in_transaction_session_timeout', '0', true),
		set_config('lock_timeout', greatest($1::bigint, (SELECT setting::bigint FROM pg_settings WHERE name = 'deadlock_timeout') + $2::bigint) || 'ms', true)`,
		m.cfg.FenceTimeout.Milliseconds(), m.cfg.LockTimeout.Milliseconds())
	b.Queue(`SELECT current_setting('lock_timeout')`).QueryRow(func(r pgx.Row) error { return r.Scan(&wait) })
	if len(tables) > 0 {
		b.Queue(`LOCK TABLE ` + strings.Join(tables, ", ") + ` IN SHARE UPDATE EXCLUSIVE MODE`)
	}
	t0 := time.Now()
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		m.rollbackOpen(ctx, conn, logArgs...)
		return lockFailed(ctx, node, dsn, fmt.Sprintf("hold autovacuum off the shard's tables (lock_timeout %s)", wait), schemas, conflictsShareUpdateExclusive, err)
	}
	if d := time.Since(t0); d > 100*time.Millisecond { // autovacuum (or a manual VACUUM, ANALYZE, DDL) had the tables
		m.log.Info("waited for the shard's tables before the pause", append(logArgs, "node", node, "wait", d)...)
	}
	return nil
}

// beginPreLocked is preLock for the move's tables (names in its schema) on conn to node, at dsn.
func (m *Mover) beginPreLocked(ctx context.Context, conn *pgx.Conn, mv *moveRun, node, dsn string, names []string) error {
	return m.preLock(ctx, conn, node, dsn, []string{mv.Schema}, qualified(mv.Schema, names), "move", mv.ID, "shard", mv.Shard)
}

// rollbackOpen rolls back the transaction open on conn, if any.
func (m *Mover) rollbackOpen(ctx context.Context, conn *pgx.Conn, logArgs ...any) {
	if conn.IsClosed() || conn.PgConn().TxStatus() == 'I' {
		return
	}
	if _, err := conn.Exec(context.WithoutCancel(ctx), `ROLLBACK`); err != nil {
		m.log.Warn("roll back the fence's transaction", append(logArgs, "err", err)...)
	}
}

// qualified quotes each of names in schema.
func qualified(schema string, names []string) []string {
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = ident(schema, n)
	}
	return q
}

// cancelAutovacuum cancels the autovacuum workers busy with the schemas'
// tables on conn's server. Best effort: a role that may not signal
// autovacuum (42501: not a superuser, and before PostgreSQL 18 without
// pg_signal_autovacuum_worker) leaves it to Postgres, which cancels a
// worker for a lock request that waited deadlock_timeout (preLock waits
// longer).
func (m *Mover) cancelAutovacuum(ctx context.Context, conn *pgx.Conn, schemas []string, logArgs ...any) {
	_, err := conn.Exec(ctx, `SELECT pg_cancel_backend(a.pid) FROM pg_stat_activity a
		WHERE a.backend_type = 'autovacuum worker' AND a.datname = current_database() AND EXISTS (SELECT 1 FROM pg_locks l
			JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE l.pid = a.pid AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) AND n.nspname = ANY($1))`, schemas)
	switch {
	case err == nil:
	case isPgCode(err, "42501"):
		m.log.Info("may not cancel autovacuum on the shard's tables; waiting for Postgres to cancel it", append(logArgs, "err", err)...)
	default:
		m.log.Warn("cancel autovacuum on the shard's tables", append(logArgs, "err", err)...)
	}
}

// lockFailed describes a lock the fence could not take on node (at dsn):
// after 55P03 (lock_timeout) or 40P01 (deadlock), which of the schemas'
// tables other sessions hold in one of modes, and who they are as far as
// pg_stat_activity shows the node's role.
func lockFailed(ctx context.Context, node, dsn, what string, schemas, modes []string, err error) error {
	le := &lockError{node: node, what: what, err: err}
	if !isPgCode(err, "55P03") && !isPgCode(err, "40P01") {
		return le
	}
	le.holders = lockHolders(ctx, node, dsn, schemas, modes)
	return le
}

// lockHolders lists the sessions holding locks in modes on the schemas'
// tables on node, at dsn (a connection of its own: the fence's is in an
// aborted transaction): pid, backend type, role, state, application and
// transaction age as far as the node's role may see them; never the query
// text, which may carry tenants' data into the moves table. Best effort:
// nil when the node does not answer.
func lockHolders(ctx context.Context, node, dsn string, schemas, modes []string) []string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	conn, err := connect(ctx, dsn, "node "+node)
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

// lockError is a fence that could not lock the shard's tables on a node.
// It unwraps to the server's error (SQLSTATE 55P03 or 40P01 when the wait
// ran out).
type lockError struct {
	node, what string
	holders    []string
	err        error
}

func (e *lockError) Error() string {
	s := fmt.Sprintf("node %s: %s: %v", e.node, e.what, e.err)
	if len(e.holders) > 0 {
		s += "; held by: " + strings.Join(e.holders, "; ") + "; retry once they let go"
	} else if isPgCode(e.err, "55P03") || isPgCode(e.err, "40P01") {
		s += "; no conflicting lock left to name"
	}
	return s
}

func (e *lockError) Unwrap() error { return e.err }
