package pool

import (
	"context"
	"syscall"
	"testing"
	"unsafe"
)

// BenchmarkQuiet is the cost of the non-blocking peek Acquire makes at a
// connection idle longer than Config.CheckIdle (see Conn.quiet): what
// peeking at every checkout would add per transaction.
func BenchmarkQuiet(b *testing.B) {
	c := idleConn(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if !c.quiet() {
			b.Fatal("idle connection not quiet")
		}
	}
}

// TestQuietAllocatesNothing: the look at every checkout allocates nothing.
func TestQuietAllocatesNothing(t *testing.T) {
	p := New("n1", srv.NewDatabase(t), Config{MaxSize: 1}, nil)
	t.Cleanup(p.Close)
	c, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Release)
	if !c.quiet() {
		t.Fatal("idle connection not quiet")
	}
	if n := testing.AllocsPerRun(100, func() { c.quiet() }); n != 0 {
		t.Errorf("quiet allocates %.0f times, want 0", n)
	}
}

// BenchmarkPeekSyscall is the peek's system call alone, on a descriptor
// taken once: the floor of what a check at every checkout can cost.
func BenchmarkPeekSyscall(b *testing.B) {
	c := idleConn(b)
	rc, err := c.nc.(syscall.Conn).SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	var fd uintptr
	rc.Control(func(f uintptr) { fd = f })
	var buf [1]byte
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&buf[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if errno != syscall.EAGAIN {
			b.Fatal(errno)
		}
	}
}

// idleConn is a connection of a one-connection pool on a new database,
// with nothing to read.
func idleConn(b testing.TB) *Conn {
	p := New("n1", srv.NewDatabase(b), Config{MaxSize: 1}, nil)
	b.Cleanup(p.Close)
	c, err := p.Acquire(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(c.Release)
	return c
}
