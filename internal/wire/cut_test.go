package wire

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// A read deadline that ends ReadMessage part way through a large body (the
// router's idle watch does so when a session-mode backend speaks) loses
// none of it: the next ReadMessage goes on where the body was cut. Bodies
// past the read buffer are read straight from the connection, into the
// Reader's own buffer (up to 1 MiB without a Budget) or a new one.
func TestReadMessageCutByDeadline(t *testing.T) {
	for _, size := range []int{100 << 10, 3 << 20} {
		client, server := net.Pipe()
		body := bytes.Repeat([]byte("0123456789"), size/10)
		msg := Frame(nil, MsgQuery, body)
		r := NewReader(server, 16<<10, 0)
		cut, rest := make(chan struct{}), make(chan struct{})
		go func() {
			// net.Pipe: a write returns once the reader took all of it.
			client.Write(msg[:len(msg)/3])
			close(cut)
			<-rest
			client.Write(msg[len(msg)/3:])
		}()
		go func() {
			<-cut
			server.SetReadDeadline(time.Unix(1, 0))
		}()
		if _, _, err := r.ReadMessage(); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("%d bytes: read cut by the deadline: %v", size, err)
		}
		server.SetReadDeadline(time.Time{})
		close(rest)
		typ, got, err := r.ReadMessage()
		if err != nil || typ != MsgQuery || !bytes.Equal(got, body) {
			t.Fatalf("%d bytes: after the cut: %q, %d bytes, %v", size, typ, len(got), err)
		}
		client.Close()
		server.Close()
	}
}

// The same for a body refused for memory, whose skipping a deadline cuts:
// the next ReadMessage skips the rest and returns the refusal, and the
// message after it is read whole.
func TestReadMessageSkipCutByDeadline(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	body := bytes.Repeat([]byte("0123456789"), 300<<10) // 3 MB, past the budget
	msg := Frame(Frame(nil, MsgQuery, body), MsgSync, nil)
	r := NewReader(server, 16<<10, 0)
	r.UseBudget(context.Background(), NewBudget(1<<20, time.Second))
	cut, rest := make(chan struct{}), make(chan struct{})
	go func() {
		client.Write(msg[:len(msg)/3])
		close(cut)
		<-rest
		client.Write(msg[len(msg)/3:])
	}()
	go func() {
		<-cut
		server.SetReadDeadline(time.Unix(1, 0))
	}()
	if _, _, err := r.ReadMessage(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("skip cut by the deadline: %v", err)
	}
	server.SetReadDeadline(time.Time{})
	close(rest)
	var me *MemoryError
	if typ, _, err := r.ReadMessage(); typ != MsgQuery || !errors.As(err, &me) {
		t.Fatalf("after the cut: %q %v, want the Query's MemoryError", typ, err)
	}
	if typ, _, err := r.ReadMessage(); typ != MsgSync || err != nil {
		t.Fatalf("the next message: %q %v, want Sync", typ, err)
	}
}
