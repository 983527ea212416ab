package main

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/tenantops"
)

func newTenantMoveCmd(a *app) *cobra.Command {
	var toShard, batch int
	var isolate bool
	var fenceTimeout, lockWait time.Duration
	cmd := &cobra.Command{
		Use:   "move ID --to-shard N | --isolate",
		Short: "Move one tenant's rows to another shard online, pausing only that tenant",
		Long: `Move one tenant to another shard while the app runs: row triggers on the
source queue the keys its transactions write, its rows are copied at a snapshot
and the queue is applied in rounds; then only this tenant is fenced (routers
hold its new transactions and wait for those in flight; other tenants of both
shards run on), a last round, the target's sequences are set past the source's,
row counts are compared, and the tenant's placement flips (it is placed by hand
from then on). Then its rows are deleted from the old shard in batches.

--isolate moves it to the lowest shard that has no tenant (the shard count is
fixed, so there is no new shard to make). Later signups whose id hashes to that
shard still land there: keep it alone by placing them elsewhere with
'tenant add --shard'.

Row ids: copied rows keep their ids. Before the copy the target's sequences are
set 1,000,000 past both shards' (ids handed out meanwhile cannot meet) and under
the fence past the source's. A row of the tenant whose key a row of the target
shard already holds stops the move before anything changes (23505, with the
keys): per-shard sequences repeat across shards, so moves into shared shards
need keys unique across shards (uuid, or a range per shard) or --isolate.

Creating the capture triggers takes a short lock on each of the source shard's
tables; a lock another session holds (autovacuum is waited out, a long
transaction or a held LOCK TABLE is not) is retried for up to --lock-wait, then
the move stops before anything changed with SQLSTATE 55P03, naming the table
and the session that holds it.

A failure before the flip undoes everything (the tenant stays where it was). If
the process dies after the flip, run the same command again: it deletes the old
rows. Writes made directly on the node (not through a router) are not fenced.`,
		Example: `  pgtenant tenant move bigcorp --isolate
  pgtenant tenant move acme --to-shard 17
  pgtenant tenant move acme --to-shard 17 --lock-wait 5m   # a busy shard: wait longer for its tables`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if cmd.Flags().Changed("to-shard") == isolate {
				return usagef("give one of --to-shard N or --isolate (not both)")
			}
			if lockWait <= 0 {
				return usagef("--lock-wait %s: give a positive duration such as 30s or 5m", lockWait)
			}
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				opts := tenantops.MoveOptions{ToShard: toShard, Isolate: isolate, Batch: batch, FenceTimeout: fenceTimeout, LockWait: lockWait,
					Progress: func(step string) { a.progress("tenant move", step, "tenant", args[0]) }}
				res, err := tenantops.New(c, a.logger).Move(ctx, args[0], opts)
				if err != nil {
					return err
				}
				if a.json {
					return a.printJSON(tenantMoveResultJSON(res))
				}
				fmt.Fprintf(a.stdout, "tenant %s moved: shard %d (node %s) -> shard %d (node %s)\n", strconv.Quote(res.Tenant), res.From, res.FromNode, res.To, res.ToNode)
				fmt.Fprintf(a.stdout, "rows copied %d, changes caught up %d (%d under the fence), old rows deleted %d; pause %s, total %s\n",
					res.Copied, res.CaughtUp, res.FinalRound, res.Deleted, res.Pause.Round(time.Microsecond), res.Duration.Round(time.Millisecond))
				return nil
			})(cmd, args)
		},
	}
	cmd.Flags().IntVar(&toShard, "to-shard", 0, "the shard to move the tenant to")
	cmd.Flags().BoolVar(&isolate, "isolate", false, "move the tenant to a shard without tenants")
	cmd.Flags().IntVar(&batch, "batch", 5000, "rows deleted per transaction from the old shard")
	cmd.Flags().DurationVar(&fenceTimeout, "fence-timeout", 10*time.Second, "how long to wait for every router to hold the tenant")
	cmd.Flags().DurationVar(&lockWait, "lock-wait", time.Minute, "how long to retry the lock on the source's tables that creating the capture triggers needs, before giving up (55P03)")
	return cmd
}
