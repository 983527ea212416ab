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
	return &rawIO{rc: rc}
}

type rawIO struct {
	rc syscall.RawConn
	// hold makes the next Write keep its bytes in pending; the next Read
	// sends them (see HoldWrite).
	hold    bool
	pending []byte
	pbuf    []byte
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

func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno, werrno syscall.Errno
	send := len(r.pending) > 0
	err := r.rc.Read(func(fd uintptr) bool {
		if send {
			// Send the held bytes after the poller's read readiness was
			// reset (RawConn.Read does that before calling us): the
			// answer arriving afterwards marks the socket ready, so
			// waiting first cannot miss it.
			send = false
			for len(r.pending) > 0 {
				m, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&r.pending[0])), uintptr(len(r.pending)))
				switch e {
				case 0:
					r.pending = r.pending[m:]
				case syscall.EINTR:
				case syscall.EAGAIN:
					return true // finish with a blocking write below
				default:
					werrno = e
					return true
				}
			}
			return false
		}
		for {
			m, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
			if e == syscall.EINTR {
				continue
			}
			n, errno = int(m), e
			return e != syscall.EAGAIN
		}
	})
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
	done := 0
	var errno syscall.Errno
	err := r.rc.Write(func(fd uintptr) bool {
		for done < len(p) {
			m, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&p[done])), uintptr(len(p)-done))
			switch e {
			case 0:
				done += int(m)
			case syscall.EINTR:
			case syscall.EAGAIN:
				return false
			default:
				errno = e
				return true
			}
		}
		return true
	})
	if err != nil {
		return done, err
	}
	if errno != 0 {
		return done, os.NewSyscallError("write", errno)
	}
	return done, nil
}
