package importer

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// srvA holds catalogs, legacy databases and nodes (wal_level=logical);
// srvR is a server with wal_level=replica.
var srvA, srvR *pgtest.Server

func TestMain(m *testing.M) {
	pgtest.MainWith(m, []pgtest.Spec{{Name: "a"}, {Name: "r", Settings: map[string]string{"wal_level": "replica", "max_wal_senders": "2"}}},
		func(s []*pgtest.Server) { srvA, srvR = s[0], s[1] })
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newCatalog returns an open catalog with shards on nodes databases of srvA.
func newCatalog(t *testing.T, shards, nodes int) *catalog.Catalog {
	t.Helper()
	ctx := ctxT(t)
	c := catalog.New(srvA.NewDatabase(t), nil)
	if err := c.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Init(ctx, shards); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < nodes; i++ {
		if _, err := c.AddNode(ctx, "n"+string(rune('1'+i)), srvA.NewDatabase(t)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CreateShards(ctx); err != nil {
		t.Fatal(err)
	}
	return c
}

// newLegacy makes a database on srv shaped like the demo's energy app with
// n tenants (hours of readings each) and registers the rules of its tables
// in c.
func newLegacy(t *testing.T, srv *pgtest.Server, c *catalog.Catalog, n, hours int) (string, []string) {
	t.Helper()
	ctx := ctxT(t)
	dsn := srv.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	ddl, err := demo.LegacySchema()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, ddl); err != nil {
		t.Fatal(err)
	}
	ids := demo.TenantIDs(n)
	if err := demo.SeedLegacy(ctx, conn, "public", ids, hours); err != nil {
		t.Fatal(err)
	}
	reg := tables.New(c.Pool())
	for _, r := range []tables.Table{
		{Name: "customers", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "buildings", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "meters", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "readings", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "tariffs", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "meter_notes", Kind: tables.KindChild, Parent: "meters", ParentKey: "meter_id", ParentColumn: "id"},
		{Name: "energy_units", Kind: tables.KindShared},
	} {
		if err := reg.Set(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	return dsn, ids
}

func execSQL(t *testing.T, dsn, sql string, args ...any) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// dropSlots drops the replication slots of the database of dsn, so that
// the database can be dropped when the test ends. A stream the test just
// stopped may still hold its slot for a moment (its walsender exits after
// the client closed), so a slot in use is waited for (55006), not failed on.
func dropSlots(t *testing.T, dsn string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for {
		_, err := conn.Exec(ctx, `SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = current_database()`)
		var pgErr *pgconn.PgError
		if err == nil {
			return
		}
		if !errors.As(err, &pgErr) || pgErr.Code != "55006" || ctx.Err() != nil {
			t.Fatalf("drop the replication slots: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
