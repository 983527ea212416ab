// Package pgtest gives test binaries a real PostgreSQL server: one cluster per
// test binary (started in TestMain) and a fresh database per test.
//
// The servers come from the machine's own PostgreSQL, or, when
// PGTENANT_TEST_PGROOT names a root directory with another PostgreSQL
// installed in it (.ci/pgnew debootstraps one with Debian's newest), from
// there: chrooted, their data directories under ROOT/tmp (see
// localpg.Cluster.Root). PGTENANT_TEST_PGBIN picks the server's bin
// directory inside the root (empty: the newest).
package pgtest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/localpg"
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
	reapOrphans()
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
// reapOrphans removes it if the process dies. The caller stops it and
// removes c.Dir.
func NewCluster(name string) (*localpg.Cluster, error) {
	root := os.Getenv(EnvRoot)
	base := ""
	if root != "" {
		base = filepath.Join(root, "tmp")
	}
	dir, err := os.MkdirTemp(base, "pgtenant-test-"+name+"-")
	if err != nil {
		return nil, fmt.Errorf("make a directory for server %q: %w", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	c := localpg.New(dir, 0)
	c.Root = root
	c.BinDir = os.Getenv(EnvBin)
	return c, nil
}

// ownerFile holds the pid of the test binary that started a server.
const ownerFile = "owner.pid"

// reapOrphans stops and removes servers left by test binaries that died
// without cleaning up (killed, or a `go test -timeout` panic).
func reapOrphans() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "pgtenant-test-*"))
	root := os.Getenv(EnvRoot)
	if root != "" {
		more, _ := filepath.Glob(filepath.Join(root, "tmp", "pgtenant-test-*"))
		dirs = append(dirs, more...)
	}
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		c := localpg.New(dir, 0)
		if root != "" && strings.HasPrefix(dir, filepath.Clean(root)+"/") {
			c.Root = root
		}
		c.Stop(ctx)
		cancel()
		os.RemoveAll(dir)
	}
}

func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	return err == nil && p.Signal(syscall.Signal(0)) == nil
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
