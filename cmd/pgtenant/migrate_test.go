package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/localpg"
)

// migrateCluster sets up a catalog with 4 shards on two nodes in a fresh
// working directory and returns the node DSNs.
func migrateCluster(t *testing.T) []string {
	t.Helper()
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	dsns := []string{nodeA.NewDatabase(t), nodeB.NewDatabase(t)}
	mustRun(t, "init", "--shards", "4")
	mustRun(t, "node", "add", "a", dsns[0])
	mustRun(t, "node", "add", "b", dsns[1])
	mustRun(t, "shard", "create")
	return dsns
}

// writeFiles writes name -> body into a new directory under the working
// directory and returns it.
func writeFiles(t *testing.T, dir string, files map[string]string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// shardTables lists the tables of every shard schema on the nodes, as
// "schema.table", goose_db_version left out.
func shardTables(t *testing.T, dsns []string) []string {
	t.Helper()
	ctx := context.Background()
	var out []string
	for _, dsn := range dsns {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		rows, _ := conn.Query(ctx, `SELECT schemaname || '.' || tablename FROM pg_tables
			WHERE schemaname LIKE 'shard\_%' AND tablename <> 'goose_db_version' ORDER BY 1`)
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, names...)
	}
	return out
}

var accounts = `-- +goose Up
CREATE TABLE accounts (id bigint PRIMARY KEY, name text);
-- +goose Down
DROP TABLE accounts;
`

func TestMigrateChangedFileCLI(t *testing.T) {
	dsns := migrateCluster(t)
	dir := writeFiles(t, "migrations", map[string]string{"00001_accounts.sql": accounts})
	mustRun(t, "migrate", "up", "--dir", dir)

	// Edit the applied file and add a new one.
	writeFiles(t, dir, map[string]string{
		"00001_accounts.sql": strings.Replace(accounts, "name text", "name text, email text", 1),
		"00002_invoices.sql": "CREATE TABLE invoices (id bigint);",
	})
	for _, args := range [][]string{{"migrate", "up", "--dir", dir}, {"migrate", "status"}} {
		code, out, errOut := pgtenant(t, args...)
		if code != 1 {
			t.Fatalf("%s with a changed file: exit %d\n%s%s", args, code, out, errOut)
		}
		for _, s := range []string{"00001_accounts.sql (version 1) changed since it was applied on shards 0-3", "--allow-changed"} {
			if !strings.Contains(errOut, s) {
				t.Errorf("%s: stderr does not say %q:\n%s", args, s, errOut)
			}
		}
		// One line for the four shards, not a table row per shard.
		if strings.Contains(out, "shard_0000") || strings.Count(errOut, "changed since") != 1 {
			t.Errorf("%s: drift printed per shard:\n%s%s", args, out, errOut)
		}
	}
	if got := shardTables(t, dsns); len(got) != 4 || strings.Contains(strings.Join(got, " "), "invoices") {
		t.Fatalf("a refused run changed the shards: %v", got)
	}

	code, out, errOut := pgtenant(t, "migrate", "status", "--allow-changed")
	if code != 1 || !strings.Contains(errOut, "warning: 00001_accounts.sql (version 1) changed") || !strings.Contains(errOut, "4 of 4 shards are behind") {
		t.Errorf("status --allow-changed: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = pgtenant(t, "migrate", "up", "--dir", dir, "--allow-changed")
	if code != 0 || !strings.Contains(errOut, "warning: 00001_accounts.sql (version 1) changed") || !strings.Contains(out, "4 files applied") {
		t.Fatalf("up --allow-changed: exit %d\n%s%s", code, out, errOut)
	}
	// The new checksum is recorded: plain runs are clean again.
	if out := mustRun(t, "migrate", "status"); !strings.Contains(out, "all 4 shards are current") {
		t.Errorf("status after accepting:\n%s", out)
	}
}

func TestMigrateAdoptChecksumsCLI(t *testing.T) {
	dsns := migrateCluster(t)
	dir := writeFiles(t, "migrations", map[string]string{"00001_accounts.sql": accounts})
	mustRun(t, "migrate", "up", "--dir", dir)
	// As a cluster migrated before checksums were kept.
	ctx := context.Background()
	for _, dsn := range dsns {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, `DO $$ DECLARE s text; BEGIN
			FOR s IN SELECT nspname FROM pg_namespace WHERE nspname LIKE 'shard\_%' LOOP
				EXECUTE format('ALTER TABLE %I.goose_db_version DROP COLUMN file_name, DROP COLUMN checksum', s);
			END LOOP; END $$`)
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
	}
	if out := mustRun(t, "migrate", "status"); !strings.Contains(out, "shards 0-3: applied versions without a checksum") {
		t.Errorf("status of an old cluster:\n%s", out)
	}
	out := mustRun(t, "migrate", "up", "--dir", dir)
	if !strings.Contains(out, "recorded the current files' checksums for 4 applied migrations") {
		t.Errorf("up on an old cluster does not say it adopted checksums:\n%s", out)
	}
	writeFiles(t, dir, map[string]string{"00001_accounts.sql": accounts + "-- changed\n"})
	if code, _, errOut := pgtenant(t, "migrate", "up", "--dir", dir); code != 1 || !strings.Contains(errOut, "00001_accounts.sql (version 1) changed") {
		t.Errorf("up with a changed adopted file: exit %d\n%s", code, errOut)
	}
}

func TestMigrateShadowedVersionCLI(t *testing.T) {
	dsns := migrateCluster(t)
	demo := writeFiles(t, "demo", map[string]string{"00001_energy_schema.sql": "CREATE TABLE meters (id int);"})
	mustRun(t, "migrate", "up", "--dir", demo)
	mine := writeFiles(t, "migrations", map[string]string{"00001_users.sql": "CREATE TABLE users (id int);"})
	for _, extra := range [][]string{nil, {"--allow-changed"}} {
		code, out, errOut := pgtenant(t, append([]string{"migrate", "up", "--dir", mine}, extra...)...)
		if code != 1 || !strings.Contains(errOut, "version 1 was applied from 00001_energy_schema.sql on shards 0-3, but the directory has 00001_users.sql for it") {
			t.Errorf("up %v over the demo's version 1: exit %d\n%s%s", extra, code, out, errOut)
		}
	}
	if code, _, errOut := pgtenant(t, "migrate", "status", "--dir", mine); code != 1 || !strings.Contains(errOut, "00001_energy_schema.sql") {
		t.Errorf("status over the demo's version 1: exit %d\n%s", code, errOut)
	}
	if got := strings.Join(shardTables(t, dsns), " "); strings.Contains(got, "users") {
		t.Errorf("refused run created %s", got)
	}
	writeFiles(t, mine, map[string]string{"00001_other.sql": "SELECT 1;"})
	if code, _, errOut := pgtenant(t, "migrate", "up", "--dir", mine); code != 1 || !strings.Contains(errOut, "version 1 is in two files, 00001_other.sql and 00001_users.sql") {
		t.Errorf("up with two files for version 1: exit %d\n%s", code, errOut)
	}
}

func TestMigrateDownCLI(t *testing.T) {
	dsns := migrateCluster(t)
	dir := writeFiles(t, "migrations", map[string]string{
		"00001_accounts.sql": accounts,
		"00002_invoices.sql": "-- +goose Up\nCREATE TABLE invoices (id bigint);\n-- +goose Down\nDROP TABLE invoices;\n",
		"00003_notes.sql":    "-- +goose Up\nCREATE TABLE notes (id bigint);\n-- +goose Down\nDROP TABLE notes;\n",
	})
	mustRun(t, "migrate", "up", "--dir", dir)
	out := mustRun(t, "migrate", "down", "--dir", dir)
	if !strings.Contains(out, "4 rolled back to version 2") || !strings.Contains(out, "4 files rolled back") {
		t.Errorf("down one step:\n%s", out)
	}
	if got := strings.Join(shardTables(t, dsns), " "); strings.Contains(got, "notes") || strings.Count(got, "invoices") != 4 {
		t.Errorf("after down one step: %s", got)
	}
	if code, out, _ := pgtenant(t, "migrate", "status"); code != 1 || !strings.Contains(out, "all 4 shards are at version 2; pending: 3") {
		t.Errorf("status after down: exit %d\n%s", code, out)
	}
	out = mustRun(t, "migrate", "down", "--dir", dir, "--to", "0")
	if !strings.Contains(out, "rolled back to version 0") || !strings.Contains(out, "8 files rolled back") {
		t.Errorf("down --to 0:\n%s", out)
	}
	if got := shardTables(t, dsns); len(got) != 0 {
		t.Errorf("after down --to 0: %v", got)
	}
	if out := mustRun(t, "migrate", "down", "--dir", dir); !strings.Contains(out, "nothing to roll back") {
		t.Errorf("down with nothing applied:\n%s", out)
	}
	if code, _, errOut := pgtenant(t, "migrate", "down", "--dir", dir, "--to", "-3"); code != 2 || !strings.Contains(errOut, "--to -3") {
		t.Errorf("down --to -3: exit %d %s", code, errOut)
	}

	// A file without a Down section: nothing runs anywhere.
	mustRun(t, "migrate", "up", "--dir", dir)
	writeFiles(t, dir, map[string]string{"00004_plain.sql": "CREATE TABLE plain (id int);"})
	mustRun(t, "migrate", "up", "--dir", dir)
	code, out, errOut := pgtenant(t, "migrate", "down", "--dir", dir, "--to", "2")
	if code != 1 || !strings.Contains(errOut, "00004_plain.sql (version 4, applied on shards 0-3) has no '-- +goose Down' section") {
		t.Errorf("down past a file without Down: exit %d\n%s%s", code, out, errOut)
	}
	if got := strings.Join(shardTables(t, dsns), " "); strings.Count(got, "notes") != 4 || strings.Count(got, "plain") != 4 {
		t.Errorf("a refused down changed the shards: %s", got)
	}
	if out := mustRun(t, "ops"); !strings.Contains(out, "migrate down") {
		t.Errorf("ops does not list migrate down:\n%s", out)
	}
}

func TestMigrateCreateCLI(t *testing.T) {
	dsns := migrateCluster(t)
	out := mustRun(t, "migrate", "create", "AddInvoices", "--dir", "db/migrations")
	path := strings.TrimSpace(out)
	if !regexp.MustCompile(`^db/migrations/20\d{12}_add_invoices\.sql$`).MatchString(path) {
		t.Fatalf("migrate create printed %q", out)
	}
	body, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(body), "-- +goose Up\n") || !strings.Contains(string(body), "-- +goose Down\n") {
		t.Fatalf("created file: %q, %v", body, err)
	}
	for _, bad := range []string{"add invoices", "../x", "with.dot"} {
		if code, _, errOut := pgtenant(t, "migrate", "create", bad, "--dir", "db/migrations"); code != 2 || !strings.Contains(errOut, "invalid migration name") {
			t.Errorf("migrate create %q: exit %d %s", bad, code, errOut)
		}
	}
	if code, _, _ := pgtenant(t, "migrate", "create"); code != 2 {
		t.Errorf("migrate create without a name: exit %d, want 2", code)
	}
	// The file it wrote, filled in (its commented tenant_column line
	// uncommented before the CREATE TABLE), goes up and down on real shards
	// and records the table's rule.
	hint := "-- -- pgtenant: tenant_column=customer_id\n"
	if !strings.Contains(string(body), hint) {
		t.Fatalf("created file gives no hint of the tenant_column annotation:\n%s", body)
	}
	filled := strings.Replace(string(body), hint, "-- pgtenant: tenant_column=customer_id\nCREATE TABLE invoices (id bigint, customer_id text);\n", 1)
	filled = strings.Replace(filled, "-- +goose Down\n", "-- +goose Down\nDROP TABLE invoices;\n", 1)
	if err := os.WriteFile(path, []byte(filled), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, "migrate", "up", "--dir", "db/migrations"); !strings.Contains(out, "4 files applied") {
		t.Errorf("up of the created file:\n%s", out)
	}
	if got := shardTables(t, dsns); len(got) != 4 {
		t.Errorf("tables after up: %v", got)
	}
	if out := mustRun(t, "table", "list"); !regexp.MustCompile(`invoices\s+tenant_column=customer_id`).MatchString(out) {
		t.Errorf("table list after up of the created file:\n%s", out)
	}
	mustRun(t, "migrate", "down", "--dir", "db/migrations")
	if got := shardTables(t, dsns); len(got) != 0 {
		t.Errorf("tables after down: %v", got)
	}
}

// TestMigrateUpJSON: `migrate up --json` prints one object on stdout (the
// summary goes to stderr): the versions each shard got, then, with a failing
// file, each failed shard with the file, its version and the SQLSTATE, and
// exit 1 as without --json.
func TestMigrateUpJSON(t *testing.T) {
	migrateCluster(t)
	dir := writeFiles(t, "migrations", map[string]string{"00001_accounts.sql": accounts})
	code, out, errOut := pgtenant(t, "migrate", "up", "--dir", dir, "--json")
	if code != 0 || !strings.Contains(errOut, "migrate: 4 shards, 4 migrated") {
		t.Fatalf("migrate up --json: exit %d, the summary not on stderr\n%s%s", code, out, errOut)
	}
	var res migrateUpJSON
	jsonOut(t, 0, &res, "migrate", "up", "--dir", dir)
	if res.Shards != 4 || res.Current != 4 || res.Applied != 0 || len(res.Migrated) != 0 || len(res.Failures) != 0 || res.Error != "" {
		t.Errorf("migrate up --json with nothing to do: %+v", res)
	}

	writeFiles(t, dir, map[string]string{
		"00002_invoices.sql": "CREATE TABLE invoices (id bigint);",
		"00003_dup.sql":      "CREATE TABLE accounts (id bigint);",
	})
	res = migrateUpJSON{}
	jsonOut(t, 1, &res, "migrate", "up", "--dir", dir, "--concurrency", "1")
	if res.Shards != 4 || res.Failed < 1 || res.Failed+res.NotStarted != 4 || len(res.Failures) != res.Failed || res.Applied != res.Failed ||
		!strings.Contains(res.Error, "42P07") || !filepath.IsAbs(res.Dir) || filepath.Base(res.Dir) != dir {
		t.Fatalf("migrate up --json with a failing file: %+v", res)
	}
	for _, f := range res.Failures {
		if f.File != "00003_dup.sql" || f.Version != 3 || !slices.Equal(f.Applied, []int64{2}) || !strings.Contains(f.Error, "SQLSTATE 42P07") || f.Schema == "" || f.Node == "" {
			t.Errorf("failure %+v: want 00003_dup.sql (version 3) after version 2, SQLSTATE 42P07", f)
		}
	}
}

// TestMigrateNodeDownCLI: migrate up with a node that does not answer says
// that nothing was applied and points at the node, not at the migration
// file ("fix the migration" sent a user to edit a correct file).
func TestMigrateNodeDownCLI(t *testing.T) {
	dsns := migrateCluster(t)
	ctx := context.Background()
	port, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cat, err := pgx.Connect(ctx, os.Getenv("PGTENANT_CATALOG"))
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close(ctx)
	down := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/app?sslmode=disable&connect_timeout=5", port)
	if _, err := cat.Exec(ctx, `UPDATE pgtenant.nodes SET dsn = $1 WHERE name = 'b'`, down); err != nil {
		t.Fatal(err)
	}
	dir := writeFiles(t, "migrations", map[string]string{"00001_accounts.sql": accounts})
	code, out, errOut := pgtenant(t, "migrate", "up", "--dir", dir)
	if code != 1 || !strings.Contains(errOut, "nothing was applied") || !strings.Contains(errOut, "pgtenant node check") ||
		strings.Contains(errOut, "fix the migration") || strings.Contains(out, "0 failed") {
		t.Errorf("migrate up with node b down: exit %d, want 1 saying nothing was applied and naming node check, no summary\n%s%s", code, out, errOut)
	}
	if got := shardTables(t, dsns[:1]); len(got) != 0 {
		t.Errorf("node a got tables while node b was down: %q", got)
	}
}

// TestMigrateEmptyUpCLI (ops16): migrate up of a file `migrate create` wrote
// and nobody filled in is refused before anything runs, with no summary
// line and no "fix the migration ... --allow-changed" advice meant for a
// statement that failed on some shards.
func TestMigrateEmptyUpCLI(t *testing.T) {
	dsns := migrateCluster(t)
	dir := filepath.Join(t.TempDir(), "migrations")
	mustRun(t, "migrate", "create", "not_written_yet", "--dir", dir)
	code, out, errOut := pgtenant(t, "migrate", "up", "--dir", dir)
	if code != 1 || !strings.Contains(errOut, "has no SQL in its Up section (SQLSTATE 42601)") ||
		strings.Contains(errOut, "fix the migration") || strings.Contains(out, "0 failed") {
		t.Errorf("migrate up of an empty skeleton: exit %d, want 1 with 42601 and no summary\n%s%s", code, out, errOut)
	}
	if got := shardTables(t, dsns); len(got) != 0 {
		t.Errorf("tables after the refused run: %q", got)
	}
}
