package pgtest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/localpg"
)

// NewStandby makes a physical standby of s (pg_basebackup -R, as the
// postgres OS user when root) on a free port, starts it and returns it; it
// is stopped and removed when t ends (and by ReapOrphans if the test binary
// dies). It fails t when the standby cannot be made.
func (s *Server) NewStandby(t testing.TB) *localpg.Cluster {
	t.Helper()
	// In the primary's root, if it runs from one (PGTENANT_TEST_PGROOT).
	c, err := NewCluster("standby")
	if err != nil {
		t.Fatal(err)
	}
	dir := c.Dir
	c.BinDir = s.Cluster.BinDir
	stop := func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Logf("stop standby: %v", err)
		}
		os.RemoveAll(dir)
	}
	t.Cleanup(stop)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := c.InitStandby(ctx, s.Cluster); err != nil {
		t.Fatalf("make standby: %v", err)
	}
	if err := c.StartOnFreePort(ctx); err != nil {
		t.Fatalf("start standby: %v", err)
	}
	return c
}
