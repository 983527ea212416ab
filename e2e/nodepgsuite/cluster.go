package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
)

// The router's user and password for the suite (SCRAM), and the database
// of the direct run.
const (
	routerUser     = "nodepg"
	routerPassword = "nodepg-secret"
	directDB       = "nodepg_direct"
)

// cluster is the local cluster, the routers per pool mode and the
// environment each mode's test files run in.
type cluster struct {
	*suiterun.Cluster
	envs    map[string][]string
	routers []*suiterun.Router
}

// startCluster starts a two-node cluster in dir/dev, and for each pool
// mode in modes a tenant nodepg-MODE and a router; for "direct" a database
// of its own on the first server; for untempMode a router in transaction
// mode and a tenant per test file (files of them), each in a shard of its
// own.
func startCluster(ctx context.Context, bin, dir string, modes []string, files int) (*cluster, error) {
	scl, err := suiterun.StartCluster(ctx, filepath.Join(dir, "dev"), 2, 128)
	if err != nil {
		return nil, err
	}
	cl := &cluster{Cluster: scl, envs: map[string][]string{}}
	if err := cl.start(ctx, bin, dir, modes, files); err != nil {
		cl.stop()
		return nil, err
	}
	return cl, nil
}

func (cl *cluster) start(ctx context.Context, bin, dir string, modes []string, files int) error {
	cfg := fmt.Sprintf("catalog: %q\nrouter:\n  auth: scram-sha-256\n  users:\n    %s: %s\n", cl.CatalogDSN, routerUser, routerPassword)
	if cert, key, ok := selfSigned(ctx, dir); ok {
		cfg += fmt.Sprintf("  tls_cert: %q\n  tls_key: %q\n", cert, key)
	}
	routerConfig := filepath.Join(dir, "router.yaml")
	if err := os.WriteFile(routerConfig, []byte(cfg), 0o600); err != nil {
		return err
	}
	for _, mode := range modes {
		if mode == "direct" {
			env, err := directEnv(ctx, cl.CatalogDSN)
			if err != nil {
				return err
			}
			cl.envs[mode] = env
			continue
		}
		// Each mode's tenant in a shard of its own (120-122), away from the
		// untemp mode's file tenants (0-99).
		tenant := "nodepg-" + mode
		tenants := map[string]int{tenant: map[string]int{"transaction": 120, "session": 121, untempMode: 122}[mode]}
		if mode == untempMode {
			for i := range min(files, 100) {
				tenants[fmt.Sprintf("nodepg-untemp-%d", i)] = i
			}
		}
		if err := cl.AddTenants(ctx, tenants); err != nil {
			return err
		}
		pool := mode
		if mode == untempMode {
			pool = "transaction"
		}
		r, err := suiterun.StartRouter(ctx, bin, filepath.Join(dir, "router-"+mode+".log"),
			"--config", routerConfig, "--pool-mode", pool, "--log-level", "info")
		if err != nil {
			return fmt.Errorf("%s router: %w", mode, err)
		}
		cl.routers = append(cl.routers, r)
		cl.envs[mode] = []string{"PGHOST=127.0.0.1", "PGPORT=" + strconv.Itoa(r.Port()), "PGUSER=" + routerUser, "PGPASSWORD=" + routerPassword,
			"PGDATABASE=app", "PGOPTIONS=-c pgtenant.tenant=" + tenant,
			"SCRAM_TEST_PGUSER=" + routerUser, "SCRAM_TEST_PGPASSWORD=" + routerPassword}
	}
	return nil
}

// directEnv makes the direct run's database on the catalog's server and
// returns the environment that points node-postgres at it.
func directEnv(ctx context.Context, catalogDSN string) ([]string, error) {
	u, err := url.Parse(catalogDSN)
	if err != nil {
		return nil, fmt.Errorf("catalog DSN: %w", err)
	}
	u.Path = "/postgres"
	name := pgx.Identifier{directDB}.Sanitize()
	if err := suiterun.Exec(ctx, u.String(), "direct database", "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)", "CREATE DATABASE "+name); err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil {
		return nil, fmt.Errorf("catalog DSN host: %w", err)
	}
	return []string{"PGHOST=" + host, "PGPORT=" + port, "PGUSER=" + u.User.Username(), "PGDATABASE=" + directDB, "PGOPTIONS="}, nil
}

// selfSigned makes a certificate for the routers with openssl, if it is
// there (node-postgres's ssl tests then run through the router).
func selfSigned(ctx context.Context, dir string) (cert, key string, ok bool) {
	cert, key = filepath.Join(dir, "router.crt"), filepath.Join(dir, "router.key")
	err := exec.CommandContext(ctx, "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
		"-subj", "/CN=localhost", "-keyout", key, "-out", cert).Run()
	return cert, key, err == nil
}

// env is the environment of mode's test files.
func (cl *cluster) env(mode string) []string { return cl.envs[mode] }

// fileEnv is the environment of mode's test file i: in untempMode, with
// the file's own tenant.
func (cl *cluster) fileEnv(mode string, i int) []string {
	if mode != untempMode {
		return cl.envs[mode]
	}
	return append(append([]string{}, cl.envs[mode]...), fmt.Sprintf("PGOPTIONS=-c pgtenant.tenant=nodepg-untemp-%d", i%100))
}

// stop stops the routers and the local cluster.
func (cl *cluster) stop() {
	for _, r := range cl.routers {
		r.Stop()
	}
	cl.Down()
}
