package importer

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// newApartment makes a legacy database with n tenant schemas (accounts,
// entries referencing them, a countries reference table in public) on srvA.
func newApartment(t *testing.T, n int) (string, []string) {
	t.Helper()
	dsn := srvA.NewDatabase(t)
	execSQL(t, dsn, `CREATE TABLE public.countries (code text PRIMARY KEY); INSERT INTO public.countries VALUES ('CZ'), ('IE')`)
	var ids []string
	for i := 0; i < n; i++ {
		id := fmt.Sprintf("t%02d", i)
		s := pgx.Identifier{id}.Sanitize()
		execSQL(t, dsn, `CREATE SCHEMA `+s+`;
			CREATE TABLE `+s+`.accounts (id bigserial PRIMARY KEY, name text NOT NULL, country text REFERENCES public.countries);
			CREATE TABLE `+s+`.entries (id bigserial PRIMARY KEY, account_id bigint NOT NULL REFERENCES `+s+`.accounts ON DELETE CASCADE, amount int NOT NULL);
			INSERT INTO `+s+`.accounts (name, country) SELECT 'a' || g, 'CZ' FROM generate_series(1, 30) g;
			INSERT INTO `+s+`.entries (account_id, amount) SELECT a.id, g FROM `+s+`.accounts a, generate_series(1, 20) g`)
		ids = append(ids, id)
	}
	return dsn, ids
}

// TestApartmentStartResumesAndFollows: a schema-per-tenant import killed
// while copying entries (the second level) resumes: the accounts complete
// on the nodes are brought to the new snapshot by the stream (changes
// routed by their schema, with the tenant column added), entries are copied
// again, and inserts, updates and deletes on the legacy tenant schemas
// between the runs and after (followed) reach each tenant's rows on its
// shard once: verify finds every tenant equal.
func TestApartmentStartResumesAndFollows(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := newCatalog(t, 8, 2)
	legacy, ids := newApartment(t, 12)
	im := New(c, nil)
	res0, err := im.Init(ctx, InitOptions{DSN: legacy, RegisterTenants: true, SchemaPerTenant: &SchemaPerTenantOptions{}})
	if err != nil {
		t.Fatal(err)
	}
	if res0.TenantSchemas != 12 || res0.Schema != "t00" || res0.Registered != 12 {
		t.Fatalf("init: %+v", res0)
	}
	m, err := c.LoadMap(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if loc, err := m.Locate(ids[7]); err != nil || loc.Node.Name != "legacy" || loc.Shard.Schema != ids[7] {
		t.Fatalf("tenant %s is served from %s.%s (%v)", ids[7], loc.Node.Name, loc.Shard.Schema, err)
	}
	applyBaseline(t, c, im)
	t.Cleanup(func() { dropSlots(t, legacy) })

	runCtx, kill := context.WithCancel(ctx)
	var entryUnits atomic.Int32
	res, err := im.Start(runCtx, StartOptions{Parallel: 1, UnitBytes: 8192, BeforeUnit: func(ctx context.Context, table string, unit int) error {
		if table == "entries" && entryUnits.Add(1) == 4 {
			kill()
			return ctx.Err()
		}
		return nil
	}})
	if !errors.Is(err, context.Canceled) || res.Tables != 1 {
		t.Fatalf("killed start: %d tables complete, %v", res.Tables, err)
	}
	for i, id := range ids {
		s := pgx.Identifier{id}.Sanitize()
		execSQL(t, legacy, `WITH a AS (INSERT INTO `+s+`.accounts (name, country) VALUES ('between', 'IE') RETURNING id)
			INSERT INTO `+s+`.entries (account_id, amount) SELECT id, 7 FROM a`)
		execSQL(t, legacy, `UPDATE `+s+`.accounts SET name = 'renamed' WHERE id = 2`)
		if i%3 == 0 {
			execSQL(t, legacy, `DELETE FROM `+s+`.accounts WHERE id = 3`)
		}
	}
	res2, err := im.Start(ctx, StartOptions{Parallel: 2, UnitBytes: 8192})
	if err != nil {
		t.Fatal(err)
	}
	if !res2.Resumed || res2.TablesKept != 1 || res2.Tables != 1 || res2.CaughtUp == 0 || res2.Copied != 8 {
		t.Fatalf("resume: %+v", res2)
	}
	rep, err := im.Verify(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Shards != 8 || rep.Tenants != 12 || rep.Tables != 2 || !rep.OK() {
		t.Fatalf("verify after the resumed copy: %+v", rep)
	}

	stop := follow(ctx, t, im)
	for i, id := range ids {
		s := pgx.Identifier{id}.Sanitize()
		execSQL(t, legacy, `INSERT INTO `+s+`.entries (account_id, amount) VALUES (1, 99)`)
		execSQL(t, legacy, `UPDATE `+s+`.entries SET amount = amount + 1 WHERE account_id = 4`)
		if i%2 == 0 {
			execSQL(t, legacy, `DELETE FROM `+s+`.accounts WHERE id = 5`) // its entries go by cascade
		}
	}
	for i := 0; ; i++ {
		st, err := im.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == StateStreaming {
			rep, err := im.Verify(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if rep.OK() && rep.Consistent {
				break
			}
			if i > 100 {
				t.Fatalf("verify while following: %v", rep.Mismatches)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	// A tenant's rows on its shard carry it in the tenant column: every
	// account of a shard is of one of its tenants, and all are there.
	shards, err := im.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byShard, err := im.tenantsByShard(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var onShards, stray int
	for _, s := range shards {
		conn, err := pgx.Connect(ctx, s.NodeDSN)
		if err != nil {
			t.Fatal(err)
		}
		var n, bad int
		err = conn.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE NOT tenant_id = ANY ($1)) FROM `+pgx.Identifier{s.Schema, "accounts"}.Sanitize(), byShard[s.Shard]).Scan(&n, &bad)
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		onShards, stray = onShards+n, stray+bad
	}
	lc, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close(ctx)
	var inLegacy int
	q := ""
	for i, id := range ids {
		if i > 0 {
			q += " + "
		}
		q += "(SELECT count(*) FROM " + pgx.Identifier{id, "accounts"}.Sanitize() + ")"
	}
	if err := lc.QueryRow(ctx, "SELECT ("+q+")::int").Scan(&inLegacy); err != nil {
		t.Fatal(err)
	}
	if onShards != inLegacy || stray != 0 || inLegacy != 12*31-4-6 {
		t.Fatalf("accounts: %d on the shards (%d of another shard's tenant), %d in the legacy schemas", onShards, stray, inLegacy)
	}
	stop()
}
