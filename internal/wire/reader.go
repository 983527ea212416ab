package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// ErrMalformed reports a frame whose header cannot be a valid message.
var ErrMalformed = errors.New("malformed message")

// TooLargeError reports a message larger than the reader's limit.
type TooLargeError struct {
	Size, Max int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("message of %d bytes exceeds the limit of %d bytes", e.Size, e.Max)
}

// DefaultMaxMessage is the message size limit used when none is given.
const DefaultMaxMessage = 64 << 20

// MaxStartupLen bounds startup packets (PostgreSQL uses 10000).
const MaxStartupLen = 10000

// Reader reads framed protocol messages from one connection. The body a read
// returns stays valid only until the next read.
type Reader struct {
	br  *bufio.Reader
	max int
	big []byte
}

// NewReader returns a Reader over r with a buffer of size bytes that refuses
// message bodies larger than max (0 means DefaultMaxMessage).
func NewReader(r io.Reader, size, max int) *Reader {
	if max <= 0 {
		max = DefaultMaxMessage
	}
	if size <= 0 {
		size = 16 << 10
	}
	return &Reader{br: bufio.NewReaderSize(r, size), max: max}
}

// Buffered is how many bytes have been read from the connection but not yet
// returned as messages.
func (r *Reader) Buffered() int { return r.br.Buffered() }

// ReadStartup reads an untyped startup-phase packet (StartupMessage,
// SSLRequest, GSSENCRequest or CancelRequest) and returns it without its
// length word.
func (r *Reader) ReadStartup() ([]byte, error) {
	hdr, err := r.br.Peek(4)
	if err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr))
	if n < 8 || n > MaxStartupLen {
		return nil, fmt.Errorf("startup packet length %d: %w", n, ErrMalformed)
	}
	return r.readBody(4, n)
}

// ReadMessage reads one typed message: its type byte and body.
func (r *Reader) ReadMessage() (byte, []byte, error) {
	hdr, err := r.br.Peek(5)
	if err != nil {
		if err == io.EOF && len(hdr) > 0 {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, err
	}
	typ := hdr[0]
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n > 1<<30 {
		return 0, nil, fmt.Errorf("message %q length %d: %w", typ, n, ErrMalformed)
	}
	if n-4 > r.max {
		return typ, nil, &TooLargeError{Size: n - 4, Max: r.max}
	}
	body, err := r.readBody(5, n+1)
	return typ, body, err
}

// readBody returns bytes [skip, total) of the next total bytes and consumes them.
func (r *Reader) readBody(skip, total int) ([]byte, error) {
	if total <= r.br.Size() {
		b, err := r.br.Peek(total)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		_, _ = r.br.Discard(total)
		return b[skip:total:total], nil
	}
	if _, err := r.br.Discard(skip); err != nil {
		return nil, err
	}
	n := total - skip
	if cap(r.big) < n {
		r.big = make([]byte, n)
	}
	b := r.big[:n]
	if _, err := io.ReadFull(r.br, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	if n > 1<<20 {
		r.big = nil // do not pin huge buffers
	}
	return b, nil
}

// WriteFrame writes one typed message to w.
func WriteFrame(w *bufio.Writer, typ byte, body []byte) error {
	n := uint32(len(body) + 4)
	w.WriteByte(typ)
	w.WriteByte(byte(n >> 24))
	w.WriteByte(byte(n >> 16))
	w.WriteByte(byte(n >> 8))
	w.WriteByte(byte(n))
	_, err := w.Write(body)
	return err
}
