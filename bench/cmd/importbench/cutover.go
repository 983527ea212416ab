package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/importer"
	"github.com/pgtenant/pgtenant/internal/router"
)

// writer is one client writing through the router: each transaction sets
// a random tenant and inserts a building named after the client and a
// counter (the ledger of acknowledged writes).
type writer struct {
	id     int
	run0   string // this run's tag: a -dir kept from an earlier run holds its ledger rows too
	acks   []string
	maxLat time.Duration
	lats   []time.Duration
	errs   []error
}

// cutover goes on from a copied round: a router serving every tenant from
// the legacy database, writers through it, the change stream, the cutover
// of every shard (a canary, then waves), finish; then the ledger.
func cutover(ctx context.Context, o options, r *round, ids []string, out io.Writer) error {
	log := slog.New(slog.DiscardHandler)
	srv := router.New(router.Config{Listen: "127.0.0.1:0", Auth: router.AuthTrust, Logger: log, Pool: router.PoolConfig{MaxSize: 40}})
	if err := srv.Open(ctx); err != nil {
		return err
	}
	addr := srv.Addr().String()
	rcat := catalog.New(r.catDSN, log)
	if err := rcat.Open(ctx); err != nil {
		return err
	}
	defer rcat.Close()
	id := "importbench/" + addr
	if err := rcat.Heartbeat(ctx, id, addr, 0); err != nil {
		return err
	}
	m, err := rcat.LoadMap(ctx)
	if err != nil {
		return err
	}
	if err := srv.SetMap(ctx, m); err != nil {
		return err
	}
	sctx, stopRouter := context.WithCancel(context.Background())
	var rwg sync.WaitGroup
	rwg.Add(2)
	go func() { defer rwg.Done(); srv.Serve(sctx) }()
	go func() { defer rwg.Done(); rcat.Follow(sctx, id, addr, time.Second, srv.SetMap) }()
	defer func() { stopRouter(); rwg.Wait() }()

	var tl *timeline
	if o.timeline {
		tl = newTimeline()
		r.im.SetTrace(tl.trace)
	}
	// The stream.
	fctx, stopFollow := context.WithCancel(ctx)
	defer stopFollow()
	followDone := make(chan error, 1)
	go func() { followDone <- r.im.Follow(fctx) }()

	// Writers.
	wctx, stopWriters := context.WithCancel(ctx)
	defer stopWriters()
	writers := make([]*writer, o.writers)
	t0run := time.Now().Format("20060102T150405")
	var wg sync.WaitGroup
	for i := range writers {
		w := &writer{id: i, run0: t0run}
		writers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.run(wctx, addr, ids)
		}()
	}
	for {
		st, err := r.im.Status(ctx)
		if err != nil {
			return err
		}
		if st.State == importer.StateStreaming && st.SlotActive {
			break
		}
		select {
		case err := <-followDone:
			return fmt.Errorf("follow ended: %w", err)
		case <-time.After(200 * time.Millisecond):
		}
	}
	time.Sleep(2 * time.Second) // writes before the first cutover

	var pauses, fenced, written, trip, marked, flipped, released []time.Duration
	var failed []string
	t0 := time.Now()
	for _, wave := range []importer.CutoverOptions{{Shards: []int{0}}, {All: true, Parallel: o.cutoverParallel}} {
		res, err := r.im.Cutover(ctx, wave)
		for _, c := range res {
			if c.Err != nil {
				failed = append(failed, fmt.Sprintf("shard %d: %v", c.Shard, c.Err))
				continue
			}
			pauses = append(pauses, c.Pause)
			fenced = append(fenced, c.Fenced)
			marked = append(marked, c.Marked-c.Fenced)
			written = append(written, c.Written-c.Fenced)
			trip = append(trip, c.Marked-c.Written)
			flipped = append(flipped, c.Flipped-c.Marked)
			released = append(released, c.Pause-c.Flipped)
		}
		if err != nil && len(res) == 0 {
			return err
		}
	}
	cutoverTime := time.Since(t0)
	time.Sleep(time.Second) // writes after the last cutover
	stopWriters()
	wg.Wait()
	stopFollow()
	if err := <-followDone; err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("follow: %w", err)
	}
	if len(failed) > 0 {
		return fmt.Errorf("cutover failed: %s", strings.Join(failed, "; "))
	}
	if err := r.im.Finish(ctx); err != nil {
		return err
	}

	// The ledger: every acknowledged write on the shards once.
	got := map[string]int{}
	for _, dsn := range r.nodes {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		var q string
		err = conn.QueryRow(ctx, `SELECT string_agg(format('SELECT name FROM %I.buildings WHERE city = %L', nspname, 'Ledger'), ' UNION ALL ') FROM pg_namespace WHERE nspname LIKE 'shard\_%'`).Scan(&q)
		if err == nil {
			var rows pgx.Rows
			rows, err = conn.Query(ctx, q)
			if err == nil {
				var name string
				_, err = pgx.ForEachRow(rows, []any{&name}, func() error { got[name]++; return nil })
			}
		}
		conn.Close(ctx)
		if err != nil {
			return err
		}
	}
	acked, missing, dup, errs := 0, 0, 0, 0
	var maxLat time.Duration
	var lats []time.Duration
	for _, w := range writers {
		acked += len(w.acks)
		errs += len(w.errs)
		maxLat = max(maxLat, w.maxLat)
		lats = append(lats, w.lats...)
		for _, a := range w.acks {
			switch got[a] {
			case 0:
				missing++
			case 1:
			default:
				dup++
			}
		}
		for i, e := range w.errs {
			if i < 3 {
				fmt.Fprintf(out, "writer %d error: %v\n", w.id, e)
			}
		}
	}
	for _, ds := range [][]time.Duration{pauses, fenced, written, trip, marked, flipped, released, lats} {
		slices.Sort(ds)
	}
	p := func(ds []time.Duration, q float64) time.Duration {
		if len(ds) == 0 {
			return 0
		}
		return ds[min(len(ds)-1, int(float64(len(ds))*q))]
	}
	fmt.Fprintf(out, "\ncutover of %d shards (a canary, then %d at once) in %s with %d writers through the router; load average %s\n",
		len(pauses), o.cutoverParallel, cutoverTime.Round(time.Millisecond), o.writers, loadavg())
	fmt.Fprintf(out, "per-shard pause: min %s, p50 %s, p90 %s, p95 %s, max %s\n", ms(p(pauses, 0)), ms(p(pauses, 0.5)), ms(p(pauses, 0.9)), ms(p(pauses, 0.95)), ms(p(pauses, 1)))
	q := func(ds []time.Duration) string {
		return fmt.Sprintf("%s / %s / %s", ms(p(ds, 0.5)), ms(p(ds, 0.95)), ms(p(ds, 1)))
	}
	fmt.Fprintf(out, "pause by step, p50 / p95 / max: routers hold %s, marker %s, flip %s, routers release %s\n", q(fenced), q(marked), q(flipped), q(released))
	fmt.Fprintf(out, "the marker's parts, p50 / p95 / max: legacy commit %s, trip to the node %s\n", q(written), q(trip))
	if tl != nil {
		tl.report(out)
	}
	fmt.Fprintf(out, "client latency: p50 %s, p99 %s, max %s (%d transactions)\n", ms(p(lats, 0.5)), ms(p(lats, 0.99)), ms(maxLat), len(lats))
	fmt.Fprintf(out, "ledger: %d acknowledged writes, %d missing, %d duplicated, %d client errors\n", acked, missing, dup, errs)
	if missing+dup+errs > 0 {
		return fmt.Errorf("the ledger does not hold: %d missing, %d duplicated, %d errors", missing, dup, errs)
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

func (w *writer) run(ctx context.Context, addr string, ids []string) {
	conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@%s/app?sslmode=disable", addr))
	if err != nil {
		w.errs = append(w.errs, err)
		return
	}
	defer conn.Close(context.Background())
	rng := rand.New(rand.NewPCG(uint64(w.id), 7))
	for i := 0; ctx.Err() == nil; i++ {
		tenant := ids[rng.IntN(len(ids))]
		name := fmt.Sprintf("ledger %s w%d n%d", w.run0, w.id, i)
		t0 := time.Now()
		_, err := conn.Exec(ctx, `SELECT set_config('pgtenant.tenant', $1, false)`, tenant)
		if err == nil {
			_, err = conn.Exec(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, $2, 'Ledger', $3)`, tenant, name, i)
		}
		d := time.Since(t0)
		if err != nil {
			if ctx.Err() == nil {
				w.errs = append(w.errs, fmt.Errorf("%s for %q: %w", name, tenant, err))
			}
			continue
		}
		w.maxLat = max(w.maxLat, d)
		w.lats = append(w.lats, d)
		w.acks = append(w.acks, name)
		time.Sleep(2 * time.Millisecond)
	}
}
