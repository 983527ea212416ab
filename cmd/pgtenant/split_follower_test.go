package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestNodeSplitViaFollower: `node split --via-follower` end to end through
// the CLI: a dry run plans the odd shards and changes nothing, the run
// promotes a pg_basebackup standby of the node's server, registers it,
// flips the moved half to it (the tenant's rows are there), records the
// split in the operation log, and a second split of the same follower is
// refused because it is no longer a standby.
func TestNodeSplitViaFollower(t *testing.T) {
	ctx := context.Background()
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "4")
	dsnB := nodeB.NewDatabase(t)
	mustRun(t, "node", "add", "b", dsnB)
	mustRun(t, "shard", "create")
	conn, err := pgx.Connect(ctx, dsnB)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var db string
	if err := conn.QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
		t.Fatal(err)
	}
	for s := range 4 {
		if _, err := conn.Exec(ctx, fmt.Sprintf(`CREATE TABLE shard_%04d.t (id int PRIMARY KEY); INSERT INTO shard_%04d.t SELECT generate_series(1, 10 + %d)`, s, s, s)); err != nil {
			t.Fatal(err)
		}
	}
	standby := nodeB.NewStandby(t)
	follower := standby.DSN(db)

	var plan splitJSON
	jsonOut(t, 0, &plan, "node", "split", "b", "--via-follower", follower, "--name", "c", "--dry-run")
	if !plan.DryRun || fmt.Sprint(plan.Moved, plan.Kept) != "[1 3] [0 2]" || plan.NewNode != "c" || plan.Bytes <= 0 {
		t.Errorf("dry run: %+v", plan)
	}
	var shards []shardJSON
	jsonOut(t, 0, &shards, "shard", "list")
	for _, s := range shards {
		if s.Node != "b" {
			t.Errorf("dry run moved shard %d to %s", s.Shard, s.Node)
		}
	}
	code, _, errOut := pgtenant(t, "node", "split", "b", "--via-follower", follower)
	if code != 2 || !strings.Contains(errOut, "--name") {
		t.Errorf("split without --name: exit %d %q", code, errOut)
	}

	var res splitJSON
	jsonOut(t, 0, &res, "node", "split", "b", "--via-follower", follower, "--name", "c")
	if res.SplitID == 0 || res.PauseMS <= 0 || fmt.Sprint(res.Moved) != "[1 3]" || len(res.Dropped) != 4 || res.CleanupError != "" {
		t.Errorf("split: %+v", res)
	}
	jsonOut(t, 0, &shards, "shard", "list")
	for _, s := range shards {
		if want := map[bool]string{true: "c", false: "b"}[s.Shard%2 == 1]; s.Node != want || (s.Shard%2 == 1) != (s.Epoch == 1) {
			t.Errorf("shard %d on %s epoch %d", s.Shard, s.Node, s.Epoch)
		}
	}
	fc, err := pgx.Connect(ctx, follower)
	if err != nil {
		t.Fatal(err)
	}
	defer fc.Close(ctx)
	var n int
	if err := fc.QueryRow(ctx, `SELECT count(*) FROM shard_0003.t`).Scan(&n); err != nil || n != 13 {
		t.Errorf("shard 3 on c: %d rows (%v), want 13", n, err)
	}
	var ops []opJSON
	jsonOut(t, 0, &ops, "ops", "--limit", "1")
	if len(ops) != 1 || ops[0].Op != "node split" || !ops[0].OK || !strings.Contains(string(ops[0].Detail), `"via_follower": true`) {
		t.Errorf("ops: %+v %s", ops, ops[0].Detail)
	}
	code, _, errOut = pgtenant(t, "node", "split", "b", "--via-follower", follower, "--name", "d")
	if code != 1 || !strings.Contains(errOut, "not a standby") {
		t.Errorf("split of a promoted follower: exit %d %q", code, errOut)
	}
}
