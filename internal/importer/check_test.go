package importer

import (
	"errors"
	"strings"
	"testing"
)

// TestInitRefusesBadInput: each kind of bad input is a CheckError with its
// SQLSTATE and the ids it found, and nothing changes in the catalog.
func TestInitRefusesBadInput(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 4, 1)

	// wal_level=replica and a role without REPLICATION, on srvR.
	legacyR, _ := newLegacy(t, srvR, c, 3, 2)
	execSQL(t, legacyR, `CREATE ROLE importer LOGIN`)
	execSQL(t, legacyR, `GRANT SELECT ON ALL TABLES IN SCHEMA public TO importer`)
	asImporter := strings.Replace(legacyR, "postgres://postgres@", "postgres://importer@", 1)
	_, err := New(c, nil).Init(ctx, InitOptions{DSN: asImporter, RegisterTenants: true})
	var ce *CheckError
	if !errors.As(err, &ce) || !ce.Has("55000") || !ce.Has("42501") || !strings.Contains(err.Error(), "wal_level=replica") || !strings.Contains(err.Error(), "REPLICATION") {
		t.Fatalf("replica server, role without REPLICATION: %v", err)
	}

	// A NULL tenant id, found with the row's primary key.
	legacy, _ := newLegacy(t, srvA, c, 5, 2)
	execSQL(t, legacy, `ALTER TABLE tariffs DROP CONSTRAINT tariffs_pkey, ALTER COLUMN tenant_id DROP NOT NULL, ADD COLUMN id serial PRIMARY KEY`)
	execSQL(t, legacy, `INSERT INTO tariffs (tenant_id, energy, price, valid_from) VALUES (NULL, 'gas', 1, '2026-01-01')`)
	_, err = New(c, nil).Init(ctx, InitOptions{DSN: legacy, RegisterTenants: true})
	if !errors.As(err, &ce) || ce.SQLState() != "23502" || !strings.Contains(err.Error(), "table tariffs: 1 row(s) with a NULL tenant id in tenant_id, e.g. 21") {
		t.Fatalf("NULL tenant id: %v", err)
	}
	execSQL(t, legacy, `DELETE FROM tariffs WHERE tenant_id IS NULL`)

	// A registry rule naming a column the table lacks.
	execSQL(t, legacy, `ALTER TABLE tariffs RENAME COLUMN tenant_id TO customer`)
	_, err = New(c, nil).Init(ctx, InitOptions{DSN: legacy, RegisterTenants: true})
	if !errors.As(err, &ce) || ce.SQLState() != "42703" || !strings.Contains(err.Error(), "table tariffs has no column tenant_id") {
		t.Fatalf("missing tenant column: %v", err)
	}
	execSQL(t, legacy, `ALTER TABLE tariffs RENAME COLUMN customer TO tenant_id`)

	// An empty tenant id cannot be registered.
	execSQL(t, legacy, `INSERT INTO customers VALUES ('', 'nobody', 'pro')`)
	_, err = New(c, nil).Init(ctx, InitOptions{DSN: legacy, RegisterTenants: true})
	if !errors.As(err, &ce) || ce.SQLState() != "22023" || !strings.Contains(err.Error(), `"" (tenant id is empty)`) {
		t.Fatalf("empty tenant id: %v", err)
	}
	execSQL(t, legacy, `DELETE FROM customers WHERE tenant_id = ''`)

	var nodes, tenants, imports int
	if err := c.Pool().QueryRow(ctx, `SELECT (SELECT count(*) FROM pgtenant.nodes), (SELECT count(*) FROM pgtenant.tenants), (SELECT count(*) FROM pgtenant.imports)`).Scan(&nodes, &tenants, &imports); err != nil {
		t.Fatal(err)
	}
	if nodes != 1 || tenants != 0 || imports != 0 {
		t.Fatalf("after failed checks: %d nodes, %d tenants, %d imports; want 1, 0, 0", nodes, tenants, imports)
	}
	res, err := New(c, nil).Init(ctx, InitOptions{DSN: legacy, RegisterTenants: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Registered != 5 || res.Shards != 4 || len(res.Survey.Tables) != 7 {
		t.Fatalf("init: %d registered, %d shards, %d tables", res.Registered, res.Shards, len(res.Survey.Tables))
	}
}
