package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/proclife"
)

// TestRouterSignals runs the built pgtenant binary as a service manager
// would and sends it real signals. SIGHUP with a bigger pool size (and a
// new user, and another log level) in the config file, under load: no
// client sees an error and the router keeps running. SIGTERM: a running
// transaction commits, a new client gets 57P01, and the router exits 0.
func TestRouterSignals(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "pgtenant")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	migrations, err := filepath.Abs(filepath.Join("testdata", "migrations"))
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	catalogDSN := nodeA.NewDatabase(t)
	t.Setenv("PGTENANT_CATALOG", catalogDSN)
	dsnA, dsnB := nodeA.NewDatabase(t), nodeB.NewDatabase(t)
	mustRun(t, "init", "--shards", "4")
	mustRun(t, "node", "add", "a", dsnA)
	mustRun(t, "node", "add", "b", dsnB)
	mustRun(t, "shard", "create")
	mustRun(t, "migrate", "up", "--dir", migrations)
	tenants := []string{"acme", "beta", "gamma", "delta"}
	for _, id := range tenants {
		mustRun(t, "tenant", "add", id)
	}

	ports := make([]int, 2)
	for i := range ports {
		if ports[i], err = localpg.FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	metrics := fmt.Sprintf("127.0.0.1:%d", ports[1])
	config := filepath.Join(t.TempDir(), "pgtenant.yaml")
	writeConfig := func(poolSize int, level string, users ...string) {
		t.Helper()
		var b strings.Builder
		fmt.Fprintf(&b, "catalog: %q\nlog_level: %s\nrouter:\n  listen: %s\n  metrics_listen: %s\n  pool_size: %d\n  pool_wait_timeout: 1m\n  shutdown_grace: 1m\n  users:\n",
			catalogDSN, level, addr, metrics, poolSize)
		for _, u := range users {
			fmt.Fprintf(&b, "    %s: s3cret\n", u)
		}
		if err := os.WriteFile(config, []byte(b.String()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeConfig(1, "warn", "app")

	var stdout, stderr syncBuffer
	proc := exec.Command(bin, "router", "--config", config)
	proc.Stdout, proc.Stderr = &stdout, &stderr
	exited, err := proclife.Start(proc, syscall.SIGKILL) // dies with this test binary
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if proc.ProcessState == nil {
			proc.Process.Kill()
			<-exited
		}
	}()
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for i := 0; !cond(); i++ {
			select {
			case err := <-exited:
				t.Fatalf("router exited (%v) while waiting for %s\nstdout:\n%s\nstderr:\n%s", err, what, stdout.String(), stderr.String())
			default:
			}
			if i > 600 {
				t.Fatalf("no %s after 60s\nstdout:\n%s\nstderr:\n%s", what, stdout.String(), stderr.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor("router listening", func() bool { return strings.Contains(stdout.String(), "metrics on") })

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	connect := func(user, tenant string) (*pgx.Conn, error) {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://%s:s3cret@%s/app?sslmode=disable", user, addr))
		if err != nil {
			t.Fatal(err)
		}
		cfg.RuntimeParams["options"] = "-c pgtenant.tenant=" + tenant
		return pgx.ConnectConfig(ctx, cfg)
	}

	// Load: clients run transactions on a pool of one backend per node.
	var wg sync.WaitGroup
	var stopLoad atomic.Bool
	var done atomic.Int64
	errs := make(chan error, 16)
	for i := 0; i < 6; i++ {
		c, err := connect("app", tenants[i%len(tenants)])
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close(context.Background())
			for !stopLoad.Load() {
				_, err := c.Exec(ctx, "BEGIN; INSERT INTO accounts (tenant_id, name) VALUES (current_setting('pgtenant.tenant_id'), 'load'); COMMIT")
				if err != nil {
					errs <- err
					return
				}
				done.Add(1)
			}
		}()
	}
	waitFor("load", func() bool { return done.Load() > 50 })

	writeConfig(4, "info", "app", "app2")
	proc.Process.Signal(syscall.SIGHUP)
	waitFor("config reloaded", func() bool { return strings.Contains(stdout.String(), "config reloaded") })
	out := stdout.String()
	for _, want := range []string{"pool_size: 1 -> 4", "users added: app2", "log_level: WARN -> INFO"} {
		if !strings.Contains(out, want) {
			t.Errorf("reload output lacks %q:\n%s", want, out)
		}
	}
	var pools []struct {
		Node    string `json:"node"`
		MaxSize int    `json:"max_size"`
	}
	getJSON(t, "http://"+metrics+"/admin/pools", &pools)
	if len(pools) != 2 || pools[0].MaxSize != 4 || pools[1].MaxSize != 4 {
		t.Errorf("pools after SIGHUP: %+v", pools)
	}
	after := done.Load()
	waitFor("load after the reload", func() bool { return done.Load() > after+50 })
	stopLoad.Store(true)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("client error under SIGHUP: %v", err)
	}
	c2, err := connect("app2", "acme")
	if err != nil {
		t.Fatalf("user added by SIGHUP: %v", err)
	}
	c2.Close(ctx)

	// SIGTERM: the running transaction finishes, new clients get 57P01.
	running, err := connect("app", "acme")
	if err != nil {
		t.Fatal(err)
	}
	defer running.Close(context.Background())
	tx, err := running.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO accounts (tenant_id, name) VALUES ('acme', 'during drain')"); err != nil {
		t.Fatal(err)
	}
	proc.Process.Signal(syscall.SIGTERM)
	waitFor("draining", func() bool { return strings.Contains(stdout.String(), "router draining") })
	var ready struct {
		Ready    bool `json:"ready"`
		Draining bool `json:"draining"`
	}
	if code := getJSON(t, "http://"+metrics+"/readyz", &ready); code != 503 || ready.Ready || !ready.Draining {
		t.Errorf("/readyz while draining: %d %+v", code, ready)
	}
	if c, err := connect("app", "beta"); pgCode(err) != "57P01" {
		if c != nil {
			c.Close(ctx)
		}
		t.Errorf("new client while draining: %v, want SQLSTATE 57P01", err)
	}
	if _, err := tx.Exec(ctx, "INSERT INTO accounts (tenant_id, name) VALUES ('acme', 'during drain')"); err != nil {
		t.Fatalf("statement in the running transaction: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatalf("commit while draining: %v", err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("router exit: %v\n%s", err, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("router did not exit after its last transaction\n%s", stdout.String())
	}
	if !strings.Contains(stdout.String(), "router stopping: drained") {
		t.Errorf("stdout:\n%s", stdout.String())
	}
	schema := placement.SchemaName(placement.ShardOf("acme", 4))
	var n int
	for _, dsn := range []string{dsnA, dsnB} {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		var k int
		err = c.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "accounts"}.Sanitize()+" WHERE name = 'during drain'").Scan(&k)
		c.Close(ctx)
		if err == nil {
			n += k
		}
	}
	if n != 2 {
		t.Errorf("rows of the transaction committed during the drain: %d, want 2", n)
	}
}

// getJSON fetches url into v and returns the status code.
func getJSON(t *testing.T, url string, v any) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("GET %s: %v: %s", url, err, b)
	}
	return resp.StatusCode
}

// pgCode returns the SQLSTATE of err or "".
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}
