package main

import (
	"context"
	"fmt"
	"os"

	"github.com/jackc/pgx/v5"
	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/access"
	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/tables"
)

func newAccessCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "access",
		Short: "Apply roles, grants and row-level security to every shard",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "apply",
		Short: "Apply the roles, grants and row-level security policies to every shard of every node",
		Long: `Compute what every shard must have from the catalog (the runtime role, the
roles of 'pgtenant role create', restricted users' roles, the tables registry
with its row-level security) and apply it to every shard schema of every node,
one transaction per node. It is idempotent: policies already right are left
alone. shard create, migrate up and shard move run it for the shards they
touch; run it yourself after changing a shard's tables by hand.`,
		Example: `  pgtenant access apply`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			return a.applyAccess(ctx, c, nil)
		}),
	})
	return cmd
}

// applyAccess applies the access plan to every node (only the given shards
// when shards is not nil) and prints a line per node.
func (a *app) applyAccess(ctx context.Context, c *catalog.Catalog, shards []placement.Shard) error {
	return a.applyAccessAs(ctx, c, shards, "")
}

// applyAccessAs is applyAccess with runtime as the runtime role instead of
// the recorded one (when not "").
func (a *app) applyAccessAs(ctx context.Context, c *catalog.Catalog, shards []placement.Shard, runtime string) error {
	var only func(int) bool
	if shards != nil {
		set := map[int]bool{}
		for _, s := range shards {
			set[s.ID] = true
		}
		only = func(id int) bool { return set[id] }
	}
	reps, err := access.ApplyRuntimeRole(ctx, c.Pool(), c.ResolveDSN, only, runtime)
	for _, r := range reps {
		fmt.Fprintf(a.stdout, "access: node %s: %s, %s under row-level security, %s changed\n", r.Node, plural(r.Schemas, "shard schema"), plural(r.Policies, "table"), plural(r.Changed, "policy"))
		if len(r.Missing) > 0 {
			fmt.Fprintf(a.stderr, "warning: node %s: %s with row-level security missing in some shards (e.g. %s); run migrate up\n", r.Node, plural(len(r.Missing), "registered table"), r.Missing[0])
		}
	}
	c.RecordOperation(ctx, "access apply", map[string]any{"nodes": len(reps)}, err)
	return err
}

// afterMigrate records the registry rules the migration files declare and
// applies roles, grants and policies to the migrated shards.
func (a *app) afterMigrate(ctx context.Context, c *catalog.Catalog, dir string, shards []placement.Shard) error {
	rules, err := tables.FromDir(os.DirFS(dir))
	if err != nil {
		return err
	}
	reg := tables.New(c.Pool())
	for _, t := range rules {
		if err := reg.Set(ctx, t); err != nil {
			return err
		}
	}
	if len(rules) > 0 {
		fmt.Fprintf(a.stdout, "tables registry: %s from migration annotations\n", plural(len(rules), "rule"))
	}
	return a.applyAccess(ctx, c, shards)
}

// accessChecks are node check's lines about row-level security on node n.
func (a *app) accessChecks(ctx context.Context, c *catalog.Catalog, plan access.Plan, n catalog.Node, shards []placement.Shard) []catalog.CheckResult {
	var mine []placement.Shard
	for _, s := range shards {
		if s.Node == n.Name {
			mine = append(mine, s)
		}
	}
	dsn, err := c.ResolveDSN(n.DSN)
	if err != nil {
		return []catalog.CheckResult{{Name: "row-level security", Status: catalog.CheckWarn, Detail: err.Error()}}
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return []catalog.CheckResult{{Name: "row-level security", Status: catalog.CheckWarn, Detail: err.Error()}}
	}
	defer conn.Close(context.Background())
	fs, err := plan.Check(ctx, conn, mine)
	if err != nil {
		return []catalog.CheckResult{{Name: "row-level security", Status: catalog.CheckWarn, Detail: err.Error()}}
	}
	out := make([]catalog.CheckResult, len(fs))
	for i, f := range fs {
		out[i] = catalog.CheckResult{Name: f.Name, Status: f.Status, Detail: f.Detail}
	}
	return out
}
