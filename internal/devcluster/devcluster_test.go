package devcluster_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/devcluster"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// TestUpTwiceDownTwice starts a 2-node cluster, runs up again (it reuses
// everything), stops it, starts it again with the data kept, and destroys it.
func TestUpTwiceDownTwice(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	base, err := pgtest.TempDir("dev")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(base)
	dir := filepath.Join(base, "cluster")
	defer devcluster.Down(context.Background(), dir, false)

	opts := devcluster.Options{Dir: dir, Nodes: 2, Shards: 16}
	first, err := devcluster.Up(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(first.Nodes), 2; got != want {
		t.Fatalf("%d nodes, want %d", got, want)
	}
	cat := catalog.New(first.CatalogDSN, nil)
	if err := cat.Open(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.AddTenant(ctx, "acme", nil); err != nil {
		t.Fatal(err)
	}
	cat.Close()

	second, err := devcluster.Up(ctx, opts)
	if err != nil {
		t.Fatalf("second up: %v", err)
	}
	for i := range first.Nodes {
		if first.Nodes[i].Port != second.Nodes[i].Port {
			t.Errorf("node %d port changed from %d to %d", i, first.Nodes[i].Port, second.Nodes[i].Port)
		}
	}
	if second.CatalogDSN != first.CatalogDSN {
		t.Errorf("catalog moved: %s then %s", first.CatalogDSN, second.CatalogDSN)
	}
	if _, err := os.Stat(filepath.Join(dir, devcluster.ConfigFile)); err != nil {
		t.Errorf("config file: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, ".gitignore")); err != nil || !strings.Contains(string(b), "*\n") {
		t.Errorf(".gitignore in the cluster dir: %q, %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "router.port")); err != nil {
		t.Error(err)
	} else if p, _ := strconv.Atoi(strings.TrimSpace(string(b))); p < 10000 || p+1 >= ephemeralLow() {
		t.Errorf("router port %d is not below the ephemeral range", p)
	}
	if _, err := devcluster.Up(ctx, devcluster.Options{Dir: dir, Nodes: 2, Shards: 32}); err == nil {
		t.Error("up with another shard count accepted")
	}
	if again, err := devcluster.Up(ctx, devcluster.Options{Dir: dir, Nodes: 2}); err != nil || again.Shards != 16 {
		t.Errorf("up without a shard count: %v shards, %v; want the existing 16", again, err)
	}

	if err := devcluster.Down(ctx, dir, false); err != nil {
		t.Fatal(err)
	}
	st, err := devcluster.Status(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range st.Nodes {
		if n.Running {
			t.Errorf("node %s still running after down", n.Name)
		}
	}
	if err := devcluster.Down(ctx, dir, false); err != nil {
		t.Fatalf("second down: %v", err)
	}

	// Up after down brings the same data back.
	third, err := devcluster.Up(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	cat = catalog.New(third.CatalogDSN, nil)
	if err := cat.Open(ctx); err != nil {
		t.Fatal(err)
	}
	loc, err := cat.Locate(ctx, "acme")
	cat.Close()
	if err != nil {
		t.Fatalf("tenant after restart: %v", err)
	}
	st, err = devcluster.Status(ctx, dir)
	if err != nil || st.Shards != 16 || st.Tenants != 1 {
		t.Fatalf("status = %+v, %v; want 16 shards, 1 tenant", st, err)
	}
	if got, want := loc.Shard.ID, placement.ShardOf("acme", 16); got != want {
		t.Errorf("acme on shard %d after restart, want %d", got, want)
	}
	if err := devcluster.Down(ctx, dir, true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("dir after destroy: %v", err)
	}
}

func TestDownWithoutCluster(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "none")
	if err := devcluster.Down(context.Background(), dir, true); !errors.Is(err, devcluster.ErrNoCluster) {
		t.Errorf("Down of %s = %v, want ErrNoCluster", dir, err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("Down created %s: %v", dir, err)
	}
}

func ephemeralLow() int {
	low, _ := devcluster.EphemeralRange()
	return low
}

func TestPickRouterPort(t *testing.T) {
	low := ephemeralLow()
	p, err := devcluster.PickRouterPort(func(int) int { return 0 })
	if err != nil {
		t.Fatal(err)
	}
	if p < 10000 || p+1 >= low {
		t.Fatalf("picked %d, want 10000 <= p and p+1 < %d (the ephemeral range)", p, low)
	}
	// Taken ports are passed over.
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p+1)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	q, err := devcluster.PickRouterPort(func(int) int { return p - 10000 })
	if err != nil {
		t.Fatal(err)
	}
	if q == p || q == p+1 {
		t.Errorf("picked %d although %d is taken", q, p+1)
	}
}
