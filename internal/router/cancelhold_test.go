package router

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// PostgreSQL answers a CancelRequest by signalling the backend twice
// (postmaster.c's signal_child: SIGINT to the pid, then to its process
// group). When the first SIGINT has ended the statement and the client's
// next statement reaches the backend before the second, that one is
// cancelled too. The router holds a backend's next message until the
// server has closed the cancel connection (both signals sent by then; a
// backend waiting for a command ignores a cancel), so through it the next
// statement is never cancelled. Each run: a statement that tells the
// client it is running (a NOTICE) and sleeps, cancelled at once; its 57014;
// at once a next statement, which must succeed. Several clients at a time,
// to make the scheduling that loses the race (the cancel's sender
// preempted between its two signals) common on a small machine.
func TestCancelNextStatementHeld(t *testing.T) {
	for _, mode := range []PoolMode{PoolSession, PoolTransaction} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode}, nil)
			runs, cancelled := cancelNextRuns(t, routerURL(s, "t2"), 4, 40)
			t.Logf("%s mode: next statement cancelled in %d of %d runs", mode, cancelled, runs)
			if cancelled > 0 {
				t.Errorf("%s mode: the statement after a cancelled one was cancelled too in %d of %d runs, want 0", mode, cancelled, runs)
			}
		})
	}
}

// cancelNextRuns runs clients connections to url at once, each iters
// times: a statement cancelled while it runs, then the next statement. It
// returns the runs made and how many of the next statements got 57014.
func cancelNextRuns(t *testing.T, url string, clients, iters int) (runs, cancelled int) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for k := 0; k < clients; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := cancelNextClient(url, k, iters)
			mu.Lock()
			runs += iters
			cancelled += n
			mu.Unlock()
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", k, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	return runs, cancelled
}

// cancelNextClient is one client of cancelNextRuns.
func cancelNextClient(url string, k, iters int) (cancelled int, err error) {
	ctx, stop := context.WithTimeout(context.Background(), 2*time.Minute)
	defer stop()
	cfg, err := pgconn.ParseConfig(url)
	if err != nil {
		return 0, err
	}
	var cancelDone chan error
	cfg.OnNotice = func(c *pgconn.PgConn, n *pgconn.Notice) {
		if n.Message == "running" {
			cancelDone = make(chan error, 1)
			go func() { cancelDone <- c.CancelRequest(ctx) }()
		}
	}
	c, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	defer c.Close(context.Background())
	for i := 0; i < iters; i++ {
		cancelDone = nil
		_, err := c.Exec(ctx, fmt.Sprintf("DO $$ BEGIN RAISE NOTICE 'running'; PERFORM pg_sleep(30); END $$ /* cancel_next %d %d */", k, i)).ReadAll()
		if code := pgCode(err); code != "57014" {
			return cancelled, fmt.Errorf("run %d: the statement cancelled: %v, want 57014", i, err)
		}
		// The next statement goes as soon as the cancelled one's error is
		// in, as a client's would, while the cancel request may still be
		// on its way.
		_, err = c.Exec(ctx, "SELECT pg_sleep(0.03)").ReadAll()
		switch {
		case pgCode(err) == "57014":
			cancelled++
		case err != nil:
			return cancelled, fmt.Errorf("run %d: the next statement: %w", i, err)
		}
		if cancelDone == nil {
			return cancelled, fmt.Errorf("run %d: no NOTICE from the statement", i)
		}
		if err := <-cancelDone; err != nil {
			return cancelled, fmt.Errorf("run %d: cancel request: %w", i, err)
		}
	}
	return cancelled, nil
}
