package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/internal/move"
)

// stepTimes records when each move of a batch starts each step (through
// move.Config.BeforeStep) and reports the median time spent in each step.
type stepTimes struct {
	mu      sync.Mutex
	started map[int]time.Time // by shard: MoveAll's onStart
	marks   map[int64][]mark  // by move id
	spent   map[move.Step][]time.Duration
	order   []move.Step
}

type mark struct {
	step move.Step
	at   time.Time
}

func newStepTimes() *stepTimes {
	return &stepTimes{started: map[int]time.Time{}, marks: map[int64][]mark{}, spent: map[move.Step][]time.Duration{}}
}

func (s *stepTimes) onStart(o move.Outcome) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.started[o.Plan.Shard] = time.Now()
}

func (s *stepTimes) beforeStep(_ context.Context, id int64, step move.Step) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.marks[id] = append(s.marks[id], mark{step, time.Now()})
	return nil
}

// onDone attributes the time between consecutive steps of a finished move;
// "prepare" is from the move's start to its first step (pre-checks, the
// move's catalog row).
func (s *stepTimes) onDone(o move.Outcome) {
	end := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.Err != nil {
		return
	}
	ms := s.marks[o.Result.MoveID]
	if len(ms) == 0 {
		return
	}
	s.add("prepare", ms[0].at.Sub(s.started[o.Plan.Shard]))
	for i, m := range ms {
		next := end
		if i+1 < len(ms) {
			next = ms[i+1].at
		}
		s.add(m.step, next.Sub(m.at))
	}
	s.add("total", end.Sub(s.started[o.Plan.Shard]))
}

func (s *stepTimes) add(step move.Step, d time.Duration) {
	if _, ok := s.spent[step]; !ok {
		s.order = append(s.order, step)
	}
	s.spent[step] = append(s.spent[step], d)
}

// medians is one line: the median seconds per step, in the order first seen.
func (s *stepTimes) medians() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var parts []string
	for _, st := range s.order {
		ds := slices.Clone(s.spent[st])
		slices.Sort(ds)
		parts = append(parts, fmt.Sprintf("%s %.2f", st, ds[len(ds)/2].Seconds()))
	}
	return "per-move step medians (s): " + strings.Join(parts, ", ")
}
