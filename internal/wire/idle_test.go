package wire

import (
	"bytes"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// TestReaderReleaseIdle: a Reader over RawIO gives its buffer back when
// nothing is buffered, holds none while it waits for data, and loses
// nothing across the release, pipelined messages, a message split over
// several reads with a timeout in between, or a body larger than its buffer.
func TestReaderReleaseIdle(t *testing.T) {
	a, b := tcpPair(t)
	r := NewReader(RawIO(b), 64, 0)
	send := func(p []byte) {
		t.Helper()
		if _, err := a.Write(p); err != nil {
			t.Fatal(err)
		}
	}
	read := func(wantTyp byte, want []byte) {
		t.Helper()
		b.SetReadDeadline(time.Now().Add(10 * time.Second))
		typ, body, err := r.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if typ != wantTyp || !bytes.Equal(body, want) {
			t.Fatalf("read %q %q, want %q %q", typ, body, wantTyp, want)
		}
	}
	timeout := func() {
		t.Helper()
		b.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, _, err := r.ReadMessage(); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read with nothing sent: %v, want a timeout", err)
		}
	}

	// Two messages in one segment: the release after the first keeps the
	// buffer, which holds the second.
	send(append(AppendQuery(nil, "one"), AppendQuery(nil, "two")...))
	read('Q', []byte("one\x00"))
	r.ReleaseIdle()
	if r.buf == nil {
		t.Fatal("ReleaseIdle dropped a buffer holding a message")
	}
	read('Q', []byte("two\x00"))
	r.ReleaseIdle()
	if r.buf != nil {
		t.Fatal("ReleaseIdle kept an empty buffer")
	}
	// Waiting takes no buffer.
	timeout()
	if r.buf != nil {
		t.Fatal("a read that found no data kept a buffer")
	}
	// A message in two parts, a timeout in between: the first part stays.
	msg := AppendQuery(nil, "three")
	send(msg[:7])
	timeout()
	send(msg[7:])
	read('Q', []byte("three\x00"))
	// A body larger than the buffer, after a release.
	r.ReleaseIdle()
	long := bytes.Repeat([]byte("x"), 1000)
	send(AppendQuery(nil, string(long)))
	read('Q', append(long, 0))
	// End of stream.
	r.ReleaseIdle()
	a.Close()
	b.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, _, err := r.ReadMessage(); err == nil {
		t.Fatal("read after the peer closed: no error")
	}
	if r.buf != nil {
		t.Fatal("end of stream kept a buffer")
	}
}

// TestReaderNotRaw: over a reader that is not a RawIO socket (TLS, a pipe)
// the released buffer is taken again before the read.
func TestReaderNotRaw(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	r := NewReader(b, 64, 0)
	go a.Write(append(AppendQuery(nil, "one"), AppendQuery(nil, "two")...))
	for _, want := range []string{"one\x00", "two\x00"} {
		r.ReleaseIdle()
		_, body, err := r.ReadMessage()
		if err != nil || string(body) != want {
			t.Fatalf("read %q, %v; want %q", body, err, want)
		}
	}
}
