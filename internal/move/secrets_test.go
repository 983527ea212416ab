package move

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestMoveWithSecretsOutOfTheCatalog: the source node's DSN in the catalog
// has no password (a role the source server asks for one), pgx finds it in
// PGPASSFILE, and the target's DSN names its password as $MOVE_TARGET_PW.
// The move completes: the subscription, opened by the target server, got the
// passfile's password.
func TestMoveWithSecretsOutOfTheCatalog(t *testing.T) {
	const role, password = "pgtenant_move_pw", "m0ve s3cret"
	ctx := context.Background()
	hbaLine := fmt.Sprintf("host all %s 127.0.0.1/32 scram-sha-256\n", role)
	for _, srv := range [](interface{ DSN(string) string }){srvA.Cluster, srvB.Cluster} {
		conn, err := pgx.Connect(ctx, srv.DSN("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, fmt.Sprintf(`DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '%[1]s') THEN
			CREATE ROLE %[1]s LOGIN SUPERUSER; END IF; END $$; ALTER ROLE %[1]s PASSWORD '%[2]s'`, role, password)); err != nil {
			t.Fatal(err)
		}
		conn.Close(ctx)
	}
	for _, dir := range []string{srvA.Cluster.DataDir(), srvB.Cluster.DataDir()} {
		hba := filepath.Join(dir, "pg_hba.conf")
		old, err := os.ReadFile(hba)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(hba, append([]byte(hbaLine), old...), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			os.WriteFile(hba, old, 0o600)
			reloadConf(srvA.Cluster.DSN("postgres"))
			reloadConf(srvB.Cluster.DSN("postgres"))
		})
	}
	reloadConf(srvA.Cluster.DSN("postgres"))
	reloadConf(srvB.Cluster.DSN("postgres"))

	e := newEnv(t)
	fillShard(t, e, 500)
	as := func(dsn string) string {
		return strings.Replace(dsn, "postgres://postgres@", "postgres://"+role+"@", 1)
	}
	srcCfg, err := pgconn.ParseConfig(e.srcDSN)
	if err != nil {
		t.Fatal(err)
	}
	// The source server asks the role for its password.
	if c, err := pgx.Connect(ctx, as(e.srcDSN)+"&password=wrong"); err == nil || !strings.Contains(err.Error(), "28P01") {
		if c != nil {
			c.Close(ctx)
		}
		t.Fatalf("connect with a wrong password: %v, want 28P01", err)
	}
	passfile := filepath.Join(t.TempDir(), "pgpass")
	if err := os.WriteFile(passfile, []byte(fmt.Sprintf("127.0.0.1:%d:*:%s:%s\n", srcCfg.Port, role, password)), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGPASSFILE", passfile)
	t.Setenv("PGPASSWORD", "")
	t.Setenv("MOVE_TARGET_PW", password)
	dstCfg, err := pgconn.ParseConfig(e.dstDSN)
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, e.cat, `UPDATE pgtenant.nodes SET dsn = $2 WHERE name = $1`, "n1", as(e.srcDSN))
	mustExec(t, e.cat, `UPDATE pgtenant.nodes SET dsn = $2 WHERE name = $1`, "n2",
		fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=%s password=${MOVE_TARGET_PW} sslmode=disable", dstCfg.Port, dstCfg.Database, role))

	m := testMover(t, e, Config{})
	mctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if _, err := m.Move(mctx, testShard, "n2", Options{}); err != nil {
		t.Fatalf("move: %v", err)
	}
	if got, want := shardState(t, e), (shardRow{"n2", "active", 1}); got != want {
		t.Errorf("shard: %+v, want %+v", got, want)
	}
	if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items`); n != 500 {
		t.Errorf("target has %d items, want 500", n)
	}
	assertNoLeftovers(t, e)
}

func reloadConf(dsn string) {
	ctx := context.Background()
	if c, err := pgx.Connect(ctx, dsn); err == nil {
		c.Exec(ctx, `SELECT pg_reload_conf()`)
		c.Close(ctx)
	}
}
