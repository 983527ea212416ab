//go:build !linux

package proclife

import (
	"errors"
	"syscall"
)

// Without a parent-death signal the child is started plainly.
func setDeathSignal(*syscall.SysProcAttr, syscall.Signal) {}

// Of returns the ID of the process pid; outside Linux only the pid.
func Of(pid int) (ID, error) {
	if pid <= 0 {
		return ID{}, errors.New("no such process")
	}
	return ID{PID: pid}, nil
}

// Gone reports whether process pid has exited.
func Gone(pid int) bool { return syscall.Kill(pid, 0) != nil }

// Named finds nothing outside Linux.
func Named(string) []int { return nil }

// Args is not known outside Linux.
func Args(pid int) ([]string, error) {
	return nil, errors.New("process command lines are read on Linux only")
}
