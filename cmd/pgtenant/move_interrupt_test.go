package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestShardMoveInterruptedCLI: Ctrl-C during `shard move` leaves the move
// recorded as running, and the error names the commands that finish or undo
// it, with the move's id (before: "resume or abort it", no command, no id).
func TestShardMoveInterruptedCLI(t *testing.T) {
	dsns := migrateCluster(t)
	mustRun(t, "migrate", "up", "--dir", writeFiles(t, "migrations", map[string]string{"00001_events.sql": `-- +goose Up
CREATE TABLE events (tenant text NOT NULL, id bigint NOT NULL, PRIMARY KEY (tenant, id)) PARTITION BY LIST (tenant);
CREATE TABLE events_rest PARTITION OF events DEFAULT;
`}))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cat, err := pgx.Connect(ctx, os.Getenv("PGTENANT_CATALOG"))
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close(ctx)
	var shard int
	if err := cat.QueryRow(ctx, `SELECT min(id) FROM pgtenant.shards WHERE node = 'b'`).Scan(&shard); err != nil {
		t.Fatal(err)
	}

	// A lock on the shard's partitioned table (ONLY: not its partition,
	// which the move measures before it records itself) holds the move at
	// its schema copy (pg_dump locks every table it dumps).
	node, err := pgx.Connect(ctx, dsns[1])
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close(ctx)
	tx, err := node.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, fmt.Sprintf("LOCK TABLE ONLY shard_%04d.events IN ACCESS EXCLUSIVE MODE", shard)); err != nil {
		t.Fatal(err)
	}

	sigs := make(chan os.Signal, 1)
	var out, errOut bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- runSignals(ctx, []string{"shard", "move", fmt.Sprint(shard), "--to", "a"}, strings.NewReader(""), &out, &errOut, sigs)
	}()
	var id int64
	for id == 0 {
		err := cat.QueryRow(ctx, `SELECT id FROM pgtenant.moves WHERE shard = $1 AND status = 'running'`, shard).Scan(&id)
		if err != nil && err != pgx.ErrNoRows {
			t.Fatal(err)
		}
		select {
		case code := <-done:
			t.Fatalf("shard move ended (exit %d) before it was interrupted\n%s%s", code, out.String(), errOut.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	sigs <- os.Interrupt
	code := <-done
	tx.Rollback(ctx)
	want := fmt.Sprintf("`pgtenant shard move --resume %d`", id)
	if code != 1 || !strings.Contains(errOut.String(), want) || !strings.Contains(errOut.String(), fmt.Sprintf("--abort %d", id)) {
		t.Errorf("interrupted shard move: exit %d, want 1 naming %s and --abort %d\n%s%s", code, want, id, out.String(), errOut.String())
	}
	mustRun(t, "shard", "move", "--abort", fmt.Sprint(id))
	var node0 string
	if err := cat.QueryRow(ctx, `SELECT node FROM pgtenant.shards WHERE id = $1`, shard).Scan(&node0); err != nil || node0 != "b" {
		t.Errorf("shard %d after the abort is on %q (%v), want b", shard, node0, err)
	}
}
