package router

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// Two real Postgres servers act as two nodes; the database "pgt" on each
// holds the shards placed there (even shards on a, odd on b).
var (
	nodeA, nodeB *pgtest.Server
	testShards   = 8
)

const testUser, testPassword = "app", "s3cret"

func TestMain(m *testing.M) {
	pgtest.Main(m, []string{"a", "b"}, func(s []*pgtest.Server) {
		nodeA, nodeB = s[0], s[1]
		if err := setupNodes(); err != nil {
			panic(err)
		}
	})
}

func nodeDSN(s *pgtest.Server) string { return s.Cluster.DSN("pgt") }

// setupNodes creates database pgt on both nodes and the shard schemas, each
// with tables whose rows say which shard they are in.
func setupNodes() error {
	ctx := context.Background()
	for i, s := range []*pgtest.Server{nodeA, nodeB} {
		c, err := pgx.Connect(ctx, s.Cluster.DSN("postgres"))
		if err != nil {
			return err
		}
		if _, err := c.Exec(ctx, "CREATE DATABASE pgt"); err != nil {
			return err
		}
		c.Close(ctx)
		c, err = pgx.Connect(ctx, nodeDSN(s))
		if err != nil {
			return err
		}
		for sh := i; sh < testShards; sh += 2 {
			if err := createShard(ctx, c, sh); err != nil {
				return err
			}
		}
		c.Close(ctx)
	}
	return nil
}

func createShard(ctx context.Context, c *pgx.Conn, sh int) error {
	schema := pgx.Identifier{placement.SchemaName(sh)}.Sanitize()
	_, err := c.Exec(ctx, fmt.Sprintf(`
CREATE SCHEMA %[1]s;
CREATE TABLE %[1]s.whoami (shard int NOT NULL);
INSERT INTO %[1]s.whoami VALUES (%[2]d);
CREATE TABLE %[1]s.items (id int PRIMARY KEY, tenant text NOT NULL, val text NOT NULL);
INSERT INTO %[1]s.items SELECT g, 'seed', 'shard%[2]d-' || g FROM generate_series(1, 100) g;
CREATE TABLE %[1]s.sink (id serial PRIMARY KEY, tenant text NOT NULL DEFAULT current_setting('pgtenant.tenant_id'), body text);
`, schema, sh))
	return err
}

// testMap places tenants t0..t63 on shard i%8; shards alternate nodes.
func testMap() *placement.Map {
	m := &placement.Map{Version: 1, Nodes: map[string]placement.Node{
		"a": {Name: "a", DSN: nodeDSN(nodeA)},
		"b": {Name: "b", DSN: nodeDSN(nodeB)},
	}, Tenants: map[string]int{}}
	for i := 0; i < testShards; i++ {
		n := "a"
		if i%2 == 1 {
			n = "b"
		}
		m.Shards = append(m.Shards, placement.Shard{ID: i, Schema: placement.SchemaName(i), Node: n, State: placement.StateActive, Epoch: 1})
	}
	for i := 0; i < 64; i++ {
		m.Tenants[fmt.Sprintf("t%d", i)] = i % testShards
	}
	for i, odd := range oddTenants {
		m.Tenants[odd] = i % testShards
	}
	return m
}

var oddTenants = []string{`o'brien`, `semi;colon`, `"quoted"`, `üñíçødé-租户`, `back\slash`, `--dash`, `/*c*/`, `$1`}

func shardOf(tenant string) int { return testMap().Tenants[tenant] }

// startRouter starts a router on a free port with m installed.
func startRouter(t testing.TB, cfg Config, m *placement.Map) *Server {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Users == nil {
		cfg.Users = map[string]string{testUser: testPassword}
	}
	s := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	if m == nil {
		m = testMap()
	}
	if err := s.SetMap(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := s.Open(ctx); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("router did not stop")
		}
	})
	return s
}

// routerURL is a connection URL through s with an optional startup tenant.
func routerURL(s *Server, tenant string) string {
	u := url.URL{Scheme: "postgres", User: url.UserPassword(testUser, testPassword), Host: s.Addr().String(), Path: "/pgt"}
	q := url.Values{"sslmode": {"disable"}}
	if tenant != "" {
		q.Set("options", "-c pgtenant.tenant="+strings.ReplaceAll(strings.ReplaceAll(tenant, `\`, `\\`), " ", `\ `))
	}
	u.RawQuery = strings.ReplaceAll(q.Encode(), "+", "%20")
	return u.String()
}

func connect(t testing.TB, s *Server, tenant string, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(routerURL(s, tenant))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect through router: %v", err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

var execModes = []pgx.QueryExecMode{
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec,
	pgx.QueryExecModeSimpleProtocol,
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// checkNoLeak fails t if goroutines started during it are still running
// after a short settle.
func checkNoLeak(t *testing.T) func() {
	before := runtime.NumGoroutine()
	return func() {
		t.Helper()
		var n int
		for i := 0; i < 100; i++ {
			n = runtime.NumGoroutine()
			if n <= before {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
		buf := make([]byte, 1<<16)
		buf = buf[:runtime.Stack(buf, true)]
		t.Errorf("goroutines: %d before, %d after\n%s", before, n, buf)
	}
}

// pgCode returns the SQLSTATE of err or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}
