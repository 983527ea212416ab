package wire

import (
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
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawIO{rc: rc}
	// The callbacks are made once: a closure per call would be a heap
	// allocation per read and write.
	r.readFn, r.writeFn, r.pooledFn = r.readSys, r.writeSys, r.readPooledSys
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
		return e != syscall.EAGAIN
	}
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
