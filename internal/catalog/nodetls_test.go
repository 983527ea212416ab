package catalog

import (
	"context"
	"strings"
	"testing"
	"time"
)

// tlsResult returns the "tls" line of a node check.
func tlsResult(t *testing.T, r NodeReport) CheckResult {
	t.Helper()
	for _, c := range r.Checks {
		if c.Name == "tls" {
			return c
		}
	}
	t.Fatalf("no tls check in %+v", r.Checks)
	return CheckResult{}
}

// TestCheckNodeTLS: a node check says whether the connection to the node is
// encrypted, as the node DSN's sslmode makes it.
func TestCheckNodeTLS(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := nodeB.EnableTLS(ctx); err != nil {
		t.Fatal(err)
	}
	dsn := nodeB.Cluster.DSN("postgres")
	for _, tc := range []struct {
		mode, status, prefix string
	}{
		{"disable", CheckOK, "not encrypted (a connection on this machine)"},
		{"require", CheckOK, "encrypted (TLSv1."},
		{"prefer", CheckOK, "encrypted (TLSv1."},
	} {
		r := CheckNode(ctx, "b", strings.Replace(dsn, "sslmode=disable", "sslmode="+tc.mode, 1))
		got := tlsResult(t, r)
		if got.Status != tc.status || !strings.HasPrefix(got.Detail, tc.prefix) {
			t.Errorf("sslmode=%s: %+v, want %s %q...", tc.mode, got, tc.status, tc.prefix)
		}
		if tc.mode == "require" && !strings.Contains(got.Detail, "not verified") {
			t.Errorf("sslmode=require: %q does not say the certificate is not verified", got.Detail)
		}
	}
}

func TestJudgeTLS(t *testing.T) {
	for _, tc := range []struct {
		ssl      bool
		host     string
		verified bool
		status   string
		has      string
	}{
		{true, "db1.example.com", true, CheckOK, "verified"},
		{true, "db1.example.com", false, CheckOK, "not verified"},
		{false, "db1.example.com", false, CheckWarn, "not encrypted"},
		{false, "10.0.0.5", false, CheckWarn, "sslmode=verify-full"},
		{false, "127.0.0.1", false, CheckOK, "on this machine"},
		{false, "::1", false, CheckOK, "on this machine"},
		{false, "/var/run/postgresql", false, CheckOK, "on this machine"},
	} {
		got := judgeTLS(tc.ssl, "TLSv1.3 TLS_AES_256_GCM_SHA384", tc.host, tc.verified)
		if got.Status != tc.status || !strings.Contains(got.Detail, tc.has) {
			t.Errorf("judgeTLS(%v, %q, %v) = %+v, want %s with %q", tc.ssl, tc.host, tc.verified, got, tc.status, tc.has)
		}
	}
}
