package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/nodestats"
)

// `node stats --json` prints []nodestats.Result: {node, error, stats}.

func newNodeStatsCmd(a *app) *cobra.Command {
	var opts nodestats.Options
	cmd := &cobra.Command{
		Use:   "stats [NAME]",
		Short: "Show nodes' health: cache hit rates, connections, lag, vacuum, slow statements",
		Long: `Show the health of every node (or the one named), read from Postgres' own
statistics views as the node DSN's role, every node at once:

  cache hit rate     heap blocks found in shared buffers, pg_statio_user_tables
  index hit rate     the same for indexes, pg_statio_user_indexes
  database hit rate  every block of the database, pg_stat_database
  connections        sessions by state (pg_stat_activity) and the server's total
  longest transaction  its age, state and the start of its query
  replication        slots and their lag in bytes, followers and replay lag
  size, disk free    pg_database_size; free space only where visible
  vacuum             dead tuples, the tables with the most
  statements         the most time-consuming, from pg_stat_statements if installed

Counters run since the reset time shown (pg_stat_reset) or, when never reset,
since the database was created (a clean restart keeps them).
The node's role needs no superuser: without pg_monitor, other roles' sessions
are counted but their state, transaction and query show as "not visible", and
so do their statements' texts. Disk free is visible only for a role that may
read data_directory, on the server's own machine.

A node that does not answer is reported with its error; the command then
exits 1.`,
		Example: `  pgtenant node stats
  pgtenant node stats node2 --tables 20
  pgtenant node stats --json | jq '.[] | {node, cache: .stats.cache.rate}'`,
		Args: cobra.MaximumNArgs(1),
		RunE: a.withCatalogArgs(func(ctx context.Context, c *catalog.Catalog, args []string) error {
			var nodes []catalog.Node
			if len(args) == 1 {
				n, err := c.Node(ctx, args[0])
				if err != nil {
					return err
				}
				nodes = []catalog.Node{n}
			} else {
				var err error
				if nodes, err = c.Nodes(ctx); err != nil {
					return err
				}
			}
			targets := make([]nodestats.Node, len(nodes))
			for i, n := range nodes {
				dsn, err := c.ResolveDSN(n.DSN)
				if err != nil {
					return fmt.Errorf("node %s: %w", n.Name, err)
				}
				targets[i] = nodestats.Node{Name: n.Name, DSN: dsn}
			}
			out := nodestats.CollectNodes(ctx, targets, opts)
			failed := 0
			for _, r := range out {
				if r.Stats == nil {
					failed++
				}
			}
			if a.json {
				if err := a.printJSON(out); err != nil {
					return err
				}
			} else {
				for i, r := range out {
					if i > 0 {
						fmt.Fprintln(a.stdout)
					}
					printNodeStats(a.stdout, r)
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d of %s did not answer", failed, plural(len(out), "node"))
			}
			return nil
		}),
	}
	cmd.Flags().IntVar(&opts.Tables, "tables", 5, "list this many tables with the most dead tuples")
	cmd.Flags().IntVar(&opts.Statements, "statements", 5, "list this many statements from pg_stat_statements")
	cmd.Flags().IntVar(&opts.QueryChars, "query-chars", 80, "cut query texts to this many characters")
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", nodestats.DefaultTimeout, "give up on a node after this long")
	return cmd
}

// withCatalogArgs is withCatalog for a command that takes arguments.
func (a *app) withCatalogArgs(fn func(ctx context.Context, c *catalog.Catalog, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error { return fn(ctx, c, args) })(cmd, args)
	}
}

func percent(r *float64) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f %%", *r*100)
}

func lagBytes(p *int64) string {
	if p == nil {
		return "-"
	}
	return humanBytes(*p)
}

// printNodeStats writes one node's health as a two-column table and, below
// it, tables of slots, followers, tables to vacuum and statements.
func printNodeStats(w io.Writer, r nodestats.Result) {
	if r.Stats == nil {
		fmt.Fprintf(w, "node %s: %s\n", r.Node, r.Error)
		return
	}
	s := r.Stats
	since := "counters never reset"
	if s.StatsReset != nil {
		since = "counters since " + s.StatsReset.Local().Format(time.DateTime)
	}
	fmt.Fprintf(w, "node %s: database %s as %s, PostgreSQL %s%s; %s\n", r.Node, s.Database, s.User,
		strings.Fields(s.ServerVersion + " ?")[0], map[bool]string{true: " (standby)"}[s.InRecovery], since)
	t := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	hr := func(h nodestats.HitRate) string {
		return fmt.Sprintf("%s\t(%d hits, %d reads)", percent(h.Rate), h.Hit, h.Read)
	}
	row(t, "  cache hit rate", hr(s.Cache))
	row(t, "  index hit rate", hr(s.IndexCache))
	row(t, "  database hit rate", hr(s.DatabaseCache))
	states := make([]string, 0, len(s.Connections.ByState))
	for st, n := range s.Connections.ByState {
		states = append(states, fmt.Sprintf("%d %s", n, st))
	}
	sort.Strings(states)
	row(t, "  connections", fmt.Sprintf("%d\t(%s; %d waiting on locks; %d of max %d on the server)", s.Connections.Database,
		strings.Join(states, ", "), s.Connections.WaitingOnLocks, s.Connections.Server, s.Connections.MaxConnections))
	if lt := s.LongestTransaction; lt != nil {
		row(t, "  longest transaction", fmt.Sprintf("%s\t(pid %d, %s, %s: %s)", (time.Duration(lt.AgeSeconds*1e9)).Round(time.Millisecond),
			lt.PID, lt.User, lt.State, oneLine(lt.Query)))
	} else {
		row(t, "  longest transaction", "none open")
	}
	row(t, "  database size", humanBytes(s.DatabaseBytes))
	if s.Disk.FreeBytes != nil {
		row(t, "  disk free", fmt.Sprintf("%s\t(of %s, %s)", humanBytes(*s.Disk.FreeBytes), humanBytes(*s.Disk.TotalBytes), s.Disk.Path))
	} else {
		row(t, "  disk free", s.Disk.NotVisible)
	}
	row(t, "  dead tuples", fmt.Sprintf("%d\t(%d live; %d table(s) past their autovacuum threshold)", s.Vacuum.DeadTuples, s.Vacuum.LiveTuples, s.Vacuum.TablesDue))
	row(t, "  replication slots", fmt.Sprint(len(s.Slots)))
	row(t, "  followers", fmt.Sprint(len(s.Followers)))
	t.Flush()

	if len(s.Slots) > 0 {
		t := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		row(t, "  SLOT", "TYPE", "DATABASE", "ACTIVE", "WAL", "LAG", "RETAINED")
		for _, sl := range s.Slots {
			row(t, "  "+sl.Name, sl.Type, dash(sl.Database), fmt.Sprint(sl.Active), dash(sl.WALStatus), lagBytes(sl.LagBytes), lagBytes(sl.RetainedBytes))
		}
		t.Flush()
	}
	if len(s.Followers) > 0 {
		t := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		row(t, "  FOLLOWER", "KIND", "SLOT", "STATE", "SEND LAG", "REPLAY LAG", "REPLAY LAG TIME")
		for _, f := range s.Followers {
			lag := "-"
			if f.ReplayLagSeconds != nil {
				lag = time.Duration(*f.ReplayLagSeconds * 1e9).Round(time.Millisecond).String()
			}
			row(t, fmt.Sprintf("  %s (pid %d)", dash(f.ApplicationName), f.PID), f.Kind, dash(f.Slot), dash(f.State), lagBytes(f.SentLagBytes), lagBytes(f.ReplayLagBytes), lag)
		}
		t.Flush()
	}
	if len(s.Vacuum.Tables) > 0 && s.Vacuum.Tables[0].DeadTuples > 0 {
		t := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		row(t, "  TABLE", "DEAD", "LIVE", "THRESHOLD", "LAST AUTOVACUUM")
		for _, tv := range s.Vacuum.Tables {
			if tv.DeadTuples == 0 {
				break
			}
			last := "never"
			if tv.LastAutovacuum != nil {
				last = tv.LastAutovacuum.Local().Format(time.DateTime)
			}
			due := ""
			if tv.Due {
				due = " (due)"
			}
			row(t, "  "+tv.Table, fmt.Sprint(tv.DeadTuples), fmt.Sprint(tv.LiveTuples), fmt.Sprint(tv.Threshold)+due, last)
		}
		t.Flush()
	}
	if s.Statements.Status != "" {
		fmt.Fprintf(w, "  statements: %s\n", s.Statements.Status)
	} else if len(s.Statements.Top) > 0 {
		t := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		row(t, "  TOTAL", "CALLS", "MEAN", "USER", "STATEMENT")
		for _, st := range s.Statements.Top {
			row(t, fmt.Sprintf("  %.1f ms", st.TotalMS), fmt.Sprint(st.Calls), fmt.Sprintf("%.2f ms", st.MeanMS), st.User, oneLine(st.Query))
		}
		t.Flush()
	}
	for _, n := range s.Notes {
		fmt.Fprintf(w, "  note: %s\n", n)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine folds a query's white space so it fits a table row.
func oneLine(q string) string {
	return strings.Join(strings.Fields(q), " ")
}
