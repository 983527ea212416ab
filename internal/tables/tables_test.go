package tables

import (
	"strings"
	"testing"
)

func TestParseAnnotations(t *testing.T) {
	sql := `-- +goose Up
-- pgtenant: tenant_column=customer_id
CREATE TABLE IF NOT EXISTS "invoices" (id int, customer_id text);
--pgtenant: shared
create unlogged table countries (code text);
-- pgtenant: parent=invoices via=invoice_id references=id
CREATE TABLE lines (invoice_id int);
-- pgtenant: table=legacy tenant_column=org
`
	got, err := ParseAnnotations("00001.sql", sql)
	if err != nil {
		t.Fatal(err)
	}
	want := []Table{
		{Name: "invoices", Kind: KindTenant, TenantColumn: "customer_id", Source: "00001.sql"},
		{Name: "countries", Kind: KindShared, Source: "00001.sql"},
		{Name: "lines", Kind: KindChild, Parent: "invoices", ParentKey: "invoice_id", ParentColumn: "id", Source: "00001.sql"},
		{Name: "legacy", Kind: KindTenant, TenantColumn: "org", Source: "00001.sql"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d rules %+v, want %d", len(got), got, len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("rule %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	for _, bad := range []struct{ sql, msg string }{
		{"-- pgtenant: tenant_colum=x\nCREATE TABLE t (x int);", "unknown key"},
		{"-- pgtenant: tenant_column=x", "no CREATE TABLE"},
		{"-- pgtenant: tenant_column=a;b\nCREATE TABLE t (x int);", "plain identifier"},
		{"-- pgtenant: parent=p\nCREATE TABLE t (x int);", "plain identifier"},
	} {
		if _, err := ParseAnnotations("f.sql", bad.sql); err == nil || !strings.Contains(err.Error(), bad.msg) {
			t.Errorf("%q: %v, want an error with %q", bad.sql, err, bad.msg)
		}
	}
}
