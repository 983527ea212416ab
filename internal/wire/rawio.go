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
	rc syscall.RawConn
	// hold makes the next Write keep its bytes in pending; the next Read
	// sends them (see HoldWrite).
	hold    bool
	pending []byte
	pbuf    []byte

	readFn, writeFn func(fd uintptr) bool
	// State of the call in progress, for readSys and writeSys.
	rp     []byte // read into
	rn     int
	rerr   syscall.Errno
	send   bool // readSys sends pending first
	werrno syscall.Errno
	wp     []byte // left to write
	werr   syscall.Errno
}

// WriteHolder is implemented by the reader/writers RawIO returns for plain
// sockets.
type WriteHolder interface {
	// HoldWrite makes the next Write return at once and keep its bytes;
	// the next Read sends them and then waits for the answer without first
	// trying a read that would fail with EAGAIN. A proxy that writes a
	// request and reads its answer saves a system call per round trip.
	// Only the goroutine that reads may call it, just before a Write
	// (bufio.Writer.Flush) that is followed by a Read, and nothing else may
	// write to the connection in between.
	HoldWrite()
}

func (r *rawIO) HoldWrite() { r.hold = true }

// readSys is the RawConn.Read callback: it sends held bytes first (once),
// then reads; false means "wait for readiness and call again".
func (r *rawIO) readSys(fd uintptr) bool {
	if r.send {
		// Send the held bytes after the poller's read readiness was reset
		// (RawConn.Read does that before calling us): the answer arriving
		// afterwards marks the socket ready, so waiting first cannot miss
		// it.
		r.send = false
		for len(r.pending) > 0 {
			m, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&r.pending[0])), uintptr(len(r.pending)))
			switch e {
			case 0:
				r.pending = r.pending[m:]
			case syscall.EINTR:
			case syscall.EAGAIN:
				return true // finished with a blocking write by Read
			default:
				r.werrno = e
				return true
			}
		}
		return false
	}
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
	r.rp, r.rn, r.rerr, r.werrno = p, 0, 0, 0
	r.send = len(r.pending) > 0
	err := r.rc.Read(r.readFn)
	r.rp = nil
	n, errno, werrno := r.rn, r.rerr, r.werrno
	if err != nil {
		if rest := r.pending; len(rest) > 0 {
			// Not sent (a deadline already passed, say): send it anyway.
			r.pending = nil
			r.Write(rest)
		}
		return 0, err
	}
	if werrno != 0 {
		r.pending = nil
		return 0, os.NewSyscallError("write", werrno)
	}
	if len(r.pending) > 0 {
		// The socket's send buffer filled: write the rest the usual way,
		// then read.
		rest := r.pending
		r.pending = nil
		if _, err := r.Write(rest); err != nil {
			return 0, err
		}
		return r.Read(p)
	}
	if errno != 0 {
		return 0, os.NewSyscallError("read", errno)
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (r *rawIO) Write(p []byte) (int, error) {
	if r.hold {
		r.hold = false
		r.pbuf = append(r.pbuf[:0], p...)
		r.pending = r.pbuf
		return len(p), nil
	}
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
