// Command pgxsuite runs pgx's own test suite through the pgtenant router, in
// session and transaction pool mode at once, and compares the failures with
// the expected-failure lists kept in e2e/pgxsuite/testdata (one per mode,
// each entry with its reason).
//
// It fetches the pgx module with its tests from the Go module proxy (go mod
// download), copies it to a temporary directory, builds each pgx package's
// test binary once (go test -c), starts a two-node local cluster (package
// devcluster) and one router per pool mode. Each mode's tenants live on a
// node of their own (session: node1, transaction: node2), and each package
// gets, in each mode, a tenant in a shard (schema) of its own, so that
// packages and modes run at once without seeing each other's tables. The
// test binaries run with PGX_TEST_DATABASE pointing at their mode's router
// (options=-c pgtenant.tenant=MODE-PACKAGE), -jobs of them at a time, the
// largest packages first, each with go test -parallel -parallel.
//
// A test still running after -test-timeout is a hang: its binary gets
// SIGQUIT, and the hung test's goroutines are printed. After the run each
// router must count no client and each node must hold no backend waiting
// on a client (pg_stat_activity: idle in transaction, or active and reading
// from its client, as in a COPY FROM STDIN).
//
// A test whose failure is not on the list is run once more, alone, after
// every package has run (a few of pgx's tests are timing-sensitive on a
// loaded machine); the retry is printed, and its outcome counts.
//
// Tests listed as own-path (tests that create objects unqualified and
// expect them in public) are left out of the main pass and run after it
// in a small pass of their own, on the same tenant's connection with the
// startup parameter search_path=public: a client's own search_path, which
// a router in session pool mode honours. They must pass there.
//
// It exits 1 on an unexpected failure, a hang or a leftover, and prints the
// pass counts per mode; a listed test that passed is printed so that the
// list can be trimmed, and does not fail the run.
//
//	go run ./e2e/pgxsuite                      # both modes
//	go run ./e2e/pgxsuite -modes session -packages pgconn -run 'TestConnCopy'
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
)

// pgxModule is the module whose tests are run.
const pgxModule = "github.com/jackc/pgx/v5"

func main() { suiterun.Main("pgxsuite", run) }

// options are the command's flags.
type options struct {
	version     string
	modes       []string
	expectedDir string
	testTimeout time.Duration
	pkgTimeout  time.Duration
	run         string
	skipPkgs    []string
	pkgs        []string // only these packages ("." for the root); nil: all
	jobs        int
	parallel    int
	keep        bool
	workDir     string
	test2json   string // path of the test2json binary
	logDir      string // test output, one file per mode and package
	// ownPathPass: run with the client's own search_path (see
	// modeRun.runOwnPath).
	ownPathPass bool
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("pgxsuite", flag.ContinueOnError)
	var o options
	var modes, skipPkgs, pkgs string
	fs.StringVar(&o.version, "version", "v5.12.0", "pgx version to fetch from the module proxy")
	fs.StringVar(&modes, "modes", "session,transaction", "pool modes to run, comma-separated")
	fs.StringVar(&o.expectedDir, "expected", "e2e/pgxsuite/testdata", "directory of expected-<mode>.txt")
	fs.DurationVar(&o.testTimeout, "test-timeout", 2*time.Minute, "a test running longer than this is a hang")
	fs.DurationVar(&o.pkgTimeout, "package-timeout", 10*time.Minute, "go test -timeout for each package")
	fs.StringVar(&o.run, "run", "", "go test -run pattern (default all; a top-level test name pattern for the own-path pass)")
	fs.StringVar(&skipPkgs, "skip-packages", "pgproto3",
		"pgx packages not run, comma-separated: pgproto3's tests never connect and encode several 1 GB messages at once")
	fs.StringVar(&pkgs, "packages", "", "run only these pgx packages, comma-separated (\".\" for the root; default all)")
	fs.IntVar(&o.jobs, "jobs", 3, "test binaries running at once, over both modes")
	fs.IntVar(&o.parallel, "parallel", 4, "go test -parallel for each binary: pgx's tests mostly wait on the server")
	fs.StringVar(&o.logDir, "logs", "", "write each package's test output here (default: logs in the work directory)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory")
	fs.StringVar(&o.workDir, "work", "", "work in this directory and keep it; pgx and its test binaries found there are reused")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if o.modes, err = suiterun.Modes(modes, "session", "transaction"); err != nil {
		return err
	}
	o.skipPkgs = strings.Split(skipPkgs, ",")
	if pkgs != "" {
		o.pkgs = strings.Split(pkgs, ",")
	}
	if o.jobs < 1 {
		o.jobs = 1
	}

	o.keep = o.keep || o.workDir != ""
	dir, cleanup, err := suiterun.WorkDir(o.workDir, "pgxsuite-", o.keep)
	if err != nil {
		return err
	}
	defer cleanup()
	if o.keep {
		fmt.Fprintln(out, "work directory:", dir)
	}

	t0 := time.Now()
	src := filepath.Join(dir, "pgx")
	if _, err := os.Stat(src); err != nil {
		if err := fetchPGX(ctx, o.version, src); err != nil {
			return err
		}
	}
	bin, err := suiterun.BuildPgtenant(ctx, dir)
	if err != nil {
		return err
	}
	o.test2json = filepath.Join(dir, "test2json")
	if _, err := os.Stat(o.test2json); err != nil {
		if err := suiterun.Command(ctx, "", nil, "go", "build", "-o", o.test2json, "cmd/test2json").Run(); err != nil {
			return fmt.Errorf("build test2json: %w", err)
		}
	}
	if o.logDir == "" {
		o.logDir = filepath.Join(dir, "logs")
	}
	if err := os.MkdirAll(o.logDir, 0o755); err != nil {
		return err
	}

	t1 := time.Now()
	pkgs2, err := buildTests(ctx, src, filepath.Join(dir, "tests"), o.skipPkgs, o.pkgs)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "pgx %s: %d test binaries built in %s\n", o.version, len(pkgs2), time.Since(t1).Round(time.Second))
	t1 = time.Now()
	cl, err := startCluster(ctx, dir, o.modes, pkgs2)
	if err != nil {
		return err
	}
	defer cl.Down()
	fmt.Fprintf(out, "cluster ready in %s\n", time.Since(t1).Round(time.Second))

	modesRun, err := startModes(ctx, &o, bin, cl)
	if err != nil {
		return err
	}
	defer func() {
		for _, m := range modesRun {
			m.router.Stop()
		}
	}()
	t2 := time.Now()
	runJobs(ctx, &o, modesRun, pkgs2, out)
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for _, m := range modesRun {
		m.retryUnexpected(ctx, &o, pkgs2)
	}
	for _, m := range modesRun {
		m.runOwnPath(ctx, &o, pkgs2)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	fmt.Fprintf(out, "tests ran in %s\n", time.Since(t2).Round(time.Second))

	var problems []string
	for _, m := range modesRun {
		problems = append(problems, m.report(ctx, &o, out)...)
	}
	fmt.Fprintf(out, "total time %s\n", time.Since(t0).Round(time.Second))
	return suiterun.Finish(out, problems, "ok: every failure is on the expected lists, no hang, no leftover")
}
