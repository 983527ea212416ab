package main

import (
	"strings"
	"testing"

	"github.com/spf13/cobra"
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
