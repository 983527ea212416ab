package stream

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

var srv *pgtest.Server

func TestMain(m *testing.M) {
	pgtest.Main(m, []string{"stream"}, func(s []*pgtest.Server) {
		srv = s[0]
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, srv.Cluster.DSN("postgres"))
		if err != nil {
			panic(err)
		}
		defer conn.Close(ctx)
		// The least-privileged role a node needs: no superuser, REPLICATION, owner of its databases.
		for _, q := range []string{`CREATE ROLE ` + nodeRole + ` LOGIN REPLICATION`, `CREATE ROLE ` + plainRole + ` LOGIN`} {
			if _, err := conn.Exec(ctx, q); err != nil {
				panic(err)
			}
		}
	})
}

const (
	nodeRole  = "pgtenant_node"
	plainRole = "pgtenant_plain"
)

// ownedDatabase creates a database owned by role and returns a DSN that logs in as role.
func ownedDatabase(t *testing.T, role string) string {
	t.Helper()
	dsn := srv.NewDatabase(t)
	ctx := ctxT(t)
	conn, err := pgx.Connect(ctx, srv.Cluster.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	db := dsn[strings.LastIndex(dsn, "/")+1 : strings.Index(dsn, "?")]
	if _, err := conn.Exec(ctx, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` OWNER TO `+role); err != nil {
		t.Fatal(err)
	}
	return strings.Replace(dsn, "postgres://postgres@", "postgres://"+role+"@", 1)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(ctxT(t), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func exec(t *testing.T, conn *pgx.Conn, sqls ...string) {
	t.Helper()
	for _, q := range sqls {
		if _, err := conn.Exec(ctxT(t), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}
