package router

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestReview15IdleTxnAfterCopy: copyIn clears the client's read deadline
// (a COPY is not idle); the loop's lazy deadline (loop.go, waitEnd) kept
// the earlier wait's deadline as if it were still set, so a client idle in
// a transaction after a COPY FROM STDIN was never ended: its backend held
// and its locks kept for good. The silence must end it with 25P03.
func TestReview15IdleTxnAfterCopy(t *testing.T) {
	const timeout = time.Second
	for _, pm := range poolModes {
		t.Run(string(pm), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: pm, IdleInTransactionTimeout: timeout}, nil)
			ctx := ctx(t)
			c := connect(t, s, "t3", pgx.QueryExecModeSimpleProtocol)
			if _, err := c.Exec(ctx, "BEGIN"); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Exec(ctx, "SELECT 1 FROM whoami"); err != nil {
				t.Fatal(err)
			}
			tag, err := c.PgConn().CopyFrom(ctx, strings.NewReader("review15\n"), "COPY sink (body) FROM STDIN")
			if err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("copy: %v, %v", tag, err)
			}
			// Silent for longer than the timeout; then the connection must
			// have been ended (the read below, bounded by ctx, would
			// otherwise run a statement in the still-open transaction).
			time.Sleep(3 * timeout)
			_, err = c.Exec(ctx, "SELECT 1 FROM whoami")
			var pe *pgconn.PgError
			if err == nil || (errors.As(err, &pe) && pe.Code != "25P03") {
				t.Fatalf("after %v of silence in a transaction after COPY: %v, want 25P03 or a closed connection", 3*timeout, err)
			}
			// Nothing of the transaction committed.
			d := connect(t, s, "t3", pgx.QueryExecModeSimpleProtocol)
			var n int
			if err := d.QueryRow(ctx, "SELECT count(*) FROM sink WHERE body = 'review15'").Scan(&n); err != nil || n != 0 {
				t.Fatalf("rows of the timed-out transaction: %d, %v; want 0", n, err)
			}
		})
	}
}
