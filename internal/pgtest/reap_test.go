package pgtest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/proclife"
)

// orphanEnv makes the test binary start a server without a watchdog, print
// its directory and wait to be killed; watchedEnv does the same with the
// watchdog; interruptEnv through MainWith.
const (
	orphanEnv    = "PGTEST_ORPHAN"
	watchedEnv   = "PGTEST_WATCHED"
	interruptEnv = "PGTEST_INTERRUPT"
)

func TestMain(m *testing.M) {
	if os.Getenv(interruptEnv) == "1" {
		MainWith(m, []Spec{{Name: "interrupted"}}, func(s []*Server) {
			os.Stdout.WriteString(s[0].Cluster.Dir + "\n")
			time.Sleep(time.Hour)
		})
	}
	if watched, orphan := os.Getenv(watchedEnv) == "1", os.Getenv(orphanEnv) == "1"; watched || orphan {
		watchdogOn = watched // an orphan's server is left for ReapOrphans
		s, err := Start(map[bool]string{true: "watched", false: "orphan"}[watched])
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Stdout.WriteString(s.Cluster.Dir + "\n")
		time.Sleep(time.Hour)
	}
	os.Exit(m.Run())
}

// postmasterPID reads the pid of the server whose data directory is in dir.
func postmasterPID(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	if pid <= 0 || proclife.Gone(pid) {
		t.Fatalf("no server runs in %s (postmaster.pid says %q)", dir, b)
	}
	return pid
}

// TestReapOrphans: a test binary that started a server is SIGKILLed; its
// server runs on (a daemon) until the next binary's ReapOrphans, which stops
// it and removes its directory, and leaves alone a directory without an
// owner file and one whose owner runs.
func TestReapOrphans(t *testing.T) {
	PrivateTempDir(t)
	unmarked, err := os.MkdirTemp("", "pgtenant-test-unmarked-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(unmarked)
	mine, err := TempDir("test-mine")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(mine)

	child, dir := Child(t, orphanEnv)
	pid := postmasterPID(t, dir)
	child.Process.Kill()
	child.Wait()
	if proclife.Gone(pid) {
		t.Fatalf("the server (pid %d) stopped with the test binary: nothing to reap", pid)
	}

	reaped := ReapOrphans()
	if !slices.Contains(reaped, dir) {
		t.Errorf("ReapOrphans reaped %q, not %s", reaped, dir)
	}
	for deadline := time.Now().Add(time.Minute); !proclife.Gone(pid); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the dead binary's server (pid %d) still runs a minute after ReapOrphans", pid)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the dead binary's directory %s is still there: %v", dir, err)
	}
	for _, d := range []string{unmarked, mine} {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("ReapOrphans removed %s: %v", d, err)
		}
	}
}

// TestWatchdogStopsKilledBinarysServers: a test binary that started a
// server is SIGKILLed; its watchdog stops the server and removes its
// directory without waiting for another binary's ReapOrphans.
func TestWatchdogStopsKilledBinarysServers(t *testing.T) {
	PrivateTempDir(t)
	child, dir := Child(t, watchedEnv)
	id, err := proclife.Of(postmasterPID(t, dir))
	if err != nil {
		t.Fatal(err)
	}
	child.Process.Kill()
	child.Wait()
	for deadline := time.Now().Add(time.Minute); id.Alive(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the killed binary's server (pid %d) still runs a minute later: no watchdog stopped it", id.PID)
		}
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(dir); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the killed binary's directory %s is still there a minute later", dir)
		}
	}
}

// TestInterruptedBinaryStopsItsServers: a test binary (MainWith) that gets
// SIGTERM or SIGINT (Ctrl-C on go test) stops its servers and removes their
// directories before it dies of the signal; the servers, daemons in a
// session of their own, would not get the signal.
func TestInterruptedBinaryStopsItsServers(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		child, dir := Child(t, interruptEnv)
		id, err := proclife.Of(postmasterPID(t, dir))
		if err != nil {
			t.Fatal(err)
		}
		child.Process.Signal(sig)
		err = child.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != sig {
			t.Errorf("%v: the test binary ended with %v, want killed by the signal", sig, err)
		}
		if id.Alive() {
			t.Errorf("%v: the binary's server (pid %d) still runs after the binary ended", sig, id.PID)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%v: the binary's directory %s is still there: %v", sig, dir, err)
		}
	}
}
