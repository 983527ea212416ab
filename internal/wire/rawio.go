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
}

func (r *rawIO) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var errno syscall.Errno
	err := r.rc.Read(func(fd uintptr) bool {
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
		return 0, err
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
