package shared

import (
	"strings"
	"testing"
	"testing/fstest"
)

func TestReadMigrations(t *testing.T) {
	fsys := fstest.MapFS{
		"00002_rates.sql":  {Data: []byte("-- +goose Up\nCREATE TABLE rates (id int);\n-- +goose Down\nDROP TABLE rates;\n")},
		"00001_plans.sql":  {Data: []byte("CREATE TABLE plans (id int);\n")},
		"README.md":        {Data: []byte("not a migration")},
		"notes_00003.sql":  {Data: []byte("not a migration either")},
		"10_countries.sql": {Data: []byte("CREATE TABLE countries (code text);")},
	}
	ms, err := ReadMigrations(fsys)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		got = append(got, m.Name)
	}
	if want := "00001_plans.sql 00002_rates.sql 10_countries.sql"; strings.Join(got, " ") != want {
		t.Fatalf("order = %v, want %s", got, want)
	}
	if strings.Contains(ms[1].SQL, "DROP") || !strings.Contains(ms[1].SQL, "CREATE TABLE rates") {
		t.Fatalf("Up part of a goose file = %q", ms[1].SQL)
	}
	fsys["1_dup.sql"] = &fstest.MapFile{Data: []byte("SELECT 1")}
	if _, err := ReadMigrations(fsys); err == nil || !strings.Contains(err.Error(), "same version") {
		t.Fatalf("duplicate version: %v", err)
	}
}
