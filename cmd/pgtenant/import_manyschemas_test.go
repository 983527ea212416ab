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
// 3 accounts with an entry each) and a reference table in public, and
// returns its DSN and the tenant ids.
func manySchemasDB(t *testing.T, n int) (string, []string) {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("tenant_%05d", i)
	}
	return tenantSchemasDB(t, ids, func(int) int { return 3 }, 1), ids
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
	f := newFixtureCatalog(t, nShards, 2, nil)
	n1, n2 := f.nodes[0], f.nodes[1]
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
	var mu sync.Mutex
	var acks []apartmentWrite
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
				err := writeApartment(ctx, conn, apartmentWrite{tenant, w, i})
				mu.Lock()
				if err != nil {
					errs = append(errs, fmt.Errorf("write %d for %q: %w", i, tenant, err))
				} else {
					acks = append(acks, apartmentWrite{tenant, w, i})
				}
				mu.Unlock()
				time.Sleep(2 * time.Millisecond) // a shared machine
			}
		}()
	}

	t0 = time.Now()
	importStart := runImportStart(t, "--parallel", "2")
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
	importStart.stop(t)
	t0 = time.Now()
	mustRun(t, "import", "finish")
	step("import finish", t0)

	for _, e := range errs {
		t.Errorf("writer: %v", e)
	}
	if len(acks) < 50 {
		t.Fatalf("only %d writes were acknowledged", len(acks))
	}
	got, entries := apartmentWrites(t, []string{n1, n2}, "true")
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
