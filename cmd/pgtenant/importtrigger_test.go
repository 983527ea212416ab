package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/demo"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// replicaLegacy starts a server at wal_level=replica (stopped when the test
// ends) and makes on it a database shaped like the demo's energy app with n
// tenants, owned (database and tables) by a role without SUPERUSER or
// REPLICATION. It returns the DSNs as that role and as the superuser.
func replicaLegacy(t *testing.T, n, hours int) (owner, super string, ids []string) {
	t.Helper()
	srv, err := pgtest.StartWith("r", map[string]string{"wal_level": "replica"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	ctx := context.Background()
	super = srv.NewDatabase(t)
	conn, err := pgx.Connect(ctx, super)
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
	ids = demo.TenantIDs(n)
	if err := demo.SeedLegacy(ctx, conn, "public", ids, hours); err != nil {
		t.Fatal(err)
	}
	db := super[strings.LastIndex(super, "/")+1 : strings.Index(super, "?")]
	if _, err := conn.Exec(ctx, `CREATE ROLE app_owner LOGIN NOSUPERUSER NOREPLICATION;
		ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` OWNER TO app_owner;
		DO $$ DECLARE r record; BEGIN
		FOR r IN SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' LOOP
			EXECUTE format('ALTER TABLE public.%I OWNER TO app_owner', r.relname);
		END LOOP; END $$`); err != nil {
		t.Fatal(err)
	}
	return strings.Replace(super, "postgres://postgres@", "postgres://app_owner@", 1), super, ids
}

// TestImportTriggerKills (issue 12: a legacy database without logical
// replication): the legacy server runs at wal_level=replica and the import
// connects as the tables' owner, a role without REPLICATION. import init
// names both problems (55000, 42501) and --method trigger; with it, writers
// go through the router the whole time while `import start --method
// trigger` is SIGKILLed during the copy (a table complete on a node, others
// not) and again while it applies the queue, each time started again; then
// verify (under the writes), a canary cutover, its rollback (the writes it
// took on its node written back) and a verify of it, cutover of every
// shard, finish. Every
// acknowledged write is on the shards exactly once, no client saw an
// error, and the legacy database is left with its tables only.
func TestImportTriggerKills(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "pgtenant")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	t.Chdir(t.TempDir())
	catDSN := nodeA.NewDatabase(t)
	t.Setenv("PGTENANT_CATALOG", catDSN)
	mustRun(t, "init", "--shards", "8")
	n1, n2 := nodeB.NewDatabase(t), nodeB.NewDatabase(t)
	mustRun(t, "node", "add", "n1", n1)
	mustRun(t, "node", "add", "n2", n2)
	mustRun(t, "shard", "create")
	legacy, super, ids := replicaLegacy(t, 120, 24)
	dropSlotsAtEnd(t, n1, n2)
	for _, r := range demo.LegacyRules {
		mustRun(t, append([]string{"table", "set"}, r...)...)
	}
	code, out, errOut := pgtenant(t, "import", "init", "--from", legacy, "--register-tenants")
	if code == 0 || !strings.Contains(errOut+out, "55000") || !strings.Contains(errOut+out, "42501") || !strings.Contains(errOut+out, "--method trigger") {
		t.Fatalf("import init on wal_level=replica without REPLICATION: exit %d\n%s%s", code, out, errOut)
	}
	mustRun(t, "import", "init", "--from", legacy, "--register-tenants", "--method", "trigger")
	mustRun(t, "import", "schema", "--dir", "db/migrations", "--reference-dir", "db/reference")
	mustRun(t, "reference", "migrate", "--dir", "db/reference")
	mustRun(t, "migrate", "up", "--dir", "db/migrations")
	_, addr := startRouterProc(t, bin)
	l := startLedger(t, addr, ids, 3, "t")
	cat, err := pgx.Connect(context.Background(), catDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close(context.Background())
	l.waitWrites(t, 50)

	// Killed during the copy: once a table is complete on a node.
	p := startProc(t, bin, "import", "start", "--method", "trigger", "--parallel", "2", "--max-rate", "300kB")
	complete := func() int {
		total := 0
		for _, dsn := range []string{n1, n2} {
			c, err := pgx.Connect(context.Background(), dsn)
			if err != nil {
				t.Fatal(err)
			}
			var k int
			_ = c.QueryRow(context.Background(), `SELECT count(*) FROM pgtenant_stream.import_copy`).Scan(&k)
			c.Close(context.Background())
			total += k
		}
		return total
	}
	for i := 0; complete() == 0; i++ {
		if i > 3000 || p.cmd.ProcessState != nil {
			t.Fatalf("no table was complete on a node: %s%s", p.out.String(), p.errOut.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.kill()
	var state string
	if err := cat.QueryRow(context.Background(), `SELECT state FROM pgtenant.imports`).Scan(&state); err != nil || state != "copying" {
		t.Fatalf("killed during the copy, the import is %q (%v); want copying", state, err)
	}
	t.Logf("import start killed during the copy with %d table(s) complete on the nodes", complete())
	l.waitWrites(t, 50)

	startImport := func() *proc {
		p := startProc(t, bin, "import", "start", "--parallel", "2")
		for i := 0; ; i++ {
			if out := mustRun(t, "import", "status"); strings.Contains(out, ": streaming;") && strings.Contains(out, "(following: true)") {
				return p
			}
			if p.cmd.ProcessState != nil || i > 1500 {
				t.Fatalf("import start never followed the queue: %s%s", p.out.String(), p.errOut.String())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	p = startImport()
	if !strings.Contains(p.out.String(), "kept from before") {
		t.Logf("resumed: %s", p.out.String())
	}
	// Killed while it applies the queue (writers keep it busy).
	l.waitWrites(t, 300)
	p.kill()
	l.waitWrites(t, 200)
	p = startImport()
	l.waitWrites(t, 100)

	if code, out, errOut := pgtenant(t, "import", "verify"); code != 0 || !strings.Contains(out, "8 shards, 120 tenants, 6 tables") {
		t.Fatalf("import verify under writes: exit %d\n%s%s", code, out, errOut)
	}
	// A canary cut over and rolled back with the writes it took on its node
	// (their queued write-backs are skipped by the queue's applier), then
	// compared again. Meanwhile only its tenants write: a rollback writes
	// the node's new rows back with the ids the node gave them, which the
	// legacy database may have given to other tenants' rows since (ids are
	// per shard once cut over).
	l.finish(t)
	l3 := startLedger(t, addr, shardTenants(t, 3), 2, "r")
	t.Log(strings.TrimSpace(mustRun(t, "import", "cutover", "--shard", "3")))
	l3.waitWrites(t, 200)
	t.Log(strings.TrimSpace(mustRun(t, "import", "rollback", "--shard", "3")))
	l3.waitWrites(t, 200)
	if code, out, errOut := pgtenant(t, "import", "verify", "--shard", "3"); code != 0 || !strings.Contains(out, "1 shard,") {
		t.Fatalf("import verify of the rolled back shard: exit %d\n%s%s", code, out, errOut)
	}
	l2 := startLedger(t, addr, ids, 2, "u")
	l2.waitWrites(t, 100)
	t.Log(strings.TrimSpace(mustRun(t, "import", "cutover", "--all", "--parallel", "2")))
	l2.waitWrites(t, 100)
	l2.finish(t)
	l3.finish(t)
	mustRun(t, "import", "finish")
	select {
	case err := <-p.exited:
		p.exited <- err
		if err != nil {
			t.Fatalf("import start after import finish: %v\n%s%s", err, p.out.String(), p.errOut.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("import start still follows a minute after import finish")
	}

	checkOnShards(t, []string{n1, n2}, l, l2, l3)
	if n := len(ledgerRows(t, super, "public")); n == 0 {
		t.Error("the legacy database keeps no ledger row: its rows were touched")
	}
	if s := legacyState(t, super); !strings.HasSuffix(s, "| 0 | 0 | buildings,customers,energy_units,meter_notes,meters,readings,tariffs") || strings.Contains(s, "pgtenant") {
		t.Errorf("the legacy database after finish: %s", s)
	}
	t.Logf("%d writes acknowledged through the router (%d during the canary's cutover and rollback), max latency %s; %s", len(l.acks)+len(l2.acks)+len(l3.acks),
		len(l3.acks), max(l.maxLat, l2.maxLat, l3.maxLat).Round(time.Millisecond), uptimeLoad())
}
