package move

import (
	"context"
	"time"
)

// Plan is one shard move of a batch.
type Plan struct {
	Shard int
	// From is the shard's node when planned; it groups moves by node pair
	// (empty: the pair is known by To only).
	From string
	To   string
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

// MoveAll runs the planned moves, at most perPair at once between the same
// two nodes (zero or less means 1) and at most that many at once on any one
// node, in plan order as capacity frees. The per-node bound is for the
// node's resources: each logical move holds a replication slot and a WAL
// sender on its source, an apply worker and table-sync workers on its
// target (max_logical_replication_workers is 4 by default, and a
// subscription whose sync worker finds none free waits
// wal_retrieve_retry_interval), and a few connections on both.
// It is for node splits, drains and rebalancing. A failed move does not stop
// the others; onStart and onDone, when set, are called as each move starts
// and ends (onDone from the move's goroutine).
func (m *Mover) MoveAll(ctx context.Context, plans []Plan, perPair int, opts Options, onStart, onDone func(Outcome)) Summary {
	perPair = max(perPair, 1)
	perNode := perPair
	start := time.Now()
	// The moves off one node share one schema dump.
	cache, err := m.newSchemaCache(ctx, plans)
	if err != nil {
		m.log.Warn("each move dumps its own schema", "err", err)
		cache = nil
	}
	out := make([]Outcome, len(plans))
	type pair struct{ from, to string }
	running := map[pair]int{}
	onNode := map[string]int{}
	fits := func(p Plan) bool {
		if running[pair{p.From, p.To}] >= perPair || onNode[p.To] >= perNode {
			return false
		}
		return p.From == "" || onNode[p.From] < perNode
	}
	take := func(p Plan, d int) {
		running[pair{p.From, p.To}] += d
		onNode[p.To] += d
		if p.From != "" {
			onNode[p.From] += d
		}
	}
	done := make(chan int)
	pending := make([]int, len(plans))
	for i := range plans {
		pending[i] = i
	}
	inFlight := 0
	for len(pending) > 0 || inFlight > 0 {
		if ctx.Err() == nil {
			rest := pending[:0]
			for _, i := range pending {
				if !fits(plans[i]) {
					rest = append(rest, i)
					continue
				}
				take(plans[i], 1)
				inFlight++
				if onStart != nil {
					onStart(Outcome{Plan: plans[i]})
				}
				go func(i int) {
					p := plans[i]
					res, err := m.move(ctx, p.Shard, p.To, opts, cache)
					out[i] = Outcome{Plan: p, Result: res, Err: err}
					if onDone != nil {
						onDone(out[i])
					}
					done <- i
				}(i)
			}
			pending = rest
		} else {
			for _, i := range pending {
				out[i] = Outcome{Plan: plans[i], Err: ctx.Err()}
			}
			pending = nil
		}
		if inFlight == 0 {
			continue
		}
		i := <-done
		inFlight--
		take(plans[i], -1)
	}
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
