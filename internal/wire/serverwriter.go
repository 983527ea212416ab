package wire

import (
	"bufio"
	"encoding/binary"
	"io"
)

// ServerWriter buffers messages to a PostgreSQL server and counts, as they
// are written, the messages that drop the server's unnamed prepared
// statement: every Query (a simple Query replaces it) and every Parse of
// the unnamed statement. Whoever Parses the unnamed statement notes the
// count right after (UnnamedGen); the statement is still its own while the
// count has not moved. A sender of a Query cannot forget to say so, as it
// could when each had to clear what the owner recorded.
type ServerWriter struct {
	bw *bufio.Writer
	fr frames
	// parse: the message being written is a Parse whose first body byte
	// (the statement's name; NUL for the unnamed one) is still to come.
	parse   bool
	unnamed uint64
}

// NewServerWriter returns a ServerWriter over w with a buffer of size bytes.
func NewServerWriter(w io.Writer, size int) *ServerWriter {
	return &ServerWriter{bw: bufio.NewWriterSize(w, size)}
}

// Write buffers p, whole messages or pieces of them.
func (w *ServerWriter) Write(p []byte) (int, error) {
	w.scan(p)
	return w.bw.Write(p)
}

// WriteByte buffers one byte.
func (w *ServerWriter) WriteByte(c byte) error {
	b := [1]byte{c}
	w.scan(b[:])
	return w.bw.WriteByte(c)
}

// WriteFrame buffers one typed message.
func (w *ServerWriter) WriteFrame(typ byte, body []byte) error {
	var h [5]byte
	h[0] = typ
	binary.BigEndian.PutUint32(h[1:], uint32(len(body)+4))
	w.scan(h[:])
	w.scan(body)
	writeHeader(w.bw, typ, len(body)+4)
	_, err := w.bw.Write(body)
	return err
}

// WriteHeader buffers the type byte and length word of a message of n body
// bytes, whose body the caller writes next.
func (w *ServerWriter) WriteHeader(typ byte, n int) {
	var h [5]byte
	h[0] = typ
	binary.BigEndian.PutUint32(h[1:], uint32(n+4))
	w.scan(h[:])
	writeHeader(w.bw, typ, n+4)
}

// Flush writes what is buffered to the server.
func (w *ServerWriter) Flush() error { return w.bw.Flush() }

// Buffered is the number of bytes written and not yet flushed.
func (w *ServerWriter) Buffered() int { return w.bw.Buffered() }

// UnnamedGen counts the Query messages and Parse messages of the unnamed
// statement written so far (whole headers; a Parse once its first body
// byte is written).
func (w *ServerWriter) UnnamedGen() uint64 { return w.unnamed }

// scan follows the frames of p, the next bytes written.
func (w *ServerWriter) scan(p []byte) {
	for len(p) > 0 {
		if w.parse && w.fr.left > 0 {
			w.parse = false
			if p[0] == 0 {
				w.unnamed++
			}
		}
		typ, rest, ok := w.fr.next(p)
		if !ok {
			return
		}
		p = rest
		switch typ {
		case MsgQuery:
			w.unnamed++
		case MsgParse:
			w.parse = w.fr.left > 0
		}
	}
}
