package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/access"
	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/move"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// moveFlags are the options shared by shard move, node split and rebalance.
type moveFlags struct {
	method       string
	dropSource   bool
	skipVerify   bool
	fenceTimeout time.Duration
	parallel     int
}

func (f *moveFlags) register(cmd *cobra.Command, parallel bool) {
	cmd.Flags().StringVar(&f.method, "method", "logical", "logical (online, needs wal_level=logical and REPLICATION), trigger (online, triggers and a change queue: no logical replication needed) or copy (the shard's writes pause for the whole copy)")
	cmd.Flags().BoolVar(&f.dropSource, "drop-source", false, "drop the source schema after the flip instead of keeping it renamed until 'shard cleanup'")
	cmd.Flags().BoolVar(&f.skipVerify, "skip-verify", false, "skip comparing row counts and checksums (logical: after the flip, undone on a difference; copy: under the fence)")
	cmd.Flags().DurationVar(&f.fenceTimeout, "fence-timeout", 5*time.Second, "abort the move if the fence (writes held) would last longer")
	if parallel {
		cmd.Flags().IntVar(&f.parallel, "parallel", 2, "moves running at once between two nodes, and on any one node (each takes logical replication workers on its target)")
	}
}

func (f *moveFlags) options() (move.Options, error) {
	switch move.Method(f.method) {
	case move.MethodLogical, move.MethodCopy, move.MethodTrigger:
	default:
		return move.Options{}, usagef("--method %q: use logical, trigger or copy", f.method)
	}
	return move.Options{Method: move.Method(f.method), DropSource: f.dropSource, SkipVerify: f.skipVerify}, nil
}

func (a *app) mover(c *catalog.Catalog, f *moveFlags) *move.Mover {
	return move.New(move.Config{
		Catalog:      c.Pool(),
		Fencer:       catalog.RouterFencer{Catalog: c},
		Logger:       a.logger,
		FenceTimeout: f.fenceTimeout,
		ResolveDSN:   c.ResolveDSN,
		// Grants and policies travel with pg_dump; the roles they name
		// must exist on the target first, and are applied again after.
		PrepareTarget: func(ctx context.Context, shard int, node, dsn string) error {
			return access.ApplyShard(ctx, c.Pool(), placement.Node{Name: node, DSN: dsn}, placement.Shard{ID: shard, Schema: placement.SchemaName(shard)}, true)
		},
		AfterFlip: func(ctx context.Context, shard int, node, dsn string) error {
			return access.ApplyShard(ctx, c.Pool(), placement.Node{Name: node, DSN: dsn}, placement.Shard{ID: shard, Schema: placement.SchemaName(shard)}, false)
		},
	})
}

func newMoveCmds(a *app) []*cobra.Command {
	var f moveFlags
	var to string
	var resume, abort int64
	mv := &cobra.Command{
		Use:   "move SHARD --to NODE",
		Short: "Move a shard to another node online",
		Long: `Move one shard (schema) to another node while the application keeps running.

With --method logical (the default) the schema is recreated on the target,
its tables are copied and kept in sync with PostgreSQL's logical replication,
and when the target has caught up the shard is fenced: routers hold that
shard's new transactions (other shards run on) while the last writes arrive,
sequences are set past the source's values, the catalog flips the shard to
the target, and the held transactions are released to it. The pause is
typically tens of milliseconds. Anything failing before the flip aborts the
move with routing left on the source and nothing lost.

Then, outside the pause, every table's row count and checksum on the target
as of the flip (a snapshot taken under the fence) is compared with the
source, which takes no writes from the fence on. If they differ the flip is
undone: the shard is fenced again, the writes the target took meanwhile are
replayed on the source, and the shard goes back there (the move ends
aborted, nothing acknowledged lost). --skip-verify leaves this out.

Every step is recorded in the catalog: a move whose process died continues
with --resume ID, or is rolled back with --abort ID. The source schema is kept
renamed until 'pgtenant shard cleanup' (or dropped with --drop-source).

With --method trigger (for hosts without logical replication, such as
Heroku Postgres) row triggers on the source queue every change of the shard
in a table of the mover's (schema pgtenant_capture_<move id>), the rows are
copied at one snapshot, the queue is applied to the target until it has
caught up, then the same fence, drain and flip; every table needs a primary
key, and the node role needs only to own the shard and create schemas. The
writes pay for the queue while the move runs (see bench/README.md).

With --method copy the shard is fenced for the whole copy: its writes pause
for as long as copying takes.`,
		Example: `  pgtenant shard move 17 --to node3
  pgtenant shard move 17 --to node3 --method trigger
  pgtenant shard move 17 --to node3 --method copy
  pgtenant shard moves
  pgtenant shard move --resume 42
  pgtenant shard move --abort 42`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := f.options()
			if err != nil {
				return err
			}
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				m := a.mover(c, &f)
				switch {
				case abort > 0:
					err := m.Abort(ctx, abort)
					rctx, cancel := recordCtx(ctx)
					c.RecordOperation(rctx, "shard move abort", map[string]any{"move_id": abort}, err)
					cancel()
					if err != nil {
						return err
					}
					fmt.Fprintf(a.stdout, "move %d aborted; the shard stays where it was\n", abort)
					return nil
				case resume > 0:
					res, err := m.Resume(ctx, resume)
					a.recordMove(ctx, c, "shard move resume", resume, -1, "", "", "", res, err)
					if err != nil {
						return moveInterrupted(err, resume)
					}
					a.printMove(res)
					return nil
				}
				if len(args) != 1 || to == "" {
					return usagef("give a shard and --to NODE (or --resume ID / --abort ID)")
				}
				shard, err := strconv.Atoi(args[0])
				if err != nil {
					return usagef("shard %q is not a number", args[0])
				}
				if opts.Method == move.MethodCopy {
					fmt.Fprintf(a.stderr, "note: --method copy pauses shard %d's writes for the whole copy\n", shard)
				}
				pctx, stop := context.WithCancel(ctx)
				prog := a.newMoveProgress(m, 1)
				go prog.run(pctx, time.Second)
				res, err := m.Move(ctx, shard, to, opts)
				stop()
				prog.wait()
				a.recordMove(ctx, c, "shard move", 0, shard, "", to, "", res, err)
				if err != nil {
					return moveInterrupted(err, res.MoveID)
				}
				a.printMove(res)
				return nil
			})(cmd, args)
		},
	}
	mv.Flags().StringVar(&to, "to", "", "target node")
	mv.Flags().Int64Var(&resume, "resume", 0, "continue the move with this id")
	mv.Flags().Int64Var(&abort, "abort", 0, "roll back the move with this id")
	f.register(mv, false)

	moves := &cobra.Command{
		Use:   "moves",
		Short: "List shard moves with their step and progress",
		Long: `List shard moves with their step and progress. A fence whose mover stopped
renewing its lease is released first (as routers do), so a move that needs
--resume says so.`,
		Example: `  pgtenant shard moves`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			if _, err := c.ReleaseExpiredFences(ctx); err != nil {
				fmt.Fprintf(a.stderr, "warning: %v\n", err)
			}
			list, err := a.mover(c, &f).List(ctx)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(movesJSON(list))
			}
			w := a.table("ID", "SHARD", "FROM", "TO", "METHOD", "STEP", "STATUS", "TABLES", "ROWS", "PAUSE", "ERROR")
			for _, i := range list {
				pause := "-"
				if i.Pause > 0 {
					pause = i.Pause.Round(time.Millisecond / 10).String()
				}
				row(w, i.ID, i.Shard, i.Source, i.Target, i.Method, i.Step, i.Status,
					fmt.Sprintf("%d/%d", i.Progress.TablesReady, i.Progress.Tables), i.Progress.Rows, pause, i.Error)
			}
			return w.Flush()
		}),
	}

	verify := &cobra.Command{
		Use:   "verify SHARD",
		Short: "Compare row counts and checksums of a moving shard on source and target",
		Long: `Compare each table's row count and checksum (sum of hashtextextended(row::text, 0))
between the source and the target of the shard's running move. While the move
is still catching up, recent writes may not have arrived yet; 'shard move'
compares again after the flip (the target at the flip against the frozen
source) unless --skip-verify is given.`,
		Example: `  pgtenant shard verify 17`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			shard, err := strconv.Atoi(args[0])
			if err != nil {
				return usagef("shard %q is not a number", args[0])
			}
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				rep, err := a.mover(c, &f).Verify(ctx, shard)
				if err != nil {
					return err
				}
				w := a.table("TABLE", "SOURCE ROWS", "TARGET ROWS", "MATCH")
				for _, t := range rep.Tables {
					row(w, t.Table, t.SourceRows, t.TargetRows, t.OK())
				}
				w.Flush()
				return rep.Err()
			})(cmd, args)
		},
	}

	cleanup := &cobra.Command{
		Use:   "cleanup",
		Short: "Drop the source schemas that finished moves kept renamed, and orphaned slots",
		Long: `Drop what moves left behind on their source nodes: the old schema each
finished move kept renamed (shard_NNNN_moved_ID), replication slots orphaned
while a source was down, the change queues (and triggers) of trigger-method
moves that ended without dropping them, and what a follower split's cleanup
did not finish. Irreversible: a kept schema is the shard's last copy on its
old node; run it once the moved shards serve well from their new nodes.`,
		Example: `  pgtenant shard cleanup`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			dropped, err := a.mover(c, &f).Cleanup(ctx)
			for _, d := range dropped {
				fmt.Fprintln(a.stdout, "dropped", d)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s dropped\n", plural(len(dropped), "object"))
			return nil
		}),
	}
	return []*cobra.Command{mv, moves, verify, cleanup}
}

func (a *app) printMove(r move.Result) {
	fmt.Fprintf(a.stdout, "shard %d moved from %s to %s (move %d): pause %s, %d rows, %d bytes, took %s, verified %v\n",
		r.Shard, r.From, r.To, r.MoveID, r.Pause.Round(time.Millisecond/10), r.Rows, r.Bytes, r.Duration.Round(time.Millisecond), r.Verified)
}

// moveInterrupted adds to the error of a move stopped half-way (Ctrl-C, a
// lost connection) the commands that finish or undo it: the move stays
// recorded as running, its steps done so far kept.
func moveInterrupted(err error, id int64) error {
	if !errors.Is(err, move.ErrInterrupted) {
		return err
	}
	ids := "ID"
	if id > 0 {
		ids = strconv.FormatInt(id, 10)
	}
	return fmt.Errorf("%w\nthe move is left as it stopped: finish it with `pgtenant shard move --resume %s`, or undo it with `pgtenant shard move --abort %s` (`pgtenant shard moves` lists the moves)", err, ids, ids)
}
