package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/demo"
)

// importFixture is a catalog with shards on nodes of nodeB, a legacy
// database shaped like the demo's energy app with its rules registered,
// import init and the shards' schemas done: what `import start` needs.
type importFixture struct {
	catDSN, legacy string
	nodes          []string // the nodes' DSNs, n1, n2, ...
	ids            []string // the tenants
	cat            *pgx.Conn
}

// newImportFixture makes an importFixture with shards shards on nodes
// nodes and n tenants, by the logical method; the test's working directory
// becomes a temporary one (the migrations are written there).
func newImportFixture(t *testing.T, shards, nodes, n int) *importFixture {
	t.Helper()
	return newImportFixtureWith(t, fixtureOptions{Shards: shards, Nodes: nodes, Tenants: n})
}

// fixtureOptions shape an importFixture.
type fixtureOptions struct {
	Shards, Nodes, Tenants int
	// Method is import init's --method; "" keeps its default (logical).
	Method string
	// NewNode makes a node's database; nil: nodeB.NewDatabase.
	NewNode func(testing.TB) string
}

// newImportFixtureWith is newImportFixture with options.
func newImportFixtureWith(t *testing.T, o fixtureOptions) *importFixture {
	t.Helper()
	if o.NewNode == nil {
		o.NewNode = nodeB.NewDatabase
	}
	t.Chdir(t.TempDir())
	f := &importFixture{catDSN: nodeA.NewDatabase(t)}
	t.Setenv("PGTENANT_CATALOG", f.catDSN)
	mustRun(t, "init", "--shards", fmt.Sprint(o.Shards))
	for i := range o.Nodes {
		dsn := o.NewNode(t)
		f.nodes = append(f.nodes, dsn)
		mustRun(t, "node", "add", fmt.Sprintf("n%d", i+1), dsn)
	}
	mustRun(t, "shard", "create")
	f.legacy, f.ids = legacyDB(t, o.Tenants)
	dropSlotsAtEnd(t, append([]string{f.legacy}, f.nodes...)...)
	for _, r := range demo.LegacyRules {
		mustRun(t, append([]string{"table", "set"}, r...)...)
	}
	initArgs := []string{"import", "init", "--from", f.legacy, "--register-tenants"}
	if o.Method != "" {
		initArgs = append(initArgs, "--method", o.Method)
	}
	mustRun(t, initArgs...)
	mustRun(t, "import", "schema", "--dir", "db/migrations", "--reference-dir", "db/reference")
	mustRun(t, "reference", "migrate", "--dir", "db/reference")
	mustRun(t, "migrate", "up", "--dir", "db/migrations")
	var err error
	if f.cat, err = pgx.Connect(context.Background(), f.catDSN); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.cat.Close(context.Background()) })
	return f
}

// shardOf returns the shard schema and the node DSN of tenant.
func (f *importFixture) shardOf(t *testing.T, tenant string) (schema, dsn string) {
	t.Helper()
	if err := f.cat.QueryRow(context.Background(), `SELECT s.schema_name, n.dsn FROM pgtenant.tenants t
		JOIN pgtenant.shards s ON s.id = t.shard JOIN pgtenant.nodes n ON n.name = s.node WHERE t.id = $1`, tenant).Scan(&schema, &dsn); err != nil {
		t.Fatal(err)
	}
	return schema, dsn
}

// buildBinary builds pgtenant into a temporary directory.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pgtenant")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// startImportProc starts `import start` from bin and waits until it streams.
func startImportProc(t *testing.T, bin string) *proc {
	t.Helper()
	p := startProc(t, bin, "import", "start")
	done := make(chan string, 1)
	go func() {
		select {
		case err := <-p.exited:
			p.exited <- err
			done <- fmt.Sprintf("%v\n%s%s", err, p.out.String(), p.errOut.String())
		case <-time.After(10 * time.Minute):
		}
	}()
	waitStreaming(t, done)
	return p
}

// queryInt runs a query that returns one integer on dsn.
func queryInt(t *testing.T, dsn, sql string, args ...any) int {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// waitInt waits until queryInt returns want.
func waitInt(t *testing.T, want int, dsn, sql string, args ...any) {
	t.Helper()
	for i := 0; ; i++ {
		got := queryInt(t, dsn, sql, args...)
		if got == want {
			return
		}
		if i > 600 {
			t.Fatalf("%s: %d, want %d", sql, got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// execSQL runs sql on dsn.
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

// newApartmentFixture is an importFixture whose legacy database has a
// schema per tenant (apartmentDB, n schemas): import init
// --schema-per-tenant --register-tenants (its output in initOut), the
// baseline, the reference tables and the shards' schemas done.
func newApartmentFixture(t *testing.T, shards, nodes, n int) (f *importFixture, initOut string) {
	t.Helper()
	t.Chdir(t.TempDir())
	f = &importFixture{catDSN: nodeA.NewDatabase(t)}
	t.Setenv("PGTENANT_CATALOG", f.catDSN)
	mustRun(t, "init", "--shards", fmt.Sprint(shards))
	for i := range nodes {
		dsn := nodeB.NewDatabase(t)
		f.nodes = append(f.nodes, dsn)
		mustRun(t, "node", "add", fmt.Sprintf("n%d", i+1), dsn)
	}
	mustRun(t, "shard", "create")
	f.legacy, f.ids = apartmentDB(t, n)
	dropSlotsAtEnd(t, append([]string{f.legacy}, f.nodes...)...)
	initOut = mustRun(t, "import", "init", "--from", f.legacy, "--schema-per-tenant", "--register-tenants")
	mustRun(t, "import", "schema", "--dir", "db/migrations", "--reference-dir", "db/reference")
	mustRun(t, "reference", "migrate", "--dir", "db/reference")
	mustRun(t, "migrate", "up", "--dir", "db/migrations")
	var err error
	if f.cat, err = pgx.Connect(context.Background(), f.catDSN); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.cat.Close(context.Background()) })
	return f, initOut
}
