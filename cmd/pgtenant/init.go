package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
)

func newInitCmd(a *app) *cobra.Command {
	var shards int
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create (or upgrade) the catalog and fix the shard count",
		Long: `Create the catalog schema in the catalog database, or upgrade it in place,
and record the number of logical shards.

The shard count is a power of two from 1 to 65536 and never changes once
tenants are placed: tenants are hashed modulo the count. Choose generously
(256 is a good default): shards are cheap, and a node is relieved by moving
whole shards to a new one. Running init again with the same count is safe.`,
		Example: `  pgtenant init --catalog postgres://admin@localhost/pgtenant --shards 256`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			if err := c.Init(ctx, shards); err != nil {
				return err
			}
			v, _ := c.Version(ctx)
			fmt.Fprintf(a.stdout, "catalog ready: %s, schema version %d\n", plural(shards, "shard"), v)
			fmt.Fprintln(a.stdout, "next: pgtenant node add NAME DSN, then pgtenant shard create")
			return nil
		}),
	}
	cmd.Flags().IntVar(&shards, "shards", 256, "number of logical shards (power of two, 1..65536)")
	return cmd
}
