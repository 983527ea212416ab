package wire

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"unsafe"
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

// PinnedMax is the largest body a Reader with a Budget reads into a buffer
// it keeps for the next messages; larger bodies get a buffer of their own,
// counted in the Budget. Without a Budget the limit is 1 MiB.
const PinnedMax = 128 << 10

// Reader reads framed protocol messages from one connection. The body a read
// returns stays valid only until the next read.
//
// Its buffer can be given back while the connection is quiet (ReleaseIdle):
// a Reader over RawIO then takes a buffer from a pool shared by the Readers
// of its size only while a read system call returns data, so that thousands
// of idle clients hold no read buffer.
type Reader struct {
	rd   io.Reader
	raw  *rawIO  // rd, when it is a socket read with RawIO
	buf  []byte  // nil while released
	bufp *[]byte // buf's pool entry
	pool *sync.Pool
	r, w int // buf[r:w] is buffered
	size int
	max  int
	big  []byte

	budget *Budget
	bctx   context.Context
	held   int64 // bytes of budget held for the last body
	owned  bool  // the last body is in a buffer the Reader will not reuse

	// cut is a large body whose read a deadline ended part way (the
	// router's idle watch wakes a client's read so): the next ReadMessage
	// goes on with it, instead of reading its rest as new messages.
	cut      []byte
	cutN     int  // bytes of cut read
	cutTyp   byte // its message type
	cutOwned bool // cut is a buffer of its own (see owned)
	// skipLeft is what is left to skip of a body refused for memory
	// (skipErr) whose skipping a deadline cut; cutTyp is its type.
	skipLeft int
	skipErr  error
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
	rr := &Reader{rd: r, size: size, max: max, pool: bufPool(size)}
	rr.raw, _ = r.(*rawIO)
	return rr
}

// bufPools holds released read buffers, one *sync.Pool per buffer size.
var bufPools sync.Map

func bufPool(size int) *sync.Pool {
	if p, ok := bufPools.Load(size); ok {
		return p.(*sync.Pool)
	}
	p, _ := bufPools.LoadOrStore(size, &sync.Pool{New: func() any { b := make([]byte, size); return &b }})
	return p.(*sync.Pool)
}

// ReleaseIdle gives r's buffer back to the pool when nothing is buffered
// in it: the next read takes one again. Bodies returned before must no
// longer be used. Call it before waiting for a quiet connection.
func (r *Reader) ReleaseIdle() {
	if r.buf == nil || r.r != r.w {
		return
	}
	p := r.bufp
	r.buf, r.bufp, r.r, r.w = nil, nil, 0, 0
	r.pool.Put(p)
}

// Pending returns the bytes read from the connection but not yet returned
// as messages, without reading or consuming any: a look at messages that
// arrived with the one being handled. It is valid until the next read.
func (r *Reader) Pending() []byte { return r.buf[r.r:r.w] }

// fill reads once from the connection into the free end of the buffer,
// after moving what is buffered to its start when the end is full. Without
// a buffer, a RawIO connection is read into a pooled one taken only when
// data is there (see rawIO.readPooled).
func (r *Reader) fill() error {
	if r.buf == nil {
		if r.raw != nil {
			bp, n, err := r.raw.readPooled(r.pool)
			if bp != nil {
				r.buf, r.bufp, r.r, r.w = *bp, bp, 0, n
			}
			return err
		}
		r.bufp = r.pool.Get().(*[]byte)
		r.buf = *r.bufp
	}
	if r.w == len(r.buf) {
		if r.r == 0 {
			return bufio.ErrBufferFull
		}
		r.w = copy(r.buf, r.buf[r.r:r.w])
		r.r = 0
	}
	for i := 0; i < 100; i++ {
		n, err := r.rd.Read(r.buf[r.w:])
		r.w += n
		if err != nil || n > 0 {
			return err
		}
	}
	return io.ErrNoProgress
}

// peek returns the next n bytes (n <= size) without consuming them.
func (r *Reader) peek(n int) ([]byte, error) {
	for r.w-r.r < n {
		if r.buf != nil && r.r > 0 && len(r.buf)-r.r < n {
			r.w = copy(r.buf, r.buf[r.r:r.w])
			r.r = 0
		}
		if err := r.fill(); err != nil {
			if r.w-r.r >= n {
				break
			}
			return r.buf[r.r:r.w], err
		}
	}
	return r.buf[r.r : r.r+n], nil
}

// discard consumes the next n bytes; it returns how many it consumed.
func (r *Reader) discard(n int) (int, error) {
	done := 0
	for done < n {
		if r.r == r.w {
			if err := r.fill(); err != nil && r.r == r.w {
				return done, err
			}
		}
		k := min(n-done, r.w-r.r)
		r.r += k
		done += k
	}
	return done, nil
}

// skipRefused skips the rest of a body refused for memory (skipLeft), at a
// pace shared by all the readers (see SkipRate), and returns err, the
// refusal; a deadline that cuts it leaves the rest for the next
// ReadMessage (readSkip).
func (r *Reader) skipRefused(err error) error {
	for r.skipLeft > 0 {
		step := min(r.skipLeft, 256<<10)
		if perr := r.budget.pace(r.bctx, step); perr != nil {
			r.skipLeft = 0
			return perr
		}
		k, derr := r.discard(step)
		r.skipLeft -= k
		if derr != nil {
			if errors.Is(derr, os.ErrDeadlineExceeded) {
				r.skipErr = err
				return derr
			}
			r.skipLeft = 0
			return unexpected(derr)
		}
	}
	return err
}

// readSkip goes on skipping the refused body a deadline cut.
func (r *Reader) readSkip() (byte, []byte, error) {
	err := r.skipRefused(r.skipErr)
	if r.skipLeft > 0 {
		return 0, nil, err // cut again
	}
	r.skipErr = nil
	return r.cutTyp, nil, err
}

// readFull fills b with the next len(b) bytes: what is buffered, then
// straight from the connection. It returns how many it filled.
func (r *Reader) readFull(b []byte) (int, error) {
	k := copy(b, r.buf[r.r:r.w])
	r.r += k
	for k < len(b) {
		n, err := r.rd.Read(b[k:])
		k += n
		if err != nil && k < len(b) {
			return k, err
		}
	}
	return k, nil
}

// readCut goes on reading the body a deadline cut (see Reader.cut).
func (r *Reader) readCut() (byte, []byte, error) {
	n, err := r.readFull(r.cut[r.cutN:])
	r.cutN += n
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, nil, err // cut again
	}
	typ, b, owned := r.cutTyp, r.cut, r.cutOwned
	r.cut = nil
	if err != nil {
		r.Release()
		return 0, nil, unexpected(err)
	}
	r.owned = owned
	return typ, b, nil
}

// UseBudget makes r take bodies larger than PinnedMax from b (see Budget);
// ctx ends its waits for memory (the router's shutdown).
func (r *Reader) UseBudget(ctx context.Context, b *Budget) {
	r.budget, r.bctx = b, ctx
}

// SetMax changes the largest message body r accepts (0 means
// DefaultMaxMessage): the router keeps it small until the client has
// authenticated.
func (r *Reader) SetMax(max int) {
	if max <= 0 {
		max = DefaultMaxMessage
	}
	r.max = max
}

// Release returns the memory held for the last body to the budget. The body
// must not be used afterwards (ReadMessage releases it too).
func (r *Reader) Release() {
	if r.held > 0 {
		r.budget.dropped(r.held)
		r.held = 0
	}
	r.owned = false
}

// String returns b, which must lie in the body of the last message read, as
// a string: without a copy when that body is in a buffer of its own that
// the Reader will not reuse (a large body: copying it would double the memory
// it takes), copied otherwise. The string stays valid after the next read;
// the caller must not modify the body afterwards.
func (r *Reader) String(b []byte) string {
	if r.owned && len(b) > 0 {
		return unsafe.String(&b[0], len(b))
	}
	return string(b)
}

// Buffered is how many bytes have been read from the connection but not yet
// returned as messages.
func (r *Reader) Buffered() int { return r.w - r.r }

// Quiet reports whether r holds no part of a message: nothing buffered, no
// body whose read a deadline cut part way.
func (r *Reader) Quiet() bool { return r.r == r.w && r.cut == nil && r.skipLeft == 0 }

// MessageBuffered reports whether a whole message is buffered, so that the
// next ReadMessage returns it without reading from the connection (a
// message cut at the end of what the peer has sent so far is not).
func (r *Reader) MessageBuffered() bool {
	if r.w-r.r < 5 {
		return false
	}
	return r.w-r.r > int(binary.BigEndian.Uint32(r.buf[r.r+1:]))
}

// ReadStartup reads an untyped startup-phase packet (StartupMessage,
// SSLRequest, GSSENCRequest or CancelRequest) and returns it without its
// length word.
func (r *Reader) ReadStartup() ([]byte, error) {
	hdr, err := r.peek(4)
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
	if r.cut != nil {
		return r.readCut()
	}
	if r.skipLeft > 0 {
		return r.readSkip()
	}
	r.Release()
	hdr, err := r.peek(5)
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
	if r.cut != nil || r.skipLeft > 0 {
		r.cutTyp = typ
	}
	if typ == MsgReadyForQuery && err == nil && r.raw != nil {
		r.raw.in++ // see ReadMessageAfter
	}
	return typ, body, err
}

// Flusher is a write buffer: a *bufio.Writer, a *ServerWriter.
type Flusher interface {
	Flush() error
	Buffered() int
}

// ReadMessageAfter flushes w and reads the next message: w.Flush, then
// ReadMessage.
//
// Over RawServerIO, when w writes to the connection r reads, the server had
// answered every Sync and Query written before (r read its ReadyForQuery)
// and w's messages end with a Sync or a Query, the server will answer them
// after they are written, and the read(2) that would find nothing before it
// had time to (a system call per request) is skipped: the flush is made
// inside the wait for the socket's readiness (syscall.RawConn.Read resets
// the readiness before its first callback, so the answer's arrival ends the
// wait), and the first read comes once the answer is there. Asynchronous
// messages the server sent meanwhile are read with the answer.
func (r *Reader) ReadMessageAfter(w Flusher) (byte, []byte, error) {
	if w.Buffered() == 0 {
		return r.ReadMessage()
	}
	if r.raw == nil || !r.raw.serverIdle() || r.r != r.w {
		if err := w.Flush(); err != nil {
			return 0, nil, err
		}
		return r.ReadMessage()
	}
	r.Release()
	if r.buf == nil {
		r.bufp = r.pool.Get().(*[]byte)
		r.buf = *r.bufp
	}
	r.r, r.w = 0, 0
	n, err := r.raw.flushWait(w, r.buf)
	r.w = n
	if err != nil {
		return 0, nil, err
	}
	return r.ReadMessage()
}

// readBody returns bytes [skip, total) of the next total bytes and consumes them.
func (r *Reader) readBody(skip, total int) ([]byte, error) {
	if total <= r.size {
		b, err := r.peek(total)
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		r.r += total
		return b[skip:total:total], nil
	}
	if _, err := r.discard(skip); err != nil {
		return nil, err
	}
	n := total - skip
	pin := 1 << 20
	if r.budget != nil {
		pin = PinnedMax
	}
	if n <= pin {
		if cap(r.big) < n {
			r.big = make([]byte, n)
		}
		b := r.big[:n]
		if k, err := r.readFull(b); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				r.cut, r.cutN, r.cutOwned = b, k, false
			}
			return nil, unexpected(err)
		}
		return b, nil
	}
	if r.budget != nil {
		if err := r.budget.acquire(r.bctx, int64(n)); err != nil {
			var me *MemoryError
			if errors.As(err, &me) {
				// Skip the body so that the connection stays in step
				// and the client reads the error.
				r.skipLeft = n
				return nil, r.skipRefused(err)
			}
			return nil, err
		}
		r.held = int64(n)
	}
	b := make([]byte, n)
	if k, err := r.readFull(b); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			r.cut, r.cutN, r.cutOwned = b, k, true // its budget stays held
			return nil, err
		}
		r.Release()
		return nil, unexpected(err)
	}
	r.owned = true
	return b, nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// WriteFrame writes one typed message to w.
func WriteFrame(w *bufio.Writer, typ byte, body []byte) error {
	writeHeader(w, typ, len(body)+4)
	_, err := w.Write(body)
	return err
}

// writeHeader writes a message's type byte and length word to w: appended
// to w's free space in one Write when it has room (a relayed message's
// header was five WriteByte calls, each a function call, on the hot path),
// else a byte at a time (a header array passed to Write would move to the
// heap: bufio may hand it to the underlying writer).
func writeHeader(w *bufio.Writer, typ byte, n int) {
	if b := w.AvailableBuffer(); cap(b) >= 5 {
		w.Write(append(b, typ, byte(n>>24), byte(n>>16), byte(n>>8), byte(n)))
		return
	}
	w.WriteByte(typ)
	w.WriteByte(byte(n >> 24))
	w.WriteByte(byte(n >> 16))
	w.WriteByte(byte(n >> 8))
	w.WriteByte(byte(n))
}
