package router

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// bigQuery is a query of about n bytes whose answer is n.
func bigQuery(n int) string { return "SELECT length('" + strings.Repeat("x", n) + "')" }

// waitInUse waits until the server's message budget has n bytes in use.
func waitInUse(t *testing.T, s *Server, n int64) {
	t.Helper()
	for i := 0; s.budget != nil && s.budget.InUse() != n; i++ {
		if i > 2000 {
			t.Fatalf("message memory in use %d, want %d", s.budget.InUse(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestMessageMemoryBudget: large client messages share a bounded budget; one
// that finds no room in time gets 53200 with a hint and its connection goes
// on; small messages are served meanwhile.
func TestMessageMemoryBudget(t *testing.T) {
	s := startRouter(t, Config{MaxMessageMemory: 4 << 20, MessageMemoryWait: 300 * time.Millisecond}, nil)

	// Client x sends a 3 MiB query whose body arrives slowly: the router
	// holds 3 MiB of the budget for it meanwhile.
	pc, err := pgconn.Connect(ctx(t), routerURL(s, "t1"))
	if err != nil {
		t.Fatal(err)
	}
	hc, err := pc.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Conn.Close()
	xq := bigQuery(3 << 20)
	msg := wire.AppendQuery(nil, xq)
	if _, err := hc.Conn.Write(msg[:1024]); err != nil {
		t.Fatal(err)
	}
	waitInUse(t, s, int64(len(xq)+1))

	check53200 := func(what string, err error) {
		t.Helper()
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "53200" || !strings.Contains(pe.Hint, "max_message_memory") {
			t.Fatalf("%s: %v, want 53200 with a hint naming max_message_memory", what, err)
		}
	}
	whoami := func(c *pgx.Conn, want int) {
		t.Helper()
		var sh int
		if err := c.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != want {
			t.Fatalf("whoami: %d %v, want %d", sh, err, want)
		}
	}
	var n int
	// Simple protocol: refused after the wait; the session goes on.
	y := connect(t, s, "t2", pgx.QueryExecModeSimpleProtocol)
	check53200("2 MiB query", y.QueryRow(ctx(t), bigQuery(2<<20)).Scan(&n))
	whoami(y, 2)
	// Larger than the whole budget: refused at once.
	err = y.QueryRow(ctx(t), bigQuery(5<<20)).Scan(&n)
	check53200("5 MiB query", err)
	whoami(y, 2)
	// Extended protocol, in a transaction: the transaction is aborted, as
	// by a server error, and the connection goes on.
	z := connect(t, s, "t3", pgx.QueryExecModeCacheStatement)
	tx, err := z.Begin(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx(t), "INSERT INTO sink (body) VALUES ('before')"); err != nil {
		t.Fatal(err)
	}
	check53200("2 MiB parameter", tx.QueryRow(ctx(t), "SELECT length($1::text)", strings.Repeat("y", 2<<20)).Scan(&n))
	if _, err := tx.Exec(ctx(t), "SELECT 1"); pgCode(err) != "25P02" {
		t.Fatalf("after the refused message: %v, want 25P02", err)
	}
	if err := tx.Rollback(ctx(t)); err != nil {
		t.Fatal(err)
	}
	whoami(z, 3)
	if err := z.QueryRow(ctx(t), "SELECT length($1::text)", strings.Repeat("y", 100<<10)).Scan(&n); err != nil || n != 100<<10 {
		t.Fatalf("100 KiB parameter (under the pinned size): %d %v", n, err)
	}

	// x's body completes: x is served.
	if _, err := hc.Conn.Write(msg[1024:]); err != nil {
		t.Fatal(err)
	}
	var got string
	for done := false; !done; {
		m, err := hc.Frontend.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			got = string(m.Values[0])
		case *pgproto3.ErrorResponse:
			t.Fatalf("x: %s %s", m.Code, m.Message)
		case *pgproto3.ReadyForQuery:
			done = true
		}
	}
	if want := fmt.Sprint(3 << 20); got != want {
		t.Fatalf("x: %q, want %q", got, want)
	}
	hc.Conn.Write([]byte{'X', 0, 0, 0, 4})
	waitInUse(t, s, 0)
	// With the budget free, the 2 MiB query runs.
	if err := y.QueryRow(ctx(t), bigQuery(2<<20)).Scan(&n); err != nil || n != 2<<20 {
		t.Fatalf("2 MiB query with the budget free: %d %v", n, err)
	}
}

// TestMessageMemoryInTurn: many clients sending large messages at once
// through a budget that holds only a few are served in turn, while a client
// with small queries keeps being served; nothing hangs and the budget ends
// empty.
func TestMessageMemoryInTurn(t *testing.T) {
	s := startRouter(t, Config{MaxMessageMemory: 4 << 20, MessageMemoryWait: time.Minute}, nil)
	const clients = 16
	var wg sync.WaitGroup
	errs := make(chan error, clients+1)
	stop := make(chan struct{})
	small := connect(t, s, "t4", pgx.QueryExecModeSimpleProtocol)
	smallDone := make(chan int)
	go func() {
		served := 0
		for {
			select {
			case <-stop:
				smallDone <- served
				return
			default:
			}
			var sh int
			if err := small.QueryRow(ctx(t), "SELECT shard FROM whoami").Scan(&sh); err != nil || sh != 4 {
				errs <- fmt.Errorf("small client: %d %v", sh, err)
				smallDone <- served
				return
			}
			served++
		}
	}()
	for i := 0; i < clients; i++ {
		c := connect(t, s, fmt.Sprintf("t%d", i), execModes[i%len(execModes)])
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for j := 0; j < 2; j++ {
				var n int
				size := 1<<20 + i*1000
				if err := c.QueryRow(ctx, "SELECT length($1::text)", strings.Repeat("z", size)).Scan(&n); err != nil || n != size {
					errs <- fmt.Errorf("client %d: %d %v", i, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	served := <-smallDone
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if served == 0 {
		t.Error("the small client was not served while large messages were")
	}
	waitInUse(t, s, 0)
}

// TestMessageMemoryKeptStatements: the text of a large prepared statement
// stays counted in the budget while the client keeps the statement, and
// returns to it once the statement is closed.
func TestMessageMemoryKeptStatements(t *testing.T) {
	s := startRouter(t, Config{MaxMessageMemory: 4 << 20, MessageMemoryWait: 300 * time.Millisecond}, nil)
	c := connect(t, s, "t1", pgx.QueryExecModeCacheStatement)
	text := func(i int) string {
		return fmt.Sprintf("SELECT %d AS i, length('%s') AS n", i, strings.Repeat("x", 3<<19))
	}
	for i := 1; i <= 2; i++ {
		if _, err := c.Prepare(ctx(t), fmt.Sprint("big", i), text(i)); err != nil {
			t.Fatalf("prepare big%d: %v", i, err)
		}
	}
	// 2 × 1.5 MiB are kept: a third does not fit in 4 MiB.
	_, err := c.Prepare(ctx(t), "big3", text(3))
	if pgCode(err) != "53200" {
		t.Fatalf("prepare big3 with two kept: %v, want 53200", err)
	}
	var i, n int
	if err := c.QueryRow(ctx(t), "big2").Scan(&i, &n); err != nil || i != 2 || n != 3<<19 {
		t.Fatalf("execute big2: %d %d %v", i, n, err)
	}
	if err := c.Deallocate(ctx(t), "big1"); err != nil {
		t.Fatal(err)
	}
	// With big1 closed (and collected), big3 fits.
	if _, err := c.Prepare(ctx(t), "big3", text(3)); err != nil {
		t.Fatalf("prepare big3 after closing big1: %v", err)
	}
	if err := c.QueryRow(ctx(t), "big3").Scan(&i, &n); err != nil || i != 3 || n != 3<<19 {
		t.Fatalf("execute big3: %d %d %v", i, n, err)
	}
}
