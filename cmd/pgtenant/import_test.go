package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/demo"
)

// legacyDB makes a database shaped like the demo's energy app in its public
// schema (plus a child table without a tenant column and a reference
// table), seeded with n tenants, and returns its DSN and tenant ids.
func legacyDB(t *testing.T, n int) (string, []string) {
	t.Helper()
	ctx := context.Background()
	dsn := nodeA.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	ddl, err := demo.LegacySchema()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, ddl); err != nil {
		t.Fatal(err)
	}
	ids := demo.TenantIDs(n)
	if err := demo.SeedLegacy(ctx, conn, "public", ids, 6); err != nil {
		t.Fatal(err)
	}
	return dsn, ids
}

// legacyState is what pgtenant could have changed on the legacy database
// beyond the app's rows: schemas, publications, slots, triggers, policies.
func legacyState(t *testing.T, dsn string) string {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var s string
	if err := conn.QueryRow(context.Background(), `SELECT concat_ws(' | ',
		(SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema'),
		(SELECT string_agg(pubname, ',') FROM pg_publication),
		(SELECT string_agg(slot_name, ',') FROM pg_replication_slots WHERE database = current_database()),
		(SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal),
		(SELECT count(*) FROM pg_policy),
		(SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'))`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestImportInit (issue 12, step 1): bad input stops import init with each
// problem named and nothing changed; then the legacy database serves every
// tenant through the router, unchanged, and shard moves are refused.
func TestImportInit(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "8")
	n1, n2 := nodeB.NewDatabase(t), nodeB.NewDatabase(t)
	mustRun(t, "node", "add", "n1", n1)
	mustRun(t, "node", "add", "n2", n2)
	mustRun(t, "shard", "create")
	legacy, ids := legacyDB(t, 30)
	before := legacyState(t, legacy)
	catalogState := func() string {
		return mustRun(t, "node", "list") + mustRun(t, "tenant", "list") + mustRun(t, "shard", "list")
	}
	catBefore := catalogState()

	// No rules: every table is named.
	code, out, errOut := pgtenant(t, "import", "init", "--from", legacy)
	if code != 1 || !strings.Contains(errOut, "42704") || !strings.Contains(errOut, "buildings, customers, energy_units, meter_notes, meters, readings, tariffs") {
		t.Fatalf("import init without rules: exit %d\n%s%s", code, out, errOut)
	}
	for _, r := range demo.LegacyRules {
		mustRun(t, append([]string{"table", "set"}, r...)...)
	}
	// A child row without its parent, and tenants not registered.
	conn, err := pgx.Connect(context.Background(), legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var orphan int64
	if err := conn.QueryRow(context.Background(), `INSERT INTO meter_notes (meter_id, note) VALUES (NULL, 'lost') RETURNING id`).Scan(&orphan); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = pgtenant(t, "import", "init", "--from", legacy)
	if code != 1 || !strings.Contains(errOut, fmt.Sprintf("table meter_notes: 1 row(s) with no row of meters (or one with a NULL tenant id) behind meter_id, e.g. %d", orphan)) ||
		!strings.Contains(errOut, "30 tenant id(s) in the legacy rows are not registered, e.g. ") || !strings.Contains(errOut, "(SQLSTATE 23503)") || !strings.Contains(errOut, "--register-tenants") {
		t.Fatalf("import init with an orphan and unregistered tenants: exit %d\n%s%s", code, out, errOut)
	}
	if got := catalogState(); got != catBefore {
		t.Fatalf("a failed import init changed the catalog:\n%s\nwas\n%s", got, catBefore)
	}
	if _, err := conn.Exec(context.Background(), `DELETE FROM meter_notes WHERE id = $1`, orphan); err != nil {
		t.Fatal(err)
	}
	if got := legacyState(t, legacy); got != before {
		t.Fatalf("a failed import init changed the legacy database: %s, was %s", got, before)
	}

	out = mustRun(t, "import", "init", "--from", legacy, "--register-tenants")
	if !strings.Contains(out, "30 tenants registered") || !strings.Contains(out, "its schema public serves all 8 shards") {
		t.Fatalf("import init: %s", out)
	}
	if code, out, errOut := pgtenant(t, "import", "init", "--from", legacy, "--name", "again"); code != 1 || !strings.Contains(errOut, "an import is already registered") {
		t.Fatalf("second import init: exit %d\n%s%s", code, out, errOut)
	}

	// Through the router, every tenant reads and writes its rows on the legacy database.
	addr := startRouterCmd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, id := range []string{ids[0], ids[7], ids[29]} {
		rc, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rc.Exec(ctx, `SELECT set_config('pgtenant.tenant', $1, false)`, id); err != nil {
			t.Fatal(err)
		}
		var viaRouter, direct int
		q := `SELECT count(*) FROM readings r JOIN meters m ON m.id = r.meter_id JOIN meter_notes n ON n.meter_id = m.id JOIN energy_units u ON u.unit = m.unit WHERE r.tenant_id = $1`
		if err := rc.QueryRow(ctx, q, id).Scan(&viaRouter); err != nil {
			t.Fatalf("tenant %q: %v", id, err)
		}
		if err := conn.QueryRow(ctx, q, id).Scan(&direct); err != nil {
			t.Fatal(err)
		}
		if viaRouter != direct || direct == 0 {
			t.Fatalf("tenant %q: %d readings through the router, %d on the legacy database", id, viaRouter, direct)
		}
		var path string
		if err := rc.QueryRow(ctx, `SHOW search_path`).Scan(&path); err != nil || path != `public, public, pg_temp` {
			t.Fatalf("search_path %q, %v", path, err)
		}
		if _, err := rc.Exec(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'via router', 'Brno', 100)`, id); err != nil {
			t.Fatal(err)
		}
		rc.Close(ctx)
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM buildings WHERE tenant_id = $1 AND name = 'via router'`, id).Scan(&n); err != nil || n != 1 {
			t.Fatalf("the router's insert for %q on the legacy database: %d rows, %v", id, n, err)
		}
	}
	// Pointing the app back works: nothing but its rows changed there.
	if got := legacyState(t, legacy); got != before {
		t.Fatalf("serving through the router changed the legacy database: %s, was %s", got, before)
	}
	// Shards served from the legacy database move only by cutover.
	if code, out, errOut := pgtenant(t, "shard", "move", "3", "--to", "n2"); code != 1 || !strings.Contains(errOut, "import cutover") {
		t.Fatalf("shard move of a legacy shard: exit %d\n%s%s", code, out, errOut)
	}

	// The schema baseline: tenant tables as the shards' first migration,
	// the reference table for the shared schema of every node.
	out = mustRun(t, "import", "schema", "--dir", "db/migrations", "--reference-dir", "db/reference")
	if !strings.Contains(out, "6 tables: buildings, customers, meter_notes, meters, readings, tariffs") || !strings.Contains(out, "1 reference table: energy_units") {
		t.Fatalf("import schema: %s", out)
	}
	base, err := os.ReadFile("db/migrations/00001_legacy_baseline.sql")
	if err != nil {
		t.Fatal(err)
	}
	if b := string(base); !strings.HasPrefix(b, "-- +goose Up\n") || !strings.Contains(b, "CREATE TABLE meter_notes (") || strings.Contains(b, "public.") || strings.Contains(b, "energy_units") || strings.Contains(b, "OWNER") {
		t.Fatalf("baseline migration:\n%s", b)
	}
	if code, _, errOut := pgtenant(t, "import", "schema", "--dir", "db/migrations", "--reference-dir", "db/reference"); code != 1 || !strings.Contains(errOut, "--force") {
		t.Fatalf("import schema over existing files: exit %d %s", code, errOut)
	}
	mustRun(t, "reference", "migrate", "--dir", "db/reference")
	if out := mustRun(t, "migrate", "up", "--dir", "db/migrations"); !strings.Contains(out, "8 shards, 8 migrated") {
		t.Fatalf("migrate up of the baseline: %s", out)
	}
	for _, dsn := range []string{n1, n2} {
		if n := nodeInt(t, dsn, `SELECT count(*) FROM pg_tables WHERE tablename = 'meter_notes' AND schemaname LIKE 'shard\_%'`); n != 4 {
			t.Fatalf("meter_notes in %d shard schemas of a node, want 4", n)
		}
		if n := nodeInt(t, dsn, `SELECT count(*) FROM public.energy_units`); n != 0 {
			t.Fatalf("energy_units on a node has %d rows before the copy", n)
		}
	}
	if got := legacyState(t, legacy); got != before {
		t.Fatalf("import schema changed the legacy database: %s, was %s", got, before)
	}
}
