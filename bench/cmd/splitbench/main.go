// Command splitbench compares the two ways to split a node (issue 13 item
// 5): through a promoted follower (node split --via-follower: no row is
// copied) and by moves (node split --to: every other shard moved online
// with logical replication, --parallel per node pair). One node holds
// -mb of data in -shards shards; writers write to random shards the whole
// time through a router stand-in (a per-shard gate the mover fences, like
// the routers). Rounds alternate the two methods (A, B, A, B...), each on a
// fresh copy of the node's database (CREATE DATABASE ... TEMPLATE). The
// follower is made with pg_basebackup -R before its round (reported apart:
// it is not part of the split). Local clusters (internal/localpg, default
// settings, fsync on). See bench/README.md.
//
//	go run ./bench/cmd/splitbench [-mb 1024] [-shards 64] [-rounds 2] [-writers 4] [-parallel 2]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/move"
)

type options struct {
	dir                string
	mb, shards, rounds int
	writers, parallel  int
	verbose            bool
}

func main() {
	var o options
	flag.StringVar(&o.dir, "dir", "", "directory for the clusters; empty means a temporary one, removed at the end")
	flag.IntVar(&o.mb, "mb", 1024, "data on the node split, in MB (table data, before indexes)")
	flag.IntVar(&o.shards, "shards", 64, "shards on the node")
	flag.IntVar(&o.rounds, "rounds", 2, "rounds of each method, interleaved")
	flag.IntVar(&o.writers, "writers", 4, "clients writing to random shards the whole time")
	flag.IntVar(&o.parallel, "parallel", 2, "moves at once per node pair (split by moves)")
	flag.BoolVar(&o.verbose, "v", false, "log the mover's steps")
	flag.Parse()
	if err := run(context.Background(), o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "splitbench:", err)
		os.Exit(1)
	}
}

type result struct {
	round              int
	method             string
	pause, total, prep time.Duration
	replay, promote    time.Duration
	clientMax          time.Duration
	writes, errs       int
}

func run(ctx context.Context, o options, w io.Writer) error {
	dir := o.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "splitbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	clusters := map[string]*localpg.Cluster{}
	defer func() {
		for _, c := range clusters {
			sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_ = c.Stop(sctx)
			cancel()
		}
	}()
	for _, name := range []string{"primary", "catalog", "target"} {
		c := localpg.New(filepath.Join(dir, name), 0)
		if err := c.Init(ctx); err != nil {
			return err
		}
		if err := c.StartOnFreePort(ctx); err != nil {
			return err
		}
		clusters[name] = c
	}
	p, cat, tgt := clusters["primary"], clusters["catalog"], clusters["target"]
	t0 := time.Now()
	size, err := load(ctx, p, o)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	fmt.Fprintf(w, "node: %d shards, %.0f MB on disk (tables and indexes), loaded in %s\n", o.shards, float64(size)/(1<<20), time.Since(t0).Round(time.Second))
	var results []result
	for r := 1; r <= o.rounds; r++ {
		for _, method := range []string{"follower", "moves"} {
			res, err := round(ctx, o, log, dir, p, cat, tgt, r, method)
			if err != nil {
				return fmt.Errorf("round %d %s: %w", r, method, err)
			}
			fmt.Fprintf(os.Stderr, "round %d %s: pause %s total %s\n", r, method, res.pause, res.total)
			results = append(results, res)
		}
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\tmethod\tpause (longest)\ttotal\treplay wait\tpromotion\tclient max\twrites\terrors\tprepare (basebackup)\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\t\n", r.round, r.method, ms(r.pause), secs(r.total), ms(r.replay), ms(r.promote),
			ms(r.clientMax), r.writes, r.errs, secs(r.prep))
	}
	return tw.Flush()
}

func ms(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000)
}

func secs(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func exec(ctx context.Context, dsn, sql string, args ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// load fills database tmpl on the primary: shards schemas with an items
// table each, mb of rows in all; returns the database size.
func load(ctx context.Context, p *localpg.Cluster, o options) (int64, error) {
	if err := exec(ctx, p.DSN("postgres"), `CREATE DATABASE tmpl`); err != nil {
		return 0, err
	}
	pool, err := pgxpool.New(ctx, p.DSN("tmpl"))
	if err != nil {
		return 0, err
	}
	defer pool.Close()
	rows := o.mb * (1 << 20) / o.shards / 150 // ~150 bytes a row with its header
	var wg sync.WaitGroup
	errs := make(chan error, o.shards)
	sem := make(chan struct{}, 2)
	for s := range o.shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			schema := pgx.Identifier{fmt.Sprintf("shard_%04d", s)}.Sanitize()
			_, err := pool.Exec(ctx, fmt.Sprintf(`CREATE SCHEMA %[1]s;
				CREATE TABLE %[1]s.items (id bigserial PRIMARY KEY, writer int NOT NULL DEFAULT 0, n int NOT NULL, payload text NOT NULL);
				INSERT INTO %[1]s.items (n, payload) SELECT i, repeat(md5(i::text), 3) FROM generate_series(1, %[2]d) i`, schema, rows))
			if err == nil {
				_, err = pool.Exec(ctx, `VACUUM ANALYZE `+schema+`.items`)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return 0, err
		}
	}
	var size int64
	if _, err := pool.Exec(ctx, `CHECKPOINT`); err != nil {
		return 0, err
	}
	err = pool.QueryRow(ctx, `SELECT pg_database_size('tmpl')`).Scan(&size)
	return size, err
}

// round runs one split of a fresh copy of tmpl.
func round(ctx context.Context, o options, log *slog.Logger, dir string, p, cat, tgt *localpg.Cluster, r int, method string) (result, error) {
	res := result{round: r, method: method}
	db := fmt.Sprintf("r%d_%s", r, method)
	if err := exec(ctx, p.DSN("postgres"), `CREATE DATABASE `+db+` TEMPLATE tmpl STRATEGY FILE_COPY`); err != nil {
		return res, err
	}
	defer exec(context.Background(), p.DSN("postgres"), `DROP DATABASE IF EXISTS `+db+` WITH (FORCE)`)
	if err := exec(ctx, cat.DSN("postgres"), `CREATE DATABASE `+db); err != nil {
		return res, err
	}
	defer exec(context.Background(), cat.DSN("postgres"), `DROP DATABASE IF EXISTS `+db+` WITH (FORCE)`)
	c := catalog.New(cat.DSN(db), log)
	if err := c.Open(ctx); err != nil {
		return res, err
	}
	defer c.Close()
	if err := c.Init(ctx, o.shards); err != nil {
		return res, err
	}
	if _, err := c.AddNode(ctx, "n1", p.DSN(db)); err != nil {
		return res, err
	}
	if _, err := c.Pool().Exec(ctx, `INSERT INTO pgtenant.shards (id, schema_name, node) SELECT i, format('shard_%s', lpad(i::text, 4, '0')), 'n1' FROM generate_series(0, $1 - 1) i`, o.shards); err != nil {
		return res, err
	}
	g, err := newGate(ctx, c.Pool(), o.shards, p.DSN(db))
	if err != nil {
		return res, err
	}
	defer g.close()
	m := move.New(move.Config{Catalog: c.Pool(), Fencer: g, Logger: log, ResolveDSN: c.ResolveDSN, FenceTimeout: 10 * time.Second})

	var standby *localpg.Cluster
	if method == "follower" {
		t := time.Now()
		standby = localpg.New(filepath.Join(dir, "standby-"+db), 0)
		if err := standby.InitStandby(ctx, p); err != nil {
			return res, err
		}
		if err := standby.StartOnFreePort(ctx); err != nil {
			return res, err
		}
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			_ = standby.Stop(sctx)
			cancel()
			os.RemoveAll(standby.Dir)
		}()
		res.prep = time.Since(t)
	} else {
		if err := exec(ctx, tgt.DSN("postgres"), `CREATE DATABASE `+db); err != nil {
			return res, err
		}
		defer exec(context.Background(), tgt.DSN("postgres"), `DROP DATABASE IF EXISTS `+db+` WITH (FORCE)`)
		if _, err := c.AddNode(ctx, "n2", tgt.DSN(db)); err != nil {
			return res, err
		}
	}
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stats := make([]writerStats, o.writers)
	for i := range o.writers {
		wg.Add(1)
		go func() { defer wg.Done(); stats[i] = g.write(wctx, i+1, o.shards) }()
	}
	time.Sleep(500 * time.Millisecond)
	t := time.Now()
	if method == "follower" {
		sr, err := m.SplitViaFollower(ctx, move.SplitOptions{Node: "n1", NewNode: "n2", FollowerDSN: standby.DSN(db), MaxWait: time.Minute,
			Register: func(ctx context.Context, name, dsn, identity string) error {
				return c.AddPromotedNode(ctx, name, dsn, identity)
			}})
		if err != nil {
			stop()
			wg.Wait()
			return res, err
		}
		res.pause, res.replay, res.promote = sr.Pause, sr.ReplayWait, sr.Promote
	} else {
		var plans []move.Plan
		for s := 1; s < o.shards; s += 2 {
			plans = append(plans, move.Plan{Shard: s, From: "n1", To: "n2"})
		}
		sum := m.MoveAll(ctx, plans, o.parallel, move.Options{}, nil, nil)
		if sum.Failed > 0 {
			stop()
			wg.Wait()
			for _, oc := range sum.Outcomes {
				if oc.Err != nil {
					return res, oc.Err
				}
			}
		}
		res.pause = sum.LongestPause
	}
	res.total = time.Since(t)
	time.Sleep(500 * time.Millisecond)
	stop()
	wg.Wait()
	for _, s := range stats {
		res.writes += s.writes
		res.errs += s.errs
		res.clientMax = max(res.clientMax, s.max)
	}
	return res, nil
}

// gate stands in for the routers: a writer takes its shard's read lock per
// transaction and uses the pool of the node the catalog named at the
// shard's last release; Fence takes the write lock.
type gate struct {
	cat    *pgxpool.Pool
	mu     []sync.RWMutex
	state  sync.Mutex
	fenced map[int]bool
	cur    []*pgxpool.Pool
	pools  map[string]*pgxpool.Pool
}

func newGate(ctx context.Context, cat *pgxpool.Pool, shards int, n1 string) (*gate, error) {
	p, err := pgxpool.New(ctx, n1)
	if err != nil {
		return nil, err
	}
	g := &gate{cat: cat, mu: make([]sync.RWMutex, shards), fenced: map[int]bool{}, cur: make([]*pgxpool.Pool, shards), pools: map[string]*pgxpool.Pool{"n1": p}}
	for i := range g.cur {
		g.cur[i] = p
	}
	return g, nil
}

func (g *gate) close() {
	for _, p := range g.pools {
		p.Close()
	}
}

func (g *gate) Fence(ctx context.Context, shard int) error {
	g.state.Lock()
	if g.fenced[shard] {
		g.state.Unlock()
		return nil
	}
	g.state.Unlock()
	g.mu[shard].Lock()
	g.state.Lock()
	g.fenced[shard] = true
	g.state.Unlock()
	return nil
}

func (g *gate) Unfence(ctx context.Context, shard int) error {
	g.state.Lock()
	defer g.state.Unlock()
	if !g.fenced[shard] {
		return nil
	}
	var node, dsn string
	err := g.cat.QueryRow(ctx, `SELECT n.name, n.dsn FROM pgtenant.shards s JOIN pgtenant.nodes n ON n.name = s.node WHERE s.id = $1`, shard).Scan(&node, &dsn)
	if err == nil {
		p, ok := g.pools[node]
		if !ok {
			if p, err = pgxpool.New(ctx, dsn); err == nil {
				g.pools[node] = p
			}
		}
		if err == nil {
			g.cur[shard] = p
		}
	}
	g.fenced[shard] = false
	g.mu[shard].Unlock()
	return err
}

type writerStats struct {
	writes, errs int
	max          time.Duration
}

func (g *gate) write(ctx context.Context, w, shards int) writerStats {
	var st writerStats
	rng := rand.New(rand.NewPCG(uint64(w), 3))
	for i := 1; ctx.Err() == nil; i++ {
		s := rng.IntN(shards)
		t := time.Now()
		g.mu[s].RLock()
		g.state.Lock()
		p := g.cur[s]
		g.state.Unlock()
		_, err := p.Exec(context.Background(), fmt.Sprintf(`INSERT INTO shard_%04d.items (writer, n, payload) VALUES ($1, $2, 'w')`, s), w, i)
		g.mu[s].RUnlock()
		st.max = max(st.max, time.Since(t))
		if err != nil {
			st.errs++
		} else {
			st.writes++
		}
		time.Sleep(5 * time.Millisecond)
	}
	return st
}
