package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/move"
)

// followerFlags are node split's flags for a split through a follower.
type followerFlags struct {
	via            string
	name           string
	promoteCommand string
	promoteTimeout time.Duration
	maxWait        time.Duration
	shards         []int
	resume, abort  int64
}

func (f *followerFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.via, "via-follower", "", "split through this physical standby (follower) of NODE, promoted and registered as --name: no row is copied")
	cmd.Flags().StringVar(&f.name, "name", "", "with --via-follower: the node name of the promoted follower")
	cmd.Flags().StringVar(&f.promoteCommand, "promote-command", "", "with --via-follower: command that promotes the follower (run with sh -c), for hosted services; default SELECT pg_promote(true, N) on the follower")
	cmd.Flags().DurationVar(&f.promoteTimeout, "promote-timeout", time.Minute, "with --via-follower: how long the promotion may take")
	cmd.Flags().DurationVar(&f.maxWait, "max-wait", 30*time.Second, "with --via-follower: abort (fence released) if the follower has not replayed past the fence within this time")
	cmd.Flags().IntSliceVar(&f.shards, "shards", nil, "with --via-follower: the shards that move (default every other shard of NODE by id)")
	cmd.Flags().Int64Var(&f.resume, "resume", 0, "continue the follower split with this id (its process died)")
	cmd.Flags().Int64Var(&f.abort, "abort", 0, "roll back the follower split with this id (possible until the flip)")
}

// used reports whether any follower-split flag was given.
func (f *followerFlags) used() bool { return f.via != "" || f.resume > 0 || f.abort > 0 }

// splitJSON is what `node split --via-follower --json` prints.
type splitJSON struct {
	Op             string   `json:"op"`
	DryRun         bool     `json:"dry_run"`
	SplitID        int64    `json:"split_id,omitempty"`
	Node           string   `json:"node"`
	NewNode        string   `json:"new_node"`
	Moved          []int    `json:"moved"`
	Kept           []int    `json:"kept"`
	Bytes          int64    `json:"bytes,omitempty"`
	ReplayLagBytes int64    `json:"replay_lag_bytes,omitempty"`
	PauseMS        float64  `json:"pause_ms,omitempty"`
	ReplayWaitMS   float64  `json:"replay_wait_ms,omitempty"`
	PromoteMS      float64  `json:"promote_ms,omitempty"`
	DurationMS     int64    `json:"duration_ms,omitempty"`
	Dropped        []string `json:"dropped,omitempty"`
	CleanupError   string   `json:"cleanup_error,omitempty"`
}

// runFollowerSplit runs, plans (--dry-run), resumes or aborts a follower split.
func (a *app) runFollowerSplit(ctx context.Context, c *catalog.Catalog, args []string, f *followerFlags, pf *planFlags) error {
	m := a.mover(c, &pf.moveFlags)
	register := func(ctx context.Context, name, dsn, identity string) error {
		return c.AddPromotedNode(ctx, name, dsn, identity)
	}
	detail := map[string]any{"via_follower": true}
	switch {
	case f.abort > 0:
		err := m.AbortSplit(ctx, f.abort)
		detail["split_id"] = f.abort
		rctx, cancel := recordCtx(ctx)
		c.RecordOperation(rctx, "node split abort", detail, err)
		cancel()
		if err == nil {
			fmt.Fprintf(a.stdout, "split %d aborted: the shards stay on their node\n", f.abort)
		}
		return err
	case f.resume > 0:
		res, err := m.ResumeSplit(ctx, f.resume, register)
		detail["split_id"] = f.resume
		return a.reportSplit(ctx, c, pf, "node split resume", detail, res, err)
	}
	if len(args) != 1 {
		return usagef("give NODE")
	}
	if f.name == "" {
		return usagef("give --name NEWNODE: the node name of the promoted follower")
	}
	opts := move.SplitOptions{Node: args[0], NewNode: f.name, FollowerDSN: f.via, Shards: f.shards, PromoteCommand: f.promoteCommand,
		PromoteTimeout: f.promoteTimeout, MaxWait: f.maxWait, Register: register}
	detail["node"], detail["new_node"] = args[0], f.name
	if pf.dryRun {
		p, err := m.PlanFollowerSplit(ctx, opts)
		if err != nil {
			return err
		}
		if pf.json {
			return a.printJSON(splitJSON{Op: "node split", DryRun: true, Node: p.Node, NewNode: p.NewNode, Moved: p.Moved, Kept: p.Kept,
				Bytes: p.Bytes, ReplayLagBytes: p.ReplayLagBytes})
		}
		fmt.Fprintf(a.stdout, "would promote the follower as %s and give it shards %v (%s, no copy); %s keeps %v; the follower is %s behind (dry run: nothing changed)\n",
			p.NewNode, p.Moved, humanBytes(p.Bytes), p.Node, p.Kept, humanBytes(p.ReplayLagBytes))
		return nil
	}
	res, err := m.SplitViaFollower(ctx, opts)
	return a.reportSplit(ctx, c, pf, "node split", detail, res, err)
}

// reportSplit records and prints a follower split's outcome, then runs
// node check's checks on the new node (not run during the pause).
func (a *app) reportSplit(ctx context.Context, c *catalog.Catalog, pf *planFlags, op string, detail map[string]any, res move.SplitResult, err error) error {
	if res.SplitID != 0 {
		detail["split_id"] = res.SplitID
	}
	if err == nil {
		detail["pause_ms"], detail["moved"], detail["new_node"] = durationMS(res.Pause), res.Moved, res.NewNode
	}
	rctx, cancel := recordCtx(ctx)
	c.RecordOperation(rctx, op, detail, err)
	cancel()
	if err != nil {
		return err
	}
	if pf.json {
		if err := a.printJSON(splitJSON{Op: op, SplitID: res.SplitID, Node: res.Node, NewNode: res.NewNode, Moved: res.Moved, Kept: res.Kept,
			PauseMS: durationMS(res.Pause), ReplayWaitMS: durationMS(res.ReplayWait), PromoteMS: durationMS(res.Promote),
			DurationMS: res.Duration.Milliseconds(), Dropped: res.Dropped, CleanupError: res.CleanupError}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(a.stdout, "split %d: shards %v now on %s (the promoted follower), %v stay on %s; pause %s (replay wait %s, promotion %s), in %s\n",
			res.SplitID, res.Moved, res.NewNode, res.Kept, res.Node, res.Pause.Round(time.Millisecond), res.ReplayWait.Round(time.Millisecond),
			res.Promote.Round(time.Millisecond), res.Duration.Round(time.Millisecond))
		fmt.Fprintf(a.stdout, "cleanup dropped %s\n", plural(len(res.Dropped), "schema"))
		if res.CleanupError != "" {
			fmt.Fprintf(a.stderr, "cleanup incomplete (run pgtenant shard cleanup): %s\n", res.CleanupError)
		}
	}
	if n, nerr := c.Node(ctx, res.NewNode); nerr == nil {
		for _, ch := range c.CheckRegisteredNode(ctx, n).Checks {
			if ch.Status != catalog.CheckOK {
				fmt.Fprintf(a.stderr, "node %s: %s %s: %s\n", res.NewNode, ch.Name, ch.Status, ch.Detail)
			}
		}
	}
	return nil
}
