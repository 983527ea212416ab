package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
)

// recorded reads the file name and checksum recorded per applied version on
// tg's shard.
func recorded(t *testing.T, tg Target) map[int64][2]string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, tg.DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	a, err := appliedVersions(ctx, conn, tg)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int64][2]string{}
	for _, v := range a {
		out[v.Version] = [2]string{v.File, v.Checksum}
	}
	return out
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestChecksumRecordedAndChangeRefused(t *testing.T) {
	ctx := context.Background()
	targets := newShards(t, 4)
	if _, err := Up(ctx, baseMigrations, targets, Options{}); err != nil {
		t.Fatalf("Up: %v", err)
	}
	for _, tg := range targets {
		got := recorded(t, tg)
		for name, f := range baseMigrations {
			if !strings.HasSuffix(name, ".sql") {
				continue
			}
			v := int64(name[4] - '0')
			if want := [2]string{name, sha(f.Data)}; got[v] != want {
				t.Errorf("%s version %d recorded %v, want %v", tg.Schema, v, got[v], want)
			}
		}
	}

	// Edit an applied file and add a new one: Up refuses before running
	// anything, naming the file, the version and the shards.
	changed := maps.Clone(baseMigrations)
	changed["00002_buildings.sql"] = &fstest.MapFile{Data: append([]byte("-- a comment added later\n"), baseMigrations["00002_buildings.sql"].Data...)}
	changed["00004_tariffs.sql"] = &fstest.MapFile{Data: []byte("CREATE TABLE tariffs (id int);")}
	_, err := Up(ctx, changed, targets, Options{})
	var drift *DriftError
	if !errors.As(err, &drift) {
		t.Fatalf("Up with a changed file: %v, want *DriftError", err)
	}
	want := []Drift{{Mismatch{Kind: Changed, Version: 2, AppliedFile: "00002_buildings.sql", File: "00002_buildings.sql"}, []int{0, 1, 2, 3}}}
	if !reflect.DeepEqual(drift.Drifts, want) {
		t.Errorf("drifts = %+v, want %+v", drift.Drifts, want)
	}
	for _, s := range []string{"00002_buildings.sql", "version 2", "shards 0-3", "--allow-changed"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not mention %q", err, s)
		}
	}
	for _, tg := range targets {
		if st := readState(t, tg); slices.Contains(st.tables, "tariffs") || st.rows[4] != 0 {
			t.Errorf("%s got version 4 from a refused run: %+v", tg.Schema, st)
		}
	}
	st, err := Status(ctx, changed, targets)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if got := Drifts(st); !reflect.DeepEqual(got, want) {
		t.Errorf("Status drifts = %+v, want %+v", got, want)
	}

	// --allow-changed: goes on, reports what it accepted, records the new
	// checksum; the next plain run is clean.
	sum, err := Up(ctx, changed, targets, Options{AllowChanged: true})
	if err != nil {
		t.Fatalf("Up --allow-changed: %v", err)
	}
	if !reflect.DeepEqual(sum.Accepted, want) || sum.Applied != 4 {
		t.Errorf("Up --allow-changed: accepted %+v, applied %d; want %+v, 4", sum.Accepted, sum.Applied, want)
	}
	for _, tg := range targets {
		if got, want := recorded(t, tg)[2][1], sha(changed["00002_buildings.sql"].Data); got != want {
			t.Errorf("%s version 2 checksum %s, want the new %s", tg.Schema, got, want)
		}
	}
	if sum, err := Up(ctx, changed, targets, Options{}); err != nil || len(sum.Accepted) != 0 || sum.Current != 4 {
		t.Errorf("Up after accepting: %+v, %v", sum, err)
	}

	// A deleted applied file is refused too, then accepted with AllowChanged.
	missing := maps.Clone(changed)
	delete(missing, "00004_tariffs.sql")
	_, err = Up(ctx, missing, targets, Options{})
	if !errors.As(err, &drift) || len(drift.Drifts) != 1 || drift.Drifts[0].Kind != Missing || drift.Drifts[0].Version != 4 ||
		!strings.Contains(err.Error(), "00004_tariffs.sql") {
		t.Errorf("Up without an applied file: %v", err)
	}
	if _, err := Up(ctx, missing, targets, Options{AllowChanged: true}); err != nil {
		t.Errorf("Up --allow-changed without an applied file: %v", err)
	}
}

// TestAdoptChecksums: shards migrated before checksums were recorded (a
// version table without the columns) get the current files' on the next
// run, and are checked from then on.
func TestAdoptChecksums(t *testing.T) {
	ctx := context.Background()
	targets := newShards(t, 4)
	if _, err := Up(ctx, baseMigrations, targets, Options{}); err != nil {
		t.Fatalf("Up: %v", err)
	}
	for _, tg := range targets {
		mustExec(t, tg.DSN, "ALTER TABLE "+pgx.Identifier{tg.Schema, "goose_db_version"}.Sanitize()+" DROP COLUMN file_name, DROP COLUMN checksum")
	}
	st, err := Status(ctx, baseMigrations, targets)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	for _, s := range st {
		if !slices.Equal(s.Unrecorded, []int64{1, 2, 3}) || len(s.Drift) != 0 || s.Behind() {
			t.Errorf("status of an old shard = %+v, want versions 1-3 unrecorded, no drift", s)
		}
	}
	// An old shard cannot tell a changed file: the first run adopts the
	// files as they are.
	more := maps.Clone(baseMigrations)
	more["00004_tariffs.sql"] = &fstest.MapFile{Data: []byte("CREATE TABLE tariffs (id int);")}
	sum, err := Up(ctx, more, targets, Options{})
	if err != nil {
		t.Fatalf("Up on old shards: %v", err)
	}
	if sum.Adopted != 12 || sum.Applied != 4 {
		t.Errorf("Up on old shards: adopted %d, applied %d; want 12, 4", sum.Adopted, sum.Applied)
	}
	for _, tg := range targets {
		got := recorded(t, tg)
		if got[1] != [2]string{"00001_customers.sql", sha(baseMigrations["00001_customers.sql"].Data)} ||
			got[4] != [2]string{"00004_tariffs.sql", sha(more["00004_tariffs.sql"].Data)} {
			t.Errorf("%s records %v", tg.Schema, got)
		}
	}
	if sum, err := Up(ctx, more, targets, Options{}); err != nil || sum.Adopted != 0 {
		t.Errorf("second Up: adopted %d, %v; want 0, nil", sum.Adopted, err)
	}
	changed := maps.Clone(more)
	changed["00001_customers.sql"] = &fstest.MapFile{Data: []byte("CREATE TABLE customers (id int);")}
	var drift *DriftError
	if _, err := Up(ctx, changed, targets, Options{}); !errors.As(err, &drift) {
		t.Errorf("Up with a changed adopted file: %v, want *DriftError", err)
	}
}

// TestVersionShadowing: a version applied from one file (the demo's
// 00001_energy_schema.sql) is not taken as done for another file with the
// same version; two files with one version are refused.
func TestVersionShadowing(t *testing.T) {
	ctx := context.Background()
	targets := newShards(t, 4)
	demo := fstest.MapFS{"00001_energy_schema.sql": {Data: []byte("CREATE TABLE meters (id int);")}}
	if _, err := Up(ctx, demo, targets[:2], Options{}); err != nil {
		t.Fatalf("Up: %v", err)
	}
	mine := fstest.MapFS{
		"00001_users.sql":  {Data: []byte("CREATE TABLE users (id int);")},
		"00002_orders.sql": {Data: []byte("CREATE TABLE orders (id int);")},
	}
	for _, allow := range []bool{false, true} {
		_, err := Up(ctx, mine, targets, Options{AllowChanged: allow})
		var drift *DriftError
		if !errors.As(err, &drift) {
			t.Fatalf("Up (allow changed %v) over another file's version: %v, want *DriftError", allow, err)
		}
		want := []Drift{{Mismatch{Kind: Renamed, Version: 1, AppliedFile: "00001_energy_schema.sql", File: "00001_users.sql"}, []int{0, 1}}}
		if !reflect.DeepEqual(drift.Drifts, want) {
			t.Errorf("drifts = %+v, want %+v", drift.Drifts, want)
		}
		for _, s := range []string{"version 1 was applied from 00001_energy_schema.sql on shards 0, 1", "00001_users.sql", "new version"} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("error %q does not mention %q", err, s)
			}
		}
	}
	for _, tg := range targets {
		if st := readState(t, tg); slices.Contains(st.tables, "users") || slices.Contains(st.tables, "orders") {
			t.Errorf("%s was migrated by a refused run: %v", tg.Schema, st.tables)
		}
	}

	dup := fstest.MapFS{
		"00001_users.sql":    {Data: []byte("CREATE TABLE users (id int);")},
		"00001_accounts.sql": {Data: []byte("CREATE TABLE accounts (id int);")},
	}
	for name, err := range map[string]error{"Files": second(Files(dup)), "Up": second(Up(ctx, dup, targets, Options{}))} {
		if err == nil || !strings.Contains(err.Error(), "version 1 is in two files, 00001_accounts.sql and 00001_users.sql") {
			t.Errorf("%s with two files for version 1: %v", name, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestShardRanges(t *testing.T) {
	for _, tc := range []struct {
		ids  []int
		want string
	}{
		{[]int{3}, "shard 3"},
		{[]int{0, 1}, "shards 0, 1"},
		{[]int{0, 1, 2, 3, 5, 7, 8, 9, 12}, "shards 0-3, 5, 7-9, 12"},
	} {
		if got := ShardRanges(tc.ids); got != tc.want {
			t.Errorf("ShardRanges(%v) = %q, want %q", tc.ids, got, tc.want)
		}
	}
}

// TestOutOfOrderRefused: a file older than versions the shards already have
// (a branch merged late) is refused before anything runs, naming it.
func TestOutOfOrderRefused(t *testing.T) {
	ctx := context.Background()
	targets := newShards(t, 4)
	early := maps.Clone(baseMigrations)
	delete(early, "00002_buildings.sql")
	early["00003_meters.sql"] = &fstest.MapFile{Data: []byte("CREATE TABLE meters (id int);")}
	if _, err := Up(ctx, early, targets[:3], Options{}); err != nil {
		t.Fatalf("Up: %v", err)
	}
	late := maps.Clone(early)
	late["00002_buildings.sql"] = baseMigrations["00002_buildings.sql"]
	late["00004_tariffs.sql"] = &fstest.MapFile{Data: []byte("CREATE TABLE tariffs (id int);")}
	_, err := Up(ctx, late, targets, Options{})
	var ooo *OutOfOrderError
	if !errors.As(err, &ooo) {
		t.Fatalf("Up with a late older file: %v, want *OutOfOrderError", err)
	}
	if len(ooo.Files) != 1 || ooo.Files[0].File.Name != "00002_buildings.sql" || ooo.Files[0].Newer != 3 || !slices.Equal(ooo.Files[0].Shards, []int{0, 1, 2}) {
		t.Errorf("out of order = %+v, want 00002_buildings.sql below 3 on shards 0-2", ooo.Files)
	}
	if want := "00002_buildings.sql (version 2) is not applied on shards 0-2, which already have version 3"; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
	for _, tg := range targets {
		if st := readState(t, tg); st.rows[2] != 0 || st.rows[4] != 0 {
			t.Errorf("%s was migrated by a refused run: %v", tg.Schema, st.rows)
		}
	}
}
