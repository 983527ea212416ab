package examples

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// routerURL is the dev cluster's router, as an app's DATABASE_URL.
var routerURL string

// here is this package's directory.
var here = func() string { _, f, _, _ := runtime.Caller(0); return filepath.Dir(f) }()

// tenants are registered in the cluster every example uses.
var tenants = []string{"acme", "globex", "initech"}

func TestMain(m *testing.M) {
	code, err := run(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "examples:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

// run builds pgtenant, starts a dev cluster with the examples' schema and
// tenants, runs the tests and stops the cluster.
func run(m *testing.M) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Traversable by the postgres OS user the servers run as when root;
	// if this binary dies, the next test binary stops the cluster and its
	// router and removes it (pgtest.ReapOrphans).
	tmp, err := pgtest.TempDir("examples")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "pgtenant")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/pgtenant")
	build.Dir = filepath.Join(here, "..")
	if out, err := build.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("build pgtenant: %v\n%s", err, out)
	}
	dir := filepath.Join(tmp, "cluster")
	pgtenant := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, bin, args...)
		cmd.Dir = tmp
		cmd.Env = os.Environ()
		if cfg := filepath.Join(dir, "pgtenant.yaml"); fileExists(cfg) {
			cmd.Env = append(cmd.Env, "PGTENANT_CONFIG="+cfg)
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("pgtenant %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out), nil
	}
	if _, err := pgtenant("dev", "up", "--dir", dir, "--nodes", "2", "--shards", "16"); err != nil {
		return 0, err
	}
	defer func() {
		if out, err := pgtenant("dev", "down", "--destroy", "--dir", dir); err != nil {
			fmt.Fprintln(os.Stderr, out, err)
		}
	}()
	if _, err := pgtenant("migrate", "up", "--dir", filepath.Join(here, "schema")); err != nil {
		return 0, err
	}
	for _, t := range tenants {
		if _, err := pgtenant("tenant", "add", t); err != nil {
			return 0, err
		}
	}
	port, err := os.ReadFile(filepath.Join(dir, "router.port"))
	if err != nil {
		return 0, fmt.Errorf("read the dev router's port: %w", err)
	}
	routerURL = fmt.Sprintf("postgres://postgres@127.0.0.1:%s/app?sslmode=disable", strings.TrimSpace(string(port)))
	return m.Run(), nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// runApp runs an example's own test command in dir with DATABASE_URL set.
func runApp(t *testing.T, dir string, name string, args ...string) {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (.ci/run installs it): %v", name, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DATABASE_URL="+routerURL)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s in %s: %v\n%s", name, strings.Join(args, " "), dir, err, out)
	}
	t.Logf("%s %s:\n%s", name, strings.Join(args, " "), out)
}

// TestNodeExpress runs examples/node-express's tests (node:test) against the
// router, after installing its packages from npm.
func TestNodeExpress(t *testing.T) {
	dir := filepath.Join(here, "node-express")
	runApp(t, dir, "npm", "install", "--no-audit", "--no-fund", "--loglevel=error")
	runApp(t, dir, "node", "--test", "test/")
}

// TestRails runs examples/rails's minitest suite (ActiveRecord and the pg
// gem, Debian's ruby-activerecord and ruby-pg) against the router.
func TestRails(t *testing.T) {
	runApp(t, filepath.Join(here, "rails"), "ruby", "test.rb")
}

// TestGoAllExecModes drives the Go example's HTTP API through pgxpool in
// every pgx query exec mode.
func TestGoAllExecModes(t *testing.T) {
	for _, mode := range []string{"cache_statement", "cache_describe", "describe_exec", "exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) { testGoApp(t, mode) })
	}
}
