package importer

import (
	"strings"
	"testing"
)

// TestWithTenantColumn: the template's dump gains the tenant column first
// in tables, keys, unique indexes and foreign keys between tenant tables;
// foreign keys to other schemas and other lines stay as they are.
func TestWithTenantColumn(t *testing.T) {
	dump := `CREATE TABLE accounts (
    id bigint NOT NULL,
    country text
);

CREATE TABLE "Empty" (
);

ALTER TABLE ONLY accounts ALTER COLUMN id SET DEFAULT nextval('"it''s".accounts_id_seq'::regclass);

ALTER TABLE ONLY accounts
    ADD CONSTRAINT accounts_pkey PRIMARY KEY (id);

ALTER TABLE ONLY accounts
    ADD CONSTRAINT "odd name" UNIQUE NULLS NOT DISTINCT (country, id);

CREATE UNIQUE INDEX accounts_lower ON ONLY accounts USING btree (lower(country)) WHERE (id > 0);

CREATE INDEX accounts_country ON accounts USING btree (country);

ALTER TABLE ONLY entries
    ADD CONSTRAINT entries_fk FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE SET NULL;

ALTER TABLE ONLY entries
    ADD CONSTRAINT entries_fk2 FOREIGN KEY (a, b) REFERENCES "Other"(x, y) ON UPDATE CASCADE ON DELETE SET DEFAULT NOT VALID;

ALTER TABLE ONLY accounts
    ADD CONSTRAINT accounts_country_fkey FOREIGN KEY (country) REFERENCES public.countries(code);
`
	got := withTenantColumn(dump, "it's", "tenant_id", "uuid")
	for _, want := range []string{
		"CREATE TABLE accounts (\n    tenant_id uuid DEFAULT current_setting('pgtenant.tenant_id'::text)::uuid NOT NULL,\n    id bigint NOT NULL,",
		"CREATE TABLE \"Empty\" (\n    tenant_id uuid DEFAULT current_setting('pgtenant.tenant_id'::text)::uuid NOT NULL\n);",
		"nextval('accounts_id_seq'::regclass)",
		"ADD CONSTRAINT accounts_pkey PRIMARY KEY (tenant_id, id);",
		`ADD CONSTRAINT "odd name" UNIQUE NULLS NOT DISTINCT (tenant_id, country, id);`,
		"CREATE UNIQUE INDEX accounts_lower ON ONLY accounts USING btree (tenant_id, lower(country)) WHERE (id > 0);",
		"CREATE INDEX accounts_country ON accounts USING btree (country);",
		"FOREIGN KEY (tenant_id, account_id) REFERENCES accounts(tenant_id, id) ON DELETE SET NULL (account_id);",
		`FOREIGN KEY (tenant_id, a, b) REFERENCES "Other"(tenant_id, x, y) ON UPDATE CASCADE ON DELETE SET DEFAULT (a, b) NOT VALID;`,
		"FOREIGN KEY (country) REFERENCES public.countries(code);",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
}
