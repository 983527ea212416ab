package main

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// consoleURL waits for `pgtenant console` (run in-process) to print its address.
func consoleURL(t *testing.T, out *syncBuffer, done <-chan int) string {
	t.Helper()
	re := regexp.MustCompile(`console: (https?://[^ ]+/) `)
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			return m[1]
		}
		select {
		case code := <-done:
			t.Fatalf("pgtenant console exited %d:\n%s", code, out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("pgtenant console printed no address:\n%s", out.String())
	return ""
}

// startConsole runs `pgtenant console args...` until the test ends.
func startConsole(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, append([]string{"console"}, args...), strings.NewReader(""), &out, &errOut) }()
	u := consoleURL(t, &out, done)
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("pgtenant console exited %d:\n%s", code, errOut.String())
			}
		case <-time.After(30 * time.Second):
			t.Errorf("pgtenant console did not stop")
		}
	})
	return u
}

func TestConsoleCommand(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "4")
	mustRun(t, "node", "add", "a", nodeA.NewDatabase(t))
	mustRun(t, "shard", "create")
	os.WriteFile("pw", []byte("s3cret\n"), 0o600)

	for _, args := range [][]string{
		{"--listen", "0.0.0.0:0"},
		{"--listen", "0.0.0.0:0", "--auth-user", "ops", "--auth-password-file", "pw"},
		{"--auth-user", "ops"},
		{"--tls-cert", "x.pem"},
	} {
		code, out, errOut := pgtenant(t, append([]string{"console"}, args...)...)
		if code != 2 {
			t.Errorf("console %q: exit %d, want 2\n%s%s", args, code, out, errOut)
		}
		if args[1] == "0.0.0.0:0" && !strings.Contains(errOut, "bind to 127.0.0.1") {
			t.Errorf("console %q: error does not say how to fix it: %s", args, errOut)
		}
	}

	u := startConsole(t, "--listen", "127.0.0.1:0", "--auth-user", "ops", "--auth-password-file", filepath.Join(".", "pw"))
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET %s without credentials = %d, want 401", u, resp.StatusCode)
	}
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	req.SetBasicAuth("ops", "s3cret")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s with credentials = %d, want 200", u, resp.StatusCode)
	}

	// Over TLS, with the same credentials.
	cert, key := writeTestCert(t, t.TempDir())
	u = startConsole(t, "--listen", "127.0.0.1:0", "--auth-user", "ops", "--auth-password-file", "pw", "--tls-cert", cert, "--tls-key", key)
	if !strings.HasPrefix(u, "https://") {
		t.Fatalf("console with a certificate serves %s", u)
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	req, _ = http.NewRequest(http.MethodGet, u+"api/state", nil)
	req.SetBasicAuth("ops", "s3cret")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.TLS == nil {
		t.Errorf("GET %sapi/state over TLS = %d (tls %v), want 200 over TLS", u, resp.StatusCode, resp.TLS != nil)
	}
}
