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
func TestConnectFailureWaits(t *testing.T) {
	ctx := context.Background()
	dsn := srv.NewDatabase(t)
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	const role = "pool_connfail"
	for _, q := range []string{"DROP ROLE IF EXISTS " + role, "CREATE ROLE " + role + " LOGIN"} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	p := New("n1", strings.Replace(dsn, "postgres@", role+"@", 1), Config{MaxSize: 3, WaitTimeout: time.Minute}, nil)
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
