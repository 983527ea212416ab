package pool

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestConnectFailureWaits: a node that refuses new connections (its role's
// connection limit reached) while the pool has one open. Checkouts that
// find no idle connection wait for it instead of failing with the connect
// error, and get it when it comes back. When it is discarded instead, the
// one left for the pool fails, and so do the checkouts queued behind it,
// at once, with the server's refusal (not a wait timeout).
// roleDSN creates role (LOGIN, with the given clauses) in a fresh database
// and returns a superuser connection to alter it and the database's DSN as
// the role.
func roleDSN(t *testing.T, role, clauses string) (*pgx.Conn, string) {
	t.Helper()
	ctx := context.Background()
	dsn := srv.NewDatabase(t)
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close(ctx) })
	for _, q := range []string{"DROP ROLE IF EXISTS " + role, "CREATE ROLE " + role + " LOGIN " + clauses} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	return admin, strings.Replace(dsn, "postgres@", role+"@", 1)
}

func TestConnectFailureWaits(t *testing.T) {
	ctx := context.Background()
	const role = "pool_connfail"
	admin, dsn := roleDSN(t, role, "")
	p := New("n1", dsn, Config{MaxSize: 3, WaitTimeout: time.Minute}, nil)
	defer p.Close()
	a, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// From now on the server refuses the role any new connection.
	if _, err := admin.Exec(ctx, "ALTER ROLE "+role+" CONNECTION LIMIT 0"); err != nil {
		t.Fatal(err)
	}
	type got struct {
		c   *Conn
		err error
	}
	acquire := func() chan got {
		ch := make(chan got, 1)
		go func() {
			c, err := p.Acquire(ctx)
			ch <- got{c, err}
		}()
		return ch
	}
	waitQueued := func(n int) {
		t.Helper()
		for i := 0; p.Stats().Waiting < n; i++ {
			if i == 2000 {
				t.Fatalf("%d checkouts waiting, want %d: %+v", p.Stats().Waiting, n, p.Stats())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	b := acquire()
	waitQueued(1)
	if st := p.Stats(); st.ConnectErrs != 1 || st.Total != 1 {
		t.Fatalf("after the refused connect: %+v, want 1 connect error and 1 connection", st)
	}
	a.Release()
	if r := <-b; r.err != nil || r.c != a {
		t.Fatalf("waiting checkout: %v, %v; want the released connection", r.c, r.err)
	}

	// The one connection goes: the checkouts waiting for it fail.
	c1, c2 := acquire(), acquire()
	waitQueued(2)
	a.MarkBroken()
	a.Release()
	for i, ch := range []chan got{c1, c2} {
		r := <-ch
		var ce *ConnectError
		if !errors.As(r.err, &ce) || RefusedCode(r.err) != "53300" {
			t.Fatalf("checkout %d after the last connection went: %v, want the server's refusal 53300", i, r.err)
		}
	}
	if st := p.Stats(); st.Total != 0 || st.Waiting != 0 {
		t.Fatalf("pool after: %+v", st)
	}
}

// TestConnectBackoff: the wait after failed connects in a row doubles from
// 1 s to 16 s, and jitter picks it in the step's upper half.
func TestConnectBackoff(t *testing.T) {
	for _, c := range []struct {
		fails int
		r     float64
		want  time.Duration
	}{
		{1, 0, 500 * time.Millisecond},
		{1, 0.5, 750 * time.Millisecond},
		{2, 0, time.Second},
		{3, 0.999, 4 * time.Second},
		{4, 0, 4 * time.Second},
		{5, 0, 8 * time.Second},
		{1000, 0.5, 12 * time.Second},
	} {
		got := connectBackoff(c.fails, c.r)
		if c.r > 0.99 {
			got = got.Round(10 * time.Millisecond)
		}
		if got != c.want {
			t.Errorf("connectBackoff(%d, %v) = %v, want %v", c.fails, c.r, got, c.want)
		}
	}
}

// TestConnectBackoffGrowsAndResets: each refused connect in a row puts the
// pool's next try further off (within the step's jitter), and a connect
// that succeeds starts over.
func TestConnectBackoffGrowsAndResets(t *testing.T) {
	ctx := context.Background()
	const role = "pool_backoff"
	admin, dsn := roleDSN(t, role, "CONNECTION LIMIT 0")
	p := New("n1", dsn, Config{MaxSize: 3}, nil)
	defer p.Close()
	for fails := 1; fails <= 6; fails++ {
		before := time.Now()
		if _, err := p.Acquire(ctx); RefusedCode(err) != "53300" {
			t.Fatalf("checkout %d: %v, want the server's refusal 53300", fails, err)
		}
		after := time.Now()
		p.mu.Lock()
		retryAt := p.retryAt
		p.mu.Unlock()
		lo, hi := before.Add(connectBackoff(fails, 0)), after.Add(connectBackoff(fails, 1))
		if got := int(p.failStreak.Load()); got != fails || retryAt.Before(lo) || retryAt.After(hi) {
			t.Errorf("after %d refusals: streak %d, next try in %v; want %v to %v", fails, got,
				retryAt.Sub(before), connectBackoff(fails, 0), connectBackoff(fails, 1))
		}
	}
	if _, err := admin.Exec(ctx, "ALTER ROLE "+role+" CONNECTION LIMIT -1"); err != nil {
		t.Fatal(err)
	}
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c.Release()
	if got := p.failStreak.Load(); got != 0 {
		t.Errorf("after a connect that succeeded the streak is %d, want 0", got)
	}
}
