package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/shared"
)

func newExtensionCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "extension",
		Short: "Install Postgres extensions in the shared schema of every node",
		Long: `Install Postgres extensions (citext, pgcrypto, uuid-ossp, PostGIS, ...) in the
shared schema of every node (public by default). A shard's search_path puts the
shared schema after the shard's own, so migrations and every tenant's queries
can use the extensions' types and functions. Installed extensions are recorded
in the catalog: 'node add' installs them on the new node too.`,
	}
	var schema string
	add := &cobra.Command{
		Use:   "add NAME",
		Short: "Install an extension on every node (idempotent)",
		Long: `Run CREATE EXTENSION IF NOT EXISTS NAME WITH SCHEMA --schema on every node,
as the node's role (an untrusted extension needs a superuser or the server's
permission), and, once every node has it, record it in the catalog so that
'node add' installs it on later nodes. Each node that fails is named (the
others keep the extension); run it again once the cause is fixed.

Undo: pgtenant has none: DROP EXTENSION on each node yourself (the catalog's
record stays, so 'node add' would install it again).`,
		Example: `  pgtenant extension add citext
  pgtenant extension add pgcrypto --schema public`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
				nodes, err := sharedNodes(ctx, c)
				if err != nil {
					return err
				}
				name := args[0]
				err = shared.AddExtension(ctx, nodes, name, schema)
				c.RecordOperation(ctx, "extension add", map[string]any{"extension": name, "schema": schema}, err)
				if err != nil {
					return fmt.Errorf("extension add %s: %w", name, err)
				}
				if err := c.RecordExtension(ctx, name, schema); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "extension %s installed in schema %s on %s\n", name, schema, plural(len(nodes), "node"))
				return nil
			})(cmd, args)
		},
	}
	add.Flags().StringVar(&schema, "schema", shared.DefaultSchema, "the shared schema to install it in")
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the recorded extensions and where each node has them",
		Example: `  pgtenant extension list`,
		Args:    cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			recorded, err := c.Extensions(ctx)
			if err != nil {
				return err
			}
			nodes, err := sharedNodes(ctx, c)
			if err != nil {
				return err
			}
			w := a.table("EXTENSION", "SCHEMA", "NODE", "VERSION")
			missing := 0
			for _, n := range nodes {
				have := map[string]shared.Extension{}
				exts, err := shared.Extensions(ctx, n)
				if err != nil {
					w.Flush()
					return err
				}
				for _, e := range exts {
					have[e.Name] = e
				}
				for _, r := range recorded {
					e, ok := have[r.Name]
					switch {
					case !ok:
						missing++
						row(w, r.Name, r.Schema, n.Name, "MISSING")
					case e.Schema != r.Schema:
						missing++
						row(w, r.Name, r.Schema, n.Name, e.Version+" (in schema "+e.Schema+")")
					default:
						row(w, r.Name, r.Schema, n.Name, e.Version)
					}
				}
			}
			w.Flush()
			if missing > 0 {
				return fmt.Errorf("%s missing or misplaced on some node; run `pgtenant extension add NAME` again", plural(missing, "recorded extension"))
			}
			return nil
		}),
	}
	cmd.AddCommand(add, list)
	return cmd
}

// sharedNodes lists the registered nodes for a fan-out, their DSNs'
// secret references resolved.
func sharedNodes(ctx context.Context, c *catalog.Catalog) ([]shared.Node, error) {
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]shared.Node, len(nodes))
	for i, n := range nodes {
		dsn, err := c.ResolveDSN(n.DSN)
		if err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		out[i] = shared.Node{Name: n.Name, DSN: dsn}
	}
	return out, nil
}

// resolvedDSN is a stored node DSN with its secret references ($NAME)
// resolved, or as stored when one is not set: connecting then fails and
// says why.
func resolvedDSN(c *catalog.Catalog, dsn string) string {
	if r, err := c.ResolveDSN(dsn); err == nil {
		return r
	}
	return dsn
}

// installExtensions gives a newly added node the recorded extensions.
func (a *app) installExtensions(ctx context.Context, c *catalog.Catalog, name, dsn string) error {
	exts, err := c.Extensions(ctx)
	if err != nil {
		return err
	}
	for _, e := range exts {
		if err := shared.AddExtension(ctx, []shared.Node{{Name: name, DSN: dsn}}, e.Name, e.Schema); err != nil {
			return fmt.Errorf("install recorded extension %s: %w", e.Name, err)
		}
		fmt.Fprintf(a.stdout, "extension %s installed in schema %s\n", e.Name, e.Schema)
	}
	return nil
}

// missingObjectHint explains a migration error about a type or function
// that does not exist (42704, 42883): it may come from an extension that is
// not installed in the shared schema. It returns "" for other errors.
func missingObjectHint(err error) string {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || (pe.Code != "42704" && pe.Code != "42883") || !strings.Contains(pe.Message, "does not exist") {
		return ""
	}
	return "\nif it comes from an extension (citext, pgcrypto, uuid-ossp, PostGIS, ...), install it on every node with `pgtenant extension add NAME`: shard migrations find it in the shared schema (" + shared.DefaultSchema + ")"
}

// checkExtensions prints whether a node has every recorded extension in its
// schema, as node check's other lines, and reports whether it has.
func (a *app) checkExtensions(ctx context.Context, c *catalog.Catalog, name, dsn string) bool {
	recorded, err := c.Extensions(ctx)
	if err != nil || len(recorded) == 0 {
		return true // nothing recorded (or an older catalog): nothing to check
	}
	exts, err := shared.Extensions(ctx, shared.Node{Name: name, DSN: dsn})
	if err != nil {
		fmt.Fprintf(a.stdout, "%-5s %s extensions: %v\n", catalog.CheckFail, name, err)
		return false
	}
	have := map[string]string{}
	for _, e := range exts {
		have[e.Name] = e.Schema
	}
	var missing []string
	for _, r := range recorded {
		if have[r.Name] != r.Schema {
			missing = append(missing, r.Name+" (in "+r.Schema+")")
		}
	}
	if len(missing) > 0 {
		fmt.Fprintf(a.stdout, "%-5s %s extensions: missing %s; run `pgtenant extension add NAME`\n", catalog.CheckFail, name, strings.Join(missing, ", "))
		return false
	}
	fmt.Fprintf(a.stdout, "%-5s %s extensions: all %d recorded\n", catalog.CheckOK, name, len(recorded))
	return true
}
