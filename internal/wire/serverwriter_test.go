package wire

import (
	"bufio"
	"bytes"
	"io"
	"testing"
)

// TestServerWriterCountsAnySplit: the messages that drop the unnamed
// statement (Query, Parse of "") are counted however the stream is cut
// into writes, and the bytes reach the server unchanged.
func TestServerWriterCountsAnySplit(t *testing.T) {
	var stream []byte
	stream = AppendQuery(stream, "SELECT 1")
	stream = append(stream, MsgParse, 0, 0, 0, 0)
	named := AppendParse(nil, "s1", "SELECT 2", nil)
	stream[len(stream)-1] = byte(len(named) + 4)
	stream = append(stream, named...)
	unnamed := AppendParse(nil, "", "SELECT 3", nil)
	stream = append(stream, MsgParse, 0, 0, 0, byte(len(unnamed)+4))
	stream = append(stream, unnamed...)
	stream = append(stream, SyncMsg...)
	const want = 2 // the Query and the unnamed Parse
	for cut1 := 0; cut1 <= len(stream); cut1++ {
		for cut2 := cut1; cut2 <= len(stream); cut2 += 3 {
			var out bytes.Buffer
			w := NewServerWriter(&out, 64)
			w.Write(stream[:cut1])
			w.Write(stream[cut1:cut2])
			for _, b := range stream[cut2:] {
				w.WriteByte(b)
			}
			w.Flush()
			if got := w.UnnamedGen(); got != want {
				t.Fatalf("cut at %d and %d: counted %d, want %d", cut1, cut2, got, want)
			}
			if !bytes.Equal(out.Bytes(), stream) {
				t.Fatalf("cut at %d and %d: wrote %q", cut1, cut2, out.Bytes())
			}
		}
	}
	var out bytes.Buffer
	w := NewServerWriter(&out, 64)
	w.WriteFrame(MsgParse, named)
	w.WriteFrame(MsgBind, []byte{0, 0, 0, 0, 0, 0, 0, 0})
	if got := w.UnnamedGen(); got != 0 {
		t.Fatalf("named Parse and Bind counted %d", got)
	}
	w.WriteFrame(MsgParse, unnamed)
	w.WriteFrame(MsgQuery, []byte("SELECT 1\x00"))
	if got := w.UnnamedGen(); got != 2 {
		t.Fatalf("unnamed Parse and Query counted %d, want 2", got)
	}
}

// TestServerWriterAllocatesNothing: the backend write path of every
// transaction allocates nothing (a header array moved to the heap cost the
// router's extended-protocol transaction 6 allocations once).
func TestServerWriterAllocatesNothing(t *testing.T) {
	w := NewServerWriter(io.Discard, 1<<10)
	q := AppendQuery(nil, "SELECT 1")
	parse := AppendParse(nil, "", "SELECT 1", nil)
	bind, syncLen := []byte{0, 0, 0, 0, 0, 0, 0, 0}, []byte{0, 0, 0, 4}
	if n := testing.AllocsPerRun(100, func() {
		w.WriteFrame(MsgParse, parse)
		w.WriteFrame(MsgBind, bind)
		w.Write(q)
		w.WriteByte(MsgSync)
		w.Write(syncLen)
		w.Flush()
	}); n != 0 {
		t.Fatalf("%v allocations per batch of messages, want 0", n)
	}
}

// TestHeaderNearFullBuffer: a message header is written whole into the
// buffer's free space, or a byte at a time when fewer than five bytes are
// free; either way the stream is the same and nothing is allocated
// (WriteFrame, ServerWriter.WriteFrame and WriteHeader).
func TestHeaderNearFullBuffer(t *testing.T) {
	body := []byte("SELECT 1\x00")
	want := AppendQuery(nil, "SELECT 1")
	for pad := 0; pad <= 16; pad++ {
		var got, gotSW, gotHdr bytes.Buffer
		got.Grow(256) // the buffers' own growth is not counted
		gotSW.Grow(256)
		gotHdr.Grow(256)
		bw := bufio.NewWriterSize(&got, 16)
		sw := NewServerWriter(&gotSW, 16)
		hw := NewServerWriter(&gotHdr, 16)
		fill := bytes.Repeat([]byte{'x'}, pad)
		bw.Write(fill)
		sw.Write(fill)
		hw.Write(fill)
		if n := testing.AllocsPerRun(1, func() {
			WriteFrame(bw, MsgQuery, body)
			sw.WriteFrame(MsgQuery, body)
			hw.WriteHeader(MsgQuery, len(body))
			hw.Write(body)
		}); n != 0 {
			t.Errorf("pad %d: %v allocations, want 0", pad, n)
		}
		bw.Flush()
		sw.Flush()
		hw.Flush()
		for name, b := range map[string]*bytes.Buffer{"WriteFrame": &got, "ServerWriter.WriteFrame": &gotSW, "WriteHeader": &gotHdr} {
			// AllocsPerRun ran the function twice (a warm-up run first).
			if w := append(append(append([]byte{}, fill...), want...), want...); !bytes.Equal(b.Bytes(), w) {
				t.Errorf("pad %d, %s: wrote %q, want %q", pad, name, b.Bytes(), w)
			}
		}
	}
	// WriteHeader's header is followed like any other (the Query drops the
	// unnamed statement).
	w := NewServerWriter(io.Discard, 16)
	w.WriteHeader(MsgQuery, len(body))
	w.Write(body)
	if got, want := w.UnnamedGen(), uint64(1); got != want {
		t.Errorf("WriteHeader's Query messages counted %d, want %d", got, want)
	}
}
