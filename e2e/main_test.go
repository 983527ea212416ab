package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/router"
)

// servers are the two Postgres servers, nodes "a" and "b" of every cluster.
var servers []*pgtest.Server

func TestMain(m *testing.M) {
	if spec := os.Getenv(moverChildEnv); spec != "" {
		os.Exit(runMoverChild(spec))
	}
	pgtest.Main(m, []string{"a", "b"}, func(s []*pgtest.Server) { servers = s })
}

const (
	// numShards shards: even ones on node a, odd ones on node b.
	numShards = 8
	// numTenants tenants t0…t15: tenant ti lives in shard i % numShards.
	numTenants = 16
	// itemsPerTenant rows in items for every tenant, ids i*100+1 … i*100+5.
	itemsPerTenant = 5
)

// cluster is one test's two-node cluster and the router in front of it.
type cluster struct {
	// nodeDSN by node name, for direct checks behind the router's back.
	nodeDSN map[string]string
	// addr is the router's host:port.
	addr string
	// m is the placement map the router was given.
	m *placement.Map
}

func tenantName(i int) string { return fmt.Sprintf("t%d", i) }

func shardOf(i int) int { return i % numShards }

func nodeOf(shard int) string {
	if shard%2 == 0 {
		return "a"
	}
	return "b"
}

// newCluster makes fresh node databases, creates the shard schemas with a
// table whose rows say which shard (and tenant) they belong to, and starts a
// router on 127.0.0.1:0. Everything stops when t ends.
func newCluster(t testing.TB, cfg router.Config) *cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := &cluster{nodeDSN: map[string]string{}}
	m := &placement.Map{Version: 1, Nodes: map[string]placement.Node{}, Tenants: map[string]int{}}
	for i, name := range []string{"a", "b"} {
		dsn := servers[i].NewDatabase(t)
		c.nodeDSN[name] = dsn
		m.Nodes[name] = placement.Node{Name: name, DSN: dsn}
	}
	for id := 0; id < numShards; id++ {
		m.Shards = append(m.Shards, placement.Shard{ID: id, Schema: placement.SchemaName(id), Node: nodeOf(id), State: placement.StateActive, Epoch: 1})
	}
	for i := 0; i < numTenants; i++ {
		m.Tenants[tenantName(i)] = shardOf(i)
	}
	for name, dsn := range c.nodeDSN {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatalf("connect to node %s: %v", name, err)
		}
		var b strings.Builder
		for id := 0; id < numShards; id++ {
			if nodeOf(id) != name {
				continue
			}
			s := pgx.Identifier{placement.SchemaName(id)}.Sanitize()
			fmt.Fprintf(&b, "CREATE SCHEMA %s;\n", s)
			fmt.Fprintf(&b, "CREATE TABLE %s.shard_info (shard int NOT NULL, node text NOT NULL);\n", s)
			fmt.Fprintf(&b, "INSERT INTO %s.shard_info VALUES (%d, '%s');\n", s, id, name)
			fmt.Fprintf(&b, "CREATE TABLE %s.items (id int PRIMARY KEY, tenant text NOT NULL, shard int NOT NULL DEFAULT %d, name text NOT NULL, qty int NOT NULL);\n", s, id)
			fmt.Fprintf(&b, "CREATE TABLE %s.orders (id int PRIMARY KEY, item_id int NOT NULL REFERENCES %s.items (id), amount int NOT NULL);\n", s, s)
			for ti := 0; ti < numTenants; ti++ {
				if shardOf(ti) != id {
					continue
				}
				for k := 1; k <= itemsPerTenant; k++ {
					iid := ti*100 + k
					fmt.Fprintf(&b, "INSERT INTO %s.items VALUES (%d, '%s', %d, 'item-%d', %d);\n", s, iid, tenantName(ti), id, iid, k*10)
					fmt.Fprintf(&b, "INSERT INTO %s.orders VALUES (%d, %d, %d), (%d, %d, %d);\n", s, iid*10+1, iid, k, iid*10+2, iid, k*2)
				}
			}
		}
		if _, err := conn.Exec(ctx, b.String()); err != nil {
			t.Fatalf("create shards on node %s: %v", name, err)
		}
		conn.Close(ctx)
	}
	c.m = m

	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Auth == "" {
		cfg.Auth = router.AuthTrust
	}
	srv := router.New(cfg)
	if err := srv.SetMap(ctx, m); err != nil {
		t.Fatalf("set map: %v", err)
	}
	if err := srv.Open(ctx); err != nil {
		t.Fatalf("open router: %v", err)
	}
	c.addr = srv.Addr().String()
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(sctx) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("router serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("router did not stop within 30s")
		}
	})
	return c
}

// dsn is a URL for the router with the tenant (if any) as a startup option.
func (c *cluster) dsn(tenant string) string {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: c.addr, Path: "/app"}
	q := url.Values{"sslmode": {"disable"}}
	if tenant != "" {
		q.Set("options", "-c pgtenant.tenant="+tenant)
	}
	// libpq and pgx do not decode '+' as a space in URIs: use %20.
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

// hostPort splits the router's address for clients that want them apart.
func (c *cluster) hostPort() (string, string) {
	i := strings.LastIndexByte(c.addr, ':')
	return c.addr[:i], c.addr[i+1:]
}
