package pool

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"
)

// BenchmarkAcquireWait: 64 goroutines share 2 connections, so that nearly
// every Acquire waits for a Release, as thousands of clients do on a
// router's pool. allocs/op is the cost of a wait: before the shared expiry
// timer and the reused wait channels, 3 (a channel and a timer per wait).
func BenchmarkAcquireWait(b *testing.B) {
	p := New("n1", srv.NewDatabase(b), Config{MaxSize: 2, WaitTimeout: time.Minute}, nil)
	defer p.Close()
	ctx := context.Background()
	b.SetParallelism(32) // x GOMAXPROCS goroutines
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			c, err := p.Acquire(ctx)
			if err != nil {
				b.Error(err)
				return
			}
			c.Release()
		}
	})
	b.StopTimer()
	if st := p.Stats(); b.N >= 1000 && st.Waits == 0 {
		b.Errorf("no Acquire waited: %+v", st)
	}
}

// TestWaitersServedInOrder: with FairAfter negative, waiters for a full pool
// get the connections released in the order they began to wait (first
// come, first served: no client starves behind later ones; with the
// default, see TestWaitersFairAfter), each waiter past its WaitTimeout fails
// with ErrWaitTimeout on its own schedule, one whose context ends leaves the
// queue, and Close fails those still waiting with ErrClosed.
func TestWaitersServedInOrder(t *testing.T) {
	p := New("n1", srv.NewDatabase(t), Config{MaxSize: 1, WaitTimeout: time.Minute, FairAfter: -1}, nil)
	ctx := context.Background()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	want := 0
	for _, i := range serveWaiters(t, p, c, n, func(int) {}) {
		if i != want {
			t.Fatalf("waiter %d served in place %d", i, want)
		}
		want++
	}
	if want != n {
		t.Fatalf("%d waiters served, want %d", want, n)
	}

	// Timeouts: a short-timeout waiter behind a long one fails first.
	c, err = p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	long := make(chan error, 1)
	go func() {
		_, err := p.Acquire(ctx)
		long <- err
	}()
	waitFor(t, func() bool { return p.Stats().Waiting == 1 })
	p.SetConfig(Config{MaxSize: 1, WaitTimeout: 100 * time.Millisecond})
	if _, err := p.Acquire(ctx); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("short waiter: %v, want ErrWaitTimeout", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	gone := make(chan error, 1)
	p.SetConfig(Config{MaxSize: 1, WaitTimeout: time.Minute})
	go func() {
		_, err := p.Acquire(cctx)
		gone <- err
	}()
	waitFor(t, func() bool { return p.Stats().Waiting == 2 })
	cancel()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v, want context.Canceled", err)
	}
	if w := p.Stats().Waiting; w != 1 {
		t.Fatalf("waiting %d after a cancel, want 1", w)
	}
	select {
	case err := <-long:
		t.Fatalf("long waiter ended early: %v", err)
	default:
	}
	closed := make(chan struct{})
	go func() { p.Close(); close(closed) }()
	if err := <-long; !errors.Is(err, ErrClosed) {
		t.Fatalf("waiter at Close: %v, want ErrClosed", err)
	}
	c.Release()
	<-closed
	if st := p.Stats(); st.WaitTimeouts != 1 || st.Waiting != 0 {
		t.Fatalf("stats %+v, want 1 wait timeout and no waiter", st)
	}
}

// TestWaitersFairAfter: a released connection goes to the waiter that came
// last, unless the one waiting longest has waited FairAfter or more. Twenty
// waiters queue on a full pool; in the "aged" case the first ten are made
// to have waited two hours (their start moved back, no sleeping): those are
// served first, in order of arrival, then the other ten, last first. Each
// served waiter releases at once, so every hand-off is a Release with
// waiters queued. FairAfter is at most half of WaitTimeout, so that a
// waiter behind later ones has time left.
func TestWaitersFairAfter(t *testing.T) {
	const n = 20
	if got, want := (Config{WaitTimeout: time.Second, FairAfter: time.Hour}).withDefaults().FairAfter, 500*time.Millisecond; got != want {
		t.Fatalf("FairAfter %v with a WaitTimeout of 1s, want %v", got, want)
	}
	reversed := func(from, to int) []int { // from-1 down to to
		var out []int
		for i := from - 1; i >= to; i-- {
			out = append(out, i)
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		fair  time.Duration
		aged  int // the first aged waiters began two hours ago
		order []int
	}{
		{"last come first served", 20 * time.Minute, 0, reversed(n, 0)},
		{"default", 0, 0, reversed(n, 0)},
		{"aged first", 20 * time.Minute, 10, append([]int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, reversed(n, 10)...)},
		{"every waiter aged", time.Nanosecond, n, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := New("n1", srv.NewDatabase(t), Config{MaxSize: 1, WaitTimeout: time.Hour, FairAfter: tc.fair}, nil)
			defer p.Close()
			ctx := context.Background()
			c, err := p.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got := serveWaiters(t, p, c, n, func(i int) {
				if i < tc.aged {
					p.mu.Lock()
					w := &p.waiters.q[p.waiters.head+i]
					w.since = w.since.Add(-2 * time.Hour)
					p.mu.Unlock()
				}
			})
			if !slices.Equal(got, tc.order) {
				t.Fatalf("served in order %v, want %v", got, tc.order)
			}
		})
	}
}

// serveWaiters queues n waiters on p, full with c checked out, one after
// the other (queued(i) runs once waiter i is in the queue), then releases
// c: each waiter served releases at once. It returns the waiters in the
// order they were served.
func serveWaiters(t *testing.T, p *Pool, c *Conn, n int, queued func(i int)) []int {
	t.Helper()
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.Acquire(context.Background())
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			order <- i
			c.Release()
		}()
		waitFor(t, func() bool { return p.Stats().Waiting == i+1 })
		queued(i)
	}
	c.Release()
	wg.Wait()
	close(order)
	var got []int
	for i := range order {
		got = append(got, i)
	}
	return got
}

// waitFor polls cond until it holds (a minute at most).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("condition not met in a minute")
		}
	}
}

// TestWaitQueue: the queue gives its waiters back in order of arrival (or
// the last first: next) through pushes, pops, removals, expiries and its
// compactions.
func TestWaitQueue(t *testing.T) {
	var q waitQueue
	var model []chan handoff
	base := time.Now()
	chans := map[chan handoff]int{}
	next := 0
	push := func() {
		ch := make(chan handoff, 1)
		chans[ch] = next
		q.push(waiter{ch: ch, since: base, deadline: base.Add(time.Duration(next) * time.Second)})
		model = append(model, ch)
		next++
	}
	check := func(step string) {
		t.Helper()
		if q.len() != len(model) {
			t.Fatalf("%s: len %d, want %d", step, q.len(), len(model))
		}
		for i, x := range q.q[q.head:] {
			if x.ch != model[i] {
				t.Fatalf("%s: place %d holds waiter %d, want %d", step, i, chans[x.ch], chans[model[i]])
			}
		}
	}
	for round := 0; round < 50; round++ {
		for i := 0; i < 7; i++ {
			push()
		}
		for i := 0; i < 5; i++ {
			if got := q.pop(); got != model[0] {
				t.Fatalf("round %d: popped %d, want %d", round, chans[got], chans[model[0]])
			}
			model = model[1:]
		}
		check("after pops")
		if round%10 == 5 {
			// next: the last while the first waited less than fair, else the first.
			if got := q.next(base, time.Hour); got != model[len(model)-1] {
				t.Fatalf("round %d: next gave %d, want the last, %d", round, chans[got], chans[model[len(model)-1]])
			}
			model = model[:len(model)-1]
			if got := q.next(base.Add(time.Hour), time.Hour); got != model[0] {
				t.Fatalf("round %d: next gave %d, want the first, %d", round, chans[got], chans[model[0]])
			}
			model = model[1:]
			check("after next")
		}
		if round%10 == 3 {
			mid := model[len(model)/2]
			if !q.remove(mid) || q.remove(mid) {
				t.Fatal("remove: want true once, then false")
			}
			for i, ch := range model {
				if ch == mid {
					model = append(model[:i:i], model[i+1:]...)
					break
				}
			}
			check("after remove")
		}
	}
	// Expire the waiters with deadlines up to the tenth pushed from now.
	cut := chans[model[10]]
	late, earliest := q.expire(base.Add(time.Duration(cut)*time.Second), nil)
	if len(late) != 11 || chans[late[0]] != chans[model[0]] || chans[late[10]] != cut {
		t.Fatalf("expired %d waiters", len(late))
	}
	model = model[11:]
	check("after expire")
	if want := base.Add(time.Duration(chans[model[0]]) * time.Second); !earliest.Equal(want) {
		t.Fatalf("earliest deadline left %v, want %v", earliest, want)
	}
	if got := q.drain(); len(got) != len(model) || q.len() != 0 {
		t.Fatalf("drain: %d waiters, want %d, %d left", len(got), len(model), q.len())
	}
}
