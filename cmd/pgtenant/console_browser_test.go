package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/devcluster"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/placement"
)

// The browser test drives Debian's chromium (headless, through the DevTools
// protocol with chromedp) against the console of a dev cluster. chromium is
// looked for at PGTENANT_CHROMIUM, else /usr/bin/chromium; .ci/run installs
// it. With PGTENANT_CONSOLE_SCREENSHOTS=DIR the test writes its screenshots
// there as PNG (the README's are made with DIR=docs/console).

const (
	chromiumEnv    = "PGTENANT_CHROMIUM"
	screenshotsEnv = "PGTENANT_CONSOLE_SCREENSHOTS"
	browserTenants = 1000
)

const browserMigration = `-- +goose Up
-- pgtenant: tenant_column=tenant_id
CREATE TABLE items (id bigserial PRIMARY KEY, tenant_id text NOT NULL, name text NOT NULL, qty int NOT NULL);
CREATE INDEX ON items (tenant_id);
-- +goose Down
DROP TABLE items;
`

func chromiumPath(t *testing.T) string {
	t.Helper()
	path := os.Getenv(chromiumEnv)
	if path == "" {
		path = "/usr/bin/chromium"
	}
	if _, err := exec.LookPath(path); err != nil {
		t.Fatalf("the console's browser test needs Chromium: %v; install it with `apt-get install chromium` (.ci/run does) or point %s at a Chromium binary", err, chromiumEnv)
	}
	return path
}

// browser starts a headless chromium with a fresh profile and no network
// beyond this machine: nothing in the console may need it.
func browser(t *testing.T, path string) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	return ctx
}

// evalJS evaluates a script in the page.
func evalJS[T any](t *testing.T, ctx context.Context, js string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("evaluate %s: %v", js, err)
	}
	return v
}

// waitPage waits until the script is true in the page (the console reloads
// its live part every second), for at most limit.
func waitPage(t *testing.T, ctx context.Context, what, js string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
		if err == nil && ok {
			return
		}
		if time.Now().After(deadline) {
			html, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
			t.Fatalf("the console did not show %s within %s (last error %v); the page says:\n%s", what, limit, err, html)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv(screenshotsEnv)
	if dir == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

func navigate(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("open %s: %v", url, err)
	}
}

// mapCell is one shard as the page draws it.
type mapCell struct {
	Shard  string `json:"shard"`
	Node   string `json:"node"`
	Class  string `json:"class"`
	Target string `json:"target"`
}

const cellsJS = `Array.from(document.querySelectorAll('#shard-map .cell')).map(c => ({shard: c.dataset.shard, node: c.dataset.node, class: c.className, target: c.dataset.target || ""}))`

// checkMap asserts the page draws every shard of the catalog on its node.
func checkMap(t *testing.T, ctx context.Context, cat *catalog.Catalog) []placement.Shard {
	t.Helper()
	shards, err := cat.Shards(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	cells := evalJS[[]mapCell](t, ctx, cellsJS)
	if len(cells) != len(shards) {
		t.Fatalf("the map draws %d shards, the catalog has %d", len(cells), len(shards))
	}
	perNode := map[string]int{}
	for i, s := range shards {
		if c := cells[i]; c.Shard != fmt.Sprint(s.ID) || c.Node != s.Node {
			t.Errorf("cell %d is shard %s on %s, the catalog has shard %d on %s", i, c.Shard, c.Node, s.ID, s.Node)
		}
		perNode[s.Node]++
	}
	// The nodes table counts the same, and each node has its own colour.
	for node, n := range perNode {
		drawn := evalJS[int](t, ctx, fmt.Sprintf(`document.querySelectorAll('#shard-map .cell[data-node=%q]').length`, node))
		listed := evalJS[string](t, ctx, fmt.Sprintf(`document.querySelector('#nodes tr[data-node=%q] td:nth-child(4)').innerText`, node))
		if drawn != n || listed != fmt.Sprint(n) {
			t.Errorf("node %s: %d cells drawn, nodes table says %s, catalog %d", node, drawn, listed, n)
		}
	}
	colours := evalJS[[]string](t, ctx, `Array.from(document.querySelectorAll('#nodes tr[data-node] .key')).map(k => getComputedStyle(k).backgroundColor)`)
	if len(colours) != len(perNode) || len(slices.Compact(slices.Sorted(slices.Values(colours)))) != len(colours) {
		t.Errorf("node colours %q: want one distinct colour per node", colours)
	}
	return shards
}

// TestConsoleBrowser: a dev cluster (devcluster.Up and the dev router, as
// `dev up` starts them: two nodes, 256 shards) with 1,000 tenants; the
// console's map shows every shard on its node; `shard move` from the CLI
// (held at a step by an open transaction on the source) shows in progress,
// then the shard on its new node.
func TestConsoleBrowser(t *testing.T) {
	chromium := chromiumPath(t)
	if dir := os.Getenv(screenshotsEnv); dir != "" {
		abs, err := filepath.Abs(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv(screenshotsEnv, abs)
	}
	start := time.Now()
	base, err := pgtest.TempDir("console") // reaped with its servers if this binary dies
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	t.Chdir(base)
	t.Setenv(asPgtenantEnv, "1") // dev up starts the router from os.Executable(): this binary as pgtenant
	// `dev up`, with the test servers' settings (fsync off: on a loaded
	// machine a checkpoint of 256 shards took over a minute at shutdown).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dir, _ := filepath.Abs("cluster")
	t.Cleanup(func() { devcluster.Down(context.Background(), dir, true) })
	cl, err := devcluster.Up(ctx, devcluster.Options{Dir: dir, Nodes: 2,
		Settings: map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}})
	if err != nil {
		t.Fatalf("dev up: %v", err)
	}
	var upOut syncBuffer
	a := &app{stdout: &upOut, stderr: os.Stderr}
	a.printCluster(cl)
	a.printNext(cl)
	if _, err := a.startDevRouter(ctx, dir); err != nil {
		t.Fatalf("dev up: start the router: %v", err)
	}
	if out := upOut.String(); !strings.Contains(out, "pgtenant console") {
		t.Errorf("dev up does not mention the console:\n%s", out)
	}
	t.Setenv("PGTENANT_CONFIG", filepath.Join(dir, devcluster.ConfigFile))
	cfg, _, err := loadConfig(filepath.Join(dir, devcluster.ConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile("00001_items.sql", []byte(browserMigration), 0o644)
	mustRun(t, "migrate", "up", "--dir", ".")

	cat := catalog.New(cfg.Catalog, nil)
	if err := cat.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	ids := make([]string, browserTenants)
	for i := range ids {
		ids[i] = fmt.Sprintf("tenant-%04d", i)
	}
	if n, err := cat.AddTenants(ctx, ids); err != nil || n != browserTenants {
		t.Fatalf("add %d tenants: %d, %v", browserTenants, n, err)
	}
	shardCount, err := cat.ShardCount(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Traffic through the dev router, so the tenants page has something to
	// order: tenant-0000 gets 30 transactions (and 20,000 rows in the shard
	// that moves), tenant-0001 20, tenant-0002 10.
	heavy := ids[0]
	moved := placement.ShardOf(heavy, shardCount)
	routerURL := fmt.Sprintf("postgres://postgres@%s/app?sslmode=disable", cfg.Router.Listen)
	rconn, err := pgx.Connect(ctx, routerURL)
	if err != nil {
		t.Fatalf("connect to the dev router: %v", err)
	}
	defer rconn.Close(ctx)
	for i, n := range []int{30, 20, 10} {
		for k := 0; k < n; k++ {
			sql := fmt.Sprintf("/* tenant: %s */ SELECT count(*) FROM items WHERE tenant_id = $1", ids[i])
			if k == 0 && i == 0 {
				sql = fmt.Sprintf("/* tenant: %s */ INSERT INTO items (tenant_id, name, qty) SELECT $1, 'item ' || g, g %% 100 FROM generate_series(1, 20000) g", ids[i])
			}
			if _, err := rconn.Exec(ctx, sql, ids[i]); err != nil {
				t.Fatalf("through the router as %s: %v", ids[i], err)
			}
		}
	}

	consoleURL := startConsole(t, "--listen", "127.0.0.1:0", "--size-ttl", "1s")
	t.Logf("cluster, migrations, %d tenants and traffic ready in %s", browserTenants, time.Since(start).Round(time.Millisecond))

	bctx := browser(t, chromium)
	navigate(t, bctx, consoleURL)
	waitPage(t, bctx, "the shard map", `document.querySelectorAll('#shard-map .cell').length > 0`, time.Minute)
	if got := evalJS[string](t, bctx, `document.getElementById('tenant-count').innerText`); got != fmt.Sprint(browserTenants) {
		t.Errorf("the overview counts %s tenants, want %d", got, browserTenants)
	}
	shards := checkMap(t, bctx, cat)
	source := shards[moved].Node
	target := "node1"
	if source == target {
		target = "node2"
	}
	if cl := evalJS[string](t, bctx, fmt.Sprintf(`document.querySelector('#shard-map .cell[data-shard="%d"]').className`, moved)); !strings.Contains(cl, " s5") {
		t.Errorf("shard %d holds the 20,000 rows, its cell is %q: want the darkest shade (s5)", moved, cl)
	}
	if n := evalJS[int](t, bctx, `Array.from(document.querySelectorAll('#nodes tr[data-node]')).filter(r => r.innerText.includes('cache hit') && r.innerText.includes('dead tuples')).length`); n != 2 {
		t.Errorf("%d nodes show their health numbers, want 2", n)
	}
	waitPage(t, bctx, "the live marker", `document.getElementById('conn').innerText === 'live'`, time.Minute)
	screenshot(t, bctx, "overview")
	t.Logf("map checked at %s", time.Since(start).Round(time.Millisecond))

	// Hold the move: creating its replication slot waits for every
	// transaction with an xid open on the source server.
	var sourceDSN string
	nodes, err := cat.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Name == source {
			sourceDSN = n.DSN
		}
	}
	hold, err := pgx.Connect(ctx, sourceDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer hold.Close(context.Background())
	htx, err := hold.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := htx.Exec(ctx, `SELECT txid_current()`); err != nil {
		t.Fatal(err)
	}
	moveDone := make(chan string, 1)
	go func() {
		var out, errOut syncBuffer
		code := run(ctx, []string{"shard", "move", fmt.Sprint(moved), "--to", target}, strings.NewReader(""), &out, &errOut)
		moveDone <- fmt.Sprintf("exit %d\n%s%s", code, out.String(), errOut.String())
	}()
	cell := fmt.Sprintf(`document.querySelector('#shard-map .cell[data-shard="%d"]')`, moved)
	moveRow := fmt.Sprintf(`document.querySelector('#moves tr.move[data-shard="%d"]')`, moved)
	waitPage(t, bctx, "the move in progress", fmt.Sprintf(`%s && %s.classList.contains('moving') && %s.dataset.target === %q && %s && %s.dataset.status === 'running'`,
		cell, cell, cell, target, moveRow, moveRow), 2*time.Minute)
	// The transaction holding the move shows in the source's health.
	waitPage(t, bctx, "the held transaction in the source's health", fmt.Sprintf(`document.querySelector('#nodes tr[data-node=%q]').innerText.includes('longest transaction')`, source), time.Minute)
	heldStep := evalJS[string](t, bctx, moveRow+`.dataset.step`)
	heldBar := evalJS[int](t, bctx, moveRow+`.querySelector('progress') ? `+moveRow+`.querySelector('progress').value : 0`)
	if heldBar < 2 {
		t.Errorf("the running move's bar is at %d, want past the first step (the page says step %q)", heldBar, heldStep)
	}
	time.Sleep(1500 * time.Millisecond) // one more reload: the move stays held
	if st := evalJS[string](t, bctx, moveRow+`.dataset.status`); st != "running" {
		t.Fatalf("the held move shows %q, want running", st)
	}
	screenshot(t, bctx, "moving")
	t.Logf("move shown running at step %s at %s", heldStep, time.Since(start).Round(time.Millisecond))
	select {
	case res := <-moveDone:
		t.Fatalf("the move ended while held at step %s: %s", heldStep, res)
	default:
	}
	if err := htx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// The steps the page shows until the move is done.
	seen := []string{heldStep}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		st, _ := chromedp.Run(bctx, chromedp.Evaluate[string](fmt.Sprintf(`(%s || {dataset: {}}).dataset.step || ""`, moveRow)))
		if st != "" && st != seen[len(seen)-1] {
			seen = append(seen, st)
		}
		if st == "done" {
			break
		}
		if status, _ := chromedp.Run(bctx, chromedp.Evaluate[string](fmt.Sprintf(`(%s || {dataset: {}}).dataset.status || ""`, moveRow))); status == "failed" || status == "aborted" {
			t.Fatalf("the console shows the move %s (steps seen %q): %s", status, seen, <-moveDone)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the console did not show the move done within 5 minutes; steps seen %q", seen)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("move of shard %d %s → %s: steps shown %q, done at %s", moved, source, target, seen, time.Since(start).Round(time.Millisecond))
	if res := <-moveDone; !strings.HasPrefix(res, "exit 0") {
		t.Fatalf("shard move: %s", res)
	}
	waitPage(t, bctx, "the shard on its new node", fmt.Sprintf(`%s.dataset.node === %q && !%s.classList.contains('moving') && %s.dataset.status === 'done'`,
		cell, target, cell, moveRow), time.Minute)
	checkMap(t, bctx, cat)
	screenshot(t, bctx, "moved")

	// The other pages.
	navigate(t, bctx, consoleURL+"tenants?by=transactions")
	waitPage(t, bctx, "the top tenants", `document.querySelectorAll('#top-tenants tr[data-tenant]').length >= 3`, time.Minute)
	top := evalJS[[]string](t, bctx, `Array.from(document.querySelectorAll('#top-tenants tr[data-tenant]')).slice(0, 3).map(r => r.dataset.tenant)`)
	if want := ids[:3]; !slices.Equal(top, want) {
		t.Errorf("tenants by transactions: %q, want %q", top, want)
	}
	screenshot(t, bctx, "tenants")

	navigate(t, bctx, consoleURL+"migrations")
	waitPage(t, bctx, "the migration versions", `document.querySelector('#versions tr[data-version="1"]') !== null`, time.Minute)
	if got := evalJS[string](t, bctx, `document.getElementById('behind').innerText + '/' + document.querySelector('#versions tr[data-version="1"] td:nth-child(2)').innerText`); got != fmt.Sprintf("0/%d", shardCount) {
		t.Errorf("migrations page: behind/at version 1 = %s, want 0/%d", got, shardCount)
	}
	screenshot(t, bctx, "migrations")

	navigate(t, bctx, consoleURL+"ops")
	waitPage(t, bctx, "the move in the operation log", `document.querySelector('#ops tr[data-op="shard move"]') !== null`, time.Minute)
	screenshot(t, bctx, "ops")

	navigate(t, bctx, consoleURL+"routers")
	waitPage(t, bctx, "the dev router on the current map", `document.querySelectorAll('#routers tr[data-router]').length === 1 && document.querySelector('#routers tr[data-router] td:nth-child(5)').innerText === 'current'`, time.Minute)
	screenshot(t, bctx, "routers")
	t.Logf("browser test done in %s", time.Since(start).Round(time.Millisecond))
}
