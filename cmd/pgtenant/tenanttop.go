package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/routeradmin"
	"github.com/pgtenant/pgtenant/internal/usage"
)

// tenantTopJSON is `tenant top --json`: the routers' sketches merged.
type tenantTopJSON struct {
	usage.Snapshot
	// Routers are the routers asked, with the error of those that did not answer.
	Routers []routeradmin.Answer `json:"routers"`
}

func newTenantTopCmd(a *app) *cobra.Command {
	var by string
	var limit int
	var routers []string
	cmd := &cobra.Command{
		Use:   "top",
		Short: "Show the busiest tenants, counted by every router",
		Long: `Show the busiest tenants: transactions, statements, errors, time on the
backend and bytes of rows returned, as counted by the routers since they
started, summed over every router.

Each router keeps counters for at most its usage capacity of tenants (1000 by
default) with the space-saving algorithm, weighted by backend time: a tenant
with more than 1/capacity of a router's backend time is always kept; when a
new tenant takes the place of the least busy one it inherits that one's time
(shown as overcount), and its other counters start from zero.

Routers are found in the catalog (those that run with --metrics-listen), or
named with --router.`,
		Example: `  pgtenant tenant top
  pgtenant tenant top --by errors --limit 5
  pgtenant tenant top --router http://10.0.0.5:9187 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			order, err := usage.ParseBy(by)
			if err != nil {
				return usageError{err}
			}
			ctx := cmd.Context()
			if len(routers) == 0 {
				c, err := a.openCatalog(cmd)
				if err != nil {
					return err
				}
				list, err := c.RouterAdminURLs(ctx, 10*time.Second)
				c.Close()
				if err != nil {
					return err
				}
				for _, r := range list {
					routers = append(routers, r.URL)
				}
				if len(routers) == 0 {
					return errors.New("no live router serves its admin endpoints: start routers with --metrics-listen, or name one with --router URL")
				}
			}
			snap, answers, err := routeradmin.Top(ctx, nil, routers, order)
			out := tenantTopJSON{Snapshot: snap, Routers: answers}
			answered := 0
			for _, r := range answers {
				if r.Error == "" {
					answered++
				}
			}
			if limit > 0 && len(out.Tenants) > limit {
				out.Tenants = out.Tenants[:limit]
			}
			if a.json {
				if err := a.printJSON(out); err != nil {
					return err
				}
			} else {
				a.printTenantTop(out, answered)
			}
			return err
		},
	}
	cmd.Flags().StringVar(&by, "by", "time", "order by time (on the backend), statements, errors, bytes or transactions")
	cmd.Flags().IntVar(&limit, "limit", 20, "at most this many tenants (0 = all the routers kept)")
	cmd.Flags().StringSliceVar(&routers, "router", nil, "a router's metrics address (http://host:port); repeat for several; default: every live router in the catalog")
	return cmd
}

func (a *app) printTenantTop(t tenantTopJSON, answered int) {
	w := a.table("TENANT", "BACKEND TIME", "TRANSACTIONS", "STATEMENTS", "ERRORS", "BYTES", "OVERCOUNT")
	for _, e := range t.Tenants {
		over := "-"
		if e.Overcount > 0 {
			over = fmt.Sprintf("%.3fs", e.Overcount)
		}
		row(w, plainID(e.Tenant), fmt.Sprintf("%.3fs", e.BackendSeconds), e.Transactions, e.Statements, e.Errors, humanBytes(e.Bytes), over)
	}
	w.Flush()
	fmt.Fprintf(a.stdout, "%d of %s answered; counted since %s; all tenants: %.3fs on backends, %s, %s evicted from the routers' sketches\n",
		answered, plural(len(t.Routers), "router"), t.Since.Local().Format(time.DateTime), t.Total.BackendSeconds, plural(t.Total.Transactions, "transaction"), plural(t.Evicted, "tenant"))
}
