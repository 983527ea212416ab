package pgtest

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/internal/proclife"
)

// The watchdog: the servers a test binary starts are daemons (pg_ctl puts
// them in a session of their own), so a SIGKILLed binary's servers would
// run on until the next binary's ReapOrphans. The first directory a binary
// makes (mkdirOwned) starts a watchdog: the same binary run again with
// watchdogEnv naming its parent, tied to it by a parent-death signal
// (proclife.Start). It holds no pipe of its parent's and sleeps; when the
// parent dies (killed, or simply exiting) it runs ReapOrphans, which stops
// and removes what the dead parent left (a parent that cleaned up left
// nothing), and exits. ReapOrphans at the next start stays the fallback for
// a watchdog killed too.

// watchdogEnv, set, makes a test binary the watchdog of the process its value
// names (a proclife.ID): init runs watch and exits, before TestMain or any
// test. Only a test binary importing pgtest acts on it.
const watchdogEnv = "PGTEST_WATCHDOG_OF"

// watchdogOn is false in the test binaries of pgtest's own TestReapOrphans,
// which need servers left behind.
var watchdogOn = true

var watchdogOnce sync.Once

// init turns this process into a watchdog when watchdogEnv asks for one
// (only the child startWatchdog starts has it set). An init rather than a
// call from Main, against the style note on init side effects: the child is
// the parent's own executable, and not every one that makes a pgtest
// directory goes through Main. The examples' TestMain (it builds pgtenant
// and starts a dev cluster), the devcluster and localpg tests (the default
// test main, no TestMain) and the e2e suites (main programs, through
// suiterun.Main; "-test.run" is no flag of theirs) would each need a call
// of their own first, and one that forgot it would run its setup again in
// the child, which makes a directory and so starts a watchdog of its own,
// and so on.
func init() {
	if owner := os.Getenv(watchdogEnv); owner != "" {
		os.Exit(watch(owner))
	}
}

// startWatchdog starts this binary's watchdog once. A failure only loses the
// watchdog (ReapOrphans remains), so it is reported, not returned.
func startWatchdog() {
	if !watchdogOn {
		return
	}
	watchdogOnce.Do(func() {
		self, err := proclife.Self()
		if err == nil {
			var exe string
			if exe, err = os.Executable(); err == nil {
				cmd := exec.Command(exe, "-test.run=^$")
				cmd.Env = append(os.Environ(), watchdogEnv+"="+self.String())
				_, err = proclife.Start(cmd, syscall.SIGTERM)
			}
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: no watchdog for this binary's servers (a killed binary's are stopped at the next start): %v\n", err)
		}
	})
}

// watch waits until the process owner names has exited, then reaps what it
// left, and returns the exit code. Every signal, the parent-death SIGTERM
// as well as a Ctrl-C sent to the whole process group, only makes it look
// at the parent again: while the parent lives, it cleans up after itself.
func watch(owner string) int {
	id, err := proclife.ParseID(owner)
	if err != nil {
		return 2
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	// Checked after Notify: the parent may have died before it.
	for id.Alive() {
		select {
		case <-sigs:
		case <-time.After(10 * time.Second): // in case the signal never comes
		}
	}
	ReapOrphans()
	return 0
}
