package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/internal/importer"
)

// timeline, with -timeline, records when each step of each shard's cutover
// happened (importer.SetTrace: the cutover's own steps and the marker's in
// the change stream) and prints, per step, how long after the fence's
// start it came (p50 / p95 over the shards), and the steps of the shard
// with the median pause.
type timeline struct {
	mu     sync.Mutex
	events map[int][]event // shard → its events, in the order told
}

type event struct {
	step string
	at   time.Time
}

// steps are the steps printed, in their usual order.
var steps = []string{importer.StepFenceCommitted, importer.StepRoutersHold, importer.StepMarkerCommitted,
	importer.StepMarkerDecoded, importer.StepMarkerApplied, importer.StepNodeFlushed, importer.StepMarkerNotified,
	importer.StepNodeReflushed, importer.StepFlipped, importer.StepReleased}

func newTimeline() *timeline { return &timeline{events: map[int][]event{}} }

func (t *timeline) trace(shard int, step string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.events[shard] = append(t.events[shard], event{step, at})
}

// offsets returns, for one shard, each step's time after its last fence's
// start (the marker's steps in the stream: the first after the marker's
// commit), and whether the shard was cut over.
func (t *timeline) offsets(shard int) (map[string]time.Duration, bool) {
	t.mu.Lock()
	evs := slices.Clone(t.events[shard])
	t.mu.Unlock()
	start := -1
	for i, e := range evs {
		if e.step == importer.StepFence {
			start = i
		}
	}
	if start < 0 {
		return nil, false
	}
	t0 := evs[start].at
	out := map[string]time.Duration{}
	var committed time.Time
	for _, e := range evs[start+1:] {
		if e.step == importer.StepMarkerCommitted {
			committed = e.at
		}
	}
	// The stream's steps of the fence's marker come after its commit
	// was sent; the trace of an earlier marker's round may come late.
	for _, e := range evs {
		if _, seen := out[e.step]; seen || e.at.Before(t0) {
			continue
		}
		if (e.step == importer.StepMarkerDecoded || e.step == importer.StepMarkerApplied) && (committed.IsZero() || e.at.Before(committed.Add(-time.Second))) {
			continue
		}
		out[e.step] = e.at.Sub(t0)
	}
	_, released := out[importer.StepReleased]
	return out, released
}

// report prints the steps' p50 / p95 after the fence's start over the
// shards cut over, and the median-pause shard's timeline.
func (t *timeline) report(out io.Writer) {
	t.mu.Lock()
	var shards []int
	for s := range t.events {
		shards = append(shards, s)
	}
	t.mu.Unlock()
	slices.Sort(shards)
	by := map[string][]time.Duration{}
	type shardPause struct {
		shard int
		pause time.Duration
		offs  map[string]time.Duration
	}
	var all []shardPause
	for _, s := range shards {
		offs, ok := t.offsets(s)
		if !ok {
			continue
		}
		for step, d := range offs {
			by[step] = append(by[step], d)
		}
		all = append(all, shardPause{s, offs[importer.StepReleased], offs})
	}
	if len(all) == 0 {
		return
	}
	fmt.Fprintf(out, "timeline of the pause (ms after the fence's start; p50 / p95 over %d shards; n = shards with the step):\n", len(all))
	for _, step := range steps {
		ds := by[step]
		if len(ds) == 0 {
			continue
		}
		slices.Sort(ds)
		fmt.Fprintf(out, "  %-17s %7.1f / %7.1f  (n = %d)\n", step, msf(ds[len(ds)/2]), msf(ds[min(len(ds)-1, len(ds)*95/100)]), len(ds))
	}
	slices.SortFunc(all, func(a, b shardPause) int { return int(a.pause - b.pause) })
	med := all[len(all)/2]
	var parts []string
	for _, step := range steps {
		if d, ok := med.offs[step]; ok {
			parts = append(parts, fmt.Sprintf("%s %.1f", step, msf(d)))
		}
	}
	fmt.Fprintf(out, "median shard %d: %s\n", med.shard, strings.Join(parts, ", "))
}

func msf(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
