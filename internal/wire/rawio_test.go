package wire

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b := <-accepted
	if b == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestRawIO(t *testing.T) {
	a, b := tcpPair(t)
	ra, rb := RawIO(a), RawIO(b)
	if _, ok := ra.(*rawIO); !ok {
		t.Fatalf("RawIO(TCP) = %T, want *rawIO", ra)
	}
	// A write far larger than the socket buffers: the writer waits for
	// the reader (EAGAIN path) and everything arrives in order.
	big := make([]byte, 8<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	werr := make(chan error, 1)
	go func() {
		n, err := ra.Write(big)
		if err == nil && n != len(big) {
			err = io.ErrShortWrite
		}
		werr <- err
	}()
	got := make([]byte, len(big))
	if _, err := io.ReadFull(rb, got); err != nil {
		t.Fatal(err)
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, big) {
		t.Fatal("data corrupted")
	}
	// A read deadline ends a read with a net.Error timeout.
	b.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := rb.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past deadline: %v, want a timeout", err)
	}
	b.SetReadDeadline(time.Time{})
	// Close from another goroutine ends a blocked read with net.ErrClosed.
	rerr := make(chan error, 1)
	go func() {
		_, err := rb.Read(make([]byte, 10))
		rerr <- err
	}()
	time.Sleep(20 * time.Millisecond)
	b.Close()
	if err := <-rerr; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on closed conn: %v, want net.ErrClosed", err)
	}
	// The peer closing gives io.EOF.
	c, d := tcpPair(t)
	c.Close()
	if _, err := RawIO(d).Read(make([]byte, 10)); err != io.EOF {
		t.Fatalf("read after peer close: %v, want io.EOF", err)
	}
}

func TestRawIONotASocket(t *testing.T) {
	p, q := net.Pipe()
	defer p.Close()
	defer q.Close()
	if rw := RawIO(p); rw != io.ReadWriter(p) {
		t.Fatalf("RawIO(pipe) = %T, want the conn itself", rw)
	}
}
