package nodestats

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// srv is one server with small shared buffers (so a table of a few MB does
// not fit and reading it is a known pattern of misses), pg_stat_statements
// preloaded, and autovacuum off (dead tuples stay where the test put them).
var srv *pgtest.Server

// sharedBuffers is srv's shared_buffers in 8 kB blocks (1 MB).
const sharedBuffers = 128

// healthRole is the non-superuser role Collect runs as, as a node DSN's role
// would: LOGIN, no pg_monitor.
const healthRole = "health"

func TestMain(m *testing.M) {
	pgtest.MainWith(m, []pgtest.Spec{{Name: "nodestats", Settings: map[string]string{
		"shared_buffers":           fmt.Sprintf("%dkB", sharedBuffers*8),
		"shared_preload_libraries": "'pg_stat_statements'",
		"autovacuum":               "off",
	}}}, func(s []*pgtest.Server) {
		srv = s[0]
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, srv.Cluster.DSN("postgres"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "CREATE ROLE "+healthRole+" LOGIN"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	})
}

// asRole is dsn (the superuser's) for another role.
func asRole(t testing.TB, dsn, role string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.User(role)
	return u.String()
}

func connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t testing.TB, conn *pgx.Conn, sqls ...string) {
	t.Helper()
	for _, sql := range sqls {
		if _, err := conn.Exec(context.Background(), sql); err != nil {
			t.Fatalf("%s: %v", strings.SplitN(sql, "\n", 2)[0], err)
		}
	}
}

func collect(t testing.TB, conn *pgx.Conn) Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Collect(ctx, conn)
	if err != nil {
		t.Fatalf("collect: %v", err)
	}
	return s
}
