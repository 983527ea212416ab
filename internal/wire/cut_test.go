package wire

import (
	"bytes"
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
