package router

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"
)

// A client that gives up on a COPY FROM STDIN part way (pgconn's CopyFrom
// with a context that expires closes the socket while its data still
// streams, as in pgx's TestConnCopyFromCanceled) leaves no backend in COPY
// and no client counted: the backend, waiting for the rest of the data, is
// closed, and nothing of the COPY is kept.
func TestCopyAbandoned(t *testing.T) {
	for _, mode := range []PoolMode{PoolSession, PoolTransaction} {
		s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 2}}, nil)
		for i := 0; i < 3; i++ {
			c := tcConnect(t, s, "t2")
			pr, pw := io.Pipe()
			go func() {
				for j := 0; ; j++ {
					if _, err := fmt.Fprintf(pw, "copy_abandoned %d\n", j); err != nil {
						return
					}
					time.Sleep(time.Microsecond)
				}
			}()
			cctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			_, err := c.pc.CopyFrom(cctx, pr, "COPY sink (body) FROM STDIN")
			cancel()
			pr.Close()
			if err == nil || !c.pc.IsClosed() {
				t.Fatalf("%s mode: CopyFrom with an expired context: %v, closed %v; want an error and the connection closed", mode, err, c.pc.IsClosed())
			}
		}
		waitFor(t, mode, "the router counts no client", func() bool { return len(s.Clients()) == 0 })
		waitFor(t, mode, "no backend left in the abandoned COPY", func() bool {
			var n int
			err := pgxQueryRow(t, nodeDSN(nodeA), "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY sink (body)%' AND state <> 'idle' AND pid <> pg_backend_pid()", &n)
			return err == nil && n == 0
		})
	}
	var n int
	if err := pgxQueryRow(t, nodeDSN(nodeA), "SELECT count(*) FROM shard_0002.sink WHERE body LIKE 'copy_abandoned%'", &n); err != nil || n != 0 {
		t.Errorf("rows of the abandoned COPYs: %d (%v), want 0", n, err)
	}
}
