package localpg_test

import (
	"context"
	"os"
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
