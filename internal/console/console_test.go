package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/migrate"
	"github.com/pgtenant/pgtenant/internal/nodestats"
	"github.com/pgtenant/pgtenant/internal/placement"
)

const testShards = 16

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newCatalog makes a catalog with nodes a and b, every shard, and tenants
// t0…t99.
func newCatalog(t *testing.T) (*catalog.Catalog, map[string]string) {
	t.Helper()
	ctx := ctxT(t)
	cat := catalog.New(srvA.NewDatabase(t), nil)
	if err := cat.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cat.Close)
	if err := cat.Init(ctx, testShards); err != nil {
		t.Fatal(err)
	}
	dsns := map[string]string{"a": srvA.NewDatabase(t), "b": srvB.NewDatabase(t)}
	for _, n := range []string{"a", "b"} {
		if _, err := cat.AddNode(ctx, n, dsns[n]); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cat.CreateShards(ctx); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, 100)
	for i := range ids {
		ids[i] = fmt.Sprintf("t%d", i)
	}
	if _, err := cat.AddTenants(ctx, ids); err != nil {
		t.Fatal(err)
	}
	return cat, dsns
}

func get(t *testing.T, h http.Handler, target string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec.Code, rec.Body.String()
}

var cellRE = regexp.MustCompile(`<div class="cell ([^"]*)" data-shard="(\d+)" data-node="([^"]*)" data-state="([^"]*)"`)

// cells parses the shard map: shard id → node, and the cells' classes.
func cells(t *testing.T, html string) (map[string]string, map[string]string) {
	t.Helper()
	nodes, classes := map[string]string{}, map[string]string{}
	for _, m := range cellRE.FindAllStringSubmatch(html, -1) {
		classes[m[2]] = m[1]
		nodes[m[2]] = m[3]
	}
	return nodes, classes
}

func TestOverviewMapMatchesCatalog(t *testing.T) {
	ctx := ctxT(t)
	cat, dsns := newCatalog(t)
	// Some bytes in shard 3, so it is the darkest cell.
	s3, err := cat.Locate(ctx, "t0")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, dsns[s3.Shard.Node])
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	schema := pgx.Identifier{s3.Shard.Schema}.Sanitize()
	if _, err := conn.Exec(ctx, "CREATE TABLE "+schema+".big AS SELECT g, md5(g::text) AS v FROM generate_series(1, 20000) g"); err != nil {
		t.Fatal(err)
	}

	c, err := New(Config{Catalog: cat, Health: NodeHealth})
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, c, "/")
	if code != http.StatusOK {
		t.Fatalf("GET / = %d\n%s", code, body)
	}
	if n := strings.Count(body, `<span class="metric">cache hit <b>`); n != 2 {
		t.Errorf("%d nodes show a cache hit rate, want 2", n)
	}
	shards, err := cat.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nodes, classes := cells(t, body)
	if len(nodes) != testShards {
		t.Fatalf("the map has %d cells, want %d", len(nodes), testShards)
	}
	for _, s := range shards {
		if got := nodes[fmt.Sprint(s.ID)]; got != s.Node {
			t.Errorf("shard %d drawn on %q, the catalog says %q", s.ID, got, s.Node)
		}
	}
	if cl := classes[fmt.Sprint(s3.Shard.ID)]; !strings.Contains(cl, " s5") {
		t.Errorf("the largest shard's cell has classes %q, want the darkest shade s5", cl)
	}
	if !strings.Contains(body, `<b id="tenant-count">100</b>`) {
		t.Errorf("overview does not count 100 tenants")
	}
	// No secrets, nothing from another host.
	for _, bad := range []string{"password", "https://", "http://"} {
		if strings.Contains(body, bad) {
			t.Errorf("overview contains %q", bad)
		}
	}

	// A fenced shard and a running move are marked.
	if _, err := cat.SetShardState(ctx, 5, placement.StateFenced); err != nil {
		t.Fatal(err)
	}
	target := "a"
	if nodes["5"] == "a" {
		target = "b"
	}
	if _, err := cat.Pool().Exec(ctx, `INSERT INTO pgtenant.moves (shard, source_node, target_node, step, progress)
		VALUES (5, $1, $2, 'copy', '{"source_bytes": 1000, "bytes": 250, "rows": 42}')`, nodes["5"], target); err != nil {
		t.Fatal(err)
	}
	_, body = get(t, c, "/live")
	_, classes = cells(t, body)
	if cl := classes["5"]; !strings.Contains(cl, "fenced") || !strings.Contains(cl, "moving") {
		t.Errorf("shard 5's cell has classes %q, want fenced and moving", cl)
	}
	for _, want := range []string{`data-status="running" data-step="copy"`, "copy (5/11)", "42 rows, 250 B (25%)", "data-target=\"" + target + "\""} {
		if !strings.Contains(body, want) {
			t.Errorf("live part lacks %q", want)
		}
	}
	if strings.Contains(body, "<html") {
		t.Errorf("the live part is a whole page")
	}

	// The same as JSON.
	code, body = get(t, c, "/api/state")
	var o Overview
	if err := json.Unmarshal([]byte(body), &o); code != http.StatusOK || err != nil {
		t.Fatalf("GET /api/state = %d, %v\n%s", code, err, body)
	}
	if len(o.Shards) != testShards || o.Shards[5].Move == nil || o.Shards[5].Move.Step != "copy" || o.Shards[5].State != placement.StateFenced {
		t.Errorf("api state shard 5 = %+v", o.Shards[5])
	}
	if o.Nodes[0].Name != "a" || !o.Nodes[0].Reachable || o.Nodes[0].Shards != testShards/2 {
		t.Errorf("api state node a = %+v", o.Nodes[0])
	}
}

// A node that cannot be reached is drawn as such (its shards' sizes
// unknown); the rest of the page is there.
func TestOverviewUnreachableNode(t *testing.T) {
	ctx := ctxT(t)
	cat, _ := newCatalog(t)
	port, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Pool().Exec(ctx, `UPDATE pgtenant.nodes SET dsn = $1 WHERE name = 'b'`,
		fmt.Sprintf("postgres://u:s3cret@127.0.0.1:%d/x?connect_timeout=2", port)); err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{Catalog: cat})
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, c, "/")
	if code != http.StatusOK {
		t.Fatalf("GET / = %d", code)
	}
	if !strings.Contains(body, `data-node="b" data-reachable="false"`) || !strings.Contains(body, `data-node="a" data-reachable="true"`) {
		t.Errorf("nodes table does not show b unreachable and a reachable:\n%s", body)
	}
	if strings.Contains(body, "s3cret") {
		t.Errorf("the page shows node b's password")
	}
	if nodes, _ := cells(t, body); len(nodes) != testShards {
		t.Errorf("the map has %d cells, want %d", len(nodes), testShards)
	}
}

func TestReadOnlyAndHeaders(t *testing.T) {
	cat, _ := newCatalog(t)
	c, err := New(Config{Catalog: cat})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		rec := httptest.NewRecorder()
		c.ServeHTTP(rec, httptest.NewRequest(m, "/", strings.NewReader("x")))
		if rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("%s / = %d, want 405", m, rec.Code)
		}
	}
	rec := httptest.NewRecorder()
	c.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/static/console.js", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "data-refresh") {
		t.Errorf("GET /static/console.js = %d", rec.Code)
	}
	if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "script-src 'self'") {
		t.Errorf("CSP = %q", csp)
	}
	if code, _ := get(t, c, "/nothing"); code != http.StatusNotFound {
		t.Errorf("GET /nothing = %d, want 404", code)
	}
	// Every embedded file refers to nothing outside the console.
	fs.WalkDir(assets, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, _ := assets.ReadFile(path)
		if strings.Contains(string(b), "http://") || strings.Contains(string(b), "https://") || strings.Contains(string(b), "//cdn") {
			t.Errorf("%s refers to another host", path)
		}
		return nil
	})
}

func TestPages(t *testing.T) {
	ctx := ctxT(t)
	cat, _ := newCatalog(t)
	dir := t.TempDir()
	files := fstest.MapFS{"00001_items.sql": {Data: []byte("-- +goose Up\nCREATE TABLE items (id int);\n")}}
	shards, err := cat.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := cat.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dsn := map[string]string{}
	for _, n := range nodes {
		dsn[n.Name] = n.DSN
	}
	var targets []migrate.Target
	for _, s := range shards {
		targets = append(targets, migrate.Target{Shard: s.ID, Schema: s.Schema, Node: s.Node, DSN: dsn[s.Node]})
	}
	if _, err := migrate.Up(ctx, files, targets[:10], migrate.Options{}); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "00001_items.sql"), files["00001_items.sql"].Data, 0o644)
	c, err := New(Config{Catalog: cat, MigrationsDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	code, body := get(t, c, "/migrations")
	if code != http.StatusOK {
		t.Fatalf("GET /migrations = %d", code)
	}
	for _, want := range []string{`<b id="behind">6</b>`, `data-version="1"><td class="num">1</td><td class="num">10</td><td class="mono">shards 0-9</td>`,
		`data-version="0"><td class="num">0</td><td class="num">6</td><td class="mono">shards 10-15</td><td><span class="bad">1 pending`} {
		if !strings.Contains(body, want) {
			t.Errorf("migrations page lacks %q:\n%s", want, body)
		}
	}

	code, body = get(t, c, "/ops")
	if code != http.StatusOK || !strings.Contains(body, `<tr data-op="shard create">`) || !strings.Contains(body, "added=100") {
		t.Errorf("GET /ops = %d, lacks shard create or the tenants added:\n%s", code, body)
	}
	if code, _ := get(t, c, "/ops?limit=x"); code != http.StatusBadRequest {
		t.Errorf("GET /ops?limit=x = %d, want 400", code)
	}

	code, body = get(t, c, "/tenants")
	if code != http.StatusOK || !strings.Contains(body, "no live router serves its admin endpoints") {
		t.Errorf("GET /tenants without routers = %d:\n%s", code, body)
	}
	if code, _ := get(t, c, "/tenants?by=nonsense"); code != http.StatusBadRequest {
		t.Errorf("GET /tenants?by=nonsense = %d, want 400", code)
	}

	if err := cat.Heartbeat(ctx, "r1", "127.0.0.1:6432", 1); err != nil {
		t.Fatal(err)
	}
	code, body = get(t, c, "/routers")
	if code != http.StatusOK || !strings.Contains(body, `<tr data-router="r1">`) || !strings.Contains(body, "behind</span>") {
		t.Errorf("GET /routers = %d, lacks router r1 behind the map:\n%s", code, body)
	}
}

func TestBasicAuth(t *testing.T) {
	h := BasicAuth(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "in") }), "ops", "pw")
	for _, tc := range []struct {
		name       string
		user, pass string
		set        bool
		want       int
	}{
		{"none", "", "", false, http.StatusUnauthorized},
		{"wrong password", "ops", "nope", true, http.StatusUnauthorized},
		{"wrong user", "root", "pw", true, http.StatusUnauthorized},
		{"right", "ops", "pw", true, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			if tc.set {
				req.SetBasicAuth(tc.user, tc.pass)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Errorf("code %d, want %d", rec.Code, tc.want)
			}
			if tc.want == http.StatusUnauthorized && !strings.HasPrefix(rec.Header().Get("WWW-Authenticate"), "Basic ") {
				t.Errorf("no WWW-Authenticate challenge")
			}
		})
	}
}

func TestCheckListen(t *testing.T) {
	for _, tc := range []struct {
		addr      string
		auth, tls bool
		ok        bool
	}{
		{"127.0.0.1:8432", false, false, true},
		{"[::1]:8432", false, false, true},
		{"localhost:8432", true, false, true},
		{"0.0.0.0:8432", false, false, false},
		{":8432", true, false, false},
		{"10.0.0.5:8432", true, false, false},
		{"10.0.0.5:8432", false, true, false},
		{"10.0.0.5:8432", true, true, true},
		{"nonsense", false, false, false},
	} {
		err := CheckListen(tc.addr, tc.auth, tc.tls)
		if (err == nil) != tc.ok {
			t.Errorf("CheckListen(%q, auth %v, tls %v) = %v, want ok %v", tc.addr, tc.auth, tc.tls, err, tc.ok)
		}
		if err != nil && strings.Contains(tc.addr, ":") && tc.addr != "nonsense" && !errors.Is(err, ErrExposed) {
			t.Errorf("CheckListen(%q) = %v, want ErrExposed", tc.addr, err)
		}
	}
}

func TestHealthMetrics(t *testing.T) {
	rate := func(f float64) *float64 { return &f }
	n := func(v int64) *int64 { return &v }
	s := nodestats.Stats{
		Cache:              nodestats.HitRate{Hit: 90, Read: 10, Rate: rate(0.9)},
		IndexCache:         nodestats.HitRate{Hit: 999, Read: 1, Rate: rate(0.999)},
		Connections:        nodestats.Connections{Database: 7, ByState: map[string]int{"active": 2, "idle in transaction": 1}, Server: 90, MaxConnections: 100},
		LongestTransaction: &nodestats.Transaction{PID: 42, State: "idle in transaction", AgeSeconds: 125},
		Slots:              []nodestats.Slot{{Name: "s", Active: false, LagBytes: n(2048)}},
		DatabaseBytes:      5 << 20,
		Disk:               nodestats.Disk{FreeBytes: n(50 << 30), TotalBytes: n(100 << 30)},
		Vacuum:             nodestats.Vacuum{DeadTuples: 1234, TablesDue: 2},
	}
	got := map[string]Metric{}
	for _, m := range healthMetrics(s) {
		got[m.Name] = m
	}
	for _, want := range []Metric{
		{Name: "cache hit", Value: "90.0%", Warn: true},
		{Name: "index hit", Value: "99.9%"},
		{Name: "connections", Value: "7 (2 active, 1 idle in transaction), server 90/100", Warn: true},
		{Name: "longest transaction", Value: "125 s (pid 42, idle in transaction)", Warn: true},
		{Name: "replication slots", Value: "1, most behind 2.0 kB, 1 inactive", Warn: true},
		{Name: "database", Value: "5.0 MB"},
		{Name: "disk", Value: "50.0 GB free (50%)"},
		{Name: "dead tuples", Value: "1234, 2 tables due for vacuum", Warn: true},
	} {
		if g := got[want.Name]; g != want {
			t.Errorf("%s = %+v, want %+v", want.Name, g, want)
		}
	}
	if _, ok := got["slowest statement"]; ok {
		t.Errorf("a slowest statement without pg_stat_statements")
	}
}
