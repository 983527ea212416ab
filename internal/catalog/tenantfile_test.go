package catalog

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/placement"
)

func TestAddTenantFile(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 16)
	count := func() int {
		t.Helper()
		var n int
		if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM pgtenant.tenants`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	var b strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&b, "file%d\n", i)
	}
	b.WriteString("O'Reilly Media\r\nlast without newline")
	var stages []string
	res, err := c.AddTenantFile(ctx, strings.NewReader(b.String()), TenantFileOptions{Progress: func(s string, _ int64) { stages = append(stages, s) }})
	if err != nil || res.Read != 1002 || res.Added != 1002 {
		t.Fatalf("AddTenantFile = %+v, %v", res, err)
	}
	if got := strings.Join(stages, ","); got != "copied,insert,commit" {
		t.Errorf("progress stages %s", got)
	}
	for _, id := range []string{"file7", "O'Reilly Media", "last without newline"} {
		loc, err := c.Locate(ctx, id)
		if err != nil || loc.Shard.ID != placement.ShardOf(id, 16) {
			t.Fatalf("Locate(%q) = %+v, %v", id, loc, err)
		}
	}

	// Bad lines, repeated ids and registered ids fail the whole file, named by line.
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"bad", "ok1\n\nok2\n" + strings.Repeat("x", 256) + "\nbad\x00nul\n", []string{"line 2: \"\": tenant id is empty", "line 4:", "is 256 bytes", "line 5:", "NUL"}},
		{"utf8", "ok1\n\xff\xfe\n", []string{"line 2:", "not valid UTF-8"}},
		{"repeated", "a1\nb1\na1\nc1\nb1\n", []string{"line 3: \"a1\": repeats line 1", "line 5: \"b1\": repeats line 2"}},
		{"registered", "new1\nfile3\nnew2\n", []string{"line 2: \"file3\": already registered", "--skip-existing"}},
		// A conflict deep in a large file: the rows inserted before it are undone.
		{"registered late", manyIDs("late", 5000, 4000, "file900"), []string{"line 4001: \"file900\": already registered"}},
		{"repeated late", manyIDs("rep", 5000, 4500, "rep10"), []string{"line 4501: \"rep10\": repeats line 11"}},
	} {
		before := count()
		_, err := c.AddTenantFile(ctx, strings.NewReader(tc.file), TenantFileOptions{})
		var fe *TenantFileError
		if !errors.As(err, &fe) {
			t.Fatalf("%s: err = %v, want a TenantFileError", tc.name, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: error %q lacks %q", tc.name, err, w)
			}
		}
		if after := count(); after != before {
			t.Fatalf("%s: %d tenants added by a failed file", tc.name, after-before)
		}
	}

	// --skip-existing and --shard.
	pin := 9
	res, err = c.AddTenantFile(ctx, strings.NewReader("new1\nfile3\nnew2\n"), TenantFileOptions{SkipExisting: true, Shard: &pin})
	if err != nil || res.Added != 2 || res.Existing != 1 {
		t.Fatalf("skip existing: %+v, %v", res, err)
	}
	if loc, err := c.Locate(ctx, "new2"); err != nil || loc.Shard.ID != pin {
		t.Fatalf("explicit shard: %+v, %v", loc, err)
	}
	if loc, _ := c.Locate(ctx, "file3"); loc.Shard.ID != placement.ShardOf("file3", 16) {
		t.Fatalf("an existing tenant was moved: %+v", loc)
	}
	bad := 16
	if _, err := c.AddTenantFile(ctx, strings.NewReader("x\n"), TenantFileOptions{Shard: &bad}); err == nil || !strings.Contains(err.Error(), "shard 16 is unknown (SQLSTATE 42704)") {
		t.Fatalf("shard 16 of 16: %v", err)
	}
}

// TestTenantShardChecked: a tenant cannot name a shard that does not exist,
// and a shard with tenants cannot be deleted (the statement-level check
// that replaced the foreign key).
func TestTenantShardChecked(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 4)
	if _, err := c.pool.Exec(ctx, `DELETE FROM pgtenant.shards WHERE id = 3`); err != nil {
		t.Fatal(err)
	}
	three := 3
	if _, err := c.AddTenant(ctx, "x", &three); err == nil || !strings.Contains(err.Error(), "shard 3 has not been created yet") {
		t.Fatalf("tenant on a missing shard: %v", err)
	}
	if _, err := c.AddTenantFile(ctx, strings.NewReader("y\n"), TenantFileOptions{Shard: &three}); err == nil || !strings.Contains(err.Error(), "shard 3 does not exist") {
		t.Fatalf("tenant file on a missing shard: %v", err)
	}
	two := 2
	if _, err := c.AddTenant(ctx, "z", &two); err != nil {
		t.Fatal(err)
	}
	if _, err := c.pool.Exec(ctx, `DELETE FROM pgtenant.shards WHERE id = 2`); err == nil || !strings.Contains(err.Error(), "shard 2 still has tenants") {
		t.Fatalf("delete a shard with tenants: %v", err)
	}
}

// manyIDs is a tenant file of n ids PREFIX0... with extra inserted after
// line at.
func manyIDs(prefix string, n, at int, extra string) string {
	var b strings.Builder
	for i := range n {
		if i == at {
			b.WriteString(extra + "\n")
		}
		fmt.Fprintf(&b, "%s%d\n", prefix, i)
	}
	return b.String()
}

// TestAddTenantRecorded: a signup writes the tenant and its operation-log
// row together (one statement), and a refused one writes neither the tenant
// nor a successful entry.
func TestAddTenantRecorded(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 8)
	ops := func(ok bool) []string {
		t.Helper()
		rows, err := c.pool.Query(ctx, `SELECT detail->>'tenant' || ':' || coalesce(detail->>'shard', '-') || ':' || (detail->>'explicit')
			FROM pgtenant.operations WHERE op = 'tenant add' AND ok = $1 ORDER BY id`, ok)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	loc, err := c.AddTenant(ctx, "O'Brien", nil)
	if err != nil {
		t.Fatal(err)
	}
	pin := 3
	if _, err := c.AddTenant(ctx, "pinned", &pin); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddTenant(ctx, "O'Brien", nil); !errors.Is(err, ErrTenantExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := c.pool.Exec(ctx, `DELETE FROM pgtenant.shards WHERE id = 5`); err != nil {
		t.Fatal(err)
	}
	five := 5
	if _, err := c.AddTenant(ctx, "orphan", &five); err == nil || !strings.Contains(err.Error(), "shard 5 has not been created yet") {
		t.Fatalf("tenant on a missing shard: %v", err)
	}
	if got, want := strings.Join(ops(true), ","), fmt.Sprintf("O'Brien:%d:false,pinned:3:true", loc.Shard.ID); got != want {
		t.Errorf("successful entries %s, want %s", got, want)
	}
	if got, want := strings.Join(ops(false), ","), "O'Brien:-:false,orphan:-:true"; got != want {
		t.Errorf("failed entries %s, want %s", got, want)
	}
	var n int
	if err := c.pool.QueryRow(ctx, `SELECT count(*) FROM pgtenant.tenants`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("%d tenants (%v), want 2", n, err)
	}
	if loc.Shard.Node == "" || loc.Node.DSN == "" || loc.Shard.Schema != placement.SchemaName(loc.Shard.ID) || loc.Shard.State != placement.StateActive {
		t.Errorf("location %+v", loc)
	}
}
