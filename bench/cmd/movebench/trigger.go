package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/move"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// runTrigger measures --method trigger on a shard of -trigger-mb MB of ~1 KB
// rows under -trigger-clients clients without think time (half on the moving
// shard): the clients' throughput and latency in a control window, then with
// the capture triggers on and nothing else running (the move held before its
// copy for as long as the control), then over the rest of the move (copy,
// catch-up, fence); the pause; and the copy's rate. It returns the lines to print.
func runTrigger(ctx context.Context, o options, log *slog.Logger, nodes map[string]*localpg.Cluster) ([]string, error) {
	e, err := newEnv(ctx, log, nodes, "trigger", []string{"n1", "n2"}, 8, 0)
	if err != nil {
		return nil, fmt.Errorf("trigger set up: %w", err)
	}
	defer e.stop()
	const moving = 2 // on n1
	rows := o.triggerMB * 1000
	t0 := time.Now()
	s := pgx.Identifier{placement.SchemaName(moving)}.Sanitize()
	if err := exec(ctx, nodes["n1"].DSN("trigger"), fmt.Sprintf(`
		INSERT INTO %[1]s.accounts (tenant, name) SELECT 'bulk', 'account ' || i FROM generate_series(1, 1000) i;
		INSERT INTO %[1]s.items (account_id, n, payload) SELECT 1 + i %% 1000, i, repeat(md5(i::text), 30) FROM generate_series(1, %[2]d) i;
		ANALYZE %[1]s.accounts, %[1]s.items;`, s, rows)); err != nil {
		return nil, err
	}
	var size int64
	conn, err := pgx.Connect(ctx, nodes["n1"].DSN("trigger"))
	if err != nil {
		return nil, err
	}
	conn.QueryRow(ctx, `SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'`,
		placement.SchemaName(moving)).Scan(&size)
	conn.Close(ctx)
	loaded := time.Since(t0)
	over, err := triggerOverhead(ctx, e, log, nodes["n1"].DSN("trigger"))
	if err != nil {
		return nil, fmt.Errorf("trigger overhead: %w", err)
	}

	l := e.startLoad(o.triggerClients, moving, 0)
	time.Sleep(time.Second) // warm up
	c0 := time.Now()
	time.Sleep(o.control)
	c1 := time.Now()
	// The move, held before its copy (triggers on, nothing else running) for as long as the control ran.
	var h0, h1, copyStart, copyEnd time.Time
	m := move.New(move.Config{Catalog: e.cat.Pool(), Fencer: catalog.RouterFencer{Catalog: e.cat}, Logger: log, FenceTimeout: 10 * time.Second,
		BeforeStep: func(ctx context.Context, _ int64, step move.Step) error {
			switch step {
			case move.StepCopy:
				h0 = time.Now()
				time.Sleep(o.control)
				h1 = time.Now()
				copyStart = h1
			case move.StepIndexes:
				copyEnd = time.Now()
			}
			return nil
		}})
	m0 := time.Now()
	res, err := m.Move(ctx, moving, "n2", move.Options{Method: move.MethodTrigger, SkipVerify: true, DropSource: true})
	m1 := time.Now()
	if err != nil {
		l.stop()
		return nil, fmt.Errorf("trigger move: %w", err)
	}
	// For comparison, in the same conditions: the shard back with the logical method.
	time.Sleep(time.Second)
	var lres move.Result
	var l0, l1 time.Time
	if !o.triggerNoLogical {
		l0 = time.Now()
		lres, err = e.mover(log, nil).Move(ctx, moving, "n1", move.Options{SkipVerify: true, DropSource: true})
		l1 = time.Now()
		if err != nil {
			l.stop()
			return nil, fmt.Errorf("logical move back: %w", err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	l.stop()
	info, err := m.Get(ctx, res.MoveID)
	if err != nil {
		return nil, err
	}
	type window struct {
		name     string
		from, to time.Time
	}
	lines := []string{over, fmt.Sprintf("trigger method: shard of %d MB (%d rows of ~1 KB, loaded in %s), %d clients without think time (half on the moving shard), verify off",
		size>>20, rows+1010, loaded.Round(time.Second), o.triggerClients)}
	lines = append(lines, "window                          txn/s moving  txn/s other  p99 moving ms  p99 other ms  max moving ms")
	var base float64
	windows := []window{{"control (no move)", c0, c1}, {"capture triggers on, idle", h0, h1}, {"copy, catch-up, fence, flip", h1, m1}}
	if !l0.IsZero() {
		windows = append(windows, window{"logical method, whole move", l0, l1})
	}
	for _, w := range windows {
		mr, mp, mm := l.rate(moving, true, w.from, w.to)
		or, op, _ := l.rate(moving, false, w.from, w.to)
		if base == 0 {
			base = mr
		}
		lines = append(lines, fmt.Sprintf("%-30s  %12.0f  %11.0f  %13.1f  %12.1f  %13.1f   (%+.0f%% moving vs control)", w.name, mr, or,
			ms(mp), ms(op), ms(mm), 100*(mr/base-1)))
	}
	copyDur := copyEnd.Sub(copyStart)
	lines = append(lines, fmt.Sprintf("pause %.1f ms; copy %.1f MB/s (%s); move %s without the hold (%s total); %d changes applied from the queue; %d client errors",
		ms(res.Pause), float64(size)/1e6/copyDur.Seconds(), copyDur.Round(100*time.Millisecond), (m1.Sub(m0)-h1.Sub(h0)).Round(100*time.Millisecond),
		res.Duration.Round(100*time.Millisecond), info.Progress.Applied, l.errors()))
	if !l0.IsZero() {
		lines = append(lines, fmt.Sprintf("the shard back with the logical method, same load: pause %.1f ms, move %s", ms(lres.Pause), lres.Duration.Round(100*time.Millisecond)))
	}
	return lines, nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// rate is the throughput, 99th percentile and longest transaction of the
// chosen clients' transactions that started in [from, to). Call it after stop.
func (l *load) rate(moving int, onMoving bool, from, to time.Time) (tps float64, p99, longest time.Duration) {
	var ds []time.Duration
	for _, cl := range l.clients {
		if (cl.shard == moving) != onMoving {
			continue
		}
		for _, s := range cl.samples {
			if !s.start.Before(from) && s.start.Before(to) {
				ds = append(ds, s.dur)
			}
		}
	}
	if len(ds) == 0 || !to.After(from) {
		return 0, 0, 0
	}
	slices.Sort(ds)
	return float64(len(ds)) / to.Sub(from).Seconds(), ds[len(ds)*99/100], ds[len(ds)-1]
}

// errors counts the clients' errors. Call it after stop.
func (l *load) errors() int {
	n := 0
	for _, cl := range l.clients {
		n += len(cl.errs)
	}
	return n
}

// errHold stops the move that triggerOverhead holds at its copy step.
var errHold = errors.New("held for measurement")

// triggerOverhead measures the capture triggers' cost per write with one
// client straight to the node and no other load: single-row upsert
// transactions and a bulk insert into a shard on n1 (shard 4), without
// triggers, with them (a trigger-method move held at its copy step, then
// aborted), and without again.
func triggerOverhead(ctx context.Context, e *env, log *slog.Logger, dsn string) (string, error) {
	const shard, single, bulk = 4, 3000, 20000
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	s := pgx.Identifier{placement.SchemaName(shard)}.Sanitize()
	round := 0
	measure := func() (perTxn, perRow time.Duration, err error) {
		round++
		t0 := time.Now()
		for i := 0; i < single; i++ {
			if _, err := conn.Exec(ctx, `INSERT INTO `+s+`.kv (client, k, val) VALUES (-1, $1, $2) ON CONFLICT (client, k) DO UPDATE SET val = excluded.val`, i%500, i); err != nil {
				return 0, 0, err
			}
		}
		perTxn = time.Since(t0) / single
		t1 := time.Now()
		if _, err := conn.Exec(ctx, fmt.Sprintf(`INSERT INTO %s.items (account_id, n, payload) SELECT 1, %d * 1000000 + i, md5(i::text) FROM generate_series(1, %d) i`, s, round, bulk)); err != nil {
			return 0, 0, err
		}
		return perTxn, time.Since(t1) / bulk, nil
	}
	if _, _, err := measure(); err != nil { // warm up
		return "", err
	}
	b1, r1, err := measure()
	if err != nil {
		return "", err
	}
	var w1, wr1 time.Duration
	var merr error
	m := move.New(move.Config{Catalog: e.cat.Pool(), Fencer: catalog.RouterFencer{Catalog: e.cat}, Logger: log,
		BeforeStep: func(ctx context.Context, _ int64, step move.Step) error {
			if step != move.StepCopy {
				return nil
			}
			w1, wr1, merr = measure()
			return errHold
		}})
	_, err = m.Move(ctx, shard, "n2", move.Options{Method: move.MethodTrigger})
	if !errors.Is(err, errHold) {
		return "", fmt.Errorf("hold a move at its copy: %v", err)
	}
	if merr != nil {
		return "", merr
	}
	list, err := m.List(ctx)
	if err != nil {
		return "", err
	}
	if err := m.Abort(ctx, list[0].ID); err != nil {
		return "", err
	}
	b2, r2, err := measure()
	if err != nil {
		return "", err
	}
	base, baseRow := (b1+b2)/2, (r1+r2)/2
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }
	return fmt.Sprintf("capture triggers, one client straight to the node, no other load: single-row upsert transaction %.0f µs without (%.0f before, %.0f after), %.0f µs with (%+.0f%%); "+
		"bulk insert %.1f µs per row without, %.1f with (%+.0f%%)",
		us(base), us(b1), us(b2), us(w1), 100*(float64(w1)/float64(base)-1), us(baseRow), us(wr1), 100*(float64(wr1)/float64(baseRow)-1)), nil
}
