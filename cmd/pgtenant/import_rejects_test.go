package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestImportRejectsWhileStreaming (issue 12): while import start streams,
// the app writes a row without a tenant and rows of a tenant not
// registered on the legacy database. The stream used to stop at the first
// for good (every restart replayed it). Now it rejects them into the
// catalog and goes on; import status lists them; cutover --all refuses
// (55000) while they are not resolved; an UPDATE on the legacy database
// that gives the row a tenant, and registering the tenant then touching
// its rows, bring the rows to their shards and resolve the rejects. A table
// created on the legacy database after import init is named by status and
// verify, and cutover --all and finish refuse until it is excluded. A last
// reject is dropped on purpose with --accept-rejects.
func TestImportRejectsWhileStreaming(t *testing.T) {
	bin := buildBinary(t)
	f := newImportFixture(t, 4, 1, 8)
	execSQL(t, f.legacy, `ALTER TABLE buildings ALTER tenant_id DROP NOT NULL`)
	imp := startImportProc(t, bin)
	defer imp.kill()
	known := f.ids[0]
	schema, node := f.shardOf(t, known)
	onShard := func(schema, name string) string {
		return `SELECT count(*) FROM ` + pgx.Identifier{schema, "buildings"}.Sanitize() + ` WHERE name = '` + name + `'`
	}

	execSQL(t, f.legacy, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES (NULL, 'nobody', 'Reject', 1)`)
	execSQL(t, f.legacy, `INSERT INTO customers (tenant_id, name, plan) VALUES ('ghost', 'Ghost', 'pro')`)
	execSQL(t, f.legacy, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ('ghost', 'haunted', 'Reject', 1)`)
	execSQL(t, f.legacy, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'after', 'Reject', 1)`, known)
	waitInt(t, 1, node, onShard(schema, "after")) // the stream went on
	out := mustRun(t, "import", "status")
	if !strings.Contains(out, "rejected changes not resolved: 3") || !strings.Contains(out, "a row has no tenant (column tenant_id is NULL)") || !strings.Contains(out, `tenant "ghost" is not registered`) {
		t.Fatalf("import status does not list the 3 rejects:\n%s", out)
	}
	code, out, errOut := pgtenant(t, "import", "cutover", "--all")
	if code == 0 || !strings.Contains(errOut, "55000") || !strings.Contains(errOut, "--accept-rejects") {
		t.Fatalf("cutover --all with rejects: exit %d\n%s%s", code, out, errOut)
	}

	// The row gets a tenant on the legacy database: it goes to its shard.
	execSQL(t, f.legacy, `UPDATE buildings SET tenant_id = $1 WHERE name = 'nobody'`, known)
	waitInt(t, 1, node, onShard(schema, "nobody"))
	// The tenant is registered, then its rows are touched.
	mustRun(t, "tenant", "add", "ghost")
	execSQL(t, f.legacy, `UPDATE customers SET plan = plan WHERE tenant_id = 'ghost'`)
	execSQL(t, f.legacy, `UPDATE buildings SET city = city WHERE tenant_id = 'ghost'`)
	gschema, gnode := f.shardOf(t, "ghost")
	waitInt(t, 1, gnode, onShard(gschema, "haunted"))
	waitInt(t, 1, gnode, `SELECT count(*) FROM `+pgx.Identifier{gschema, "customers"}.Sanitize()+` WHERE tenant_id = 'ghost'`)
	if out := mustRun(t, "import", "status"); strings.Contains(out, "rejected") {
		t.Fatalf("rejects left after their rows got a registered tenant:\n%s", out)
	}

	// A table created after import init.
	execSQL(t, f.legacy, `CREATE TABLE late_notes (id int PRIMARY KEY, tenant_id text, note text)`)
	if out := mustRun(t, "import", "status"); !strings.Contains(out, "not in the import: table(s) late_notes") {
		t.Fatalf("import status does not name the table created after init:\n%s", out)
	}
	code, out, errOut = pgtenant(t, "import", "verify")
	if code == 0 || !strings.Contains(out, "late_notes") {
		t.Fatalf("verify with a table not in the import: exit %d\n%s%s", code, out, errOut)
	}
	code, out, errOut = pgtenant(t, "import", "cutover", "--all")
	if code == 0 || !strings.Contains(errOut, "55000") || !strings.Contains(errOut, "import exclude") {
		t.Fatalf("cutover --all with a table not in the import: exit %d\n%s%s", code, out, errOut)
	}
	mustRun(t, "import", "exclude", "late_notes")
	if out := mustRun(t, "import", "verify"); strings.Contains(out, "late_notes") {
		t.Fatalf("verify names an excluded table:\n%s", out)
	}

	// A last row without a tenant, dropped on purpose.
	execSQL(t, f.legacy, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES (NULL, 'stray', 'Reject', 1)`)
	execSQL(t, f.legacy, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, 'last', 'Reject', 1)`, known)
	waitInt(t, 1, node, onShard(schema, "last"))
	code, out, errOut = pgtenant(t, "import", "cutover", "--all")
	if code == 0 || !strings.Contains(errOut, "55000") {
		t.Fatalf("cutover --all with a reject: exit %d\n%s%s", code, out, errOut)
	}
	mustRun(t, "import", "cutover", "--all", "--accept-rejects")
	mustRun(t, "import", "finish")
	if n := queryInt(t, node, `SELECT count(*) FROM `+pgx.Identifier{schema, "buildings"}.Sanitize()+` WHERE city = 'Reject'`); n != 3 {
		t.Fatalf("%d rows of the test on the known tenant's shard, want 3 (nobody, after, last)", n)
	}
}

// TestImportStartRefusesNullTenant (issue 12, bad input): a row without a
// tenant written on the legacy database between import init and import
// start stops the copy with 23502, the table's name and the row's key; so
// does a child row without a parent (meter_notes with a NULL meter_id),
// which the error used to name by its table only. Fixed on the legacy
// database, import start run again completes.
func TestImportStartRefusesNullTenant(t *testing.T) {
	f := newImportFixture(t, 4, 1, 8)
	execSQL(t, f.legacy, `ALTER TABLE buildings ALTER tenant_id DROP NOT NULL`)
	execSQL(t, f.legacy, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES (NULL, 'nobody', 'Null', 1)`)
	nobody := queryInt(t, f.legacy, `SELECT id FROM buildings WHERE name = 'nobody'`)
	orphan := queryInt(t, f.legacy, `INSERT INTO meter_notes (meter_id, note) VALUES (NULL, 'orphan') RETURNING id`)
	code, out, errOut := pgtenant(t, "import", "start", "--no-follow")
	if want := fmt.Sprintf("1 row(s) of buildings have no tenant (a NULL tenant id in tenant_id), e.g. key(s) %d (SQLSTATE 23502): fix them", nobody); code == 0 || !strings.Contains(errOut, want) {
		t.Fatalf("import start with a NULL tenant: exit %d, want %q\n%s%s", code, want, out, errOut)
	}
	execSQL(t, f.legacy, `UPDATE buildings SET tenant_id = $1 WHERE name = 'nobody'`, f.ids[0])
	code, out, errOut = pgtenant(t, "import", "start", "--no-follow")
	if want := fmt.Sprintf("1 row(s) of meter_notes have no tenant (no row of meters behind meter_id, or one with a NULL tenant id), e.g. key(s) %d (SQLSTATE 23502): fix them", orphan); code == 0 || !strings.Contains(errOut, want) {
		t.Fatalf("import start with a child row without its parent: exit %d, want %q\n%s%s", code, want, out, errOut)
	}
	execSQL(t, f.legacy, `DELETE FROM meter_notes WHERE id = $1`, orphan)
	mustRun(t, "import", "start", "--no-follow")
	schema, node := f.shardOf(t, f.ids[0])
	if n := queryInt(t, node, `SELECT count(*) FROM `+pgx.Identifier{schema, "buildings"}.Sanitize()+` WHERE name = 'nobody'`); n != 1 {
		t.Fatalf("the fixed row is on its shard %d times, want once", n)
	}
}

// TestImportRejectsChildRows (issue 12, bad input while streaming), for
// both methods of following the legacy database: a child row (meter_notes,
// whose tenant is its meter's) written under a meter the follower rejected
// (a NULL tenant id; a tenant not registered) used to be skipped silently
// (counted as "no copied shard holds its parent"); the trigger method's
// follower stopped for good at the first row of a tenant not registered.
// Now both record every such row in pgtenant.import_rejects, named by
// table and key (the child with its parent's key and why it was
// rejected), import status counts them, cutover --all refuses (55000);
// the parent fixed and the child touched on the legacy database, the rows
// arrive on their shards and the rejects are resolved; the last ones are
// dropped on purpose with --accept-rejects, and finish completes.
func TestImportRejectsChildRows(t *testing.T) {
	for _, method := range []string{"logical", "trigger"} {
		t.Run(method, func(t *testing.T) {
			bin := buildBinary(t)
			f := newImportFixtureWith(t, fixtureOptions{Shards: 4, Nodes: 1, Tenants: 8, Method: method})
			execSQL(t, f.legacy, `ALTER TABLE meters ALTER tenant_id DROP NOT NULL`)
			imp := startImportProc(t, bin)
			defer imp.kill()
			known := f.ids[0]
			schema, node := f.shardOf(t, known)
			notes := func(schema, note string) string {
				return `SELECT count(*) FROM ` + pgx.Identifier{schema, "meter_notes"}.Sanitize() + ` WHERE note = '` + note + `'`
			}
			building := queryInt(t, f.legacy, `SELECT min(id) FROM buildings WHERE tenant_id = $1`, known)
			meter := func(tenant any) int {
				return queryInt(t, f.legacy, `INSERT INTO meters (tenant_id, building_id, energy, unit) VALUES ($1, $2, 'gas', 'm3') RETURNING id`, tenant, building)
			}
			note := func(meter int, text string) {
				execSQL(t, f.legacy, `INSERT INTO meter_notes (meter_id, note) VALUES ($1, $2)`, meter, text)
			}

			nobody := meter(nil)
			note(nobody, "orphan of nobody")
			execSQL(t, f.legacy, `INSERT INTO customers (tenant_id, name, plan) VALUES ('ghost', 'Ghost', 'pro')`)
			execSQL(t, f.legacy, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ('ghost', 'haunted', 'Reject', 1)`)
			ghost := meter("ghost")
			note(ghost, "orphan of ghost")
			note(queryInt(t, f.legacy, `SELECT min(id) FROM meters WHERE tenant_id = $1`, known), "after")
			waitInt(t, 1, node, notes(schema, "after")) // the follower went on
			out := mustRun(t, "import", "status")
			for _, want := range []string{
				"rejected changes not resolved: 6",
				"a row has no tenant (column tenant_id is NULL)",
				`tenant "ghost" is not registered`,
				fmt.Sprintf(`its parent row (meters id = %d) was rejected: table meters: a row has no tenant (column tenant_id is NULL)`, nobody),
			} {
				if !strings.Contains(out, want) {
					t.Fatalf("import status does not say %q:\n%s", want, out)
				}
			}
			// Each child row is named by its table and key (the primary key
			// for the trigger method, the replica identity's columns for the
			// logical one: all of them, REPLICA IDENTITY FULL).
			for _, m := range []int{nobody, ghost} {
				id := queryInt(t, f.legacy, `SELECT id FROM meter_notes WHERE meter_id = $1`, m)
				if !hasLine(out, "  meter_notes {", fmt.Sprintf(`"id":"%d"`, id)) {
					t.Fatalf("import status does not name meter_notes row %d:\n%s", id, out)
				}
			}
			code, out, errOut := pgtenant(t, "import", "cutover", "--all")
			if code == 0 || !strings.Contains(errOut, "55000") || !strings.Contains(errOut, "meter_notes") {
				t.Fatalf("cutover --all with rejected child rows: exit %d\n%s%s", code, out, errOut)
			}

			// The parent gets a tenant, then its child is touched.
			execSQL(t, f.legacy, `UPDATE meters SET tenant_id = $1 WHERE id = $2`, known, nobody)
			execSQL(t, f.legacy, `UPDATE meter_notes SET note = note WHERE meter_id = $1`, nobody)
			waitInt(t, 1, node, notes(schema, "orphan of nobody"))
			// The tenant is registered, then its rows are touched, parents first.
			mustRun(t, "tenant", "add", "ghost")
			for _, table := range []string{"customers", "buildings", "meters"} {
				execSQL(t, f.legacy, `UPDATE `+table+` SET tenant_id = tenant_id WHERE tenant_id = 'ghost'`)
			}
			execSQL(t, f.legacy, `UPDATE meter_notes SET note = note WHERE meter_id = $1`, ghost)
			gschema, gnode := f.shardOf(t, "ghost")
			waitInt(t, 1, gnode, notes(gschema, "orphan of ghost"))
			if out := mustRun(t, "import", "status"); strings.Contains(out, "rejected") {
				t.Fatalf("rejects left after their rows got a registered tenant:\n%s", out)
			}

			// A last parent without a tenant and its child, dropped on purpose.
			stray := meter(nil)
			note(stray, "orphan of stray")
			note(nobody, "last")
			waitInt(t, 1, node, notes(schema, "last"))
			code, out, errOut = pgtenant(t, "import", "cutover", "--all")
			if code == 0 || !strings.Contains(errOut, "55000") || !strings.Contains(errOut, "2 change(s)") {
				t.Fatalf("cutover --all with a rejected parent and child: exit %d\n%s%s", code, out, errOut)
			}
			mustRun(t, "import", "cutover", "--all", "--accept-rejects")
			mustRun(t, "import", "finish")
			if n := queryInt(t, node, `SELECT count(*) FROM `+pgx.Identifier{schema, "meter_notes"}.Sanitize()+` WHERE note IN ('orphan of nobody', 'after', 'last', 'orphan of stray')`); n != 3 {
				t.Fatalf("%d notes of the test on the known tenant's shard, want 3 (orphan of nobody, after, last)", n)
			}
		})
	}
}

// hasLine reports whether a line of out starts with prefix and holds each of parts.
func hasLine(out, prefix string, parts ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, prefix) {
			continue
		}
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(l, p)
		}
		if ok {
			return true
		}
	}
	return false
}
