package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
)

func newOpsCmd(a *app) *cobra.Command {
	var limit int
	cmd := &cobra.Command{
		Use:     "ops",
		Short:   "Show the log of control-plane operations, newest first",
		Example: `  pgtenant ops --limit 20`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			if limit < 0 {
				return usagef("--limit %d: give a count (0 or more)", limit)
			}
			ops, err := c.Operations(ctx, limit)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(opsJSON(ops))
			}
			w := a.table("ID", "AT", "ACTOR", "OP", "OK", "DETAIL", "ERROR")
			for _, o := range ops {
				row(w, o.ID, o.At.Local().Format(time.DateTime), o.Actor, o.Op, o.OK, detailText(o.Detail), o.Error)
			}
			return w.Flush()
		}),
	}
	cmd.Flags().IntVar(&limit, "limit", 50, "how many entries")
	return cmd
}
