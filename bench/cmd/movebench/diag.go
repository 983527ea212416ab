package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/move"
)

// diag, with -slow or -sample, explains a move's slow transactions: each
// moving-shard transaction longer than -slow (start, statement and commit
// times, relative to the move's fence), the mover's steps, and with -sample
// the nodes' pg_stat_activity every 5 ms (active client backends of the
// bench database, their wait event and how old each backend is).
type diag struct {
	w      io.Writer
	slow   time.Duration
	sample bool
	dsns   map[string]string // node -> bench DSN

	mu    sync.Mutex
	steps []mark
}

func (d *diag) on() bool { return d != nil && (d.slow > 0 || d.sample) }

// beforeStep is the mover's BeforeStep hook: it records when each step starts.
func (d *diag) beforeStep(_ context.Context, _ int64, step move.Step) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.steps = append(d.steps, mark{step, time.Now()})
	return nil
}

type activity struct {
	at                          time.Time
	node                        string
	pid                         int
	backendAge, queryAge        time.Duration
	state, wait, query, appName string
}

// watch samples the nodes until stop is called and returns the samples.
func (d *diag) watch(ctx context.Context) (stop func() []activity) {
	if !d.sample {
		return func() []activity { return nil }
	}
	ctx, cancel := context.WithCancel(ctx)
	var mu sync.Mutex
	var out []activity
	var wg sync.WaitGroup
	for node, dsn := range d.dsns {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			fmt.Fprintf(d.w, "diag: connect to %s: %v\n", node, err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close(context.Background())
			for ctx.Err() == nil {
				rows, err := conn.Query(ctx, `SELECT pid, extract(epoch FROM now() - backend_start)::float8, coalesce(extract(epoch FROM clock_timestamp() - query_start)::float8, 0),
					coalesce(state, ''), coalesce(wait_event_type || ':' || wait_event, ''), left(coalesce(query, ''), 60), application_name
					FROM pg_stat_activity WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND state = 'active'`)
				if err == nil {
					now := time.Now()
					for rows.Next() {
						var a activity
						var b, q float64
						if rows.Scan(&a.pid, &b, &q, &a.state, &a.wait, &a.query, &a.appName) == nil {
							a.at, a.node = now, node
							a.backendAge = time.Duration(b * float64(time.Second))
							a.queryAge = time.Duration(q * float64(time.Second))
							mu.Lock()
							out = append(out, a)
							mu.Unlock()
						}
					}
					rows.Close()
				}
				sleep := time.NewTimer(5 * time.Millisecond)
				select {
				case <-ctx.Done():
				case <-sleep.C:
				}
				sleep.Stop()
			}
		}()
	}
	return func() []activity {
		cancel()
		wg.Wait()
		return out
	}
}

// report prints what was seen during one move, times relative to the fence step's start.
func (d *diag) report(l *load, moving int, t0, t1 time.Time, acts []activity) {
	d.mu.Lock()
	steps := d.steps
	d.steps = nil
	d.mu.Unlock()
	zero := t0
	for _, s := range steps {
		if s.step == move.StepFence {
			zero = s.at
		}
	}
	rel := func(t time.Time) string { return fmt.Sprintf("%+8.1f", float64(t.Sub(zero).Microseconds())/1000) }
	var b strings.Builder
	fmt.Fprintf(&b, "-- move at %s (times in ms from the fence step's start)\n", zero.Format("15:04:05.000"))
	for _, s := range steps {
		fmt.Fprintf(&b, "   step %-12s %s\n", s.step, rel(s.at))
	}
	type slowTxn struct {
		cl int
		s  sample
	}
	var slow []slowTxn
	for _, cl := range l.clients {
		if cl.shard != moving {
			continue
		}
		for _, s := range cl.samples {
			if s.start.Add(s.dur).Before(t0) || !s.start.Before(t1) || s.dur < d.slow {
				continue
			}
			slow = append(slow, slowTxn{cl.id, s})
		}
	}
	slices.SortFunc(slow, func(a, b slowTxn) int { return a.s.start.Compare(b.s.start) })
	for _, x := range slow {
		fmt.Fprintf(&b, "   txn client %3d: begin %s insert done %s commit done %s (%.1f ms)\n", x.cl, rel(x.s.start), rel(x.s.inserted), rel(x.s.start.Add(x.s.dur)),
			float64(x.s.dur.Microseconds())/1000)
	}
	slices.SortFunc(acts, func(a, b activity) int { return a.at.Compare(b.at) })
	for _, a := range acts {
		fmt.Fprintf(&b, "   pg %s %s pid %d backend age %.1f ms, query age %.1f ms, %s %s %q\n", rel(a.at), a.node, a.pid,
			float64(a.backendAge.Microseconds())/1000, float64(a.queryAge.Microseconds())/1000, a.state, a.wait, a.query)
	}
	fmt.Fprint(d.w, b.String())
}
