// Command nodepgsuite runs node-postgres's own integration tests
// (packages/pg/test/integration, one node process per *-tests.js file)
// straight against PostgreSQL and through the pgtenant router in
// transaction and session pool mode, and compares the failures with the
// expected-failure lists in e2e/nodepgsuite/testdata (one per mode, each
// entry with its reason).
//
// It takes node-postgres from -src (a clone, bare or not; by default it
// clones https://github.com/brianc/node-postgres into the work directory),
// extracts packages/pg with git archive, installs the npm packages its
// integration tests need there (never into our repository), builds
// pgtenant, starts a two-node local cluster (package devcluster, as
// pgtenant dev up does), a tenant per pool mode and one router per mode
// (SCRAM with a router user, TLS with a self-signed certificate when
// openssl is there), and runs the test files
// of each mode one after another, one mode after another (-together: at
// once; some tests end every idle session of a server with
// pg_terminate_backend, and so reach the other modes' sessions). The
// direct run uses a database of its own on the first server, as its
// superuser.
//
// node-postgres's suite stops a file at its first failing test, so a file
// is the unit that passes or fails; the failure is named by the file and
// the test it stopped in (a preloaded script records each test as it
// starts and passes). A failure not on the list is run once more, alone,
// after the others (a few tests are timing-sensitive on a loaded machine).
// It exits 1 on an unexpected failure, prints counts per mode, and prints
// listed failures that passed so that the lists can be trimmed.
//
// The mode transaction-untemp (not run unless named) reaches what the
// temporary tables hide in transaction mode: a copy of the test files with
// CREATE TEMP TABLE rewritten to CREATE TABLE, each file in a tenant and
// shard of its own (tables made in one file would clash in another). Its
// list holds, besides transaction mode's limits, the failures the rewrite
// makes (a table that a temporary one's end would have dropped).
//
//	go run ./e2e/nodepgsuite                          # direct, transaction, session
//	go run ./e2e/nodepgsuite -src ~/node-postgres -modes session -run 'client/notice'
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
)

// repoURL is where node-postgres is cloned from when -src is not given.
const repoURL = "https://github.com/brianc/node-postgres"

// npmPackages are what packages/pg's integration tests require: pg's own
// dependencies and the devDependencies the tests load.
var npmPackages = []string{"pg-types@2.2.0", "pgpass@1.0.5", "pg-connection-string@^2.14.0", "pg-pool@^3.14.0",
	"pg-protocol@^1.16.0", "async@2.6.4", "bluebird@3.7.2", "co@4.6.0", "pg-copy-streams@0.3.0"}

func main() { suiterun.Main("nodepgsuite", run) }

// options are the command's flags.
type options struct {
	src, workDir, expectedDir string
	modes                     []string
	run                       *regexp.Regexp
	fileTimeout               time.Duration
	keep, cursor, together    bool
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("nodepgsuite", flag.ContinueOnError)
	var o options
	var modes, runRe string
	fs.StringVar(&o.src, "src", "", "a node-postgres git clone (bare or not); default: clone "+repoURL)
	fs.StringVar(&o.workDir, "work", "", "work in this directory and keep it (node_modules found there are reused)")
	fs.StringVar(&o.expectedDir, "expected", "e2e/nodepgsuite/testdata", "directory of expected-MODE.txt")
	fs.StringVar(&modes, "modes", "direct,transaction,session", "what to run against: direct (PostgreSQL), transaction, session")
	fs.StringVar(&runRe, "run", "", "only test files whose path under test/integration matches this regexp")
	fs.DurationVar(&o.fileTimeout, "file-timeout", 2*time.Minute, "longest run of one test file (then it fails as a hang)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary work directory")
	fs.BoolVar(&o.together, "together", false, "run the modes at once (faster; but some tests end every idle session of a server, the other modes' too)")
	fs.BoolVar(&o.cursor, "cursor", true, "also run pg-cursor's tests and our probes.js (mocha)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if o.modes, err = suiterun.Modes(modes, "direct", "transaction", "session", untempMode); err != nil {
		return err
	}
	if runRe != "" {
		re, err := regexp.Compile(runRe)
		if err != nil {
			return fmt.Errorf("-run: %w", err)
		}
		o.run = re
	}
	dir, cleanup, err := suiterun.WorkDir(o.workDir, "nodepgsuite-", o.keep)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Fprintln(out, "work directory:", dir)
	exp, err := suiterun.ReadLists(o.expectedDir, " # ", o.modes)
	if err != nil {
		return err
	}

	pgDir, err := preparePG(ctx, o.src, dir)
	if err != nil {
		return err
	}
	files, err := testFiles(pgDir, o.run)
	if err != nil {
		return err
	}
	dirs := map[string]string{}
	for _, m := range o.modes {
		dirs[m] = pgDir
		if m == untempMode {
			if dirs[m], err = untempCopy(pgDir, filepath.Join(dir, "untemp")); err != nil {
				return err
			}
		}
	}
	cursorDir := ""
	if o.cursor {
		if o.src == "" {
			o.src = filepath.Join(dir, "node-postgres.git")
		}
		if cursorDir, err = prepareCursor(ctx, o.src, dir, pgDir); err != nil {
			return err
		}
	}
	bin, err := suiterun.BuildPgtenant(ctx, dir)
	if err != nil {
		return err
	}
	cl, err := startCluster(ctx, bin, dir, o.modes, len(files))
	if err != nil {
		return err
	}
	defer cl.stop()

	results, cursors, probes := map[string][]fileResult{}, map[string][]fileResult{}, map[string][]fileResult{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, m := range o.modes {
		wg.Add(1)
		mode := func() {
			defer wg.Done()
			logDir := filepath.Join(dir, "logs", m)
			rs := runFiles(ctx, dirs[m], logDir, files, func(i int) []string { return cl.fileEnv(m, i) }, o.fileTimeout)
			var cs, ps []fileResult
			if cursorDir != "" && m != untempMode {
				cs = runMocha(ctx, "pg-cursor", cursorDir, pgDir, logDir, cl.env(m), o.fileTimeout)
				ps = runMocha(ctx, "probes", cursorDir, pgDir, logDir, cl.env(m), o.fileTimeout)
			}
			mu.Lock()
			results[m], cursors[m], probes[m] = rs, cs, ps
			mu.Unlock()
		}
		if o.together {
			go mode()
		} else {
			mode()
		}
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}

	var bad []string
	for _, m := range o.modes {
		rs := results[m]
		// A failure not on the list is run once more, alone (not in the
		// untemp mode, whose first run leaves its tables behind).
		for i, r := range rs {
			if r.ok || exp[m].Has(r.key()) || m == untempMode {
				continue
			}
			fmt.Fprintf(out, "%s: %s failed (%s); running it again alone\n", m, r.key(), r.summary)
			rs[i] = runFile(ctx, dirs[m], filepath.Join(dir, "logs", m+"-retry"), r.file, cl.fileEnv(m, i), o.fileTimeout)
		}
		bad = append(bad, report(out, m, "test files", rs, exp[m])...)
		if cursorDir != "" && m != untempMode {
			bad = append(bad, report(out, m+" pg-cursor", "tests", cursors[m], exp[m])...)
			bad = append(bad, report(out, m+" probes", "tests", probes[m], exp[m])...)
		}
	}
	if len(bad) > 0 {
		fmt.Fprintf(out, "logs in %s/logs (run with -work to keep them)\n", dir)
	}
	return suiterun.Finish(out, bad, "ok: every failure is on the expected lists")
}

// report prints one mode's counts, its failures and listed failures that
// passed, and returns the unexpected failures.
func report(out io.Writer, mode, unit string, rs []fileResult, e *suiterun.Expected) []string {
	var filesOK, started, passed int
	var bad, fixed []string
	for _, r := range rs {
		started += len(r.started)
		passed += r.passed
		switch {
		case r.ok:
			filesOK++
			fixed = append(fixed, listedIn(e, r)...)
		case e.Has(r.key()):
			fmt.Fprintf(out, "%s: expected failure: %s (%s)\n", mode, r.key(), e.Reasons[r.key()])
		default:
			bad = append(bad, mode+": "+r.key()+": "+r.summary)
		}
	}
	e.PrintPassed(out, mode, fixed)
	fmt.Fprintf(out, "%s: %d %s, %d passed, %d failed; %d tests started, %d passed\n",
		mode, len(rs), unit, filesOK, len(rs)-filesOK, started, passed)
	return bad
}

// preparePG extracts packages/pg of node-postgres into dir and installs the
// npm packages its integration tests need there; it returns packages/pg.
func preparePG(ctx context.Context, src, dir string) (string, error) {
	pgDir := filepath.Join(dir, "packages", "pg")
	if _, err := os.Stat(filepath.Join(pgDir, "node_modules", "pg-protocol")); err == nil {
		return pgDir, nil
	}
	if src == "" {
		src = filepath.Join(dir, "node-postgres.git")
		if _, err := os.Stat(src); err != nil {
			if err := suiterun.Command(ctx, "", nil, "git", "clone", "--bare", "--depth", "1", repoURL, src).Run(); err != nil {
				return "", fmt.Errorf("clone node-postgres: %w", err)
			}
		}
	}
	c := exec.CommandContext(ctx, "sh", "-c", `git -C "$1" archive HEAD packages/pg | tar -x -C "$2"`, "sh", src, dir)
	c.Stderr = os.Stderr
	if err := c.Run(); err != nil {
		return "", fmt.Errorf("extract packages/pg from %s: %w", src, err)
	}
	// packages/pg's package.json names every devDependency (vitest,
	// wrangler...): install only what the integration tests load, from an
	// empty package.json of our own.
	if err := os.Rename(filepath.Join(pgDir, "package.json"), filepath.Join(pgDir, "package.json.orig")); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(pgDir, "package.json"), []byte(`{"name":"nodepgsuite","private":true}`), 0o644); err != nil {
		return "", err
	}
	args := append([]string{"install", "--no-save", "--no-package-lock", "--ignore-scripts", "--no-audit", "--no-fund"}, npmPackages...)
	if err := suiterun.Command(ctx, pgDir, nil, "npm", args...).Run(); err != nil {
		return "", fmt.Errorf("npm install: %w", err)
	}
	return pgDir, nil
}

// testFiles lists the integration test files under pgDir, relative to
// test/integration, those matching re when it is not nil.
func testFiles(pgDir string, re *regexp.Regexp) ([]string, error) {
	root := filepath.Join(pgDir, "test", "integration")
	var files []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, "-tests.js") {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if re == nil || re.MatchString(rel) {
			files = append(files, rel)
		}
		return nil
	})
	if err == nil && len(files) == 0 {
		err = errors.New("no test files")
	}
	return files, err
}
