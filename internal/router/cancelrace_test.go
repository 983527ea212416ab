package router

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// A client's cancel request that is still on its way when the client's
// backend goes back to the pool (its query ended, or in session mode the
// client left) must not cancel the next client's query on that backend.
// The test parks the cancel right after the router picked the backend,
// lets the backend reach client B, then lets the cancel go: B's query must
// finish. (Seen as a rare failure of pgx's
// TestConnContextCanceledCancelsRunningQueryOnServer next to its cancel
// stress tests.)
func TestCancelAfterRelease(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		s := startRouter(t, Config{PoolMode: mode, Pool: PoolConfig{MaxSize: 1, WaitTimeout: 30 * time.Second}}, nil)
		entered, proceed := make(chan struct{}), make(chan struct{})
		s.testHookCancel = func() {
			entered <- struct{}{}
			<-proceed
		}
		a, err := pgconn.Connect(ctx(t), routerURL(s, "t2"))
		if err != nil {
			t.Fatal(err)
		}
		aDone := make(chan error, 1)
		go func() {
			_, err := a.Exec(context.Background(), "SELECT pg_sleep(2) AS cancel_race_a").ReadAll()
			aDone <- err
		}()
		waitActive(t, "cancel_race_a", 30*time.Second)
		go a.CancelRequest(context.Background())
		select {
		case <-entered: // the router holds A's backend for the cancel
		case <-time.After(30 * time.Second):
			t.Fatalf("%s mode: the cancel request for A's running query never reached its backend", mode)
		}
		if mode == PoolSession {
			if err := <-aDone; err != nil {
				t.Fatalf("%s mode: A's query: %v", mode, err)
			}
			a.Close(ctx(t)) // its backend goes to the next client
		}
		b, err := pgconn.Connect(ctx(t), routerURL(s, "t2"))
		if err != nil {
			t.Fatal(err)
		}
		bDone := make(chan error, 1)
		go func() {
			_, err := b.Exec(context.Background(), "SELECT pg_sleep(2) AS cancel_race_b").ReadAll()
			bDone <- err
		}()
		// Without the fix B runs on A's backend now; with it B waits for
		// the backend until the cancel is sent.
		waitActive(t, "cancel_race_b", 3*time.Second)
		close(proceed)
		if mode == PoolTransaction {
			if err := <-aDone; err != nil && pgCode(err) != "57014" {
				t.Fatalf("%s mode: A's query: %v", mode, err)
			}
			a.Close(ctx(t))
		}
		if err := <-bDone; err != nil {
			t.Errorf("%s mode: B's query, on the backend A's late cancel was for: %v (want no error)", mode, err)
		}
		b.Close(ctx(t))
	}
}

// waitActive waits up to d for a backend on node a to run a query
// containing marker; it returns either way.
func waitActive(t *testing.T, marker string, d time.Duration) {
	t.Helper()
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var n int
		err := pgxQueryRow(t, nodeDSN(nodeA), "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%"+marker+"%' AND pid <> pg_backend_pid()", &n)
		if err == nil && n > 0 {
			return
		}
	}
}
