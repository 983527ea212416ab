package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/term"

	"github.com/pgtenant/pgtenant/internal/move"
)

// moveProgress shows one bar per running move (step, copied bytes, ETA)
// and, for a batch, a line with the moves done and the batch's ETA. On a
// terminal the bars are redrawn in place every tick; otherwise a move's line
// is printed when its step or its copy progress (in tenths) changes. It reads
// what the movers record in the catalog, so it shows moves of any process.
type moveProgress struct {
	m     *move.Mover
	w     io.Writer
	tty   bool
	total int // moves in the batch (1 for a single move)

	mu        sync.Mutex
	start     time.Time
	done      int
	seen      map[int64]time.Time // first seen running, by move id
	last      map[int64]string    // non-tty: the last line printed per move
	lines     []string            // tty: the bars drawn now
	finishedC chan struct{}
}

func (a *app) newMoveProgress(m *move.Mover, total int) *moveProgress {
	p := &moveProgress{m: m, w: a.stderr, total: total, start: time.Now(), seen: map[int64]time.Time{}, last: map[int64]string{},
		finishedC: make(chan struct{})}
	if f, ok := a.stderr.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		p.tty = true
	}
	return p
}

// stepShare is the part of a move done when it enters a step (the copy
// fills the range from StepCopy to StepIndexes by bytes).
var stepShare = map[move.Step]float64{
	move.StepStart: 0, move.StepSchema: 0.01, move.StepPublication: 0.03, move.StepSubscription: 0.04, move.StepCopy: 0.05,
	move.StepCopyData: 0.05, move.StepIndexes: 0.85, move.StepCatchUp: 0.9, move.StepFence: 0.93, move.StepFlipped: 0.95,
	move.StepVerify: 0.95, move.StepCleanup: 0.99, move.StepDone: 1,
}

// fraction estimates how much of a move is done.
func fraction(i move.Info) float64 {
	f := stepShare[i.Step]
	p := i.Progress
	if (i.Step == move.StepCopy || i.Step == move.StepCopyData) && p.SourceBytes > 0 {
		f += 0.8 * min(1, float64(p.Bytes)/float64(p.SourceBytes))
	}
	return f
}

// bar renders one move's line.
func (p *moveProgress) bar(i move.Info, now time.Time) string {
	const width = 20
	f := fraction(i)
	n := int(f * width)
	b := strings.Repeat("=", n) + strings.Repeat(" ", width-n)
	if n < width {
		b = b[:n] + ">" + b[n+1:]
	}
	line := fmt.Sprintf("shard %d %s -> %s [%s] %3.0f%% %s", i.Shard, i.Source, i.Target, b, 100*f, i.Step)
	pr := i.Progress
	if pr.SourceBytes > 0 && pr.Bytes > 0 {
		line += fmt.Sprintf(", %s of %s", humanBytes(pr.Bytes), humanBytes(pr.SourceBytes))
	}
	if pr.LagMS > 0 && i.Step == move.StepCatchUp {
		line += fmt.Sprintf(", lag %.0f ms", pr.LagMS)
	}
	if p.tty {
		if el := now.Sub(p.seen[i.ID]); f > 0.05 && el > time.Second {
			line += ", ETA " + (time.Duration(float64(el) * (1 - f) / f)).Round(time.Second).String()
		}
	}
	return line
}

// run redraws every tick until ctx ends, then clears the bars.
func (p *moveProgress) run(ctx context.Context, every time.Duration) {
	defer close(p.finishedC)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			p.mu.Lock()
			p.clear()
			p.mu.Unlock()
			return
		case <-t.C:
		}
		list, err := p.m.Running(ctx)
		if err != nil {
			continue
		}
		now := time.Now()
		p.mu.Lock()
		var lines []string
		for _, i := range list {
			if _, ok := p.seen[i.ID]; !ok {
				p.seen[i.ID] = now
			}
			line := p.bar(i, now)
			if p.tty {
				lines = append(lines, line)
				continue
			}
			key := fmt.Sprintf("%s %d", i.Step, int(10*fraction(i)))
			if p.last[i.ID] != key {
				p.last[i.ID] = key
				fmt.Fprintln(p.w, "  "+line)
			}
		}
		if p.tty {
			if p.total > 1 {
				sum := fmt.Sprintf("%d/%d moves done, %d running", p.done, p.total, len(list))
				if el := now.Sub(p.start); p.done > 0 {
					sum += ", ETA " + (time.Duration(float64(el) / float64(p.done) * float64(p.total-p.done))).Round(time.Second).String()
				}
				lines = append(lines, sum)
			}
			p.clear()
			p.draw(lines)
		}
		p.mu.Unlock()
	}
}

// finished counts a finished move of the batch.
func (p *moveProgress) finished(move.Outcome) {
	p.mu.Lock()
	p.done++
	p.mu.Unlock()
}

// println prints a line to w above the bars.
func (p *moveProgress) println(w io.Writer, line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	lines := p.lines
	if w == p.w {
		p.clear()
	}
	fmt.Fprintln(w, line)
	if w == p.w {
		p.draw(lines)
	}
}

// wait returns once run has stopped (after its context ended).
func (p *moveProgress) wait() { <-p.finishedC }

func (p *moveProgress) clear() {
	if !p.tty || len(p.lines) == 0 {
		return
	}
	// Cursor up one line and clear it, once per drawn line.
	fmt.Fprint(p.w, strings.Repeat("\x1b[1A\x1b[2K", len(p.lines)))
	p.lines = nil
}

func (p *moveProgress) draw(lines []string) {
	for _, l := range lines {
		fmt.Fprintln(p.w, l)
	}
	p.lines = lines
}
