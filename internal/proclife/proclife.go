package proclife

import (
	"fmt"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// Start starts cmd with sig as its parent-death signal (see the package
// comment) and returns a channel that receives cmd.Wait's result once the
// child exits; the caller must not call cmd.Wait itself. cmd.SysProcAttr's
// other fields are kept.
func Start(cmd *exec.Cmd, sig syscall.Signal) (<-chan error, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	setDeathSignal(cmd.SysProcAttr, sig)
	started := make(chan error, 1)
	exited := make(chan error, 1)
	go func() {
		// Never unlocked: the thread ends with this goroutine, which
		// returns only after the child has exited.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	return exited, nil
}

// ID names one process across pid reuse: its pid, its start time (clock
// ticks after boot) and the boot it started in.
type ID struct {
	PID   int
	Start uint64
	Boot  string
}

// String is the form ParseID reads: "pid 12 start 345 boot 0a1b-...".
func (id ID) String() string {
	return fmt.Sprintf("pid %d start %d boot %s", id.PID, id.Start, id.Boot)
}

// ParseID reads an ID written by String.
func ParseID(s string) (ID, error) {
	var id ID
	f := strings.Fields(s)
	if len(f) != 6 || f[0] != "pid" || f[2] != "start" || f[4] != "boot" {
		return id, fmt.Errorf("process id %q: want \"pid N start N boot ID\"", s)
	}
	var err error
	if id.PID, err = strconv.Atoi(f[1]); err != nil || id.PID <= 0 {
		return id, fmt.Errorf("process id %q: bad pid", s)
	}
	if id.Start, err = strconv.ParseUint(f[3], 10, 64); err != nil {
		return id, fmt.Errorf("process id %q: bad start time", s)
	}
	id.Boot = f[5]
	return id, nil
}

// Self is the calling process's ID.
func Self() (ID, error) { return Of(syscall.Getpid()) }

// Alive reports whether the process id names still runs: the same pid,
// started at the same time in the same boot, and not a zombie.
func (id ID) Alive() bool {
	now, err := Of(id.PID)
	return err == nil && now == id && !Gone(id.PID)
}
