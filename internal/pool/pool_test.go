package pool

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

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
	// The server reports search_path from PostgreSQL 18 on.
	if major, _ := strconv.Atoi(strings.SplitN(a.Params["server_version"], ".", 2)[0]); a.ReportsPath != (major >= 18) {
		t.Fatalf("ReportsPath %v with server_version %q", a.ReportsPath, a.Params["server_version"])
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

// An idle connection whose server process went away (restart,
// pg_terminate_backend) is discarded by Acquire, not handed out to fail
// the next transaction; a live idle one is kept.
func TestCheckIdle(t *testing.T) {
	ctx := context.Background()
	dsn := srv.NewDatabase(t)
	p := New("n1", dsn, Config{MaxSize: 2, CheckIdle: time.Millisecond}, nil)
	defer p.Close()
	a, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a.Release()
	time.Sleep(5 * time.Millisecond)
	if b, err := p.Acquire(ctx); err != nil || b != a {
		t.Fatalf("live idle connection: %v, reused %v", err, b == a)
	}
	a.Release()
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend($1)", int(a.PID)); err != nil {
		t.Fatal(err)
	}
	// Wait for the server process to be gone (its FATAL sent).
	for i := 0; ; i++ {
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", int(a.PID)).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if i == 100 {
			t.Fatal("backend not terminated")
		}
		time.Sleep(20 * time.Millisecond)
	}
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	if c == a || c.PID == a.PID {
		t.Fatalf("Acquire handed out the terminated connection (pid %d)", a.PID)
	}
	if st := p.Stats(); st.Closed != 1 {
		t.Fatalf("stats %+v, want one closed", st)
	}
}

// SetConfig resizes a pool in use: a larger size serves a waiting checkout
// at once, a smaller one closes connections as they come back.
func TestSetConfigResizes(t *testing.T) {
	ctx := context.Background()
	p := New("n1", srv.NewDatabase(t), Config{MaxSize: 1, WaitTimeout: time.Minute}, nil)
	defer p.Close()
	a, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	var b *Conn
	go func() {
		var err error
		b, err = p.Acquire(ctx)
		got <- err
	}()
	for p.Stats().Waiting == 0 {
		time.Sleep(time.Millisecond)
	}
	p.SetConfig(Config{MaxSize: 2, WaitTimeout: time.Minute})
	if err := <-got; err != nil {
		t.Fatalf("waiting acquire after growing the pool: %v", err)
	}
	if st := p.Stats(); st.Total != 2 || st.InUse != 2 || st.MaxSize != 2 || st.WaitTimeouts != 0 {
		t.Fatalf("grown: %+v", st)
	}
	p.SetConfig(Config{MaxSize: 1, WaitTimeout: time.Minute})
	a.Release()
	b.Release()
	if st := p.Stats(); st.Total != 1 || st.Idle != 1 || st.Closed != 1 || st.MaxSize != 1 {
		t.Fatalf("shrunk: %+v", st)
	}
}

// Config.Params go with every connection's startup, over the database's own
// settings, and a server reporting another value fails the connect.
func TestParams(t *testing.T) {
	ctx := context.Background()
	dsn := srv.NewDatabase(t)
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	db := c.Config().Database
	if _, err := c.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" SET standard_conforming_strings = off"); err != nil {
		t.Fatal(err)
	}
	c.Close(ctx)
	p := New("n1", dsn, Config{MaxSize: 1, Params: map[string]string{"standard_conforming_strings": "on"}}, nil)
	defer p.Close()
	a, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Params["standard_conforming_strings"]; got != "on" {
		t.Fatalf("standard_conforming_strings %q, want on over the database's off", got)
	}
	a.Release()
	// The server reports DateStyle as "ISO, MDY": not the value asked for.
	q := New("n1", dsn, Config{MaxSize: 1, Params: map[string]string{"DateStyle": "iso"}}, nil)
	defer q.Close()
	var ce *ConnectError
	if _, err := q.Acquire(ctx); !errors.As(err, &ce) || !strings.Contains(err.Error(), "startup parameter DateStyle") {
		t.Fatalf("a reported value unlike the one asked for: %v, want a ConnectError", err)
	}
}

// TestTryAcquire: TryAcquire hands out the most recently used idle
// connection with Acquire's checks (a killed one and one whose server
// process was terminated are closed, not handed out), and otherwise
// returns nil without opening a connection or waiting.
func TestTryAcquire(t *testing.T) {
	ctx := context.Background()
	dsn := srv.NewDatabase(t)
	p := New("n1", dsn, Config{MaxSize: 3, WaitTimeout: time.Minute}, nil)
	if c := p.TryAcquire(); c != nil {
		t.Fatalf("empty pool: TryAcquire gave a connection")
	}
	if st := p.Stats(); st.Total != 0 || st.Acquires != 0 {
		t.Fatalf("empty pool after TryAcquire: stats %+v, want nothing opened or counted", st)
	}
	var conns [3]*Conn
	for i := range conns {
		c, err := p.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
	}
	a, b, k := conns[0], conns[1], conns[2]
	a.Release()
	b.Release()
	k.Release()
	// The most recent (k) is killed while idle: closed, and b comes next.
	k.Kill(errors.New("test"))
	if c := p.TryAcquire(); c != b {
		t.Fatalf("TryAcquire gave %p, want the most recently used live one %p", c, b)
	}
	b.Release()
	// b's server process is terminated while idle: TryAcquire peeks and
	// passes it over for a.
	admin, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend($1, 5000)", int(b.PID)); err != nil {
		t.Fatal(err)
	}
	if c := p.TryAcquire(); c != a {
		t.Fatalf("TryAcquire gave %p (pid %d), want %p (pid %d): not the terminated one", c, pidOf(c), a, a.PID)
	}
	if c := p.TryAcquire(); c != nil {
		t.Fatalf("no idle connection left: TryAcquire gave pid %d, want nil", c.PID)
	}
	if st := p.Stats(); st.Total != 1 || st.Closed != 2 || st.Acquires != 5 {
		t.Fatalf("stats %+v, want 1 open, 2 closed, 5 checkouts", st)
	}
	a.Release()
	p.Close()
	if c := p.TryAcquire(); c != nil {
		t.Fatalf("closed pool: TryAcquire gave a connection")
	}
}

func pidOf(c *Conn) uint32 {
	if c == nil {
		return 0
	}
	return c.PID
}
