package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/access"
	"github.com/pgtenant/pgtenant/internal/devcluster"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestBadClusterFlagsStartNothing: a local cluster's flags are checked
// before any server starts, so `demo --shards 3` (a typo) is a usage error
// that leaves no running Postgres behind it.
func TestBadClusterFlagsStartNothing(t *testing.T) {
	// A directory the postgres user may traverse (servers run as it when
	// root), so that without the checks the servers would start.
	base, err := pgtest.TempDir("badflags")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	t.Chdir(base)
	for i, args := range [][]string{
		{"dev", "up", "--shards", "3"},
		{"dev", "up", "--nodes", "0", "--no-router"},
		{"demo", "--shards", "100"},
		{"demo", "--shards", "0"},
		{"demo", "--tenants", "0"},
		{"demo", "--nodes", "-1"},
	} {
		dir := filepath.Join(base, fmt.Sprintf("cluster%d", i))
		t.Cleanup(func() { devcluster.Down(context.Background(), dir, true) })
		args = append(args, "--dir", dir)
		code, out, errOut := pgtenant(t, args...)
		if code != 2 {
			t.Errorf("pgtenant %s: exit %d, want 2\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("pgtenant %s made %s (%v): a cluster was started", strings.Join(args, " "), dir, err)
		}
	}
}

// TestUsageErrorsExit2: missing required flags and impossible values are
// usage errors (exit 2), like the other argument mistakes.
func TestUsageErrorsExit2(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "4")
	for _, args := range [][]string{
		{"reference", "load", "plans"},
		{"ops", "--limit", "-1"},
		{"tenant", "list", "--shard", "-1"}, // was every shard's tenants, silently
		{"tenant", "list", "--limit", "-1"},
	} {
		if code, out, errOut := pgtenant(t, args...); code != 2 {
			t.Errorf("pgtenant %s: exit %d, want 2\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
	}
}

// TestHelpFlagTypes: a backquoted word in a flag's usage becomes its type
// name in --help; user add's --role must read "--role string".
func TestHelpFlagTypes(t *testing.T) {
	out := mustRun(t, "user", "add", "--help")
	if !strings.Contains(out, "--role string") {
		t.Errorf("user add --help does not show --role string:\n%s", out)
	}
	out = mustRun(t, "migrate", "status", "--help")
	if strings.Contains(out, `(default "migrations")`) {
		t.Errorf("migrate status --help gives --dir two defaults:\n%s", out)
	}
}

// TestMistakesChangeNothing: a mistyped table for rls enable leaves the
// routers' runtime role alone (before, it was switched to pgtenant_app before
// the name was checked, and no node had that role: every query through the
// router failed with "node is unreachable"), and a mistyped --dir is named
// before any migration runs.
func TestMistakesChangeNothing(t *testing.T) {
	t.Chdir(t.TempDir())
	cat := nodeA.NewDatabase(t)
	t.Setenv("PGTENANT_CATALOG", cat)
	mustRun(t, "init", "--shards", "4")
	mustRun(t, "node", "add", "a", nodeA.NewDatabase(t))
	mustRun(t, "shard", "create")

	code, out, errOut := pgtenant(t, "rls", "enable", "nope")
	if code != 1 || !strings.Contains(errOut, "not in the registry") || strings.Contains(out, "routers now run") {
		t.Errorf("rls enable nope: exit %d\n%s%s", code, out, errOut)
	}
	conn, err := pgx.Connect(context.Background(), cat)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var role string
	if err := conn.QueryRow(context.Background(), `SELECT coalesce((SELECT value FROM pgtenant.meta WHERE key = $1), '')`, access.MetaRuntimeRole).Scan(&role); err != nil {
		t.Fatal(err)
	}
	if role != "" {
		t.Errorf("after a failed rls enable the runtime role is %q, want none", role)
	}

	mustRun(t, "tenant", "add", "acme")
	if code, out, errOut := pgtenant(t, "tenant", "add", "acme"); code != 1 || !strings.Contains(errOut, "SQLSTATE 23505") || !strings.Contains(errOut, "pgtenant tenant locate acme") {
		t.Errorf("tenant add of a registered tenant: exit %d\n%s%s", code, out, errOut)
	}

	missing := filepath.Join(t.TempDir(), "migratons")
	for _, args := range [][]string{
		{"migrate", "up", "--dir", missing},
		{"migrate", "down", "--dir", missing},
		{"migrate", "status", "--dir", missing},
		{"reference", "migrate", "--dir", missing},
	} {
		code, out, errOut := pgtenant(t, args...)
		if code != 1 || !strings.Contains(errOut, "no migrations directory "+missing) || out != "" {
			t.Errorf("pgtenant %s: exit %d, want 1 naming the directory and nothing run\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
	}
}
