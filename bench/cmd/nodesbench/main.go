// Command nodesbench runs pgtenant with many nodes and shards, wired as in
// production and driven through the pgtenant CLI: -servers local Postgres
// servers (internal/localpg, default settings but max_connections, fsync on)
// hold -nodes databases registered as nodes (64 by default, 16 per server),
// a catalog with -shards shards (4,096), and -routers `pgtenant router`
// processes. It times `init`, `node add` of every node, `shard create`,
// `migrate up` (one table per shard), routing a tenant of every node from
// every router, `shard move` of one shard while the routers follow, and
// `rebalance --by-count` after two more moves made the counts uneven, then
// routes every node's tenant from every router again. See bench/README.md.
//
//	go run ./bench/cmd/nodesbench [-servers 4] [-nodes 64] [-shards 4096] [-routers 4]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/proclife"
)

type options struct {
	dir                             string
	servers, nodes, shards, routers int
	parallel                        int
}

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", "", "directory for the servers; empty means a temporary one, removed at the end")
	flag.IntVar(&o.servers, "servers", 4, "local Postgres servers")
	flag.IntVar(&o.nodes, "nodes", 64, "nodes (databases spread over the servers)")
	flag.IntVar(&o.shards, "shards", 4096, "shards (a power of two)")
	flag.IntVar(&o.routers, "routers", 4, "router processes following the catalog")
	flag.IntVar(&o.parallel, "parallel", 2, "rebalance --parallel")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "nodesbench:", err)
		os.Exit(1)
	}
}

type bench struct {
	o      options
	w      io.Writer
	root   string
	bin    string
	catDSN string
	cat    *catalog.Catalog
}

func run(ctx context.Context, o options, w io.Writer) error {
	b := &bench{o: o, w: w}
	b.root = o.dir
	if b.root == "" {
		d, err := os.MkdirTemp("", "nodesbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		b.root = d
	}
	if err := os.Chmod(b.root, 0o755); err != nil {
		return err
	}
	b.bin = filepath.Join(b.root, "pgtenant")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", b.bin, "./cmd/pgtenant").CombinedOutput(); err != nil {
		return fmt.Errorf("build pgtenant (run from the repository root): %w\n%s", err, out)
	}
	fmt.Fprintf(w, "nodesbench: %d nodes on %d servers, %d shards, %d routers; load average %s\n", o.nodes, o.servers, o.shards, o.routers, loadAvg())
	defer func() { fmt.Fprintf(w, "load average at the end: %s\n", loadAvg()) }()

	// Servers, and the node databases spread over them.
	var servers []*localpg.Cluster
	for i := range o.servers {
		c := localpg.New(filepath.Join(b.root, fmt.Sprintf("s%d", i+1)), 0)
		// Every router keeps connections to every node, and migrate up
		// runs several per node at once.
		c.Settings = map[string]string{"max_connections": "400"}
		if err := c.Init(ctx); err != nil {
			return fmt.Errorf("init server %d: %w", i+1, err)
		}
		if err := c.Start(ctx); err != nil {
			return fmt.Errorf("start server %d: %w", i+1, err)
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c.Stop(sctx)
		}()
		servers = append(servers, c)
	}
	nodeDSN := map[string]string{}
	var names []string
	for i := range o.nodes {
		name := fmt.Sprintf("n%02d", i+1)
		s := servers[i%len(servers)]
		if err := execSQL(ctx, s.DSN("postgres"), "CREATE DATABASE "+name); err != nil {
			return err
		}
		nodeDSN[name] = s.DSN(name)
		names = append(names, name)
	}
	if err := execSQL(ctx, servers[0].DSN("postgres"), "CREATE DATABASE catalog"); err != nil {
		return err
	}
	b.catDSN = servers[0].DSN("catalog")

	step := func(what string, f func() (string, error)) error {
		t0 := time.Now()
		note, err := f()
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		fmt.Fprintf(w, "%-44s %8.1f s  %s\n", what, time.Since(t0).Seconds(), note)
		return nil
	}
	if err := step(fmt.Sprintf("init --shards %d", o.shards), func() (string, error) {
		_, err := b.cli(ctx, "init", "--shards", fmt.Sprint(o.shards))
		return "", err
	}); err != nil {
		return err
	}
	if err := step(fmt.Sprintf("node add × %d", o.nodes), func() (string, error) {
		for _, n := range names {
			if _, err := b.cli(ctx, "node", "add", n, nodeDSN[n]); err != nil {
				return "", err
			}
		}
		return "", nil
	}); err != nil {
		return err
	}
	if err := step("shard create", func() (string, error) {
		out, err := b.cli(ctx, "shard", "create")
		return lastLine(out), err
	}); err != nil {
		return err
	}
	migDir := filepath.Join(b.root, "migrations")
	if err := os.MkdirAll(migDir, 0o755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(migDir, "00001_kv.sql"), []byte(`-- +goose Up
CREATE TABLE kv (tenant text NOT NULL, k int NOT NULL, v bigint NOT NULL DEFAULT 0, PRIMARY KEY (tenant, k));
-- +goose Down
DROP TABLE kv;
`), 0o644); err != nil {
		return err
	}
	if err := step("migrate up (1 file)", func() (string, error) {
		out, err := b.cli(ctx, "migrate", "up", "--dir", migDir)
		return lastLine(out), err
	}); err != nil {
		return err
	}

	b.cat = catalog.New(b.catDSN, slog.New(slog.DiscardHandler))
	if err := b.cat.Open(ctx); err != nil {
		return err
	}
	defer b.cat.Close()
	// One tenant per node, on the node's first shard.
	shards, err := b.cat.Shards(ctx)
	if err != nil {
		return err
	}
	probe := map[string]string{} // node → tenant
	for _, s := range shards {
		if _, ok := probe[s.Node]; ok {
			continue
		}
		id := fmt.Sprintf("t-%s", s.Node)
		sh := s.ID
		if _, err := b.cat.AddTenant(ctx, id, &sh); err != nil {
			return err
		}
		probe[s.Node] = id
	}

	var routers []*routerProc
	defer func() {
		for _, r := range routers {
			r.stop()
		}
	}()
	if err := step(fmt.Sprintf("%d routers started", o.routers), func() (string, error) {
		var starts []string
		for range o.routers {
			r, err := b.startRouter(ctx)
			if err != nil {
				return "", err
			}
			routers = append(routers, r)
			starts = append(starts, ms(r.started))
		}
		return "exec to /readyz 200: " + strings.Join(starts, ", "), nil
	}); err != nil {
		return err
	}
	routeAll := func() (string, error) {
		var lat []time.Duration
		for _, r := range routers {
			conn, err := r.connect(ctx)
			if err != nil {
				return "", err
			}
			for _, n := range names {
				t0 := time.Now()
				if err := routeTenant(ctx, conn, probe[n]); err != nil {
					conn.Close(ctx)
					return "", fmt.Errorf("router %s, tenant %s: %w", r.addr, probe[n], err)
				}
				lat = append(lat, time.Since(t0))
			}
			conn.Close(ctx)
		}
		slices.Sort(lat)
		return fmt.Sprintf("%d statements, each on another node, all answered: p50 %s, max %s (first use of each node's pool included)",
			len(lat), ms(lat[len(lat)/2]), ms(lat[len(lat)-1])), nil
	}
	if err := step("routing from every router to every node", routeAll); err != nil {
		return err
	}
	// A move of n01's first shard to n02, then two more, so that the counts
	// are uneven (n01 -3, n02 +3) and rebalance has work.
	var moved []int
	for _, s := range shards {
		if s.Node == names[0] && len(moved) < 3 {
			moved = append(moved, s.ID)
		}
	}
	for i, id := range moved {
		what := fmt.Sprintf("shard move %d --to %s", id, names[1])
		if i > 0 {
			what += " (to unbalance)"
		}
		if err := step(what, func() (string, error) {
			out, err := b.cli(ctx, "shard", "move", fmt.Sprint(id), "--to", names[1], "--drop-source")
			return lastLine(out), err
		}); err != nil {
			return err
		}
	}
	if err := step("rebalance --by-count --dry-run", func() (string, error) {
		out, err := b.cli(ctx, "rebalance", "--by-count", "--dry-run")
		return strings.ReplaceAll(strings.TrimSpace(out), "\n", "; "), err
	}); err != nil {
		return err
	}
	if err := step("rebalance --by-count", func() (string, error) {
		out, err := b.cli(ctx, "rebalance", "--by-count", "--parallel", fmt.Sprint(b.o.parallel), "--drop-source")
		return lastLine(out), err
	}); err != nil {
		return err
	}
	if err := step("rebalance --by-count again", func() (string, error) {
		out, err := b.cli(ctx, "rebalance", "--by-count", "--dry-run")
		return lastLine(out), err
	}); err != nil {
		return err
	}
	if err := step("routing from every router again", routeAll); err != nil {
		return err
	}
	var rss []string
	for _, r := range routers {
		rss = append(rss, fmt.Sprintf("%.1f", r.rss()))
	}
	fmt.Fprintf(w, "router RSS at the end (MB): %s\n", strings.Join(rss, ", "))
	return nil
}

// cli runs the pgtenant binary against the catalog and returns its stdout.
func (b *bench) cli(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, b.bin, append(args, "--catalog", b.catDSN)...)
	cmd.Dir = b.root
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("pgtenant %s: %w\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func routeTenant(ctx context.Context, conn *pgx.Conn, tenant string) error {
	if _, err := conn.Exec(ctx, "SET pgtenant.tenant = '"+strings.ReplaceAll(tenant, "'", "''")+"'"); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, "SELECT count(*) FROM kv")
	return err
}

func execSQL(ctx context.Context, dsn, sql string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("%.60s: %w", sql, err)
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// --- router processes ---

type routerProc struct {
	cmd     *exec.Cmd
	exited  <-chan error  // proclife.Start's: the router's exit
	gone    chan struct{} // closed once stop saw it exit
	addr    string
	metrics string
	started time.Duration
	stderr  *strings.Builder
}

func (b *bench) startRouter(ctx context.Context) (*routerProc, error) {
	p1, err := localpg.FreePort()
	if err != nil {
		return nil, err
	}
	p2, err := localpg.FreePort()
	if err != nil {
		return nil, err
	}
	r := &routerProc{addr: fmt.Sprintf("127.0.0.1:%d", p1), metrics: fmt.Sprintf("127.0.0.1:%d", p2), stderr: &strings.Builder{}}
	r.cmd = exec.Command(b.bin, "router", "--catalog", b.catDSN, "--listen", r.addr, "--metrics-listen", r.metrics, "--auth", "trust")
	r.cmd.Dir = b.root
	r.cmd.Stderr = r.stderr
	t0 := time.Now()
	// The router dies with the bench, even a killed one (proclife).
	exited, err := proclife.Start(r.cmd, syscall.SIGKILL)
	if err != nil {
		return nil, err
	}
	r.exited, r.gone = exited, make(chan struct{})
	for {
		resp, err := http.Get("http://" + r.metrics + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Since(t0) > time.Minute || ctx.Err() != nil {
			r.stop()
			return nil, errors.New("router not ready after a minute: " + r.stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.started = time.Since(t0)
	return r, nil
}

func (r *routerProc) stop() {
	select {
	case <-r.gone:
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.exited:
	case <-time.After(30 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
	}
	close(r.gone)
}

func (r *routerProc) connect(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://postgres@%s/app?sslmode=disable", r.addr))
	if err != nil {
		return nil, err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	return pgx.ConnectConfig(ctx, cfg)
}

// rss is the process's resident set in MB.
func (r *routerProc) rss() float64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		var kb float64
		if _, err := fmt.Sscanf(s.Text(), "VmRSS: %f kB", &kb); err == nil {
			return kb / 1024
		}
	}
	return 0
}
