package main

import (
	"fmt"
	"os"
	"strconv"
	"syscall"
	"unsafe"
)

// Linux scheduling policies (sched(7)).
const (
	schedOther = 0
	schedBatch = 3
)

// setSchedPolicy sets the scheduling policy of every thread of this process
// (the routers' and the harness's; threads the Go runtime starts later
// inherit it from the thread that starts them). SCHED_BATCH (the "sched=batch"
// variant) keeps a thread woken by a socket from preempting the task that
// woke it: a backend that sent the router an answer runs on to its next
// recv instead of being switched out for the router's thread (bench/README.md,
// session 11: the router preempts the backends about twice as often as
// pgbouncer does, and the server's CPU per transaction grows with it).
func setSchedPolicy(policy int) error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("list threads: %w", err)
	}
	var param struct{ priority int32 }
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		_, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETSCHEDULER, uintptr(tid), uintptr(policy), uintptr(unsafe.Pointer(&param)))
		if e != 0 && e != syscall.ESRCH { // a thread may have exited since
			return fmt.Errorf("sched_setscheduler thread %d: %w", tid, e)
		}
	}
	return nil
}
