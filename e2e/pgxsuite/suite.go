package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
)

// modeRun is one pool mode's router and what its tests gave.
type modeRun struct {
	mode     string
	tenants  map[string]tenantPlace // by package
	nodeDSN  string
	router   *suiterun.Router
	expected *expectations

	mu       sync.Mutex
	results  []*result
	hangs    []string
	hung     map[string]bool // "package TestName" of hung tests
	ran      map[string]bool // packages run
	duration time.Duration   // sum of its packages' wall times
	retried  []string        // "package TestName: outcome" of tests run again
	// ownPass counts the own-path pass's results (see runOwnPath).
	ownPass struct{ ran, passed, failed int }
}

// startModes reads each mode's expected failures and starts its router.
func startModes(ctx context.Context, o *options, bin string, cl *suiteCluster) ([]*modeRun, error) {
	var ms []*modeRun
	for _, mode := range o.modes {
		exp, err := readExpected(filepath.Join(o.expectedDir, "expected-"+mode+".txt"))
		if err != nil {
			return nil, err
		}
		r, err := startRouter(ctx, bin, cl.Dir, o.logDir, mode)
		if err != nil {
			for _, m := range ms {
				m.router.Stop()
			}
			return nil, err
		}
		ms = append(ms, &modeRun{mode: mode, tenants: cl.tenants[mode], nodeDSN: cl.nodes[mode], router: r, expected: exp, ran: map[string]bool{}, hung: map[string]bool{}})
	}
	return ms, nil
}

// packageWeight orders the packages, largest first, so that the long
// ones do not start last (measured: seconds through the router).
var packageWeight = map[string]int{".": 100, "pgtype": 80, "pgconn": 60, "stdlib": 30, "pgxpool": 20}

// runJobs runs every package in every mode, o.jobs binaries at a time.
func runJobs(ctx context.Context, o *options, ms []*modeRun, pkgs []testPkg, out io.Writer) {
	type job struct {
		m   *modeRun
		pkg testPkg
	}
	var jobs []job
	for _, p := range pkgs {
		for _, m := range ms {
			jobs = append(jobs, job{m, p})
		}
	}
	sort.SliceStable(jobs, func(i, j int) bool { return packageWeight[jobs[i].pkg.rel] > packageWeight[jobs[j].pkg.rel] })
	ch := make(chan job)
	var outMu sync.Mutex
	var wg sync.WaitGroup
	for i := 0; i < o.jobs; i++ {
		wg.Go(func() {
			for j := range ch {
				if ctx.Err() != nil {
					continue
				}
				t0 := time.Now()
				rs, hang, hungTest := runPackage(ctx, o, j.pkg, j.m, filepath.Join(o.logDir, j.m.mode+"-"+filepath.Base(j.pkg.bin)+".log"))
				d := time.Since(t0)
				var p, f int
				for _, r := range rs {
					switch r.action {
					case "pass":
						p++
					case "fail":
						f++
					}
				}
				j.m.mu.Lock()
				j.m.results = append(j.m.results, rs...)
				if hang != "" {
					j.m.hangs = append(j.m.hangs, hang)
				}
				if hungTest != "" {
					j.m.hung[j.pkg.rel+" "+topTest(hungTest)] = true
				}
				j.m.ran[j.pkg.rel] = true
				j.m.duration += d
				j.m.mu.Unlock()
				outMu.Lock()
				fmt.Fprintf(out, "%-11s %-45s %5d passed %4d failed  %s\n", j.m.mode, j.pkg.path, p, f, d.Round(100*time.Millisecond))
				outMu.Unlock()
			}
		})
	}
	for _, j := range jobs {
		ch <- j
	}
	close(ch)
	wg.Wait()
}

// result is one test's outcome.
type result struct {
	pkg, name, action string
	output            []string
}

// key names the test as the expected-failure lists do: package relative
// to the pgx module ("." for its root), a space, the test name.
func (r *result) key() string {
	return relPkg(r.pkg) + " " + r.name
}

func relPkg(path string) string {
	rel := strings.TrimPrefix(strings.TrimPrefix(path, pgxModule), "/")
	if rel == "" {
		rel = "."
	}
	return rel
}

// runPackage runs one package's tests and returns each test's outcome, a
// hang if any and the hung test: a test running longer than o.testTimeout
// makes the test binary get SIGQUIT (Go prints every goroutine's stack),
// then SIGKILL. Everything the binary printed goes to logPath.
func runPackage(ctx context.Context, o *options, pkg testPkg, m *modeRun, logPath string) ([]*result, string, string) {
	args := []string{"-test.v=test2json", "-test.count=1", "-test.timeout", o.pkgTimeout.String(),
		"-test.parallel", fmt.Sprint(o.parallel)}
	if o.run != "" {
		args = append(args, "-test.run", o.run)
	}
	dsn := routerDSN(m.router, m.tenants[pkg.rel].tenant)
	if o.ownPathPass {
		dsn += ownPathDSN
		if names := m.expected.skip[pkg.rel]; len(names) > 0 {
			args = append(args, "-test.skip", "^("+strings.Join(names, "|")+")$")
		}
	} else if skip := m.expected.skipPattern(pkg.rel); skip != "" {
		args = append(args, "-test.skip", skip)
	}
	fail := func(err error) ([]*result, string, string) {
		return nil, fmt.Sprintf("%s: %v", pkg.rel, err), ""
	}
	logf, err := os.Create(logPath)
	if err != nil {
		return fail(err)
	}
	defer logf.Close()
	// The test binary's output (stderr too: a panic, a timeout, a
	// goroutine dump) is piped into test2json, which turns it into events.
	pr, pw, err := os.Pipe()
	if err != nil {
		return fail(err)
	}
	c := exec.Command(pkg.bin, args...)
	c.Dir = pkg.dir
	c.Env = append(os.Environ(), "PGX_TEST_DATABASE="+dsn)
	c.Stdout, c.Stderr = pw, pw
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	j := exec.Command(o.test2json, "-t", "-p", pkg.path)
	j.Stdin = pr
	j.Stderr = os.Stderr
	stdout, err := j.StdoutPipe()
	if err != nil {
		pr.Close()
		pw.Close()
		return fail(err)
	}
	if err := j.Start(); err != nil {
		pr.Close()
		pw.Close()
		return fail(fmt.Errorf("start test2json: %w", err))
	}
	pr.Close()
	err = c.Start()
	pw.Close()
	if err != nil {
		j.Wait()
		return fail(fmt.Errorf("start %s: %w", pkg.bin, err))
	}
	type event struct {
		Action, Package, Test, Output string
	}
	events := make(chan event)
	go func() {
		defer close(events)
		dec := json.NewDecoder(stdout)
		for {
			var e event
			if err := dec.Decode(&e); err != nil {
				io.Copy(io.Discard, stdout)
				return
			}
			events <- e
		}
	}()
	running := map[string]time.Time{}
	byName := map[string]*result{}
	var results []*result
	var hang, hungTest string
	var killAt time.Time
	var pkgOut []string // the package's own output: a panic, a timeout
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
loop:
	for {
		select {
		case e, ok := <-events:
			if !ok {
				break loop
			}
			if e.Action == "output" {
				logf.WriteString(e.Output)
			}
			if e.Test == "" {
				if e.Action == "output" {
					pkgOut = append(pkgOut, e.Output)
				}
				continue
			}
			res := byName[e.Test]
			if res == nil {
				res = &result{pkg: e.Package, name: e.Test}
				byName[e.Test] = res
				results = append(results, res)
			}
			switch e.Action {
			case "run", "cont":
				running[e.Test] = time.Now()
			case "pause":
				delete(running, e.Test)
			case "output":
				res.output = append(res.output, e.Output)
			case "pass", "fail", "skip":
				res.action = e.Action
				delete(running, e.Test)
			}
		case <-tick.C:
			if hungTest == "" {
				if name := hung(running, byName, o.testTimeout); name != "" {
					hungTest = name
					hang = fmt.Sprintf("hang: %s %s still running after %s (its output in %s)", pkg.rel, name, o.testTimeout, logPath)
					syscall.Kill(c.Process.Pid, syscall.SIGQUIT)
					killAt = time.Now().Add(10 * time.Second)
				}
			}
			if (!killAt.IsZero() && time.Now().After(killAt)) || ctx.Err() != nil {
				syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			}
		}
	}
	c.Wait()
	j.Wait()
	unfinished := 0
	for _, res := range results {
		if res.action == "" {
			res.action = "fail" // stopped by a hang, a panic or a package timeout
			res.output = append(res.output, "(did not finish: the test binary ended first)\n")
			unfinished++
		}
	}
	if hungTest != "" {
		hang += "\n" + hungStacks(logPath, hungTest)
	}
	if unfinished > 0 && hang == "" {
		hang = fmt.Sprintf("%s: %d tests did not finish; the test binary ended with (all in %s):\n%s",
			pkg.rel, unfinished, logPath, strings.Join(lastLines(pkgOut, 30), ""))
	}
	return results, hang, hungTest
}

// hung returns a test that has been running (not paused waiting for a
// parallel slot) longer than limit and has no unfinished subtest: a
// parent waits for its subtests, which may wait for a slot.
func hung(running map[string]time.Time, byName map[string]*result, limit time.Duration) string {
	for name, since := range running {
		if time.Since(since) <= limit {
			continue
		}
		busy := false
		for sub, r := range byName {
			if r.action == "" && strings.HasPrefix(sub, name+"/") {
				busy = true
				break
			}
		}
		if !busy {
			return name
		}
	}
	return ""
}

// topTest is the top-level test of a (sub)test name.
func topTest(name string) string {
	top, _, _ := strings.Cut(name, "/")
	return top
}

// hungStacks returns the goroutine stacks, from the dump in the log at
// path, that run the hung test's function or a function it started (at
// most 80 lines).
func hungStacks(path, test string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	fn := "." + topTest(test)
	var keep []string
	for _, g := range strings.Split(string(b), "\n\n") {
		if strings.HasPrefix(g, "goroutine ") && (strings.Contains(g, fn+"(") || strings.Contains(g, fn+".func")) {
			keep = append(keep, g)
		}
	}
	lines := strings.Split(strings.Join(keep, "\n\n"), "\n")
	if len(lines) > 80 {
		lines = append(lines[:80], "...")
	}
	return strings.Join(lines, "\n")
}

func lastLines(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// retryUnexpected runs each test whose failure is not expected once more,
// alone (-parallel 1, after every package has run), and keeps the second
// outcome: a few of pgx's tests are timing-sensitive (a 250 ms connection
// lifetime, a cancel request racing the next query) and fail now and then
// on a loaded machine, through the router or not. Each retry is printed
// by report. A hung test is not run again.
func (m *modeRun) retryUnexpected(ctx context.Context, o *options, pkgs []testPkg) {
	failed := map[string]*result{}
	for _, r := range m.results {
		if r.action == "fail" {
			failed[r.key()] = r
		}
	}
	byPkg := map[string][]string{}
	for k := range failed {
		if m.expected.covers(k, failed) {
			continue
		}
		pkg, name, _ := strings.Cut(k, " ")
		top := topTest(name)
		if m.hung[pkg+" "+top] || slices.Contains(byPkg[pkg], top) {
			continue
		}
		byPkg[pkg] = append(byPkg[pkg], top)
	}
	for _, p := range pkgs {
		names := byPkg[p.rel]
		if len(names) == 0 || ctx.Err() != nil {
			continue
		}
		sort.Strings(names)
		o2 := *o
		o2.run = "^(" + strings.Join(names, "|") + ")$"
		o2.parallel = 1
		rs, hang, hungTest := runPackage(ctx, &o2, p, m, filepath.Join(o.logDir, m.mode+"-"+filepath.Base(p.bin)+"-retry.log"))
		again := map[string]bool{}
		for _, n := range names {
			again[n] = true
		}
		keep := m.results[:0]
		for _, r := range m.results {
			if r.pkg != p.path || !again[topTest(r.name)] {
				keep = append(keep, r)
			}
		}
		m.results = append(keep, rs...)
		if hang != "" {
			m.hangs = append(m.hangs, "on retry: "+hang)
			m.hung[p.rel+" "+topTest(hungTest)] = true
		}
		outcome := map[string]string{}
		for _, r := range rs {
			if !strings.Contains(r.name, "/") {
				outcome[r.name] = r.action
			}
		}
		for _, n := range names {
			m.retried = append(m.retried, fmt.Sprintf("%s %s: %s", p.rel, n, cmp.Or(outcome[n], "did not run")))
		}
	}
}

// runOwnPath runs the tests listed as own-path (see expectations.ownPath),
// after every package has run, one package at a time: the same tenant's
// connection, with the client's own search_path (ownPathDSN). Their
// results join the mode's, where a failure is unexpected.
func (m *modeRun) runOwnPath(ctx context.Context, o *options, pkgs []testPkg) {
	for _, p := range pkgs {
		var names []string
		for _, n := range m.expected.ownPath[p.rel] {
			if ok, err := regexp.MatchString(o.run, n); o.run == "" || err != nil || ok {
				names = append(names, n)
			}
		}
		if len(names) == 0 || ctx.Err() != nil {
			continue
		}
		o2 := *o
		o2.run = "^(" + strings.Join(names, "|") + ")$"
		o2.ownPathPass = true
		rs, hang, hungTest := runPackage(ctx, &o2, p, m, filepath.Join(o.logDir, m.mode+"-"+filepath.Base(p.bin)+"-ownpath.log"))
		if hang != "" {
			m.hangs = append(m.hangs, "in the own-path pass: "+hang)
			m.hung[p.rel+" "+topTest(hungTest)] = true
		}
		for _, r := range rs {
			if strings.Contains(r.name, "/") {
				continue
			}
			m.ownPass.ran++
			switch r.action {
			case "pass":
				m.ownPass.passed++
			case "fail":
				m.ownPass.failed++
			}
		}
		m.results = append(m.results, rs...)
	}
}

// report prints the mode's counts, its unexpected failures and the listed
// tests that passed, checks for leftovers, and returns the problems.
func (m *modeRun) report(ctx context.Context, o *options, out io.Writer) []string {
	var pass, fail, skip int
	failed := map[string]*result{}
	passed := map[string]bool{}
	for _, res := range m.results {
		switch res.action {
		case "pass":
			pass++
			passed[res.key()] = true
		case "fail":
			fail++
			failed[res.key()] = res
		case "skip":
			skip++
		}
	}
	var problems []string
	for _, h := range m.hangs {
		problems = append(problems, m.mode+" mode: "+h)
	}
	var unexpected []string
	for k := range failed {
		if m.expected.covers(k, failed) {
			continue
		}
		if i := strings.LastIndexByte(k, '/'); i > 0 && failed[k[:i]] != nil && !m.expected.covers(k[:i], failed) {
			continue // its parent is reported
		}
		unexpected = append(unexpected, k)
	}
	sort.Strings(unexpected)
	for _, k := range unexpected {
		if res := failed[k]; len(res.output) > 0 && !strings.Contains(k, "/") {
			fmt.Fprintf(out, "--- %s mode: unexpected failure %s\n%s\n", m.mode, k, strings.Join(lastLines(res.output, 15), ""))
		}
		problems = append(problems, fmt.Sprintf("%s mode: unexpected failure %s", m.mode, k))
	}
	var fixed, notRun []string
	for k := range m.expected.fail.Reasons {
		pkg, _, _ := strings.Cut(k, " ")
		switch {
		case failed[k] != nil:
		case passed[k]:
			fixed = append(fixed, k)
		case m.ran[pkg] && o.run == "":
			notRun = append(notRun, k)
		}
	}
	sort.Strings(fixed)
	sort.Strings(notRun)
	for _, k := range fixed {
		fmt.Fprintf(out, "%s mode: listed as an expected failure but passed (trim the list?): %s\n", m.mode, k)
	}
	for _, k := range notRun {
		fmt.Fprintf(out, "%s mode: listed as an expected failure but did not run: %s\n", m.mode, k)
	}
	for _, r := range m.retried {
		fmt.Fprintf(out, "%s mode: failed, then run again alone: %s\n", m.mode, r)
	}
	var skipped []string
	for pkg, names := range m.expected.skip {
		if m.ran[pkg] {
			for _, n := range names {
				skipped = append(skipped, pkg+" "+n)
			}
		}
	}
	slices.Sort(skipped)
	if m.ownPass.ran > 0 {
		fmt.Fprintf(out, "%s mode: own-path pass (%s): %d tests, %d passed, %d failed\n",
			m.mode, strings.TrimPrefix(ownPathDSN, "&"), m.ownPass.ran, m.ownPass.passed, m.ownPass.failed)
	}
	fmt.Fprintf(out, "%s mode: %d passed, %d failed (%d unexpected), %d skipped by pgx, %d not run (listed: %s); packages took %s\n",
		m.mode, pass, fail, len(unexpected), skip, len(skipped), strings.Join(skipped, ", "), m.duration.Round(time.Second))

	left, err := leftovers(ctx, m.router, m.nodeDSN)
	if err != nil {
		problems = append(problems, fmt.Sprintf("%s mode: checking for leftovers: %v", m.mode, err))
	}
	for _, l := range left {
		problems = append(problems, fmt.Sprintf("%s mode: %s", m.mode, l))
	}
	return problems
}
