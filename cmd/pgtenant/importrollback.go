package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/importer"
)

func newImportRollbackCmd(a *app) *cobra.Command {
	var opts importer.RollbackOptions
	cmd := &cobra.Command{
		Use:   "rollback --shard N",
		Short: "Serve a cut-over shard from the legacy database again, with the writes it took since",
		Long: `Move a cut-over shard back to the legacy database while import start follows
the changes: the shard's writes on its node since the cutover are read from the
node (a logical slot the cutover created, or, for an import by --method
trigger onto a node without logical replication, capture triggers the cutover
installed on the node's shard tables) and written back to the legacy tables,
then the shard is fenced like a cutover, the last writes come through,
the legacy sequences are set past the shard's id block on the node (ids stay
unique both ways; a key the legacy database holds stops the rollback with
23505 before anything is lost), and the catalog serves the shard from
the legacy database again. Its copy on the node is kept up to date by the
change stream from then on, so it can be cut over again later. Possible until
import finish. Killed, run it again: it resumes where it stopped (after its
flip, it drops what it left on the node).`,
		Example: `  pgtenant import rollback --shard 7`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			if opts.Shard < 0 {
				return usagef("give --shard N")
			}
			r, err := importer.New(c, a.logger).Rollback(ctx, opts)
			if err != nil {
				return err
			}
			if r.Leftovers {
				fmt.Fprintf(a.stdout, "shard %d: back on the legacy database already; dropped the capture or slot an earlier rollback left on node %s\n", r.Shard, r.Node)
				return nil
			}
			fmt.Fprintf(a.stdout, "shard %d: back on the legacy database with %d changes written back, pause %s (routers held it at %s, marker back at %s, flipped at %s; reverse lag before %s)\n",
				r.Shard, r.Changes, r.Pause.Round(time.Microsecond*100), r.Fenced.Round(time.Microsecond*100), r.Marked.Round(time.Microsecond*100),
				r.Flipped.Round(time.Microsecond*100), r.Lag.Round(time.Microsecond*100))
			return nil
		}),
	}
	cmd.Flags().IntVar(&opts.Shard, "shard", -1, "shard to roll back")
	return cmd
}
