package main

import (
	"context"
	"time"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/move"
)

// recordCtx is ctx for writing the operation log after the work: it
// survives a cancelled command (Ctrl-C records the interrupted move too),
// for a few seconds.
func recordCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
}

// recordMove adds a "shard move" entry (op names the variant: "shard move",
// "shard move resume") to the operation log: shard, nodes, pause, rows,
// bytes and duration when it succeeded, else its error. plan names the
// split or rebalance it was part of. A negative shard or zero moveID is
// unknown and left out.
func (a *app) recordMove(ctx context.Context, c *catalog.Catalog, op string, moveID int64, shard int, from, to, plan string, res move.Result, err error) {
	d := map[string]any{}
	if shard >= 0 {
		d["shard"] = shard
	}
	if moveID > 0 {
		d["move_id"] = moveID
	}
	if to != "" {
		d["to"] = to
	}
	if from != "" {
		d["from"] = from
	}
	if plan != "" {
		d["plan"] = plan
	}
	if err == nil {
		d["move_id"], d["shard"] = res.MoveID, res.Shard
		d["from"], d["to"] = res.From, res.To
		d["pause_ms"] = durationMS(res.Pause)
		d["rows"], d["bytes"] = res.Rows, res.Bytes
		d["duration_ms"] = res.Duration.Milliseconds()
		d["verified"] = res.Verified
		if res.VerifyTime > 0 {
			d["verify_ms"] = durationMS(res.VerifyTime)
		}
	}
	ctx, cancel := recordCtx(ctx)
	defer cancel()
	c.RecordOperation(ctx, op, d, err)
}

// recordPlan adds the summary of a node split or rebalance to the
// operation log; each of its moves has an entry of its own.
func (a *app) recordPlan(ctx context.Context, c *catalog.Catalog, op string, detail map[string]any, planned int, sum move.Summary, err error) {
	d := map[string]any{"planned": planned, "moved": sum.Moved, "failed": sum.Failed, "bytes": sum.Bytes,
		"longest_pause_ms": durationMS(sum.LongestPause), "duration_ms": sum.Duration.Milliseconds()}
	for k, v := range detail {
		d[k] = v
	}
	ctx, cancel := recordCtx(ctx)
	defer cancel()
	c.RecordOperation(ctx, op, d, err)
}
