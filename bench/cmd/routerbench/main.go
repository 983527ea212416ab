// Command routerbench compares pgtenant's router with direct connections and
// pgbouncer on a point-select workload driven by pgbench. It starts two local
// Postgres clusters, creates shards, tenants and rows, starts the router (in
// process, transaction mode) and pgbouncer (transaction mode), runs pgbench
// for each target and protocol mode, and prints a table. See bench/README.md.
//
//	go run ./bench/cmd/routerbench [-clients 16] [-duration 10s]
package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/proclife"
	"github.com/pgtenant/pgtenant/internal/router"
)

type options struct {
	tenants, rows, shards, clients, threads, poolSize int
	duration                                          time.Duration
	modes                                             []string
	scripts                                           string
	rounds                                            int
	cpuprofile                                        string
	// trace is the file of a Go execution trace of the first pgtenant case;
	// strace the directory of `strace -c` summaries: every case of round 1
	// runs once more under strace, for system calls per transaction.
	trace, strace   string
	only, workloads []string
	// variants are runtime settings under which every router case runs
	// again, right after the case without them (see applyVariant).
	variants []string
	// pgbenchOther starts pgbench with the default scheduling policy under
	// chrt: set for the sched=batch variant, whose policy a forked pgbench
	// would inherit.
	pgbenchOther bool
	// many are the client counts of the many-clients case; latency runs
	// the latency case (see many.go); extra are more pgbench arguments.
	many    []int
	latency bool
	extra   []string
	// setupCost is the rounds of the -setupcost case (setupcost.go); it
	// runs instead of the pgbench cases.
	setupCost int
}

func main() {
	var o options
	var modes string
	flag.IntVar(&o.tenants, "tenants", 1000, "tenants (ids 0 … n-1; tenant i lives in shard i % shards)")
	flag.IntVar(&o.rows, "rows", 100000, "rows in all, spread evenly over the tenants")
	flag.IntVar(&o.shards, "shards", 16, "shards, even ones on node a and odd ones on node b")
	flag.IntVar(&o.clients, "clients", 16, "pgbench clients (-c)")
	flag.IntVar(&o.threads, "threads", 2, "pgbench threads (-j)")
	flag.IntVar(&o.poolSize, "pool", 20, "backend connections per node for pgtenant and pgbouncer")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "pgbench run time per case (-T)")
	flag.StringVar(&modes, "modes", "simple,extended,prepared", "pgbench protocol modes (-M)")
	flag.IntVar(&o.rounds, "rounds", 1, "run every case this many times, interleaved (round 1 of every target, then round 2, …), to expose noise")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "write a CPU profile of this process (the in-process routers) taken during the pgtenant cases to this file")
	var only string
	flag.StringVar(&o.trace, "trace", "", "write a Go execution trace (go tool trace) of this process taken during the first pgtenant case to this file")
	flag.StringVar(&o.strace, "strace", "", "directory: run every case of round 1 once more under strace -c -f attached to the proxy, and print its system calls per transaction")
	flag.StringVar(&only, "only", "", "comma-separated targets to run (direct, pgbouncer, \"pgtenant (1 node)\", \"pgtenant (1 node) no usage\", \"pgtenant (2 nodes)\", \"pgbouncer fixed path\", \"pgbouncer one table\", and the textCases: \"pgbouncer all shards\", \"pgbouncer router texts\", \"pgbouncer texts no DISCARD\", \"pgbouncer texts path only\", \"pgbouncer texts tenant only\", \"pgbouncer texts DISCARD only\"); empty means all")
	var workloads string
	flag.StringVar(&workloads, "workloads", "", "comma-separated workloads to run (\"1 query\", \"1 stmt\", \"2 stmts\", \"4 stmts\"); empty means all")
	var variants, many, hold string
	var holdClients int
	var holdDB string
	flag.StringVar(&many, "many", "", "comma-separated client counts (e.g. 1000,5000): pgbench with that many clients against pgbouncer and pgtenant (1 node), and each proxy's memory per idle client")
	flag.IntVar(&o.setupCost, "setupcost", 0, "rounds: instead of the pgbench cases, measure the server's CPU per transaction for the router's setup variants on one backend each (see setupcost.go)")
	flag.BoolVar(&o.latency, "latency", false, "measure the latency (p50, p99) of pgbouncer and pgtenant (1 node) at half of the router's saturation throughput")
	flag.StringVar(&hold, "hold", "", "internal: open -hold-clients idle client connections to this address, print ready, keep them until stdin closes")
	flag.IntVar(&holdClients, "hold-clients", 0, "internal: see -hold")
	flag.StringVar(&holdDB, "hold-db", "bench", "internal: see -hold")
	flag.StringVar(&variants, "variants", "", "comma-separated runtime settings under which each router case runs again, right after the plain case, in the same process: procs=N (GOMAXPROCS), gogc=N|off (GOGC), sched=batch (SCHED_BATCH for every thread)")
	flag.StringVar(&o.scripts, "scripts", "", "directory of the pgbench scripts; empty means bench/pgbench next to this program's source")
	flag.Parse()
	if hold != "" {
		if err := runHold(hold, holdDB, holdClients); err != nil {
			fmt.Fprintln(os.Stderr, "routerbench -hold:", err)
			os.Exit(1)
		}
		return
	}
	if modes != "" {
		o.modes = strings.Split(modes, ",")
	}
	if many != "" {
		for _, f := range strings.Split(many, ",") {
			n, err := strconv.Atoi(f)
			if err != nil || n < 1 {
				fmt.Fprintln(os.Stderr, "routerbench: -many wants client counts")
				os.Exit(2)
			}
			o.many = append(o.many, n)
		}
	}
	if only != "" {
		o.only = strings.Split(only, ",")
	}
	if workloads != "" {
		o.workloads = strings.Split(workloads, ",")
	}
	if variants != "" {
		o.variants = strings.Split(variants, ",")
		for _, v := range o.variants {
			restore, err := applyVariant(v)
			if err != nil {
				fmt.Fprintln(os.Stderr, "routerbench:", err)
				os.Exit(2)
			}
			restore()
		}
	}
	if o.scripts == "" {
		_, file, _, _ := runtime.Caller(0)
		o.scripts = filepath.Join(filepath.Dir(file), "..", "..", "pgbench")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.setupCost > 0 {
		if err := runSetupCost(ctx, o, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "routerbench -setupcost:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "routerbench:", err)
		os.Exit(1)
	}
}

// routerTxnSQL is the pgtenant counterpart of pgbench/direct_txn.sql: the
// same four statements, the tenant chosen for the transaction with a bind
// parameter. (Written to the temp directory at run time.)
const (
	routerTxnScript = "router_txn.sql"
	routerTxnSQL    = `-- Point select through pgtenant, -M extended and -M prepared, as four
-- statements in one transaction, like direct_txn.sql: the router answers
-- BEGIN and the set_config itself and sends them with the SELECT.
\set tid random(0, :ntenants - 1)
\set k random(1, :rows_per_tenant)
BEGIN;
SELECT set_config('pgtenant.tenant', :tid, true);
SELECT balance FROM accounts WHERE id = :tid::int * :rows_per_tenant + :k;
END;
`
)

// fixedDB is the pgbouncer database whose server connections have a fixed
// search_path (shard_0000): "what the app has today", one schema, no
// per-transaction schema switch.
const fixedDB = "benchfixed"

// oneTableDB is the database on node a, and the pgbouncer database of the
// same name, whose public.accounts holds every tenant's rows in one table
// (loadOneTable): what the app has today before sharding, any tenant read
// with a fixed search_path (oneTableBouncer).
const oneTableDB = "benchone"

// oneTableBouncer names pgbouncer serving oneTableDB.
const oneTableBouncer = "pgbouncer one table"

// hintScripts is how many one-statement scripts with a literal tenant hint
// the "1 stmt" extended case of pgtenant gives pgbench (pgbench picks one at
// random per transaction; it allows at most 128 scripts, and in extended mode
// it would turn a :variable inside the hint into a bind parameter).
const hintScripts = 100

// writeHintScripts writes the hint scripts into dir and returns their paths:
// script i names tenant (37·i) mod tenants, which covers every shard.
func writeHintScripts(dir string, tenants int) ([]string, error) {
	var paths []string
	for i := 0; i < min(hintScripts, tenants); i++ {
		tid := (37 * i) % tenants
		p := filepath.Join(dir, fmt.Sprintf("router_hint_%03d.sql", i))
		sql := fmt.Sprintf("\\set k random(1, :rows_per_tenant)\n/* tenant: %d */ SELECT balance FROM accounts WHERE id = %d * :rows_per_tenant + :k::int;\n", tid, tid)
		if err := os.WriteFile(p, []byte(sql), 0o644); err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// textCase is a pgbouncer case with scripts of its own (writeTextScripts):
// the tenants of writeHintScripts, one Query per transaction, made of
// prefix and a point select of table. They take the server's cost of
// "what the user sees" apart: the data of 16 shards against fixed.sql's
// shard 0, and each part of the setup text the router sends (combined.go)
// without the router.
type textCase struct {
	name string
	// sql returns the statements ahead of the select (each ending with
	// "\;", empty for none) and the table it reads.
	sql func(shard, tenant int) (prefix, table string)
}

// textCases are the textCase targets; only those without a prefix run in
// extended mode too (pgbench sends one statement per Parse).
func textCases() []textCase {
	qualified := func(shard int) string { return fmt.Sprintf("shard_%04d.accounts", shard) }
	path := func(shard int) string {
		return fmt.Sprintf("SET LOCAL search_path = 'shard_%04d', 'public', 'pg_temp' \\; ", shard)
	}
	tenant := func(tid int) string { return fmt.Sprintf("SET LOCAL pgtenant.tenant_id = '%d' \\; ", tid) }
	const discard = "DISCARD TEMP \\; "
	return []textCase{
		{spreadBouncer, func(s, _ int) (string, string) { return "", qualified(s) }},
		{textsBouncer, func(s, t int) (string, string) { return discard + path(s) + tenant(t), "accounts" }},
		{"pgbouncer texts no DISCARD", func(s, t int) (string, string) { return path(s) + tenant(t), "accounts" }},
		{"pgbouncer texts path only", func(s, _ int) (string, string) { return path(s), "accounts" }},
		{"pgbouncer texts tenant only", func(s, t int) (string, string) { return tenant(t), qualified(s) }},
		{"pgbouncer texts DISCARD only", func(s, _ int) (string, string) { return discard, qualified(s) }},
	}
}

// writeTextScripts writes the scripts of every textCase into dir and
// returns their paths by case name.
func writeTextScripts(dir string, tenants, shards int) (map[string][]string, error) {
	paths := map[string][]string{}
	for c, tc := range textCases() {
		for i := 0; i < min(hintScripts, tenants); i++ {
			tid := (37 * i) % tenants
			prefix, table := tc.sql(tid%shards, tid)
			p := filepath.Join(dir, fmt.Sprintf("text%d_%03d.sql", c, i))
			sql := fmt.Sprintf("\\set k random(1, :rows_per_tenant)\n%sSELECT balance FROM %s WHERE id = %d * :rows_per_tenant + :k::int;\n", prefix, table, tid)
			if err := os.WriteFile(p, []byte(sql), 0o644); err != nil {
				return nil, err
			}
			paths[tc.name] = append(paths[tc.name], p)
		}
	}
	return paths, nil
}

// result is one pgbench run.
type result struct {
	mode, target string
	// workload says what one transaction sends (see the scripts).
	workload     string
	tps, latency float64 // latency in ms
	skipped      string
	round        int
	txns         float64
	// CPU time per transaction in µs: the proxy (router or pgbouncer
	// process; 0 for direct), the Postgres node(s) and pgbench itself.
	proxyUS, pgUS, benchUS float64
	// proxyCS is the proxy's context switches (voluntary and not) per
	// transaction: its wake-ups.
	proxyCS float64
	// connMS is pgbench's initial connection time (all clients) in ms.
	connMS float64
}

func run(ctx context.Context, o options, w io.Writer) error {
	pgbench, err := exec.LookPath("pgbench")
	if err != nil {
		return fmt.Errorf("pgbench not found on PATH (apt-get install postgresql-client): %w", err)
	}
	bouncer, err := findPgbouncer()
	if err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "routerbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	if err := os.Chmod(root, 0o755); err != nil {
		return err
	}

	if err := os.WriteFile(filepath.Join(root, routerTxnScript), []byte(routerTxnSQL), 0o644); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	rowsPer := o.rows / o.tenants
	if rowsPer < 1 {
		return errors.New("need at least one row per tenant")
	}
	// Node a holds every shard, so that direct connections and pgbouncer
	// (one node each) can serve every tenant; node b holds the odd shards.
	nodes := map[string]*localpg.Cluster{}
	for _, name := range []string{"a", "b"} {
		c := localpg.New(filepath.Join(root, name), 0)
		c.Settings = map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
		if err := c.Init(ctx); err != nil {
			return fmt.Errorf("init node %s: %w", name, err)
		}
		if err := c.Start(ctx); err != nil {
			return fmt.Errorf("start node %s: %w", name, err)
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c.Stop(sctx)
		}()
		nodes[name] = c
		log.Info("node started", "node", name, "port", c.Port)
		var shards []int
		for s := 0; s < o.shards; s++ {
			if name == "a" || s%2 == 1 {
				shards = append(shards, s)
			}
		}
		if err := load(ctx, c, shards, o, rowsPer); err != nil {
			return fmt.Errorf("load node %s: %w", name, err)
		}
		if name == "a" && (len(o.only) == 0 || slices.Contains(o.only, oneTableBouncer)) {
			if err := loadOneTable(ctx, c, o, rowsPer); err != nil {
				return fmt.Errorf("load node %s: %w", name, err)
			}
		}
	}

	// Three routers: one with every shard on node a (the same backend as the
	// direct and pgbouncer runs), the same with per-tenant usage counting
	// off (to measure what counting costs), one spreading shards over both
	// nodes.
	routerAddr := map[string]string{}
	var routers []namedRouter
	for _, rt := range []struct {
		key           string
		spread, usage bool
	}{{"pgtenant (1 node)", false, true}, {noUsage, false, false}, {"pgtenant (2 nodes)", true, true}} {
		spread := rt.spread
		m := &placement.Map{Version: 1, Nodes: map[string]placement.Node{}, Tenants: map[string]int{}}
		for name, c := range nodes {
			m.Nodes[name] = placement.Node{Name: name, DSN: c.DSN("bench")}
		}
		for s := 0; s < o.shards; s++ {
			node := "a"
			if spread && s%2 == 1 {
				node = "b"
			}
			m.Shards = append(m.Shards, placement.Shard{ID: s, Schema: placement.SchemaName(s), Node: node, State: placement.StateActive, Epoch: 1})
		}
		for t := 0; t < o.tenants; t++ {
			m.Tenants[strconv.Itoa(t)] = t % o.shards
		}
		// Waits for a backend as long as pgbouncer's (query_wait_timeout,
		// 120 s by default): with thousands of clients on 20 backends a
		// client queues for seconds, past the router's default of 5 s.
		cfg := router.Config{Listen: "127.0.0.1:0", Auth: router.AuthTrust, Pool: router.PoolConfig{MaxSize: o.poolSize, WaitTimeout: 2 * time.Minute}, MaxClients: maxClients(o),
			// Warnings and errors only (a backend that failed, a node not
			// reached): a round that stops says why.
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
		if !rt.usage {
			cfg.UsageCapacity = -1
		}
		srv := router.New(cfg)
		if err := srv.SetMap(ctx, m); err != nil {
			return err
		}
		if err := srv.Open(ctx); err != nil {
			return err
		}
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- srv.Serve(rctx) }()
		defer func() { cancel(); <-done }()
		routerAddr[rt.key] = srv.Addr().String()
		routers = append(routers, namedRouter{rt.key, srv})
	}

	bouncerPort, bouncerPID, stopBouncer, err := startPgbouncer(ctx, bouncer, filepath.Join(root, "pgbouncer"), nodes["a"].Port, o.poolSize, maxClients(o))
	if err != nil {
		return err
	}
	defer stopBouncer()

	hints, err := writeHintScripts(root, o.tenants)
	if err != nil {
		return err
	}
	texts, err := writeTextScripts(root, o.tenants, o.shards)
	if err != nil {
		return err
	}
	type target struct {
		name, addr, script, workload string
		db                           string // database name; empty means bench
		variant                      string // see options.variants
	}
	direct := fmt.Sprintf("127.0.0.1:%d", nodes["a"].Port)
	pgb := fmt.Sprintf("127.0.0.1:%d", bouncerPort)
	var prof *os.File
	if o.cpuprofile != "" {
		if prof, err = os.Create(o.cpuprofile); err != nil {
			return err
		}
		defer prof.Close()
	}
	var results []result
	var straced []straceResult
	traceFile := o.trace
	for round := 1; round <= max(o.rounds, 1); round++ {
		for _, mode := range o.modes {
			var targets []target
			if mode == "simple" {
				// One round trip per transaction everywhere.
				targets = []target{
					{"direct", direct, "direct_simple.sql", "1 query", "", ""},
					{"pgbouncer", pgb, "direct_simple.sql", "1 query", "", ""},
					{fixedBouncer, pgb, "fixed.sql", "1 query", fixedDB, ""},
					{oneTableBouncer, pgb, "onetable.sql", "1 query", oneTableDB, ""},
					{"pgtenant (1 node)", routerAddr["pgtenant (1 node)"], "router_simple.sql", "1 query", "", ""},
					{noUsage, routerAddr[noUsage], "router_simple.sql", "1 query", "", ""},
					{"pgtenant (2 nodes)", routerAddr["pgtenant (2 nodes)"], "router_simple.sql", "1 query", "", ""},
				}
				for _, tc := range textCases() {
					targets = append(targets, target{tc.name, pgb, textScript, "1 query", "", ""})
				}
			} else {
				// pgtenant and direct connections keep a session setting;
				// pgbouncer in transaction mode needs it set per transaction.
				targets = []target{
					{"direct", direct, "direct_extended.sql", "2 stmts", "", ""},
					{"direct", direct, "direct_txn.sql", "4 stmts", "", ""},
					{"pgbouncer", pgb, "direct_txn.sql", "4 stmts", "", ""},
					{fixedBouncer, pgb, "fixed.sql", "1 stmt", fixedDB, ""},
					{oneTableBouncer, pgb, "onetable.sql", "1 stmt", oneTableDB, ""},
					{"pgtenant (1 node)", routerAddr["pgtenant (1 node)"], "router_extended.sql", "2 stmts", "", ""},
					{"pgtenant (1 node)", routerAddr["pgtenant (1 node)"], routerTxnScript, "4 stmts", "", ""},
					{noUsage, routerAddr[noUsage], "router_extended.sql", "2 stmts", "", ""},
					{noUsage, routerAddr[noUsage], routerTxnScript, "4 stmts", "", ""},
					{"pgtenant (2 nodes)", routerAddr["pgtenant (2 nodes)"], "router_extended.sql", "2 stmts", "", ""},
					{"pgtenant (2 nodes)", routerAddr["pgtenant (2 nodes)"], routerTxnScript, "4 stmts", "", ""},
				}
				if mode == "extended" {
					targets = append(targets, target{spreadBouncer, pgb, textScript, "1 stmt", "", ""})
					// A random tenant per transaction named by a hint, one
					// statement: what the user sees against fixedBouncer.
					targets = append(targets,
						target{"pgtenant (1 node)", routerAddr["pgtenant (1 node)"], hintScript, "1 stmt", "", ""},
						target{"pgtenant (2 nodes)", routerAddr["pgtenant (2 nodes)"], hintScript, "1 stmt", "", ""})
				}
			}
			var all []target
			for _, tg := range targets {
				if len(o.only) > 0 && !slices.Contains(o.only, tg.name) || len(o.workloads) > 0 && !slices.Contains(o.workloads, tg.workload) {
					continue
				}
				all = append(all, tg)
				if strings.HasPrefix(tg.name, "pgtenant") {
					for _, v := range o.variants {
						vt := tg
						vt.name, vt.variant = tg.name+" "+v, v
						all = append(all, vt)
					}
				}
			}
			for _, tg := range all {
				if strings.HasPrefix(tg.name, "pgbouncer") && mode == "prepared" {
					results = append(results, result{round: round, mode: mode, target: tg.name, workload: tg.workload, skipped: "pgbouncer 1.18 cannot serve -M prepared in transaction mode"})
					continue
				}
				log.Info("pgbench", "round", round, "mode", mode, "target", tg.name, "script", tg.script)
				profiling := prof != nil && strings.HasPrefix(tg.name, "pgtenant")
				if profiling {
					if err := pprof.StartCPUProfile(prof); err != nil {
						// Only one profile per file: profile the first pgtenant case.
						profiling = false
					}
				}
				var stopTrace func()
				if traceFile != "" && strings.HasPrefix(tg.name, "pgtenant") {
					if stopTrace, err = startTrace(traceFile); err != nil {
						return err
					}
					traceFile = "" // the first pgtenant case only
				}
				restore := func() {}
				if tg.variant != "" {
					restore, _ = applyVariant(tg.variant) // checked in main
				}
				pgCPU := func() time.Duration { return postgresCPU(nodes["a"].DataDir()) + postgresCPU(nodes["b"].DataDir()) }
				pg0, self0, bouncer0 := pgCPU(), selfCPU(), procCPU([]int{bouncerPID})
				selfCS0, bouncerCS0 := selfSwitches(), procSwitches(bouncerPID)
				scripts := []string{filepath.Join(o.scripts, tg.script)}
				switch tg.script {
				case routerTxnScript:
					scripts = []string{filepath.Join(root, routerTxnScript)}
				case hintScript:
					scripts = hints
				case textScript:
					scripts = texts[tg.name]
				}
				db := cmp.Or(tg.db, "bench")
				oc := o
				oc.pgbenchOther = tg.variant == "sched=batch"
				r, err := runPgbench(ctx, pgbench, tg.addr, db, scripts, mode, oc, rowsPer)
				restore()
				if err == nil && r.txns > 0 {
					// The proxy first: scanning /proc for the Postgres
					// processes costs this process CPU (tens of ms on a
					// busy machine), which must not count as the router's.
					us := func(d time.Duration) float64 { return d.Seconds() * 1e6 / r.txns }
					switch {
					case strings.HasPrefix(tg.name, "pgtenant"):
						r.proxyUS = us(selfCPU() - self0)
						r.proxyCS = float64(selfSwitches()-selfCS0) / r.txns
					case strings.HasPrefix(tg.name, "pgbouncer"):
						r.proxyUS = us(procCPU([]int{bouncerPID}) - bouncer0)
						r.proxyCS = float64(procSwitches(bouncerPID)-bouncerCS0) / r.txns
					}
					r.pgUS = us(pgCPU() - pg0)
				}
				if profiling {
					pprof.StopCPUProfile()
					prof.Close()
					prof = nil
				}
				if stopTrace != nil {
					stopTrace()
				}
				if err != nil {
					return fmt.Errorf("pgbench %s %s %s: %w", mode, tg.name, tg.script, err)
				}
				if o.strace != "" && round == 1 && tg.variant == "" && tg.name != "direct" {
					pid := os.Getpid()
					if !strings.HasPrefix(tg.name, "pgtenant") {
						pid = bouncerPID
					}
					if err := os.MkdirAll(o.strace, 0o755); err != nil {
						return err
					}
					file := straceFile(o.strace, mode, tg.name, tg.workload)
					done, err := startStrace(ctx, pid, file)
					if err != nil {
						return err
					}
					sr, err := runPgbench(ctx, pgbench, tg.addr, db, scripts, mode, o, rowsPer)
					counts, serr := done()
					if err != nil {
						return fmt.Errorf("pgbench under strace %s %s %s: %w", mode, tg.name, tg.script, err)
					}
					if serr != nil {
						return serr
					}
					if pid == os.Getpid() {
						excludeLibpq(counts)
					}
					straced = append(straced, straceResult{mode: mode, target: tg.name, workload: tg.workload, txns: sr.txns, counts: counts})
				}
				r.mode, r.target, r.workload, r.round = mode, tg.name, tg.workload, round
				results = append(results, r)
			}
		}
	}
	if len(results) > 0 {
		printTable(w, results, o)
	}
	printStrace(w, straced)
	printPools(w, routers)
	if len(o.many) > 0 || o.latency {
		// The router last: runLatency measures its saturation.
		proxies := []proxyTarget{
			{name: "pgbouncer", addr: pgb, script: "direct_simple.sql", pid: bouncerPID},
			{name: "pgtenant (1 node)", addr: routerAddr["pgtenant (1 node)"], script: "router_simple.sql"},
		}
		var many []manyResult
		var lat []latencyResult
		if len(o.many) > 0 {
			many = runMany(ctx, pgbench, proxies, o.many, o, rowsPer)
		}
		if o.latency {
			if lat, err = runLatency(ctx, pgbench, root, proxies, o, rowsPer); err != nil {
				return err
			}
		}
		printMany(w, many, lat, o)
	}
	return nil
}

// namedRouter is one of the in-process routers.
type namedRouter struct {
	name string
	srv  *router.Server
}

// printPools prints each router's backend pools: connections opened and
// closed over the whole run (a pool that opens and closes connections while
// the clients stay connected churns: ephemeral ports, server forks), connect
// errors and checkouts that timed out.
func printPools(w io.Writer, routers []namedRouter) {
	fmt.Fprintf(w, "\nbackend connections of the routers over the run\n\n")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "router\tnode\tcheckouts\topened\tclosed\tconnect errors\twait timeouts\topen now\t")
	for _, r := range routers {
		for _, st := range r.srv.PoolStats() {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", r.name, st.Node, st.Acquires, st.Opened, st.Closed, st.ConnectErrs, st.WaitTimeouts, st.Total)
		}
	}
	tw.Flush()
}

// maxClients is the client limit of the proxies: room for the largest
// many-clients case.
func maxClients(o options) int {
	n := 1000
	for _, m := range o.many {
		n = max(n, m+100)
	}
	return n
}

// load creates the bench database with one accounts table per shard schema
// and every tenant's rows in its shard.
func load(ctx context.Context, c *localpg.Cluster, shards []int, o options, rowsPer int) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE bench"); err != nil {
		conn.Close(ctx)
		return err
	}
	conn.Close(ctx)
	conn, err = pgx.Connect(ctx, c.DSN("bench"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	for _, s := range shards {
		schema := pgx.Identifier{placement.SchemaName(s)}.Sanitize()
		sql := fmt.Sprintf(`CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.accounts (id int PRIMARY KEY, tenant text NOT NULL, balance int NOT NULL, filler text NOT NULL);
INSERT INTO %[1]s.accounts
  SELECT t * %[2]d + k, t::text, (t * 7 + k) %% 1000, repeat('x', 80)
  FROM generate_series(0, %[3]d) t, generate_series(1, %[2]d) k WHERE t %% %[4]d = %[5]d;
ANALYZE %[1]s.accounts;`, schema, rowsPer, o.tenants-1, o.shards, s)
		if _, err := conn.Exec(ctx, sql); err != nil {
			return fmt.Errorf("shard %d: %w", s, err)
		}
	}
	return nil
}

// loadOneTable creates oneTableDB on node c with one accounts table of
// every tenant's rows, the same rows load spreads over the shards.
func loadOneTable(ctx context.Context, c *localpg.Cluster, o options, rowsPer int) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{oneTableDB}.Sanitize())
	conn.Close(ctx)
	if err != nil {
		return fmt.Errorf("create database %s: %w", oneTableDB, err)
	}
	conn, err = pgx.Connect(ctx, c.DSN(oneTableDB))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	sql := fmt.Sprintf(`CREATE TABLE public.accounts (id int PRIMARY KEY, tenant text NOT NULL, balance int NOT NULL, filler text NOT NULL);
INSERT INTO public.accounts
  SELECT t * %[1]d + k, t::text, (t * 7 + k) %% 1000, repeat('x', 80)
  FROM generate_series(0, %[2]d) t, generate_series(1, %[1]d) k;
ANALYZE public.accounts;`, rowsPer, o.tenants-1)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("one table: %w", err)
	}
	return nil
}

var (
	tpsRe = regexp.MustCompile(`tps = ([0-9.]+)`)
	latRe = regexp.MustCompile(`latency average = ([0-9.]+) ms`)
)

func runPgbench(ctx context.Context, bin, addr, db string, scripts []string, mode string, o options, rowsPer int) (result, error) {
	host, port, _ := strings.Cut(addr, ":")
	args := []string{"-n", "-h", host, "-p", port, "-U", "postgres",
		"-c", strconv.Itoa(o.clients), "-j", strconv.Itoa(o.threads), "-T", strconv.Itoa(int(o.duration.Seconds())),
		"-M", mode}
	for _, s := range scripts {
		args = append(args, "-f", s)
	}
	args = append(args, "-D", "ntenants="+strconv.Itoa(o.tenants), "-D", "rows_per_tenant="+strconv.Itoa(rowsPer), "-D", "nshards="+strconv.Itoa(o.shards),
		db)
	args = append(args[:len(args)-1], o.extra...)
	args = append(args, db)
	if o.pgbenchOther {
		args = append([]string{"--other", "0", bin}, args...)
		bin = "chrt"
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), "PGSSLMODE=disable")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return result{}, fmt.Errorf("%w\n%s", err, out.String())
	}
	s := out.String()
	if strings.Contains(s, "failed") && !strings.Contains(s, "number of failed transactions: 0") {
		return result{}, fmt.Errorf("pgbench reported failures:\n%s", s)
	}
	tm, lm := tpsRe.FindStringSubmatch(s), latRe.FindStringSubmatch(s)
	if tm == nil || lm == nil {
		return result{}, fmt.Errorf("cannot read pgbench output:\n%s", s)
	}
	tps, _ := strconv.ParseFloat(tm[1], 64)
	lat, _ := strconv.ParseFloat(lm[1], 64)
	r := result{tps: tps, latency: lat}
	if m := connRe.FindStringSubmatch(s); m != nil {
		r.connMS, _ = strconv.ParseFloat(m[1], 64)
	}
	if n := txRe.FindStringSubmatch(s); n != nil {
		txns, _ := strconv.ParseFloat(n[1], 64)
		if txns > 0 {
			r.benchUS = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds() * 1e6 / txns
			r.txns = txns
		}
	}
	return r, nil
}

var (
	txRe   = regexp.MustCompile(`number of transactions actually processed: ([0-9]+)`)
	connRe = regexp.MustCompile(`initial connection time = ([0-9.]+) ms`)
)

// clockTick is USER_HZ, the unit of /proc/PID/stat CPU times.
const clockTick = 100

// procCPU is the user+system CPU time of the processes in pids.
func procCPU(pids []int) time.Duration {
	var total time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command name: state is field 3,
		// utime 14, stime 15.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(u+st) * time.Second / clockTick
	}
	return total
}

// postgresCPU is the CPU time used so far by the cluster in dataDir: its
// postmaster, every live child, and the children already reaped (whose time
// the kernel adds to the postmaster's cutime/cstime), so per-connection
// backends that come and go between two samples are counted.
func postgresCPU(dataDir string) time.Duration {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pm, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		return 0
	}
	var total time.Duration
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := procStat(pid)
		if len(f) < 15 {
			continue
		}
		n := func(i int) time.Duration {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			return time.Duration(v) * time.Second / clockTick
		}
		switch {
		case pid == pm:
			total += n(11) + n(12) + n(13) + n(14) // utime stime cutime cstime
		case f[1] == strconv.Itoa(pm):
			total += n(11) + n(12)
		}
	}
	return total
}

// procStat returns the fields of /proc/PID/stat after the command name
// (field 3, the state, first).
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// selfSwitches is this process's context switches (every thread).
func selfSwitches() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Nvcsw + ru.Nivcsw
}

// procSwitches is the context switches of process pid's main thread
// (pgbouncer has one).
func procSwitches(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	var n int64
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if ok && (k == "voluntary_ctxt_switches" || k == "nonvoluntary_ctxt_switches") {
			x, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			n += x
		}
	}
	return n
}

// selfCPU is this process's user+system CPU time (the in-process routers).
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func printTable(w io.Writer, rs []result, o options) {
	fmt.Fprintf(w, "point select, %d clients, %d threads, %s per case, %d tenants, %d rows, %d shards, pool %d per node, %d round(s)\n\n",
		o.clients, o.threads, o.duration, o.tenants, o.rows, o.shards, o.poolSize, max(o.rounds, 1))
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\tmode\ttarget\tper transaction\tTPS\tlatency ms\t× direct\t× pgbouncer\t× fixed path\tproxy CPU µs/txn\tproxy cs/txn\tpostgres µs/txn\tpgbench µs/txn\t")
	// Ratios compare cases of the same round: × direct and × pgbouncer the
	// same workload (like for like), × fixed path pgbouncer with a fixed
	// search_path in the same mode (what the user sees; router rows only).
	direct := map[string]float64{} // round/mode/workload → TPS
	bouncer := map[string]result{} // round/mode/workload → result
	fixed := map[string]result{}   // round/mode → result
	// oneTable: round/mode → result of oneTableBouncer (reported beside
	// × fixed path, which stays the ratio).
	oneTable := map[string]result{}
	key := func(r result, workload bool) string {
		if workload {
			return fmt.Sprint(r.round, "/", r.mode, "/", r.workload)
		}
		return fmt.Sprint(r.round, "/", r.mode)
	}
	for _, r := range rs {
		switch {
		case r.skipped != "":
		case r.target == "direct":
			direct[key(r, true)] = r.tps
		case r.target == "pgbouncer":
			bouncer[key(r, true)] = r
		case r.target == fixedBouncer:
			fixed[key(r, false)] = r
		case r.target == oneTableBouncer:
			oneTable[key(r, false)] = r
		}
	}
	ratio := func(x, y float64) string {
		if y == 0 || x == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", x/y)
	}
	isRouter := func(r result) bool { return strings.HasPrefix(r.target, "pgtenant") }
	for _, r := range rs {
		if r.skipped != "" {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t–\t–\t–\t–\t–\t–\t–\t–\t–\t\n", r.round, r.mode, r.target, r.workload)
			continue
		}
		proxy, cs := "–", "–"
		if r.target != "direct" {
			proxy, cs = fmt.Sprintf("%.1f", r.proxyUS), fmt.Sprintf("%.2f", r.proxyCS)
		}
		fx := "–"
		if isRouter(r) && oneStatement(r) {
			fx = ratio(r.tps, fixed[key(r, false)].tps)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%.0f\t%.3f\t%s\t%s\t%s\t%s\t%s\t%.1f\t%.1f\t\n", r.round, r.mode, r.target, r.workload, r.tps, r.latency,
			ratio(r.tps, direct[key(r, true)]), ratio(r.tps, bouncer[key(r, true)].tps), fx,
			proxy, cs, r.pgUS, r.benchUS)
	}
	tw.Flush()

	// The same ratios, one line per router case and comparison, one column
	// per round.
	rounds := max(o.rounds, 1)
	type line struct{ mode, target, workload, vs string }
	var order []line
	vals := map[line][]string{}
	add := func(l line, round int, v string) {
		if v == "–" {
			return
		}
		if _, ok := vals[l]; !ok {
			order = append(order, l)
			vals[l] = make([]string, rounds)
		}
		vals[l][round-1] = v
	}
	for _, r := range rs {
		if r.skipped != "" || !isRouter(r) {
			continue
		}
		b := bouncer[key(r, true)]
		add(line{r.mode, r.target, r.workload, "pgbouncer TPS"}, r.round, ratio(r.tps, b.tps))
		add(line{r.mode, r.target, r.workload, "pgbouncer CPU/txn"}, r.round, ratio(r.proxyUS, b.proxyUS))
		if oneStatement(r) {
			add(line{r.mode, r.target, r.workload, "fixed-path pgbouncer TPS"}, r.round, ratio(r.tps, fixed[key(r, false)].tps))
			add(line{r.mode, r.target, r.workload, "one-table pgbouncer TPS"}, r.round, ratio(r.tps, oneTable[key(r, false)].tps))
		}
	}
	if len(order) > 0 {
		fmt.Fprintf(w, "\nrouter ÷ pgbouncer, same round (TPS: ≥ 1 is better; CPU/txn: ≤ 1 is better)\n\n")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		hdr := "mode\ttarget\tper transaction\tagainst\t"
		for i := 1; i <= rounds; i++ {
			hdr += fmt.Sprintf("round %d\t", i)
		}
		fmt.Fprintln(tw, hdr)
		for _, l := range order {
			row := fmt.Sprintf("%s\t%s\t%s\t%s\t", l.mode, l.target, l.workload, l.vs)
			for _, v := range vals[l] {
				row += cmp.Or(v, "–") + "\t"
			}
			fmt.Fprintln(tw, row)
		}
		tw.Flush()
	}
	seen := map[string]bool{}
	for _, r := range rs {
		if k := r.mode + r.target; r.skipped != "" && !seen[k] {
			seen[k] = true
			fmt.Fprintf(w, "\n%s %s: %s\n", r.mode, r.target, r.skipped)
		}
	}
}

// oneStatement reports whether r's transactions are one statement, the
// workloads compared with pgbouncer with a fixed search_path.
func oneStatement(r result) bool { return r.workload == "1 query" || r.workload == "1 stmt" }

func findPgbouncer() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer", nil
	}
	return "", errors.New("pgbouncer not found on PATH or at /usr/sbin/pgbouncer; install it with: apt-get install -y pgbouncer")
}

// startPgbouncer runs pgbouncer in transaction mode in front of the node on
// pgPort, as the postgres OS user when we are root (pgbouncer refuses root).
func startPgbouncer(ctx context.Context, bin, dir string, pgPort, poolSize, maxClients int) (int, int, func(), error) {
	port, err := localpg.FreePort()
	if err != nil {
		return 0, 0, nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, 0, nil, err
	}
	ini := fmt.Sprintf(`[databases]
bench = host=127.0.0.1 port=%d dbname=bench user=postgres
%s = host=127.0.0.1 port=%d dbname=bench user=postgres connect_query='SET search_path = shard_0000'
%s = host=127.0.0.1 port=%d dbname=%s user=postgres connect_query='SET search_path = public'

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = transaction
default_pool_size = %d
max_client_conn = %d
ignore_startup_parameters = extra_float_digits,options
logfile = %s
`, pgPort, fixedDB, pgPort, oneTableDB, pgPort, oneTableDB, port, filepath.Join(dir, "userlist.txt"), poolSize, maxClients, filepath.Join(dir, "pgbouncer.log"))
	if err := os.WriteFile(filepath.Join(dir, "pgbouncer.ini"), []byte(ini), 0o644); err != nil {
		return 0, 0, nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "userlist.txt"), []byte(`"postgres" ""`+"\n"), 0o644); err != nil {
		return 0, 0, nil, err
	}
	cmd := exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			return 0, 0, nil, fmt.Errorf("pgbouncer refuses to run as root and there is no postgres user: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			return 0, 0, nil, err
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	waited, err := proclife.Start(cmd, syscall.SIGTERM) // pgbouncer ends with routerbench, even a killed one
	if err != nil {
		return 0, 0, nil, fmt.Errorf("start pgbouncer: %w", err)
	}
	exited := make(chan struct{})
	go func() { <-waited; close(exited) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	}
	// Wait until it accepts connections.
	deadline := time.Now().Add(10 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		conn, err := pgx.Connect(cctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/bench?sslmode=disable", port))
		cancel()
		if err == nil {
			conn.Close(ctx)
			return port, cmd.Process.Pid, stop, nil
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
			return 0, 0, nil, fmt.Errorf("pgbouncer exited: %s%s", out.String(), log)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return 0, 0, nil, fmt.Errorf("pgbouncer did not accept connections: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// fixedBouncer names pgbouncer serving fixedDB (a fixed search_path);
// hintScript stands for the generated hint scripts (writeHintScripts);
// spreadBouncer and textsBouncer name two textCases: the schema-qualified
// selects of every shard without a setting, and the router's setup text;
// textScript stands for a textCase's scripts.
const (
	fixedBouncer  = "pgbouncer fixed path"
	hintScript    = "router_hint_*.sql"
	spreadBouncer = "pgbouncer all shards"
	textsBouncer  = "pgbouncer router texts"
	textScript    = "text*.sql"
)

// applyVariant applies a runtime setting of this process (which runs the
// routers) and returns the function that restores the previous value:
// procs=N sets GOMAXPROCS, gogc=N or gogc=off the GC percentage,
// sched=batch the threads' scheduling policy (SCHED_BATCH; see setSchedPolicy).
func applyVariant(v string) (func(), error) {
	k, val, _ := strings.Cut(v, "=")
	switch k {
	case "procs":
		n, err := strconv.Atoi(val)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("variant %q: procs wants a positive number", v)
		}
		prev := runtime.GOMAXPROCS(n)
		return func() { runtime.GOMAXPROCS(prev) }, nil
	case "gogc":
		n := -1
		if val != "off" {
			var err error
			if n, err = strconv.Atoi(val); err != nil {
				return nil, fmt.Errorf("variant %q: gogc wants a number or off", v)
			}
		}
		prev := debug.SetGCPercent(n)
		return func() { debug.SetGCPercent(prev) }, nil
	case "sched":
		if val != "batch" {
			return nil, fmt.Errorf("variant %q: sched wants batch", v)
		}
		if err := setSchedPolicy(schedBatch); err != nil {
			return nil, fmt.Errorf("variant %q: %w", v, err)
		}
		return func() { setSchedPolicy(schedOther) }, nil
	}
	return nil, fmt.Errorf("unknown variant %q (procs=N, gogc=N|off, sched=batch)", v)
}

// noUsage names the router target with per-tenant usage counting off.
const noUsage = "pgtenant (1 node) no usage"
