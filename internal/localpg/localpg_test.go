package localpg_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// TestInitStartStopTwice starts a cluster, stops it, and starts it again from
// the same directory: the second Init reuses the data directory and its port.
func TestInitStartStopTwice(t *testing.T) {
	dir, err := pgtest.TempDir("localpg")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	c := localpg.New(dir, 0)
	if err := c.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer c.Stop(context.Background())
	var wal string
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&wal); err != nil {
		t.Fatal(err)
	}
	conn.Close(ctx)
	if wal != "logical" {
		t.Fatalf("wal_level = %q, want logical", wal)
	}
	port := c.Port
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if c.Running(ctx) {
		t.Fatal("still running after Stop")
	}

	again := localpg.New(dir, 0)
	if err := again.Init(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := again.Port, port; got != want {
		t.Fatalf("port after re-init = %d, want %d", got, want)
	}
	if err := again.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := again.Start(ctx); err != nil {
		t.Fatalf("second Start of a running cluster: %v", err)
	}
	if err := again.Stop(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestInitKilledMidway: an Init whose initdb is killed half-way (a `dev up`
// killed during initdb) leaves no data directory that the next Init takes
// for a complete one: the next Init starts over and the server starts with
// pgtenant's settings.
func TestInitKilledMidway(t *testing.T) {
	dir, err := pgtest.TempDir("localpg-killed")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Kill initdb (exec.CommandContext's SIGKILL) once it has written
	// PG_VERSION, wherever it writes it.
	initCtx, kill := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- localpg.New(dir, 0).Init(initCtx) }()
	written := func() bool {
		for _, d := range []string{"data", "data.initdb"} {
			if _, err := os.Stat(filepath.Join(dir, d, "PG_VERSION")); err == nil {
				return true
			}
		}
		return false
	}
	for !written() {
		select {
		case err := <-done:
			t.Fatalf("Init ended before initdb wrote PG_VERSION: %v", err)
		case <-time.After(time.Millisecond):
		}
	}
	kill()
	if err := <-done; err == nil {
		t.Fatal("initdb finished before it was killed: nothing interrupted, try again")
	}

	c := localpg.New(dir, 0)
	if err := c.Init(ctx); err != nil {
		t.Fatalf("Init after an interrupted one: %v", err)
	}
	if err := c.Start(ctx); err != nil {
		t.Fatalf("start after an interrupted Init: %v", err)
	}
	defer c.Stop(context.Background())
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var wal string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&wal); err != nil {
		t.Fatal(err)
	}
	if wal != "logical" {
		t.Errorf("wal_level = %q, want logical (pgtenant's settings)", wal)
	}
	if _, err := os.Stat(filepath.Join(dir, "data.initdb")); !os.IsNotExist(err) {
		t.Errorf("the interrupted initdb's directory is still there: %v", err)
	}
}
