package wire

import (
	"net"
	"testing"
)

// MessageBuffered says whether the next message is whole in the buffer:
// after a read that ended inside a message it is false although bytes are
// buffered (the router flushes its client before waiting for the rest).
func TestMessageBuffered(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	r := NewReader(a, 1024, 1<<20)
	one, two := AppendQuery(nil, "SELECT 1"), AppendQuery(nil, "SELECT 2")
	go func() {
		b.Write(append(append([]byte(nil), one...), two[:7]...)) // the second cut
		b.Write(two[7:])
	}()
	if r.MessageBuffered() {
		t.Fatal("nothing read yet, but a message is buffered")
	}
	if typ, body, err := r.ReadMessage(); err != nil || typ != MsgQuery || string(body) != "SELECT 1\x00" {
		t.Fatalf("first message: %q %q %v", typ, body, err)
	}
	if got, want := r.Buffered(), 7; got != want {
		t.Fatalf("buffered %d, want %d", got, want)
	}
	if r.MessageBuffered() {
		t.Fatal("a cut message counted as whole")
	}
	if typ, body, err := r.ReadMessage(); err != nil || typ != MsgQuery || string(body) != "SELECT 2\x00" {
		t.Fatalf("second message: %q %q %v", typ, body, err)
	}
	if r.MessageBuffered() {
		t.Fatal("empty buffer, but a message is buffered")
	}
}
