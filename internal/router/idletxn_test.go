package router

import (
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestIdleInTransactionFromLastStatement: the idle-in-transaction timeout
// runs from the client's last statement, not from the transaction's first:
// inside a transaction the router keeps an earlier wait's read deadline
// when it comes first (loop.go, waitEnd) and reads on past it, so a
// transaction whose statements each come well within the timeout lives
// longer than the timeout; a silence longer than it still ends the client.
func TestIdleInTransactionFromLastStatement(t *testing.T) {
	const timeout = time.Second
	for _, pm := range poolModes {
		t.Run(string(pm), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: pm, IdleInTransactionTimeout: timeout}, nil)
			ctx := ctx(t)
			for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
				c := connect(t, s, "t3", mode)
				tx, err := c.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				start := time.Now()
				for i := 0; time.Since(start) < 2*timeout; i++ {
					time.Sleep(timeout / 5)
					var n int
					if err := tx.QueryRow(ctx, "SELECT $1::int FROM whoami", i).Scan(&n); err != nil || n != i {
						t.Fatalf("statement %d, %v into the transaction: %d, %v", i, time.Since(start).Round(time.Millisecond), n, err)
					}
				}
				time.Sleep(timeout + timeout/2)
				_, err = tx.Exec(ctx, "SELECT 1 FROM whoami")
				var pe *pgconn.PgError
				if err == nil || (errors.As(err, &pe) && pe.Code != "25P03") {
					t.Fatalf("after %v of silence: %v, want 25P03 or a closed connection", timeout+timeout/2, err)
				}
			}
		})
	}
}
