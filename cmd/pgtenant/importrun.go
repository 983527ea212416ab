package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/importer"
)

// parseRate reads a byte rate such as 50MB, 800kB or 1048576 (per second).
func parseRate(s string) (int64, error) {
	if s == "" || s == "0" {
		return 0, nil
	}
	mult := int64(1)
	u := strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(s, "/s"), "B"))
	switch {
	case strings.HasSuffix(u, "K"):
		mult, u = 1<<10, strings.TrimSuffix(u, "K")
	case strings.HasSuffix(u, "M"):
		mult, u = 1<<20, strings.TrimSuffix(u, "M")
	case strings.HasSuffix(u, "G"):
		mult, u = 1<<30, strings.TrimSuffix(u, "G")
	}
	n, err := strconv.ParseFloat(u, 64)
	if err != nil || n < 0 {
		return 0, usagef("--max-rate %q: give bytes per second, e.g. 50MB or 800kB", s)
	}
	return int64(n * float64(mult)), nil
}

func newImportStartCmd(a *app) *cobra.Command {
	var parallel int
	var rate string
	var noFollow bool
	var method string
	cmd := &cobra.Command{
		Use:   "start [--parallel 4] [--max-rate 50MB] [--no-follow] [--method logical|trigger]",
		Short: "Copy every tenant's rows to its shard, then follow the legacy database's changes",
		Long: `Copy every tenant's rows to its shard on the shard's node, then follow the
legacy database's changes until interrupted. The router keeps serving every
tenant from the legacy database meanwhile.

The first run creates, on the legacy database, the publication
pgtenant_import, a marker table (schema pgtenant_import) and a logical
replication slot; tables whose replica identity lacks the tenant column get
REPLICA IDENTITY FULL (import finish gives it back). Each legacy table is
read once at the slot's snapshot (parents first; a child table joined to its
parent, which gives each row its tenant), in ranges of ~64 MB by --parallel
workers (all together at most --max-rate bytes per second), each row sent to
its tenant's shard by COPY; the shard tables' plain indexes are built after
their rows are in. Reference tables are loaded on every node's shared schema.
Progress per node, with an ETA, goes to stderr.

Killed, run it again: the tables complete on the nodes are kept (and brought
up to date by the change stream), the others are emptied and copied again at
a new snapshot, and the stream resumes where each node left off. Then
'pgtenant import verify' and 'pgtenant import cutover'.

--method trigger, for a legacy database without logical replication (any
wal_level, no REPLICATION, no superuser: the tables' owner): instead of the
publication and the slot, row triggers on the tenant tables capture every
change into a queue table (schema pgtenant_import), the rows are copied at a
snapshot taken after the triggers exist, and the queue is applied to the
shards in rounds. TRUNCATE of those tables is refused while the import runs.
Give it on the first run (or to import init); later runs keep the method.`,
		Example: `  pgtenant import start --parallel 4 --max-rate 80MB`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			maxRate, err := parseRate(rate)
			if err != nil {
				return err
			}
			im := importer.New(c, a.logger)
			im.SetSharedSchema(a.sharedSchema())
			if method != "" {
				if err := im.SetMethod(ctx, method); err != nil {
					return err
				}
			}
			st, err := im.Status(ctx)
			if err != nil {
				return err
			}
			if st.State == importer.StateServing || st.State == importer.StateCopying {
				var mu sync.Mutex
				var last time.Time
				res, err := im.Start(ctx, importer.StartOptions{Parallel: parallel, MaxRate: maxRate, Progress: func(ps []importer.NodeProgress) {
					mu.Lock()
					defer mu.Unlock()
					if time.Since(last) < 2*time.Second {
						return
					}
					last = time.Now()
					for _, p := range ps {
						eta := "-"
						if p.ETA > 0 {
							eta = p.ETA.Round(time.Second).String()
						}
						fmt.Fprintf(a.stderr, "copy: node %s %d/%d tables, %s, %s/s, ETA %s\n", p.Node, p.TablesDone, p.Tables,
							humanBytes(p.Bytes), humanBytes(int64(float64(p.Bytes)/max(p.Elapsed.Seconds(), 0.001))), eta)
					}
				}})
				if err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "copied %s (%s, %d kept from before), %s, %s in %s (%s/s); slot %s from %s\n", plural(res.Copied, "shard"), plural(res.Tables, "table"), res.TablesKept,
					plural(res.Rows, "row"), humanBytes(res.Bytes), res.Duration.Round(time.Millisecond), humanBytes(int64(float64(res.Bytes)/max(res.Duration.Seconds(), 0.001))), res.Slot, res.StartLSN)
				if len(res.Reference) > 0 {
					fmt.Fprintf(a.stdout, "reference tables loaded on every node: %s\n", strings.Join(res.Reference, ", "))
				}
			}
			if noFollow {
				return nil
			}
			fmt.Fprintln(a.stdout, "following the legacy database's changes; interrupt to stop (run import start again to resume)")
			err = im.Follow(ctx)
			if errors.Is(err, context.Canceled) {
				return nil
			}
			return err
		}),
	}
	cmd.Flags().IntVar(&parallel, "parallel", 4, "table ranges copied at once (workers, each with a legacy connection and one per node)")
	cmd.Flags().StringVar(&rate, "max-rate", "", "at most this many bytes per second read from the legacy database, e.g. 50MB (default: no limit)")
	cmd.Flags().BoolVar(&noFollow, "no-follow", false, "copy, then exit without following changes")
	cmd.Flags().StringVar(&method, "method", "", "logical (a replication slot) or trigger (capture triggers, no logical replication); default: the import's (import init --method)")
	return cmd
}

func newImportVerifyCmd(a *app) *cobra.Command {
	var shards []int
	cmd := &cobra.Command{
		Use:   "verify [--shard N]...",
		Short: "Compare row counts and checksums per tenant per table between the legacy database and the shards",
		Long: `Compare, for every tenant of the copied shards (or of --shard N), each table's
row count and a checksum of its rows between the legacy database and the
shard. While import start follows the changes, both sides are read at one
point of the legacy database's history (the stream holds there while the
shards are read), so the app keeps writing and a difference is a real one.
Shards cut over are not compared. Exit status 1 on a difference.`,
		Example: `  pgtenant import verify              # every copied shard
  pgtenant import verify --shard 7    # one shard, e.g. before its cutover`,
		Args: cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			var which []int
			if len(shards) > 0 {
				which = shards
			}
			rep, err := importer.New(c, a.logger).Verify(ctx, which)
			if err != nil {
				return err
			}
			for _, m := range rep.Mismatches {
				fmt.Fprintln(a.stdout, m.String())
			}
			fmt.Fprintf(a.stdout, "%s, %s, %s, %s compared; %s\n", plural(rep.Shards, "shard"), plural(rep.Tenants, "tenant"), plural(rep.Tables, "table"), plural(rep.Rows, "row"), plural(len(rep.Mismatches), "difference"))
			printImportLeftovers(a, rep.Unimported, rep.Rejects)
			if !rep.OK() {
				return fmt.Errorf("import verify: %s with differences, %s not in the import, %s not resolved",
					plural(len(rep.Mismatches), "tenant table"), plural(len(rep.Unimported), "legacy table"), plural(len(rep.Rejects), "rejected change"))
			}
			return nil
		}),
	}
	cmd.Flags().IntSliceVar(&shards, "shard", nil, "verify only this shard (repeatable)")
	return cmd
}

func newImportCutoverCmd(a *app) *cobra.Command {
	var opts importer.CutoverOptions
	var acceptRejects bool
	cmd := &cobra.Command{
		Use:   "cutover (--shard N... | --all) [--parallel K]",
		Short: "Serve shards from their nodes instead of the legacy database, pausing only their tenants",
		Long: `Cut shards over from the legacy database to their nodes while import start
follows the changes. Each shard is fenced like a shard move: routers hold its
tenants' new transactions and let running ones end, a marker written on the
legacy database travels through the stream to the node, the shard's sequences
are set past the legacy ones, and the catalog flips the shard to its node; the
held transactions then run there. Unless --no-rollback, each shard keeps a
logical slot on its node until import finish, from which import rollback reads
the writes it takes from then on: a node needs max_replication_slots of at
least its shard count plus a few (PostgreSQL's default is 10): a cutover
whose nodes lack the free slots is refused before any shard is fenced
(53400, naming each node and the setting it needs). A canary first, then
the rest:

  pgtenant import cutover --shard 7
  pgtenant import cutover --all

By default shards are cut over one at a time, so each shard's pause is the
shortest (tens of milliseconds). --parallel K cuts K over at once: the whole
cutover ends sooner, and each shard's pause is longer (bench/README.md,
importbench).

From a schema per tenant (import init --schema-per-tenant) a shard's tables
hold many tenants' rows: the app's statements must filter by the tenant column
before its tenants are served from there, and --tenant-filtered says they do.`,
		Example: `  pgtenant import cutover --shard 7                  # a canary
  pgtenant import cutover --shard 8 --shard 9        # a few more
  pgtenant import cutover --all                      # the rest, one at a time
  pgtenant import cutover --all --parallel 4         # or 4 at a time: sooner done, longer pauses`,
		Args: cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			if opts.All == (len(opts.Shards) > 0) {
				return usagef("give --shard N (repeatable) or --all")
			}
			im := importer.New(c, a.logger)
			if err := checkImportLeftovers(ctx, a, im, "import cutover", opts.All, opts.Shards, acceptRejects); err != nil {
				return err
			}
			res, err := im.Cutover(ctx, opts)
			for _, r := range res {
				if r.Err != nil {
					fmt.Fprintf(a.stdout, "shard %d: failed, still on the legacy database: %v\n", r.Shard, r.Err)
					continue
				}
				fmt.Fprintf(a.stdout, "shard %d: cut over to node %s, pause %s (routers held it at %s, marker applied at %s, flipped at %s; stream lag before %s)\n", r.Shard, r.Node,
					r.Pause.Round(time.Microsecond*100), r.Fenced.Round(time.Microsecond*100), r.Marked.Round(time.Microsecond*100),
					r.Flipped.Round(time.Microsecond*100), r.Lag.Round(time.Microsecond*100))
			}
			return err
		}),
	}
	cmd.Flags().IntSliceVar(&opts.Shards, "shard", nil, "shard to cut over (repeatable)")
	cmd.Flags().BoolVar(&opts.All, "all", false, "every copied shard not cut over yet")
	cmd.Flags().IntVar(&opts.Parallel, "parallel", 1, "shards cut over at once (1: one at a time, the shortest pause per shard)")
	cmd.Flags().BoolVar(&opts.TenantFiltered, "tenant-filtered", false, "for a legacy database with a schema per tenant: confirm that the app's statements filter by the tenant column (a shard's tables hold many tenants' rows); such a cutover is refused without it")
	cmd.Flags().BoolVar(&opts.NoRollback, "no-rollback", false, "keep no reverse stream (a logical slot on the node per shard until import finish): import rollback then refuses the shard")
	cmd.Flags().BoolVar(&acceptRejects, "accept-rejects", false, "drop on purpose the legacy changes the stream rejected and are not resolved (import status lists them; their rows stay on the legacy database only)")
	return cmd
}

// checkImportLeftovers refuses a cutover of every shard (all) while a
// legacy table is neither in the import nor excluded, or a rejected change
// is not resolved (unless acceptRejects drops them), and a cutover of
// shards while a rejected change of one of their tenants is not resolved;
// a cutover of some shards only names the tables not in the import.
func checkImportLeftovers(ctx context.Context, a *app, im *importer.Importer, op string, all bool, shards []int, acceptRejects bool) error {
	if all {
		if err := im.CheckUnimported(ctx, op+" --all"); err != nil {
			return err
		}
	} else if ts, err := im.Unimported(ctx); err != nil {
		return err
	} else if len(ts) > 0 {
		fmt.Fprintf(a.stderr, "warning: table(s) %s of the legacy database are not in the import; import cutover --all and import finish refuse until each is excluded (pgtenant import exclude TABLE)\n", strings.Join(ts, ", "))
	}
	if acceptRejects {
		rs, err := im.AcceptRejects(ctx, op)
		if err == nil && len(rs) > 0 {
			fmt.Fprintf(a.stdout, "%s dropped on purpose; their rows stay on the legacy database only\n", plural(len(rs), "rejected change"))
		}
		return err
	}
	var on []int
	if !all {
		on = shards
	}
	return im.CheckRejects(ctx, op, on)
}

func newImportStatusCmd(a *app) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "status [--all]",
		Short: "The import's state, the stream's lag and every shard's state",
		Example: `  pgtenant import status          # state, lag, shard counts, tables left out, rejects
  pgtenant import status --all    # and one line per shard`,
		Args: cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			st, err := importer.New(c, a.logger).Status(ctx)
			if err != nil {
				return err
			}
			lag := "-"
			if st.Lag >= 0 {
				lag = humanBytes(st.Lag)
			}
			if st.Method == importer.MethodTrigger {
				fmt.Fprintf(a.stdout, "import from node %s schema %s: %s; method trigger, queue about %d changes (following: %v)\n", st.LegacyNode, st.LegacySchema, st.State, max(st.Lag, 0), st.SlotActive)
			} else {
				fmt.Fprintf(a.stdout, "import from node %s schema %s: %s; slot %s (streaming: %v), lag %s\n", st.LegacyNode, st.LegacySchema, st.State, st.Slot, st.SlotActive, lag)
			}
			fmt.Fprintf(a.stdout, "shards: %d legacy, %d copied, %d cut over\n", st.Counts[importer.ShardLegacy]+st.Counts[importer.ShardCopying],
				st.Counts[importer.ShardCopied], st.Counts[importer.ShardCutover])
			printImportLeftovers(a, st.Unimported, st.Rejects)
			if !all {
				return nil
			}
			w := a.table("SHARD", "NODE", "STATE", "ROWS", "BYTES", "COPY LSN", "PAUSE")
			for _, s := range st.Shards {
				pause := "-"
				if s.PauseMS != nil {
					pause = fmt.Sprintf("%.1f ms", *s.PauseMS)
				}
				row(w, s.Shard, s.Node, s.State, s.Rows, humanBytes(s.Bytes), s.CopyLSN, pause)
			}
			return w.Flush()
		}),
	}
	cmd.Flags().BoolVar(&all, "all", false, "list every shard")
	return cmd
}

// printImportLeftovers names the legacy tables not in the import and the
// rejected changes not resolved.
func printImportLeftovers(a *app, unimported []string, rejects []importer.Reject) {
	if len(unimported) > 0 {
		fmt.Fprintf(a.stdout, "not in the import: table(s) %s of the legacy database (created after import init, or registered after import start); exclude each on purpose: pgtenant import exclude TABLE\n", strings.Join(unimported, ", "))
	}
	if len(rejects) > 0 {
		fmt.Fprintf(a.stdout, "rejected changes not resolved: %d (fix the rows on the legacy database, or drop them: import finish --accept-rejects)\n", len(rejects))
		for i, r := range rejects {
			if i == 20 {
				fmt.Fprintf(a.stdout, "  ... and %d more\n", len(rejects)-20)
				break
			}
			fmt.Fprintf(a.stdout, "  %s\n", r)
		}
	}
}

func newImportFinishCmd(a *app) *cobra.Command {
	var opts importer.FinishOptions
	cmd := &cobra.Command{
		Use:   "finish",
		Short: "End an import whose shards are all cut over",
		Long: `End an import whose shards are all cut over: drop the slot (stopping the
stream), the publication and the marker schema on the legacy database (with
--method trigger: the capture triggers and the queue), give back the replica
identities import start changed, drop the nodes' rollback slots (or capture
triggers), and remove the legacy node from the catalog. The legacy database keeps its tables and rows, untouched,
for you to archive.

Refused while a table of the legacy schema is neither in the import nor
excluded (pgtenant import exclude TABLE), or while a change the stream
rejected (a row without a tenant, or with a tenant not registered) is not
resolved: fix the row on the legacy database, or --accept-rejects.`,
		Example: `  pgtenant import status --all && pgtenant import finish`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			if err := importer.New(c, a.logger).FinishWith(ctx, opts); err != nil {
				return err
			}
			fmt.Fprintln(a.stdout, "import finished; the legacy database is no longer used")
			return nil
		}),
	}
	cmd.Flags().BoolVar(&opts.AcceptRejects, "accept-rejects", false, "drop on purpose the legacy changes the stream rejected and are not resolved (import status lists them; their rows stay on the legacy database only)")
	return cmd
}
