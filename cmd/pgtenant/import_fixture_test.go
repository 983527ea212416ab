package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
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
	f := newFixtureCatalog(t, o.Shards, o.Nodes, o.NewNode)
	f.legacy, f.ids = legacyDB(t, o.Tenants)
	for _, r := range demo.LegacyRules {
		mustRun(t, append([]string{"table", "set"}, r...)...)
	}
	initArgs := []string{"--register-tenants"}
	if o.Method != "" {
		initArgs = append(initArgs, "--method", o.Method)
	}
	f.importInit(t, initArgs...)
	return f
}

// newFixtureCatalog starts an importFixture: the test's working directory
// becomes a temporary one, and a catalog (PGTENANT_CATALOG) has shards
// shards on nodes nodes, each node's database made by newNode (nil:
// nodeB.NewDatabase).
func newFixtureCatalog(t *testing.T, shards, nodes int, newNode func(testing.TB) string) *importFixture {
	t.Helper()
	if newNode == nil {
		newNode = nodeB.NewDatabase
	}
	t.Chdir(t.TempDir())
	f := &importFixture{catDSN: nodeA.NewDatabase(t)}
	t.Setenv("PGTENANT_CATALOG", f.catDSN)
	mustRun(t, "init", "--shards", fmt.Sprint(shards))
	for i := range nodes {
		dsn := newNode(t)
		f.nodes = append(f.nodes, dsn)
		mustRun(t, "node", "add", fmt.Sprintf("n%d", i+1), dsn)
	}
	mustRun(t, "shard", "create")
	var err error
	if f.cat, err = pgx.Connect(context.Background(), f.catDSN); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.cat.Close(context.Background()) })
	return f
}

// importInit runs import init of f.legacy with args, then makes the
// shards' schemas (import schema, reference migrate, migrate up); it
// returns import init's output.
func (f *importFixture) importInit(t *testing.T, args ...string) string {
	t.Helper()
	dropSlotsAtEnd(t, append([]string{f.legacy}, f.nodes...)...)
	out := mustRun(t, append([]string{"import", "init", "--from", f.legacy}, args...)...)
	mustRun(t, "import", "schema", "--dir", "db/migrations", "--reference-dir", "db/reference")
	mustRun(t, "reference", "migrate", "--dir", "db/reference")
	mustRun(t, "migrate", "up", "--dir", "db/migrations")
	return out
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

// startImportProc starts `import start args...` from bin and waits until
// it streams.
func startImportProc(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := startProc(t, bin, append([]string{"import", "start"}, args...)...)
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
	f = newFixtureCatalog(t, shards, nodes, nil)
	f.legacy, f.ids = apartmentDB(t, n)
	return f, f.importInit(t, "--schema-per-tenant", "--register-tenants")
}

// importRun is `import start` run in this process until stopped.
type importRun struct {
	cancel  context.CancelFunc
	ended   chan struct{} // closed when import start returned
	result  string        // "exit N" and its output, once ended
	stopped bool
}

// runImportStart runs `import start args...` in this process, waits until
// it streams (or follows the queue), and stops it when the test ends.
func runImportStart(t *testing.T, args ...string) *importRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &importRun{cancel: cancel, ended: make(chan struct{})}
	go func() {
		var out, errOut syncBuffer
		code := run(ctx, append([]string{"import", "start"}, args...), strings.NewReader(""), &out, &errOut)
		r.result = fmt.Sprintf("exit %d\n%s%s", code, out.String(), errOut.String())
		close(r.ended)
	}()
	t.Cleanup(func() {
		if err := r.end(); err != nil {
			t.Error(err)
		}
	})
	done := make(chan string, 1)
	go func() { <-r.ended; done <- r.result }()
	waitStreaming(t, done)
	return r
}

// endedEarly returns import start's exit and output if it has ended.
func (r *importRun) endedEarly() (string, bool) {
	select {
	case <-r.ended:
		return r.result, true
	default:
		return "", false
	}
}

// stop ends import start and fails the test unless it exited 0.
func (r *importRun) stop(t *testing.T) {
	t.Helper()
	if err := r.end(); err != nil {
		t.Fatal(err)
	}
}

func (r *importRun) end() error {
	if r.stopped {
		return nil
	}
	r.stopped = true
	r.cancel()
	<-r.ended
	if !strings.HasPrefix(r.result, "exit 0") {
		return fmt.Errorf("import start: %s", r.result)
	}
	return nil
}

// shardUnion is the UNION ALL of format(tmpl, schema) over the shard
// schemas (shard_NNNN) of the database of conn.
func shardUnion(t *testing.T, conn *pgx.Conn, tmpl string) string {
	t.Helper()
	var q *string
	if err := conn.QueryRow(context.Background(), `SELECT string_agg(format($1, nspname), ' UNION ALL ') FROM pg_namespace WHERE nspname LIKE 'shard\_%'`, tmpl).Scan(&q); err != nil || q == nil {
		t.Fatalf("shard schemas: %v", err)
	}
	return *q
}

// apartmentWrite is one acknowledged write of the schema-per-tenant tests'
// writers: a ledger row (client, seq) and an entry of account 1 noted
// "wCLIENT nSEQ", for tenant.
type apartmentWrite struct {
	tenant      string
	client, seq int
}

// writeApartment makes write w through the router's connection conn, in
// one transaction, in statements that never name the tenant column.
func writeApartment(ctx context.Context, conn *pgx.Conn, w apartmentWrite) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT set_config('pgtenant.tenant', $1, true)`, w.tenant); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO ledger (client, seq) VALUES ($1, $2)`, w.client, w.seq); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO entries (account_id, amount, note) VALUES (1, 1, $1)`, fmt.Sprintf("w%d n%d", w.client, w.seq))
		return err
	})
}

// apartmentWrites counts, per write, the writers' ledger rows and entries
// (those not noted 'seed' for which entriesWhere holds) in the shard
// schemas of the nodes' databases.
func apartmentWrites(t *testing.T, nodes []string, entriesWhere string) (ledger, entries map[apartmentWrite]int) {
	t.Helper()
	ctx := context.Background()
	ledger, entries = map[apartmentWrite]int{}, map[apartmentWrite]int{}
	for _, dsn := range nodes {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		rows, err := conn.Query(ctx, shardUnion(t, conn, `SELECT tenant_id, client, seq FROM %I.ledger`))
		if err != nil {
			t.Fatal(err)
		}
		var k apartmentWrite
		if _, err := pgx.ForEachRow(rows, []any{&k.tenant, &k.client, &k.seq}, func() error { ledger[k]++; return nil }); err != nil {
			t.Fatal(err)
		}
		var note string
		rows, err = conn.Query(ctx, shardUnion(t, conn, `SELECT tenant_id, note FROM %I.entries WHERE note <> 'seed' AND `+entriesWhere))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pgx.ForEachRow(rows, []any{&k.tenant, &note}, func() error {
			if _, err := fmt.Sscanf(note, "w%d n%d", &k.client, &k.seq); err != nil {
				return err
			}
			entries[k]++
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return ledger, entries
}
