package proclife_test

import (
	"errors"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/proclife"
)

// helperEnv makes the test binary a parent that starts `sleep` with Start,
// prints its pid and waits to be killed; sleepEnv makes it wait.
const (
	helperEnv = "PROCLIFE_TEST_PARENT"
	sleepEnv  = "PROCLIFE_TEST_SLEEP"
)

// init keeps the main goroutine on the main thread, so that no test
// goroutine runs there: a goroutine that returns locked to the main thread
// wedges it instead of ending it, and TestStartOutlivesCallersThread needs
// its thread to end (it waited 600 s for a death signal that never came
// when its goroutine happened to run on the main thread).
func init() { runtime.LockOSThread() }

func TestMain(m *testing.M) {
	if os.Getenv(sleepEnv) == "1" {
		time.Sleep(time.Hour)
	}
	if os.Getenv(helperEnv) == "1" {
		sleep := exec.Command("sleep", "600")
		if _, err := proclife.Start(sleep, syscall.SIGKILL); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Stdout.WriteString(strconv.Itoa(sleep.Process.Pid) + "\n")
		time.Sleep(time.Hour)
	}
	os.Exit(m.Run())
}

// waitGone waits up to a minute for pid to exit.
func waitGone(t *testing.T, pid int, what string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !proclife.Gone(pid); {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("%s (pid %d) still runs a minute after its parent was killed", what, pid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestChildDiesWithKilledParent: a parent started with Start is SIGKILLed;
// its child goes with it.
func TestChildDiesWithKilledParent(t *testing.T) {
	parent, line := pgtest.Child(t, helperEnv)
	pid, _ := strconv.Atoi(line)
	if pid <= 0 || proclife.Gone(pid) {
		t.Fatalf("the parent printed %q: no running child", line)
	}
	parent.Process.Kill()
	parent.Wait()
	waitGone(t, pid, "sleep")
}

// TestStartOutlivesCallersThread: Pdeathsig set by hand on a child started
// from a goroutine locked to its thread kills the child when that goroutine
// returns (the runtime ends its thread; golang/go#27505), though the process
// lives on. A child of Start, started from the same goroutine, lives on.
func TestStartOutlivesCallersThread(t *testing.T) {
	naive := exec.Command("sleep", "600")
	tied := exec.Command("sleep", "600")
	var exited <-chan error
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // and return locked: the thread ends
		naive.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := naive.Start(); err != nil {
			started <- err
			return
		}
		var err error
		exited, err = proclife.Start(tied, syscall.SIGKILL)
		started <- err
	}()
	if err := <-started; err != nil {
		t.Fatal(err)
	}
	defer tied.Process.Kill()
	err := naive.Wait() // returns once the thread's end killed it
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the hand-tied child ended with %v; want killed by its death signal", err)
	}
	select {
	case err := <-exited:
		t.Fatalf("Start's child died with the caller's thread: %v", err)
	default:
	}
	if proclife.Gone(tied.Process.Pid) {
		t.Fatal("Start's child died with the caller's thread")
	}
}

func TestID(t *testing.T) {
	self, err := proclife.Self()
	if err != nil {
		t.Fatal(err)
	}
	if !self.Alive() {
		t.Errorf("%v: this process is not alive", self)
	}
	back, err := proclife.ParseID(self.String())
	if err != nil || back != self {
		t.Errorf("ParseID(%q) = %v, %v", self.String(), back, err)
	}
	reused := self
	reused.Start++
	if reused.Alive() {
		t.Errorf("%v (another start time of this pid) is alive", reused)
	}
	for _, bad := range []string{"", "123", "pid x start 1 boot b", "pid 1 start 1"} {
		if _, err := proclife.ParseID(bad); err == nil {
			t.Errorf("ParseID(%q) accepted", bad)
		}
	}
}

func TestNamed(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$", dir+"/x")
	other := exec.Command(os.Args[0], "-test.run=^$", "--config="+dir+"-other/x")
	for _, c := range []*exec.Cmd{cmd, other} {
		c.Env = append(os.Environ(), sleepEnv+"=1")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { c.Process.Kill(); c.Wait() }()
	}
	got := proclife.Named(dir)
	if len(got) != 1 || got[0] != cmd.Process.Pid {
		t.Errorf("Named(%s) = %v, want [%d] (not %d, whose path only shares the prefix)", dir, got, cmd.Process.Pid, other.Process.Pid)
	}
}
