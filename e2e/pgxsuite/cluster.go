package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/e2e/suiterun"
	"github.com/pgtenant/pgtenant/internal/devcluster"
)

// fetchPGX downloads pgx with its tests and copies it to dst, writable.
func fetchPGX(ctx context.Context, version, dst string) error {
	c := exec.CommandContext(ctx, "go", "mod", "download", "-json", pgxModule+"@"+version)
	c.Stderr = os.Stderr
	b, err := c.Output()
	if err != nil {
		return fmt.Errorf("go mod download %s@%s: %w", pgxModule, version, err)
	}
	var m struct{ Dir, Error string }
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("go mod download: %w", err)
	}
	if m.Error != "" || m.Dir == "" {
		return fmt.Errorf("go mod download %s@%s: %s", pgxModule, version, m.Error)
	}
	if err := suiterun.Command(ctx, "", nil, "cp", "-R", m.Dir, dst).Run(); err != nil {
		return fmt.Errorf("copy pgx: %w", err)
	}
	if err := suiterun.Command(ctx, "", nil, "chmod", "-R", "u+w", dst).Run(); err != nil {
		return fmt.Errorf("chmod pgx: %w", err)
	}
	return nil
}

// testPkg is one pgx package with tests, compiled.
type testPkg struct {
	path, rel, dir, bin string
}

// buildTests compiles the test binary of each pgx package that has tests
// into binDir (one `go test -c` for all, so the go command builds them in
// parallel), once for both modes; binaries already there are reused.
func buildTests(ctx context.Context, src, binDir string, skip, only []string) ([]testPkg, error) {
	c := exec.CommandContext(ctx, "go", "list", "-f", "{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}} {{.Dir}}{{end}}", "./...")
	c.Dir = src
	c.Stderr = os.Stderr
	b, err := c.Output()
	if err != nil {
		return nil, fmt.Errorf("go list pgx packages: %w", err)
	}
	var pkgs []testPkg
	var missing []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		path, dir, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(path, pgxModule), "/")
		if rel == "" {
			rel = "."
		}
		if slices.Contains(skip, rel) || (only != nil && !slices.Contains(only, rel)) {
			continue
		}
		// go test -c -o DIR names each binary after the package's last
		// path element: pgx's are unique.
		p := testPkg{path: path, rel: rel, dir: dir, bin: filepath.Join(binDir, filepath.Base(path)+".test")}
		if rel == "." {
			p.bin = filepath.Join(binDir, "pgx.test")
		}
		pkgs = append(pkgs, p)
		if _, err := os.Stat(p.bin); err != nil {
			missing = append(missing, path)
		}
	}
	if len(missing) > 0 {
		if err := os.MkdirAll(binDir, 0o755); err != nil {
			return nil, err
		}
		args := append([]string{"test", "-c", "-o", binDir + string(filepath.Separator)}, missing...)
		if err := suiterun.Command(ctx, src, nil, "go", args...).Run(); err != nil {
			return nil, fmt.Errorf("build pgx's test binaries: %w", err)
		}
	}
	for _, p := range pkgs {
		if _, err := os.Stat(p.bin); err != nil {
			return nil, fmt.Errorf("test binary of %s: %w", p.path, err)
		}
	}
	return pkgs, nil
}

// suiteCluster is the two-node local cluster the routers serve, with a
// tenant for each package in each pool mode.
type suiteCluster struct {
	*suiterun.Cluster
	tenants map[string]map[string]tenantPlace // by pool mode, then package
	nodes   map[string]string                 // node DSN by pool mode
}

// tenantPlace is a tenant and the node that holds its shard.
type tenantPlace struct {
	tenant, nodeDSN string
}

// modeNode is the node each pool mode's tenants live on: the modes share
// no database, so neither sees the other's tables, types or locks.
var modeNode = map[string]string{"session": "node1", "transaction": "node2"}

// startCluster starts a two-node cluster. Each package gets, in each mode,
// a tenant of its own in a shard of its own (on the mode's node): pgx's
// packages run at once, and the router puts pg_temp last in search_path,
// so one package's permanent table "t" would otherwise shadow another's
// temporary "t". Each node's shared schema (public) gets what pgx's test
// setup creates (testsetup/postgresql_setup.sql): hstore, ltree and the
// uint64 domain.
func startCluster(ctx context.Context, dir string, modes []string, pkgs []testPkg) (*suiteCluster, error) {
	cdir, err := os.MkdirTemp(dir, "cluster-")
	if err != nil {
		return nil, err
	}
	scl, err := suiterun.StartCluster(ctx, cdir, 2, 2*(len(pkgs)+1))
	if err != nil {
		return nil, err
	}
	cl := &suiteCluster{Cluster: scl, tenants: map[string]map[string]tenantPlace{}, nodes: map[string]string{}}
	if err := cl.addTenants(ctx, modes, pkgs); err != nil {
		cl.Down()
		return nil, err
	}
	return cl, nil
}

func (cl *suiteCluster) addTenants(ctx context.Context, modes []string, pkgs []testPkg) error {
	cat, err := cl.Catalog(ctx)
	if err != nil {
		return err
	}
	defer cat.Close()
	shards, err := cat.Shards(ctx)
	if err != nil {
		return err
	}
	for _, n := range cl.Nodes {
		if err := prepareNode(ctx, n.DSN); err != nil {
			return err
		}
	}
	for _, mode := range modes {
		var free []int
		for _, sh := range shards {
			if sh.Node == modeNode[mode] {
				free = append(free, sh.ID)
			}
		}
		cl.tenants[mode] = map[string]tenantPlace{}
		for _, p := range pkgs {
			if len(free) == 0 {
				return fmt.Errorf("no shard left on %s for %s", modeNode[mode], p.rel)
			}
			shard := free[0]
			free = free[1:]
			id := mode + "-" + strings.ReplaceAll(filepath.Base(p.bin), ".test", "")
			loc, err := cat.AddTenant(ctx, id, &shard)
			if err != nil {
				return fmt.Errorf("add tenant %s: %w", id, err)
			}
			cl.tenants[mode][p.rel] = tenantPlace{tenant: id, nodeDSN: loc.Node.DSN}
			cl.nodes[mode] = loc.Node.DSN
		}
	}
	return nil
}

// prepareNode creates in the node's shared schema (public, on every
// tenant's search_path) what pgx's tests expect.
func prepareNode(ctx context.Context, dsn string) error {
	return suiterun.Exec(ctx, dsn, "prepare a node for pgx's tests",
		"CREATE EXTENSION IF NOT EXISTS hstore SCHEMA public",
		"CREATE EXTENSION IF NOT EXISTS ltree SCHEMA public",
		"CREATE DOMAIN public.uint64 AS numeric(20,0)")
}

// startRouter starts a router in mode for the cluster in dir, logging to
// logDir/router-MODE.log. Its timeouts are long: pgx's tests are run with
// several at once on a small machine, and a direct server gives a
// connection all the time it needs.
func startRouter(ctx context.Context, bin, dir, logDir, mode string) (*suiterun.Router, error) {
	return suiterun.StartRouter(ctx, bin, filepath.Join(logDir, "router-"+mode+".log"),
		"--config", filepath.Join(dir, devcluster.ConfigFile), "--pool-mode", mode, "--auth", "trust",
		"--pool-size", "200", "--pool-wait-timeout", "60s", "--pool-connect-timeout", "60s", "--startup-timeout", "60s")
}

// routerDSN is the connection URL of the router r for tenant.
func routerDSN(r *suiterun.Router, tenant string) string {
	return (&url.URL{Scheme: "postgres", User: url.User("postgres"), Host: r.Addr, Path: "/" + devcluster.NodeDB,
		RawQuery: "sslmode=disable&options=" + strings.ReplaceAll(url.QueryEscape("-c pgtenant.tenant="+tenant), "+", "%20")}).String()
}

// routerClients reads the router r's client gauge.
func routerClients(r *suiterun.Router) (int, error) {
	resp, err := http.Get("http://" + r.Metrics + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "pgtenant_router_client_connections "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return int(f), err
		}
	}
	return 0, errors.New("no pgtenant_router_client_connections in /metrics")
}

// leftovers waits a little for the router to count no clients and for the
// node to hold no backend waiting on a client, and says what is left.
func leftovers(ctx context.Context, r *suiterun.Router, nodeDSN string) ([]string, error) {
	conn, err := pgx.Connect(ctx, nodeDSN)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	var left []string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		left = left[:0]
		n, err := routerClients(r)
		if err != nil {
			return nil, err
		}
		if n != 0 {
			left = append(left, fmt.Sprintf("the router still counts %d clients", n))
		}
		rows, err := conn.Query(ctx, `SELECT pid, state, coalesce(wait_event, ''), left(query, 80) FROM pg_stat_activity
			WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() AND datname = current_database()
			  AND (state LIKE 'idle in transaction%' OR (state = 'active' AND wait_event = 'ClientRead'))`)
		if err != nil {
			return nil, err
		}
		for rows.Next() {
			var pid int
			var state, wait, query string
			if err := rows.Scan(&pid, &state, &wait, &query); err != nil {
				return nil, err
			}
			left = append(left, fmt.Sprintf("backend %d is %s (%s) waiting on a client: %s", pid, state, wait, query))
		}
		if err := rows.Err(); err != nil {
			return nil, err
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left, nil
		}
	}
}
