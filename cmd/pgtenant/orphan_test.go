package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/devcluster"
	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/proclife"
)

// killedParentEnv makes the test binary a test that starts a dev cluster and
// its router as TestConsoleBrowser does, prints what runs (orphanReport) and
// waits to be killed.
const killedParentEnv = "PGTENANT_TEST_KILLED_PARENT"

// orphanReport is what a killedParent left running.
type orphanReport struct {
	Base        string `json:"base"`
	Router      int    `json:"router"`
	Postmasters []int  `json:"postmasters"`
}

// killedParent is the test binary run with killedParentEnv. It returns only
// on failure (the exit code).
func killedParent() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "killed parent:", err)
		return 1
	}
	base, err := pgtest.TempDir("killed")
	if err != nil {
		return fail(err)
	}
	ctx := context.Background()
	dir := filepath.Join(base, "cluster")
	cl, err := devcluster.Up(ctx, devcluster.Options{Dir: dir, Nodes: 2, Shards: 4,
		Settings: map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}})
	if err != nil {
		return fail(err)
	}
	os.Setenv(asPgtenantEnv, "1") // the router child runs as pgtenant
	a := &app{stdout: io.Discard, stderr: os.Stderr}
	if _, err := a.startDevRouter(ctx, dir); err != nil {
		return fail(err)
	}
	rep := orphanReport{Base: base}
	b, err := os.ReadFile(devcluster.PIDFile(dir))
	if err != nil {
		return fail(err)
	}
	rep.Router, _ = strconv.Atoi(strings.TrimSpace(string(b)))
	for _, n := range cl.Nodes {
		pid, err := postmasterPID(n.Dir)
		if err != nil {
			return fail(err)
		}
		rep.Postmasters = append(rep.Postmasters, pid)
	}
	if err := json.NewEncoder(os.Stdout).Encode(rep); err != nil {
		return fail(err)
	}
	time.Sleep(time.Hour)
	return 1
}

// postmasterPID reads the pid of the server of the localpg cluster in dir.
func postmasterPID(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "data", "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
}

// waitGone waits up to a minute for the process id to end.
func waitGone(t *testing.T, id proclife.ID, what string) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); id.Alive(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Errorf("%s (pid %d) still runs a minute after its test binary was killed", what, id.PID)
			return
		}
	}
}

// TestKilledTestBinaryLeavesNothing: a test binary that started a dev
// cluster (two servers) and its router child is SIGKILLed, as `go test
// -timeout` or a user would. The router dies with it (a parent-death
// signal); the servers, daemons by design, are stopped and their directory
// removed by the binary's watchdog (pgtest), with no other binary starting.
// Before session 12 both ran on for hours; before session 13 the servers ran
// until the next test binary's start (pgtest.ReapOrphans).
func TestKilledTestBinaryLeavesNothing(t *testing.T) {
	pgtest.PrivateTempDir(t) // no other binary's ReapOrphans does the watchdog's work
	child, line := pgtest.Child(t, killedParentEnv)
	var rep orphanReport
	if err := json.Unmarshal([]byte(line), &rep); err != nil || rep.Router <= 0 || len(rep.Postmasters) != 2 {
		t.Fatalf("the child started no cluster and router: %q, %v", line, err)
	}
	ids := map[string]proclife.ID{}
	for i, pid := range append([]int{rep.Router}, rep.Postmasters...) {
		id, err := proclife.Of(pid)
		if err != nil {
			t.Fatal(err)
		}
		ids[[]string{"the router child", "node1's server", "node2's server"}[i]] = id
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	child.Wait()

	for _, n := range []string{"the router child", "node1's server", "node2's server"} {
		waitGone(t, ids[n], n)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(rep.Base); os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the killed binary's directory %s is still there a minute later", rep.Base)
		}
	}
}

// TestDevDownFindsItsRouter: dev down (StopRouter) stops a dev router whose
// pid file is missing (a `dev up` killed between starting the router and
// writing the file), and leaves alone the program a stale pid file names
// (after a reboot, any program can have that pid).
func TestDevDownFindsItsRouter(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv(asPgtenantEnv, "1") // the child started from os.Executable() is pgtenant
	catalogDSN := nodeA.NewDatabase(t)
	t.Setenv("PGTENANT_CATALOG", catalogDSN)
	mustRun(t, "init", "--shards", "4")
	ports := make([]int, 2)
	for i := range ports {
		p, err := localpg.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	dir, _ := filepath.Abs("cluster")
	os.MkdirAll(dir, 0o755)
	cfg := fmt.Sprintf("catalog: %q\nrouter:\n  listen: %q\n  metrics_listen: %q\n  auth: trust\n", catalogDSN,
		net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1])))
	if err := os.WriteFile(filepath.Join(dir, devcluster.ConfigFile), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { devcluster.StopRouter(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := &app{stdout: io.Discard, stderr: os.Stderr}
	if _, err := a.startDevRouter(ctx, dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(devcluster.PIDFile(dir))
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	router, err := proclife.Of(pid)
	if err != nil {
		t.Fatal(err)
	}

	// A stale pid file naming another program.
	other := exec.Command("sleep", "600")
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	os.WriteFile(devcluster.PIDFile(dir), []byte(strconv.Itoa(other.Process.Pid)), 0o644)
	if got := devcluster.Routers(dir); !slices.Equal(got, []int{pid}) {
		t.Errorf("Routers = %v, want [%d] (the router, not pid %d of the stale file)", got, pid, other.Process.Pid)
	}
	os.Remove(devcluster.PIDFile(dir))
	if _, running := devRouterRunning(dir); !running {
		t.Error("without its pid file the router is not seen running")
	}
	devcluster.StopRouter(dir)
	waitGone(t, router, "the dev router")
	if proclife.Gone(other.Process.Pid) {
		t.Error("dev down killed the program a stale pid file named")
	}
}
