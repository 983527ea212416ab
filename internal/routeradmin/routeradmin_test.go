package routeradmin

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/usage"
)

// router serves /admin/tenants from a real usage.Sketch, as the router does.
func router(t *testing.T, observe map[string]usage.Counts) *httptest.Server {
	t.Helper()
	sk := usage.New(100)
	for tenant, c := range observe {
		sk.Observe(tenant, c)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/admin/tenants" {
			http.NotFound(w, r)
			return
		}
		by, err := usage.ParseBy(r.URL.Query().Get("by"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		json.NewEncoder(w).Encode(sk.Top(by, 0))
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestTopMergesRouters(t *testing.T) {
	r1 := router(t, map[string]usage.Counts{"a": {Transactions: 5, Statements: 5}, "b": {Transactions: 1, Statements: 1}})
	r2 := router(t, map[string]usage.Counts{"b": {Transactions: 7, Statements: 9}})
	down := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "draining", http.StatusServiceUnavailable)
	}))
	down.Close() // nothing listens there any more
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	snap, answers, err := Top(ctx, nil, []string{r1.URL, strings.TrimPrefix(r2.URL, "http://"), down.URL}, usage.ByTransactions)
	if err == nil || !strings.Contains(err.Error(), down.URL) {
		t.Errorf("Top with a router down: err %v, want one naming %s", err, down.URL)
	}
	if len(answers) != 3 || answers[0].Error != "" || answers[1].Error != "" || answers[2].Error == "" {
		t.Errorf("answers %+v: want the first two answered, the third failed", answers)
	}
	if got, want := len(snap.Tenants), 2; got != want {
		t.Fatalf("%d tenants merged, want %d: %+v", got, want, snap.Tenants)
	}
	if b, a := snap.Tenants[0], snap.Tenants[1]; b.Tenant != "b" || b.Transactions != 8 || b.Statements != 10 || a.Tenant != "a" || a.Transactions != 5 {
		t.Errorf("merged by transactions: %+v", snap.Tenants)
	}
	if snap.Total.Transactions != 13 {
		t.Errorf("total transactions %d, want 13", snap.Total.Transactions)
	}

	if _, err := FetchUsage(ctx, nil, r1.URL, usage.By("colour")); err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("FetchUsage with a bad order: %v, want the router's 400", err)
	}
}
