package main

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
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
	bin, dir string
	envs     map[string][]string
	routers  []*exec.Cmd
}

// startCluster starts a two-node cluster in dir/dev (pgtenant dev up), and
// for each pool mode in modes a tenant nodepg-MODE and a router; for
// "direct" a database of its own on the first server; for untempMode a
// router in transaction mode and a tenant per test file (files of them),
// each in a shard of its own.
func startCluster(ctx context.Context, bin, dir string, modes []string, files int) (*cluster, error) {
	cl := &cluster{bin: bin, dir: dir, envs: map[string][]string{}}
	dev := filepath.Join(dir, "dev")
	// A cluster left by an earlier run in the same -work directory goes
	// first: its tenants and the direct database are made afresh.
	if _, err := os.Stat(dev); err == nil {
		if err := command(ctx, "", nil, bin, "dev", "down", "--destroy", "--dir", dev).Run(); err != nil {
			return nil, fmt.Errorf("pgtenant dev down --destroy: %w", err)
		}
	}
	if err := command(ctx, "", nil, bin, "dev", "up", "--no-router", "--dir", dev, "--shards", "128").Run(); err != nil {
		return nil, fmt.Errorf("pgtenant dev up: %w", err)
	}
	devConfig := filepath.Join(dev, "pgtenant.yaml")
	b, err := os.ReadFile(devConfig)
	if err != nil {
		return nil, err
	}
	m := regexp.MustCompile(`(?m)^catalog: "([^"]+)"`).FindSubmatch(b)
	if m == nil {
		return nil, fmt.Errorf("no catalog in %s", devConfig)
	}
	catalogDSN := string(m[1])
	cfg := fmt.Sprintf("catalog: %q\nrouter:\n  auth: scram-sha-256\n  users:\n    %s: %s\n", catalogDSN, routerUser, routerPassword)
	if cert, key, ok := selfSigned(ctx, dir); ok {
		cfg += fmt.Sprintf("  tls_cert: %q\n  tls_key: %q\n", cert, key)
	}
	routerConfig := filepath.Join(dir, "router.yaml")
	if err := os.WriteFile(routerConfig, []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	for _, mode := range modes {
		if mode == "direct" {
			env, err := directEnv(ctx, catalogDSN)
			if err != nil {
				cl.stop()
				return nil, err
			}
			cl.envs[mode] = env
			continue
		}
		// Each mode's tenant in a shard of its own (120-122), away from the
		// untemp mode's file tenants (0-99).
		tenant := "nodepg-" + mode
		shard := map[string]string{"transaction": "120", "session": "121", untempMode: "122"}[mode]
		if err := command(ctx, "", nil, bin, "--config", devConfig, "tenant", "add", tenant, "--shard", shard).Run(); err != nil {
			cl.stop()
			return nil, fmt.Errorf("tenant add %s: %w", tenant, err)
		}
		if mode == untempMode {
			for i := range min(files, 100) {
				t := fmt.Sprintf("nodepg-untemp-%d", i)
				if err := command(ctx, "", nil, bin, "--config", devConfig, "tenant", "add", t, "--shard", strconv.Itoa(i)).Run(); err != nil {
					cl.stop()
					return nil, fmt.Errorf("tenant add %s: %w", t, err)
				}
			}
		}
		port, err := cl.startRouter(ctx, routerConfig, mode)
		if err != nil {
			cl.stop()
			return nil, err
		}
		cl.envs[mode] = []string{"PGHOST=127.0.0.1", "PGPORT=" + port, "PGUSER=" + routerUser, "PGPASSWORD=" + routerPassword,
			"PGDATABASE=app", "PGOPTIONS=-c pgtenant.tenant=" + tenant,
			"SCRAM_TEST_PGUSER=" + routerUser, "SCRAM_TEST_PGPASSWORD=" + routerPassword}
	}
	return cl, nil
}

// directEnv makes the direct run's database on the catalog's server and
// returns the environment that points node-postgres at it.
func directEnv(ctx context.Context, catalogDSN string) ([]string, error) {
	u, err := url.Parse(catalogDSN)
	if err != nil {
		return nil, fmt.Errorf("catalog DSN: %w", err)
	}
	u.Path = "/postgres"
	c, err := pgx.Connect(ctx, u.String())
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", u.Host, err)
	}
	defer c.Close(ctx)
	name := pgx.Identifier{directDB}.Sanitize()
	for _, q := range []string{"DROP DATABASE IF EXISTS " + name + " WITH (FORCE)", "CREATE DATABASE " + name} {
		if _, err := c.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("direct database: %w", err)
		}
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

// startRouter starts a router in mode, logging to dir/router-MODE.log, and
// returns its port once it accepts connections.
func (cl *cluster) startRouter(ctx context.Context, config, mode string) (string, error) {
	port, mport := freePort(), freePort()
	log, err := os.Create(filepath.Join(cl.dir, "router-"+mode+".log"))
	if err != nil {
		return "", err
	}
	defer log.Close()
	pool := mode
	if mode == untempMode {
		pool = "transaction"
	}
	c := exec.Command(cl.bin, "router", "--config", config, "--pool-mode", pool, "--log-level", "info",
		"--listen", "127.0.0.1:"+port, "--metrics-listen", "127.0.0.1:"+mport)
	c.Stdout, c.Stderr = log, log
	c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.Start(); err != nil {
		return "", fmt.Errorf("start %s router: %w", mode, err)
	}
	cl.routers = append(cl.routers, c)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(100 * time.Millisecond) {
		if nc, err := net.Dial("tcp", "127.0.0.1:"+port); err == nil {
			nc.Close()
			return port, nil
		}
	}
	return "", fmt.Errorf("%s router did not listen on %s (log in %s)", mode, port, log.Name())
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
	for _, c := range cl.routers {
		c.Process.Signal(syscall.SIGKILL)
		c.Wait()
	}
	command(context.Background(), "", nil, cl.bin, "dev", "down", "--dir", filepath.Join(cl.dir, "dev")).Run()
}

// freePort is a loopback port free a moment ago.
func freePort() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "0"
	}
	defer ln.Close()
	return strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
}
