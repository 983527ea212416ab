package router

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Drain lets a running transaction commit, refuses new clients and new
// transactions with 57P01, and returns once nothing is running.
func TestDrain(t *testing.T) {
	for _, mode := range []PoolMode{PoolTransaction, PoolSession} {
		t.Run(string(mode), func(t *testing.T) {
			s := startRouter(t, Config{PoolMode: mode}, nil)
			ctx := ctx(t)
			running := connect(t, s, "t0", pgx.QueryExecModeExec)
			idle := connect(t, s, "t1", pgx.QueryExecModeExec)
			if _, err := idle.Exec(ctx, "SELECT 1"); err != nil {
				t.Fatal(err)
			}
			if mode == PoolSession {
				// A session-mode client holds its backend until it leaves.
				idle.Close(ctx)
			}
			tx, err := running.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			body := fmt.Sprintf("drain-%s-%d", mode, time.Now().UnixNano())
			if _, err := tx.Exec(ctx, "INSERT INTO sink (body) VALUES ($1)", body); err != nil {
				t.Fatal(err)
			}

			drained := make(chan int, 1)
			go func() { drained <- s.Drain(context.Background(), time.Minute) }()
			<-s.drainBegun
			if rd := s.Readiness(ctx, nil); rd.Ready || !rd.Draining {
				t.Errorf("readiness while draining: %+v", rd)
			}

			// A new client is refused with 57P01.
			cfg, err := pgx.ParseConfig(routerURL(s, "t2"))
			if err != nil {
				t.Fatal(err)
			}
			if c, err := pgx.ConnectConfig(ctx, cfg); pgCode(err) != "57P01" {
				if c != nil {
					c.Close(ctx)
				}
				t.Fatalf("connect while draining: %v, want SQLSTATE 57P01", err)
			}
			// A connected client's new transaction is refused with 57P01.
			if mode == PoolTransaction {
				if _, err := idle.Exec(ctx, "SELECT 1 FROM whoami"); pgCode(err) != "57P01" {
					t.Fatalf("new transaction while draining: %v, want SQLSTATE 57P01", err)
				}
			}
			select {
			case n := <-drained:
				t.Fatalf("drain returned %d with a transaction running", n)
			default:
			}

			// The running transaction goes on and commits.
			if _, err := tx.Exec(ctx, "INSERT INTO sink (body) VALUES ($1)", body); err != nil {
				t.Fatalf("statement in the running transaction: %v", err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatalf("commit while draining: %v", err)
			}
			if mode == PoolSession {
				running.Close(ctx)
			}
			if n := <-drained; n != 0 {
				t.Fatalf("drain left %d transactions", n)
			}
			direct, err := pgx.Connect(ctx, nodeDSN(nodeA))
			if err != nil {
				t.Fatal(err)
			}
			defer direct.Close(ctx)
			var n int
			if err := direct.QueryRow(ctx, "SELECT count(*) FROM shard_0000.sink WHERE body = $1", body).Scan(&n); err != nil || n != 2 {
				t.Fatalf("rows committed during the drain: %d, %v; want 2", n, err)
			}
		})
	}
}

// Drain gives up after its grace and says how many transactions it leaves.
func TestDrainGrace(t *testing.T) {
	s := startRouter(t, Config{}, nil)
	ctx := ctx(t)
	c := connect(t, s, "t0", pgx.QueryExecModeExec)
	if _, err := c.Exec(ctx, "BEGIN; SELECT 1 FROM whoami"); err != nil {
		t.Fatal(err)
	}
	if n := s.Drain(ctx, 50*time.Millisecond); n != 1 {
		t.Fatalf("drain with an open transaction past its grace: %d left, want 1", n)
	}
}

// Reload grows every node's pool while clients wait for a backend: the
// waiting client is served at once, and nobody gets an error.
func TestReloadPoolSize(t *testing.T) {
	cfg := Config{Listen: "127.0.0.1:0", Pool: PoolConfig{MaxSize: 1, WaitTimeout: time.Minute}}
	s := startRouter(t, cfg, nil)
	ctx := ctx(t)
	holder := connect(t, s, "t0", pgx.QueryExecModeExec)
	tx, err := holder.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1 FROM whoami"); err != nil {
		t.Fatal(err)
	}
	// t2 is on node a too: its transaction waits for the only backend.
	waiter := connect(t, s, "t2", pgx.QueryExecModeExec)
	got := make(chan error, 1)
	go func() {
		var shard int
		err := waiter.QueryRow(ctx, "SELECT shard FROM whoami").Scan(&shard)
		if err == nil && shard != 2 {
			err = fmt.Errorf("t2 served by shard %d", shard)
		}
		got <- err
	}()
	for waiting(s, "a") == 0 {
		time.Sleep(time.Millisecond)
	}
	cfg.Pool.MaxSize = 3
	changed, fixed := s.Reload(cfg)
	if len(changed) != 1 || changed[0] != "pool_size: 1 -> 3" || len(fixed) != 0 {
		t.Fatalf("reload: changed %q, fixed %q", changed, fixed)
	}
	if err := <-got; err != nil {
		t.Fatalf("waiting client after the pool grew: %v", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	// Under load from 8 clients, the pool shrinks and grows again: no
	// client sees an error.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		c := connect(t, s, fmt.Sprintf("t%d", i), pgx.QueryExecModeExec)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := c.Exec(ctx, "SELECT count(*) FROM items"); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for _, size := range []int{1, 5, 2} {
		cfg.Pool.MaxSize = size
		s.Reload(cfg)
		for i := 0; i < 20; i++ {
			holder.Exec(ctx, "SELECT 1 FROM whoami")
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("client error while the pool was resized: %v", err)
	}
	for _, st := range s.PoolStats() {
		if st.MaxSize != 2 || st.Total > 2 {
			t.Errorf("pool %s after reload to 2: %+v", st.Node, st)
		}
	}
	cfg.Listen = "127.0.0.1:1"
	cfg.HoldTimeout = time.Hour
	if _, fixed := s.Reload(cfg); strings.Join(fixed, ";") != "listen: 127.0.0.1:0 -> 127.0.0.1:1;hold_timeout: 10s -> 1h0m0s" {
		t.Errorf("settings fixed at start: %q", fixed)
	}
}

func waiting(s *Server, node string) int {
	for _, st := range s.PoolStats() {
		if st.Node == node {
			return st.Waiting
		}
	}
	return 0
}

// The HTTP endpoints: /healthz, /readyz saying which map is served, the
// /admin/ index, and the admin endpoints it lists.
func TestHTTPEndpoints(t *testing.T) {
	s := New(Config{})
	var catalogErr error
	hs := httptest.NewServer(s.HTTPHandler(func(context.Context) error { return catalogErr }))
	defer hs.Close()
	get := func(path string, accept string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", hs.URL+path, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	readyz := func() (int, Readiness) {
		code, body := get("/readyz", "")
		var rd Readiness
		if err := json.Unmarshal([]byte(body), &rd); err != nil {
			t.Fatalf("/readyz: %v: %s", err, body)
		}
		return code, rd
	}

	if code, body := get("/healthz", ""); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, rd := readyz(); code != 503 || rd.Ready || rd.Serving != "no map" {
		t.Errorf("/readyz before a map: %d %+v", code, rd)
	}
	if err := s.SetMap(context.Background(), testMap()); err != nil {
		t.Fatal(err)
	}
	if code, rd := readyz(); code != 200 || !rd.Ready || rd.Catalog != "reachable" || rd.Serving != "current map" || rd.MapVersion != 1 {
		t.Errorf("/readyz with a map: %d %+v", code, rd)
	}
	catalogErr = errors.New("connection refused")
	if code, rd := readyz(); code != 200 || !rd.Ready || rd.Catalog != "unreachable" || rd.Serving != "last map" || rd.Error != "connection refused" {
		t.Errorf("/readyz without the catalog: %d %+v", code, rd)
	}

	code, body := get("/admin/", "")
	var index struct {
		Endpoints []struct{ Path, Description string }
	}
	if err := json.Unmarshal([]byte(body), &index); code != 200 || err != nil {
		t.Fatalf("/admin/: %d %v %s", code, err, body)
	}
	for _, e := range index.Endpoints {
		if code, body := get(e.Path, ""); code != 200 {
			t.Errorf("%s listed in /admin/ answers %d: %s", e.Path, code, body)
		}
	}
	if len(index.Endpoints) != 6 {
		t.Errorf("/admin/ lists %d endpoints", len(index.Endpoints))
	}
	if code, body := get("/admin/", "text/html"); code != 200 || !strings.Contains(body, `<a href="/admin/pools">`) {
		t.Errorf("/admin/ for a browser: %d %s", code, body)
	}
	if code, body := get("/metrics", ""); code != 200 || !strings.Contains(body, "pgtenant_router_map_version 1") {
		t.Errorf("/metrics: %d %s", code, body)
	}
	s.Drain(context.Background(), 0)
	if code, rd := readyz(); code != 503 || rd.Ready || !rd.Draining {
		t.Errorf("/readyz while draining: %d %+v", code, rd)
	}
}
