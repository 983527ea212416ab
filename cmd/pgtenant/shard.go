package main

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
)

func newShardCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "shard",
		Short: "Create and inspect shards (one Postgres schema each)",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "create",
		Short: "Create every missing shard, spread evenly over the nodes",
		Long: `Create every shard that does not exist yet: a schema shard_NNNN on the node
holding the fewest shards, and its row in the catalog. With 256 shards and
2 nodes each node gets 128. If migrations were applied before ('migrate up'
records its directory), new shards get every migration.`,
		Example: `  pgtenant shard create`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			created, err := c.CreateShards(ctx)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "%s created\n", plural(len(created), "shard"))
			if len(created) == 0 {
				return nil
			}
			dir, err := c.Meta(ctx, metaMigrationsDir)
			if err != nil || dir == "" {
				return err
			}
			fmt.Fprintf(a.stdout, "applying migrations from %s to the new shards\n", dir)
			return a.migrateUp(ctx, c, dir, created, 0)
		}),
	}, &cobra.Command{
		Use:   "list",
		Short: "List shards with their node, size and tenant count",
		Example: `  pgtenant shard list
  pgtenant shard list --json | jq -r 'sort_by(-.bytes) | .[:10][] | "\(.shard) \(.node) \(.bytes)"'   # biggest shards`,
		Args: cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			stats, err := c.ShardStats(ctx)
			if stats == nil && err != nil {
				return err
			}
			if a.json {
				if jerr := a.printJSON(shardsJSON(stats)); jerr != nil {
					return jerr
				}
			} else {
				w := a.table("SHARD", "SCHEMA", "NODE", "SIZE", "TENANTS", "STATE")
				for _, s := range stats {
					row(w, s.ID, s.Schema, s.Node, humanBytes(s.Bytes), s.Tenants, s.State)
				}
				w.Flush()
			}
			if err != nil {
				return fmt.Errorf("some sizes are unknown: %w", err)
			}
			return nil
		}),
	})
	return cmd
}
