// Command pgxsuite runs pgx's own test suite through the pgtenant router, in
// session and transaction pool mode, and compares the failures with the
// expected-failure lists kept in e2e/pgxsuite/testdata (one per mode, each
// entry with its reason).
//
// It fetches the pgx module with its tests from the Go module proxy (go mod
// download), copies it to a temporary directory, starts a one-node local
// cluster (package devcluster) with tenant t1 in shard 0, builds and starts
// the router, and runs `go test -json` on each pgx package with
// PGX_TEST_DATABASE pointing at the router (options=-c pgtenant.tenant=t1).
// A test still running after -test-timeout is a hang: its package is
// stopped and the hang reported. After each mode the router must count no
// client and the node must hold no backend waiting on a client.
//
// It exits 1 on any unexpected failure, hang or leftover, and prints the
// pass counts per mode.
//
//	go run ./e2e/pgxsuite                      # both modes
//	go run ./e2e/pgxsuite -modes session -run 'TestConnCopy'
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/devcluster"
	"github.com/pgtenant/pgtenant/internal/localpg"
)

// pgxModule is the module whose tests are run.
const pgxModule = "github.com/jackc/pgx/v5"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "pgxsuite:", err)
		os.Exit(1)
	}
}

// options are the command's flags.
type options struct {
	version     string
	modes       []string
	expectedDir string
	testTimeout time.Duration
	pkgTimeout  time.Duration
	run         string
	keep        bool
	workDir     string
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("pgxsuite", flag.ContinueOnError)
	var o options
	var modes string
	fs.StringVar(&o.version, "version", "v5.12.0", "pgx version to fetch from the module proxy")
	fs.StringVar(&modes, "modes", "session,transaction", "pool modes to run, comma-separated")
	fs.StringVar(&o.expectedDir, "expected", "e2e/pgxsuite/testdata", "directory of expected-<mode>.txt")
	fs.DurationVar(&o.testTimeout, "test-timeout", 2*time.Minute, "a test running longer than this is a hang")
	fs.DurationVar(&o.pkgTimeout, "package-timeout", 10*time.Minute, "go test -timeout for each package")
	fs.StringVar(&o.run, "run", "", "go test -run pattern (default all)")
	fs.BoolVar(&o.keep, "keep", false, "keep the temporary directory")
	fs.StringVar(&o.workDir, "work", "", "work in this directory and keep it; pgx and its test binaries found there are reused")
	if err := fs.Parse(args); err != nil {
		return err
	}
	o.modes = strings.Split(modes, ",")

	dir := o.workDir
	var err error
	if dir == "" {
		dir, err = os.MkdirTemp("", "pgxsuite-")
	} else {
		o.keep = true
		err = os.MkdirAll(dir, 0o755)
	}
	if err != nil {
		return err
	}
	if !o.keep {
		defer os.RemoveAll(dir)
	} else {
		fmt.Fprintln(out, "work directory:", dir)
	}
	// localpg runs the servers as the postgres user when root: it must be
	// able to enter the directory.
	os.Chmod(dir, 0o755)

	t0 := time.Now()
	src := filepath.Join(dir, "pgx")
	if _, err := os.Stat(src); err != nil {
		if _, err := fetchPGX(ctx, o.version, src); err != nil {
			return err
		}
	}
	bin := filepath.Join(dir, "pgtenant")
	if err := command(ctx, "", nil, "go", "build", "-o", bin, "./cmd/pgtenant").Run(); err != nil {
		return fmt.Errorf("build pgtenant: %w", err)
	}
	cdir, err := os.MkdirTemp(dir, "cluster-")
	if err != nil {
		return err
	}
	os.Chmod(cdir, 0o755)
	cl, err := startCluster(ctx, cdir)
	if err != nil {
		devcluster.Down(context.Background(), cdir, true)
		return err
	}
	defer devcluster.Down(context.Background(), cl.Dir, true)
	fmt.Fprintf(out, "pgx %s from the module proxy, cluster ready in %s\n", o.version, time.Since(t0).Round(time.Second))

	t1 := time.Now()
	pkgs, err := buildTests(ctx, src, filepath.Join(dir, "tests"))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "%d test binaries built in %s\n", len(pkgs), time.Since(t1).Round(time.Second))
	var problems []string
	for _, mode := range o.modes {
		res, err := runMode(ctx, &o, mode, bin, cl, src, pkgs, out)
		if err != nil {
			return fmt.Errorf("%s mode: %w", mode, err)
		}
		problems = append(problems, res...)
	}
	fmt.Fprintf(out, "total time %s\n", time.Since(t0).Round(time.Second))
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(out, "FAIL:", p)
		}
		return fmt.Errorf("%d problems", len(problems))
	}
	return nil
}

// command is exec.Command with dir, extra environment and the output
// going to stderr.
func command(ctx context.Context, dir string, env []string, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, name, args...)
	c.Dir = dir
	c.Env = append(os.Environ(), env...)
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	return c
}

// fetchPGX downloads pgx with its tests and copies it to dst, writable.
func fetchPGX(ctx context.Context, version, dst string) (string, error) {
	c := exec.CommandContext(ctx, "go", "mod", "download", "-json", pgxModule+"@"+version)
	c.Stderr = os.Stderr
	b, err := c.Output()
	if err != nil {
		return "", fmt.Errorf("go mod download %s@%s: %w", pgxModule, version, err)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(b, &m); err != nil {
		return "", fmt.Errorf("go mod download: %w", err)
	}
	if m.Error != "" || m.Dir == "" {
		return "", fmt.Errorf("go mod download %s@%s: %s", pgxModule, version, m.Error)
	}
	if err := command(ctx, "", nil, "cp", "-R", m.Dir, dst).Run(); err != nil {
		return "", fmt.Errorf("copy pgx: %w", err)
	}
	if err := command(ctx, "", nil, "chmod", "-R", "u+w", dst).Run(); err != nil {
		return "", fmt.Errorf("chmod pgx: %w", err)
	}
	return dst, nil
}

// startCluster starts a one-node cluster with four shards and tenant t1 in
// shard 0, whose schema gets what pgx's test setup creates
// (testsetup/postgresql_setup.sql): hstore, ltree and the uint64 domain.
func startCluster(ctx context.Context, dir string) (*devcluster.Cluster, error) {
	cl, err := devcluster.Up(ctx, devcluster.Options{Dir: dir, Nodes: 1, Shards: 4})
	if err != nil {
		return nil, fmt.Errorf("dev up: %w", err)
	}
	cat := catalog.New(cl.CatalogDSN, slog.New(slog.DiscardHandler))
	if err := cat.Open(ctx); err != nil {
		return nil, err
	}
	defer cat.Close()
	shard := 0
	loc, err := cat.AddTenant(ctx, "t1", &shard)
	if err != nil {
		return nil, fmt.Errorf("add tenant t1: %w", err)
	}
	conn, err := pgx.Connect(ctx, loc.Node.DSN)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	schema := pgx.Identifier{loc.Shard.Schema}.Sanitize()
	for _, q := range []string{
		"CREATE EXTENSION IF NOT EXISTS hstore SCHEMA " + schema,
		"CREATE EXTENSION IF NOT EXISTS ltree SCHEMA " + schema,
		"CREATE DOMAIN " + schema + ".uint64 AS numeric(20,0)",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("prepare shard for pgx's tests: %s: %w", q, err)
		}
	}
	return cl, nil
}

// testPkg is one pgx package with tests, compiled.
type testPkg struct {
	path, dir, bin string
}

// buildTests compiles the test binary of each pgx package that has tests
// into binDir, once for both modes.
func buildTests(ctx context.Context, src, binDir string) ([]testPkg, error) {
	c := exec.CommandContext(ctx, "go", "list", "-f", "{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}} {{.Dir}}{{end}}", "./...")
	c.Dir = src
	c.Stderr = os.Stderr
	b, err := c.Output()
	if err != nil {
		return nil, fmt.Errorf("go list pgx packages: %w", err)
	}
	var pkgs []testPkg
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		path, dir, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		name := strings.ReplaceAll(strings.TrimPrefix(strings.TrimPrefix(path, pgxModule), "/"), "/", "_")
		if name == "" {
			name = "pgx"
		}
		pkgs = append(pkgs, testPkg{path: path, dir: dir, bin: filepath.Join(binDir, name+".test")})
	}
	for _, p := range pkgs {
		if _, err := os.Stat(p.bin); err == nil {
			continue // built by an earlier run (-work)
		}
		if err := command(ctx, src, nil, "go", "test", "-c", "-o", p.bin, p.path).Run(); err != nil {
			return nil, fmt.Errorf("build the tests of %s: %w", p.path, err)
		}
	}
	return pkgs, nil
}

// router is a running `pgtenant router`.
type router struct {
	cmd     *exec.Cmd
	addr    string
	metrics string
}

func startRouter(ctx context.Context, bin, dir, mode string) (*router, error) {
	port, err := localpg.FreePort()
	if err != nil {
		return nil, err
	}
	mport, err := localpg.FreePort()
	if err != nil {
		return nil, err
	}
	r := &router{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), metrics: net.JoinHostPort("127.0.0.1", strconv.Itoa(mport))}
	logf, err := os.Create(filepath.Join(dir, "router-"+mode+".log"))
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	r.cmd = exec.Command(bin, "router", "--config", filepath.Join(dir, devcluster.ConfigFile),
		"--listen", r.addr, "--metrics-listen", r.metrics, "--pool-mode", mode, "--auth", "trust",
		"--pool-size", "40", "--pool-wait-timeout", "30s")
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start router: %w", err)
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c, err := net.DialTimeout("tcp", r.addr, time.Second); err == nil {
			c.Close()
			return r, nil
		}
	}
	r.stop()
	return nil, fmt.Errorf("router did not listen on %s (log in %s)", r.addr, logf.Name())
}

func (r *router) stop() {
	r.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { r.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		r.cmd.Process.Kill()
		<-done
	}
}

// clients reads the router's client gauge.
func (r *router) clients() (int, error) {
	resp, err := http.Get("http://" + r.metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "pgtenant_router_client_connections "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(f), err
		}
	}
	return 0, errors.New("no pgtenant_router_client_connections in /metrics")
}

// result is one test's outcome.
type result struct {
	pkg, name, action string
	output            []string
}

// key names the test as the expected-failure lists do: package relative
// to the pgx module ("." for its root), a space, the test name.
func (r *result) key() string {
	rel := strings.TrimPrefix(strings.TrimPrefix(r.pkg, pgxModule), "/")
	if rel == "" {
		rel = "."
	}
	return rel + " " + r.name
}

// runMode runs every package through a router in mode and returns the
// problems found.
func runMode(ctx context.Context, o *options, mode, bin string, cl *devcluster.Cluster, src string, pkgs []testPkg, out io.Writer) ([]string, error) {
	expected, err := readExpected(filepath.Join(o.expectedDir, "expected-"+mode+".txt"))
	if err != nil {
		return nil, err
	}
	r, err := startRouter(ctx, bin, cl.Dir, mode)
	if err != nil {
		return nil, err
	}
	defer r.stop()
	dsn := (&url.URL{Scheme: "postgres", User: url.User("postgres"), Host: r.addr, Path: "/" + devcluster.NodeDB,
		RawQuery: "sslmode=disable&options=" + strings.ReplaceAll(url.QueryEscape("-c pgtenant.tenant=t1"), "+", "%20")}).String()
	env := []string{"PGX_TEST_DATABASE=" + dsn}
	t0 := time.Now()
	var results []*result
	var problems []string
	for _, pkg := range pkgs {
		tp := time.Now()
		rs, hang, err := runPackage(ctx, o, pkg, env)
		if err != nil {
			return nil, err
		}
		var p, f int
		for _, r := range rs {
			switch r.action {
			case "pass":
				p++
			case "fail":
				f++
			}
		}
		fmt.Fprintf(out, "%s mode: %-45s %5d passed %5d failed  %s\n", mode, pkg.path, p, f, time.Since(tp).Round(100*time.Millisecond))
		results = append(results, rs...)
		if hang != "" {
			problems = append(problems, fmt.Sprintf("%s: %s", mode, hang))
		}
	}
	elapsed := time.Since(t0)

	var pass, fail, skip int
	failed := map[string]*result{}
	for _, res := range results {
		switch res.action {
		case "pass":
			pass++
		case "fail":
			fail++
			failed[res.key()] = res
		case "skip":
			skip++
		}
	}
	var unexpected []string
	for k, res := range failed {
		if _, ok := expected[k]; ok {
			continue
		}
		if childrenExpected(k, failed, expected) {
			continue
		}
		unexpected = append(unexpected, k)
		if len(res.output) > 0 {
			fmt.Fprintf(out, "--- %s mode: unexpected failure %s\n%s\n", mode, k, strings.Join(lastLines(res.output, 15), ""))
		}
	}
	sort.Strings(unexpected)
	for _, k := range unexpected {
		problems = append(problems, fmt.Sprintf("%s: unexpected failure %s", mode, k))
	}
	var fixed []string
	for k := range expected {
		if _, ok := failed[k]; !ok && o.run == "" {
			fixed = append(fixed, k)
		}
	}
	sort.Strings(fixed)
	for _, k := range fixed {
		fmt.Fprintf(out, "%s mode: listed as expected but passed or did not run: %s\n", mode, k)
	}
	fmt.Fprintf(out, "%s mode: %d passed, %d failed (%d unexpected), %d skipped, of %d, in %s\n",
		mode, pass, fail, len(unexpected), skip, pass+fail, elapsed.Round(time.Second))

	left, err := leftovers(ctx, r, cl)
	if err != nil {
		return nil, err
	}
	for _, l := range left {
		problems = append(problems, fmt.Sprintf("%s: %s", mode, l))
	}
	return problems, nil
}

// childrenExpected reports whether k failed only because listed subtests failed.
func childrenExpected(k string, failed map[string]*result, expected map[string]string) bool {
	any := false
	for c := range failed {
		if strings.HasPrefix(c, k+"/") {
			if _, ok := expected[c]; !ok && !childrenExpected(c, failed, expected) {
				return false
			}
			any = true
		}
	}
	return any
}

func lastLines(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// runPackage runs one package's tests and returns each test's outcome; a
// test running longer than o.testTimeout stops the package and is
// returned as a hang.
func runPackage(ctx context.Context, o *options, pkg testPkg, env []string) ([]*result, string, error) {
	args := []string{"tool", "test2json", "-t", "-p", pkg.path, pkg.bin, "-test.v=test2json", "-test.count=1", "-test.timeout", o.pkgTimeout.String()}
	if o.run != "" {
		args = append(args, "-test.run", o.run)
	}
	c := exec.Command("go", args...)
	c.Dir = pkg.dir
	c.Env = append(os.Environ(), env...)
	c.Stderr = os.Stderr
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdout, err := c.StdoutPipe()
	if err != nil {
		return nil, "", err
	}
	if err := c.Start(); err != nil {
		return nil, "", err
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
				return
			}
			events <- e
		}
	}()
	running := map[string]time.Time{}
	byName := map[string]*result{}
	var results []*result
	var hang string
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
			for name, since := range running {
				if strings.Contains(name, "/") {
					continue // its parent runs as long
				}
				if time.Since(since) > o.testTimeout {
					hang = fmt.Sprintf("hang: %s %s still running after %s", strings.TrimPrefix(pkg.path, pgxModule), name, o.testTimeout)
					syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
					break
				}
			}
			if ctx.Err() != nil {
				syscall.Kill(-c.Process.Pid, syscall.SIGKILL)
			}
		}
	}
	c.Wait()
	unfinished := 0
	for _, res := range results {
		if res.action == "" {
			res.action = "fail" // stopped by a hang, a panic or a package timeout
			res.output = append(res.output, "(did not finish: the test binary ended first)\n")
			unfinished++
		}
	}
	if unfinished > 0 && hang == "" {
		hang = fmt.Sprintf("%s: %d tests did not finish; the test binary ended with:\n%s", pkg.path, unfinished, strings.Join(lastLines(pkgOut, 30), ""))
	}
	return results, hang, ctx.Err()
}

// leftovers waits a little for the router to count no clients and for the
// node to hold no backend waiting on a client, and says what is left.
func leftovers(ctx context.Context, r *router, cl *devcluster.Cluster) ([]string, error) {
	conn, err := pgx.Connect(ctx, cl.Nodes[0].DSN)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	var left []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		left = left[:0]
		n, err := r.clients()
		if err != nil {
			return nil, err
		}
		if n != 0 {
			left = append(left, fmt.Sprintf("the router still counts %d clients", n))
		}
		rows, err := conn.Query(ctx, `SELECT pid, state, coalesce(wait_event, ''), left(query, 80) FROM pg_stat_activity
			WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = $1
			  AND (state LIKE 'idle in transaction%' OR (state = 'active' AND wait_event = 'ClientRead'))`, devcluster.NodeDB)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var pid int
			var state, wait, query string
			if err := rows.Scan(&pid, &state, &wait, &query); err != nil {
				return nil, err
			}
			left = append(left, fmt.Sprintf("backend %d is %s (%s) waiting on a client: %s", pid, state, wait, query))
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left, nil
		}
	}
}

// readExpected reads an expected-failure list: one "package TestName"
// per line (package relative to the pgx module, "." for its root), then
// " # reason"; blank lines and lines starting with # are comments.
func readExpected(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read expected failures: %w", err)
	}
	m := map[string]string{}
	for i, line := range strings.Split(string(b), "\n") {
		if strings.TrimSpace(line) == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, reason, ok := strings.Cut(line, " # ")
		if !ok || strings.TrimSpace(reason) == "" {
			return nil, fmt.Errorf("%s:%d: each entry needs \" # reason\"", path, i+1)
		}
		k = strings.TrimRight(k, " ")
		m[k] = strings.TrimSpace(reason)
	}
	return m, nil
}
