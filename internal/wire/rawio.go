package wire

import (
	"io"
	"net"
	"os"
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
	r.readFn, r.writeFn = r.readSys, r.writeSys
	return r
}

type rawIO struct {
	rc              syscall.RawConn
	readFn, writeFn func(fd uintptr) bool
	// State of the call in progress, for readSys and writeSys.
	rp   []byte // read into
	rn   int
	rerr syscall.Errno
	wp   []byte // left to write
	werr syscall.Errno
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
