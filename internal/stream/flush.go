package stream

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// FlushSQL makes the transaction it runs in write WAL, so that its commit
// under synchronous_commit = on waits until the server's WAL is flushed up
// to it (past every transaction committed there before). A transaction
// that wrote no WAL before its commit record does not wait for the flush,
// and one with only a transaction id (pg_current_xact_id()) writes none; a
// transactional logical message does (no table, executable by any role:
// no privilege on hosted PostgreSQL; logical slots on the server see an
// empty transaction, which pgoutput skips).
const FlushSQL = `SELECT pg_catalog.pg_logical_emit_message(true, 'pgtenant_flush', '')`

// QueueFlush queues on b, as its own transaction, what Flush sends: after
// the batch ran, the server's WAL is flushed past every transaction
// committed there before the batch, and flushed holds the flushed
// position (pg_current_wal_flush_lsn) as text. No transaction may be open
// when the batch starts.
func QueueFlush(b *pgx.Batch, flushed *string) {
	b.Queue(`BEGIN`)
	b.Queue(`SET LOCAL synchronous_commit = on`)
	b.Queue(FlushSQL)
	b.Queue(`COMMIT`)
	b.Queue(`SELECT pg_catalog.pg_current_wal_flush_lsn()::text`).QueryRow(func(r pgx.Row) error { return r.Scan(flushed) })
}

// Flush makes everything committed on conn's server so far durable (in
// one round trip: QueueFlush) and returns the server's flushed WAL
// position, past all of it. Appliers that commit without waiting for the
// flush (ApplyOptions.Async) call it before they rest anything on their
// changes.
func Flush(ctx context.Context, conn *pgx.Conn) (LSN, error) {
	var flushed string
	b := &pgx.Batch{}
	QueueFlush(b, &flushed)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		if conn.PgConn().TxStatus() != 'I' && !conn.IsClosed() {
			_, _ = conn.Exec(context.WithoutCancel(ctx), `ROLLBACK`)
		}
		return 0, fmt.Errorf("flush the WAL: %w", err)
	}
	return ParseLSN(flushed)
}
