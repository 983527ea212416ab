package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/importer"
)

func newImportExcludeCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "exclude TABLE...",
		Short: "Leave tables of the legacy database out of the import on purpose",
		Long: `Leave tables of the legacy schema out of the import on purpose: their rows
stay on the legacy database only, and import status, verify, cutover and
finish no longer name them.

A table created on the legacy database after import init (or registered
with pgtenant table set after import start) is in no publication and was
not copied: nothing of it reaches the shards, and a table cannot join a
running import (its rows would need a copy at the slot's snapshot).
import cutover --all and import finish refuse while such a table is
neither excluded nor dropped. Move its rows yourself after import finish
(e.g. pgtenant tenant import of each tenant's rows), or, before import
start, register it (pgtenant table set) so that the import copies it.`,
		Example: `  pgtenant import exclude audit_2026 tmp_backfill`,
		Args:    cobra.MinimumNArgs(1),
		RunE: a.withCatalogArgs(func(ctx context.Context, c *catalog.Catalog, args []string) error {
			if err := importer.New(c, a.logger).Exclude(ctx, args); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "excluded from the import: %s (their rows stay on the legacy database only)\n", strings.Join(args, ", "))
			return nil
		}),
	}
}
