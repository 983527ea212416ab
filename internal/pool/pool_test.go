package pool

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

var srv *pgtest.Server

func TestMain(m *testing.M) {
	pgtest.Main(m, []string{"pool"}, func(s []*pgtest.Server) { srv = s[0] })
}

func TestAcquireRelease(t *testing.T) {
	ctx := context.Background()
	p := New("n1", srv.NewDatabase(t), Config{MaxSize: 2, WaitTimeout: 200 * time.Millisecond}, nil)
	defer p.Close()
	a, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a.PID == 0 || a.Params["server_version"] == "" || a.Node() != "n1" {
		t.Fatalf("conn: pid %d params %v", a.PID, a.Params)
	}
	b, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Full: the third waits and times out.
	if _, err := p.Acquire(ctx); !errors.Is(err, ErrWaitTimeout) {
		t.Fatalf("third acquire: %v, want ErrWaitTimeout", err)
	}
	// A waiter gets the released connection.
	got := make(chan *Conn)
	go func() {
		c, _ := p.Acquire(ctx)
		got <- c
	}()
	time.Sleep(50 * time.Millisecond)
	a.Release()
	if c := <-got; c != a {
		t.Fatalf("waiter got %p, want the released %p", c, a)
	}
	// Broken connections are discarded, freeing a slot.
	b.MarkBroken()
	b.Release()
	c, err := p.Acquire(ctx)
	if err != nil || c == b {
		t.Fatalf("after discard: %v, reused broken: %v", err, c == b)
	}
	st := p.Stats()
	if st.Total != 2 || st.InUse != 2 || st.WaitTimeouts != 1 || st.Closed != 1 {
		t.Fatalf("stats %+v", st)
	}
	a.Release()
	c.Release()
}

func TestConnectError(t *testing.T) {
	p := New("dead", "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=1", Config{MaxSize: 1}, nil)
	defer p.Close()
	_, err := p.Acquire(context.Background())
	var ce *ConnectError
	if !errors.As(err, &ce) || ce.Node != "dead" {
		t.Fatalf("err = %v, want ConnectError for node dead", err)
	}
	// The slot was freed: a second try fails the same way instead of waiting.
	if _, err := p.Acquire(context.Background()); !errors.As(err, &ce) {
		t.Fatalf("second acquire: %v", err)
	}
}

func TestMinIdleAndIdleTimeout(t *testing.T) {
	p := New("n1", srv.NewDatabase(t), Config{MaxSize: 4, MinIdle: 2, IdleTimeout: 100 * time.Millisecond}, nil)
	defer p.Close()
	deadline := time.Now().Add(5 * time.Second)
	for p.Stats().Idle < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("min idle not reached: %+v", p.Stats())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
