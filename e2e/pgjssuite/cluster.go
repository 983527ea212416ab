package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
	"github.com/pgtenant/pgtenant/internal/localpg"
)

// hbaLines go first in the server's pg_hba.conf: the suite's password
// users (tests/pg_hba.conf); everyone else is trusted on loopback, as
// initdb --auth=trust wrote.
const hbaLines = `host postgres_js_test postgres_js_test_md5   127.0.0.1/32 md5
host postgres_js_test postgres_js_test_scram 127.0.0.1/32 scram-sha-256
`

// suiteCluster is the one-node local cluster: the direct run uses the
// server's database postgres_js_test (made by the suite's bootstrap), the
// routers a tenant per mode, each in a shard of its own.
type suiteCluster struct {
	*suiterun.Cluster
	server          *localpg.Cluster
	tlsCert, tlsKey string
	tenants         map[string]string // by mode
	routers         []*suiterun.Router
}

// startCluster starts the cluster and sets its server up as the suite's CI
// does: TLS on, max_prepared_transactions 100, the suite's pg_hba lines.
func startCluster(ctx context.Context, dir string) (*suiteCluster, error) {
	scl, err := suiterun.StartCluster(ctx, filepath.Join(dir, "cluster"), 1, 2)
	if err != nil {
		return nil, err
	}
	n := scl.Nodes[0]
	cl := &suiteCluster{Cluster: scl, server: localpg.New(n.Dir, n.Port), tenants: map[string]string{}}
	if err := cl.setup(ctx, dir); err != nil {
		cl.stop()
		return nil, err
	}
	return cl, nil
}

func (cl *suiteCluster) setup(ctx context.Context, dir string) error {
	cl.tlsCert, cl.tlsKey = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := exec.CommandContext(ctx, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
		"-subj", "/CN=localhost", "-keyout", cl.tlsKey, "-out", cl.tlsCert).Run(); err != nil {
		return fmt.Errorf("make a TLS certificate with openssl: %w", err)
	}
	// The server reads its key and pg_hba.conf as the postgres OS user,
	// from its data directory (it insists on the key's owner and mode).
	data := cl.server.DataDir()
	fi, err := os.Stat(data)
	if err != nil {
		return err
	}
	st := fi.Sys().(*syscall.Stat_t)
	for src, dst := range map[string]string{cl.tlsCert: "pgjs-server.crt", cl.tlsKey: "pgjs-server.key"} {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		p := filepath.Join(data, dst)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return err
		}
		if err := os.Chown(p, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("chown %s: %w", p, err)
		}
	}
	hba := filepath.Join(data, "pg_hba.conf")
	old, err := os.ReadFile(hba)
	if err != nil {
		return err
	}
	if err := os.WriteFile(hba, append([]byte(hbaLines), old...), 0o600); err != nil {
		return err
	}
	if err := suiterun.Exec(ctx, cl.server.DSN("postgres"), "prepare the server",
		"ALTER SYSTEM SET ssl_cert_file = 'pgjs-server.crt'",
		"ALTER SYSTEM SET ssl_key_file = 'pgjs-server.key'",
		"ALTER SYSTEM SET ssl = on",
		"ALTER SYSTEM SET max_prepared_transactions = 100",
	); err != nil {
		return err
	}
	if err := cl.server.Stop(ctx); err != nil {
		return err
	}
	if err := cl.server.Start(ctx); err != nil {
		return err
	}
	shards := map[string]int{}
	for i, mode := range []string{"session", "transaction"} {
		cl.tenants[mode] = "pgjs-" + mode
		shards[cl.tenants[mode]] = i
	}
	return cl.AddTenants(ctx, shards)
}

// startRouter starts a router in mode (trust, as the suite's pg_hba
// trusts its main user; TLS with the server's certificate), logging to the
// work directory's router-MODE.log, and returns the port it listens on.
func (cl *suiteCluster) startRouter(ctx context.Context, bin, dir, mode string) (int, error) {
	cfg := fmt.Sprintf("catalog: %q\nrouter:\n  auth: trust\n  tls_cert: %q\n  tls_key: %q\n", cl.CatalogDSN, cl.tlsCert, cl.tlsKey)
	path := filepath.Join(dir, "router-"+mode+".yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		return 0, err
	}
	r, err := suiterun.StartRouter(ctx, bin, filepath.Join(dir, "router-"+mode+".log"),
		"--config", path, "--pool-mode", mode, "--log-level", "info")
	if err != nil {
		return 0, fmt.Errorf("%s router: %w", mode, err)
	}
	cl.routers = append(cl.routers, r)
	return r.Port(), nil
}

// env is the environment of a mode's run: the server itself for the
// bootstrap and the suite's exec (PGJS_SERVER_*), and where the tests
// connect (PGHOST, PGPORT; PGOPTIONS names the mode's tenant).
func (cl *suiteCluster) env(mode string, port int) []string {
	sp := strconv.Itoa(cl.server.Port)
	env := []string{"PGJS_SERVER_HOST=127.0.0.1", "PGJS_SERVER_PORT=" + sp, "PGHOST=127.0.0.1", "PGPORT=" + strconv.Itoa(port),
		"PGUSER=postgres", "PGDATABASE=", "PGOPTIONS="}
	if t := cl.tenants[mode]; t != "" {
		env = append(env, "PGOPTIONS=-c pgtenant.tenant="+t)
	}
	return env
}

// stop stops the routers and the cluster.
func (cl *suiteCluster) stop() {
	for _, r := range cl.routers {
		r.Stop()
	}
	cl.Down()
}
