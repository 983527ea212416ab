package examples

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/examples/go/tasks"
)

// testGoApp runs the Go example's handler over a pgxpool in one exec mode:
// projects made per tenant, listed back from many goroutines sharing a
// small pool, a failed request rolled back, and an unknown tenant as 404.
func testGoApp(t *testing.T, mode string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pool, err := pgxpool.New(ctx, routerURL+"&pool_max_conns=3&default_query_exec_mode="+mode)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	srv := httptest.NewServer((&tasks.Store{Pool: pool}).Handler())
	defer srv.Close()

	call := func(method, tenant string, body any) (int, []byte) {
		t.Helper()
		var rd bytes.Buffer
		if body != nil {
			json.NewEncoder(&rd).Encode(body)
		}
		req, _ := http.NewRequestWithContext(ctx, method, srv.URL+"/projects", &rd)
		req.Header.Set("X-Tenant", tenant)
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var out bytes.Buffer
		out.ReadFrom(res.Body)
		return res.StatusCode, out.Bytes()
	}
	tag := "go-" + mode
	for _, tn := range tenants {
		if code, body := call("POST", tn, map[string]any{"name": tag + "-" + tn, "tasks": []string{"a", "b", "c"}}); code != http.StatusCreated {
			t.Fatalf("POST for %s: %d %s", tn, code, body)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for i := 0; i < 30; i++ {
		tn := tenants[i%len(tenants)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, body := call("GET", tn, nil)
			var ps []tasks.Project
			if err := json.Unmarshal(body, &ps); err != nil || code != http.StatusOK {
				errs <- fmt.Errorf("GET for %s: %d %s", tn, code, body)
				return
			}
			var mine []string
			for _, p := range ps {
				if len(p.Name) > len(tag) && p.Name[:len(tag)] == tag {
					mine = append(mine, fmt.Sprintf("%s:%d", p.Name, p.Tasks))
				}
			}
			if want := fmt.Sprintf("%s-%s:3", tag, tn); len(mine) != 1 || mine[0] != want {
				errs <- fmt.Errorf("tenant %s sees %v, want [%s]", tn, mine, want)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// A request that fails half way (a NULL name) leaves nothing behind.
	_, before := call("GET", "globex", nil)
	if code, body := call("POST", "globex", map[string]any{"name": nil, "tasks": []string{"x"}}); code != http.StatusInternalServerError || !bytes.Contains(body, []byte(`"23502"`)) {
		t.Errorf("POST with a NULL name: %d %s, want 500 with SQLSTATE 23502", code, body)
	}
	if _, after := call("GET", "globex", nil); !bytes.Equal(before, after) {
		t.Errorf("a failed request changed globex's projects:\n%s\n%s", before, after)
	}
	if code, body := call("GET", "nobody", nil); code != http.StatusNotFound || !bytes.Contains(body, []byte(`"42704"`)) {
		t.Errorf("unknown tenant: %d %s, want 404 with SQLSTATE 42704", code, body)
	}
}
