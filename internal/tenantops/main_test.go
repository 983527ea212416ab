package tenantops

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/pgtest"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// srvA and srvB are the two servers nodes and catalogs live on.
var srvA, srvB *pgtest.Server

func TestMain(m *testing.M) {
	pgtest.Main(m, []string{"a", "b"}, func(s []*pgtest.Server) { srvA, srvB = s[0], s[1] })
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// appDDL is every shard's schema: two tenant tables (invoices references
// customers, so the registry's name order is not the load order), a child
// table reaching its tenant through invoices, and a shared table.
const appDDL = `
CREATE TABLE %[1]s.customers (id bigserial PRIMARY KEY, tenant_id text NOT NULL, name text, meta jsonb,
  tags text[], photo bytea, created timestamptz NOT NULL DEFAULT now(), score float8, note text);
CREATE INDEX ON %[1]s.customers (tenant_id);
CREATE TABLE %[1]s.invoices (id bigserial PRIMARY KEY, tenant_id text NOT NULL, customer_id bigint NOT NULL REFERENCES %[1]s.customers (id),
  total numeric(12,2), one int GENERATED ALWAYS AS (1) STORED);
CREATE INDEX ON %[1]s.invoices (tenant_id);
CREATE TABLE %[1]s.invoice_lines (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, invoice_id bigint NOT NULL REFERENCES %[1]s.invoices (id),
  qty int, descr text);
CREATE INDEX ON %[1]s.invoice_lines (invoice_id);
CREATE TABLE %[1]s.countries (code text PRIMARY KEY, name text);
`

// cluster is a catalog with 4 shards on two nodes (one per server), the
// app's tables in every shard and their rules registered.
type cluster struct {
	cat   *catalog.Catalog
	ops   *Ops
	nodes map[string]*pgx.Conn
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	ctx := ctxT(t)
	logger := slog.New(slog.NewTextHandler(testWriter{t}, nil))
	c := catalog.New(srvA.NewDatabase(t), logger)
	if err := c.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Init(ctx, 4); err != nil {
		t.Fatal(err)
	}
	cl := &cluster{cat: c, ops: New(c, logger), nodes: map[string]*pgx.Conn{}}
	for name, srv := range map[string]*pgtest.Server{"a": srvA, "b": srvB} {
		dsn := srv.NewDatabase(t)
		if _, err := c.AddNode(ctx, name, dsn); err != nil {
			t.Fatal(err)
		}
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close(context.Background()) })
		cl.nodes[name] = conn
	}
	shards, err := c.CreateShards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range shards {
		if _, err := cl.nodes[s.Node].Exec(ctx, fmt.Sprintf(appDDL, pgx.Identifier{s.Schema}.Sanitize())); err != nil {
			t.Fatal(err)
		}
	}
	reg := tables.New(c.Pool())
	for _, r := range []tables.Table{
		{Name: "customers", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "invoices", Kind: tables.KindTenant, TenantColumn: "tenant_id"},
		{Name: "invoice_lines", Kind: tables.KindChild, Parent: "invoices", ParentKey: "invoice_id", ParentColumn: "id"},
		{Name: "countries", Kind: tables.KindShared},
	} {
		if err := reg.Set(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	return cl
}

// shardConn returns the connection to the node of shard and its schema.
func (cl *cluster) shardConn(t *testing.T, shard int) (*pgx.Conn, string) {
	t.Helper()
	var node, schema string
	if err := cl.cat.Pool().QueryRow(ctxT(t), `SELECT node, schema_name FROM pgtenant.shards WHERE id = $1`, shard).Scan(&node, &schema); err != nil {
		t.Fatal(err)
	}
	return cl.nodes[node], schema
}

// addTenant registers id in shard and writes n customers with an invoice
// of two lines each, with values that are hard to round-trip.
func (cl *cluster) addTenant(t *testing.T, id string, shard, n int) {
	t.Helper()
	ctx := ctxT(t)
	if _, err := cl.cat.AddTenant(ctx, id, &shard); err != nil {
		t.Fatal(err)
	}
	conn, schema := cl.shardConn(t, shard)
	s := pgx.Identifier{schema}.Sanitize()
	for i := 0; i < n; i++ {
		var note *string
		if i%3 != 0 {
			v := []string{"", "tab\there", "line\nbreak\r\n", `back\slash "quoted", comma`, "#pgtenant table invoices", "ünïcødé ☃", `\.`}[i%7]
			note = &v
		}
		var cid, iid int64
		if err := conn.QueryRow(ctx, `INSERT INTO `+s+`.customers (tenant_id, name, meta, tags, photo, score, note)
			VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id`, id, fmt.Sprintf("c%d", i), map[string]any{"k": i, "s": "x\ty"},
			[]string{"a", "b,c", `"q"`, ""}, []byte{0, 1, '\t', '\\', 255}, 0.1*float64(i)+1e-17, note).Scan(&cid); err != nil {
			t.Fatal(err)
		}
		if err := conn.QueryRow(ctx, `INSERT INTO `+s+`.invoices (tenant_id, customer_id, total) VALUES ($1, $2, $3) RETURNING id`,
			id, cid, fmt.Sprintf("%d.%02d", i, i%100)).Scan(&iid); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `INSERT INTO `+s+`.invoice_lines (invoice_id, qty, descr) VALUES ($1, 1, 'one'), ($1, NULL, NULL)`, iid); err != nil {
			t.Fatal(err)
		}
	}
}

// rowsOf returns every row of tenant id in shard, table by table, as text
// (generated columns included), ordered by key.
func (cl *cluster) rowsOf(t *testing.T, id string, shard int) map[string][]string {
	t.Helper()
	ctx := ctxT(t)
	conn, schema := cl.shardConn(t, shard)
	s := pgx.Identifier{schema}.Sanitize()
	out := map[string][]string{}
	for table, q := range map[string]string{
		"customers":     `SELECT c::text FROM ` + s + `.customers c WHERE tenant_id = $1 ORDER BY id`,
		"invoices":      `SELECT i::text FROM ` + s + `.invoices i WHERE tenant_id = $1 ORDER BY id`,
		"invoice_lines": `SELECT l::text FROM ` + s + `.invoice_lines l JOIN ` + s + `.invoices i ON i.id = l.invoice_id WHERE i.tenant_id = $1 ORDER BY l.id`,
	} {
		rows, err := conn.Query(ctx, q, id)
		if err != nil {
			t.Fatal(err)
		}
		out[table], err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func countAll(m map[string][]string) int {
	n := 0
	for _, v := range m {
		n += len(v)
	}
	return n
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	defer func() { recover() }()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
