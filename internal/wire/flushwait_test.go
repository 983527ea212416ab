package wire

import (
	"bufio"
	"errors"
	"net"
	"os"
	"testing"
	"time"
)

// fakeServer answers the frames it reads on c as a PostgreSQL server would,
// enough for ReadMessageAfter: a Query with CommandComplete and
// ReadyForQuery (after delay), a Parse with ParseComplete sent at the next
// Flush or Sync, a Sync with ReadyForQuery. A Parse of "bad" fails at once
// (an ErrorResponse), and then everything is ignored up to a Sync, a Query
// too. Every frame read is reported on got. It stops when c fails.
func fakeServer(c net.Conn, delay time.Duration, got chan<- byte) {
	rw := RawIO(c)
	r, w := NewReader(rw, 1024, 0), bufio.NewWriter(rw)
	var out []byte
	skip := false
	for {
		typ, body, err := r.ReadMessage()
		if err != nil {
			return
		}
		if got != nil {
			got <- typ
		}
		if skip && typ != MsgSync {
			continue
		}
		skip = false
		if typ == MsgParse && string(body) == "\x00bad\x00\x00\x00" {
			skip = true
			w.Write(AppendError(nil, &Error{Severity: "ERROR", Code: "42601", Message: "syntax error"}))
			if w.Flush() != nil {
				return
			}
			continue
		}
		switch typ {
		case MsgQuery:
			time.Sleep(delay)
			out = AppendCommandComplete(out, "SELECT 1")
			out = AppendReadyForQuery(out, 'I')
		case MsgParse:
			out = append(out, MsgParseComplete, 0, 0, 0, 4)
		case MsgSync:
			out = AppendReadyForQuery(out, 'I')
		}
		if typ == MsgQuery || typ == MsgSync || typ == MsgFlush {
			w.Write(out)
			out = out[:0]
			if w.Flush() != nil {
				return
			}
		}
	}
}

// expectAnswer reads a Query's answer with r: CommandComplete, then
// ReadyForQuery; first is what ReadMessageAfter returned.
func expectAnswer(t *testing.T, r *Reader, typ byte, err error) {
	t.Helper()
	if err != nil || typ != MsgCommandComplete {
		t.Fatalf("first message of the answer: %q, %v; want CommandComplete", typ, err)
	}
	if typ, _, err = r.ReadMessage(); err != nil || typ != MsgReadyForQuery {
		t.Fatalf("second message of the answer: %q, %v; want ReadyForQuery", typ, err)
	}
}

// clientSide returns a Reader and a writer over the client end of a
// connection to a fakeServer, and the rawIO under both.
func clientSide(t *testing.T, c net.Conn, bufSize int) (*Reader, *bufio.Writer, *rawIO) {
	t.Helper()
	rw := RawServerIO(c)
	raw, ok := rw.(*rawIO)
	if !ok {
		t.Fatalf("RawServerIO(TCP) = %T, want *rawIO", rw)
	}
	return NewReader(rw, 4096, 0), bufio.NewWriterSize(rw, bufSize), raw
}

// TestReadMessageAfterNoEmptyRead: request after request to a server that
// answers each after a pause, ReadMessageAfter writes each request and
// waits for its answer without reading the socket first (where a Flush and
// a ReadMessage read it once in vain), and the answers come in order.
func TestReadMessageAfterNoEmptyRead(t *testing.T) {
	a, b := tcpPair(t)
	go fakeServer(b, 2*time.Millisecond, nil)
	r, w, raw := clientSide(t, a, 4096)
	const rounds = 20
	for i := 0; i < rounds; i++ {
		w.Write(AppendQuery(nil, "SELECT 1"))
		typ, _, err := r.ReadMessageAfter(w)
		expectAnswer(t, r, typ, err)
	}
	if got, want := raw.waits, rounds; got != want {
		t.Fatalf("requests written then waited for without a read: %d, want %d", got, want)
	}
	// A read that finds nothing after the wait is a spurious wake-up (the
	// poller reporting readiness again for data already read): rare.
	t.Logf("reads that found nothing with ReadMessageAfter: %d of %d requests", raw.emptyReads, rounds)
	raw.emptyReads = 0
	if !raw.serverIdle() {
		t.Fatalf("server not idle after %d answered queries: out %d in %d tail %d", rounds, raw.out, raw.in, raw.tail)
	}
	// The same with Flush and ReadMessage, for comparison (timing decides
	// how many of its reads come too early: logged, not checked).
	for i := 0; i < rounds; i++ {
		w.Write(AppendQuery(nil, "SELECT 1"))
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		typ, _, err := r.ReadMessage()
		expectAnswer(t, r, typ, err)
	}
	t.Logf("reads that found nothing with Flush and ReadMessage: %d of %d requests", raw.emptyReads, rounds)
}

// TestReadMessageAfterFramesSplit: frames written in pieces (a write buffer
// smaller than a message) are followed all the same.
func TestReadMessageAfterFramesSplit(t *testing.T) {
	a, b := tcpPair(t)
	go fakeServer(b, 0, nil)
	r, w, raw := clientSide(t, a, 16)
	for i := 0; i < 5; i++ {
		w.Write(AppendQuery(nil, "SELECT 'a query longer than the write buffer'"))
		typ, _, err := r.ReadMessageAfter(w)
		expectAnswer(t, r, typ, err)
		if !raw.serverIdle() {
			t.Fatalf("round %d: server not idle: out %d in %d tail %d left %d nhdr %d", i, raw.out, raw.in, raw.tail, raw.fr.left, raw.fr.nhdr)
		}
	}
}

// TestReadMessageAfterNotIdle: with answers still due for what was sent
// before (a pipeline), or messages that need no answer, ReadMessageAfter
// reads as ReadMessage does, and nothing is lost or waited for in vain.
func TestReadMessageAfterNotIdle(t *testing.T) {
	a, b := tcpPair(t)
	go fakeServer(b, 0, nil)
	r, w, raw := clientSide(t, a, 4096)

	// Two queries in flight: the first answer comes before the second's.
	w.Write(AppendQuery(nil, "SELECT 1"))
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the first answer is in the socket
	if raw.serverIdle() {
		t.Fatal("server idle with a query unanswered")
	}
	w.Write(AppendQuery(nil, "SELECT 2"))
	typ, _, err := r.ReadMessageAfter(w)
	expectAnswer(t, r, typ, err)
	typ, _, err = r.ReadMessage()
	expectAnswer(t, r, typ, err)

	// A Parse flushed on its own, then its Sync: the ParseComplete the
	// server sends at the Sync comes first.
	WriteFrame(w, MsgParse, AppendParse(nil, "", "SELECT 1", []byte{0, 0}))
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	if raw.serverIdle() {
		t.Fatal("server idle with a Parse not synced")
	}
	w.Write(SyncMsg)
	if typ, _, err = r.ReadMessageAfter(w); err != nil || typ != MsgParseComplete {
		t.Fatalf("after Parse and Sync: %q, %v; want ParseComplete", typ, err)
	}
	if typ, _, err = r.ReadMessage(); err != nil || typ != MsgReadyForQuery {
		t.Fatalf("after ParseComplete: %q, %v; want ReadyForQuery", typ, err)
	}

	// Parse and Flush (no Sync): answered, but not a request that makes
	// the server idle again; read as before.
	WriteFrame(w, MsgParse, AppendParse(nil, "", "SELECT 1", []byte{0, 0}))
	w.Write(FlushMsg)
	if typ, _, err = r.ReadMessageAfter(w); err != nil || typ != MsgParseComplete {
		t.Fatalf("after Parse and Flush: %q, %v; want ParseComplete", typ, err)
	}
	w.Write(SyncMsg)
	if typ, _, err = r.ReadMessageAfter(w); err != nil || typ != MsgReadyForQuery {
		t.Fatalf("after Sync: %q, %v; want ReadyForQuery", typ, err)
	}
	// A Parse that fails, flushed on its own: the server's error is in the
	// socket before the next request, a Query the server ignores (it skips
	// to the next Sync). The error is read, then the Sync's answer.
	WriteFrame(w, MsgParse, AppendParse(nil, "", "bad", []byte{0, 0}))
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	w.Write(AppendQuery(nil, "SELECT 1"))
	if typ, _, err = r.ReadMessageAfter(w); err != nil || typ != MsgErrorResponse {
		t.Fatalf("after a failed Parse and a Query: %q, %v; want the ErrorResponse", typ, err)
	}
	w.Write(SyncMsg)
	if typ, _, err = r.ReadMessageAfter(w); err != nil || typ != MsgReadyForQuery {
		t.Fatalf("after Sync: %q, %v; want ReadyForQuery", typ, err)
	}
	if raw.waits != 0 {
		t.Fatalf("%d requests waited for without a read, want 0 (the server was never idle before them)", raw.waits)
	}
	// The ignored Query never gets its ReadyForQuery: the server no longer
	// counts as idle on this connection, and requests are read as before.
	if raw.serverIdle() {
		t.Fatalf("server idle though a Query went unanswered: out %d in %d tail %d", raw.out, raw.in, raw.tail)
	}
}

// TestReadMessageAfterStaleMessage: a message the server sent unasked
// while nobody read (a notice), whose readiness the poller reported before
// ReadMessageAfter reset it, is read with the answer to the next request:
// the wait ends when that answer arrives.
func TestReadMessageAfterStaleMessage(t *testing.T) {
	a, b := tcpPair(t)
	r, w, _ := clientSide(t, a, 4096)
	notice := AppendError(nil, &Error{Severity: "NOTICE", Code: "00000", Message: "unasked"})
	if _, err := b.Write(notice); err != nil {
		t.Fatal(err)
	}
	// Idle processors poll the network meanwhile: the notice's readiness
	// is reported before ReadMessageAfter begins.
	time.Sleep(20 * time.Millisecond)
	go fakeServer(b, 0, nil)
	w.Write(AppendQuery(nil, "SELECT 1"))
	typ, _, err := r.ReadMessageAfter(w)
	if err != nil || typ != MsgNotice {
		t.Fatalf("first message: %q, %v; want the notice", typ, err)
	}
	typ, _, err = r.ReadMessage()
	expectAnswer(t, r, typ, err)
}

// TestReadMessageAfterServerGone: a server that sent a FATAL error and
// closed its end while idle: the request written to it ends the wait (the
// peer's reset), and the error it sent comes first, as with a plain read.
func TestReadMessageAfterServerGone(t *testing.T) {
	a, b := tcpPair(t)
	r, w, _ := clientSide(t, a, 4096)
	fatal := AppendError(nil, &Error{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"})
	if _, err := b.Write(fatal); err != nil {
		t.Fatal(err)
	}
	b.Close()
	time.Sleep(20 * time.Millisecond) // the FIN and its readiness are in
	w.Write(AppendQuery(nil, "SELECT 1"))
	typ, body, err := r.ReadMessageAfter(w)
	if err != nil || typ != MsgErrorResponse || ErrorCode(body) != "57P01" {
		t.Fatalf("after the server closed: %q %q, %v; want its FATAL ErrorResponse 57P01", typ, body, err)
	}
	if typ, _, err = r.ReadMessage(); err == nil {
		t.Fatalf("read after the FATAL error: %q, want an error (end of stream)", typ)
	}
}

// TestReadMessageAfterDeadline: a read deadline already past ends
// ReadMessageAfter with a timeout, and the request was written all the
// same (as a Flush before the read would have).
func TestReadMessageAfterDeadline(t *testing.T) {
	a, b := tcpPair(t)
	got := make(chan byte, 4)
	go fakeServer(b, 0, got)
	r, w, _ := clientSide(t, a, 4096)
	a.SetReadDeadline(time.Now().Add(-time.Second))
	w.Write(AppendQuery(nil, "SELECT 1"))
	_, _, err := r.ReadMessageAfter(w)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("ReadMessageAfter past its deadline: %v, want a timeout", err)
	}
	if typ := <-got; typ != MsgQuery {
		t.Fatalf("server read %q, want the Query", typ)
	}
	if w.Buffered() != 0 {
		t.Fatalf("%d bytes left in the writer", w.Buffered())
	}
	a.SetReadDeadline(time.Time{})
	typ, _, err := r.ReadMessage()
	expectAnswer(t, r, typ, err)
}
