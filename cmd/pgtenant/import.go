package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/importer"
)

func newImportCmd(a *app) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "import",
		Short: "Bring an existing database onto pgtenant while the app keeps running",
		Long: `Bring an existing single database (the legacy database) onto pgtenant, with
no app change beyond DATABASE_URL:

  1. pgtenant import init --from DSN    check it, then serve every shard from it:
                                        point the app at the router (undo: point it back)
  2. pgtenant import schema --dir DIR   its tables become the shards' first migration
  3. pgtenant import start              copy each tenant's rows to its shard, then
                                        follow the changes (leave it running)
  4. pgtenant import verify             compare each tenant's rows on both sides
  5. pgtenant import cutover --shard N  serve a shard from its node (a canary, then
                                        --all, one at a time; undo: import rollback)
  6. pgtenant import finish             stop following; the old database is left as it is

See "Moving an existing database" in the README.`,
	}
	var opts importer.InitOptions
	var apt importer.SchemaPerTenantOptions
	var perTenant bool
	var tenantMap string
	initCmd := &cobra.Command{
		Use:   "init --from DSN [--name legacy] [--schema public] [--register-tenants] [--check]",
		Short: "Check the legacy database and serve every shard from it through the router",
		Long: `Check the legacy database and the catalog, then register the legacy database as
a node that serves every shard from its existing schema: through the router,
every tenant reads and writes its rows there, unchanged.

Checked first, each a clear error before anything changes: wal_level=logical
and a role with REPLICATION (the copy and the change stream read a logical
replication slot), or with --method trigger (no logical replication) a
primary key on every tenant table and a role that may create triggers on
them and a schema in the database; every table of the schema has a rule in the tables
registry (pgtenant table set); every row has a tenant (no NULL tenant id, no
child row without its parent); every tenant id found in the rows is
registered. Unregistered tenants stop the import with their ids, unless
--register-tenants registers them all by hash: the rows are the authority on
which tenants exist, but a stray id (a test row, a typo) would otherwise
become a tenant without anyone saying so.

Nothing is written to the legacy database.

With --schema-per-tenant the legacy database has a schema per tenant (the
Rails apartment style): the tenant is the schema's name (or what
--tenant-map FILE says: lines of schema,tenant), the tables of public are
reference tables, every tenant schema must have the tables and columns of
the template schema (--template-schema; default: the first tenant schema),
and the shards' tables gain --tenant-column (first in their keys). Until
its shard is cut over, the router serves each tenant from its own schema.`,
		Example: `  pgtenant import init --from 'postgres://app@old-db:5432/app' --register-tenants
  pgtenant import init --from "$OLD_DATABASE_URL" --check
  pgtenant import init --from "$OLD_DATABASE_URL" --schema-per-tenant --tenant-schemas 'tenant_%' --register-tenants`,
		Args: cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			if opts.DSN == "" {
				return usagef("import init needs --from DSN (the legacy database)")
			}
			if !perTenant && (apt.Pattern != "" || tenantMap != "" || apt.Template != "" || apt.Column != "" || apt.ColumnType != "") {
				return usagef("--tenant-schemas, --tenant-map, --template-schema, --tenant-column and --tenant-column-type go with --schema-per-tenant")
			}
			if perTenant {
				if apt.Pattern != "" && tenantMap != "" {
					return usagef("give --tenant-schemas or --tenant-map, not both")
				}
				if tenantMap != "" {
					f, err := os.Open(tenantMap)
					if err != nil {
						return fmt.Errorf("import init: %w", err)
					}
					apt.Map, err = importer.ReadTenantMap(f)
					f.Close()
					if err != nil {
						return fmt.Errorf("import init: %s: %w", tenantMap, err)
					}
				}
				opts.SchemaPerTenant = &apt
			}
			res, err := importer.New(c, a.logger).Init(ctx, opts)
			if err != nil {
				return err
			}
			sv := res.Survey
			if perTenant {
				fmt.Fprintf(a.stdout, "legacy database checked: wal_level %s, %s with the same %s\n", sv.WalLevel, plural(res.TenantSchemas, "tenant schema"), plural(len(sv.Tables), "table"))
			} else {
				fmt.Fprintf(a.stdout, "legacy database checked: wal_level %s, %s with a rule, %s in its rows\n",
					sv.WalLevel, plural(len(sv.Tables), "table"), plural(len(sv.Tenants), "tenant"))
			}
			if opts.CheckOnly {
				if n := len(sv.Unregistered); n > 0 {
					fmt.Fprintf(a.stdout, "%s would be registered by --register-tenants\n", plural(n, "tenant"))
				}
				return nil
			}
			if res.Registered > 0 {
				fmt.Fprintf(a.stdout, "%s registered\n", plural(res.Registered, "tenant"))
			}
			if res.TenantSchemas > 0 {
				fmt.Fprintf(a.stdout, "node %s added as the legacy node: each of its %s serves its tenant in all %s (template schema %s)\n",
					res.Node, plural(res.TenantSchemas, "tenant schema"), plural(res.Shards, "shard"), res.Schema)
			} else {
				fmt.Fprintf(a.stdout, "node %s added as the legacy node: its schema %s serves all %s\n", res.Node, res.Schema, plural(res.Shards, "shard"))
			}
			fmt.Fprintln(a.stdout, "point the app's DATABASE_URL at the router; next: pgtenant import schema --dir DIR")
			return nil
		}),
	}
	initCmd.Flags().StringVar(&opts.DSN, "from", "", "connection string of the legacy database (may name secrets as $NAME)")
	initCmd.Flags().StringVar(&opts.Node, "name", "legacy", "node name the legacy database is registered as")
	initCmd.Flags().StringVar(&opts.Schema, "schema", "public", "schema of the legacy database that holds the app's tables")
	initCmd.Flags().BoolVar(&opts.RegisterTenants, "register-tenants", false, "register, by hash, the tenant ids found in the rows that the catalog does not know")
	initCmd.Flags().BoolVar(&opts.CheckOnly, "check", false, "run the checks only; change nothing")
	initCmd.Flags().StringVar(&opts.Method, "method", importer.MethodLogical, "how import start follows the legacy database's changes: logical (a replication slot: wal_level=logical and REPLICATION) or trigger (capture triggers installed by the tables' owner)")
	initCmd.Flags().BoolVar(&perTenant, "schema-per-tenant", false, "the legacy database has a schema per tenant (Rails apartment style); public holds the reference tables")
	initCmd.Flags().StringVar(&apt.Pattern, "tenant-schemas", "", "with --schema-per-tenant: the tenant schemas, as an SQL LIKE pattern (default: every schema but public, pg_*, information_schema, pgtenant*)")
	initCmd.Flags().StringVar(&tenantMap, "tenant-map", "", "with --schema-per-tenant: a file of schema,tenant lines naming the tenant schemas and their tenants (default: the schema's name)")
	initCmd.Flags().StringVar(&apt.Template, "template-schema", "", "with --schema-per-tenant: the schema every tenant schema is compared with and the shards' tables come from (default: the first tenant schema)")
	initCmd.Flags().StringVar(&apt.Column, "tenant-column", "", "with --schema-per-tenant: the tenant column the shards' tables gain (default "+importer.DefaultTenantColumn+")")
	initCmd.Flags().StringVar(&apt.ColumnType, "tenant-column-type", "", "with --schema-per-tenant: the tenant column's type (default text)")
	cmd.AddCommand(initCmd, newImportSchemaCmd(a), newImportStartCmd(a), newImportVerifyCmd(a), newImportCutoverCmd(a), newImportRollbackCmd(a), newImportStatusCmd(a), newImportFinishCmd(a), newImportExcludeCmd(a))
	for _, sub := range cmd.Commands() {
		if run := sub.RunE; run != nil { // the errors of the packages the importer drives, in its terms
			sub.RunE = func(c *cobra.Command, args []string) error { return importer.Explain(run(c, args)) }
		}
	}
	return cmd
}

func newImportSchemaCmd(a *app) *cobra.Command {
	var opts importer.BaselineOptions
	cmd := &cobra.Command{
		Use:   "schema --dir DIR [--reference-dir DIR] [--force]",
		Short: "Write the legacy tables' definitions as the shards' first migration",
		Long: `Write the legacy tables' definitions (pg_dump --schema-only, without owners,
grants, comments or the schema's name) as migration files:

  DIR/` + importer.BaselineFile + `             the tenant and child tables: every shard's first migration
  REFERENCE-DIR/` + importer.ReferenceFile + `  the reference (shared) tables, for the shared schema of every node

Nothing is applied: read the files (they are the app's migrations from now on),
then apply them with 'pgtenant reference migrate --dir REFERENCE-DIR' and
'pgtenant migrate up --dir DIR'. The shard schemas are on the nodes the
shards will be cut over to; the legacy database is not changed.`,
		Example: `  pgtenant import schema --dir db/migrations --reference-dir db/reference
  pgtenant reference migrate --dir db/reference && pgtenant migrate up --dir db/migrations`,
		Args: cobra.NoArgs,
		RunE: a.withCatalog(func(ctx context.Context, c *catalog.Catalog) error {
			if opts.Dir == "" {
				return usagef("import schema needs --dir DIR (the shards' migrations directory)")
			}
			res, err := importer.New(c, a.logger).Baseline(ctx, opts)
			if err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "wrote %s (%s: %s)\n", res.File, plural(len(res.Tables), "table"), strings.Join(res.Tables, ", "))
			if res.ReferenceFile != "" {
				fmt.Fprintf(a.stdout, "wrote %s (%s: %s)\n", res.ReferenceFile, plural(len(res.Reference), "reference table"), strings.Join(res.Reference, ", "))
				fmt.Fprintf(a.stdout, "next: pgtenant reference migrate --dir %s && ", filepath.Dir(res.ReferenceFile))
			} else {
				fmt.Fprint(a.stdout, "next: ")
			}
			fmt.Fprintf(a.stdout, "pgtenant migrate up --dir %s, then pgtenant import start\n", opts.Dir)
			return nil
		}),
	}
	cmd.Flags().StringVar(&opts.Dir, "dir", "", "directory of the shards' migrations")
	cmd.Flags().StringVar(&opts.ReferenceDir, "reference-dir", "", "directory of the reference migrations (default: DIR/../reference)")
	cmd.Flags().BoolVar(&opts.Force, "force", false, "overwrite existing files")
	return cmd
}
