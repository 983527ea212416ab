package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/devcluster"
	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

func TestDevDownWithoutCluster(t *testing.T) {
	t.Chdir(t.TempDir())
	code, out, errOut := pgtenant(t, "dev", "down", "--dir", "nothing-here")
	if code != 1 || !strings.Contains(errOut, "no local cluster in") || !strings.Contains(errOut, "nothing-here") {
		t.Errorf("dev down of an empty dir: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat("nothing-here"); !os.IsNotExist(err) {
		t.Errorf("dev down created the directory: %v", err)
	}
}

func TestNextStepsNameTheDir(t *testing.T) {
	t.Chdir(t.TempDir())
	def, _ := filepath.Abs(".pgtenant")
	if got, want := nextSteps(def, "pgtenant shard list"), []string{"pgtenant shard list", "pgtenant dev down"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("next steps for the default dir = %q, want %q", got, want)
	}
	other, _ := filepath.Abs("my demo")
	got := nextSteps(other, "pgtenant shard list")
	want := []string{
		"export PGTENANT_CONFIG='" + filepath.Join(other, "pgtenant.yaml") + "'",
		"pgtenant shard list",
		"pgtenant dev down --dir '" + other + "'",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("next steps for %s = %q, want %q", other, got, want)
	}
	if got, want := routerURL("127.0.0.1:16432"), "postgres://postgres@127.0.0.1:16432/app?sslmode=disable"; got != want {
		t.Errorf("routerURL = %q, want %q", got, want)
	}
}

// TestDevRouterStartFailureIsReported: a dev router that listens for
// clients and then exits (its metrics port is taken) is an error naming the
// cause, not a router reported as started.
func TestDevRouterStartFailureIsReported(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv(asPgtenantEnv, "1") // the child started from os.Executable() is pgtenant
	catalogDSN := nodeA.NewDatabase(t)
	t.Setenv("PGTENANT_CATALOG", catalogDSN)
	mustRun(t, "init", "--shards", "4")
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := filepath.Abs("cluster")
	os.MkdirAll(dir, 0o755)
	cfg := fmt.Sprintf("catalog: %q\nrouter:\n  listen: \"127.0.0.1:%d\"\n  metrics_listen: %q\n  auth: trust\n", catalogDSN, port, taken.Addr().String())
	if err := os.WriteFile(filepath.Join(dir, devcluster.ConfigFile), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { devcluster.StopRouter(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := &app{stdout: os.Stdout, stderr: os.Stderr}
	addr, err := a.startDevRouter(ctx, dir)
	if err == nil || !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), "router.log") {
		t.Fatalf("startDevRouter with its metrics port taken = %q, %v; want an error saying the address is in use", addr, err)
	}
}

func TestDevUpPortsAndGitignore(t *testing.T) {
	base, err := pgtest.TempDir("devup")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	t.Chdir(base)
	out := mustRun(t, "dev", "up", "--dir", "my cluster", "--nodes", "1", "--shards", "4", "--no-router")
	abs, _ := filepath.Abs("my cluster")
	t.Cleanup(func() { devcluster.Down(context.Background(), abs, true) })
	for _, s := range []string{"export PGTENANT_CONFIG='" + filepath.Join(abs, "pgtenant.yaml") + "'", "pgtenant dev down --dir '" + abs + "'"} {
		if !strings.Contains(out, s) {
			t.Errorf("dev up --dir 'my cluster' output does not say %q:\n%s", s, out)
		}
	}
	if b, err := os.ReadFile(filepath.Join(abs, ".gitignore")); err != nil || !strings.Contains(string(b), "*\n") {
		t.Errorf("cluster .gitignore: %q, %v", b, err)
	}
	cfg, _, err := loadConfig(filepath.Join(abs, devcluster.ConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	low, _ := devcluster.EphemeralRange()
	for _, addr := range []string{cfg.Router.Listen, cfg.Router.MetricsListen} {
		_, p, _ := net.SplitHostPort(addr)
		var n int
		fmt.Sscan(p, &n)
		if n < 10000 || n >= low {
			t.Errorf("dev router address %s is not between 10000 and the ephemeral range (from %d)", addr, low)
		}
	}
	// Started with --no-router, its status says the router is not running
	// and how to start it.
	out = mustRun(t, "dev", "status", "--dir", "my cluster")
	if want := "router:  not running (`pgtenant dev up --dir '" + abs + "'` starts it"; !strings.Contains(out, want) {
		t.Errorf("dev status without a router does not say %q:\n%s", want, out)
	}
	// With the PGTENANT_CONFIG it printed exported, dev status and dev down
	// find the cluster without --dir (there is no ./.pgtenant here).
	t.Setenv("PGTENANT_CONFIG", filepath.Join(abs, devcluster.ConfigFile))
	if out := mustRun(t, "dev", "status"); !strings.Contains(out, "local cluster in "+abs+"\n") {
		t.Errorf("dev status with PGTENANT_CONFIG set does not show %s:\n%s", abs, out)
	}
	out = mustRun(t, "dev", "down")
	if !strings.Contains(out, "stopped") {
		t.Errorf("dev down: %s", out)
	}
	// A stopped cluster's status says how to start it, not what to run on it.
	out = mustRun(t, "dev", "status", "--dir", "my cluster")
	if want := "pgtenant dev up --dir '" + abs + "'"; !strings.Contains(out, want) || strings.Contains(out, "tenant add") {
		t.Errorf("dev status of a stopped cluster does not say %q (and only that):\n%s", want, out)
	}
}

// TestDevUpSaysRouterPortMoved: when another program took the dev router's
// kept port while the cluster was down, dev up says the router moves and to
// which port (DATABASE_URL holds the old one), and dev down names the
// directory in the command that starts the cluster again.
func TestDevUpSaysRouterPortMoved(t *testing.T) {
	base, err := pgtest.TempDir("devport")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	t.Chdir(base)
	abs, _ := filepath.Abs("c")
	t.Cleanup(func() { devcluster.Down(context.Background(), abs, true) })
	mustRun(t, "dev", "up", "--dir", "c", "--nodes", "1", "--shards", "4", "--no-router")
	if out := mustRun(t, "dev", "down", "--dir", "c"); !strings.Contains(out, "`pgtenant dev up --dir "+abs+"` starts it again") {
		t.Errorf("dev down --dir c does not name the directory in the command that starts it again:\n%s", out)
	}
	old := keptRouterPort(abs)
	taken, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", old))
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	code, out, errOut := pgtenant(t, "dev", "up", "--dir", "c", "--no-router")
	now := keptRouterPort(abs)
	if code != 0 || now == old || !strings.Contains(errOut, fmt.Sprintf("the router's port %d is taken", old)) || !strings.Contains(errOut, fmt.Sprintf("moves to port %d", now)) {
		t.Errorf("dev up with the router's port %d taken: exit %d, port now %d; want a warning naming both\n%s%s", old, code, now, out, errOut)
	}
}
