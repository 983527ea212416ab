// Package pgtest gives test binaries a real PostgreSQL server: one cluster per
// test binary (started in TestMain) and a fresh database per test.
//
// The servers come from the machine's own PostgreSQL, or, when
// PGTENANT_TEST_PGROOT names a root directory with another PostgreSQL
// installed in it (.ci/pgnew debootstraps one with Debian's newest), from
// there: chrooted, their data directories under ROOT/tmp (see
// localpg.Cluster.Root). PGTENANT_TEST_PGBIN picks the server's bin
// directory inside the root (empty: the newest).
//
// Nothing outlives a test binary for long: its directories name it, its
// watchdog (watchdog.go) stops and removes them when it dies, even SIGKILLed,
// and ReapOrphans at every binary's start catches what a watchdog missed.
package pgtest

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/proclife"
)

// Server is a running cluster owned by one test binary.
type Server struct {
	Cluster *localpg.Cluster
	dir     string
	seq     atomic.Int64
}

// Start initialises and starts a cluster in a fresh temporary directory. name
// tells apart several servers in one binary. It never skips: a test binary
// that cannot start Postgres fails.
func Start(name string) (*Server, error) {
	return StartWith(name, nil)
}

// StartWith is Start with extra postgresql.conf settings.
func StartWith(name string, settings map[string]string) (*Server, error) {
	ReapOrphans()
	c, err := NewCluster(name)
	if err != nil {
		return nil, err
	}
	dir := c.Dir
	c.Settings = map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
	for k, v := range settings {
		c.Settings[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.Init(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if err := c.StartOnFreePort(ctx); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &Server{Cluster: c, dir: dir}, nil
}

// Environment variables that run the tests' servers from another root.
const (
	// EnvRoot names a root directory with PostgreSQL installed (made by
	// .ci/pgnew); empty means the machine's own PostgreSQL.
	EnvRoot = "PGTENANT_TEST_PGROOT"
	// EnvBin is the server's bin directory inside EnvRoot; empty means the newest.
	EnvBin = "PGTENANT_TEST_PGBIN"
)

// NewCluster returns a cluster, not yet initialised, in a fresh directory
// named after name (under EnvRoot's tmp when set, with Root and BinDir set
// from the environment), marked as owned by this process so that
// ReapOrphans removes it if the process dies. The caller stops it and
// removes c.Dir.
func NewCluster(name string) (*localpg.Cluster, error) {
	root := os.Getenv(EnvRoot)
	base := ""
	if root != "" {
		base = filepath.Join(root, "tmp")
	}
	dir, err := mkdirOwned(base, "test-"+name)
	if err != nil {
		return nil, fmt.Errorf("make a directory for server %q: %w", name, err)
	}
	c := localpg.New(dir, 0)
	c.Root = root
	c.BinDir = os.Getenv(EnvBin)
	return c, nil
}

// TempDir makes a fresh directory named pgtenant-NAME-* in the system's
// temporary directory, traversable by others (the servers run as the
// postgres OS user when root), and marked as this test binary's: when the
// binary dies before removing it (killed, or `go test -timeout`), the next
// test binary's start stops every server and process running from it and
// removes it (ReapOrphans). Tests that start servers or routers in a
// directory of their own (a dev cluster) make it here; the caller removes it.
func TempDir(name string) (string, error) {
	ReapOrphans()
	return mkdirOwned("", name)
}

// mkdirOwned makes a directory pgtenant-NAME-* under base and writes this
// process's identity in its ownerFile.
func mkdirOwned(base, name string) (string, error) {
	dir, err := os.MkdirTemp(base, "pgtenant-"+name+"-")
	if err != nil {
		return "", err
	}
	self, err := proclife.Self()
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(self.String()+"\n"), 0o644); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	mine.Lock()
	mine.dirs = append(mine.dirs, dir)
	mine.Unlock()
	startWatchdog()
	return dir, nil
}

// ownerFile, in a directory a test binary made, names that binary: a
// proclife.ID (binaries before session 12 wrote the bare pid).
const ownerFile = "owner.pid"

// ReapOrphans stops and removes what test binaries left when they died
// without cleaning up (killed, or a `go test -timeout` panic): each
// pgtenant-* directory in the temporary directory (and EnvRoot's tmp) whose
// ownerFile names a process that no longer runs. In such a directory it
// stops every server (immediate shutdown) whose data directory lies within
// three levels (a test server, a dev cluster's nodes), kills the processes
// whose command line names a path inside it (a router child, pgbouncer),
// and removes it. A directory without an ownerFile, or whose owner runs, is
// left alone. It returns the directories it removed.
func ReapOrphans() []string {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "pgtenant-*"))
	root := os.Getenv(EnvRoot)
	if root != "" {
		more, _ := filepath.Glob(filepath.Join(root, "tmp", "pgtenant-*"))
		dirs = append(dirs, more...)
	}
	var reaped []string
	for _, dir := range dirs {
		if !ownerAlive(dir) && reap(dir) {
			reaped = append(reaped, dir)
		}
	}
	return reaped
}

// reap stops the servers within three levels of dir (immediate shutdown),
// kills the processes naming a path inside it, and removes it. It reports
// whether dir is gone.
func reap(dir string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := os.Getenv(EnvRoot)
	for _, cdir := range clusterDirs(dir) {
		c := localpg.New(cdir, 0)
		if root != "" && strings.HasPrefix(dir, filepath.Clean(root)+"/") {
			c.Root = root
		}
		if err := c.Kill(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: stop the server in %s: %v\n", cdir, err)
		}
	}
	for _, pid := range proclife.Named(dir) {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return os.RemoveAll(dir) == nil
}

// mine are the directories this process made with mkdirOwned: what
// stopOnSignal reaps. A test binary is one process; its directories are
// process-wide.
var mine struct {
	sync.Mutex
	dirs []string
}

// stopOnSignal makes SIGINT and SIGTERM (Ctrl-C on `go test`, a CI's
// cancel) stop this binary's servers and whatever runs from its
// directories, and remove them, before the binary dies of the signal: the
// servers are daemons (pg_ctl puts them in a session of their own), which
// the signal does not reach.
func stopOnSignal() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "pgtest: %v: stopping this test binary's servers\n", sig)
		mine.Lock() // and keep: no new directory while dying
		for _, dir := range mine.dirs {
			reap(dir)
		}
		signal.Reset(sig)
		syscall.Kill(os.Getpid(), sig.(syscall.Signal))
		time.Sleep(time.Second)
		os.Exit(1)
	}()
}

// ownerAlive reports whether dir's ownerFile names a running process; a
// directory without one (not ours, or not yet marked) counts as alive.
func ownerAlive(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, ownerFile))
	if err != nil {
		return true
	}
	if id, err := proclife.ParseID(string(b)); err == nil {
		return id.Alive()
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return true
	}
	return !proclife.Gone(pid)
}

// clusterDirs lists the directories within three levels of dir (dir
// included) holding a server's data directory (localpg's DIR/data).
func clusterDirs(dir string) []string {
	var out []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		if d.Name() == "data" && p != dir {
			if _, err := os.Stat(filepath.Join(p, "PG_VERSION")); err == nil {
				out = append(out, filepath.Dir(p))
			}
			return fs.SkipDir
		}
		if rel, _ := filepath.Rel(dir, p); strings.Count(rel, "/") >= 3 {
			return fs.SkipDir
		}
		return nil
	})
	return out
}

// PrivateTempDir points TMPDIR, for t and the children it starts, at a
// fresh directory that other test binaries' ReapOrphans do not look in (it
// is not named pgtenant-*), and removes it, after a ReapOrphans of its own,
// when t ends. Tests of what a killed binary leaves behind use it, so that
// another binary starting meanwhile on the same machine cannot do the
// reaping they test.
func PrivateTempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pgtest-private-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // the servers run as postgres when root
		t.Fatal(err)
	}
	t.Setenv("TMPDIR", dir)
	t.Cleanup(func() {
		ReapOrphans()
		os.RemoveAll(dir)
	})
	return dir
}

// Child runs this test binary again as a child with env set to "1" (its
// TestMain acts on it, say by starting servers and waiting to be killed)
// and returns it with the first line it printed, trimmed. The child is
// killed when t ends.
func Child(t testing.TB, env string) (*exec.Cmd, string) {
	t.Helper()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), env+"=1")
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { child.Process.Kill(); child.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("%s child: no first line: %v", env, err)
	}
	return child, strings.TrimSpace(line)
}

// Stop stops the server and removes its directory.
func (s *Server) Stop() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.Cluster.Stop(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
	}
	os.RemoveAll(s.dir)
}

// NewDatabase creates a fresh database for t, dropped when t ends, and returns
// its connection string.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("t_%s_%d", sanitize(t.Name()), s.seq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.Cluster.DSN("postgres"))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatalf("create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, s.Cluster.DSN("postgres"))
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	})
	return s.Cluster.DSN(name)
}

func sanitize(s string) string {
	s = strings.ToLower(s)
	var b strings.Builder
	for _, r := range s {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	out := b.String()
	if len(out) > 40 {
		out = out[len(out)-40:]
	}
	return out
}

// Main runs a test binary's tests with the given servers started first and
// stopped after, and exits with the tests' code. names lists the servers to
// start; they are passed to setup in the same order.
func Main(m *testing.M, names []string, setup func([]*Server)) {
	specs := make([]Spec, len(names))
	for i, n := range names {
		specs[i] = Spec{Name: n}
	}
	MainWith(m, specs, setup)
}

// Spec describes one server for MainWith.
type Spec struct {
	Name string
	// Settings are extra postgresql.conf lines; nil means none.
	Settings map[string]string
}

// MainWith is Main with per-server settings.
func MainWith(m *testing.M, specs []Spec, setup func([]*Server)) {
	stopOnSignal()
	var servers []*Server
	code := func() int {
		for _, spec := range specs {
			s, err := StartWith(spec.Name, spec.Settings)
			if err != nil {
				fmt.Fprintf(os.Stderr, "pgtest: start postgres %q: %v\n", spec.Name, err)
				return 1
			}
			servers = append(servers, s)
		}
		if root := os.Getenv(EnvRoot); root != "" && len(servers) > 0 {
			fmt.Fprintf(os.Stderr, "pgtest: servers run from %s (%s)\n", root, servers[0].Cluster.BinDir)
		}
		defer func() {
			for _, s := range servers {
				s.Stop()
			}
		}()
		setup(servers)
		return m.Run()
	}()
	os.Exit(code)
}
