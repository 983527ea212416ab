package move

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/tablelock"
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
	conflictsShareUpdateExclusive = tablelock.ConflictsShareUpdateExclusive
	conflictsExclusive            = tablelock.ConflictsExclusive
)

// lockError is a fence that could not lock the shard's tables on a node.
type lockError = tablelock.Error

// lockFailed is tablelock.Failed: the error of a lock the fence could not take, naming who holds the tables.
func lockFailed(ctx context.Context, node, dsn, what string, schemas, modes []string, err error) error {
	return tablelock.Failed(ctx, node, dsn, what, schemas, modes, err)
}

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
	b.Queue(`SELECT set_config('idle_in_transaction_session_timeout', '0', true)`)
	tablelock.QueueHoldOff(b, tables, m.cfg.FenceTimeout, m.cfg.LockTimeout, &wait)
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

// cancelAutovacuum is tablelock.CancelAutovacuum, logged. Best effort: a
// role that may not signal autovacuum leaves it to Postgres, which cancels
// a worker for a lock request that waited deadlock_timeout (preLock waits
// longer).
func (m *Mover) cancelAutovacuum(ctx context.Context, conn *pgx.Conn, schemas []string, logArgs ...any) {
	switch err := tablelock.CancelAutovacuum(ctx, conn, schemas); {
	case err == nil:
	case isPgCode(err, "42501"):
		m.log.Info("may not cancel autovacuum on the shard's tables; waiting for Postgres to cancel it", append(logArgs, "err", err)...)
	default:
		m.log.Warn("cancel autovacuum on the shard's tables", append(logArgs, "err", err)...)
	}
}
