package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// apartmentSchemaDDL is one tenant schema of a Rails-apartment-style
// legacy database: ids from each schema's own sequences, a child table
// (entries → accounts) and a foreign key to a reference table in public.
const apartmentSchemaDDL = `
CREATE TABLE accounts (id bigserial PRIMARY KEY, name text NOT NULL, email text UNIQUE, country text REFERENCES public.countries (code));
CREATE TABLE entries (id bigserial PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts (id) ON DELETE CASCADE, amount numeric(12,2) NOT NULL, note text);
CREATE TABLE ledger (id bigserial PRIMARY KEY, client int NOT NULL, seq int NOT NULL, UNIQUE (client, seq));
`

// apartmentDB makes a legacy database with a schema per tenant (n schemas,
// each with accounts and entries) and a reference table in public, and
// returns its DSN and tenant ids (the schemas' names, one with a quote and
// a space).
func apartmentDB(t *testing.T, n int) (string, []string) {
	t.Helper()
	ids := []string{"O'Hara & Sons"}
	for i := 1; len(ids) < n; i++ {
		ids = append(ids, fmt.Sprintf("tenant_%03d", i))
	}
	return tenantSchemasDB(t, ids, func(i int) int { return 10 + i%7 }, 3), ids
}

// tenantSchemasDB makes a legacy database with a schema per tenant of ids
// (apartmentSchemaDDL; accounts(i) accounts in the i-th, each with
// entries entries noted 'seed') and a reference table in public, 50
// schemas per statement, and returns its DSN.
func tenantSchemasDB(t *testing.T, ids []string, accounts func(i int) int, entries int) string {
	t.Helper()
	ctx := context.Background()
	dsn := nodeA.NewDatabase(t)
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `CREATE TABLE public.countries (code text PRIMARY KEY, name text NOT NULL);
		INSERT INTO public.countries VALUES ('CZ', 'Czechia'), ('DE', 'Germany'), ('IE', 'Ireland')`); err != nil {
		t.Fatal(err)
	}
	const batch = 50
	for start := 0; start < len(ids); start += batch {
		var b strings.Builder
		for i := start; i < min(start+batch, len(ids)); i++ {
			fmt.Fprintf(&b, `CREATE SCHEMA %[1]s; SET search_path = %[1]s; %[2]s RESET search_path;
				INSERT INTO %[1]s.accounts (name, email, country) SELECT 'acct ' || g, 'a' || g || '@x', (ARRAY['CZ','DE','IE'])[1 + g %% 3] FROM generate_series(1, %[3]d) g;
				INSERT INTO %[1]s.entries (account_id, amount, note) SELECT a.id, g * 1.5, 'seed' FROM %[1]s.accounts a, generate_series(1, %[4]d) g;
				`, pgx.Identifier{ids[i]}.Sanitize(), apartmentSchemaDDL, accounts(i), entries)
		}
		if _, err := conn.Exec(ctx, b.String()); err != nil {
			t.Fatal(err)
		}
	}
	return dsn
}

// TestImportSchemaPerTenant (issue 12, second source shape): a legacy
// database with a schema per tenant (60 schemas, a child table, a reference
// table in public) moves onto two nodes while clients write through the
// router the whole time, in statements that never name the tenant column:
// init (the router serves each tenant from its schema), schema (the
// template's tables with the tenant column first in their keys), start,
// verify, cutover of every shard in waves, finish. Every acknowledged write
// is on its tenant's shard exactly once with its tenant, and no client saw
// an error.
func TestImportSchemaPerTenant(t *testing.T) {
	f, out := newApartmentFixture(t, 8, 2, 60)
	legacy, ids, n1, n2 := f.legacy, f.ids, f.nodes[0], f.nodes[1]
	if !strings.Contains(out, "60 tenant schemas with the same 3 tables") || !strings.Contains(out, "60 tenants registered") {
		t.Fatalf("import init: %s", out)
	}
	base, err := os.ReadFile("db/migrations/00001_legacy_baseline.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tenant_id text DEFAULT current_setting('pgtenant.tenant_id'::text) NOT NULL,", "PRIMARY KEY (tenant_id, id)", "UNIQUE (tenant_id, email)",
		"UNIQUE (tenant_id, client, seq)", "FOREIGN KEY (tenant_id, account_id) REFERENCES accounts(tenant_id, id) ON DELETE CASCADE",
		"REFERENCES public.countries(code)", "nextval('accounts_id_seq'::regclass)"} {
		if !strings.Contains(string(base), want) {
			t.Errorf("the baseline lacks %q:\n%s", want, base)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	addr := startRouterCmd(t)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	routerConn := func() *pgx.Conn {
		conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	// Before any cutover, a tenant is served from its own schema, and
	// sees the reference table of public.
	rc := routerConn()
	for _, id := range []string{ids[0], ids[33]} {
		var schema string
		var n int
		if _, err := rc.Exec(ctx, `SELECT set_config('pgtenant.tenant', $1, false)`, id); err != nil {
			t.Fatal(err)
		}
		if err := rc.QueryRow(ctx, `SELECT current_schema(), count(*) FROM accounts a JOIN countries c ON c.code = a.country`).Scan(&schema, &n); err != nil {
			t.Fatalf("tenant %q: %v", id, err)
		}
		if schema != id || n < 10 {
			t.Fatalf("tenant %q served from schema %q with %d accounts", id, schema, n)
		}
	}
	rc.Close(ctx)

	// Writers through the router: a ledger row and an entry of account 1
	// (every schema has one), without the tenant column.
	wctx, stopWriters := context.WithCancel(ctx)
	var paused sync.RWMutex
	const writers = 4
	acks := make([][]apartmentWrite, writers)
	errs := make([][]error, writers)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
			if err != nil {
				errs[w] = append(errs[w], err)
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; wctx.Err() == nil; i++ {
				paused.RLock()
				tenant := ids[rng.IntN(len(ids))]
				err := writeApartment(ctx, conn, apartmentWrite{tenant, w, i})
				paused.RUnlock()
				if err != nil {
					errs[w] = append(errs[w], fmt.Errorf("write %d for %q: %w", i, tenant, err))
					continue
				}
				acks[w] = append(acks[w], apartmentWrite{tenant, w, i})
			}
		}()
	}

	importStart := runImportStart(t, "--parallel", "3")

	// Verify while the writers write (both sides at one point).
	for i := 0; ; i++ {
		code, out, errOut := pgtenant(t, "import", "verify")
		if code == 0 {
			if !strings.Contains(out, "8 shards, 60 tenants, 3 tables") {
				t.Fatalf("import verify: %s", out)
			}
			t.Log(strings.TrimSpace(out))
			break
		}
		if i == 3 {
			t.Fatalf("import verify: exit %d\n%s%s", code, out, errOut)
		}
	}
	// A row changed on a shard behind the stream's back is found, without
	// the tenant column in the comparison making every row differ.
	tamper := func(note string) {
		n := 0
		for _, dsn := range []string{n1, n2} {
			conn, err := pgx.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			var shards []string
			rows, _ := conn.Query(ctx, `SELECT nspname FROM pg_namespace WHERE nspname LIKE 'shard\_%'`)
			if shards, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
				t.Fatal(err)
			}
			for _, sc := range shards {
				tag, err := conn.Exec(ctx, `UPDATE `+pgx.Identifier{sc, "entries"}.Sanitize()+` SET note = $2 WHERE tenant_id = $1 AND id = 1`, ids[5], note)
				if err != nil {
					t.Fatal(err)
				}
				n += int(tag.RowsAffected())
			}
			conn.Close(ctx)
		}
		if n != 1 {
			t.Fatalf("tampered with %d rows, want 1", n)
		}
	}
	tamper("tampered")
	if code, out, errOut := pgtenant(t, "import", "verify"); code != 1 || !strings.Contains(out, fmt.Sprintf("tenant %q table entries: legacy", ids[5])) || !strings.Contains(out, "; 1 difference\n") {
		t.Fatalf("import verify of a tampered shard: exit %d\n%s%s", code, out, errOut)
	}
	tamper("seed")

	// Without the operator's word that the app filters by the tenant
	// column, no shard is cut over (its tables would show every tenant's rows).
	if code, out, errOut := pgtenant(t, "import", "cutover", "--shard", "3"); code != 1 || !strings.Contains(errOut, "55000") || !strings.Contains(errOut, "--tenant-filtered") {
		t.Fatalf("import cutover of a schema-per-tenant import without --tenant-filtered: exit %d\n%s%s", code, out, errOut)
	}
	var pauses []string
	for i, wave := range [][]string{{"--shard", "3"}, {"--shard", "0", "--shard", "1", "--parallel", "2"}, {"--all", "--parallel", "3"}} {
		out := mustRun(t, append([]string{"import", "cutover", "--tenant-filtered"}, wave...)...)
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if !strings.Contains(line, "cut over to node") {
				t.Fatalf("cutover %v: %s", wave, out)
			}
			pauses = append(pauses, line[strings.Index(line, "pause ")+6:strings.Index(line, " (")])
		}
		time.Sleep(300 * time.Millisecond)
		if i == 0 {
			// The canary goes back: the writes it took on its node are
			// written into its tenants' schemas, without the tenant column,
			// and match the node's rows; the last wave cuts it over again.
			out := mustRun(t, "import", "rollback", "--shard", "3")
			if !strings.Contains(out, "shard 3: back on the legacy database") {
				t.Fatalf("import rollback: %s", out)
			}
			t.Log(strings.TrimSpace(out))
			if out := mustRun(t, "import", "verify", "--shard", "3"); !strings.Contains(out, "1 shard,") || !strings.Contains(out, "; 0 differences") {
				t.Fatalf("import verify after the rollback: %s", out)
			}
		}
	}
	if len(pauses) != 9 {
		t.Fatalf("%d cutovers, want 9 (shard 3 twice)", len(pauses))
	}
	// After the cutover a tenant writes on its shard: new ids come from the
	// shard's sequence, past every tenant's legacy ids.
	time.Sleep(300 * time.Millisecond)
	stopWriters()
	wg.Wait()
	importStart.stop(t)
	mustRun(t, "import", "finish")

	total := 0
	for w := 0; w < writers; w++ {
		for _, e := range errs[w] {
			t.Errorf("writer %d: %v", w, e)
		}
		total += len(acks[w])
	}
	if total < 50 {
		t.Fatalf("only %d writes were acknowledged", total)
	}
	got, entries := apartmentWrites(t, []string{n1, n2}, "account_id = 1")
	var shardAccounts, legacyAccounts int
	for _, dsn := range []string{n1, n2} {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := conn.QueryRow(ctx, "SELECT sum(c)::int FROM ("+shardUnion(t, conn, `SELECT count(*) c FROM %I.accounts`)+") x").Scan(&n); err != nil {
			t.Fatal(err)
		}
		shardAccounts += n
		conn.Close(ctx)
	}
	for w := 0; w < writers; w++ {
		for _, a := range acks[w] {
			if got[a] != 1 || entries[a] != 1 {
				t.Errorf("acknowledged write %d of client %d for %q: %d ledger rows, %d entries on the shards", a.seq, a.client, a.tenant, got[a], entries[a])
			}
		}
	}
	lc, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close(ctx)
	if err := lc.QueryRow(ctx, `SELECT (SELECT count(*) FROM information_schema.tables WHERE table_name = 'accounts' AND table_schema <> 'public')::int`).Scan(&legacyAccounts); err != nil {
		t.Fatal(err)
	}
	if legacyAccounts != 60 || shardAccounts < 600 {
		t.Fatalf("%d accounts on the shards from %d legacy schemas", shardAccounts, legacyAccounts)
	}
	t.Logf("%d acknowledged writes by %d clients through the router; cutover pauses %s", total, writers, strings.Join(pauses, " "))
}

// TestImportSchemaPerTenantBadInput (issue 12): tenant schemas that differ
// from the template, a schema whose name is not a valid tenant id and a
// tenant map naming an empty tenant each stop import init with their
// SQLSTATE before anything changes.
func TestImportSchemaPerTenantBadInput(t *testing.T) {
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", "4")
	mustRun(t, "node", "add", "n1", nodeB.NewDatabase(t))
	mustRun(t, "shard", "create")
	ctx := context.Background()
	catalogState := func() string {
		return mustRun(t, "node", "list") + mustRun(t, "tenant", "list") + mustRun(t, "table", "list") + mustRun(t, "shard", "list")
	}
	catBefore := catalogState()

	// Schemas that differ from the template.
	legacy, _ := apartmentDB(t, 5)
	conn, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `DROP TABLE tenant_002.ledger; ALTER TABLE tenant_003.entries ALTER COLUMN note TYPE varchar(20)`); err != nil {
		t.Fatal(err)
	}
	before := legacyState(t, legacy)
	code, out, errOut := pgtenant(t, "import", "init", "--from", legacy, "--schema-per-tenant", "--register-tenants", "--template-schema", "tenant_001")
	for _, want := range []string{"1 tenant schema(s) do not have the tables of the template schema \"tenant_001\": \"tenant_002\" lacks ledger", "(SQLSTATE 42P01)\n",
		"1 tenant schema(s) have columns that differ from the template schema \"tenant_001\": \"tenant_003\" entries (", "(SQLSTATE 42804)\n", "note character varying(20)", "note text"} {
		if code != 1 || !strings.Contains(errOut, want) {
			t.Fatalf("import init with schemas that differ: exit %d, want %q in\n%s%s", code, want, out, errOut)
		}
	}
	// Left out by a tenant map (which also names their tenants), they are
	// no problem (the check only).
	if err := os.WriteFile("good.csv", []byte("tenant_001,acme\ntenant_004,globex\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := mustRun(t, "import", "init", "--from", legacy, "--schema-per-tenant", "--tenant-map", "good.csv", "--register-tenants", "--check"); !strings.Contains(out, "2 tenant schemas with the same 3 tables") {
		t.Fatalf("import init --check with a tenant map: %s", out)
	}

	// A tenant map naming an empty tenant for a schema.
	if err := os.WriteFile("map.csv", []byte("# schema,tenant\ntenant_001,acme\ntenant_004,\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = pgtenant(t, "import", "init", "--from", legacy, "--schema-per-tenant", "--tenant-map", "map.csv", "--register-tenants")
	if code != 1 || !strings.Contains(errOut, `1 tenant schema(s) whose tenant id pgtenant cannot register: schema "tenant_004": "" (tenant id is empty) (SQLSTATE 22023)`) {
		t.Fatalf("import init with an empty tenant in the map: exit %d\n%s%s", code, out, errOut)
	}

	// A schema name that is not valid UTF-8 (an SQL_ASCII database keeps
	// its bytes as they are): not a tenant id.
	name := fmt.Sprintf("t_apartment_ascii_%d", time.Now().UnixNano()%1e9)
	admin, err := pgx.Connect(ctx, nodeA.Cluster.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, `CREATE DATABASE `+name+` ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = admin.Exec(context.Background(), `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`) })
	ascii := nodeA.Cluster.DSN(name)
	ac, err := pgx.Connect(ctx, ascii)
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close(ctx)
	if _, err := ac.Exec(ctx, `DO $$ BEGIN
		EXECUTE 'CREATE SCHEMA good; CREATE SCHEMA ' || quote_ident(convert_from('\x6261645fff'::bytea, 'SQL_ASCII'));
		EXECUTE 'CREATE TABLE good.ledger (id bigserial PRIMARY KEY, note text)';
		EXECUTE 'CREATE TABLE ' || quote_ident(convert_from('\x6261645fff'::bytea, 'SQL_ASCII')) || '.ledger (id bigserial PRIMARY KEY, note text)';
		END $$`); err != nil {
		t.Fatal(err)
	}
	asciiBefore := legacyState(t, ascii)
	code, out, errOut = pgtenant(t, "import", "init", "--from", ascii, "--schema-per-tenant", "--register-tenants")
	if code != 1 || !strings.Contains(errOut, "1 tenant schema(s) whose tenant id pgtenant cannot register: ") || !strings.Contains(errOut, "(SQLSTATE 22023)") || !strings.Contains(errOut, "tenant id is not valid UTF-8") {
		t.Fatalf("import init with a schema name that is not UTF-8: exit %d\n%s%s", code, out, errOut)
	}

	if got := catalogState(); got != catBefore {
		t.Fatalf("a failed import init changed the catalog:\n%s\nwas\n%s", got, catBefore)
	}
	if got := legacyState(t, legacy); got != before {
		t.Fatalf("a failed import init changed the legacy database: %s, was %s", got, before)
	}
	if got := legacyState(t, ascii); got != asciiBefore {
		t.Fatalf("a failed import init changed the legacy database: %s, was %s", got, asciiBefore)
	}
}

// TestImportSchemaPerTenantLateTable (issue 12): a table created in tenant
// schemas after import init is in no publication and was not copied: its
// rows would stay on the legacy database only. It used to pass unnoticed
// with --schema-per-tenant (only a one-schema import named such tables).
// Now import status names it with the schemas that hold it (not in the
// import's publication: created before import start in one schema, or
// after it in every one); verify reports it; cutover --all and finish refuse (55000)
// until it is excluded with import exclude, then both complete.
func TestImportSchemaPerTenantLateTable(t *testing.T) {
	bin := buildBinary(t)
	f, _ := newApartmentFixture(t, 4, 1, 5)
	execSQL(t, f.legacy, `CREATE TABLE tenant_002.early_notes (id int PRIMARY KEY, note text)`)
	imp := startImportProc(t, bin)
	defer imp.kill()
	if out := mustRun(t, "import", "status"); !strings.Contains(out, `not in the import: table(s) early_notes (in 1 tenant schema(s): "tenant_002")`) {
		t.Fatalf("import status does not name the table created after init:\n%s", out)
	}
	mustRun(t, "import", "exclude", "early_notes")

	for _, id := range f.ids { // a migration run on the legacy database after import start
		execSQL(t, f.legacy, `CREATE TABLE `+pgx.Identifier{id, "late_notes"}.Sanitize()+` (id int PRIMARY KEY, note text)`)
	}
	const named = `late_notes (in 5 tenant schema(s): "O'Hara & Sons", "tenant_001", "tenant_002", and 2 more)`
	if out := mustRun(t, "import", "status"); !strings.Contains(out, named) || strings.Contains(out, "early_notes") {
		t.Fatalf("import status does not name (only) the table created after start:\n%s", out)
	}
	code, out, errOut := pgtenant(t, "import", "verify")
	if code == 0 || !strings.Contains(out, "late_notes") {
		t.Fatalf("verify with a table not in the import: exit %d\n%s%s", code, out, errOut)
	}
	for _, args := range [][]string{{"import", "cutover", "--all", "--tenant-filtered"}, {"import", "finish"}} {
		code, out, errOut := pgtenant(t, args...)
		if code == 0 || !strings.Contains(errOut, "55000") || !strings.Contains(errOut, named) || !strings.Contains(errOut, "import exclude") {
			t.Fatalf("%v with a table not in the import: exit %d\n%s%s", args, code, out, errOut)
		}
	}
	mustRun(t, "import", "exclude", "late_notes")
	if out := mustRun(t, "import", "verify"); strings.Contains(out, "late_notes") {
		t.Fatalf("verify names an excluded table:\n%s", out)
	}
	mustRun(t, "import", "cutover", "--all", "--tenant-filtered")
	mustRun(t, "import", "finish")
}
