package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// pwRole is a role that must give its password: pg_hba.conf asks it for SCRAM
// (every other role keeps the test servers' trust).
const (
	pwRole     = "pgtenant_pw"
	pwPassword = `n0de pa$$ 'word`
)

// requirePassword creates pwRole on srv and makes the server ask it for its
// password, until the test ends.
func requirePassword(t *testing.T, srv *pgtest.Server) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, srv.Cluster.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, fmt.Sprintf(`DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %[1]s) THEN
		CREATE ROLE %[2]s LOGIN SUPERUSER; END IF; END $$; ALTER ROLE %[2]s PASSWORD %[3]s`,
		quoteLit(pwRole), pgx.Identifier{pwRole}.Sanitize(), quoteLit(pwPassword))); err != nil {
		t.Fatal(err)
	}
	hba := filepath.Join(srv.Cluster.DataDir(), "pg_hba.conf")
	old, err := os.ReadFile(hba)
	if err != nil {
		t.Fatal(err)
	}
	line := fmt.Sprintf("host all %s 127.0.0.1/32 scram-sha-256\n", pwRole)
	if err := os.WriteFile(hba, append([]byte(line), old...), 0o600); err != nil {
		t.Fatal(err)
	}
	reload := func() {
		if _, err := conn.Exec(ctx, `SELECT pg_reload_conf()`); err != nil {
			t.Fatal(err)
		}
	}
	reload()
	t.Cleanup(func() {
		os.WriteFile(hba, old, 0o600)
		c, err := pgx.Connect(ctx, srv.Cluster.DSN("postgres"))
		if err == nil {
			c.Exec(ctx, `SELECT pg_reload_conf()`)
			c.Close(ctx)
		}
	})
	// The server really asks for it now.
	cfg, err := pgconn.ParseConfig(strings.Replace(srv.Cluster.DSN("postgres"), "postgres://postgres@", "postgres://"+pwRole+"@", 1))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Password = "wrong"
	for i := 0; ; i++ {
		c, err := pgconn.ConnectConfig(ctx, cfg)
		if err != nil && strings.Contains(err.Error(), "28P01") {
			return
		}
		if c != nil {
			c.Close(ctx)
		}
		if i > 50 {
			t.Fatalf("the server does not ask %s for a password: %v", pwRole, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func quoteLit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// TestNodeSecrets: node DSNs without secrets in the catalog. Node a's DSN
// names its password as $NODE_A_PASSWORD, resolved from the environment by the
// CLI and from --secrets-file by the router; node b's DSN has no password and
// pgx reads it from PGPASSFILE. `node add` warns about a literal password,
// and no command prints one.
func TestNodeSecrets(t *testing.T) {
	requirePassword(t, nodeA)
	requirePassword(t, nodeB)
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "2")
	dbA := nodeA.NewDatabase(t)
	cfgA, err := pgconn.ParseConfig(dbA)
	if err != nil {
		t.Fatal(err)
	}
	dsnA := fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=%s password=$NODE_A_PASSWORD sslmode=disable", cfgA.Port, cfgA.Database, pwRole)
	dbB := nodeB.NewDatabase(t)
	dsnB := strings.Replace(dbB, "postgres://postgres@", "postgres://"+pwRole+"@", 1)
	cfgB, err := pgconn.ParseConfig(dbB)
	if err != nil {
		t.Fatal(err)
	}
	passfile := filepath.Join(t.TempDir(), "pgpass")
	esc := strings.NewReplacer(`\`, `\\`, `:`, `\:`).Replace
	if err := os.WriteFile(passfile, []byte(fmt.Sprintf("127.0.0.1:%d:*:%s:%s\n", cfgB.Port, pwRole, esc(pwPassword))), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PGPASSFILE", passfile)
	t.Setenv("PGPASSWORD", "")

	// A reference that is not set: refused, naming it.
	code, out, errOut := pgtenant(t, "node", "add", "a", dsnA)
	if code == 0 || !strings.Contains(errOut, "$NODE_A_PASSWORD") {
		t.Fatalf("node add with an unset reference: exit %d\n%s%s", code, out, errOut)
	}
	t.Setenv("NODE_A_PASSWORD", pwPassword)
	for name, dsn := range map[string]string{"a": dsnA, "b": dsnB} {
		code, out, errOut := pgtenant(t, "node", "add", name, dsn)
		if code != 0 || strings.Contains(errOut, "warning") {
			t.Fatalf("node add %s: exit %d\n%s%s", name, code, out, errOut)
		}
	}
	// A literal password works but is warned about, and never printed.
	literal := strings.Replace(nodeA.NewDatabase(t), "postgres://postgres@", "postgres://"+pwRole+":"+pwPasswordURL()+"@", 1)
	code, out, errOut = pgtenant(t, "node", "add", "c", literal)
	if code != 0 || !strings.Contains(errOut, "clear text") || !strings.Contains(errOut, "$C_PASSWORD") {
		t.Fatalf("node add with a literal password: exit %d\n%s%s", code, out, errOut)
	}
	all := out + errOut
	out = mustRun(t, "node", "list")
	all += out
	if !strings.Contains(out, "$NODE_A_PASSWORD") {
		t.Errorf("node list does not show the reference:\n%s", out)
	}
	all += mustRun(t, "node", "check")
	mustRun(t, "node", "remove", "c")
	mustRun(t, "shard", "create")
	mustRun(t, "tenant", "add", "on-a", "--shard", "0")
	mustRun(t, "tenant", "add", "on-b", "--shard", "1")
	all += mustRun(t, "tenant", "locate", "on-a")

	// Every command that connects to the nodes resolves the reference, not
	// only node add and migrate: the registry's rules and access apply after
	// migrate up, table list, extension and reference fan-outs, roles (and
	// node add's role creation once a role exists), node check's checks.
	migs := t.TempDir()
	if err := os.WriteFile(filepath.Join(migs, "00001_items.sql"), []byte("-- +goose Up\n-- pgtenant: tenant_column=tenant_id\n"+
		"CREATE TABLE items (tenant_id text NOT NULL, id bigint PRIMARY KEY);\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgD, err := pgconn.ParseConfig(nodeA.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	dsnD := fmt.Sprintf("host=127.0.0.1 port=%d dbname=%s user=%s password=$NODE_A_PASSWORD sslmode=disable", cfgD.Port, cfgD.Database, pwRole)
	for _, args := range [][]string{
		{"migrate", "up", "--dir", migs},
		{"access", "apply"},
		{"table", "list"},
		{"extension", "add", "citext"},
		{"reference", "exec", "CREATE TABLE plans (id int PRIMARY KEY)"},
		{"role", "create", "secrets_reader", "--grant", "SELECT"},
		{"node", "add", "d", dsnD},
		{"node", "remove", "d"},
		{"role", "drop", "secrets_reader"},
		{"node", "check"},
	} {
		code, out, errOut := pgtenant(t, args...)
		if code != 0 || strings.Contains(out+errOut, "28P01") {
			t.Errorf("pgtenant %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
		}
		all += out + errOut
	}
	for _, leak := range []string{pwPassword, pwPasswordURL()} {
		if strings.Contains(all, leak) {
			t.Errorf("a command printed the password:\n%s", all)
		}
	}

	// The router: a group-readable secrets file is refused.
	secrets := filepath.Join(t.TempDir(), "secrets")
	if err := os.WriteFile(secrets, []byte("NODE_A_PASSWORD="+pwPassword+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(secrets, 0o644); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := pgtenant(t, "router", "--listen", "127.0.0.1:0", "--auth", "trust", "--secrets-file", secrets); code == 0 || !strings.Contains(errOut, "chmod 600") {
		t.Fatalf("router with a group-readable secrets file: exit %d %s", code, errOut)
	}
	if err := os.Chmod(secrets, 0o600); err != nil {
		t.Fatal(err)
	}
	// With the variable gone from its environment, the router resolves it from the file.
	os.Unsetenv("NODE_A_PASSWORD")
	port, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	ctx, cancel := context.WithCancel(context.Background())
	var rout, rerr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"router", "--listen", addr, "--auth", "trust", "--secrets-file", secrets}, strings.NewReader(""), &rout, &rerr)
	}()
	defer func() {
		cancel()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("router did not stop")
		}
		if strings.Contains(rout.String()+rerr.String(), pwPassword) {
			t.Error("the router printed the password")
		}
	}()
	for i := 0; ; i++ {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if i > 100 {
			t.Fatalf("router not listening: %s%s", rout.String(), rerr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, tenant := range []string{"on-a", "on-b"} {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["options"] = "-c pgtenant.tenant=" + tenant
		cctx, ccancel := context.WithTimeout(ctx, 20*time.Second)
		conn, err := pgx.ConnectConfig(cctx, cfg)
		if err != nil {
			ccancel()
			t.Fatalf("connect to the router: %v", err)
		}
		var user string
		err = conn.QueryRow(cctx, `SELECT current_user`).Scan(&user)
		conn.Close(ctx)
		ccancel()
		if err != nil || user != pwRole {
			t.Errorf("tenant %s through the router: backend user %q, %v; want %s", tenant, user, err, pwRole)
		}
	}
}

// pwPasswordURL is pwPassword percent-encoded for a URL's userinfo.
func pwPasswordURL() string {
	return strings.NewReplacer("$", "%24", " ", "%20", "'", "%27").Replace(pwPassword)
}
