package pool

import (
	"context"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// A cancel request the server never confirms holds the connection's writes
// for CancelHold only, once: the client's next statement still runs.
func TestCancelHoldBounded(t *testing.T) {
	ctx, stop := context.WithTimeout(context.Background(), time.Minute)
	defer stop()
	p := New("n1", srv.NewDatabase(t), Config{MaxSize: 1}, nil)
	defer p.Close()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	done := c.holdWrites() // a cancel request on its way, never taken
	defer done()
	c.W.Write(wire.AppendQuery(nil, "SELECT 41 + 1"))
	if err := c.W.Flush(); err != nil {
		t.Fatalf("flush while a cancel is in flight: %v", err)
	}
	var got string
	for {
		typ, body, err := c.R.ReadMessage()
		if err != nil {
			t.Fatalf("read the answer: %v", err)
		}
		if typ == wire.MsgDataRow {
			got = string(body[6:]) // one column: count, length, value
		}
		if typ == wire.MsgReadyForQuery {
			break
		}
	}
	if got != "42" {
		t.Fatalf("answer %q, want 42", got)
	}
	// Held once: the next writes go at once.
	if c.cancelling.Load() != nil {
		t.Fatal("writes still held after one waited CancelHold")
	}
}
