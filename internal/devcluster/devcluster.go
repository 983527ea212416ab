// Package devcluster runs a local pgtenant cluster for development and demos:
// N Postgres servers started from the machine's own binaries (via localpg) in
// one directory, a catalog database on the first, every node registered and
// every shard created. Running Up again reuses what is there.
package devcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/proclife"
)

// CatalogDB is the catalog's database name on the first node's server.
const CatalogDB = "pgtenant_catalog"

// NodeDB is the database that holds the shard schemas on every node.
const NodeDB = "app"

// ConfigFile is the config file Up writes into the cluster directory.
const ConfigFile = "pgtenant.yaml"

// Options tune Up. Zero values mean the defaults.
type Options struct {
	// Dir holds the cluster. Empty means ".pgtenant".
	Dir string
	// Nodes is the number of Postgres servers. Zero means 2.
	Nodes int
	// Shards is the shard count. Zero means the existing cluster's, or 256
	// for a new one.
	Shards int
	// Logger, nil means discard.
	Logger *slog.Logger
	// Settings are extra postgresql.conf settings of servers created by
	// this Up (written at initdb; existing servers keep theirs). Tests set
	// fsync=off; nil means the defaults.
	Settings map[string]string
}

// Node is one server of the local cluster.
type Node struct {
	Name    string
	Dir     string
	Port    int
	DSN     string
	Running bool
}

// Cluster describes a local cluster.
type Cluster struct {
	Dir        string
	CatalogDSN string
	Nodes      []Node
	Shards     int
	Tenants    int
}

func (o *Options) defaults() {
	if o.Dir == "" {
		o.Dir = ".pgtenant"
	}
	if o.Nodes == 0 {
		o.Nodes = 2
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

func nodeName(i int) string { return "node" + strconv.Itoa(i) }

// existingNodes lists node directories already in dir, in order.
func existingNodes(dir string) []int {
	entries, _ := os.ReadDir(dir)
	var out []int
	for _, e := range entries {
		if n, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "node")); err == nil && e.IsDir() && strings.HasPrefix(e.Name(), "node") {
			out = append(out, n)
		}
	}
	sort.Ints(out)
	return out
}

// Up starts (or reuses) the local cluster and returns its description.
// Asking for fewer nodes than exist keeps them all; asking for more adds
// empty nodes (shards move to them only with `shard move`).
func Up(ctx context.Context, opts Options) (*Cluster, error) {
	opts.defaults()
	if _, err := localpg.FindBinDir(); err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", abs, err)
	}
	count := opts.Nodes
	if ex := existingNodes(abs); len(ex) > count {
		count = len(ex)
		opts.Logger.Info("keeping existing nodes", "nodes", count)
	}
	cl := &Cluster{Dir: abs}
	for i := 1; i <= count; i++ {
		c := localpg.New(filepath.Join(abs, nodeName(i)), 0)
		c.Settings = opts.Settings
		if err := c.Init(ctx); err != nil {
			return nil, fmt.Errorf("init %s: %w", nodeName(i), err)
		}
		if err := c.StartOnFreePort(ctx); err != nil {
			return nil, fmt.Errorf("start %s: %w", nodeName(i), err)
		}
		if err := ensureDatabase(ctx, c.DSN("postgres"), NodeDB); err != nil {
			return nil, fmt.Errorf("%s: %w", nodeName(i), err)
		}
		cl.Nodes = append(cl.Nodes, Node{Name: nodeName(i), Dir: c.Dir, Port: c.Port, DSN: c.DSN(NodeDB), Running: true})
	}
	first := localpg.New(filepath.Join(abs, nodeName(1)), 0)
	if err := first.Init(ctx); err != nil {
		return nil, err
	}
	if err := ensureDatabase(ctx, first.DSN("postgres"), CatalogDB); err != nil {
		return nil, err
	}
	cl.CatalogDSN = first.DSN(CatalogDB)

	cat := catalog.New(cl.CatalogDSN, opts.Logger)
	if err := cat.Open(ctx); err != nil {
		return nil, err
	}
	defer cat.Close()
	if opts.Shards == 0 {
		opts.Shards = 256
		if n, err := cat.ShardCount(ctx); err == nil {
			opts.Shards = n
		}
	}
	cl.Shards = opts.Shards
	if err := cat.Init(ctx, opts.Shards); err != nil {
		if n, err2 := cat.ShardCount(ctx); err2 == nil && n != opts.Shards {
			return nil, fmt.Errorf("the cluster in %s has %d shards, not %d: run `pgtenant dev down --destroy --dir %s` first, or use another --dir", abs, n, opts.Shards, opts.Dir)
		}
		return nil, err
	}
	registered, err := cat.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	known := map[string]string{}
	for _, n := range registered {
		known[n.Name] = n.DSN
	}
	for _, n := range cl.Nodes {
		if _, ok := known[n.Name]; ok {
			continue
		}
		if _, err := cat.AddNode(ctx, n.Name, n.DSN); err != nil {
			return nil, err
		}
	}
	if _, err := cat.CreateShards(ctx); err != nil {
		return nil, err
	}
	if err := writeConfig(abs, cl.CatalogDSN); err != nil {
		return nil, err
	}
	// Keep the cluster out of the enclosing project's git repository.
	if err := os.WriteFile(filepath.Join(abs, ".gitignore"), []byte("# Written by 'pgtenant dev up': a local cluster's data, not for git.\n*\n"), 0o644); err != nil {
		return nil, err
	}
	return cl, nil
}

func ensureDatabase(ctx context.Context, adminDSN, name string) error {
	conn, err := pgx.Connect(ctx, adminDSN)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P04" { // duplicate_database
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

func writeConfig(dir, catalogDSN string) error {
	text := fmt.Sprintf(`# Written by 'pgtenant dev up'. Commands run in %s (or given --config %s) use it.
catalog: %q
router:
  listen: "127.0.0.1:%d"
  metrics_listen: "127.0.0.1:%d"
  auth: trust
`, filepath.Dir(dir), filepath.Join(dir, ConfigFile), catalogDSN, routerPort(dir), routerPort(dir)+1)
	return os.WriteFile(filepath.Join(dir, ConfigFile), []byte(text), 0o644)
}

// routerPort is the dev router's port (the metrics listener takes the next
// one), kept in the directory. A kept port is reused while the router runs
// or while both ports are free and below the ephemeral range; otherwise a
// new pair is picked.
func routerPort(dir string) int {
	p := filepath.Join(dir, "router.port")
	low, _ := EphemeralRange()
	if b, err := os.ReadFile(p); err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n > 0 {
			if RouterRunning(dir) || (n+1 < low && portsFree(n, n+1)) {
				return n
			}
		}
	}
	n, err := PickRouterPort(rand.IntN)
	if err != nil {
		n = 6432
	}
	os.WriteFile(p, []byte(strconv.Itoa(n)), 0o644)
	return n
}

// EphemeralRange is the kernel's range of ports for outgoing connections
// (Linux: /proc/sys/net/ipv4/ip_local_port_range), or Linux's default
// 32768-60999 when it cannot be read.
func EphemeralRange() (low, high int) {
	low, high = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return low, high
	}
	f := strings.Fields(string(b))
	if len(f) == 2 {
		l, err1 := strconv.Atoi(f[0])
		h, err2 := strconv.Atoi(f[1])
		if err1 == nil && err2 == nil && l > 1024 && l <= h {
			return l, h
		}
	}
	return low, high
}

// PickRouterPort returns a port p such that p and p+1 are free on 127.0.0.1
// and both lie between 10000 and the ephemeral range, so no outgoing
// connection can take them between now and the router's bind (a port the
// kernel hands out, like FreePort's, can). intn picks the first candidate.
func PickRouterPort(intn func(int) int) (int, error) {
	low, _ := EphemeralRange()
	first, last := 10000, low-2
	if last < first {
		first = 1025
	}
	if last < first {
		return 0, fmt.Errorf("no ports below the ephemeral range (starts at %d)", low)
	}
	n := last - first + 1
	start := intn(n)
	for i := 0; i < n && i < 500; i++ {
		p := first + (start+i)%n
		if portsFree(p, p+1) {
			return p, nil
		}
	}
	return 0, fmt.Errorf("no two free adjacent ports between %d and %d", first, last+1)
}

// portsFree reports whether every port can be bound on 127.0.0.1 now.
func portsFree(ports ...int) bool {
	for _, p := range ports {
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			return false
		}
		l.Close()
	}
	return true
}

// Status describes the cluster in dir without starting anything.
func Status(ctx context.Context, dir string) (*Cluster, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	nodes := existingNodes(abs)
	if len(nodes) == 0 {
		return nil, fmt.Errorf("no local cluster in %s; start one with `pgtenant dev up`", abs)
	}
	cl := &Cluster{Dir: abs}
	for _, i := range nodes {
		c := localpg.New(filepath.Join(abs, nodeName(i)), 0)
		if err := c.Init(ctx); err != nil {
			return nil, err
		}
		cl.Nodes = append(cl.Nodes, Node{Name: nodeName(i), Dir: c.Dir, Port: c.Port, DSN: c.DSN(NodeDB), Running: c.Running(ctx)})
		if i == nodes[0] {
			cl.CatalogDSN = c.DSN(CatalogDB)
		}
	}
	if cl.Nodes[0].Running {
		cat := catalog.New(cl.CatalogDSN, nil)
		if err := cat.Open(ctx); err == nil {
			cl.Shards, _ = cat.ShardCount(ctx)
			if ts, err := cat.Tenants(ctx, -1, 0); err == nil {
				cl.Tenants = len(ts)
			}
			cat.Close()
		}
	}
	return cl, nil
}

// ErrNoCluster is returned by Down for a directory that holds no local
// cluster.
var ErrNoCluster = errors.New("no local cluster")

// Down stops the router (if Up's caller started one, see PIDFile) and every
// server of the cluster in dir. With destroy it also removes the directory.
// A directory without a cluster is an error wrapping ErrNoCluster, and is
// left alone.
func Down(ctx context.Context, dir string, destroy bool) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if len(existingNodes(abs)) == 0 {
		return fmt.Errorf("%w in %s: nothing to stop (`pgtenant dev status --dir DIR` shows a cluster; `pgtenant dev up` starts one)", ErrNoCluster, abs)
	}
	StopRouter(abs)
	var errs []error
	for _, i := range existingNodes(abs) {
		c := localpg.New(filepath.Join(abs, nodeName(i)), 0)
		if !c.Initialized() {
			continue
		}
		if err := c.Stop(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if destroy {
		if err := os.RemoveAll(abs); err != nil {
			return fmt.Errorf("remove %s: %w", abs, err)
		}
	}
	return nil
}

// PIDFile is where the dev router's process id is kept.
func PIDFile(dir string) string { return filepath.Join(dir, "router.pid") }

// Routers returns the dev routers of the cluster in dir that run: the
// processes whose command line is `pgtenant router --config
// DIR/pgtenant.yaml …` (as `dev up` starts it), whether PIDFile names them
// or not (a `dev up` killed between starting its router and writing the
// file). A pid in PIDFile that is now another program's is not among them.
func Routers(dir string) []int {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil
	}
	config := filepath.Join(abs, ConfigFile)
	var out []int
	for _, pid := range proclife.Named(abs) {
		args, _ := proclife.Args(pid)
		if i := slices.Index(args, "router"); i > 0 && slices.Contains(args[i:], "--config") && slices.Contains(args[i:], config) {
			out = append(out, pid)
		}
	}
	return out
}

// RouterRunning reports whether a dev router of the cluster in dir runs.
func RouterRunning(dir string) bool { return len(Routers(dir)) > 0 }

// StopRouter stops the dev routers of the cluster in dir (Routers): SIGTERM
// (a drain), then SIGKILL for one still running after the router's default
// shutdown grace (25 s) and a little more.
func StopRouter(dir string) {
	pids := Routers(dir)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	for _, pid := range pids {
		for deadline := time.Now().Add(30 * time.Second); !proclife.Gone(pid); time.Sleep(100 * time.Millisecond) {
			if time.Now().After(deadline) {
				syscall.Kill(pid, syscall.SIGKILL)
				break
			}
		}
	}
	os.Remove(PIDFile(dir))
}
