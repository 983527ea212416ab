package main

import (
	"context"
	"fmt"
	"time"

	"github.com/pgtenant/pgtenant/internal/move"
)

// showMoveProgress prints a line for each running move whenever its step or
// its copy progress (in tenths) changes, until ctx ends. It reads the
// progress the movers record in the catalog, so it shows what any process is
// doing, not only this one.
func (a *app) showMoveProgress(ctx context.Context, m *move.Mover, every time.Duration) {
	last := map[int64]string{}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		list, err := m.List(ctx)
		if err != nil {
			continue
		}
		for _, i := range list {
			if i.Status != "running" {
				continue
			}
			p := i.Progress
			line := fmt.Sprintf("  shard %d %s -> %s: %s", i.Shard, i.Source, i.Target, i.Step)
			if p.Tables > 0 {
				line += fmt.Sprintf(", tables %d/%d", p.TablesReady, p.Tables)
			}
			if p.SourceBytes > 0 && p.Bytes > 0 {
				line += fmt.Sprintf(", copied %d%% of %d MB", min(100, 10*(p.Bytes*10/p.SourceBytes)), p.SourceBytes>>20)
			}
			if p.LagMS > 0 {
				line += fmt.Sprintf(", lag %.0f ms", p.LagMS)
			}
			if last[i.ID] != line {
				last[i.ID] = line
				fmt.Fprintln(a.stderr, line)
			}
		}
	}
}
