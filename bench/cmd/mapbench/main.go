// Command mapbench measures the placement map at scale, wired as in
// production: local Postgres clusters (internal/localpg, default settings,
// fsync on), a catalog, `pgtenant router` processes (the binary is built
// first) and the mover fenced through catalog.RouterFencer. With 10 tenants
// and then with -tenants (10,000,000) in the catalog it measures the router's
// start time and RSS, a default shard move under load (mover pause, client
// max against a control run), `tenant add` until a running router routes the
// new tenant while -add-rate adds/s run, the fence acknowledgement time of
// -routers routers, and `tenant add --file` of -file-ids ids. See
// bench/README.md.
//
//	go run ./bench/cmd/mapbench [-tenants 10000000] [-add-rate 1000] [-add-seconds 20] [-routers 8] [-file-ids 1000000]
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
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/move"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/proclife"
)

type options struct {
	dir                 string
	tenants             int
	addRate, addSeconds int
	routers             int
	fileIDs             int
	fences              int
	clients             int
	control             time.Duration
	skip                string
}

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", "", "directory for the clusters; empty means a temporary one, removed at the end")
	flag.IntVar(&o.tenants, "tenants", 10_000_000, "tenants generated in the catalog for the large case")
	flag.IntVar(&o.addRate, "add-rate", 1000, "tenant adds per second during the signup case")
	flag.IntVar(&o.addSeconds, "add-seconds", 20, "length of the signup case")
	flag.IntVar(&o.routers, "routers", 8, "router processes following the catalog in the fence case")
	flag.IntVar(&o.fences, "fences", 20, "fences (and lifts) timed in the fence case")
	flag.IntVar(&o.fileIDs, "file-ids", 1_000_000, "ids in the file given to `tenant add --file`")
	flag.IntVar(&o.clients, "clients", 8, "clients writing through the router during moves (half on the moving shard)")
	flag.DurationVar(&o.control, "control", 3*time.Second, "length of each control run (load, no move)")
	flag.StringVar(&o.skip, "skip", "", "comma-separated cases to skip: small, large, adds, fences, file")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "mapbench:", err)
		os.Exit(1)
	}
}

type bench struct {
	o      options
	w      io.Writer
	root   string
	bin    string
	nodes  map[string]*localpg.Cluster
	catDSN string
	cat    *catalog.Catalog
	log    *slog.Logger
}

func run(ctx context.Context, o options, w io.Writer) error {
	b := &bench{o: o, w: w, nodes: map[string]*localpg.Cluster{}, log: slog.New(slog.DiscardHandler)}
	b.root = o.dir
	if b.root == "" {
		d, err := os.MkdirTemp("", "mapbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		b.root = d
	}
	if err := os.Chmod(b.root, 0o755); err != nil {
		return err
	}
	skip := map[string]bool{}
	for _, s := range strings.Split(o.skip, ",") {
		skip[strings.TrimSpace(s)] = true
	}
	b.bin = filepath.Join(b.root, "pgtenant")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", b.bin, "./cmd/pgtenant").CombinedOutput(); err != nil {
		return fmt.Errorf("build pgtenant (run from the repository root): %w\n%s", err, out)
	}
	for _, name := range []string{"n1", "n2"} {
		c := localpg.New(filepath.Join(b.root, name), 0)
		if err := c.Init(ctx); err != nil {
			return fmt.Errorf("init %s: %w", name, err)
		}
		if err := c.Start(ctx); err != nil {
			return fmt.Errorf("start %s: %w", name, err)
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c.Stop(sctx)
		}()
		b.nodes[name] = c
		for _, db := range []string{"bench", "catalog"} {
			if err := execSQL(ctx, c.DSN("postgres"), "CREATE DATABASE "+db); err != nil {
				return err
			}
		}
	}
	if err := b.setup(ctx); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	defer b.cat.Close()
	fmt.Fprintf(w, "mapbench: 256 shards on 2 nodes, %d CPUs, load average %s\n\n", numCPU(), loadAvg())
	defer func() { fmt.Fprintf(w, "\nload average at the end: %s\n", loadAvg()) }()

	if !skip["small"] {
		fmt.Fprintf(w, "== %d tenants in the catalog\n", b.tenantCount(ctx))
		if err := b.routerCase(ctx, false); err != nil {
			return err
		}
	}
	if skip["large"] {
		return nil
	}
	t0 := time.Now()
	if err := b.generate(ctx, o.tenants); err != nil {
		return fmt.Errorf("generate tenants: %w", err)
	}
	fmt.Fprintf(w, "\n== %d tenants in the catalog (generated in %.1f s)\n", b.tenantCount(ctx), time.Since(t0).Seconds())
	if err := b.routerCase(ctx, !skip["adds"]); err != nil {
		return err
	}
	if !skip["fences"] {
		if err := b.fenceCase(ctx); err != nil {
			return err
		}
	}
	if !skip["file"] {
		if err := b.fileCase(ctx); err != nil {
			return err
		}
	}
	return nil
}

// loadAvg is the machine's 1, 5 and 15 minute load averages (the machine
// may be shared: the figures mean little when it is far above the CPUs).
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

func numCPU() int {
	n := 0
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if strings.HasPrefix(s.Text(), "processor") {
			n++
		}
	}
	return n
}

func execSQL(ctx context.Context, dsn, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("%.60s: %w", sql, err)
	}
	return nil
}

// loadTenant is the tenant the load uses in shard s (placed explicitly).
func loadTenant(s int) string { return fmt.Sprintf("load-%d", s) }

const movingShard = 2 // on n1 at first

func (b *bench) setup(ctx context.Context) error {
	b.catDSN = b.nodes["n1"].DSN("catalog")
	b.cat = catalog.New(b.catDSN, b.log)
	if err := b.cat.Open(ctx); err != nil {
		return err
	}
	if err := b.cat.Init(ctx, 256); err != nil {
		return err
	}
	for _, n := range []string{"n1", "n2"} {
		if _, err := b.cat.AddNode(ctx, n, b.nodes[n].DSN("bench")); err != nil {
			return err
		}
	}
	created, err := b.cat.CreateShards(ctx)
	if err != nil {
		return err
	}
	ddl := map[string]*strings.Builder{"n1": {}, "n2": {}}
	for _, s := range created {
		fmt.Fprintf(ddl[s.Node], "CREATE TABLE %s.kv (client int NOT NULL, k int NOT NULL, val bigint NOT NULL, PRIMARY KEY (client, k));\n",
			pgx.Identifier{s.Schema}.Sanitize())
	}
	for n, sql := range ddl {
		if err := execSQL(ctx, b.nodes[n].DSN("bench"), sql.String()); err != nil {
			return err
		}
	}
	for s := range 10 {
		if _, err := b.cat.AddTenant(ctx, loadTenant(s), &s); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) tenantCount(ctx context.Context) int64 {
	var n int64
	b.cat.Pool().QueryRow(ctx, `SELECT count(*) FROM pgtenant.tenants`).Scan(&n)
	return n
}

// generate fills the catalog with n tenants 'tenant-1' ... placed by the
// server's hash, the way a bulk import would, with the table's triggers and
// indexes set aside for the load (a benchmark shortcut, as superuser).
func (b *bench) generate(ctx context.Context, n int) error {
	conn, err := pgx.Connect(ctx, b.catDSN)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, sql := range []string{
			`SET LOCAL synchronous_commit = off`,
			`SET LOCAL maintenance_work_mem = '512MB'`,
			`ALTER TABLE pgtenant.tenants DISABLE TRIGGER ALL`,
			`ALTER TABLE pgtenant.tenants DROP CONSTRAINT tenants_pkey`,
			`DROP INDEX pgtenant.tenants_shard`,
			fmt.Sprintf(`INSERT INTO pgtenant.tenants (id, shard) SELECT 'tenant-' || g, (hashtextextended('tenant-' || g, 0) & 255)::int
				FROM generate_series(1, %d) g`, n),
			`ALTER TABLE pgtenant.tenants ADD PRIMARY KEY (id)`,
			`CREATE INDEX tenants_shard ON pgtenant.tenants (shard)`,
			`ALTER TABLE pgtenant.tenants ENABLE TRIGGER ALL`,
			`ANALYZE pgtenant.tenants`,
		} {
			if _, err := tx.Exec(ctx, sql); err != nil {
				return fmt.Errorf("%.60s: %w", sql, err)
			}
		}
		return nil
	})
}

// --- router processes ---

type routerProc struct {
	cmd     *exec.Cmd
	exited  <-chan error  // proclife.Start's: the router's exit
	gone    chan struct{} // closed once stop saw it exit
	addr    string
	metrics string
	started time.Duration // exec to /readyz 200
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
	r.cmd = exec.Command(b.bin, "router", "--catalog", b.catDSN, "--listen", r.addr, "--metrics-listen", r.metrics,
		"--auth", "trust", "--pool-size", "40")
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
			return nil, fmt.Errorf("router not ready after a minute: %s", r.stderr.String())
		}
		time.Sleep(2 * time.Millisecond)
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

// rss returns the process's resident set and its peak, in MB.
func (r *routerProc) rss() (cur, peak float64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", r.cmd.Process.Pid))
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			cur = kb / 1024
		case "VmHWM:":
			peak = kb / 1024
		}
	}
	return cur, peak
}

func (r *routerProc) connect(ctx context.Context, tenant string) (*pgx.Conn, error) {
	q := "sslmode=disable"
	if tenant != "" {
		q += "&options=" + url.QueryEscape("-c pgtenant.tenant="+tenant)
	}
	cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://postgres@%s/app?%s", r.addr, strings.ReplaceAll(q, "+", "%20")))
	if err != nil {
		return nil, err
	}
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	return pgx.ConnectConfig(ctx, cfg)
}

// --- load through a router ---

type sample struct {
	start time.Time
	dur   time.Duration
}

type loadClient struct {
	id      int
	shard   int
	samples []sample
	errs    int
	first   error
}

type load struct {
	clients []*loadClient
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// startLoad runs n clients writing in short transactions, 10 ms apart: half
// on the moving shard's tenant, the rest on other shards.
func startLoad(r *routerProc, n int) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel}
	for i := range n {
		sh := movingShard
		if i%2 == 1 {
			sh = []int{0, 1, 3, 4, 5, 6, 7, 8, 9}[i%9]
		}
		cl := &loadClient{id: i, shard: sh}
		l.clients = append(l.clients, cl)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			conn, err := r.connect(ctx, loadTenant(sh))
			if err != nil {
				cl.errs++
				cl.first = err
				return
			}
			defer conn.Close(context.Background())
			for k := 0; ctx.Err() == nil; k++ {
				t0 := time.Now()
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, `INSERT INTO kv (client, k, val) VALUES ($1, $2, $3) ON CONFLICT (client, k) DO UPDATE SET val = excluded.val`,
						cl.id, k%1000, k)
					return err
				})
				if err != nil {
					if ctx.Err() == nil {
						cl.errs++
						if cl.first == nil {
							cl.first = err
						}
					}
					time.Sleep(10 * time.Millisecond)
					continue
				}
				cl.samples = append(cl.samples, sample{t0, time.Since(t0)})
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	return l
}

func (l *load) stop() { l.cancel(); l.wg.Wait() }

// firstError is the first error of any client, for the report.
func (l *load) firstError() string {
	for _, cl := range l.clients {
		if cl.first != nil {
			return "; first: " + cl.first.Error()
		}
	}
	return ""
}

// stats is the longest and the 99th percentile transaction overlapping
// [from, to), and the errors of the whole run.
func (l *load) stats(from, to time.Time) (maxD, p99 time.Duration, errs int) {
	var ds []time.Duration
	for _, cl := range l.clients {
		errs += cl.errs
		for _, s := range cl.samples {
			if s.start.Add(s.dur).Before(from) || !s.start.Before(to) {
				continue
			}
			ds = append(ds, s.dur)
		}
	}
	if len(ds) == 0 {
		return 0, 0, errs
	}
	slices.Sort(ds)
	return ds[len(ds)-1], ds[len(ds)*99/100], errs
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// routerCase starts a router, reports its start and memory, runs a control
// and two default moves under load, and, with adds, the signup case.
func (b *bench) routerCase(ctx context.Context, adds bool) error {
	r, err := b.startRouter(ctx)
	if err != nil {
		return err
	}
	defer r.stop()
	cur, _ := r.rss()
	fmt.Fprintf(b.w, "router start (exec to /readyz 200): %s; RSS %.1f MB\n", ms(r.started), cur)
	if err := b.moveCase(ctx, r, "default move"); err != nil {
		return err
	}
	if adds {
		if err := b.addCase(ctx, r); err != nil {
			return err
		}
	}
	cur, peak := r.rss()
	fmt.Fprintf(b.w, "router RSS at the end: %.1f MB (peak %.1f MB)\n", cur, peak)
	return nil
}

var moveTo = map[string]string{"n1": "n2", "n2": "n1"}

// moveCase runs a control, then moves the moving shard there and back.
func (b *bench) moveCase(ctx context.Context, r *routerProc, name string) error {
	l := startLoad(r, b.o.clients)
	defer l.stop()
	time.Sleep(500 * time.Millisecond)
	c0 := time.Now()
	time.Sleep(b.o.control)
	ctlMax, ctlP99, _ := l.stats(c0, time.Now())
	mover := move.New(move.Config{Catalog: b.cat.Pool(), Fencer: catalog.RouterFencer{Catalog: b.cat}, Logger: b.log, FenceTimeout: 10 * time.Second})
	var pauses []string
	var worst, worstP99 time.Duration
	for i := range 4 {
		shards, err := b.cat.Shards(ctx)
		if err != nil {
			return err
		}
		t0 := time.Now()
		skipVerify := i >= 2
		res, err := mover.Move(ctx, movingShard, moveTo[shards[movingShard].Node], move.Options{DropSource: true, SkipVerify: skipVerify})
		t1 := time.Now()
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		mx, p99, _ := l.stats(t0, t1)
		worst, worstP99 = max(worst, mx), max(worstP99, p99)
		pauses = append(pauses, fmt.Sprintf("%s (verify %v, client max %s, move %.1f s)", ms(res.Pause), res.Verified, ms(mx), res.Duration.Seconds()))
		time.Sleep(500 * time.Millisecond)
	}
	l.stop()
	_, _, errs := l.stats(time.Time{}, time.Now())
	fmt.Fprintf(b.w, "%s, %d clients: mover pauses %s; client max %s (p99 %s) vs control max %s (p99 %s); %d client errors%s\n",
		name, b.o.clients, strings.Join(pauses, ", "), ms(worst), ms(worstP99), ms(ctlMax), ms(ctlP99), errs, l.firstError())
	return nil
}

// addCase registers tenants at addRate/s for addSeconds while clients write
// through the router and a move runs; for every tenth new tenant a prober
// measures from the end of `tenant add` until the router routes a statement
// for it: half of them asked for beforehand (so the router had cached
// "unknown" for them), half not.
func (b *bench) addCase(ctx context.Context, r *routerProc) error {
	l := startLoad(r, b.o.clients)
	defer l.stop()
	time.Sleep(500 * time.Millisecond)
	c0 := time.Now()
	time.Sleep(b.o.control)
	ctlMax, ctlP99, _ := l.stats(c0, time.Now())

	// The signup service: its own catalog handle, with connections enough
	// for the workers.
	signups := catalog.New(b.catDSN+"&pool_max_conns=32", b.log)
	if err := signups.Open(ctx); err != nil {
		return err
	}
	defer signups.Close()
	// Baseline: the probe for a tenant the router has cached.
	var base []time.Duration
	if probe, err := r.connect(ctx, ""); err == nil {
		for i := range 200 {
			t0 := time.Now()
			if err := probeTenant(ctx, probe, loadTenant(i%10)); err == nil {
				base = append(base, time.Since(t0))
			}
		}
		probe.Close(ctx)
	}
	total := b.o.addRate * b.o.addSeconds
	jobs := make(chan int, total)
	var mu sync.Mutex
	var cold, warm []time.Duration
	var addErrs, probeErrs int
	var added int
	var addDur []time.Duration
	start := time.Now()
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var probe *pgx.Conn
			defer func() {
				if probe != nil {
					probe.Close(context.Background())
				}
			}()
			for i := range jobs {
				id := fmt.Sprintf("signup-%d", i)
				probed := i%10 == 0
				if probed && probe == nil {
					var err error
					if probe, err = r.connect(ctx, ""); err != nil {
						mu.Lock()
						probeErrs++
						mu.Unlock()
						probed = false
					}
				}
				asked := probed && i%20 == 0
				if asked {
					if err := probeTenant(ctx, probe, id); !isCode(err, "42704") {
						mu.Lock()
						probeErrs++
						mu.Unlock()
					}
				}
				a0 := time.Now()
				_, err := signups.AddTenant(ctx, id, nil)
				a1 := time.Now()
				mu.Lock()
				if err != nil {
					addErrs++
				} else {
					added++
					addDur = append(addDur, a1.Sub(a0))
				}
				mu.Unlock()
				if err != nil || !probed {
					continue
				}
				for {
					err := probeTenant(ctx, probe, id)
					if err == nil {
						break
					}
					if !isCode(err, "42704") || time.Since(a1) > 10*time.Second {
						mu.Lock()
						probeErrs++
						mu.Unlock()
						break
					}
					time.Sleep(time.Millisecond)
				}
				d := time.Since(a1)
				mu.Lock()
				if asked {
					warm = append(warm, d)
				} else {
					cold = append(cold, d)
				}
				mu.Unlock()
			}
		}()
	}
	// Pace the adds: job i is released at start + i/rate.
	var moveMsg string
	moveDone := make(chan struct{})
	go func() {
		defer close(moveDone)
		time.Sleep(time.Duration(b.o.addSeconds) * time.Second / 3)
		shards, err := b.cat.Shards(ctx)
		if err != nil {
			moveMsg = err.Error()
			return
		}
		mover := move.New(move.Config{Catalog: b.cat.Pool(), Fencer: catalog.RouterFencer{Catalog: b.cat}, Logger: b.log, FenceTimeout: 10 * time.Second})
		t0 := time.Now()
		res, err := mover.Move(ctx, movingShard, moveTo[shards[movingShard].Node], move.Options{DropSource: true})
		if err != nil {
			moveMsg = "move failed: " + err.Error()
			return
		}
		mx, p99, _ := l.stats(t0, time.Now())
		moveMsg = fmt.Sprintf("default move during the signups: mover pause %s (verified %v); client max %s (p99 %s)", ms(res.Pause), res.Verified, ms(mx), ms(p99))
	}()
	for i := range total {
		if d := time.Until(start.Add(time.Duration(i) * time.Second / time.Duration(b.o.addRate))); d > 0 {
			time.Sleep(d)
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	elapsed := time.Since(start)
	<-moveDone
	addMax, addP99, errs := l.stats(start, time.Now())
	l.stop()
	pct := func(ds []time.Duration) string {
		if len(ds) == 0 {
			return "-"
		}
		slices.Sort(ds)
		at := func(p int) time.Duration { return ds[min(len(ds)-1, len(ds)*p/100)] }
		return fmt.Sprintf("p50 %s, p95 %s, p99 %s, max %s (%d samples)", ms(at(50)), ms(at(95)), ms(at(99)), ms(ds[len(ds)-1]), len(ds))
	}
	fmt.Fprintf(b.w, "signups: %d tenants added in %.1f s (%.0f/s; %d errors); tenant add itself: %s\n",
		added, elapsed.Seconds(), float64(added)/elapsed.Seconds(), addErrs, pct(addDur))
	fmt.Fprintf(b.w, "  the probe (SET pgtenant.tenant; SELECT count(*) FROM kv) for a cached tenant, before the signups: %s\n", pct(base))
	fmt.Fprintf(b.w, "  routable after tenant add returned, not asked for before: %s\n", pct(cold))
	fmt.Fprintf(b.w, "  routable after tenant add returned, refused (42704) just before: %s\n", pct(warm))
	fmt.Fprintf(b.w, "  %d probe errors; clients during the signups: max %s (p99 %s) vs control max %s (p99 %s); %d client errors\n",
		probeErrs, ms(addMax), ms(addP99), ms(ctlMax), ms(ctlP99), errs)
	fmt.Fprintf(b.w, "  %s\n", moveMsg)
	return nil
}

// probeTenant runs a statement on tenant's shard through the router.
func probeTenant(ctx context.Context, conn *pgx.Conn, tenant string) error {
	if _, err := conn.Exec(ctx, "SET pgtenant.tenant = "+quoteLiteral(tenant)); err != nil {
		return err
	}
	_, err := conn.Exec(ctx, "SELECT count(*) FROM kv")
	return err
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func isCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

// fenceCase starts -routers router processes and times, -fences times, how
// long after a shard's state changes every router has acknowledged it.
func (b *bench) fenceCase(ctx context.Context) error {
	var rs []*routerProc
	defer func() {
		for _, r := range rs {
			r.stop()
		}
	}()
	var starts []time.Duration
	for range b.o.routers {
		r, err := b.startRouter(ctx)
		if err != nil {
			return err
		}
		rs = append(rs, r)
		starts = append(starts, r.started)
	}
	const shard = 5
	var fence, lift []time.Duration
	for i := 0; i < 2*b.o.fences; i++ {
		state := placement.StateFenced
		if i%2 == 1 {
			state = placement.StateActive
		}
		t0 := time.Now()
		v, err := b.cat.SetShardState(ctx, shard, state)
		if err != nil {
			return err
		}
		if err := b.cat.WaitAcked(ctx, v, 3*time.Second, time.Millisecond); err != nil {
			return err
		}
		d := time.Since(t0)
		if i%2 == 0 {
			fence = append(fence, d)
		} else {
			lift = append(lift, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
	live, err := b.cat.LiveRouters(ctx, 3*time.Second)
	if err != nil {
		return err
	}
	var rss float64
	for _, r := range rs {
		cur, _ := r.rss()
		rss = max(rss, cur)
	}
	slices.Sort(fence)
	slices.Sort(lift)
	slices.Sort(starts)
	fmt.Fprintf(b.w, "%d routers (%d live in the catalog): started in %s..%s, RSS up to %.1f MB\n", len(rs), len(live), ms(starts[0]), ms(starts[len(starts)-1]), rss)
	fmt.Fprintf(b.w, "  fence acknowledged by all, from the state change: p50 %s, max %s; lift: p50 %s, max %s (%d each)\n",
		ms(fence[len(fence)/2]), ms(fence[len(fence)-1]), ms(lift[len(lift)/2]), ms(lift[len(lift)-1]), len(fence))
	return nil
}

// fileCase runs `pgtenant tenant add --file` with -file-ids new ids.
func (b *bench) fileCase(ctx context.Context) error {
	path := filepath.Join(b.root, "ids.txt")
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(f)
	for i := range b.o.fileIDs {
		fmt.Fprintf(bw, "import-%d\n", i)
	}
	if err := bw.Flush(); err != nil {
		return err
	}
	f.Close()
	t0 := time.Now()
	cmd := exec.CommandContext(ctx, b.bin, "tenant", "add", "--file", path, "--catalog", b.catDSN)
	cmd.Dir = b.root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("tenant add --file: %w\n%s", err, out)
	}
	fmt.Fprintf(b.w, "tenant add --file with %d ids (catalog holding %d): %.1f s:\n  %s\n", b.o.fileIDs, b.tenantCount(ctx)-int64(b.o.fileIDs), time.Since(t0).Seconds(),
		strings.ReplaceAll(strings.TrimSpace(string(out)), "\n", "\n  "))
	return nil
}
