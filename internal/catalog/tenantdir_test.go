package catalog

import (
	"testing"

	"github.com/jackc/pgx/v5"
)

// A tenant lookup on a catalog connection that the server ended while it was
// idle in the pool (pg_terminate_backend of the idle sessions, as
// node-postgres's pool tests run against the server that, in a dev cluster,
// also holds the catalog) is asked again on a fresh connection: it is a
// read. Before, the router answered the client 08006 ("the catalog did not
// answer") for a registered tenant.
func TestTenantLookupAfterIdleConnectionsKilled(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 4)
	if _, err := c.AddTenant(ctx, "acme", nil); err != nil {
		t.Fatal(err)
	}
	want, err := c.tenants().TenantShard(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, c.dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var n int
	if err := admin.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE datname = current_database() AND state = 'idle' AND pid <> pg_backend_pid()`).Scan(&n); err != nil || n == 0 {
		t.Fatalf("terminate the catalog pool's idle connections: %d, %v", n, err)
	}
	got, err := c.tenants().query(ctx, "acme")
	if err != nil || got != want {
		t.Fatalf("lookup after the idle connections were killed: %d, %v; want %d", got, err, want)
	}
}
