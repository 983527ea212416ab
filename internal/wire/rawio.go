package wire

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// RawIO returns a reader/writer for c that makes its read and write system
// calls without telling the Go scheduler (syscall.RawSyscall), still
// waiting for readiness through Go's poller when a call would block, so
// deadlines and Close from another goroutine work as usual. A proxy makes
// two short non-blocking socket calls per message batch in each direction;
// announced system calls let the runtime hand the goroutine's P to another
// thread when one is slow (a write that wakes the peer often is), which
// costs thread wakeups and context switches per transaction. Connections
// that are not plain sockets (TLS) are returned as they are.
func RawIO(c net.Conn) io.ReadWriter {
	return newRawIO(c, false)
}

// RawServerIO is RawIO for a connection to a PostgreSQL server: it also
// follows the messages written to it, so that a Reader over it can tell
// when the server has answered all of them (see Reader.ReadMessageAfter).
func RawServerIO(c net.Conn) io.ReadWriter {
	return newRawIO(c, true)
}

func newRawIO(c net.Conn, track bool) io.ReadWriter {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawIO{rc: rc, track: track}
	// The callbacks are made once: a closure per call would be a heap
	// allocation per read and write.
	r.readFn, r.writeFn, r.pooledFn, r.flushWaitFn = r.readSys, r.writeSys, r.readPooledSys, r.flushWaitSys
	return r
}

type rawIO struct {
	rc              syscall.RawConn
	readFn, writeFn func(fd uintptr) bool
	pooledFn        func(fd uintptr) bool
	// State of the call in progress, for readSys and writeSys.
	rp   []byte // read into
	rn   int
	rerr syscall.Errno
	wp   []byte // left to write
	werr syscall.Errno
	pool *sync.Pool // readPooledSys takes its buffer from pool
	pb   *[]byte    // and holds it here

	// With track, Write follows the frames written (see outFrames): out
	// counts the Sync and Query messages written, tail the messages after
	// the last of them, hdr/nhdr a header written in part, left the bytes
	// of the current body still to come. in counts the ReadyForQuery
	// messages a Reader read.
	track   bool
	fr      frames
	out, in int64
	tail    int
	// State of flushWait: fw is flushed by the first call of flushWaitSys.
	flushWaitFn func(fd uintptr) bool
	fw          Flusher
	fdone       bool
	ferr        error
	// For tests: emptyReads counts the reads that found nothing (EAGAIN),
	// waits the requests flushWait wrote before waiting without a read.
	emptyReads, waits int
}

// readSys is the RawConn.Read callback; false means "wait for readiness and
// call again".
func (r *rawIO) readSys(fd uintptr) bool {
	for {
		m, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&r.rp[0])), uintptr(len(r.rp)))
		if e == syscall.EINTR {
			continue
		}
		r.rn, r.rerr = int(m), e
		if e == syscall.EAGAIN {
			r.emptyReads++
			return false
		}
		return true
	}
}

// flushWaitSys is the RawConn.Read callback of flushWait. Its first call
// writes the request and asks to wait for readiness without reading: the
// descriptor's readiness was reset before this call (RawConn.Read's
// prepareRead), so the answer, which can only arrive after the request is
// written, marks it readable again and ends the wait. Later calls read.
func (r *rawIO) flushWaitSys(fd uintptr) bool {
	if !r.fdone {
		r.fdone = true
		if err := r.fw.Flush(); err != nil {
			r.ferr = err
			return true
		}
		if !r.answerDue() {
			return r.readSys(fd) // nothing written that the server must answer
		}
		r.waits++
		return false
	}
	return r.readSys(fd)
}

// outFrames follows the frames of p, the next bytes written.
func (r *rawIO) outFrames(p []byte) {
	for {
		typ, rest, ok := r.fr.next(p)
		if !ok {
			return
		}
		p = rest
		switch typ {
		case MsgSync, MsgQuery:
			r.out++
			r.tail = 0
		default:
			r.tail++
		}
	}
}

// frames follows the message frames of a stream written in pieces.
type frames struct {
	hdr  [5]byte // a header written in part: nhdr bytes of it
	nhdr int
	left int // bytes of the current body still to come
}

// next consumes p up to the end of the next whole message header, skipping
// body bytes, and returns the message's type, the rest of p and true; false
// when p ends first.
func (f *frames) next(p []byte) (byte, []byte, bool) {
	for len(p) > 0 {
		if f.left > 0 {
			k := min(f.left, len(p))
			f.left -= k
			p = p[k:]
			continue
		}
		k := copy(f.hdr[f.nhdr:], p)
		f.nhdr += k
		p = p[k:]
		if f.nhdr < len(f.hdr) {
			return 0, nil, false
		}
		f.nhdr = 0
		f.left = max(int(binary.BigEndian.Uint32(f.hdr[1:]))-4, 0)
		return f.hdr[0], p, true
	}
	return 0, nil, false
}

// between reports whether the stream ends with a whole message.
func (f *frames) between() bool { return f.left == 0 && f.nhdr == 0 }

// serverIdle reports whether the server answered every Sync and Query
// written with its ReadyForQuery and nothing was written after the last of
// them: it then sends nothing more unasked but asynchronous messages
// (notices, notifications, parameter changes, a FATAL error before it
// closes).
func (r *rawIO) serverIdle() bool {
	return r.track && r.in == r.out && r.tail == 0 && r.fr.between()
}

// answerDue reports whether, the server having been idle before the last
// write, that write ended with a whole Sync or Query message: the server
// answers it.
func (r *rawIO) answerDue() bool {
	return r.track && r.out > r.in && r.tail == 0 && r.fr.between()
}

// flushWait flushes w, whose messages the peer must answer, and reads the
// answer into p without the read that would find nothing before the peer
// had time to answer (see Reader.ReadMessageAfter).
func (r *rawIO) flushWait(w Flusher, p []byte) (int, error) {
	r.fw, r.fdone, r.ferr = w, false, nil
	r.rp, r.rn, r.rerr = p, 0, 0
	err := r.rc.Read(r.flushWaitFn)
	fdone, ferr := r.fdone, r.ferr
	r.fw, r.rp, r.ferr = nil, nil, nil
	switch {
	case !fdone:
		// The callback never ran (a deadline passed, or the connection
		// was closed): flush and read as before.
		if ferr := w.Flush(); ferr != nil {
			return 0, ferr
		}
		return r.Read(p)
	case ferr != nil:
		return 0, ferr
	case err != nil:
		// The wait failed: a plain read reports what the peer sent
		// before, or the error, as the read without the wait would.
		return r.Read(p)
	case r.rerr != 0:
		return 0, os.NewSyscallError("read", r.rerr)
	case r.rn == 0:
		return 0, io.EOF
	}
	return r.rn, nil
}

// readPooledSys is the RawConn.Read callback of readPooled: it takes a
// buffer from the pool for the read and gives it back when the read would
// block, so that the wait that follows holds none.
func (r *rawIO) readPooledSys(fd uintptr) bool {
	if r.pb == nil {
		r.pb = r.pool.Get().(*[]byte)
	}
	b := *r.pb
	for {
		m, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if e == syscall.EINTR {
			continue
		}
		if e == syscall.EAGAIN {
			r.emptyReads++
			r.pool.Put(r.pb)
			r.pb = nil
			return false
		}
		r.rn, r.rerr = int(m), e
		return true
	}
}

// readPooled reads once into a buffer of pool, waiting for data (through
// Go's poller, like Read) without holding one. It returns the buffer with
// n > 0 bytes in it, or nil and the error (io.EOF at end of stream).
func (r *rawIO) readPooled(pool *sync.Pool) (*[]byte, int, error) {
	r.pool, r.rn, r.rerr = pool, 0, 0
	err := r.rc.Read(r.pooledFn)
	bp := r.pb
	r.pool, r.pb = nil, nil
	switch {
	case err != nil:
	case r.rerr != 0:
		err = os.NewSyscallError("read", r.rerr)
	case r.rn == 0:
		err = io.EOF
	}
	if err != nil {
		if bp != nil {
			pool.Put(bp)
		}
		return nil, 0, err
	}
	return bp, r.rn, nil
}

// writeSys is the RawConn.Write callback.
func (r *rawIO) writeSys(fd uintptr) bool {
	for len(r.wp) > 0 {
		m, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&r.wp[0])), uintptr(len(r.wp)))
		switch e {
		case 0:
			r.wp = r.wp[m:]
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false
		default:
			r.werr = e
			return true
		}
	}
	return true
}

func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r.rp, r.rn, r.rerr = p, 0, 0
	err := r.rc.Read(r.readFn)
	r.rp = nil
	if err != nil {
		return 0, err
	}
	if r.rerr != 0 {
		return 0, os.NewSyscallError("read", r.rerr)
	}
	if r.rn == 0 {
		return 0, io.EOF
	}
	return r.rn, nil
}

func (r *rawIO) Write(p []byte) (int, error) {
	r.wp, r.werr = p, 0
	err := r.rc.Write(r.writeFn)
	done := len(p) - len(r.wp)
	if r.track {
		r.outFrames(p[:done])
	}
	errno := r.werr
	r.wp = nil
	if err != nil {
		return done, err
	}
	if errno != 0 {
		return done, os.NewSyscallError("write", errno)
	}
	return done, nil
}
