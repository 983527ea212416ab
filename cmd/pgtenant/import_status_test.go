package main

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestImportStatusNamesLateTablesBeforeStart (issue 12): a table created
// on the legacy database after import init was named by import status only
// once import start had run (the legacy database was read only when a
// slot existed); before it, status said nothing of it. Now it names it
// from import init on, for both source shapes, as it does while streaming
// (a schema per tenant: a table of tenant schemas that the template schema,
// whose tables import start publishes, lacks).
func TestImportStatusNamesLateTablesBeforeStart(t *testing.T) {
	t.Run("one schema", func(t *testing.T) {
		f := newImportFixture(t, 4, 1, 4)
		if out := mustRun(t, "import", "status"); strings.Contains(out, "not in the import") {
			t.Fatalf("import status names a table not in the import right after init:\n%s", out)
		}
		execSQL(t, f.legacy, `CREATE TABLE late_notes (id int PRIMARY KEY, tenant_id text, note text)`)
		if out := mustRun(t, "import", "status"); !strings.Contains(out, "not in the import: table(s) late_notes of the legacy database") {
			t.Fatalf("import status before import start does not name the table created after init:\n%s", out)
		}
		mustRun(t, "import", "exclude", "late_notes")
		if out := mustRun(t, "import", "status"); strings.Contains(out, "late_notes") {
			t.Fatalf("import status names an excluded table:\n%s", out)
		}
	})
	t.Run("schema per tenant", func(t *testing.T) {
		f, _ := newApartmentFixture(t, 4, 1, 5)
		if out := mustRun(t, "import", "status"); strings.Contains(out, "not in the import") {
			t.Fatalf("import status names a table not in the import right after init:\n%s", out)
		}
		// In tenant schemas but not in the template schema, whose tables
		// import start publishes and copies.
		for _, s := range []string{"tenant_002", "tenant_003"} {
			execSQL(t, f.legacy, `CREATE TABLE `+pgx.Identifier{s, "late_notes"}.Sanitize()+` (id int PRIMARY KEY, note text)`)
		}
		const named = `not in the import: table(s) late_notes (in 2 tenant schema(s): "tenant_002", "tenant_003")`
		if out := mustRun(t, "import", "status"); !strings.Contains(out, named) {
			t.Fatalf("import status before import start does not name the table created after init:\n%s", out)
		}
		mustRun(t, "import", "exclude", "late_notes")
		if out := mustRun(t, "import", "status"); strings.Contains(out, "late_notes") {
			t.Fatalf("import status names an excluded table:\n%s", out)
		}
	})
}
