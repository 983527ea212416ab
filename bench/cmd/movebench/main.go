// Command movebench measures online shard moves wired as in production: local
// Postgres clusters (internal/localpg, default settings, fsync on), a catalog,
// an in-process router following it (catalog.Follow → Server.SetMap) and the
// mover fenced through catalog.RouterFencer, while clients write through the
// router in short transactions. It prints one table; see bench/README.md.
//
//	go run ./bench/cmd/movebench [-clients 8] [-think 10ms] [-sat-clients 32] [-big-mb 1024] [-split-shards 256] [-trigger-mb 200]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/move"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/router"
)

type options struct {
	dir                    string
	clients, satClients    int
	think, control         time.Duration
	moves                  int
	shardRows              int
	bigMB, bigClients      int
	bigVerify              bool
	splitShards, splitRows int
	parallel               int
	triggerMB              int
	triggerClients         int
	triggerNoLogical       bool
	skip                   string
	verbose                bool
	slow                   time.Duration
	sample                 bool
	interleave, perMove    bool
	minIdle                int
	prewarmAB, coldPools   bool
	verifyAB               bool
	verifyChunk            int64
	verifyPace             float64
	bigMoves               int
	bigSettle              bool
	copyAB                 bool
	copyFlushAfter         int
	copyNoFreeze           bool
	timeline               bool
	timelineSlow           time.Duration
	timelineEvery          time.Duration
}

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", "", "directory for the clusters; empty means a temporary one, removed at the end")
	flag.IntVar(&o.clients, "clients", 8, "clients of the steady load (half on the moving shard's tenants)")
	flag.DurationVar(&o.think, "think", 10*time.Millisecond, "pause between a steady client's transactions")
	flag.IntVar(&o.satClients, "sat-clients", 32, "clients of the saturating load (no pause between transactions)")
	flag.DurationVar(&o.control, "control", 5*time.Second, "length of each control run (load, no move)")
	flag.IntVar(&o.moves, "moves", 3, "moves per steady-load case (the shard goes back and forth)")
	flag.IntVar(&o.shardRows, "shard-rows", 100000, "rows in the shard moved under load")
	flag.IntVar(&o.bigMB, "big-mb", 1024, "size of the large shard in MB (rows of ~1 KB)")
	flag.IntVar(&o.bigClients, "big-clients", 16, "clients of the steady load while the large shard moves (half on it)")
	flag.BoolVar(&o.bigVerify, "big-verify", true, "verify the large shard's move (the default move; compared after the flip)")
	flag.IntVar(&o.splitShards, "split-shards", 256, "shards of the 2→4 node split")
	flag.IntVar(&o.splitRows, "split-rows", 200, "rows per shard in the split")
	flag.IntVar(&o.parallel, "parallel", 4, "moves at once in the split")
	flag.IntVar(&o.triggerMB, "trigger-mb", 200, "size of the shard moved with --method trigger in MB (rows of ~1 KB)")
	flag.IntVar(&o.triggerClients, "trigger-clients", 8, "clients without think time during the trigger-method move")
	flag.BoolVar(&o.triggerNoLogical, "trigger-no-logical", false, "skip moving the trigger case's shard back with the logical method (for comparison)")
	flag.StringVar(&o.skip, "skip", "", "comma-separated cases to skip: steady, saturating, big, split, trigger")
	flag.BoolVar(&o.verbose, "v", false, "log the mover and the router to stderr")
	flag.DurationVar(&o.slow, "slow", 0, "steady case: print each moving-shard transaction longer than this during a move, with the mover's steps (0: none)")
	flag.BoolVar(&o.interleave, "interleave", false, "steady and saturating cases: moves with and without verification take turns (on, off, on, …) instead of all on, then all off")
	flag.IntVar(&o.minIdle, "min-idle", 0, "steady, saturating and large cases: the router's pool keeps this many connections open to each node (warm backends on the target at the flip)")
	flag.BoolVar(&o.prewarmAB, "prewarm-ab", false, "steady and saturating cases: each verify setting is run with the router's pre-warming of the target on and off (interleaved with -interleave)")
	flag.BoolVar(&o.verifyAB, "verify-ab", false, "steady and saturating cases: verified moves also run with the comparison paced as before session 7 (8 MB chunks)")
	flag.Int64Var(&o.verifyChunk, "verify-chunk", 0, "bytes one paced checksum query reads (move.Config.VerifyChunk; 0: the default)")
	flag.Float64Var(&o.verifyPace, "verify-pace", 0, "rest after each checksum chunk, in times the chunk took (move.Config.VerifyPace; 0: the default)")
	flag.BoolVar(&o.coldPools, "cold-pools", false, "steady and saturating cases: before each move, shrink the router's pools to one idle connection per node (a target the router has few connections to, as at a first move)")
	flag.BoolVar(&o.perMove, "per-move", false, "print each move's pause and longest transactions as it finishes")
	flag.BoolVar(&o.sample, "sample", false, "steady case: sample both nodes' pg_stat_activity every 5 ms during each move and print the active backends")
	flag.IntVar(&o.bigMoves, "big-moves", 1, "moves of the large shard (back and forth)")
	flag.BoolVar(&o.bigSettle, "big-settle", true, "after loading the large shard: VACUUM it and CHECKPOINT, as a shard that has been in use (not rows written a minute ago, unhinted, still dirty in the page cache); and CHECKPOINT both nodes before each move")
	flag.BoolVar(&o.copyAB, "copy-ab", false, "steady, saturating and large cases: moves also run with the initial copy as before session 8 (no backend_flush_after, no COPY FREEZE); interleaved")
	flag.IntVar(&o.copyFlushAfter, "copy-flush-after", 0, "move.Config.CopyFlushAfter in kB (0: the default; -1: the server's setting)")
	flag.BoolVar(&o.copyNoFreeze, "copy-no-freeze", false, "move.Config.CopyWithoutFreeze: copy without COPY FREEZE")
	flag.BoolVar(&o.timeline, "timeline", false, "steady, saturating and large cases: sample the box during the control and each move (every backend's wait event and CPU, pressure, disk, dirty pages, the mover's steps, Go GC) and print each client transaction longer than -timeline-slow with what the box did then")
	flag.DurationVar(&o.timelineSlow, "timeline-slow", 50*time.Millisecond, "with -timeline: the client transactions to explain")
	flag.DurationVar(&o.timelineEvery, "timeline-every", 10*time.Millisecond, "with -timeline: sampling interval")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "movebench:", err)
		os.Exit(1)
	}
}

// row is one line of the result table.
type row struct {
	name, load, verify           string
	pause                        time.Duration
	maxMoving, maxOther, control time.Duration
	p99Moving, p99Other, p99Ctl  time.Duration
	total                        time.Duration
	note                         string
}

func run(ctx context.Context, o options, w io.Writer) error {
	log := slog.New(slog.DiscardHandler)
	if o.verbose {
		// Times to the microsecond: the fence's steps are a few ms each.
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.String(slog.TimeKey, a.Value.Time().Format("15:04:05.000000"))
			}
			return a
		}}))
	}
	root := o.dir
	if root == "" {
		d, err := os.MkdirTemp("", "movebench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		root = d
	}
	if err := os.Chmod(root, 0o755); err != nil {
		return err
	}
	skip := map[string]bool{}
	for _, s := range strings.Split(o.skip, ",") {
		skip[strings.TrimSpace(s)] = true
	}

	nodes := map[string]*localpg.Cluster{}
	names := []string{"n1", "n2"}
	if !skip["split"] {
		names = append(names, "n3", "n4")
	}
	for _, name := range names {
		c := localpg.New(filepath.Join(root, name), 0) // default settings: fsync on
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
		nodes[name] = c
		for _, db := range []string{"bench", "split", "trigger", "catalog"} {
			if err := exec(ctx, c.DSN("postgres"), "CREATE DATABASE "+db); err != nil {
				return err
			}
		}
	}
	var rows []row
	var splitLine string
	if !skip["steady"] || !skip["saturating"] || !skip["big"] {
		r, err := runMoves(ctx, o, log, nodes, skip)
		rows = append(rows, r...)
		if err != nil {
			printTable(w, rows, "")
			return err
		}
	}
	if !skip["split"] {
		s, err := runSplit(ctx, o, log, nodes)
		if err != nil {
			printTable(w, rows, "")
			return err
		}
		splitLine = s
	}
	var trigger []string
	if !skip["trigger"] {
		t, err := runTrigger(ctx, o, log, nodes)
		if err != nil {
			printTable(w, rows, splitLine)
			return err
		}
		trigger = t
	}
	printTable(w, rows, splitLine)
	if len(trigger) > 0 {
		fmt.Fprintln(w)
		fmt.Fprintln(w, strings.Join(trigger, "\n"))
	}
	return nil
}

func printTable(w io.Writer, rows []row, split string) {
	ms := func(d time.Duration) string {
		if d == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tload\tverify\tmover pause ms\tmax txn moving shard ms\tmax txn other shards ms\tcontrol max txn ms\tp99 moving/other/control ms\tmove time s\tnote\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s/%s/%s\t%.1f\t%s\t\n", r.name, r.load, r.verify, ms(r.pause), ms(r.maxMoving), ms(r.maxOther), ms(r.control),
			ms(r.p99Moving), ms(r.p99Other), ms(r.p99Ctl), r.total.Seconds(), r.note)
	}
	tw.Flush()
	if split != "" {
		fmt.Fprintln(w)
		fmt.Fprintln(w, split)
	}
}

func exec(ctx context.Context, dsn, sql string, args ...any) error {
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

// shardTables is every shard's schema (as in e2e/movefixture_test.go).
const shardTables = `
CREATE TABLE %[1]s.accounts (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, tenant text NOT NULL, name text NOT NULL);
CREATE TABLE %[1]s.items (id bigserial PRIMARY KEY, account_id bigint NOT NULL REFERENCES %[1]s.accounts (id), n int NOT NULL, payload text);
CREATE INDEX ON %[1]s.items (account_id);
CREATE TABLE %[1]s.kv (client int NOT NULL, k int NOT NULL, val bigint NOT NULL, PRIMARY KEY (client, k));
INSERT INTO %[1]s.accounts (tenant, name) SELECT 'seed', 'account ' || i FROM generate_series(1, 10) i;
`

// env is a catalog, its nodes and one router following it.
type env struct {
	cat    *catalog.Catalog
	srv    *router.Server
	addr   string
	stop   func()
	shards []placement.Shard
	tenant map[int]string // one tenant per shard
	nodes  map[string]string
	// clients counts the load clients started, so that every client of
	// every load has its own rows in kv (the ledger checks them).
	clients int
	// diag explains slow transactions in the steady case (-slow, -sample).
	diag *diag
	// rcfg is the router's config (see coldPools).
	rcfg router.Config
	// tl samples the box during moves (-timeline).
	tl *timeline
}

// shardNodes maps every shard to its node now.
func (e *env) shardNodes(ctx context.Context) map[int]string {
	out := map[int]string{}
	shards, err := e.cat.Shards(ctx)
	if err != nil {
		return out
	}
	for _, s := range shards {
		out[s.ID] = s.Node
	}
	return out
}

// coldPools closes the router's idle backend connections but one per node
// pool (a reload to a pool size of 1, then back), then lets the load run a
// second to open what it needs again: the next move's target has about the
// connections its own shards' clients use, none for the moving shard's.
func (e *env) coldPools() {
	c := e.rcfg
	c.Pool.MaxSize, c.Pool.MinIdle = 1, 0
	e.srv.Reload(c)
	e.srv.Reload(e.rcfg)
	time.Sleep(time.Second)
}

// newEnv creates the catalog in database catDB on n1 with shards over the
// given nodes (database db), the shard tables, one tenant per shard, and
// starts a router wired as `pgtenant router` is.
func newEnv(ctx context.Context, log *slog.Logger, nodes map[string]*localpg.Cluster, db string, names []string, shards, minIdle int) (*env, error) {
	catDSN := nodes["n1"].DSN("catalog")
	if db != "bench" {
		// Another catalog: its own schema in another database.
		if err := exec(ctx, nodes["n1"].DSN("postgres"), "CREATE DATABASE catalog_"+db); err != nil {
			return nil, err
		}
		catDSN = nodes["n1"].DSN("catalog_" + db)
	}
	e := &env{cat: catalog.New(catDSN, log), tenant: map[int]string{}, nodes: map[string]string{}}
	for _, n := range names {
		e.nodes[n] = nodes[n].DSN(db)
	}
	if err := e.cat.Open(ctx); err != nil {
		return nil, err
	}
	if err := e.cat.Init(ctx, shards); err != nil {
		return nil, err
	}
	for _, n := range names {
		if _, err := e.cat.AddNode(ctx, n, nodes[n].DSN(db)); err != nil {
			return nil, err
		}
	}
	created, err := e.cat.CreateShards(ctx)
	if err != nil {
		return nil, err
	}
	e.shards = created
	byNode := map[string]*strings.Builder{}
	for _, s := range created {
		b := byNode[s.Node]
		if b == nil {
			b = &strings.Builder{}
			byNode[s.Node] = b
		}
		fmt.Fprintf(b, shardTables, pgx.Identifier{s.Schema}.Sanitize())
		id := s.ID
		name := fmt.Sprintf("t%d", s.ID)
		if _, err := e.cat.AddTenant(ctx, name, &id); err != nil {
			return nil, err
		}
		e.tenant[s.ID] = name
	}
	for n, b := range byNode {
		if err := exec(ctx, nodes[n].DSN(db), b.String()); err != nil {
			return nil, err
		}
	}
	// The router: listen, register, load the map, serve, follow.
	e.rcfg = router.Config{Listen: "127.0.0.1:0", Auth: router.AuthTrust, Logger: log, Pool: router.PoolConfig{MaxSize: 40, MinIdle: minIdle}}
	e.srv = router.New(e.rcfg)
	if err := e.srv.Open(ctx); err != nil {
		return nil, err
	}
	e.addr = e.srv.Addr().String()
	id := "movebench/" + e.addr
	// The router has its own catalog connections, as a router process does.
	rcat := catalog.New(catDSN, log)
	if err := rcat.Open(ctx); err != nil {
		return nil, err
	}
	if err := rcat.Heartbeat(ctx, id, e.addr, 0); err != nil {
		return nil, err
	}
	m, err := rcat.LoadMap(ctx)
	if err != nil {
		return nil, err
	}
	if err := e.srv.SetMap(ctx, m); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); e.srv.Serve(sctx) }()
	go func() { defer wg.Done(); rcat.Follow(sctx, id, e.addr, time.Second, e.srv.SetMap) }()
	e.stop = func() { cancel(); wg.Wait(); rcat.Close(); e.cat.Close() }
	return e, nil
}

func (e *env) mover(log *slog.Logger, f move.Fencer, opts ...func(*move.Config)) *move.Mover {
	if f == nil {
		f = catalog.RouterFencer{Catalog: e.cat}
	}
	cfg := move.Config{Catalog: e.cat.Pool(), Fencer: f, Logger: log, FenceTimeout: 10 * time.Second}
	switch {
	case e.diag.on() && e.tl.on():
		cfg.BeforeStep = func(ctx context.Context, id int64, st move.Step) error {
			e.tl.beforeStep(ctx, id, st)
			return e.diag.beforeStep(ctx, id, st)
		}
	case e.diag.on():
		cfg.BeforeStep = e.diag.beforeStep
	case e.tl.on():
		cfg.BeforeStep = e.tl.beforeStep
	}
	for _, o := range opts {
		o(&cfg)
	}
	return move.New(cfg)
}

// --- load ---

type sample struct {
	start    time.Time
	inserted time.Time // the statement's answer arrived (before COMMIT)
	dur      time.Duration
}

type client struct {
	id      int
	shard   int
	tenant  string
	samples []sample
	errs    []error
	// The ledger: the last acknowledged value of each key, and the values
	// of failed attempts (their commit may or may not have happened).
	acked  map[int]int64
	unsure map[int][]int64
}

type load struct {
	clients []*client
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// startLoad runs n clients: half on the moving shard's tenant, the rest
// spread over the other shards; each runs BEGIN; upsert; COMMIT in a loop.
func (e *env) startLoad(n int, moving int, think time.Duration) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel}
	var others []int
	for _, s := range e.shards {
		if s.ID != moving {
			others = append(others, s.ID)
		}
	}
	for i := 0; i < n; i++ {
		sh := moving
		if i%2 == 1 || moving < 0 {
			sh = others[(i*7/2)%len(others)]
		}
		cl := &client{id: e.clients, shard: sh, tenant: e.tenant[sh], acked: map[int]int64{}, unsure: map[int][]int64{}}
		e.clients++
		l.clients = append(l.clients, cl)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			cl.run(ctx, e.addr, think)
		}()
	}
	return l
}

func (l *load) stop() {
	l.cancel()
	l.wg.Wait()
}

func (cl *client) run(ctx context.Context, addr string, think time.Duration) {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: addr, Path: "/app",
		RawQuery: "sslmode=disable&options=" + url.QueryEscape("-c pgtenant.tenant="+cl.tenant)}
	conn, err := pgx.Connect(ctx, strings.ReplaceAll(u.String(), "+", "%20"))
	if err != nil {
		cl.errs = append(cl.errs, err)
		return
	}
	defer conn.Close(context.Background())
	rng := rand.New(rand.NewPCG(uint64(cl.id), 1))
	for ctx.Err() == nil {
		t0 := time.Now()
		k, v := rng.IntN(1000), rng.Int64()
		var t1 time.Time
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, `INSERT INTO kv (client, k, val) VALUES ($1, $2, $3) ON CONFLICT (client, k) DO UPDATE SET val = excluded.val`,
				cl.id, k, v)
			t1 = time.Now()
			return err
		})
		if err != nil {
			cl.unsure[k] = append(cl.unsure[k], v)
			if ctx.Err() == nil {
				cl.errs = append(cl.errs, err)
			}
			continue
		}
		cl.acked[k] = v
		delete(cl.unsure, k) // acknowledged later: earlier failed attempts are overwritten
		cl.samples = append(cl.samples, sample{t0, t1, time.Since(t0)})
		if think > 0 {
			time.Sleep(think)
		}
	}
}

// stats is the longest and the 99th percentile transaction of the chosen clients overlapping [from, to).
func (l *load) stats(moving int, onMoving bool, from, to time.Time) (maxD, p99 time.Duration, errs int) {
	var ds []time.Duration
	for _, cl := range l.clients {
		if (cl.shard == moving) != onMoving {
			continue
		}
		errs += len(cl.errs)
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

// --- cases ---

func runMoves(ctx context.Context, o options, log *slog.Logger, nodes map[string]*localpg.Cluster, skip map[string]bool) ([]row, error) {
	e, err := newEnv(ctx, log, nodes, "bench", []string{"n1", "n2"}, 8, o.minIdle)
	if err != nil {
		return nil, fmt.Errorf("set up: %w", err)
	}
	defer e.stop()
	const moving = 2 // on n1
	if o.slow > 0 || o.sample {
		e.diag = &diag{w: os.Stdout, slow: o.slow, sample: o.sample, dsns: map[string]string{"n1": nodes["n1"].DSN("bench"), "n2": nodes["n2"].DSN("bench")}}
	}
	if o.timeline {
		e.tl = &timeline{w: os.Stdout, slow: o.timelineSlow, every: o.timelineEvery, disk: diskOf(nodes["n1"].DataDir()),
			dsns: map[string]string{"n1": nodes["n1"].DSN("postgres"), "n2": nodes["n2"].DSN("postgres")},
			logs: map[string]string{"n1": nodes["n1"].LogFile(), "n2": nodes["n2"].LogFile()},
			pids: []int{postmasterPID(nodes["n1"].DataDir()), postmasterPID(nodes["n2"].DataDir())}}
	}
	fill := func(shard, rows int, wide bool) error {
		s := pgx.Identifier{placement.SchemaName(shard)}.Sanitize()
		payload := "md5(i::text)"
		if wide {
			payload = "repeat(md5(i::text), 30)" // 960 bytes, stored inline, not compressed
		}
		return exec(ctx, nodes["n1"].DSN("bench"), fmt.Sprintf(`
			INSERT INTO %[1]s.accounts (tenant, name) SELECT 'bulk', 'account ' || i FROM generate_series(1, 1000) i;
			INSERT INTO %[1]s.items (account_id, n, payload) SELECT 1 + i %% 1000, i, %[3]s FROM generate_series(1, %[2]d) i;
			ANALYZE %[1]s.accounts, %[1]s.items;`, s, rows, payload))
	}
	if err := fill(moving, o.shardRows, false); err != nil {
		return nil, err
	}
	var rows []row
	where := "n1"
	other := map[string]string{"n1": "n2", "n2": "n1"}
	// oneCase runs a control and moves under a load and adds a row per verify setting.
	oneCase := func(name string, clients int, think time.Duration, verifyOpts []bool, moves int) error {
		// The variants: each verify setting, with the router's pre-warming
		// on (and off, with -prewarm-ab).
		type variant struct{ verify, prewarm, oldVerify, oldCopy bool }
		var verifies []variant
		for _, v := range verifyOpts {
			verifies = append(verifies, variant{v, true, false, false})
			if o.copyAB {
				verifies = append(verifies, variant{v, true, false, true})
			}
			if o.prewarmAB {
				verifies = append(verifies, variant{v, false, false, false})
			}
			if o.verifyAB && v {
				verifies = append(verifies, variant{v, true, true, false})
			}
		}
		l := e.startLoad(clients, moving, think)
		defer l.stop()
		time.Sleep(500 * time.Millisecond) // warm up
		stopTL := func() {}
		if e.tl.on() {
			stopTL = e.tl.start(ctx)
		}
		c0 := time.Now()
		time.Sleep(o.control)
		c1 := time.Now()
		stopTL()
		if e.tl.on() {
			e.tl.report(name+", control (no move)", l, moving, c0, c1, e.shardNodes(ctx))
		}
		ctlMax, ctlP99, _ := l.stats(moving, true, c0, c1)
		if m, p, _ := l.stats(moving, false, c0, c1); m > ctlMax {
			ctlMax, ctlP99 = m, max(ctlP99, p)
		}
		loadDesc := fmt.Sprintf("%d clients, %s think", clients, think)
		if think == 0 {
			loadDesc = fmt.Sprintf("%d clients, saturating", clients)
		}
		// One row per verify setting; with -interleave the settings take
		// turns move by move (on, off, on, off, …), so that both meet the
		// same pools and the same load on the box.
		rs := make([]row, len(verifies))
		pauses := make([][]time.Duration, len(verifies))
		for k, v := range verifies {
			rs[k] = row{name: name, load: loadDesc, verify: map[bool]string{true: "on", false: "off"}[v.verify], control: ctlMax, p99Ctl: ctlP99}
			if !v.prewarm {
				rs[k].verify += ", no prewarm"
			}
			if v.oldVerify {
				rs[k].verify += ", 8MB chunks"
			}
			if v.oldCopy {
				rs[k].verify += ", copy as before"
			}
		}
		type turn struct{ k, i int }
		var turns []turn
		for k := range verifies {
			for i := 0; i < moves; i++ {
				turns = append(turns, turn{k, i})
			}
		}
		if o.interleave {
			slices.SortStableFunc(turns, func(a, b turn) int { return a.i - b.i })
		}
		for _, tn := range turns {
			verify, r := verifies[tn.k].verify, &rs[tn.k]
			e.srv.SetPrewarm(verifies[tn.k].prewarm)
			if o.coldPools {
				e.coldPools()
			}
			watching := e.diag.on() && think > 0
			stopWatch := func() []activity { return nil }
			if watching {
				stopWatch = e.diag.watch(ctx)
			}
			if e.tl.on() {
				stopTL = e.tl.start(ctx)
			}
			t0 := time.Now()
			mcfg := func(c *move.Config) {
				c.VerifyChunk, c.VerifyPace = o.verifyChunk, o.verifyPace
				c.CopyFlushAfter, c.CopyWithoutFreeze = o.copyFlushAfter, o.copyNoFreeze
				if verifies[tn.k].oldVerify {
					c.VerifyChunk = 8 << 20
				}
				if verifies[tn.k].oldCopy {
					oldCopy(c)
				}
			}
			res, err := e.mover(log, nil, mcfg).Move(ctx, moving, other[where], move.Options{SkipVerify: !verify, DropSource: true})
			t1 := time.Now()
			acts := stopWatch()
			if e.tl.on() {
				stopTL()
				sn := e.shardNodes(ctx)
				sn[moving] = where + "→" + other[where]
				e.tl.report(fmt.Sprintf("%s, verify %s, move %d", name, r.verify, tn.i+1), l, moving, t0, t1, sn)
			}
			if err != nil {
				return fmt.Errorf("%s: move: %w", name, err)
			}
			if watching {
				fmt.Fprintf(e.diag.w, "== %s, verify %s: pause %.1f ms\n", name, r.verify, float64(res.Pause.Microseconds())/1000)
				e.diag.report(l, moving, t0, t1, acts)
			}
			where = other[where]
			pauses[tn.k] = append(pauses[tn.k], res.Pause)
			r.pause = max(r.pause, res.Pause)
			r.total = max(r.total, res.Duration)
			mm, mp, _ := l.stats(moving, true, t0, t1)
			om, op, _ := l.stats(moving, false, t0, t1)
			r.maxMoving, r.p99Moving = max(r.maxMoving, mm), max(r.p99Moving, mp)
			r.maxOther, r.p99Other = max(r.maxOther, om), max(r.p99Other, op)
			if o.perMove {
				fmt.Printf("%s, verify %s, move %d: pause %.1f ms, max txn moving shard %.1f ms, other shards %.1f ms\n", name, r.verify, tn.i+1,
					float64(res.Pause.Microseconds())/1000, float64(mm.Microseconds())/1000, float64(om.Microseconds())/1000)
			}
			time.Sleep(time.Second)
		}
		for k := range rs {
			slices.Sort(pauses[k])
			rs[k].note = fmt.Sprintf("%d moves, pauses %s", moves, fmtDurs(pauses[k]))
			if o.interleave {
				rs[k].note += " (interleaved)"
			}
		}
		rows = append(rows, rs...)
		l.stop()
		_, _, errs := l.stats(moving, true, time.Time{}, time.Now())
		_, _, errs2 := l.stats(moving, false, time.Time{}, time.Now())
		if errs+errs2 > 0 {
			rows[len(rows)-1].note += fmt.Sprintf("; %d client errors", errs+errs2)
		}
		led, err := l.ledger(ctx, e)
		if err != nil {
			return err
		}
		rows[len(rows)-1].note += "; " + led
		return nil
	}
	if !skip["steady"] {
		if err := oneCase(fmt.Sprintf("steady, %d rows", o.shardRows), o.clients, o.think, []bool{true, false}, o.moves); err != nil {
			return rows, err
		}
	}
	if !skip["saturating"] {
		if err := oneCase(fmt.Sprintf("saturating, %d rows", o.shardRows), o.satClients, 0, []bool{true, false}, 1); err != nil {
			return rows, err
		}
	}
	if !skip["big"] {
		r, err := runBig(ctx, o, log, e, nodes)
		rows = append(rows, r...)
		if err != nil {
			return rows, err
		}
	}
	return rows, nil
}

func fmtDurs(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, fmt.Sprintf("%.1f", float64(d.Microseconds())/1000))
	}
	return strings.Join(s, ", ") + " ms"
}

// runSplit creates splitShards small shards over n1 and n2, then splits both
// nodes onto n3 and n4 (half of each node's shards) with MoveAll, under a
// steady load through the router.
func runSplit(ctx context.Context, o options, log *slog.Logger, nodes map[string]*localpg.Cluster) (string, error) {
	t0 := time.Now()
	e, err := newEnv(ctx, log, nodes, "split", []string{"n1", "n2"}, o.splitShards, 0)
	if err != nil {
		return "", fmt.Errorf("split set up: %w", err)
	}
	defer e.stop()
	for _, n := range []string{"n1", "n2"} {
		var b strings.Builder
		for _, s := range e.shards {
			if s.Node == n {
				fmt.Fprintf(&b, "INSERT INTO %[1]s.items (account_id, n, payload) SELECT 1 + i %% 10, i, md5(i::text) FROM generate_series(1, %[2]d) i;\n",
					pgx.Identifier{s.Schema}.Sanitize(), o.splitRows)
			}
		}
		if err := exec(ctx, nodes[n].DSN("split"), b.String()); err != nil {
			return "", err
		}
	}
	for _, n := range []string{"n3", "n4"} {
		if _, err := e.cat.AddNode(ctx, n, nodes[n].DSN("split")); err != nil {
			return "", err
		}
	}
	setup := time.Since(t0)
	shards, err := e.cat.Shards(ctx)
	if err != nil {
		return "", err
	}
	// Interleave the two splits so that parallel moves spread over both new
	// nodes (each subscription takes logical replication workers on its target).
	var plans []move.Plan
	a, b := placement.PlanSplit(shards, "n1", "n3"), placement.PlanSplit(shards, "n2", "n4")
	for i := 0; i < max(len(a), len(b)); i++ {
		if i < len(a) {
			plans = append(plans, move.Plan{Shard: a[i].Shard, From: a[i].From, To: a[i].To})
		}
		if i < len(b) {
			plans = append(plans, move.Plan{Shard: b[i].Shard, From: b[i].From, To: b[i].To})
		}
	}
	l := e.startLoad(o.clients, -1, o.think)
	time.Sleep(500 * time.Millisecond)
	var mu sync.Mutex
	var pauses []time.Duration
	st := newStepTimes()
	mv := move.New(move.Config{Catalog: e.cat.Pool(), Fencer: catalog.RouterFencer{Catalog: e.cat}, Logger: log,
		FenceTimeout: 10 * time.Second, BeforeStep: st.beforeStep})
	sum := mv.MoveAll(ctx, plans, o.parallel, move.Options{SkipVerify: false, DropSource: true}, st.onStart, func(out move.Outcome) {
		st.onDone(out)
		mu.Lock()
		defer mu.Unlock()
		if out.Err == nil {
			pauses = append(pauses, out.Result.Pause)
		} else {
			fmt.Fprintf(os.Stderr, "split: shard %d: %v\n", out.Plan.Shard, out.Err)
		}
	})
	l.stop()
	slices.Sort(pauses)
	med := time.Duration(0)
	if len(pauses) > 0 {
		med = pauses[len(pauses)/2]
	}
	maxTxn, p99, errs := l.stats(-1, false, t0, time.Now())
	after, err := e.cat.Nodes(ctx)
	if err != nil {
		return "", err
	}
	var counts []string
	for _, n := range after {
		counts = append(counts, fmt.Sprintf("%s=%d", n.Name, n.Shards))
	}
	if sum.Failed > 0 {
		err = errors.New("some split moves failed")
	}
	return fmt.Sprintf("split 2→4 nodes, %d shards of %d rows (setup %s), %d at a time per node pair, verify on, under %d clients (%s think): "+
		"%d shards moved, %d failed, %.1f MB, total %s (%.2f s per shard, %.0f moves/minute), pause median %.1f ms / longest %.1f ms; "+
		"clients' longest txn %.1f ms, p99 %.1f ms, %d errors; shards per node after: %s",
		o.splitShards, o.splitRows, setup.Round(time.Second), o.parallel, o.clients, o.think,
		sum.Moved, sum.Failed, float64(sum.Bytes)/1e6, sum.Duration.Round(100*time.Millisecond), sum.Duration.Seconds()/float64(max(sum.Moved, 1)), float64(sum.Moved)/sum.Duration.Minutes(),
		float64(med.Microseconds())/1000, float64(sum.LongestPause.Microseconds())/1000,
		float64(maxTxn.Microseconds())/1000, float64(p99.Microseconds())/1000, errs, strings.Join(counts, " ")) + "\n" + st.medians(), err
}
