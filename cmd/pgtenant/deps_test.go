package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestBinaryLinksNoTesting: the pgtenant binary does not link package
// testing (testing.Testing() once pulled it in, ~100 KB, with its flags).
// Tests tell the binary what they need through variables their TestMain
// sets (tieRouterChildren).
func TestBinaryLinksNoTesting(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if slices.Contains(deps, "testing") {
		t.Errorf("cmd/pgtenant links package testing; go list -deps:\n%s", out)
	}
}
