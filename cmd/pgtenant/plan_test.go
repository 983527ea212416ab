package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// fillShards writes rows into every shard's accounts table on its node:
// shard i gets (i+1)*rowsPer rows, so shards differ in size.
func fillShards(t *testing.T, rowsPer int) {
	t.Helper()
	var shards []shardJSON
	jsonOut(t, 0, &shards, "shard", "list")
	var nodes []nodeJSON
	jsonOut(t, 0, &nodes, "node", "list")
	dsn := map[string]string{}
	for _, n := range nodes {
		dsn[n.Node] = n.DSN
	}
	ctx := context.Background()
	for _, s := range shards {
		conn, err := pgx.Connect(ctx, dsn[s.Node])
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, `INSERT INTO `+pgx.Identifier{s.Schema, "accounts"}.Sanitize()+` (tenant_id, name)
			SELECT 't' || i, repeat('x', 200) FROM generate_series(1, $1::int) i`, (s.Shard+1)*rowsPer)
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
	}
}

func shardNodes(t *testing.T) map[int]string {
	t.Helper()
	var shards []shardJSON
	jsonOut(t, 0, &shards, "shard", "list")
	out := map[int]string{}
	for _, s := range shards {
		out[s.Shard] = s.Node
	}
	return out
}

// node drain and rebalance: --dry-run plans and changes nothing, drain
// empties the node, and a second rebalance right after the first moves
// nothing.
func TestPlanCommands(t *testing.T) {
	migrations, err := filepath.Abs(filepath.Join("testdata", "migrations"))
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "8")
	mustRun(t, "node", "add", "a", nodeA.NewDatabase(t))
	mustRun(t, "node", "add", "b", nodeB.NewDatabase(t))
	mustRun(t, "shard", "create")
	mustRun(t, "migrate", "up", "--dir", migrations)
	fillShards(t, 1500)
	before := shardNodes(t)

	// A node with shards cannot be removed: the error names the way; a
	// move to a node that does not exist says which and where to look.
	if code, out, errOut := pgtenant(t, "node", "remove", "b"); code != 1 || !strings.Contains(out+errOut, "55006") || !strings.Contains(out+errOut, "pgtenant node drain b") {
		t.Errorf("node remove of a node with shards: exit %d\n%s%s", code, out, errOut)
	}
	if code, out, errOut := pgtenant(t, "shard", "move", "1", "--to", "node9"); code != 1 || !strings.Contains(out+errOut, `node "node9" is unknown (SQLSTATE 42704)`) || !strings.Contains(out+errOut, "pgtenant node list") {
		t.Errorf("shard move to an unknown node: exit %d\n%s%s", code, out, errOut)
	}

	// Dry runs print the plan and change nothing.
	out := mustRun(t, "node", "drain", "b", "--dry-run")
	if !strings.Contains(out, "4 moves") || !strings.Contains(out, "dry run: nothing changed") {
		t.Errorf("node drain --dry-run:\n%s", out)
	}
	var plan planJSON
	jsonOut(t, 0, &plan, "node", "drain", "b", "--dry-run")
	if !plan.DryRun || plan.Op != "node drain" || len(plan.Moves) != 4 {
		t.Fatalf("node drain --dry-run --json: %+v", plan)
	}
	for _, m := range plan.Moves {
		if m.From != "b" || m.To != "a" || m.Bytes <= 0 || m.MoveID != 0 {
			t.Errorf("planned move %+v", m)
		}
	}
	jsonOut(t, 0, &plan, "node", "split", "a", "--to", "b", "--dry-run")
	if len(plan.Moves) != 2 {
		t.Errorf("node split --dry-run --json: %+v", plan)
	}
	var moves []moveJSON
	jsonOut(t, 0, &moves, "shard", "moves")
	if len(moves) != 0 {
		t.Fatalf("dry runs recorded %d moves", len(moves))
	}
	if got := shardNodes(t); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Fatalf("dry runs moved shards: %v, was %v", got, before)
	}

	// Drain empties the node, two moves at a time; then it can be removed.
	out = mustRun(t, "node", "drain", "b", "--parallel", "2")
	if !strings.Contains(out, "moved 4 of 4 shards") || !strings.Contains(out, "moves/minute") {
		t.Errorf("node drain:\n%s", out)
	}
	for shard, node := range shardNodes(t) {
		if node != "a" {
			t.Errorf("shard %d on %s after the drain", shard, node)
		}
	}
	mustRun(t, "node", "remove", "b")

	// A new node: rebalance by bytes moves shards to it, the second run nothing.
	mustRun(t, "node", "add", "c", nodeB.NewDatabase(t))
	jsonOut(t, 0, &plan, "rebalance", "--dry-run")
	if len(plan.Moves) == 0 {
		t.Fatalf("rebalance --dry-run --json: nothing planned")
	}
	if got := shardNodes(t); len(got) != 8 {
		t.Fatalf("shards: %v", got)
	}
	for _, node := range shardNodes(t) {
		if node != "a" {
			t.Fatal("rebalance --dry-run moved a shard")
		}
	}
	var res planJSON
	jsonOut(t, 0, &res, "rebalance")
	if res.DryRun || res.Moved != len(plan.Moves) || res.Failed != 0 || res.MovesPerMinute <= 0 {
		t.Errorf("rebalance --json: %+v, planned %d", res, len(plan.Moves))
	}
	for _, m := range res.Moves {
		if m.MoveID == 0 || m.PauseMS == nil || m.Error != "" {
			t.Errorf("rebalance move %+v", m)
		}
	}
	onC := 0
	for _, node := range shardNodes(t) {
		if node == "c" {
			onC++
		}
	}
	if onC == 0 || onC == 8 {
		t.Errorf("%d of 8 shards on c after the rebalance", onC)
	}
	if out := mustRun(t, "rebalance"); !strings.Contains(out, "nothing to move") {
		t.Errorf("second rebalance:\n%s", out)
	}
	var ops []opJSON
	jsonOut(t, 0, &ops, "ops", "--limit", "1")
	var detail struct{ Planned, Moved int }
	if len(ops) != 1 || ops[0].Op != "rebalance" || json.Unmarshal(ops[0].Detail, &detail) != nil || detail.Planned != 0 {
		t.Errorf("ops after the second rebalance: %+v", ops)
	}
}
