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
