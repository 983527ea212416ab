package router

import (
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/usage"
)

// The router counts each tenant's transactions, statements, errors,
// backend time and row bytes, in both protocols, and exports the top K.
func TestUsageCounting(t *testing.T) {
	s := startRouter(t, Config{UsageTopK: 1}, nil) // every transaction exactly (the default)
	ctx := ctx(t)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		c := connect(t, s, "t0", mode)
		for i := 0; i < 3; i++ {
			// 100 rows of ('shardN-i'): bytes are counted per DataRow body.
			rows, err := c.Query(ctx, "SELECT val FROM items ORDER BY id")
			if err != nil {
				t.Fatal(err)
			}
			rows.Close()
		}
		if _, err := c.Exec(ctx, "SELECT 1/0 FROM whoami"); pgCode(err) != "22012" {
			t.Fatalf("division by zero: %v", err)
		}
		c1 := connect(t, s, "t1", mode)
		if _, err := c1.Exec(ctx, "SELECT 1 FROM whoami"); err != nil {
			t.Fatal(err)
		}
	}
	snap, ok := s.Usage(usage.ByStatements, 0)
	if !ok || len(snap.Tenants) != 2 {
		t.Fatalf("usage: %+v", snap)
	}
	t0, t1 := snap.Tenants[0], snap.Tenants[1]
	// Each val is 'shard0-N' (8 or 9 bytes plus 2 for the column count and
	// 4 for its length): 100 rows.
	wantBytes := int64(0)
	for i := 1; i <= 100; i++ {
		wantBytes += 2 + 4 + int64(len(fmt.Sprintf("shard0-%d", i)))
	}
	// Transactions: 4 per protocol, and with prepared statements a
	// checkout for each Parse/Describe.
	if t0.Tenant != "t0" || t0.Transactions < 8 || t0.Statements != 6 || t0.Errors != 2 || t0.Bytes != 2*3*wantBytes || t0.BackendSeconds <= 0 {
		t.Errorf("t0: %+v (want 8+ transactions, 6 statements, 2 errors, %d bytes)", t0, 2*3*wantBytes)
	}
	if t1.Tenant != "t1" || t1.Transactions < 2 || t1.Statements != 2 || t1.Errors != 0 || t1.Bytes != 2*(2+4+1) {
		t.Errorf("t1: %+v", t1)
	}
	if snap.Total.Transactions != t0.Transactions+t1.Transactions || snap.Total.Bytes != t0.Bytes+t1.Bytes {
		t.Errorf("total: %+v", snap.Total)
	}
	// Only the top 1 by backend time is exported, with the tenant as label.
	// Which tenant that is depends on wall-clock time on a loaded machine
	// (t0 does more, but one slow transaction of t1's can outweigh it), so
	// the export is checked against the sketch's own top 1 by time.
	top, _ := s.Usage(usage.ByTime, 1)
	if len(top.Tenants) != 1 {
		t.Fatalf("top 1 by time: %+v", top)
	}
	want := top.Tenants[0]
	mfs, err := s.Metrics().Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := 0
	for _, mf := range mfs {
		if strings.HasPrefix(mf.GetName(), "pgtenant_tenant_") {
			series += len(mf.GetMetric())
			if mf.GetName() == "pgtenant_tenant_statements_total" {
				if m := mf.GetMetric()[0]; m.GetLabel()[0].GetValue() != want.Tenant || m.GetCounter().GetValue() != float64(want.Statements) {
					t.Errorf("pgtenant_tenant_statements_total: %v, want tenant %q with %d", m, want.Tenant, want.Statements)
				}
			}
		}
	}
	if series != 5 {
		t.Errorf("%d pgtenant_tenant_* series, want 5 (one tenant)", series)
	}
	off := New(Config{UsageCapacity: -1})
	if _, ok := off.Usage(usage.ByTime, 0); ok {
		t.Error("usage counted with UsageCapacity -1")
	}
}

// TestUsageSampled: with sampling of short transactions
// (Config.UsageSampleBelow: usage.SuggestedSampleBelow), errors and transactions that held a backend
// longer than the threshold are counted exactly, and a sampled one's
// counters are scaled together (each counted transaction of one statement
// adds as many statements as transactions).
func TestUsageSampled(t *testing.T) {
	s := startRouter(t, Config{UsageSampleBelow: usage.SuggestedSampleBelow}, nil)
	ctx := ctx(t)
	c := connect(t, s, "t0", pgx.QueryExecModeSimpleProtocol)
	for i := 0; i < 200; i++ {
		if _, err := c.Exec(ctx, "SELECT 1 FROM whoami"); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 2; i++ {
		if _, err := c.Exec(ctx, "SELECT 1/0 FROM whoami"); pgCode(err) != "22012" {
			t.Fatalf("division by zero: %v", err)
		}
	}
	slow := connect(t, s, "t1", pgx.QueryExecModeSimpleProtocol)
	for i := 0; i < 3; i++ {
		if _, err := slow.Exec(ctx, fmt.Sprintf("SELECT pg_sleep(%g)", 2*usage.SuggestedSampleBelow.Seconds())); err != nil {
			t.Fatal(err)
		}
	}
	snap, ok := s.Usage(usage.ByTransactions, 0)
	if !ok {
		t.Fatal("usage is off")
	}
	got := map[string]usage.Entry{}
	for _, e := range snap.Tenants {
		got[e.Tenant] = e
	}
	t0, t1 := got["t0"], got["t1"]
	if t0.Errors != 2 || t0.Statements != t0.Transactions-2 || t0.Bytes != t0.Statements*(2+4+1) {
		t.Errorf("t0: %+v (want 2 errors, statements = transactions - 2, 7 bytes a statement)", t0)
	}
	if t1.Transactions != 3 || t1.Statements != 3 || t1.Errors != 0 || t1.BackendSeconds < 3*2*usage.SuggestedSampleBelow.Seconds() {
		t.Errorf("t1 (slow, exact): %+v", t1)
	}
	t.Logf("t0: %d transactions counted for 202", t0.Transactions)
}
