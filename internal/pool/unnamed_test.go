package pool

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/pgtenant/pgtenant/internal/wire"
)

// parseUnnamed prepares sql as c's unnamed statement (Parse, Sync) and
// reads to the ReadyForQuery.
func parseUnnamed(c *Conn, sql string) error {
	c.W.WriteFrame(wire.MsgParse, wire.AppendParse(nil, "", sql, nil))
	c.W.Write(wire.SyncMsg)
	return readToReady(c)
}

// readToReady reads c's answers up to a ReadyForQuery, failing on an error.
func readToReady(c *Conn) error {
	if err := c.W.Flush(); err != nil {
		return err
	}
	var serr error
	for {
		typ, body, err := c.R.ReadMessage()
		if err != nil {
			return err
		}
		switch typ {
		case wire.MsgErrorResponse:
			serr = errors.New(wire.ErrorMessage(body))
		case wire.MsgReadyForQuery:
			return serr
		}
	}
}

// TestUnnamedGeneration: what a connection's owner recorded of the unnamed
// statement holds until a message that drops it on the server is written,
// by whatever code writes it, with nothing to clear: a simple Query (here
// written in pieces, and as raw bytes, as a sender that never heard of the
// unnamed statement would) or another Parse of the unnamed statement. A
// named Parse, a Bind or a Sync leave it. The server agrees: Bind of the
// unnamed statement fails with 26000 exactly when Unnamed says nil.
func TestUnnamedGeneration(t *testing.T) {
	ctx := context.Background()
	p := New("n1", srv.NewDatabase(t), Config{MaxSize: 1}, nil)
	defer p.Close()
	c, err := p.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	const owner = "statement A"
	// bindUnnamed runs the unnamed statement and reports the server's error.
	bindUnnamed := func() error {
		c.W.WriteFrame(wire.MsgBind, []byte{0, 0, 0, 0, 0, 0, 0, 0})
		c.W.WriteFrame(wire.MsgExecute, []byte{0, 0, 0, 0, 0})
		c.W.Write(wire.SyncMsg)
		return readToReady(c)
	}
	prepare := func() {
		t.Helper()
		if err := parseUnnamed(c, "SELECT 1"); err != nil {
			t.Fatal(err)
		}
		c.SetUnnamed(owner)
		if got := c.Unnamed(); got != owner {
			t.Fatalf("Unnamed right after SetUnnamed = %v", got)
		}
	}
	query := wire.AppendQuery(nil, "SELECT 2")
	for _, tc := range []struct {
		name  string
		write func()
		kept  bool
	}{
		{"named Parse, Sync", func() {
			c.W.WriteFrame(wire.MsgParse, wire.AppendParse(nil, "named", "SELECT 3", nil))
			c.W.Write(wire.SyncMsg)
		}, true},
		{"Query as one write", func() { c.W.Write(query) }, false},
		{"Query byte by byte", func() {
			for _, b := range query {
				c.W.WriteByte(b)
			}
		}, false},
		{"Query header, then body", func() { c.W.Write(query[:5]); c.W.Write(query[5:]) }, false},
		{"Query frame", func() { c.W.WriteFrame(wire.MsgQuery, query[5:]) }, false},
		{"unnamed Parse of another text", func() {
			c.W.WriteFrame(wire.MsgParse, wire.AppendParse(nil, "", "SELECT 4", nil))
			c.W.Write(wire.SyncMsg)
		}, false},
		{"unnamed Parse split after its type", func() {
			b := wire.AppendParse(nil, "", "SELECT 4", nil)
			f := append([]byte{wire.MsgParse, 0, 0, 0, 0}, b...)
			f[4] = byte(len(b) + 4)
			c.W.Write(f[:1])
			c.W.Write(f[1:5])
			c.W.Write(f[5:])
			c.W.Write(wire.SyncMsg)
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prepare()
			tc.write()
			if err := readToReady(c); err != nil {
				t.Fatal(err)
			}
			if got, want := c.Unnamed() == owner, tc.kept; got != want {
				t.Fatalf("Unnamed = %v after it, want kept %v", c.Unnamed(), want)
			}
			err := bindUnnamed()
			if tc.kept && err != nil {
				t.Fatalf("Bind of the unnamed statement the owner still has: %v", err)
			}
			if !tc.kept && tc.name[:5] == "Query" && (err == nil || fmt.Sprint(err) != `unnamed prepared statement does not exist`) {
				t.Fatalf("Bind after a Query: %v, want the server's 26000", err)
			}
		})
	}
	// An owner that recorded nothing, or forgot: nil.
	prepare()
	c.ForgetUnnamed()
	if got := c.Unnamed(); got != nil {
		t.Fatalf("Unnamed after ForgetUnnamed = %v", got)
	}
}
