package proclife

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

func setDeathSignal(attr *syscall.SysProcAttr, sig syscall.Signal) { attr.Pdeathsig = sig }

// Of returns the ID of the process pid, from /proc.
func Of(pid int) (ID, error) {
	f, err := statFields(pid)
	if err != nil {
		return ID{}, err
	}
	// After "pid (comm)": state is field 3, starttime field 22.
	if len(f) < 20 {
		return ID{}, fmt.Errorf("read /proc/%d/stat: %d fields", pid, len(f))
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return ID{}, fmt.Errorf("read /proc/%d/stat: start time %q: %w", pid, f[19], err)
	}
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ID{}, fmt.Errorf("read boot id: %w", err)
	}
	return ID{PID: pid, Start: start, Boot: strings.TrimSpace(string(boot))}, nil
}

// statFields returns /proc/pid/stat's fields after the command name (which
// may hold spaces): the state first.
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil, fmt.Errorf("read process %d: %w", pid, err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("read /proc/%d/stat: no command name", pid)
	}
	return strings.Fields(string(b[i+1:])), nil
}

// Gone reports whether process pid has exited: no such process, or a zombie
// its parent has not reaped yet.
func Gone(pid int) bool {
	f, err := statFields(pid)
	return err != nil || len(f) == 0 || f[0] == "Z" || f[0] == "X"
}

// Named returns the live processes (other than this one) with an argument
// that is dir or a path under it, or an option ending in one
// ("--config=DIR/x").
func Named(dir string) []int {
	dir = filepath.Clean(dir)
	entries, _ := os.ReadDir("/proc")
	self := os.Getpid()
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self || Gone(pid) {
			continue
		}
		args, err := Args(pid)
		if err != nil {
			continue
		}
		for _, arg := range args {
			if _, v, ok := strings.Cut(arg, "="); ok && strings.HasPrefix(arg, "-") {
				arg = v
			}
			if arg == dir || strings.HasPrefix(arg, dir+"/") {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// Args returns the command line of process pid (empty for a kernel thread
// or a zombie).
func Args(pid int) ([]string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, fmt.Errorf("read process %d's command line: %w", pid, err)
	}
	b = bytes.TrimSuffix(b, []byte{0})
	if len(b) == 0 {
		return nil, nil
	}
	return strings.Split(string(b), "\x00"), nil
}
