package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/router"
)

// where is one answer to "which shard and node, and which tenant is set".
type nodeWhere struct {
	Shard  int    `json:"shard"`
	Node   string `json:"node"`
	Tenant string `json:"tenant"`
}

// nodeResult is what testdata/node/client.js prints.
type nodeResult struct {
	Simple nodeWhere `json:"simple"`
	Param  struct {
		N int `json:"n"`
		S int `json:"s"`
	} `json:"param"`
	Hint     int `json:"hint"`
	Prepared []struct {
		Tenant string `json:"tenant"`
		Name   string `json:"name"`
		Shard  int    `json:"shard"`
	} `json:"prepared"`
	Rollback struct {
		InTx  int `json:"inTx"`
		After int `json:"after"`
	} `json:"rollback"`
	Errors struct {
		Duplicate     string `json:"duplicate"`
		MissingTable  string `json:"missingTable"`
		UnknownTenant string `json:"unknownTenant"`
		CrossShard    string `json:"crossShard"`
		Aborted       string `json:"aborted"`
		AfterRollback int    `json:"afterRollback"`
	} `json:"errors"`
	Switching []nodeWhere `json:"switching"`
	SetConfig nodeWhere   `json:"setConfig"`
	Complex   []struct {
		Name  string `json:"name"`
		Total int    `json:"total"`
		R     int    `json:"r"`
		Grand int    `json:"grand"`
	} `json:"complex"`
	Explain string `json:"explain"`
	Copy    struct {
		Rows  int    `json:"rows"`
		First string `json:"first"`
		Last  string `json:"last"`
	} `json:"copy"`
}

// TestNodePostgres runs testdata/node/client.js (node-postgres from npm)
// through the router. It fails, never skips, when node or npm is missing.
func TestNodePostgres(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not installed (apt-get install nodejs npm): %v", err)
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatalf("npm is not installed (apt-get install npm): %v", err)
	}
	_, file, _, _ := runtime.Caller(0)
	dir := filepath.Join(filepath.Dir(file), "testdata", "node")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Install in place (node_modules is git-ignored); quick when present.
	install := exec.CommandContext(ctx, npm, "install", "--no-audit", "--no-fund", "--loglevel=error")
	install.Dir = dir
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm install in %s: %v\n%s", dir, err, out)
	}

	c := newCluster(t, router.Config{})
	cmd := exec.CommandContext(ctx, node, "client.js")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "ROUTER_URL="+c.dsn(""))
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("node client.js: %v\nstderr:\n%s\nstdout:\n%s", err, stderr.String(), stdout.String())
	}
	var r nodeResult
	if err := json.Unmarshal([]byte(stdout.String()), &r); err != nil {
		t.Fatalf("parse client.js output: %v\n%s", err, stdout.String())
	}

	check := func(what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %+v, want %+v", what, got, want)
		}
	}
	check("simple", r.Simple, nodeWhere{3, "b", "t3"})
	check("param", [2]int{r.Param.N, r.Param.S}, [2]int{4, 140})
	check("hint", r.Hint, 6)
	var prepared []string
	for _, p := range r.Prepared {
		prepared = append(prepared, p.Tenant+":"+p.Name+":"+itoa(p.Shard))
	}
	check("prepared", prepared, []string{"t1:item-101:1", "t4:item-401:4", "t9:item-903:1", "t4:item-405:4", "t1:item-102:1"})
	check("rollback", [2]int{r.Rollback.InTx, r.Rollback.After}, [2]int{999, 10})
	check("duplicate", r.Errors.Duplicate, "23505")
	check("missing table", r.Errors.MissingTable, "42P01")
	check("unknown tenant", r.Errors.UnknownTenant, "42704")
	check("cross shard", r.Errors.CrossShard, "25001")
	check("aborted", r.Errors.Aborted, "25P02")
	check("after rollback", r.Errors.AfterRollback, 2)
	check("switching", r.Switching, []nodeWhere{{0, "a", "t0"}, {1, "b", "t1"}, {0, "a", "t8"}, {7, "b", "t15"}})
	check("set_config", r.SetConfig, nodeWhere{5, "b", "t13"})
	if len(r.Complex) != 5 {
		t.Errorf("complex: %d rows, want 5", len(r.Complex))
	} else {
		check("complex first", [4]any{r.Complex[0].Name, r.Complex[0].Total, r.Complex[0].R, r.Complex[0].Grand}, [4]any{"item-1105", 15, 1, 45})
		check("complex last", r.Complex[4].R, 5)
	}
	if !strings.Contains(r.Explain, "actual time") || !strings.Contains(r.Explain, "Execution Time") {
		t.Errorf("explain analyze:\n%s", r.Explain)
	}
	check("copy", [3]any{r.Copy.Rows, r.Copy.First, r.Copy.Last}, [3]any{50, "5000\t5\tnode-0", "5049\t5\tnode-49"})
}
