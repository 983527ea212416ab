package migrate

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/pgtenant/pgtenant/internal/tables"
)

// reversible is baseMigrations with a Down section in every file.
var reversible = func() fstest.MapFS {
	m := maps.Clone(baseMigrations)
	m["00003_meters.sql"] = &fstest.MapFile{Data: []byte(`-- +goose Up
CREATE TABLE meters (id bigint PRIMARY KEY, building_id bigint NOT NULL REFERENCES buildings);
-- +goose StatementBegin
CREATE FUNCTION meter_count() RETURNS bigint LANGUAGE sql AS $$
  SELECT count(*) FROM meters;
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION meter_count();
DROP TABLE meters;
`)}
	return m
}()

func TestDownOneStepAndTo(t *testing.T) {
	ctx := context.Background()
	targets := newShards(t, 6)
	// Shards 0-3 at version 3, shards 4 and 5 at version 2.
	two := maps.Clone(reversible)
	delete(two, "00003_meters.sql")
	if _, err := Up(ctx, two, targets, Options{}); err != nil {
		t.Fatalf("Up: %v", err)
	}
	if _, err := Up(ctx, reversible, targets[:4], Options{}); err != nil {
		t.Fatalf("Up: %v", err)
	}

	// One step: version 3 goes, where it was; shards 4 and 5 stay.
	sum, err := Down(ctx, reversible, targets, OneStep, Options{Concurrency: 2})
	if err != nil {
		t.Fatalf("Down one step: %v", err)
	}
	if sum.To != 2 || sum.Migrated != 4 || sum.Current != 2 || sum.Applied != 4 {
		t.Errorf("Down one step = %+v, want to 2, 4 rolled back, 2 current, 4 files", sum)
	}
	for _, tg := range targets {
		if k := checkConsistent(t, tg, 3); k != 2 {
			t.Errorf("%s at version %d after one step down, want 2", tg.Schema, k)
		}
	}

	// --to 0: everything, newest first, on every shard.
	var events []Event // Progress calls are serialised
	sum, err = Down(ctx, reversible, targets, 0, Options{Progress: func(ev Event) { events = append(events, ev) }})
	if err != nil {
		t.Fatalf("Down --to 0: %v", err)
	}
	if sum.To != 0 || sum.Migrated != 6 || sum.Applied != 12 {
		t.Errorf("Down --to 0 = %+v, want 6 shards, 12 files", sum)
	}
	for _, ev := range events {
		if !slices.Equal(ev.Applied, []int64{2, 1}) {
			t.Errorf("shard %d rolled back %v, want [2 1]", ev.Target.Shard, ev.Applied)
		}
	}
	for _, tg := range targets {
		if k := checkConsistent(t, tg, 3); k != 0 {
			t.Errorf("%s at version %d after down to 0, want 0", tg.Schema, k)
		}
	}
	// Nothing left: one step does nothing.
	if sum, err := Down(ctx, reversible, targets, OneStep, Options{}); err != nil || sum.Applied != 0 || sum.To != 0 {
		t.Errorf("Down with nothing applied: %+v, %v", sum, err)
	}
	// And up again, from scratch.
	if _, err := Up(ctx, reversible, targets, Options{}); err != nil {
		t.Fatalf("Up after Down: %v", err)
	}
	for _, tg := range targets {
		if k := checkConsistent(t, tg, 3); k != 3 {
			t.Errorf("%s at version %d, want 3", tg.Schema, k)
		}
	}
	// --to a middle version.
	if sum, err := Down(ctx, reversible, targets, 1, Options{}); err != nil || sum.Applied != 12 {
		t.Fatalf("Down --to 1: %+v, %v", sum, err)
	}
	for _, tg := range targets {
		if k := checkConsistent(t, tg, 3); k != 1 {
			t.Errorf("%s at version %d after down to 1, want 1", tg.Schema, k)
		}
	}
}

// TestDownWithoutDownSection: a version to roll back whose file has no Down
// section stops the run before anything runs on any shard.
func TestDownWithoutDownSection(t *testing.T) {
	ctx := context.Background()
	targets := newShards(t, 4)
	if _, err := Up(ctx, baseMigrations, targets, Options{}); err != nil {
		t.Fatalf("Up: %v", err)
	}
	for _, to := range []int64{OneStep, 0} {
		_, err := Down(ctx, baseMigrations, targets, to, Options{})
		var nd *NoDownError
		if !errors.As(err, &nd) {
			t.Fatalf("Down to %d: %v, want *NoDownError", to, err)
		}
		if want := []NoDown{{Version: 3, File: "00003_meters.sql", Shards: []int{0, 1, 2, 3}}}; !reflect.DeepEqual(nd.Files, want) {
			t.Errorf("Down to %d: %+v, want %+v", to, nd.Files, want)
		}
		for _, s := range []string{"00003_meters.sql", "version 3", "shards 0-3", "-- +goose Down", "nothing was run"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not mention %q", err, s)
			}
		}
		for _, tg := range targets {
			if k := checkConsistent(t, tg, 3); k != 3 {
				t.Errorf("%s at version %d after a refused down, want 3", tg.Schema, k)
			}
		}
	}
	// A failing Down section stops the run like Up: the shard keeps the
	// version, the error names the shard and file.
	failing := maps.Clone(reversible)
	failing["00003_meters.sql"] = &fstest.MapFile{Data: []byte("-- +goose Up\nCREATE TABLE meters (id int);\n-- +goose Down\nDROP TABLE no_such_table;\n")}
	_, err := Down(ctx, failing, targets, OneStep, Options{AllowChanged: true, Concurrency: 1})
	var se *ShardError
	if !errors.As(err, &se) || se.File != "00003_meters.sql" || !strings.Contains(err.Error(), "42P01") {
		t.Fatalf("Down with a failing Down section: %v", err)
	}
	for _, tg := range targets {
		if k := checkConsistent(t, tg, 3); k != 3 {
			t.Errorf("%s at version %d after a failed down, want 3", tg.Schema, k)
		}
	}
}

func TestCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "migrations")
	at := time.Date(2026, 12, 6, 10, 15, 0, 0, time.FixedZone("CET", 3600))
	p, err := Create(dir, "AddUsersEmail", at)
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	if want := filepath.Join(dir, "20261206091500_add_users_email.sql"); p != want {
		t.Errorf("Create wrote %s, want %s (UTC timestamp)", p, want)
	}
	files, err := Files(os.DirFS(dir))
	if err != nil || len(files) != 1 || files[0].Version != 20261206091500 || !files[0].HasDown {
		t.Fatalf("Files after Create = %+v, %v", files, err)
	}
	for _, bad := range []string{"", "has space", "../escape", "a.b", "1st", "naïve", "semi;colon", strings.Repeat("x", 101)} {
		if _, err := Create(dir, bad, at.Add(time.Hour)); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Create(%q) = %v, want ErrInvalidName", bad, err)
		}
	}
	if _, err := Create(dir, "add-users-email", at.Add(time.Hour)); err == nil || !strings.Contains(err.Error(), "already has a migration named add_users_email") {
		t.Errorf("Create of an existing name: %v", err)
	}
	if _, err := Create(dir, "other", at); err == nil || !strings.Contains(err.Error(), "already has version 20261206091500") {
		t.Errorf("Create in the same second: %v", err)
	}
	if got, _ := os.ReadDir(dir); len(got) != 1 {
		t.Errorf("refused creates left files: %v", got)
	}

	// The skeleton shows the registry's annotation, commented out: as
	// written it declares no rule, and it goes up as it is.
	body, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), "\n-- -- pgtenant: tenant_column=") {
		t.Errorf("the skeleton gives no hint of the tenant_column annotation:\n%s", body)
	}
	if rules, err := tables.ParseAnnotations(p, string(body)); err != nil || len(rules) != 0 {
		t.Errorf("annotations of the untouched skeleton: %+v, %v; want none", rules, err)
	}
	uncommented := strings.Replace(string(body), "-- -- pgtenant: tenant_column=customer_id\n", "-- pgtenant: tenant_column=customer_id\nCREATE TABLE invoices (customer_id text);\n", 1)
	if rules, err := tables.ParseAnnotations(p, uncommented); err != nil || len(rules) != 1 || rules[0].Name != "invoices" || rules[0].TenantColumn != "customer_id" {
		t.Errorf("annotations of the skeleton's line uncommented: %+v, %v; want invoices' tenant_column=customer_id", rules, err)
	}
	ctx := context.Background()
	untouched := filepath.Join(t.TempDir(), "migrations")
	if _, err := Create(untouched, "nothing_yet", at); err != nil {
		t.Fatal(err)
	}
	// ops16: Up of the untouched skeleton is refused, nothing recorded (it
	// applied, recording the version: the SQL written into the file later
	// never ran, the file then drifted).
	one := newShards(t, 1)
	var empty *EmptyUpError
	if sum, err := Up(ctx, os.DirFS(untouched), one, Options{}); !errors.As(err, &empty) || sum.Applied != 0 {
		t.Errorf("Up of an untouched skeleton: %+v, %v; want an *EmptyUpError", sum, err)
	}
	if st := readState(t, one[0]); len(st.rows) != 0 {
		t.Errorf("versions recorded after the refused Up: %+v", st.rows)
	}

	// The skeleton, filled in, goes up and down on real shards.
	filled := strings.Replace(string(body), "-- +goose Down\n", "-- +goose Down\nDROP TABLE users;\n", 1)
	filled = strings.Replace(filled, "-- +goose Up\n", "-- +goose Up\nCREATE TABLE users (id int, email text);\n", 1)
	if err := os.WriteFile(p, []byte(filled), 0o644); err != nil {
		t.Fatal(err)
	}
	targets := newShards(t, 2)
	if sum, err := Up(ctx, os.DirFS(dir), targets, Options{}); err != nil || sum.Applied != 2 {
		t.Fatalf("Up of a created file: %+v, %v", sum, err)
	}
	for _, tg := range targets {
		if st := readState(t, tg); !slices.Contains(st.tables, "users") || st.rows[20261206091500] != 1 {
			t.Errorf("%s after Up: %+v", tg.Schema, st)
		}
	}
	if sum, err := Down(ctx, os.DirFS(dir), targets, OneStep, Options{}); err != nil || sum.Applied != 2 {
		t.Fatalf("Down of a created file: %+v, %v", sum, err)
	}
	for _, tg := range targets {
		if st := readState(t, tg); slices.Contains(st.tables, "users") || st.rows[20261206091500] != 0 {
			t.Errorf("%s after Down: %+v", tg.Schema, st)
		}
	}
}

func TestHasDown(t *testing.T) {
	for body, want := range map[string]bool{
		"-- +goose Up\nSELECT 1;\n-- +goose Down\nSELECT 2;\n": true,
		"-- +goose up\nSELECT 1;\n--  +goose  down\n":          true,
		"--+goose Down\n":                         true,
		"-- +goose Up\nSELECT 1;\n":               false,
		"SELECT 1; -- +goose Down\n":              false,
		"-- +goose Up\n-- +goose Down and more\n": false,
		"CREATE TABLE t (id int);\n":              false,
	} {
		if got := hasDown([]byte(body)); got != want {
			t.Errorf("hasDown(%q) = %v, want %v", body, got, want)
		}
	}
}

// upHasSQL tells a file with statements in its Up section from one with
// only comments there.
func TestUpHasSQL(t *testing.T) {
	for body, want := range map[string]bool{
		skeleton:              false,
		"-- just a comment\n": false,
		"SELECT 1;\n":         true,
		"-- +goose Up\n-- +goose Down\nDROP TABLE x;\n":                                                                                     false,
		"-- +goose Up\n  CREATE TABLE x (id int);\n-- +goose Down\n":                                                                        true,
		"-- +goose Up\n-- +goose StatementBegin\nCREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql;\n-- +goose StatementEnd\n": true,
	} {
		if got := upHasSQL([]byte(body)); got != want {
			t.Errorf("upHasSQL(%q) = %v, want %v", body, got, want)
		}
	}
}
