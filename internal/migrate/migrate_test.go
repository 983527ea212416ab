package migrate

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pressly/goose/v3"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// servers are two Postgres clusters acting as two nodes.
var servers []*pgtest.Server

// childEnv switches the test binary into a child that runs Up and prints one
// line per finished shard, so TestKilledHalfway can SIGKILL it mid-run.
const childEnv = "PGTENANT_MIGRATE_CHILD"

func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		os.Exit(runChild(spec))
	}
	pgtest.Main(m, []string{"a", "b"}, func(s []*pgtest.Server) { servers = s })
}

type childSpec struct {
	Dir     string
	Targets []Target
}

func runChild(spec string) int {
	var cs childSpec
	if err := json.Unmarshal([]byte(spec), &cs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	_, err := Up(context.Background(), os.DirFS(cs.Dir), cs.Targets, Options{
		Concurrency: 2,
		Progress:    func(ev Event) { fmt.Printf("done %d\n", ev.Done) },
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

var baseMigrations = fstest.MapFS{
	"00001_customers.sql": {Data: []byte(`-- +goose Up
CREATE TABLE customers (id bigint PRIMARY KEY, name text NOT NULL);
CREATE INDEX customers_name ON customers (name);

-- +goose Down
DROP TABLE customers;
`)},
	"00002_buildings.sql": {Data: []byte(`-- +goose Up
CREATE TABLE buildings (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers);

-- +goose Down
DROP TABLE buildings;
`)},
	// No goose annotations: the whole file is the Up section, one batch, so
	// the dollar-quoted body needs no StatementBegin/End.
	"00003_meters.sql": {Data: []byte(`CREATE TABLE meters (id bigint PRIMARY KEY, building_id bigint NOT NULL REFERENCES buildings);
CREATE FUNCTION meter_count() RETURNS bigint LANGUAGE sql AS $$
  SELECT count(*) FROM meters;
$$;
`)},
	"README.md": {Data: []byte("not a migration\n")},
}

// tablesOf maps each version of baseMigrations to the tables it creates.
var tablesOf = map[int64]string{1: "customers", 2: "buildings", 3: "meters"}

// newShards creates a fresh database on each server and n shard schemas
// spread round-robin over them, shard i on node i%2.
func newShards(t *testing.T, n int) []Target {
	t.Helper()
	dsns := []string{servers[0].NewDatabase(t), servers[1].NewDatabase(t)}
	var targets []Target
	for i := range n {
		targets = append(targets, Target{Shard: i, Schema: fmt.Sprintf("shard_%04d", i), Node: string(rune('a' + i%2)), DSN: dsns[i%2]})
	}
	createSchemas(t, targets...)
	return targets
}

func createSchemas(t *testing.T, targets ...Target) {
	t.Helper()
	for _, tg := range targets {
		mustExec(t, tg.DSN, "CREATE SCHEMA "+pgx.Identifier{tg.Schema}.Sanitize())
	}
}

func mustExec(t *testing.T, dsn, sql string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// shardState is what a shard holds: goose version rows (version → count)
// and its tables.
type shardState struct {
	rows   map[int64]int
	tables []string
}

func readState(t *testing.T, tg Target) shardState {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, tg.DSN)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	st := shardState{rows: map[int64]int{}}
	tables, err := conn.Query(ctx, "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", tg.Schema)
	if err != nil {
		t.Fatal(err)
	}
	st.tables, err = pgx.CollectRows(tables, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(st.tables, "goose_db_version") {
		return st
	}
	rows, err := conn.Query(ctx, "SELECT version_id, count(*)::int FROM "+pgx.Identifier{tg.Schema, "goose_db_version"}.Sanitize()+" GROUP BY 1")
	if err != nil {
		t.Fatal(err)
	}
	var v int64
	var c int
	if _, err := pgx.ForEachRow(rows, []any{&v, &c}, func() error { st.rows[v] = c; return nil }); err != nil {
		t.Fatal(err)
	}
	return st
}

// checkConsistent asserts that tg is at a whole version no later than upTo:
// versions 1..k applied exactly once each, their tables present and no
// table of a later version, and returns k.
func checkConsistent(t *testing.T, tg Target, upTo int64) int64 {
	t.Helper()
	st := readState(t, tg)
	var k int64
	for v := int64(1); v <= upTo; v++ {
		if st.rows[v] > 0 {
			k = v
		}
	}
	for v := int64(1); v <= upTo; v++ {
		wantRows := 0
		if v <= k {
			wantRows = 1
		}
		if got := st.rows[v]; got != wantRows {
			t.Errorf("%s: version %d has %d rows, want %d (rows %v)", tg.Schema, v, got, wantRows, st.rows)
		}
		if got, want := slices.Contains(st.tables, tablesOf[v]), v <= k; got != want {
			t.Errorf("%s at version %d: table %s present = %v, want %v (tables %v)", tg.Schema, k, tablesOf[v], got, want, st.tables)
		}
	}
	return k
}

func TestUpFanOut(t *testing.T) {
	ctx := context.Background()
	targets := newShards(t, 16)
	var mu sync.Mutex
	var events []Event
	sum, err := Up(ctx, baseMigrations, targets, Options{
		Concurrency: 3,
		Progress: func(ev Event) {
			mu.Lock()
			events = append(events, ev)
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	if got, want := sum.Migrated, 16; got != want {
		t.Errorf("Migrated = %d, want %d", got, want)
	}
	if got, want := sum.Applied, 48; got != want {
		t.Errorf("Applied = %d, want %d", got, want)
	}
	if got, want := len(events), 16; got != want {
		t.Fatalf("%d progress events, want %d", got, want)
	}
	if got, want := events[15].Done, 16; got != want {
		t.Errorf("last event Done = %d, want %d", got, want)
	}
	if got, want := events[0].Applied, []int64{1, 2, 3}; !slices.Equal(got, want) {
		t.Errorf("event Applied = %v, want %v", got, want)
	}
	for _, tg := range targets {
		if got := checkConsistent(t, tg, 3); got != 3 {
			t.Errorf("%s at version %d, want 3", tg.Schema, got)
		}
	}
	// The plain file's function resolves meters through search_path.
	conn, err := pgx.Connect(ctx, targets[5].DSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int64
	if _, err := conn.Exec(ctx, "SET search_path TO shard_0005"); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SELECT meter_count()").Scan(&n); err != nil {
		t.Errorf("call function from plain migration: %v", err)
	}
	// Nothing leaked into public.
	var public int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&public); err != nil || public != 0 {
		t.Errorf("public holds %d tables (err %v), want 0", public, err)
	}

	statuses, err := Status(ctx, baseMigrations, targets)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	for i, s := range statuses {
		if s.Target != targets[i] || s.Behind() || s.Current != 3 || s.Latest != 3 {
			t.Errorf("status %d = %+v, want current at 3", i, s)
		}
	}

	// A second run has nothing to do.
	sum, err = Up(ctx, baseMigrations, targets, Options{})
	if err != nil {
		t.Fatalf("second Up: %v", err)
	}
	if sum.Current != 16 || sum.Applied != 0 {
		t.Errorf("second Up = %+v, want 16 current, 0 applied", sum)
	}
}

func TestFailureOnOneShardThenResume(t *testing.T) {
	ctx := context.Background()
	targets := newShards(t, 16)
	broken := maps.Clone(baseMigrations)
	broken["00002_buildings.sql"] = &fstest.MapFile{Data: []byte(`-- +goose Up
CREATE TABLE buildings (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers);
-- +goose StatementBegin
DO $$ BEGIN
  IF current_schema() = 'shard_0005' THEN
    RAISE EXCEPTION 'shard 5 refuses buildings' USING ERRCODE = 'P0001';
  END IF;
END $$;
-- +goose StatementEnd

-- +goose Down
DROP TABLE buildings;
`)}
	sum, err := Up(ctx, broken, targets, Options{Concurrency: 1})
	var se *ShardError
	if !errors.As(err, &se) {
		t.Fatalf("Up error = %v, want *ShardError", err)
	}
	if se.Target.Shard != 5 || se.Target.Schema != "shard_0005" || se.Target.Node != "b" {
		t.Errorf("failed target = %+v, want shard 5 on b", se.Target)
	}
	if se.File != "00002_buildings.sql" || se.Version != 2 {
		t.Errorf("failed file = %q version %d, want 00002_buildings.sql version 2", se.File, se.Version)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "P0001" {
		t.Errorf("error %v does not unwrap to a PgError with SQLSTATE P0001", err)
	}
	for _, want := range []string{"shard 5", "shard_0005", "node b", "00002_buildings.sql", "shard 5 refuses buildings", "P0001"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if sum.Failed != 1 || sum.Skipped == 0 || sum.Migrated+sum.Current+sum.Failed+sum.Skipped != 16 {
		t.Errorf("summary = %+v, want 1 failed, some skipped, 16 in all", sum)
	}
	// Node b (odd shards, one worker) stopped at shard 5: 7, 9, ... never started.
	for _, tg := range targets {
		k := checkConsistent(t, tg, 3)
		switch {
		case tg.Shard == 5 && k != 1:
			t.Errorf("shard 5 at version %d, want 1 (version 2 rolled back)", k)
		case tg.Node == "b" && tg.Shard > 5 && k != 0:
			t.Errorf("shard %d at version %d, want 0 (never started)", tg.Shard, k)
		}
	}

	statuses, err := Status(ctx, baseMigrations, targets)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	behind := 0
	for _, s := range statuses {
		if s.Behind() {
			behind++
		}
		if s.Target.Shard == 5 && !slices.Equal(s.Pending, []int64{2, 3}) {
			t.Errorf("shard 5 pending = %v, want [2 3]", s.Pending)
		}
	}
	if behind != sum.Failed+sum.Skipped {
		t.Errorf("%d shards behind, want %d (failed + skipped)", behind, sum.Failed+sum.Skipped)
	}

	// The fixed file differs from the one applied on the shards that got
	// version 2: refused, naming them, until the change is accepted.
	var drift *DriftError
	if _, err := Up(ctx, baseMigrations, targets, Options{Concurrency: 1}); !errors.As(err, &drift) {
		t.Fatalf("rerun with a fixed file applied on some shards: %v, want *DriftError", err)
	}
	var got2 []int
	for _, tg := range targets {
		if readState(t, tg).rows[2] == 1 {
			got2 = append(got2, tg.Shard)
		}
	}
	if want := []Drift{{Mismatch{Kind: Changed, Version: 2, AppliedFile: "00002_buildings.sql", File: "00002_buildings.sql"}, got2}}; !reflect.DeepEqual(drift.Drifts, want) {
		t.Errorf("drifts = %+v, want %+v", drift.Drifts, want)
	}

	// Fixed file, rerun: everything finishes, nothing twice.
	sum, err = Up(ctx, baseMigrations, targets, Options{Concurrency: 1, AllowChanged: true})
	if err != nil {
		t.Fatalf("rerun: %v", err)
	}
	if len(sum.Accepted) != 1 || !slices.Equal(sum.Accepted[0].Shards, got2) {
		t.Errorf("accepted = %+v, want version 2 on %v", sum.Accepted, got2)
	}
	if sum.Migrated == 0 || sum.Migrated+sum.Current != 16 {
		t.Errorf("rerun summary = %+v", sum)
	}
	for _, tg := range targets {
		if k := checkConsistent(t, tg, 3); k != 3 {
			t.Errorf("%s at version %d after rerun, want 3", tg.Schema, k)
		}
	}
}

func TestNewShardGetsEveryMigration(t *testing.T) {
	ctx := context.Background()
	targets := newShards(t, 6)
	first := maps.Clone(baseMigrations)
	delete(first, "00003_meters.sql")
	if _, err := Up(ctx, first, targets[:4], Options{}); err != nil {
		t.Fatalf("Up: %v", err)
	}
	// Shards 4 and 5 were created but never migrated; a new file arrived.
	statuses, err := Status(ctx, baseMigrations, targets)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	for _, s := range statuses {
		want := []int64{3}
		wantCurrent := int64(2)
		if s.Target.Shard >= 4 {
			want, wantCurrent = []int64{1, 2, 3}, 0
		}
		if !slices.Equal(s.Pending, want) || s.Current != wantCurrent || s.Latest != 3 {
			t.Errorf("shard %d status = current %d latest %d pending %v, want current %d latest 3 pending %v",
				s.Target.Shard, s.Current, s.Latest, s.Pending, wantCurrent, want)
		}
	}
	sum, err := Up(ctx, baseMigrations, targets, Options{})
	if err != nil {
		t.Fatalf("Up: %v", err)
	}
	if got, want := sum.Applied, 4*1+2*3; got != want {
		t.Errorf("Applied = %d, want %d", got, want)
	}
	for _, tg := range targets {
		if k := checkConsistent(t, tg, 3); k != 3 {
			t.Errorf("%s at version %d, want 3", tg.Schema, k)
		}
	}
}

func TestUpRefuses(t *testing.T) {
	ctx := context.Background()
	targets := newShards(t, 2)
	missing := Target{Shard: 9, Schema: "shard_0009", Node: "a", DSN: targets[0].DSN}
	otherDSN := targets[0]
	otherDSN.Shard, otherDSN.Schema, otherDSN.DSN = 3, "shard_0003", targets[1].DSN
	tests := []struct {
		name    string
		fsys    fs.FS
		targets []Target
		check   func(error) bool
	}{
		{"missing schema", baseMigrations, []Target{missing}, func(err error) bool {
			var se *ShardError
			return errors.Is(err, ErrNoSchema) && errors.As(err, &se) && se.Target.Shard == 9
		}},
		{"no migrations", fstest.MapFS{"README.md": {Data: []byte("x")}}, targets, func(err error) bool {
			return errors.Is(err, goose.ErrNoMigrations)
		}},
		{"one node two dsns", baseMigrations, []Target{targets[0], otherDSN}, func(err error) bool {
			return err != nil && strings.Contains(err.Error(), "two connection strings")
		}},
		{"schema twice", baseMigrations, []Target{targets[0], targets[0]}, func(err error) bool {
			return err != nil && strings.Contains(err.Error(), "given twice")
		}},
		{"duplicate version", fstest.MapFS{
			"00001_a.sql": {Data: []byte("SELECT 1;")},
			"00001_b.sql": {Data: []byte("SELECT 1;")},
		}, targets, func(err error) bool { return err != nil }},
		// ops16: `migrate create`'s skeleton applied before its SQL was
		// written recorded the version, so the SQL never ran.
		{"empty up section", fstest.MapFS{
			"00001_a.sql": {Data: []byte("SELECT 1;")},
			"00002_b.sql": {Data: []byte(skeleton)},
		}, targets, func(err error) bool {
			var ee *EmptyUpError
			return errors.As(err, &ee) && ee.File == "00002_b.sql" && strings.Contains(err.Error(), "SQLSTATE 42601")
		}},
		{"comments only", fstest.MapFS{"00001_a.sql": {Data: []byte("-- nothing yet\n\n")}}, targets, func(err error) bool {
			var ee *EmptyUpError
			return errors.As(err, &ee)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Up(ctx, tc.fsys, tc.targets, Options{})
			if !tc.check(err) {
				t.Errorf("Up error = %v", err)
			}
		})
	}
	// Nothing was touched on the real shards.
	for _, tg := range targets {
		if st := readState(t, tg); len(st.tables) != 0 {
			t.Errorf("%s has tables %v after refused runs", tg.Schema, st.tables)
		}
	}
	if _, err := Status(ctx, baseMigrations, []Target{missing}); !errors.Is(err, ErrNoSchema) {
		t.Errorf("Status of a missing schema: %v, want ErrNoSchema", err)
	}
}

// TestKilledHalfway SIGKILLs a child process running Up with a slow
// migration after a few shards finished, then runs Up again: every shard
// ends with each migration applied exactly once.
func TestKilledHalfway(t *testing.T) {
	ctx := context.Background()
	targets := newShards(t, 64)
	dir := t.TempDir()
	files := map[string]string{
		"00001_customers.sql": string(baseMigrations["00001_customers.sql"].Data),
		"00002_buildings.sql": `-- +goose Up
CREATE TABLE buildings (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers);
SELECT pg_sleep(0.1);
-- +goose Down
DROP TABLE buildings;
`,
		"00003_meters.sql": string(baseMigrations["00003_meters.sql"].Data),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	spec, err := json.Marshal(childSpec{Dir: dir, Targets: targets})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(out)
	done := 0
	for done < 8 && lines.Scan() {
		done++
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	werr := cmd.Wait()
	if done < 8 {
		t.Fatalf("child finished only %d shards before exiting: %v\n%s", done, werr, stderr.String())
	}
	var exitErr *exec.ExitError
	if !errors.As(werr, &exitErr) || exitErr.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child was not killed: %v", werr)
	}

	// Whatever the kill interrupted rolled back: each shard is at a whole version.
	for _, tg := range targets {
		checkConsistent(t, tg, 3)
	}
	runCtx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	sum, err := Up(runCtx, os.DirFS(dir), targets, Options{Concurrency: 2})
	if err != nil {
		t.Fatalf("rerun: %v", err)
	}
	if sum.Migrated == 0 || sum.Migrated+sum.Current != len(targets) || sum.Applied >= 3*len(targets) {
		t.Errorf("rerun summary = %+v, want some shards finished by the rerun only", sum)
	}
	for _, tg := range targets {
		if k := checkConsistent(t, tg, 3); k != 3 {
			t.Errorf("%s at version %d after rerun, want 3", tg.Schema, k)
		}
	}
}
