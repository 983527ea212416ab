package main

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/pgtenant/pgtenant/internal/localpg"
)

// TestEveryCommandHelpTeaches: every command's --help ends with the exit
// codes, and every command that runs something (not a group) shows an
// example.
func TestEveryCommandHelpTeaches(t *testing.T) {
	root := newRootCmd(&app{})
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			walk(sub)
		}
		path := strings.Fields(c.CommandPath())[1:]
		out := mustRun(t, append(path, "--help")...)
		if !strings.Contains(out, "Exit codes: 0 success, 1 failure") {
			t.Errorf("%s --help does not give the exit codes:\n%s", c.CommandPath(), out)
		}
		if !c.HasSubCommands() && c.Example == "" {
			t.Errorf("%s --help has no example", c.CommandPath())
		}
	}
	walk(root)
}

// TestUnknownTenantErrorsAgree: every tenant command given an unregistered
// tenant says so alike, with SQLSTATE 42704 and the commands that list and
// register tenants (tenant locate said "unknown tenant" without either).
func TestUnknownTenantErrorsAgree(t *testing.T) {
	migrateCluster(t)
	want := `tenant "nosuch" is unknown (SQLSTATE 42704); hint: pgtenant tenant list shows the registered tenants; register it with pgtenant tenant add nosuch`
	for _, args := range [][]string{
		{"tenant", "locate", "nosuch"},
		{"tenant", "remove", "nosuch"},
		{"tenant", "purge", "nosuch"},
		{"tenant", "export", "nosuch"},
		{"tenant", "move", "nosuch", "--isolate"},
	} {
		code, out, errOut := pgtenant(t, args...)
		if code != 1 || !strings.Contains(errOut, want) {
			t.Errorf("pgtenant %s: exit %d, want 1 with %q\n%s%s", strings.Join(args, " "), code, want, out, errOut)
		}
	}
}

// TestCatalogUnreachableSaysWhere: a catalog nobody listens for is an error
// that says where its address came from and, for a local cluster's config
// file, the command that starts the cluster; a server that answers (a bad
// role) gets no such hint.
func TestCatalogUnreachableSaysWhere(t *testing.T) {
	t.Chdir(t.TempDir())
	port, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir, _ := filepath.Abs("c")
	if err := os.MkdirAll(filepath.Join(dir, "node1", "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "pgtenant.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("catalog: \"postgres://postgres@127.0.0.1:%d/pgtenant_catalog?sslmode=disable\"\n", port)), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGTENANT_CATALOG", "")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"tenant", "list", "--config", cfg}, "is it stopped? `pgtenant dev up --dir " + dir + "` starts it"},
		{[]string{"tenant", "list", "--catalog", fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?sslmode=disable", port)}, "running at the address --catalog gives"},
	} {
		code, out, errOut := pgtenant(t, c.args...)
		if code != 1 || !strings.Contains(errOut, c.want) {
			t.Errorf("pgtenant %s: exit %d, want 1 with %q\n%s%s", strings.Join(c.args, " "), code, c.want, out, errOut)
		}
	}
	u, err := url.Parse(nodeA.Cluster.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User("no_such_role")
	if code, _, errOut := pgtenant(t, "tenant", "list", "--catalog", u.String()); code != 1 || strings.Contains(errOut, "hint: is the catalog's server running") {
		t.Errorf("a server that refuses the role: exit %d, want 1 without the not-running hint\n%s", code, errOut)
	}
}
