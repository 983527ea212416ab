package move

import (
	"context"
	"sync"
	"time"
)

// Plan is one shard move of a batch.
type Plan struct {
	Shard int
	To    string
}

// Outcome is the result of one planned move.
type Outcome struct {
	Plan   Plan
	Result Result
	Err    error
}

// Summary totals a batch of moves.
type Summary struct {
	Moved, Failed int
	Bytes         int64
	LongestPause  time.Duration
	Duration      time.Duration
	Outcomes      []Outcome // in plan order
}

// MoveAll runs the planned moves with at most parallelism at once (zero or
// less means 1), for node splits and rebalancing. A failed move does not stop
// the others; onDone, when set, is called after each move (from its goroutine).
func (m *Mover) MoveAll(ctx context.Context, plans []Plan, parallelism int, opts Options, onDone func(Outcome)) Summary {
	if parallelism <= 0 {
		parallelism = 1
	}
	start := time.Now()
	out := make([]Outcome, len(plans))
	sem := make(chan struct{}, parallelism)
	var wg sync.WaitGroup
	for i, p := range plans {
		if ctx.Err() != nil {
			out[i] = Outcome{Plan: p, Err: ctx.Err()}
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			res, err := m.Move(ctx, p.Shard, p.To, opts)
			out[i] = Outcome{Plan: p, Result: res, Err: err}
			if onDone != nil {
				onDone(out[i])
			}
		}()
	}
	wg.Wait()
	s := Summary{Outcomes: out, Duration: time.Since(start)}
	for _, o := range out {
		if o.Err != nil {
			s.Failed++
			continue
		}
		s.Moved++
		s.Bytes += o.Result.Bytes
		s.LongestPause = max(s.LongestPause, o.Result.Pause)
	}
	return s
}
