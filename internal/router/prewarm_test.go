package router

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
)

// TestPrewarmTarget: when the map names the node a fenced shard moves to,
// the router opens and primes (PL/pgSQL loaded by a DO block) as many
// connections there as the shard's clients used on the source, before the
// release; the held transaction then runs on one of them.
func TestPrewarmTarget(t *testing.T) {
	ctx := ctx(t)
	const app = "pgtenant_prewarm_test"
	m := cloneMap(testMap())
	m.Nodes = map[string]placement.Node{"a": {Name: "a", DSN: nodeDSN(nodeA) + "&application_name=" + app}, "b": m.Nodes["b"]}
	s := startRouter(t, Config{FenceGrace: 5 * time.Second, HoldTimeout: 20 * time.Second}, m)
	// Shard 5 lives on node b; the "move" copies it to node a by hand.
	ca, err := pgx.Connect(ctx, nodeDSN(nodeA))
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close(context.Background())
	if err := createShard(ctx, ca, 5); err != nil {
		t.Fatal(err)
	}
	defer ca.Exec(context.Background(), "DROP SCHEMA shard_0005 CASCADE")

	// Two clients of shard 5 are in transactions when the mover announces
	// the move's target (a map naming it, the shard still active).
	c1 := connect(t, s, "t5", pgx.QueryExecModeCacheStatement)
	c2 := connect(t, s, "t13", pgx.QueryExecModeCacheStatement)
	var txs []pgx.Tx
	for _, c := range []*pgx.Conn{c1, c2} {
		tx, err := c.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "INSERT INTO sink (body) VALUES ('before the move')"); err != nil {
			t.Fatal(err)
		}
		txs = append(txs, tx)
	}
	announced := cloneMap(m)
	announced.Version = 2
	announced.Shards[5].Target = "a"
	if err := s.SetMap(ctx, announced); err != nil {
		t.Fatal(err)
	}
	primed := func(want int) []int64 {
		var pids []int64
		for deadline := time.Now().Add(15 * time.Second); ; {
			rows, err := ca.Query(ctx, `SELECT pid::int8 FROM pg_stat_activity WHERE application_name = $1 AND query = $2 AND state = 'idle' ORDER BY 1`, app, primeSQL)
			if err != nil {
				t.Fatal(err)
			}
			if pids, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
				t.Fatal(err)
			}
			if len(pids) >= want {
				return pids
			}
			if time.Now().After(deadline) {
				t.Fatalf("primed backends of the router on the target: %v, want %d", pids, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	pids := primed(2)
	for _, tx := range txs {
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	fenced := cloneMap(announced)
	fenced.Version = 3
	fenced.Shards[5].State = placement.StateFenced
	if err := s.SetMap(ctx, fenced); err != nil {
		t.Fatal(err)
	}
	// Before the release, node a still has those two primed backends of the
	// router (the fence's warming finds them ready), and no more.
	time.Sleep(100 * time.Millisecond)
	if got := primed(2); !slices.Equal(got, pids) {
		t.Fatalf("primed backends on the target after the fence: %v, want %v (the shard's clients used 2)", got, pids)
	}
	// A transaction held by the fence, released with the shard on node a.
	res := make(chan string, 1)
	go func() {
		var pid int64
		var shard int
		err := c2.QueryRow(ctx, "SELECT pg_backend_pid()::int8, shard FROM whoami").Scan(&pid, &shard)
		res <- fmt.Sprintf("%d %d %v", pid, shard, err)
	}()
	moved := cloneMap(m)
	moved.Version = 4
	moved.Shards[5].Node = "a"
	moved.Shards[5].Epoch = 2
	moved.Shards[5].Target = "a" // the move runs on (verification, cleanup)
	if err := s.SetMap(ctx, moved); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-res:
		var pid int64
		var shard int
		var rest string
		fmt.Sscanf(r, "%d %d %s", &pid, &shard, &rest)
		if shard != 5 || rest != "<nil>" || !slices.Contains(pids, pid) {
			t.Fatalf("held transaction after the release: %s; want shard 5 on one of the primed backends %v", r, pids)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("held transaction was not released")
	}
}

// TestPrewarmTargetDown: a target the router cannot reach does not delay
// the fence's acknowledgement (SetMap returns) nor hold anything up; the
// failure is logged, and the shard serves again when released.
func TestPrewarmTargetDown(t *testing.T) {
	ctx := ctx(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := ln.Addr().String()
	ln.Close() // nothing listens there now: connection refused
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	m := cloneMap(testMap())
	m.Nodes = map[string]placement.Node{"a": m.Nodes["a"], "b": m.Nodes["b"],
		"c": {Name: "c", DSN: "postgres://postgres@" + deadAddr + "/pgt?sslmode=disable&connect_timeout=2"}}
	s := startRouter(t, Config{FenceGrace: 5 * time.Second, HoldTimeout: 20 * time.Second, Logger: log}, m)
	c := connect(t, s, "t5", pgx.QueryExecModeCacheStatement)
	tx, err := c.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO sink (body) VALUES ('before the move')"); err != nil {
		t.Fatal(err)
	}
	announced := cloneMap(m)
	announced.Version = 2
	announced.Shards[5].Target = "c"
	if err := s.SetMap(ctx, announced); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); !strings.Contains(logs.String(), "pre-warm the target of a move"); {
		if time.Now().After(deadline) {
			t.Fatalf("no pre-warm failure logged:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if l := logs.String(); !strings.Contains(l, "node=c") || !strings.Contains(l, "connection refused") {
		t.Fatalf("pre-warm failure logged without the node or the cause:\n%s", l)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	fenced := cloneMap(announced)
	fenced.Version = 3
	fenced.Shards[5].State = placement.StateFenced
	if err := s.SetMap(ctx, fenced); err != nil {
		t.Fatalf("fence with an unreachable target: %v", err)
	}
	// The move is given up: the shard serves from node b again.
	back := cloneMap(m)
	back.Version = 4
	if err := s.SetMap(ctx, back); err != nil {
		t.Fatal(err)
	}
	var port, shard int
	if err := c.QueryRow(ctx, "SELECT inet_server_port(), shard FROM whoami").Scan(&port, &shard); err != nil || port != nodeB.Cluster.Port || shard != 5 {
		t.Fatalf("after the fence was lifted: port %d shard %d, %v; want node b's %d, shard 5", port, shard, err, nodeB.Cluster.Port)
	}
}
