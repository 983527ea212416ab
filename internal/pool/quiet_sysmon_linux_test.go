package pool

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

// TestQuietLeavesSysmonAsleep: the peek at every checkout is a system call
// the Go scheduler is not told of. One it is told of (syscall.Syscall6)
// wakes the runtime's sysmon thread, asleep while every P is idle and no
// timer is due, and resets its poll to every 20 µs for its next ~50 rounds:
// in a router that goes idle between transactions that was a thread switch
// every 20 µs, ~12 % of the router's CPU (bench/README.md, session 11).
//
// Each round waits, with no Go timer and no system call the scheduler is
// told of, for a server's answer to pg_sleep (so that sysmon sleeps), then
// peeks and works for 5 ms without a system call (so that a woken sysmon
// polls). The process's voluntary context switches over the rounds are
// compared with the same rounds without the peek.
func TestQuietLeavesSysmonAsleep(t *testing.T) {
	c := idleConn(t)
	wait := rawQuery(t, idleConn(t), "SELECT pg_catalog.pg_sleep(0.02)")
	const rounds = 20
	run := func(peek bool) int64 {
		wait() // reading /proc below and above wakes sysmon itself
		before := voluntarySwitches(t)
		for range rounds {
			wait()
			if peek && !c.quiet() {
				t.Fatal("idle connection not quiet")
			}
			for start := time.Now(); time.Since(start) < 5*time.Millisecond; {
			}
		}
		return voluntarySwitches(t) - before
	}
	control, peeked := run(false), run(true)
	t.Logf("voluntary context switches over %d rounds: %d without peeks, %d with", rounds, control, peeked)
	if extra := peeked - control; extra > rounds*10 {
		t.Errorf("%d peeks added %d voluntary context switches to the process (%d without them, %d with): the peek wakes the runtime's sysmon", rounds, extra, control, peeked)
	}
}

// rawQuery returns a function that sends sql as a simple Query on c's
// socket and waits for its ReadyForQuery through Go's poller, with raw
// system calls only.
func rawQuery(t *testing.T, c *Conn, sql string) func() {
	rc := c.Socket()
	if rc == nil {
		t.Fatal("connection without a socket")
	}
	msg := append([]byte{'Q', 0, 0, 0, 0}, sql...)
	msg = append(msg, 0)
	binary.BigEndian.PutUint32(msg[1:], uint32(len(msg)-1))
	buf := make([]byte, 4096)
	return func() {
		t.Helper()
		var werr syscall.Errno
		if err := rc.Write(func(fd uintptr) bool {
			_, _, werr = syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&msg[0])), uintptr(len(msg)))
			return true
		}); err != nil || werr != 0 {
			t.Fatalf("send %q: %v %v", sql, err, werr)
		}
		got := 0
		var rerr syscall.Errno
		if err := rc.Read(func(fd uintptr) bool {
			n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&buf[got])), uintptr(len(buf)-got))
			switch {
			case e == syscall.EAGAIN:
				return false
			case e != 0 || n == 0:
				rerr = e
				return true
			}
			got += int(n)
			// The answer ends with ReadyForQuery: 'Z', length 5, status.
			return got >= 6 && buf[got-6] == 'Z' && binary.BigEndian.Uint32(buf[got-5:]) == 5
		}); err != nil || rerr != 0 {
			t.Fatalf("answer to %q: %v %v", sql, err, rerr)
		}
	}
}

// voluntarySwitches is the sum of the voluntary context switches of this
// process's threads.
func voluntarySwitches(t *testing.T) int64 {
	t.Helper()
	files, err := filepath.Glob("/proc/self/task/*/status")
	if err != nil || len(files) == 0 {
		t.Fatalf("list threads: %v (%d found)", err, len(files))
	}
	var n int64
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // a thread that ended
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if v, ok := bytes.CutPrefix(sc.Bytes(), []byte("voluntary_ctxt_switches:")); ok {
				k, err := strconv.ParseInt(string(bytes.TrimSpace(v)), 10, 64)
				if err != nil {
					t.Fatalf("%s: %v", f, err)
				}
				n += k
			}
		}
	}
	return n
}
