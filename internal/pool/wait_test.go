package pool

import (
	"context"
	"errors"
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

// TestWaitersServedInOrder: waiters for a full pool get the connections
// released in the order they began to wait (first come, first served: no
// client starves behind later ones), each waiter past its WaitTimeout fails
// with ErrWaitTimeout on its own schedule, one whose context ends leaves the
// queue, and Close fails those still waiting with ErrClosed.
func TestWaitersServedInOrder(t *testing.T) {
	p := New("n1", srv.NewDatabase(t), Config{MaxSize: 1, WaitTimeout: time.Minute}, nil)
	ctx := context.Background()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const n = 20
	order := make(chan int, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := p.Acquire(ctx)
			if err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			order <- i
			c.Release()
		}()
		waitFor(t, func() bool { return p.Stats().Waiting == i+1 })
	}
	c.Release()
	wg.Wait()
	close(order)
	want := 0
	for i := range order {
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

// waitFor polls cond until it holds (a minute at most).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			t.Fatal("condition not met in a minute")
		}
	}
}
