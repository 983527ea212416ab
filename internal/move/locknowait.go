package move

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// execLockedNowait runs stmt in a transaction that first takes table's lock
// (table already quoted) in mode with NOWAIT, retrying for up to patience
// while the table is in use. The request never waits in the table's lock
// queue, where it would hold up every writer that comes after it. It returns
// the last 55P03 (lock not available) when the table stays busy.
func execLockedNowait(ctx context.Context, conn *pgx.Conn, table, mode, stmt string, patience time.Duration) error {
	deadline := time.Now().Add(patience)
	delay := 2 * time.Millisecond
	for {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `LOCK TABLE `+table+` IN `+mode+` MODE NOWAIT`); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, stmt)
			return err
		})
		if err == nil || !isPgCode(err, "55P03") || time.Now().After(deadline) {
			return err
		}
		if err := sleep(ctx, delay); err != nil {
			return err
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}
