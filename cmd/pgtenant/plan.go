package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/move"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// planFlags are the flags of the commands that plan several moves.
type planFlags struct {
	moveFlags
	dryRun bool
	json   bool
}

func (f *planFlags) register(cmd *cobra.Command) {
	f.moveFlags.register(cmd, true)
	cmd.Flags().BoolVar(&f.dryRun, "dry-run", false, "print the planned moves and change nothing")
	cmd.Flags().BoolVar(&f.json, "json", false, "print the plan (with --dry-run) or the outcome as JSON")
}

// planJSON is what `node split|drain`, `rebalance` print with --json.
type planJSON struct {
	Op     string         `json:"op"`
	DryRun bool           `json:"dry_run"`
	Moves  []plannedJSON  `json:"moves"`
	Detail map[string]any `json:"detail,omitempty"`
	// The outcome (not with --dry-run).
	Moved          int     `json:"moved"`
	Failed         int     `json:"failed"`
	DurationMS     int64   `json:"duration_ms"`
	LongestPauseMS float64 `json:"longest_pause_ms"`
	MovesPerMinute float64 `json:"moves_per_minute"`
}

// plannedJSON is one planned move, with its outcome after a run.
type plannedJSON struct {
	Shard      int      `json:"shard"`
	From       string   `json:"from"`
	To         string   `json:"to"`
	Bytes      int64    `json:"bytes"` // size when planned; -1 unknown
	MoveID     int64    `json:"move_id,omitempty"`
	PauseMS    *float64 `json:"pause_ms,omitempty"`
	DurationMS int64    `json:"duration_ms,omitempty"`
	Error      string   `json:"error,omitempty"`
}

// shardWeights reads every shard with its size.
func shardWeights(ctx context.Context, c *catalog.Catalog) ([]placement.Shard, map[int]int64, error) {
	stats, err := c.ShardStats(ctx)
	if err != nil {
		return nil, nil, err
	}
	shards := make([]placement.Shard, len(stats))
	bytes := map[int]int64{}
	for i, s := range stats {
		shards[i] = s.Shard
		bytes[s.ID] = s.Bytes
	}
	return shards, bytes, nil
}

func nodeNames(ctx context.Context, c *catalog.Catalog) ([]string, error) {
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name
	}
	return names, nil
}

func newSplitCmds(a *app) []*cobra.Command {
	var f planFlags
	var ff followerFlags
	var to string
	split := &cobra.Command{
		Use:   "split NODE --to NEWNODE | NODE --via-follower DSN --name NEWNODE",
		Short: "Move half of a node's shards to another node, online (or to a promoted follower, without copying)",
		Long: `Move every other shard of NODE (by id) to NEWNODE, --parallel at a time,
each an online move like 'shard move'. --dry-run prints the plan only.

With --via-follower DSN (a physical standby of NODE: a Heroku follower, or
one made with pg_basebackup -R) no row is copied: the half that moves is
fenced (its transactions wait in the routers), the follower replays past the
fence and is promoted (--promote-command, or pg_promote(), which needs
GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) to the node role),
registered as --name, and that half is flipped to it in one catalog
transaction; the pause is about the promotion's time. Then the moved half is
dropped from NODE and the kept half from the new node. A split whose process
died is continued with --resume ID or rolled back with --abort ID (until the
flip; a promoted follower is then simply not used).`,
		Example: `  pgtenant node add node3 postgres://admin@db3/app
  pgtenant node split node1 --to node3 --dry-run
  pgtenant node split node1 --to node3 --parallel 4
  pgtenant node split node1 --via-follower 'postgres://pgtenant@db1-follower/app' --name node3 --dry-run
  pgtenant node split node1 --via-follower "$FOLLOWER_URL" --name node3 --promote-command 'heroku pg:unfollow HEROKU_POSTGRESQL_GRAY_URL --app myapp --confirm myapp'`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if ff.used() {
				if to != "" {
					return usagef("give --to NEWNODE (a split by moves) or --via-follower DSN --name NEWNODE, not both")
				}
				return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
					return a.runFollowerSplit(ctx, c, args, &ff, &f)
				})(cmd, args)
			}
			if len(args) != 1 {
				return usagef("give NODE")
			}
			if to == "" {
				return usagef("give --to NEWNODE")
			}
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				if _, err := c.Node(ctx, args[0]); err != nil {
					return err
				}
				if _, err := c.Node(ctx, to); err != nil {
					return err
				}
				shards, bytes, err := shardWeights(ctx, c)
				if err != nil && shards == nil {
					return err
				}
				return a.runPlan(ctx, c, &f, "node split", map[string]any{"node": args[0], "to": to}, placement.PlanSplit(shards, args[0], to), bytes)
			})(cmd, args)
		},
	}
	split.Flags().StringVar(&to, "to", "", "the node that receives the shards")
	f.register(split)
	ff.register(split)

	var rf planFlags
	var byCount bool
	var slackPct float64
	rebalance := &cobra.Command{
		Use:   "rebalance",
		Short: "Even out bytes (or shard counts) across nodes by moving shards online",
		Long: `Move shards from the heaviest node to the lightest until they are even,
--parallel at a time per node pair. By bytes, nodes within --slack percent of
the mean node size of each other count as even, and a run starts only when
they differ by more than twice that: shards change size when moved (a fresh
copy is compact) and while the app writes, and a second rebalance right
after the first moves nothing. --dry-run prints the plan only.`,
		Example: `  pgtenant rebalance --dry-run
  pgtenant rebalance
  pgtenant rebalance --by-count --parallel 4 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if slackPct < 0 || slackPct >= 100 {
				return usagef("--slack %v: give a percentage from 0 to 100", slackPct)
			}
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				shards, bytes, err := shardWeights(ctx, c)
				if err != nil {
					return fmt.Errorf("rebalance needs every node's shard sizes: %w", err)
				}
				names, err := nodeNames(ctx, c)
				if err != nil {
					return err
				}
				weight := map[int]int64{}
				var total int64
				for _, s := range shards {
					weight[s.ID] = bytes[s.ID]
					if byCount {
						weight[s.ID] = 1
					}
					total += weight[s.ID]
				}
				by, slack := "bytes", int64(0)
				if byCount {
					by = "count"
				} else if len(names) > 0 {
					slack = int64(float64(total) / float64(len(names)) * slackPct / 100)
				}
				return a.runPlan(ctx, c, &rf, "rebalance", map[string]any{"by": by, "slack": slack},
					placement.PlanRebalance(shards, weight, names, slack), bytes)
			})(cmd, args)
		},
	}
	rebalance.Flags().BoolVar(&byCount, "by-count", false, "even out shard counts instead of bytes")
	rebalance.Flags().Float64Var(&slackPct, "slack", 10, "by bytes: nodes within this percentage of the mean node size count as even")
	rf.register(rebalance)

	var df planFlags
	drain := &cobra.Command{
		Use:   "drain NODE",
		Short: "Move every shard off a node, online, to the least loaded other nodes",
		Long: `Move every shard of NODE to the other nodes, biggest first, each to the
node with the fewest bytes at that point, --parallel at a time per node pair.
Afterwards 'node remove NODE' can unregister it. --dry-run prints the plan only.`,
		Example: `  pgtenant node drain node2 --dry-run
  pgtenant node drain node2 && pgtenant node remove node2`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				if _, err := c.Node(ctx, args[0]); err != nil {
					return err
				}
				shards, bytes, err := shardWeights(ctx, c)
				if err != nil && shards == nil {
					return err
				}
				names, err := nodeNames(ctx, c)
				if err != nil {
					return err
				}
				var others []string
				for _, n := range names {
					if n != args[0] {
						others = append(others, n)
					}
				}
				plan := placement.PlanDrain(shards, bytes, args[0], others)
				if len(others) == 0 && len(plan) == 0 && hasShards(shards, args[0]) {
					return fmt.Errorf("node %s is the only node: add another node first (pgtenant node add)", args[0])
				}
				return a.runPlan(ctx, c, &df, "node drain", map[string]any{"node": args[0]}, plan, bytes)
			})(cmd, args)
		},
	}
	df.register(drain)
	return []*cobra.Command{split, rebalance, drain}
}

func hasShards(shards []placement.Shard, node string) bool {
	for _, s := range shards {
		if s.Node == node {
			return true
		}
	}
	return false
}

// runPlan prints the plan, or runs its moves, f.parallel at a time per node
// pair, showing a progress bar per running move and a line per finished one
// and a summary, and records each move and the whole (op, with detail) in the
// operation log.
func (a *app) runPlan(ctx context.Context, c *catalog.Catalog, f *planFlags, op string, detail map[string]any, plan []placement.Planned, bytes map[int]int64) error {
	opts, err := f.options()
	if err != nil {
		return err
	}
	out := planJSON{Op: op, DryRun: f.dryRun, Detail: detail, Moves: make([]plannedJSON, len(plan))}
	var total int64
	for i, p := range plan {
		b, ok := bytes[p.Shard]
		if !ok {
			b = -1
		}
		out.Moves[i] = plannedJSON{Shard: p.Shard, From: p.From, To: p.To, Bytes: b}
		total += max(b, 0)
	}
	if f.dryRun {
		if f.json {
			return a.printJSON(out)
		}
		if len(plan) == 0 {
			fmt.Fprintln(a.stdout, "nothing to move")
			return nil
		}
		w := a.table("SHARD", "FROM", "TO", "SIZE")
		for _, m := range out.Moves {
			row(w, m.Shard, m.From, m.To, humanBytes(m.Bytes))
		}
		w.Flush()
		fmt.Fprintf(a.stdout, "%s, %s, %d at a time per node pair (dry run: nothing changed)\n", plural(len(plan), "move"), humanBytes(total), max(f.parallel, 1))
		return nil
	}
	if len(plan) == 0 {
		a.recordPlan(ctx, c, op, detail, 0, move.Summary{}, nil)
		if f.json {
			return a.printJSON(out)
		}
		fmt.Fprintln(a.stdout, "nothing to move")
		return nil
	}
	text := a.stdout
	if f.json {
		text = a.stderr
	}
	fmt.Fprintf(text, "moving %s (%s), %d at a time per node pair\n", plural(len(plan), "shard"), humanBytes(total), max(f.parallel, 1))
	plans := make([]move.Plan, len(plan))
	for i, p := range plan {
		plans[i] = move.Plan{Shard: p.Shard, From: p.From, To: p.To}
	}
	var mu sync.Mutex
	done := 0
	m := a.mover(c, &f.moveFlags)
	prog := a.newMoveProgress(m, len(plans))
	pctx, stop := context.WithCancel(ctx)
	go prog.run(pctx, time.Second)
	sum := m.MoveAll(ctx, plans, f.parallel, opts, nil, func(o move.Outcome) {
		a.recordMove(ctx, c, "shard move", 0, o.Plan.Shard, o.Plan.From, o.Plan.To, op, o.Result, o.Err)
		mu.Lock()
		defer mu.Unlock()
		done++
		prog.finished(o)
		line := fmt.Sprintf("[%d/%d] shard %d %s -> %s: pause %s, %s, %s", done, len(plans), o.Plan.Shard, o.Plan.From, o.Plan.To,
			o.Result.Pause.Round(time.Millisecond/10), humanBytes(o.Result.Bytes), o.Result.Duration.Round(time.Millisecond))
		if o.Err != nil {
			line = fmt.Sprintf("[%d/%d] shard %d %s -> %s failed: %v", done, len(plans), o.Plan.Shard, o.Plan.From, o.Plan.To, o.Err)
		}
		prog.println(text, line)
	})
	stop()
	prog.wait()
	perMin := 0.0
	if sum.Duration > 0 {
		perMin = float64(sum.Moved) / sum.Duration.Minutes()
	}
	fmt.Fprintf(text, "moved %d of %d shards, %s, longest pause %s, in %s (%.1f moves/minute)\n", sum.Moved, len(plans), humanBytes(sum.Bytes),
		sum.LongestPause.Round(time.Millisecond/10), sum.Duration.Round(time.Millisecond), perMin)
	var errs []error
	for i, o := range sum.Outcomes {
		if o.Err != nil {
			errs = append(errs, o.Err)
			out.Moves[i].Error = o.Err.Error()
			continue
		}
		p := durationMS(o.Result.Pause)
		out.Moves[i].MoveID, out.Moves[i].PauseMS, out.Moves[i].DurationMS = o.Result.MoveID, &p, o.Result.Duration.Milliseconds()
	}
	out.Moved, out.Failed, out.DurationMS = sum.Moved, sum.Failed, sum.Duration.Milliseconds()
	out.LongestPauseMS, out.MovesPerMinute = durationMS(sum.LongestPause), perMin
	a.recordPlan(ctx, c, op, detail, len(plans), sum, errors.Join(errs...))
	if f.json {
		if err := a.printJSON(out); err != nil {
			return err
		}
	}
	return errors.Join(errs...)
}
