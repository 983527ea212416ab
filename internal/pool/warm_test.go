package pool

import (
	"context"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestWarm: Warm opens what is missing of n idle connections (within
// MaxSize) and primes the n most recently used once each; the next n
// checkouts get primed backends, as pg_stat_activity's last statement of
// each shows; a failing statement leaves the connection usable, unprimed.
func TestWarm(t *testing.T) {
	ctx := context.Background()
	dsn := srv.NewDatabase(t) + "&application_name=pool_warm_test"
	p := New("n1", dsn, Config{MaxSize: 3}, nil)
	defer p.Close()
	// One idle connection, used last by someone else.
	a, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.Schema = "shard_0001"
	// Its owner prepared the unnamed statement on it.
	if err := parseUnnamed(a, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	a.SetUnnamed("its owner's unnamed statement")
	a.Release()
	if got := p.IdleOn("shard_0001"); got != 1 {
		t.Fatalf("IdleOn = %d, want 1", got)
	}
	const prime = `DO $x$BEGIN END$x$`
	res, err := p.Warm(ctx, 5, prime) // 5 wanted, 3 allowed
	if err != nil {
		t.Fatal(err)
	}
	if got, want := res, (WarmResult{Opened: 2, Primed: 3, Ready: 3}); got != want {
		t.Fatalf("Warm = %+v, want %+v", got, want)
	}
	if st := p.Stats(); st.Total != 3 || st.Idle != 3 {
		t.Fatalf("stats after Warm: %+v", st)
	}
	obs, err := pgx.Connect(ctx, srv.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	defer obs.Close(ctx)
	primed := func() []uint32 {
		rows, err := obs.Query(ctx, `SELECT pid::int8 FROM pg_stat_activity WHERE application_name = 'pool_warm_test' AND query = $1 AND state = 'idle' ORDER BY 1`, prime)
		if err != nil {
			t.Fatal(err)
		}
		pids, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (uint32, error) {
			var v int64
			err := r.Scan(&v)
			return uint32(v), err
		})
		if err != nil {
			t.Fatal(err)
		}
		return pids
	}
	pids := primed()
	if len(pids) != 3 {
		t.Fatalf("primed backends: %v, want 3", pids)
	}
	var got []*Conn
	for range 3 {
		c, err := p.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(pids, c.PID) {
			t.Fatalf("checkout got backend %d, not one of the primed %v", c.PID, pids)
		}
		if c.Unnamed() != nil {
			// The priming Query dropped the server's unnamed statement.
			t.Fatalf("backend %d still has Unnamed %v after its priming", c.PID, c.Unnamed())
		}
		got = append(got, c)
	}
	for _, c := range got {
		c.Release()
	}
	// Again: nothing to open or prime.
	if res, err := p.Warm(ctx, 3, prime); err != nil || res != (WarmResult{Ready: 3}) {
		t.Fatalf("second Warm = %+v, %v; want only Ready 3", res, err)
	}
	// A statement that fails: an error, and the connection stays.
	res, err = p.Warm(ctx, 1, `SELECT 1/0`)
	if err == nil || res.Primed != 0 || res.Ready != 0 {
		t.Fatalf("failing prime: %+v, %v", res, err)
	}
	if st := p.Stats(); st.Total != 3 || st.Idle != 3 || st.Closed != 0 {
		t.Fatalf("stats after a failed prime: %+v", st)
	}
}
