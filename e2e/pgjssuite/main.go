// Command pgjssuite runs postgres.js's own test suite (porsager/postgres,
// tests/index.js: a Node.js driver that speaks the protocol itself and
// pipelines its queries) straight against PostgreSQL and through the
// pgtenant router in session and in transaction pool mode, and compares
// each mode's failures with the expected-failure lists kept in
// e2e/pgjssuite/testdata (one per mode, each entry with its reason).
//
// CI cannot fetch the suite, so the runner is run by hand, with node:
//
//	git clone --bare https://github.com/porsager/postgres /tmp/postgres.git
//	go run ./e2e/pgjssuite -src /tmp/postgres.git
//	go run ./e2e/pgjssuite -src /tmp/postgres.git -modes transaction
//
// It copies postgres.js from -src (a checkout, or a git directory whose
// HEAD or -rev is extracted with git archive) into the work directory and
// patches the copy (patch.go): the harness runs every test instead of
// stopping at the first failure and records each one's end; the driver
// sends PGOPTIONS as the startup options (the tenant); the suite's
// bootstrap is run once per mode on the server, and its exec (the ssl
// tests turn the server's ssl off and on) always goes to the server. It
// starts a one-node local cluster (package devcluster) set up as the
// suite's CI sets its server up (TLS, max_prepared_transactions, the
// suite's pg_hba lines for its md5 and SCRAM users), a tenant per router
// mode in a shard of its own, and a router per mode (trust: the router
// does not know the suite's passwords; TLS with the server's certificate).
//
// It exits 1 on a failure not on the mode's list, or when the suite ends
// before every test has ended (a hang, a crash, -timeout); a listed test
// that passed is printed so that the list can be trimmed. Each mode's
// results, a line per test, are kept in the work directory's
// results-MODE.jsonl.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
)

func main() { suiterun.Main("pgjssuite", run) }

// options are the command's flags.
type options struct {
	src, rev    string
	modes       []string
	expectedDir string
	timeout     time.Duration
	workDir     string
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("pgjssuite", flag.ContinueOnError)
	var o options
	var modes string
	fs.StringVar(&o.src, "src", "", "postgres.js's source: a checkout or a git directory (required)")
	fs.StringVar(&o.rev, "rev", "HEAD", "revision extracted from a git -src")
	fs.StringVar(&modes, "modes", "direct,session,transaction", "modes to run, comma-separated: direct (the server itself), session, transaction")
	fs.StringVar(&o.expectedDir, "expected", "e2e/pgjssuite/testdata", "directory of expected-<mode>.txt")
	fs.DurationVar(&o.timeout, "timeout", 20*time.Minute, "longest run of one mode's suite")
	fs.StringVar(&o.workDir, "work", "", "work in this directory and keep it (default: a temporary directory, removed)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if o.src == "" {
		return errors.New("-src is required: a postgres.js checkout or git directory")
	}
	var err error
	if o.modes, err = suiterun.Modes(modes, "direct", "session", "transaction"); err != nil {
		return err
	}
	dir, cleanup, err := suiterun.WorkDir(o.workDir, "pgjssuite-", false)
	if err != nil {
		return err
	}
	defer cleanup()
	fmt.Fprintln(out, "work directory:", dir)
	exps, err := suiterun.ReadLists(o.expectedDir, " # ", o.modes)
	if err != nil {
		return err
	}
	src, err := prepareSource(ctx, &o, dir)
	if err != nil {
		return err
	}
	bin, err := suiterun.BuildPgtenant(ctx, dir)
	if err != nil {
		return err
	}
	cl, err := startCluster(ctx, dir)
	if err != nil {
		return err
	}
	defer cl.stop()

	var problems []string
	for _, mode := range o.modes {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		port := cl.server.Port
		if mode != "direct" {
			if port, err = cl.startRouter(ctx, bin, dir, mode); err != nil {
				return err
			}
		}
		// The suite's subscribe tests make the publication alltables
		// (FOR ALL TABLES) and fail through a router before dropping it:
		// the next mode's updates would fail for want of a replica
		// identity.
		if err := suiterun.Exec(ctx, cl.Nodes[0].DSN, "drop the publication alltables", "DROP PUBLICATION IF EXISTS alltables"); err != nil {
			return err
		}
		t0 := time.Now()
		res, done, err := runSuite(ctx, &o, src, filepath.Join(dir, "results-"+mode+".jsonl"), cl.env(mode, port), cl.env("direct", cl.server.Port))
		if err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		if !done {
			problems = append(problems, fmt.Sprintf("%s: the suite ended after %d tests without its end (a hang, a crash or -timeout)", mode, len(res)))
		}
		problems = append(problems, report(out, mode, res, exps[mode], time.Since(t0))...)
	}
	return suiterun.Finish(out, problems, "ok: every failure is on the expected lists")
}

// prepareSource copies postgres.js into dir/postgres and patches it.
func prepareSource(ctx context.Context, o *options, dir string) (string, error) {
	dst := filepath.Join(dir, "postgres")
	if err := os.RemoveAll(dst); err != nil {
		return "", err
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return "", err
	}
	var c *exec.Cmd
	if _, err := os.Stat(filepath.Join(o.src, "tests", "index.js")); err == nil {
		c = suiterun.Command(ctx, "", nil, "cp", "-R", o.src+"/.", dst)
	} else {
		c = exec.CommandContext(ctx, "sh", "-c", `git --git-dir "$1" archive "$2" | tar -x -C "$3"`, "sh", o.src, o.rev, dst)
		c.Stderr = os.Stderr
	}
	if err := c.Run(); err != nil {
		return "", fmt.Errorf("copy postgres.js from %s: %w", o.src, err)
	}
	return dst, applyPatches(dst)
}

// result is one test's end, as the patched harness records it.
type result struct {
	Name  string `json:"name"`
	Line  int    `json:"line"`
	OK    bool   `json:"ok"`
	Error string `json:"error"`
	Done  bool   `json:"done"`
}

// runSuite runs the suite's bootstrap with bootEnv (the server's), then
// its tests with env, and returns each test's result and whether the suite reached its
// end.
func runSuite(ctx context.Context, o *options, src, resultsPath string, env, bootEnv []string) ([]result, bool, error) {
	if err := suiterun.Command(ctx, src, bootEnv, "node", "tests/bootstrap-orig.js").Run(); err != nil {
		return nil, false, fmt.Errorf("the suite's bootstrap: %w", err)
	}
	if err := os.WriteFile(resultsPath, nil, 0o644); err != nil {
		return nil, false, err
	}
	rctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	c := suiterun.Command(rctx, src, append(env, "PGJS_RESULTS="+resultsPath), "node", "tests/index.js")
	c.Stdout = io.Discard
	_ = c.Run() // the exit code says only whether something failed
	f, err := os.Open(resultsPath)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	var res []result
	done, seen := false, map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, false, fmt.Errorf("%s: %w", resultsPath, err)
		}
		if r.Done {
			done = true
			continue
		}
		if strings.HasPrefix(r.Name, "uncaught: ") {
			// Messages name the connection's address: one name per kind.
			r.Name = addrPattern.ReplaceAllString(r.Name, "HOST:PORT")
		}
		if seen[r.Name] {
			continue // an uncaught error again (a driver's reconnection loop)
		}
		seen[r.Name] = true
		res = append(res, r)
	}
	return res, done, sc.Err()
}

// addrPattern matches an address with a port in an uncaught error's message.
var addrPattern = regexp.MustCompile(`\b\d{1,3}(\.\d{1,3}){3}:\d+\b`)

// report prints a mode's counts and each failure not on its list (with
// the test's error), and the listed tests that passed; it returns the
// unexpected failures as problems.
func report(out io.Writer, mode string, res []result, exp *suiterun.Expected, took time.Duration) []string {
	var problems, passed []string
	failed := 0
	for _, r := range res {
		if r.OK {
			passed = append(passed, r.Name)
			continue
		}
		failed++
		if !exp.Has(r.Name) {
			problems = append(problems, fmt.Sprintf("%s: %s (line %d): %s", mode, r.Name, r.Line, firstLines(r.Error, 3)))
		}
	}
	fmt.Fprintf(out, "%s: %d tests, %d passed, %d failed (%d not on the list) in %s\n",
		mode, len(res), len(passed), failed, len(problems), took.Round(time.Second))
	exp.PrintPassed(out, mode, passed)
	return problems
}

// firstLines is s's first n lines, joined by " / ".
func firstLines(s string, n int) string {
	ls := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(ls[:min(n, len(ls))], " / ")
}
