package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/placement"
)

var nodeA, nodeB *pgtest.Server

// asPgtenantEnv makes the test binary run as pgtenant, so commands that
// start `pgtenant` itself as a child (the dev router) can be tested.
const asPgtenantEnv = "PGTENANT_TEST_AS_PGTENANT"

func TestMain(m *testing.M) {
	tieRouterChildren = true // routers this binary starts die with it
	if os.Getenv(asPgtenantEnv) == "1" {
		os.Exit(run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	if os.Getenv(killedParentEnv) == "1" {
		os.Exit(killedParent())
	}
	pgtest.Main(m, []string{"a", "b"}, func(s []*pgtest.Server) { nodeA, nodeB = s[0], s[1] })
}

// pgtenant runs the CLI in-process and returns its exit code and output.
func pgtenant(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return pgtenantIn(t, "", args...)
}

// pgtenantIn is pgtenant with stdin.
func pgtenantIn(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	code := run(ctx, args, strings.NewReader(stdin), &out, &errOut)
	return code, out.String(), errOut.String()
}

func mustRun(t *testing.T, args ...string) string {
	t.Helper()
	code, out, errOut := pgtenant(t, args...)
	if code != 0 {
		t.Fatalf("pgtenant %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func TestCLIEndToEnd(t *testing.T) {
	files := map[string][]byte{}
	for _, f := range []string{"00001_accounts.sql", "00002_invoices.sql"} {
		b, err := os.ReadFile(filepath.Join("testdata", "migrations", f))
		if err != nil {
			t.Fatal(err)
		}
		files[f] = b
	}
	t.Chdir(t.TempDir()) // no config file found by accident
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))

	code, _, errOut := pgtenant(t, "init", "--shards", "100")
	if code != 1 || !strings.Contains(errOut, "power of two") {
		t.Fatalf("init --shards 100: exit %d, %q", code, errOut)
	}
	if out := mustRun(t, "init", "--shards", "16"); !strings.Contains(out, "16 shards") {
		t.Fatalf("init output %q", out)
	}
	mustRun(t, "node", "add", "a", nodeA.NewDatabase(t))
	mustRun(t, "node", "add", "b", nodeB.NewDatabase(t))
	// A name already taken is refused before any check (which would create
	// a replication slot on the node), with 42710 and what to do.
	if code, out, errOut := pgtenant(t, "node", "add", "a", nodeA.NewDatabase(t)); code != 1 || !strings.Contains(errOut, `node "a" is already registered (SQLSTATE 42710)`) ||
		!strings.Contains(errOut, "pgtenant node list") || strings.Contains(out+errOut, "reachable") {
		t.Fatalf("node add of a taken name: exit %d\n%s%s", code, out, errOut)
	}
	port, _ := localpg.FreePort()
	code, out, errOut := pgtenant(t, "node", "add", "c", fmt.Sprintf("postgres://u:hunter2@127.0.0.1:%d/x?connect_timeout=2", port))
	if code != 1 || !strings.Contains(out+errOut, "reachable") || strings.Contains(out+errOut, "hunter2") {
		t.Fatalf("node add unreachable: exit %d\n%s%s", code, out, errOut)
	}
	if out := mustRun(t, "shard", "create"); !strings.Contains(out, "16 shards created") {
		t.Fatalf("shard create output %q", out)
	}
	out = mustRun(t, "node", "list")
	if strings.Count(out, " 8 ") != 2 {
		t.Fatalf("node list does not show 8 shards each:\n%s", out)
	}
	mustRun(t, "node", "check")

	id := `O'Reilly; "quoted" 東京`
	mustRun(t, "tenant", "add", id)
	out = mustRun(t, "tenant", "locate", id)
	if want := fmt.Sprintf("shard:   %d\n", placement.ShardOf(id, 16)); !strings.Contains(out, want) {
		t.Fatalf("tenant locate:\n%s\nwant %q", out, want)
	}
	mustRun(t, "tenant", "add", "pinned", "--shard", "3")
	if out := mustRun(t, "tenant", "list", "--shard", "3"); !strings.Contains(out, "pinned  3      explicit") {
		t.Fatalf("tenant list --shard 3:\n%s", out)
	}
	if code, _, errOut := pgtenant(t, "tenant", "locate", "nobody"); code != 1 || !strings.Contains(errOut, `tenant "nobody" is unknown (SQLSTATE 42704)`) {
		t.Fatalf("locate nobody: exit %d %q", code, errOut)
	}
	// Unknown names get the shape of shard move's: a SQLSTATE and where the names are.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"node", "remove", "nosuch"}, "`pgtenant node list`"},
		{[]string{"node", "check", "nosuch"}, "`pgtenant node list`"},
		{[]string{"node", "stats", "nosuch"}, "`pgtenant node list`"},
		{[]string{"tenant", "list", "--shard", "999"}, "`pgtenant shard list`"},
		{[]string{"tenant", "list", "--shard", "16"}, "`pgtenant shard list`"},
		{[]string{"tenant", "add", "placed", "--shard", "16"}, "`pgtenant shard list`"},
	} {
		code, out, errOut := pgtenant(t, c.args...)
		if code != 1 || !strings.Contains(errOut, "(SQLSTATE 42704)") || !strings.Contains(errOut, c.want) || out != "" {
			t.Errorf("pgtenant %s: exit %d, want 1 with SQLSTATE 42704 and %s\n%s%s", strings.Join(c.args, " "), code, c.want, out, errOut)
		}
	}

	// Migrations: up, status current, a new file makes every shard behind.
	dir := t.TempDir()
	for f, b := range files {
		os.WriteFile(filepath.Join(dir, f), b, 0o644)
	}
	out = mustRun(t, "migrate", "up", "--dir", dir)
	if !strings.Contains(out, "16 shards, 16 migrated") || !strings.Contains(out, "32 files applied") {
		t.Fatalf("migrate up:\n%s", out)
	}
	if out := mustRun(t, "migrate", "status"); !strings.Contains(out, "all 16 shards are current") {
		t.Fatalf("migrate status:\n%s", out)
	}
	os.WriteFile(filepath.Join(dir, "00003_bad.sql"), []byte("-- +goose Up\nCREATE TABLE nope (id int REFERENCES missing);\n"), 0o644)
	code, out, errOut = pgtenant(t, "migrate", "up", "--dir", dir)
	if code != 1 || !strings.Contains(errOut, "00003_bad.sql") || !strings.Contains(errOut, "42P01") {
		t.Fatalf("failing migration: exit %d\n%s%s", code, out, errOut)
	}
	// The shards that ran the file failed alike: one line with their count
	// (each shard's error is logged at info).
	if strings.Count(errOut, "42P01") != 1 || !regexp.MustCompile(`migrate failed on shards? [0-9, -]+ \([0-9]+ shards?\): file 00003_bad.sql: ERROR`).MatchString(errOut) {
		t.Errorf("failing migration: not one grouped line:\n%s", errOut)
	}
	if _, _, errOut := pgtenant(t, "migrate", "up", "--dir", dir, "--log-level", "info"); !strings.Contains(errOut, "shard migration failed") {
		t.Errorf("failing migration with --log-level info: no per-shard detail:\n%s", errOut)
	}
	code, out, _ = pgtenant(t, "migrate", "status")
	if code != 1 || !strings.Contains(out, "all 16 shards are at version 2; pending: 3") {
		t.Fatalf("migrate status with a pending file: exit %d\n%s", code, out)
	}
	os.WriteFile(filepath.Join(dir, "00003_bad.sql"), []byte("-- +goose Up\nCREATE TABLE fixed (id int REFERENCES accounts);\n"), 0o644)
	mustRun(t, "migrate", "up", "--dir", dir)
	mustRun(t, "migrate", "status")

	if out := mustRun(t, "shard", "list"); strings.Count(out, "active") != 16 {
		t.Fatalf("shard list:\n%s", out)
	}
	if out := mustRun(t, "ops"); !strings.Contains(out, "migrate up") || !strings.Contains(out, "tenant add") {
		t.Fatalf("ops:\n%s", out)
	}
	if code, _, _ := pgtenant(t, "tenant", "frobnicate"); code != 2 {
		t.Fatalf("unknown subcommand: exit %d, want 2", code)
	}
	if code, _, _ := pgtenant(t, "tenant", "add"); code != 2 {
		t.Fatalf("missing argument: exit %d, want 2", code)
	}
}

func TestNoCatalogIsAUsageError(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", "")
	code, _, errOut := pgtenant(t, "tenant", "list")
	if code != 2 || !strings.Contains(errOut, "dev up") {
		t.Fatalf("exit %d, %q", code, errOut)
	}
}

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	os.WriteFile("pgtenant.yaml", []byte("catalog: postgres://from-file/x\n"), 0o644)
	a := &app{}
	cmd := newRootCmd(a)
	cmd.SetArgs([]string{"ops"})
	cfg, _, err := loadConfig("")
	if err != nil || cfg.Catalog != "postgres://from-file/x" {
		t.Fatalf("config = %+v, %v", cfg, err)
	}
	a.cfg = cfg
	t.Setenv("PGTENANT_CATALOG", "")
	if got, _ := a.catalogDSN(cmd); got != "postgres://from-file/x" {
		t.Errorf("file only: %q", got)
	}
	t.Setenv("PGTENANT_CATALOG", "postgres://from-env/x")
	if got, _ := a.catalogDSN(cmd); got != "postgres://from-env/x" {
		t.Errorf("env over file: %q", got)
	}
	cmd.PersistentFlags().Set("catalog", "postgres://from-flag/x")
	if got, _ := a.catalogDSN(cmd); got != "postgres://from-flag/x" {
		t.Errorf("flag over env: %q", got)
	}
}
