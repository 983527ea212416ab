package proclife_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strings"
	"testing"
)

// TestBenchChildrenUseStart: the programs under bench/cmd start their
// children (routers, a router child) through proclife.Start, not with
// exec.Cmd.Start, so a bench killed mid-run leaves no router behind.
// routerbench is left out: its hold clients (many.go) and strace are other
// sessions' files, started with exec.CommandContext and waited for.
func TestBenchChildrenUseStart(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("..", "..", "bench", "cmd", "*", "*.go"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no bench programs found: %v", err)
	}
	fset := token.NewFileSet()
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") || filepath.Base(filepath.Dir(path)) == "routerbench" {
			continue
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || len(call.Args) != 0 {
				return true
			}
			if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Start" {
				t.Errorf("%s: a child started with .Start(), not proclife.Start: it outlives a killed bench", fset.Position(call.Pos()))
			}
			return true
		})
	}
}
