package routeradmin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/pgtenant/pgtenant/internal/usage"
)

// Timeout bounds each router's answer in Top.
const Timeout = 5 * time.Second

// maxBody bounds a router's answer (its whole sketch as JSON).
const maxBody = 64 << 20

// Answer says whether one router answered.
type Answer struct {
	// URL is the router's admin base URL, as asked.
	URL string `json:"url"`
	// Error is why the router did not answer; empty when it did.
	Error string `json:"error,omitempty"`
}

// Top asks every router (base URLs such as http://127.0.0.1:9187) for the
// tenants it counted, ordered by by, concurrently, and merges the snapshots
// of those that answered. The answers come back in the order of urls; err
// joins the failures (each names its router), and the merged snapshot is
// still valid when some routers failed.
func Top(ctx context.Context, client *http.Client, urls []string, by usage.By) (usage.Snapshot, []Answer, error) {
	answers := make([]Answer, len(urls))
	snaps := make([]*usage.Snapshot, len(urls))
	errs := make([]error, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		answers[i].URL = u
		wg.Add(1)
		go func() {
			defer wg.Done()
			snap, err := FetchUsage(ctx, client, u, by)
			if err != nil {
				answers[i].Error = err.Error()
				errs[i] = fmt.Errorf("router %s: %w", u, err)
				return
			}
			snaps[i] = &snap
		}()
	}
	wg.Wait()
	var got []usage.Snapshot
	var failed []error
	for i := range urls {
		if snaps[i] != nil {
			got = append(got, *snaps[i])
		}
		if errs[i] != nil {
			failed = append(failed, errs[i])
		}
	}
	return usage.Merge(by, got...), answers, errors.Join(failed...)
}

// FetchUsage asks one router for every tenant it keeps, ordered by by. A
// base without a scheme is taken as http://. A nil client means
// http.DefaultClient; the answer is bounded by Timeout either way.
func FetchUsage(ctx context.Context, client *http.Client, base string, by usage.By) (usage.Snapshot, error) {
	var snap usage.Snapshot
	if client == nil {
		client = http.DefaultClient
	}
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	u := strings.TrimRight(base, "/") + "/admin/tenants?by=" + url.QueryEscape(string(by))
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return snap, fmt.Errorf("ask %s: %w", u, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return snap, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return snap, fmt.Errorf("read %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return snap, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, &snap); err != nil {
		return snap, fmt.Errorf("decode %s: %w", u, err)
	}
	return snap, nil
}
