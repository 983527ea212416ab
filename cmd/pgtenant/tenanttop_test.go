package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/localpg"
)

// After a pgbench run with a skewed tenant mix through the router,
// `tenant top` (finding the router through the catalog) names the heaviest
// tenants in the right order.
func TestTenantTop(t *testing.T) {
	pgbench, err := exec.LookPath("pgbench")
	if err != nil {
		t.Fatalf("pgbench is needed (apt-get install postgresql-client): %v", err)
	}
	migrations, err := filepath.Abs(filepath.Join("testdata", "migrations"))
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "4")
	mustRun(t, "node", "add", "a", nodeA.NewDatabase(t))
	mustRun(t, "node", "add", "b", nodeB.NewDatabase(t))
	mustRun(t, "shard", "create")
	mustRun(t, "migrate", "up", "--dir", migrations)
	for _, id := range []string{"heavy", "medium", "light"} {
		mustRun(t, "tenant", "add", id)
	}
	if code, _, _ := pgtenant(t, "tenant", "top"); code != 1 {
		t.Fatalf("tenant top without routers: exit %d, want 1", code)
	}

	var ports [2]int
	for i := range ports {
		if ports[i], err = localpg.FreePort(); err != nil {
			t.Fatal(err)
		}
	}
	addr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"router", "--listen", addr, "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", ports[1]), "--auth", "trust",
			"--usage-sample-below", "0"}, // every transaction exactly: the counts below are checked to the unit
			strings.NewReader(""), &out, &errOut)
	}()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("router exited %d: %s", code, errOut.String())
			}
		case <-time.After(30 * time.Second):
			t.Error("router did not stop")
		}
	}()
	for i := 0; !strings.Contains(out.String(), "metrics on"); i++ {
		if i > 300 {
			t.Fatalf("router not listening: %s%s", out.String(), errOut.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	// 60% heavy, 30% medium, 10% light, with a fixed seed.
	script := filepath.Join(t.TempDir(), "skew.sql")
	os.WriteFile(script, []byte(`\set r random(1, 100)
\if :r <= 60
SELECT set_config('pgtenant.tenant', 'heavy', false);
\elif :r <= 90
SELECT set_config('pgtenant.tenant', 'medium', false);
\else
SELECT set_config('pgtenant.tenant', 'light', false);
\endif
SELECT count(*) FROM accounts;
`), 0o644)
	host, port, _ := net.SplitHostPort(addr)
	cmd := exec.Command(pgbench, "-n", "-c", "4", "-j", "2", "-t", "100", "--random-seed=7", "-M", "simple", "-f", script,
		fmt.Sprintf("host=%s port=%s user=app dbname=app sslmode=disable", host, port))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pgbench: %v\n%s", err, b)
	}

	var top tenantTopJSON
	jsonOut(t, 0, &top, "tenant", "top", "--by", "transactions")
	if len(top.Routers) != 1 || top.Routers[0].Error != "" || top.Total.Transactions != 400 || len(top.Tenants) != 3 {
		t.Fatalf("tenant top --json: %+v", top)
	}
	var order []string
	for _, e := range top.Tenants {
		order = append(order, e.Tenant)
		if e.Statements != e.Transactions || e.Errors != 0 || e.Bytes == 0 || e.BackendSeconds <= 0 || e.Overcount != 0 {
			t.Errorf("%s: %+v", e.Tenant, e)
		}
	}
	if got := strings.Join(order, ","); got != "heavy,medium,light" {
		t.Errorf("tenant top --by transactions: %s (%+v)", got, top.Tenants)
	}
	if h, m := top.Tenants[0].Transactions, top.Tenants[1].Transactions; h < 200 || m < 80 {
		t.Errorf("skew not seen: heavy %d, medium %d of 400", h, m)
	}
	// --by time orders by backend time. Which tenant used the most is a
	// matter of timing on a loaded machine, so the expected one is read off
	// the listing above (no traffic ran since, so the counters are the same).
	slowest := top.Tenants[0]
	for _, e := range top.Tenants[1:] {
		if e.BackendSeconds > slowest.BackendSeconds {
			slowest = e
		}
	}
	jsonOut(t, 0, &top, "tenant", "top", "--by", "time", "--limit", "1")
	if len(top.Tenants) != 1 || top.Tenants[0].Tenant != slowest.Tenant {
		t.Errorf("tenant top --by time --limit 1: %+v, want %s (%.6f s)", top.Tenants, slowest.Tenant, slowest.BackendSeconds)
	}
	human := mustRun(t, "tenant", "top")
	if lines := strings.Split(human, "\n"); len(lines) < 5 || !strings.HasPrefix(lines[1], plainID(slowest.Tenant)+" ") || !strings.Contains(human, "1 of 1 router answered") {
		t.Errorf("tenant top:\n%s", human)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(mustRun(t, "tenant", "top", "--json", "--by", "errors")), &m); err != nil {
		t.Error(err)
	}
	if code, _, errOut := pgtenant(t, "tenant", "top", "--by", "colour"); code != 2 || !strings.Contains(errOut, "statements") {
		t.Errorf("--by colour: exit %d %s", code, errOut)
	}
}
