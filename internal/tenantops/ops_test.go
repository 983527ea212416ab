package tenantops

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func sqlState(err error) string {
	var e interface{ SQLState() string }
	if errors.As(err, &e) {
		return e.SQLState()
	}
	return ""
}

func TestPurge(t *testing.T) {
	ctx := ctxT(t)
	cl := newCluster(t)
	cl.addTenant(t, "acme", 1, 12)
	cl.addTenant(t, "other", 1, 5)
	before := cl.rowsOf(t, "other", 1)

	rep, err := cl.ops.Purge(ctx, "acme", PurgeOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(rep.Tables), "[{invoice_lines 24 0} {invoices 12 0} {customers 12 0}]"; got != want {
		t.Fatalf("dry run = %s, want %s", got, want)
	}
	if n := countAll(cl.rowsOf(t, "acme", 1)); n != 48 {
		t.Fatalf("dry run deleted rows: %d left, want 48", n)
	}
	rep, err = cl.ops.Purge(ctx, "acme", PurgeOptions{Batch: 5})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(rep.Tables), "[{invoice_lines 24 24} {invoices 12 12} {customers 12 12}]"; got != want {
		t.Fatalf("purge = %s, want %s", got, want)
	}
	if n := countAll(cl.rowsOf(t, "acme", 1)); n != 0 {
		t.Fatalf("%d rows of acme left", n)
	}
	if got := cl.rowsOf(t, "other", 1); !reflect.DeepEqual(got, before) {
		t.Fatalf("other tenant's rows changed:\n%v\n%v", before, got)
	}
	// Still registered: purge again finds nothing.
	if rep, err := cl.ops.Purge(ctx, "acme", PurgeOptions{}); err != nil || rep.Total() != 0 {
		t.Fatalf("second purge: %v %v", rep, err)
	}
}

func TestExportImportRoundTrip(t *testing.T) {
	ctx := ctxT(t)
	cl := newCluster(t)
	cl.addTenant(t, "it's a tenant", 2, 15)
	cl.addTenant(t, "neighbour", 2, 4)
	want := cl.rowsOf(t, "it's a tenant", 2)
	neighbour := cl.rowsOf(t, "neighbour", 2)
	for _, f := range []Format{FormatSQL, FormatCSV, FormatJSONL} {
		t.Run(string(f), func(t *testing.T) {
			var buf bytes.Buffer
			rep, err := cl.ops.Export(ctx, "it's a tenant", f, &buf)
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprint(rep.Tables); got != "[{customers 15} {invoices 15} {invoice_lines 30}]" {
				t.Fatalf("export report %s", got)
			}
			file := buf.Bytes()
			// A tenant with rows is refused, nothing loaded.
			if _, err := cl.ops.Import(ctx, bytes.NewReader(file), ImportOptions{}); sqlState(err) != "23505" {
				t.Fatalf("import over existing rows: %v, want 23505", err)
			}
			if _, err := cl.ops.Purge(ctx, "it's a tenant", PurgeOptions{}); err != nil {
				t.Fatal(err)
			}
			irep, err := cl.ops.Import(ctx, bytes.NewReader(file), ImportOptions{})
			if err != nil {
				t.Fatalf("import: %v\n%s", err, head(file))
			}
			if irep.Registered || irep.Shard != 2 {
				t.Fatalf("import report %+v", irep)
			}
			if got := cl.rowsOf(t, "it's a tenant", 2); !reflect.DeepEqual(got, want) {
				t.Fatalf("rows after export, purge, import differ:\nwant %q\ngot  %q", want, got)
			}
			if got := cl.rowsOf(t, "neighbour", 2); !reflect.DeepEqual(got, neighbour) {
				t.Fatal("the neighbour's rows changed")
			}
		})
	}
	t.Run("into another catalog under another id", func(t *testing.T) {
		var buf bytes.Buffer
		if _, err := cl.ops.Export(ctx, "it's a tenant", FormatJSONL, &buf); err != nil {
			t.Fatal(err)
		}
		staging := newCluster(t)
		rep, err := staging.ops.Import(ctx, bytes.NewReader(buf.Bytes()), ImportOptions{Tenant: "restored"})
		if err != nil {
			t.Fatal(err)
		}
		if !rep.Registered {
			t.Fatalf("the tenant was not registered: %+v", rep)
		}
		got := staging.rowsOf(t, "restored", rep.Shard)
		if countAll(got) != countAll(want) {
			t.Fatalf("restored %d rows, want %d", countAll(got), countAll(want))
		}
		// Same rows but the tenant column.
		for table, rows := range want {
			for i, r := range rows {
				if w := strings.ReplaceAll(r, `"it's a tenant"`, "restored"); got[table][i] != w {
					t.Fatalf("%s row %d = %s, want %s", table, i, got[table][i], w)
				}
			}
		}
		// The sequences were set past the loaded keys: a new row gets a new id.
		conn, schema := staging.shardConn(t, rep.Shard)
		var id, max int64
		if err := conn.QueryRow(ctx, `SELECT nextval(pg_get_serial_sequence($1, 'id')), (SELECT max(id) FROM `+pgx.Identifier{schema, "customers"}.Sanitize()+`)`,
			schema+".customers").Scan(&id, &max); err != nil {
			t.Fatal(err)
		}
		if id <= max {
			t.Fatalf("next customer id %d, max loaded %d", id, max)
		}
	})
}

func head(b []byte) string {
	if len(b) > 2000 {
		b = b[:2000]
	}
	return string(b)
}

func TestBadInput(t *testing.T) {
	ctx := ctxT(t)
	cl := newCluster(t)
	cl.addTenant(t, "acme", 0, 3)
	var buf bytes.Buffer
	if _, err := cl.ops.Export(ctx, "acme", FormatSQL, &buf); err != nil {
		t.Fatal(err)
	}
	file := buf.Bytes()
	before := cl.rowsOf(t, "acme", 0)

	if _, err := cl.ops.Purge(ctx, "nobody", PurgeOptions{}); sqlState(err) != "42704" || !strings.Contains(err.Error(), "nobody") {
		t.Errorf("purge of an unknown tenant: %v", err)
	}
	if _, err := cl.ops.Export(ctx, "nobody", FormatCSV, &bytes.Buffer{}); sqlState(err) != "42704" {
		t.Errorf("export of an unknown tenant: %v", err)
	}
	if _, err := cl.ops.Export(ctx, "acme", "xml", &bytes.Buffer{}); sqlState(err) != "22023" {
		t.Errorf("export as xml: %v", err)
	}
	if _, err := cl.ops.Import(ctx, strings.NewReader("hello\n"), ImportOptions{}); sqlState(err) != "22P04" {
		t.Errorf("import of a file that is no export: %v", err)
	}

	// A table without a rule stops every operation, named.
	for shard := 0; shard < 4; shard++ {
		conn, schema := cl.shardConn(t, shard)
		if _, err := conn.Exec(ctx, `CREATE TABLE `+pgx.Identifier{schema, "notes"}.Sanitize()+` (id int PRIMARY KEY, body text)`); err != nil {
			t.Fatal(err)
		}
	}
	_, err := cl.ops.Purge(ctx, "acme", PurgeOptions{})
	if sqlState(err) != "42704" || !strings.Contains(err.Error(), "notes") {
		t.Errorf("purge with an unregistered table: %v", err)
	}
	if _, err := cl.ops.Export(ctx, "acme", FormatSQL, &bytes.Buffer{}); sqlState(err) != "42704" {
		t.Errorf("export with an unregistered table: %v", err)
	}
	if _, err := cl.ops.Import(ctx, bytes.NewReader(file), ImportOptions{Tenant: "newco"}); sqlState(err) != "42704" {
		t.Errorf("import with an unregistered table: %v", err)
	}
	if got := cl.rowsOf(t, "acme", 0); !reflect.DeepEqual(got, before) {
		t.Fatal("rows changed by refused operations")
	}
	if _, err := cl.cat.Locate(ctx, "newco"); err == nil {
		t.Fatal("a refused import registered its tenant")
	}
}
