package router

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
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

// A client's cancel request still on its way to the backend as the
// client's query ends must not hold back the query's answer, and the
// backend must not reach another client before the request has reached
// the server. The test parks the cancel (the router has read A's backend
// for it) until A has its answer: before the fix the router waited for the
// cancel before flushing A's answer, up to 5 s (pgx's
// TestCancelRequestContextWatcherHandler then timed out under load). Then
// B waits for the pool's one backend, the cancel goes, and B's query on
// that backend must finish.
func TestLateCancelAnswerFirst(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction, Pool: PoolConfig{MaxSize: 1, WaitTimeout: 30 * time.Second}}, nil)
	entered, proceed, quit := make(chan struct{}), make(chan struct{}, 1), make(chan struct{})
	s.testHookCancel = func() {
		select {
		case entered <- struct{}{}:
		case <-quit:
			return
		}
		select {
		case <-proceed:
		case <-quit:
		}
	}
	t.Cleanup(func() { close(quit) }) // before the router stops
	a, err := pgconn.Connect(ctx(t), routerURL(s, "t2"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	b, err := pgconn.Connect(ctx(t), routerURL(s, "t2"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	// A's query waits for a lock the test holds, and ends when the test
	// lets it, with A's cancel request parked.
	lock, err := pgx.Connect(ctx(t), nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close(context.Background())
	const rounds = 10
	for i := 0; i < rounds; i++ {
		if _, err := lock.Exec(ctx(t), "SELECT pg_advisory_lock(7301)"); err != nil {
			t.Fatal(err)
		}
		aDone := make(chan error, 1)
		go func() {
			_, err := a.Exec(context.Background(), "SELECT pg_advisory_xact_lock(7301), 'late_cancel_a'").ReadAll()
			aDone <- err
		}()
		waitActive(t, "late_cancel_a", 30*time.Second)
		go a.CancelRequest(context.Background())
		select {
		case <-entered: // the router has read A's backend for the cancel
		case err := <-aDone:
			t.Fatalf("round %d: A's query ended before its cancel request reached the router: %v", i, err)
		case <-time.After(30 * time.Second):
			t.Fatalf("round %d: the cancel request for A's running query never reached its backend", i)
		}
		// A's query ends with the cancel still parked: its answer comes now.
		if _, err := lock.Exec(ctx(t), "SELECT pg_advisory_unlock(7301)"); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-aDone:
			if err != nil {
				proceed <- struct{}{}
				t.Fatalf("round %d: A's query, not cancelled yet: %v (want its rows)", i, err)
			}
		case <-time.After(30 * time.Second):
			proceed <- struct{}{}
			<-aDone
			t.Fatalf("round %d: A's answer waited for its late cancel request (it came only once the cancel was sent)", i)
		}
		bDone := make(chan error, 1)
		go func() {
			_, err := b.Exec(context.Background(), "SELECT pg_sleep(0.2) AS late_cancel_b").ReadAll()
			bDone <- err
		}()
		if !waitPoolWaiting(s, 30*time.Second) {
			t.Fatalf("round %d: B got the backend while A's cancel request for it was still on its way (B never waited for it)", i)
		}
		proceed <- struct{}{}
		if err := <-bDone; err != nil {
			t.Fatalf("round %d: B's query, on the backend A's late cancel was for: %v (want no error)", i, err)
		}
	}
	if got := counterValue(t, s, "pgtenant_router_late_cancel_releases_total"); got != rounds {
		t.Errorf("late cancel releases: got %v, want %d", got, rounds)
	}
}

// TestLateCancelStress sends cancel requests for client A's short queries
// at whatever moment they reach the router, while client B runs queries
// on the same single backend: B's must never be cancelled.
func TestLateCancelStress(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction, Pool: PoolConfig{MaxSize: 1, WaitTimeout: 30 * time.Second}}, nil)
	a, err := pgconn.Connect(ctx(t), routerURL(s, "t2"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	stop := make(chan struct{})
	bErr := make(chan error, 1)
	go func() {
		b, err := pgconn.Connect(context.Background(), routerURL(s, "t2"))
		if err != nil {
			bErr <- err
			return
		}
		defer b.Close(context.Background())
		for {
			select {
			case <-stop:
				bErr <- nil
				return
			default:
			}
			if _, err := b.Exec(context.Background(), "SELECT pg_sleep(0.002)").ReadAll(); err != nil {
				bErr <- err
				return
			}
		}
	}()
	for i := 0; i < 300; i++ {
		done := make(chan error, 1)
		go func() {
			_, err := a.Exec(context.Background(), "SELECT pg_sleep(0.002)").ReadAll()
			done <- err
		}()
		if i%3 != 0 {
			time.Sleep(time.Duration(i%7) * time.Millisecond)
		}
		a.CancelRequest(context.Background())
		if err := <-done; err != nil && pgCode(err) != "57014" {
			t.Fatalf("round %d: A's query: %v", i, err)
		}
	}
	close(stop)
	if err := <-bErr; err != nil {
		t.Fatalf("B's query, on the backend A's cancel requests raced for: %v (want no error)", err)
	}
}

// waitPoolWaiting waits up to d for a checkout to wait for a backend, and
// reports whether one did.
func waitPoolWaiting(s *Server, d time.Duration) bool {
	for deadline := time.Now().Add(d); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		for _, st := range s.PoolStats() {
			if st.Waiting > 0 {
				return true
			}
		}
	}
	return false
}

// counterValue returns the sum of the counter name's series in s's metrics.
func counterValue(t testing.TB, s *Server, name string) float64 {
	t.Helper()
	mfs, err := s.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var v float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue()
			}
		}
	}
	return v
}

// A cancel request the server did not confirm (here: it could not even be
// sent in time) may still reach the backend later: the backend is closed
// when its client's transaction ends, not given to the next client.
func TestCancelUnconfirmedClosesBackend(t *testing.T) {
	s := startRouter(t, Config{PoolMode: PoolTransaction, Pool: PoolConfig{MaxSize: 1, WaitTimeout: 30 * time.Second}}, nil)
	s.testCancelTimeout = time.Nanosecond
	a, err := pgconn.Connect(ctx(t), routerURL(s, "t2"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(context.Background())
	pid := func(c *pgconn.PgConn) string {
		rs, err := c.Exec(context.Background(), "SELECT pg_backend_pid()").ReadAll()
		if err != nil {
			t.Fatal(err)
		}
		return string(rs[0].Rows[0][0])
	}
	before := pid(a)
	lock, err := pgx.Connect(ctx(t), nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close(context.Background())
	if _, err := lock.Exec(ctx(t), "SELECT pg_advisory_lock(7302)"); err != nil {
		t.Fatal(err)
	}
	aDone := make(chan error, 1)
	go func() {
		_, err := a.Exec(context.Background(), "SELECT pg_advisory_xact_lock(7302), 'unconfirmed_cancel_a'").ReadAll()
		aDone <- err
	}()
	waitActive(t, "unconfirmed_cancel_a", 30*time.Second)
	if err := a.CancelRequest(context.Background()); err != nil { // returns once the router tried
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx(t), "SELECT pg_advisory_unlock(7302)"); err != nil {
		t.Fatal(err)
	}
	if err := <-aDone; err != nil {
		t.Fatalf("A's query, whose cancel request never went: %v", err)
	}
	if after := pid(a); after == before {
		t.Errorf("backend %s, with an unconfirmed cancel request on its way, was reused", before)
	}
}
