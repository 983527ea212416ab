package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// manySchemasDB makes a legacy database with n tenant schemas of the
// Rails apartment style (apartmentSchemaDDL: accounts, entries, ledger;
// a few rows each) and a reference table in public, in batches of schemas
// per statement, and returns its DSN and the tenant ids.
func manySchemasDB(t *testing.T, n int) (string, []string) {
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
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("tenant_%05d", i)
	}
	const batch = 50
	for start := 0; start < n; start += batch {
		var b strings.Builder
		for _, id := range ids[start:min(start+batch, n)] {
			s := pgx.Identifier{id}.Sanitize()
			fmt.Fprintf(&b, `CREATE SCHEMA %[1]s; SET search_path = %[1]s; %[2]s RESET search_path;
				INSERT INTO %[1]s.accounts (name, email, country) SELECT 'acct ' || g, 'a' || g || '@x', (ARRAY['CZ','DE','IE'])[1 + g %% 3] FROM generate_series(1, 3) g;
				INSERT INTO %[1]s.entries (account_id, amount, note) SELECT a.id, 1.5, 'seed' FROM %[1]s.accounts a;
				`, s, apartmentSchemaDDL)
		}
		if _, err := conn.Exec(ctx, b.String()); err != nil {
			t.Fatal(err)
		}
	}
	return dsn, ids
}

// TestImportThousandsOfSchemas (issue 12, the schema-per-tenant source at
// the scale the issue names): a legacy database with 200 (or
// PGTENANT_TEST_SCHEMAS) tenant schemas of 3 tables each moves onto two nodes while clients write through the
// router the whole time: init → schema → start → verify → cutover --all
// --parallel 4 → finish. Every acknowledged write is on its tenant's shard
// exactly once, no client saw an error. Each step's time is logged (the
// figures in bench/README.md, "Imports from thousands of schemas").
func TestImportThousandsOfSchemas(t *testing.T) {
	// 200 schemas in the package's tests (cmd/pgtenant is near its 20m
	// timeout under load; 500 took 169 s at load 25);
	// PGTENANT_TEST_SCHEMAS=2000 for the scale (the figures in
	// bench/README.md).
	nSchemas, nShards := 200, 16
	if v := os.Getenv("PGTENANT_TEST_SCHEMAS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("PGTENANT_TEST_SCHEMAS=%q: want a number of schemas", v)
		}
		nSchemas = n
	}
	t.Chdir(t.TempDir())
	t.Setenv("PGTENANT_CATALOG", nodeA.NewDatabase(t))
	mustRun(t, "init", "--shards", fmt.Sprint(nShards))
	n1, n2 := nodeB.NewDatabase(t), nodeB.NewDatabase(t)
	mustRun(t, "node", "add", "n1", n1)
	mustRun(t, "node", "add", "n2", n2)
	mustRun(t, "shard", "create")
	t0 := time.Now()
	legacy, ids := manySchemasDB(t, nSchemas)
	dropSlotsAtEnd(t, legacy, n1, n2)
	var steps []string
	step := func(name string, t0 time.Time) {
		steps = append(steps, fmt.Sprintf("%s %s", name, time.Since(t0).Round(10*time.Millisecond)))
		t.Logf("%s took %s", name, time.Since(t0).Round(10*time.Millisecond))
	}
	step("making the legacy database", t0)

	t0 = time.Now()
	out := mustRun(t, "import", "init", "--from", legacy, "--schema-per-tenant", "--register-tenants")
	step("import init", t0)
	if !strings.Contains(out, fmt.Sprintf("%d tenant schemas with the same 3 tables", nSchemas)) || !strings.Contains(out, fmt.Sprintf("%d tenants registered", nSchemas)) {
		t.Fatalf("import init: %s", out)
	}
	t0 = time.Now()
	mustRun(t, "import", "schema", "--dir", "db/migrations", "--reference-dir", "db/reference")
	mustRun(t, "reference", "migrate", "--dir", "db/reference")
	mustRun(t, "migrate", "up", "--dir", "db/migrations")
	step("import schema and migrate", t0)
	addr := startRouterCmd(t)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	// Writers through the router: a ledger row and an entry of account 1
	// of a random tenant, in one transaction, without the tenant column.
	wctx, stopWriters := context.WithCancel(ctx)
	defer stopWriters()
	const writers = 4
	type wack struct {
		tenant      string
		client, seq int
	}
	var mu sync.Mutex
	var acks []wack
	var errs []error
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, fmt.Sprintf("postgres://app@%s/app?sslmode=disable", addr))
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewPCG(uint64(w), 11))
			for i := 0; wctx.Err() == nil; i++ {
				tenant := ids[rng.IntN(len(ids))]
				err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
					if _, err := tx.Exec(ctx, `SELECT set_config('pgtenant.tenant', $1, true)`, tenant); err != nil {
						return err
					}
					if _, err := tx.Exec(ctx, `INSERT INTO ledger (client, seq) VALUES ($1, $2)`, w, i); err != nil {
						return err
					}
					_, err := tx.Exec(ctx, `INSERT INTO entries (account_id, amount, note) VALUES (1, 1, $1)`, fmt.Sprintf("w%d n%d", w, i))
					return err
				})
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("write %d for %q: %w", i, tenant, err))
				} else {
					acks = append(acks, wack{tenant, w, i})
				}
				mu.Unlock()
				time.Sleep(2 * time.Millisecond) // a shared machine
			}
		}()
	}

	t0 = time.Now()
	sctx, stopStart := context.WithCancel(ctx)
	defer stopStart()
	startDone := make(chan string, 1)
	go func() {
		var out, errOut syncBuffer
		code := run(sctx, []string{"import", "start", "--parallel", "2"}, strings.NewReader(""), &out, &errOut)
		startDone <- fmt.Sprintf("exit %d\n%s%s", code, out.String(), errOut.String())
	}()
	for i := 0; ; i++ {
		if out := mustRun(t, "import", "status"); strings.Contains(out, ": streaming;") && strings.Contains(out, "(streaming: true)") {
			break
		}
		select {
		case s := <-startDone:
			t.Fatalf("import start ended early: %s", s)
		case <-time.After(500 * time.Millisecond):
		}
		if i > 1200 {
			t.Fatal("import start did not reach streaming in 10 minutes")
		}
	}
	step("import start until streaming", t0)

	t0 = time.Now()
	code, vout, verr := pgtenant(t, "import", "verify")
	step("import verify", t0)
	if code != 0 || !strings.Contains(vout, fmt.Sprintf("%d shards, %d tenants, 3 tables", nShards, nSchemas)) || !strings.Contains(vout, "; 0 differences") {
		t.Fatalf("import verify: exit %d\n%s%s", code, vout, verr)
	}

	t0 = time.Now()
	out = mustRun(t, "import", "cutover", "--all", "--parallel", "4", "--tenant-filtered")
	step("import cutover --all --parallel 4", t0)
	var pauses []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.Contains(line, "cut over to node") {
			t.Fatalf("import cutover: %s", out)
		}
		pauses = append(pauses, line[strings.Index(line, "pause ")+6:strings.Index(line, " (")])
	}
	if len(pauses) != nShards {
		t.Fatalf("%d shards cut over, want %d:\n%s", len(pauses), nShards, out)
	}
	time.Sleep(500 * time.Millisecond) // writes on the shards
	stopWriters()
	wg.Wait()
	stopStart()
	if s := <-startDone; !strings.HasPrefix(s, "exit 0") {
		t.Fatalf("import start: %s", s)
	}
	t0 = time.Now()
	mustRun(t, "import", "finish")
	step("import finish", t0)

	for _, e := range errs {
		t.Errorf("writer: %v", e)
	}
	if len(acks) < 50 {
		t.Fatalf("only %d writes were acknowledged", len(acks))
	}
	got := map[wack]int{}
	entries := map[wack]int{}
	for _, dsn := range []string{n1, n2} {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		union := func(tmpl string) string {
			var q string
			if err := conn.QueryRow(ctx, `SELECT string_agg(format($1, nspname), ' UNION ALL ') FROM pg_namespace WHERE nspname LIKE 'shard\_%'`, tmpl).Scan(&q); err != nil {
				t.Fatal(err)
			}
			return q
		}
		rows, err := conn.Query(ctx, union(`SELECT tenant_id, client, seq FROM %I.ledger`))
		if err != nil {
			t.Fatal(err)
		}
		var k wack
		if _, err := pgx.ForEachRow(rows, []any{&k.tenant, &k.client, &k.seq}, func() error { got[k]++; return nil }); err != nil {
			t.Fatal(err)
		}
		var note string
		rows, err = conn.Query(ctx, union(`SELECT tenant_id, note FROM %I.entries WHERE note <> 'seed'`))
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
		conn.Close(ctx)
	}
	for _, a := range acks {
		if got[a] != 1 || entries[a] != 1 {
			t.Errorf("acknowledged write %d of client %d for %q: %d ledger rows, %d entries on the shards", a.seq, a.client, a.tenant, got[a], entries[a])
		}
	}
	if n := len(got); n != len(acks) {
		t.Errorf("%d ledger rows on the shards, %d writes acknowledged", n, len(acks))
	}
	t.Logf("%d schemas x 3 tables, %d shards: %s; %d acknowledged writes through the router, no error; cutover pauses %s; %s",
		nSchemas, nShards, strings.Join(steps, ", "), len(acks), strings.Join(pauses, " "), uptimeLoad())
}
