package importer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/tables"
)

// legacyAsOwner makes role own the legacy database of dsn and its tables
// (no SUPERUSER, no REPLICATION) and returns a DSN that connects as it.
func legacyAsOwner(t *testing.T, dsn, role string) string {
	t.Helper()
	execSQL(t, dsn, `DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '`+role+`') THEN CREATE ROLE `+role+` LOGIN NOSUPERUSER NOREPLICATION; END IF; END $$`)
	db := dsn[strings.LastIndex(dsn, "/")+1 : strings.Index(dsn, "?")]
	execSQL(t, dsn, `ALTER DATABASE `+pgx.Identifier{db}.Sanitize()+` OWNER TO `+role)
	execSQL(t, dsn, `DO $$ DECLARE r record; BEGIN
		FOR r IN SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' LOOP
			EXECUTE format('ALTER TABLE public.%I OWNER TO `+role+`', r.relname);
		END LOOP; END $$`)
	return strings.Replace(dsn, "postgres://postgres@", "postgres://"+role+"@", 1)
}

// sumsEverywhere reads the per-tenant sums of every tenant table on the
// legacy database and on the shards (each shard's tenants from its schema).
func sumsEverywhere(t *testing.T, c *catalog.Catalog, im *Importer, legacy string) (map[[2]string]sum, map[[2]string]sum) {
	t.Helper()
	ctx := ctxT(t)
	lc, err := pgx.Connect(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close(ctx)
	rules, err := tables.New(c.Pool()).List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byShard, err := im.tenantsByShard(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var all []string
	for _, ids := range byShard {
		all = append(all, ids...)
	}
	l, err := sums(ctx, lc, "", "public", rules, all)
	if err != nil {
		t.Fatal(err)
	}
	shards, err := c.Shards(ctx)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := c.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dsn := map[string]string{}
	for _, n := range nodes {
		dsn[n.Name] = n.DSN
	}
	r := map[[2]string]sum{}
	for _, s := range shards {
		conn, err := pgx.Connect(ctx, dsn[s.Node])
		if err != nil {
			t.Fatal(err)
		}
		m, err := sums(ctx, conn, "", s.Schema, rules, byShard[s.ID])
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range m {
			r[k] = v
		}
	}
	return l, r
}

// TestTriggerImport (issue 12: a legacy database without logical
// replication): a legacy server at wal_level=replica, reached as a role
// without REPLICATION that owns the tables. import init says the logical
// method cannot run there (55000, 42501) and names --method trigger; with
// it, start installs capture triggers and copies at a snapshot taken after
// them while writers change rows (inserts, updates, deletes, child rows).
// The copy is killed part way and resumed; the follower is stopped while it
// applies and started again; verify compares both sides at one point under
// the writes; every shard is cut over (the marker through the queue) and
// finish drops triggers and queue. Every tenant's rows on the shards equal
// the legacy database's (count and checksum), and the legacy database is
// left with its tables and rows only.
func TestTriggerImport(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := newCatalog(t, 8, 2)
	super, ids := newLegacy(t, srvR, c, 40, 8)
	legacy := legacyAsOwner(t, super, "trig_app")
	im := New(c, nil)

	// The logical method cannot run here: both problems named, the way out too.
	_, err := im.Init(ctx, InitOptions{DSN: legacy, RegisterTenants: true})
	var ce *CheckError
	if !errors.As(err, &ce) || !ce.Has("55000") || !ce.Has("42501") || !strings.Contains(err.Error(), "--method trigger") {
		t.Fatalf("import init (logical) on wal_level=replica without REPLICATION: %v", err)
	}
	if _, err := im.Init(ctx, InitOptions{DSN: legacy, RegisterTenants: true, Method: MethodTrigger}); err != nil {
		t.Fatal(err)
	}
	applyBaseline(t, c, im)

	// Writers on the legacy database the whole time.
	wctx, stopWriters := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var writes atomic.Int64
	var werr error
	var werrOnce sync.Once
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pgx.Connect(ctx, legacy)
			if err != nil {
				werrOnce.Do(func() { werr = err })
				return
			}
			defer conn.Close(context.Background())
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; wctx.Err() == nil; i++ {
				tenant := ids[rng.IntN(len(ids))]
				var err error
				switch i % 5 {
				case 0, 1:
					_, err = conn.Exec(ctx, `INSERT INTO buildings (tenant_id, name, city, floor_area_m2) VALUES ($1, $2, 'W', $3)`, tenant, fmt.Sprintf("w%d-%d", w, i), i)
				case 2:
					_, err = conn.Exec(ctx, `UPDATE buildings SET floor_area_m2 = floor_area_m2 + 1, name = name || '''' WHERE id = (SELECT min(id) FROM buildings WHERE tenant_id = $1)`, tenant)
				case 3:
					_, err = conn.Exec(ctx, `DELETE FROM buildings WHERE id = (SELECT max(id) FROM buildings WHERE tenant_id = $1 AND city = 'W')`, tenant)
				case 4:
					_, err = conn.Exec(ctx, `INSERT INTO meter_notes (meter_id, note) SELECT min(id), $2 FROM meters WHERE tenant_id = $1 HAVING min(id) IS NOT NULL`, tenant, fmt.Sprintf("note, \"%d\" \\ (x)", i))
				}
				if err != nil {
					if wctx.Err() == nil {
						werrOnce.Do(func() { werr = err })
					}
					return
				}
				writes.Add(1)
			}
		}()
	}

	// The copy, killed after two ranges of readings.
	runCtx, kill := context.WithCancel(ctx)
	var units atomic.Int32
	_, err = im.Start(runCtx, StartOptions{Parallel: 1, UnitBytes: 4 * 8192, BeforeUnit: func(ctx context.Context, table string, unit int) error {
		if table == "readings" && units.Add(1) == 3 {
			kill()
			return ctx.Err()
		}
		return nil
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("killed start: %v", err)
	}
	if got := nodeRows(t, c, "readings"); got == 0 {
		t.Fatal("no range of readings was committed before the kill")
	}
	res, err := im.Start(ctx, StartOptions{Parallel: 2})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || res.TablesKept < 3 || res.Copied != 8 {
		t.Fatalf("resumed start: %+v", res)
	}
	t.Logf("resumed copy: %d tables kept (%d queued changes applied to them), %d copied, %d rows", res.TablesKept, res.CaughtUp, res.Tables, res.Rows)

	// The follower, stopped while it applies and started again.
	follow := func(ctx context.Context) chan error {
		done := make(chan error, 1)
		go func() { done <- im.Follow(ctx) }()
		return done
	}
	streaming := func() {
		t.Helper()
		for {
			st, err := im.Status(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if st.State == StateStreaming && st.SlotActive {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	fctx, stopFollow := context.WithCancel(ctx)
	done := follow(fctx)
	streaming()
	for w0 := writes.Load(); writes.Load() < w0+200; {
		time.Sleep(20 * time.Millisecond)
	}
	stopFollow()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("follow: %v", err)
	}
	for w0 := writes.Load(); writes.Load() < w0+100; {
		time.Sleep(20 * time.Millisecond)
	}
	fctx, stopFollow = context.WithCancel(ctx)
	defer stopFollow()
	done = follow(fctx)
	streaming()

	// Verify at one point while the writers go on.
	for round := 0; round < 2; round++ {
		rep, err := im.Verify(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.Consistent || !rep.OK() || rep.Tenants != 40 {
			t.Fatalf("verify under writes: consistent %v, %d tenants, mismatches %v", rep.Consistent, rep.Tenants, rep.Mismatches)
		}
	}
	stopWriters()
	wg.Wait()
	if werr != nil {
		t.Fatalf("writer: %v", werr)
	}
	rs, err := im.Cutover(ctx, CutoverOptions{All: true, Parallel: 2})
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 8 {
		t.Fatalf("%d shards cut over", len(rs))
	}
	l, r := sumsEverywhere(t, c, im, super)
	if len(l) == 0 {
		t.Fatal("no legacy rows compared")
	}
	for k, v := range l {
		if r[k] != v {
			t.Errorf("tenant %s table %s: legacy %+v, shards %+v", k[0], k[1], v, r[k])
		}
	}
	for k := range r {
		if _, ok := l[k]; !ok {
			t.Errorf("tenant %s table %s: rows on the shards only", k[0], k[1])
		}
	}
	if err := im.Finish(ctx); err != nil {
		t.Fatal(err)
	}
	waitFollowEnd(t, done)
	var left string
	lc, err := pgx.Connect(ctx, super)
	if err != nil {
		t.Fatal(err)
	}
	defer lc.Close(ctx)
	if err := lc.QueryRow(ctx, `SELECT concat_ws(' ', (SELECT string_agg(nspname, ',') FROM pg_namespace WHERE nspname LIKE 'pgtenant%'),
		(SELECT string_agg(tgname, ',') FROM pg_trigger WHERE NOT tgisinternal))`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != "" {
		t.Fatalf("left on the legacy database after finish: %s", left)
	}
	t.Logf("%d writes on the legacy database during the import", writes.Load())
}

// TestTriggerBadInput: import init --method trigger names, before anything
// changes, a tenant table without a primary key (55000) and tables the role
// may not create triggers on (42501), each with a hint.
func TestTriggerBadInput(t *testing.T) {
	ctx := ctxT(t)
	c := newCatalog(t, 4, 1)
	super, _ := newLegacy(t, srvR, c, 5, 1)
	execSQL(t, super, `CREATE TABLE audit (tenant_id text NOT NULL, at timestamptz)`)
	if err := tables.New(c.Pool()).Set(ctx, tables.Table{Name: "audit", Kind: tables.KindTenant, TenantColumn: "tenant_id"}); err != nil {
		t.Fatal(err)
	}
	// A role that owns nothing: no TRIGGER on the tables, no CREATE on the database.
	execSQL(t, super, `DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'trig_reader') THEN CREATE ROLE trig_reader LOGIN; END IF; END $$;
		GRANT SELECT ON ALL TABLES IN SCHEMA public TO trig_reader`)
	reader := strings.Replace(super, "postgres://postgres@", "postgres://trig_reader@", 1)
	_, err := New(c, nil).Init(ctx, InitOptions{DSN: reader, RegisterTenants: true, Method: MethodTrigger})
	var ce *CheckError
	if !errors.As(err, &ce) || !ce.Has("55000") || !ce.Has("42501") {
		t.Fatalf("import init --method trigger: %v", err)
	}
	for _, want := range []string{"without a primary key: audit", "may not create triggers on", "may not create schemas", "hint:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%v", want, err)
		}
	}
	if nodes, err := c.Nodes(ctx); err != nil || len(nodes) != 1 {
		t.Fatalf("nodes after the failed init: %v %v", nodes, err)
	}
	execSQL(t, super, `DROP OWNED BY trig_reader`)
}
