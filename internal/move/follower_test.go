package move

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// splitShards is how many shards node n1 holds in a follower split test;
// the split moves the odd ones (1 and 3) to n3.
const splitShards = 4

// splitEnv is a real catalog (all its upgrades) with node n1 on srvA,
// registered as the node role (no superuser; granted EXECUTE on
// pg_promote), and a physical standby of srvA.
type splitEnv struct {
	cat         *catalog.Catalog
	srcDSN      string        // n1 as the superuser (assertions)
	src         *pgxpool.Pool // n1 as the superuser
	db          string
	standby     *localpg.Cluster
	followerDSN string // the standby's copy of n1's database, as the node role
}

func newSplitEnv(t *testing.T) *splitEnv {
	t.Helper()
	ctx := context.Background()
	e := &splitEnv{srcDSN: srvA.NewDatabase(t)}
	e.cat = catalog.New(srvA.NewDatabase(t), slog.New(slog.NewTextHandler(testWriter{t}, nil)))
	if err := e.cat.Open(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.cat.Close)
	if err := e.cat.Init(ctx, 8); err != nil {
		t.Fatal(err)
	}
	e.src = pool(t, e.srcDSN)
	if err := e.src.QueryRow(ctx, `SELECT current_database()`).Scan(&e.db); err != nil {
		t.Fatal(err)
	}
	mustExec(t, e.src, `ALTER DATABASE `+pgx.Identifier{e.db}.Sanitize()+` OWNER TO `+nodeRole)
	mustExec(t, e.src, `GRANT EXECUTE ON FUNCTION pg_promote(boolean, integer) TO `+nodeRole)
	if _, err := e.cat.AddNode(ctx, "n1", asNode(e.srcDSN)); err != nil {
		t.Fatal(err)
	}
	owner := pool(t, asNode(e.srcDSN))
	for i := range splitShards {
		s := fmt.Sprintf("shard_%04d", i)
		mustExec(t, owner, fmt.Sprintf(`CREATE SCHEMA %[1]s;
			CREATE TABLE %[1]s.items (id bigserial PRIMARY KEY, writer int NOT NULL, n int NOT NULL, val int NOT NULL DEFAULT 0, UNIQUE (writer, n));
			INSERT INTO %[1]s.items (writer, n) SELECT 0, i FROM generate_series(1, 1000) i`, s))
		mustExec(t, e.cat.Pool(), `INSERT INTO pgtenant.shards (id, schema_name, node) VALUES ($1, $2, 'n1')`, i, s)
	}
	mustExec(t, owner, `CREATE SCHEMA shard_0000_moved_9; CREATE TABLE shard_0000_moved_9.old (id int)`) // a retired copy
	e.standby = srvA.NewStandby(t)
	e.followerDSN = asNode(e.standby.DSN(e.db))
	return e
}

func (e *splitEnv) mover(t *testing.T, cfg Config) *Mover {
	cfg.Catalog = e.cat.Pool()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	if cfg.FenceLease == 0 {
		cfg.FenceLease = time.Second
	}
	return New(cfg)
}

func (e *splitEnv) options() SplitOptions {
	return SplitOptions{Node: "n1", NewNode: "n3", FollowerDSN: e.followerDSN, MaxWait: 30 * time.Second, Register: e.register}
}

func (e *splitEnv) register(ctx context.Context, name, dsn, identity string) error {
	return e.cat.AddPromotedNode(ctx, name, dsn, identity)
}

func (e *splitEnv) placement(t *testing.T) map[int]string {
	t.Helper()
	rows, err := e.cat.Pool().Query(context.Background(), `SELECT id, node || '/' || state || '/' || epoch FROM pgtenant.shards ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]string{}
	for rows.Next() {
		var id int
		var s string
		if err := rows.Scan(&id, &s); err != nil {
			t.Fatal(err)
		}
		out[id] = s
	}
	return out
}

// splitGate stands in for the routers, per shard (see gateFencer): a
// writer takes the shard's read lock per transaction and uses the pool of
// the node the catalog named at the shard's last release.
type splitGate struct {
	cat    *pgxpool.Pool
	mu     [splitShards]sync.RWMutex
	state  sync.Mutex
	fenced map[int]bool
	cur    [splitShards]*pgxpool.Pool
	pools  map[string]*pgxpool.Pool
}

func newSplitGate(t *testing.T, e *splitEnv) *splitGate {
	g := &splitGate{cat: e.cat.Pool(), fenced: map[int]bool{}, pools: map[string]*pgxpool.Pool{}}
	n1 := pool(t, asNode(e.srcDSN))
	g.pools["n1"] = n1
	for i := range g.cur {
		g.cur[i] = n1
	}
	t.Cleanup(func() {
		for name, p := range g.pools {
			if name != "n1" {
				p.Close()
			}
		}
	})
	return g
}

func (g *splitGate) begin(s int) *pgxpool.Pool {
	g.mu[s].RLock()
	g.state.Lock()
	defer g.state.Unlock()
	return g.cur[s]
}

func (g *splitGate) end(s int) { g.mu[s].RUnlock() }

func (g *splitGate) Fence(ctx context.Context, shard int) error {
	g.state.Lock()
	if g.fenced[shard] {
		g.state.Unlock()
		return nil
	}
	g.state.Unlock()
	g.mu[shard].Lock()
	g.state.Lock()
	g.fenced[shard] = true
	g.state.Unlock()
	return nil
}

func (g *splitGate) Unfence(ctx context.Context, shard int) error {
	g.state.Lock()
	defer g.state.Unlock()
	if !g.fenced[shard] {
		return nil
	}
	var node, dsn string
	err := g.cat.QueryRow(ctx, `SELECT n.name, n.dsn FROM pgtenant.shards s JOIN pgtenant.nodes n ON n.name = s.node WHERE s.id = $1`, shard).Scan(&node, &dsn)
	if err == nil {
		p, ok := g.pools[node]
		if !ok {
			if p, err = pgxpool.New(ctx, dsn); err == nil {
				g.pools[node] = p
			}
		}
		if err == nil {
			g.cur[shard] = p
		}
	}
	g.fenced[shard] = false
	g.mu[shard].Unlock()
	return err
}

// splitLedger is what one writer had acknowledged, per shard.
type splitLedger struct {
	live  [splitShards]map[int]int // n → val
	gone  [splitShards]map[int]bool
	sent  [splitShards]map[int]bool
	errs  []error
	maxTx time.Duration
}

func runSplitWriter(ctx context.Context, g *splitGate, w int, l *splitLedger) {
	rng := rand.New(rand.NewPCG(uint64(w), 11))
	for s := range splitShards {
		l.live[s], l.gone[s], l.sent[s] = map[int]int{}, map[int]bool{}, map[int]bool{}
	}
	var keys [splitShards][]int
	for i := 1; ctx.Err() == nil; i++ {
		s := rng.IntN(splitShards)
		items := pgx.Identifier{fmt.Sprintf("shard_%04d", s), "items"}.Sanitize()
		start := time.Now()
		p := g.begin(s)
		var err error
		switch op := rng.IntN(10); {
		case op < 6 || len(keys[s]) < 5:
			l.sent[s][i] = true
			if _, err = p.Exec(context.Background(), `INSERT INTO `+items+` (writer, n) VALUES ($1, $2)`, w, i); err == nil {
				l.live[s][i] = 0
				keys[s] = append(keys[s], i)
			}
		case op < 9:
			k := keys[s][rng.IntN(len(keys[s]))]
			var n int
			if err = p.QueryRow(context.Background(), `WITH u AS (UPDATE `+items+` SET val = val + 1 WHERE writer = $1 AND n = $2 RETURNING 1) SELECT count(*) FROM u`, w, k).Scan(&n); err == nil && n == 1 {
				l.live[s][k]++
			}
		default:
			idx := rng.IntN(len(keys[s]))
			k := keys[s][idx]
			if _, err = p.Exec(context.Background(), `DELETE FROM `+items+` WHERE writer = $1 AND n = $2`, w, k); err == nil {
				delete(l.live[s], k)
				l.gone[s][k] = true
				keys[s] = append(keys[s][:idx], keys[s][idx+1:]...)
			}
		}
		g.end(s)
		if d := time.Since(start); d > l.maxTx {
			l.maxTx = d
		}
		if err != nil {
			l.errs = append(l.errs, fmt.Errorf("shard %d: %w", s, err))
		}
	}
}

// checkSplitLedgers checks every acknowledged write exactly once on the
// node the shard ended on, and nothing never sent.
func checkSplitLedgers(t *testing.T, nodes map[int]*pgxpool.Pool, ledgers []*splitLedger) {
	t.Helper()
	ctx := context.Background()
	for w, l := range ledgers {
		t.Logf("writer %d: %d errors, longest transaction %v", w+1, len(l.errs), l.maxTx)
		for _, err := range l.errs {
			t.Errorf("writer %d: %v", w+1, err)
		}
		for s := range splitShards {
			rows, err := nodes[s].Query(ctx, `SELECT n, val FROM `+pgx.Identifier{fmt.Sprintf("shard_%04d", s), "items"}.Sanitize()+` WHERE writer = $1`, w+1)
			if err != nil {
				t.Fatal(err)
			}
			got := map[int]int{}
			for rows.Next() {
				var n, val int
				if err := rows.Scan(&n, &val); err != nil {
					t.Fatal(err)
				}
				if _, dup := got[n]; dup {
					t.Errorf("writer %d shard %d: row %d twice", w+1, s, n)
				}
				got[n] = val
			}
			for n, val := range l.live[s] {
				if g, ok := got[n]; !ok {
					t.Errorf("writer %d shard %d: acknowledged row %d missing", w+1, s, n)
				} else if g != val {
					t.Errorf("writer %d shard %d: row %d has val %d, want %d", w+1, s, n, g, val)
				}
			}
			for n := range got {
				if l.gone[s][n] || !l.sent[s][n] {
					t.Errorf("writer %d shard %d: row %d deleted or never sent, but present", w+1, s, n)
				}
			}
		}
	}
}

// TestFollowerSplitUnderWritesNodeRole: a follower split of n1 (4 shards)
// with writers on every shard the whole time through a router stand-in,
// the node role not a superuser (pg_promote granted): every acknowledged
// write is exactly once on the node its shard ended on, the moved half is
// served by the promoted standby registered as n3, each half's schemas are
// dropped where they no longer belong, and identities tell n1 and n3 apart
// while refusing a second registration of either.
func TestFollowerSplitUnderWritesNodeRole(t *testing.T) {
	e := newSplitEnv(t)
	ctx := context.Background()
	var super bool
	if err := e.src.QueryRow(ctx, `SELECT rolsuper FROM pg_roles WHERE rolname = $1`, nodeRole).Scan(&super); err != nil || super {
		t.Fatalf("node role superuser %v (%v)", super, err)
	}
	g := newSplitGate(t, e)
	m := e.mover(t, Config{Fencer: g})
	plan, err := m.PlanFollowerSplit(ctx, e.options())
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(plan.Moved, plan.Kept) != "[1 3] [0 2]" {
		t.Errorf("plan: moved %v kept %v", plan.Moved, plan.Kept)
	}
	const writers = 4
	wctx, stop := context.WithCancel(ctx)
	ledgers := make([]*splitLedger, writers)
	var wg sync.WaitGroup
	for w := range writers {
		ledgers[w] = &splitLedger{}
		wg.Add(1)
		go func() { defer wg.Done(); runSplitWriter(wctx, g, w+1, ledgers[w]) }()
	}
	time.Sleep(300 * time.Millisecond)
	res, err := m.SplitViaFollower(ctx, e.options())
	time.Sleep(300 * time.Millisecond) // writers go on, the moved half now on n3
	stop()
	wg.Wait()
	if err != nil {
		t.Fatalf("split: %v", err)
	}
	t.Logf("split: pause %v (replay wait %v, promote %v), duration %v, dropped %v", res.Pause, res.ReplayWait, res.Promote, res.Duration, res.Dropped)
	if res.Pause <= 0 || res.CleanupError != "" {
		t.Errorf("result: %+v", res)
	}
	want := map[int]string{0: "n1/active/0", 1: "n3/active/1", 2: "n1/active/0", 3: "n3/active/1"}
	if got := e.placement(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("placement %v, want %v", got, want)
	}
	dst := pool(t, e.standby.DSN(e.db))
	checkSplitLedgers(t, map[int]*pgxpool.Pool{0: e.src, 1: dst, 2: e.src, 3: dst}, ledgers)
	for s := range splitShards {
		schema := fmt.Sprintf("shard_%04d", s)
		onSrc, onDst := schemaOn(t, e.src, schema), schemaOn(t, dst, schema)
		if moved := s%2 == 1; onSrc == moved || onDst != moved {
			t.Errorf("%s: on n1 %v, on n3 %v", schema, onSrc, onDst)
		}
	}
	if !schemaOn(t, e.src, "shard_0000_moved_9") || schemaOn(t, dst, "shard_0000_moved_9") {
		t.Error("the retired copy should stay on n1 (shard cleanup's) and be gone from n3")
	}
	for _, p := range []*pgxpool.Pool{e.src, dst} {
		if n := queryInt(t, p, `SELECT count(*) FROM pgtenant_move.fence`); n != 0 {
			t.Errorf("%d fence rows left", n)
		}
		if n := queryInt(t, p, `SELECT count(*) FROM pg_trigger WHERE tgname = $1`, guardTrigger); n != 0 {
			t.Errorf("%d fence triggers left", n)
		}
	}
	if n := queryInt(t, e.cat.Pool(), `SELECT count(*) FROM pgtenant.fence_leases`); n != 0 {
		t.Errorf("%d fence leases left", n)
	}
	in, err := m.GetSplit(ctx, res.SplitID)
	if err != nil || in.Status != "done" || in.Step != StepDone || in.Pause <= 0 || !in.Progress.Promoted || !in.Progress.Registered {
		t.Errorf("split record %+v %v", in, err)
	}
	// The identity: n3 is n1's system and database plus the promoted id; a
	// second registration of either database is refused.
	var id1, id3 string
	if err := e.cat.Pool().QueryRow(ctx, `SELECT (SELECT identity FROM pgtenant.nodes WHERE name = 'n1'), (SELECT identity FROM pgtenant.nodes WHERE name = 'n3')`).Scan(&id1, &id3); err != nil {
		t.Fatal(err)
	}
	if id3 != id1+" promoted "+in.Progress.PromotedID {
		t.Errorf("identities n1 %q, n3 %q", id1, id3)
	}
	for name, dsn := range map[string]string{"n1again": asNode(e.srcDSN), "n3again": e.followerDSN} {
		if _, err := e.cat.AddNode(ctx, name, dsn); !errors.Is(err, catalog.ErrDuplicateNode) {
			t.Errorf("add %s: %v, want ErrDuplicateNode", name, err)
		}
	}
}

// TestFollowerSplitBadInput: a DSN that is not a standby, a standby of
// another server, and a standby that lags past MaxWait are refused; the
// first two before anything changes, the last after the fence, released.
func TestFollowerSplitBadInput(t *testing.T) {
	ctx := context.Background()
	e := newSplitEnv(t)
	m := e.mover(t, Config{})
	before := e.placement(t)
	noSplits := func(t *testing.T) {
		t.Helper()
		if n := queryInt(t, e.cat.Pool(), `SELECT count(*) FROM pgtenant.splits`); n != 0 {
			t.Errorf("%d splits recorded", n)
		}
	}
	t.Run("not a standby", func(t *testing.T) {
		opts := e.options()
		opts.FollowerDSN = asNode(srvB.NewDatabase(t))
		if _, err := m.SplitViaFollower(ctx, opts); !errors.Is(err, ErrNotStandby) {
			t.Fatalf("split: %v, want ErrNotStandby", err)
		}
		noSplits(t)
	})
	t.Run("standby of another server", func(t *testing.T) {
		other := srvB.NewDatabase(t)
		var db string
		if err := pool(t, other).QueryRow(ctx, `SELECT current_database()`).Scan(&db); err != nil {
			t.Fatal(err)
		}
		sb := srvB.NewStandby(t)
		opts := e.options()
		opts.FollowerDSN = asNode(sb.DSN(db))
		if _, err := m.SplitViaFollower(ctx, opts); !errors.Is(err, ErrNotFollower) || !strings.Contains(err.Error(), "system") {
			t.Fatalf("split: %v, want ErrNotFollower naming both identities", err)
		}
		noSplits(t)
	})
	t.Run("node role may not promote", func(t *testing.T) {
		opts := e.options()
		opts.FollowerDSN = asApp(e.standby.DSN(e.db))
		if _, err := m.SplitViaFollower(ctx, opts); err == nil || !strings.Contains(err.Error(), "GRANT EXECUTE ON FUNCTION pg_promote") {
			t.Fatalf("split: %v, want the GRANT that fixes it", err)
		}
		noSplits(t)
	})
	if got := e.placement(t); fmt.Sprint(got) != fmt.Sprint(before) {
		t.Errorf("placement changed: %v", got)
	}
	t.Run("lags past max wait", func(t *testing.T) {
		sb := pool(t, e.standby.DSN("postgres"))
		mustExec(t, sb, `ALTER SYSTEM SET recovery_min_apply_delay = '1h'`)
		mustExec(t, sb, `SELECT pg_reload_conf()`)
		opts := e.options()
		opts.MaxWait = time.Second
		_, err := m.SplitViaFollower(ctx, opts)
		if !errors.Is(err, ErrFollowerLag) {
			t.Fatalf("split: %v, want ErrFollowerLag", err)
		}
		if got := e.placement(t); fmt.Sprint(got) != fmt.Sprint(before) {
			t.Errorf("placement after the abort: %v, want %v", got, before)
		}
		var status string
		if err := e.cat.Pool().QueryRow(ctx, `SELECT status FROM pgtenant.splits`).Scan(&status); err != nil || status != "aborted" {
			t.Errorf("split status %q %v", status, err)
		}
		// The fence is released: the moved half takes writes on n1 again.
		if _, err := e.src.Exec(ctx, `INSERT INTO shard_0001.items (writer, n) VALUES (99, 1)`); err != nil {
			t.Errorf("write after the abort: %v", err)
		}
		if n := queryInt(t, e.src, `SELECT count(*) FROM pgtenant_move.fence`); n != 0 {
			t.Errorf("%d fence rows left", n)
		}
		if n := queryInt(t, e.cat.Pool(), `SELECT count(*) FROM pgtenant.fence_leases`); n != 0 {
			t.Errorf("%d leases left", n)
		}
		var rec bool
		if err := sb.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&rec); err != nil || !rec {
			t.Errorf("standby in recovery %v (%v): it must be left a standby", rec, err)
		}
	})
}

// TestFollowerSplitCrashAtEveryStep: a split stopped at each step (as if
// its process died there) is resumed or aborted with nothing lost: writes
// made while it was stopped (where the shard was writable) are on the node
// the shard ends on; an abort leaves every shard active on n1, no fence,
// lease or guard, n3 unregistered; an abort after the flip is refused.
func TestFollowerSplitCrashAtEveryStep(t *testing.T) {
	steps := []Step{StepStart, StepFence, StepFenced, StepPromote, StepPromoted, StepFlipped, StepCleanup}
	for _, step := range steps {
		for _, finish := range []string{"resume", "abort"} {
			t.Run(string(step)+"/"+finish, func(t *testing.T) { testSplitCrash(t, step, finish) })
		}
	}
}

func testSplitCrash(t *testing.T, step Step, finish string) {
	ctx := context.Background()
	e := newSplitEnv(t)
	crash := e.mover(t, Config{BeforeStep: func(_ context.Context, _ int64, s Step) error {
		if s == step {
			return errCrash
		}
		return nil
	}})
	_, err := crash.SplitViaFollower(ctx, e.options())
	if !errors.Is(err, errCrash) || !errors.Is(err, ErrInterrupted) {
		t.Fatalf("split: %v, want the simulated crash", err)
	}
	var id int64
	if err := e.cat.Pool().QueryRow(ctx, `SELECT id FROM pgtenant.splits WHERE status = 'running'`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	flipped := step == StepFlipped || step == StepCleanup
	durable := step == StepPromote || step == StepPromoted
	time.Sleep(1200 * time.Millisecond) // a lapsing fence lapses (1s lease)
	if _, err := e.cat.ReleaseExpiredFences(ctx); err != nil {
		t.Fatal(err)
	}
	// A write to a moved shard on n1 while the split is stopped: refused
	// (25006) while its fence is durable, else taken (and must not be lost).
	var pgErr *pgconn.PgError
	wrote := false
	if !flipped {
		_, err := pool(t, asNode(e.srcDSN)).Exec(ctx, `INSERT INTO shard_0001.items (writer, n) VALUES (7, 1)`)
		switch {
		case durable && (!errors.As(err, &pgErr) || pgErr.Code != "25006"):
			t.Errorf("write to a fenced shard after the crash: %v, want 25006", err)
		case !durable && err != nil:
			t.Errorf("write after the crash (fence lapsed): %v", err)
		case !durable:
			wrote = true
		}
	}
	m := e.mover(t, Config{})
	if !flipped {
		// The moved half cannot be moved otherwise meanwhile.
		if _, err := m.Move(ctx, 1, "n1", Options{}); !errors.Is(err, ErrMoveRunning) || !strings.Contains(err.Error(), "follower split") {
			t.Errorf("move of a shard in the split: %v, want ErrMoveRunning naming the split", err)
		}
	}
	if finish == "abort" {
		err := m.AbortSplit(ctx, id)
		if flipped {
			if !errors.Is(err, ErrFlipped) {
				t.Fatalf("abort after the flip: %v, want ErrFlipped", err)
			}
			finish = "resume"
		} else if err != nil {
			t.Fatalf("abort: %v", err)
		}
	}
	if finish == "resume" {
		if _, err := m.ResumeSplit(ctx, id, e.register); err != nil {
			t.Fatalf("resume: %v", err)
		}
	}
	in, err := m.GetSplit(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	got := e.placement(t)
	items := func(p *pgxpool.Pool, s int) int64 {
		return queryInt(t, p, fmt.Sprintf(`SELECT count(*) FROM shard_%04d.items`, s))
	}
	want1 := int64(1000)
	if wrote {
		want1++
	}
	if finish == "abort" {
		if in.Status != "aborted" {
			t.Errorf("split status %s", in.Status)
		}
		for s := range splitShards {
			if got[s] != "n1/active/0" {
				t.Errorf("shard %d: %s, want n1/active/0", s, got[s])
			}
		}
		if n := queryInt(t, e.cat.Pool(), `SELECT count(*) FROM pgtenant.nodes WHERE name = 'n3'`); n != 0 {
			t.Error("n3 still registered after the abort")
		}
		if n := items(e.src, 1); n != want1 {
			t.Errorf("shard 1 on n1: %d rows, want %d", n, want1)
		}
		if _, err := pool(t, asNode(e.srcDSN)).Exec(ctx, `INSERT INTO shard_0001.items (writer, n) VALUES (7, 2)`); err != nil {
			t.Errorf("write after the abort: %v", err)
		}
		if n := queryInt(t, e.src, `SELECT count(*) FROM pg_trigger WHERE tgname = $1`, guardTrigger); n != 0 {
			t.Errorf("%d fence triggers left on n1", n)
		}
		var rec bool
		if err := pool(t, e.standby.DSN("postgres")).QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&rec); err != nil {
			t.Fatal(err)
		}
		if wantRec := step != StepPromoted; rec != wantRec {
			t.Errorf("standby in recovery %v, want %v", rec, wantRec)
		}
		if !rec && !strings.Contains(in.Error, "delete it") {
			t.Errorf("the abort's error should say the promoted follower is unused: %q", in.Error)
		}
	} else {
		if in.Status != "done" || in.Progress.CleanupPending {
			t.Errorf("split %+v", in)
		}
		for s := range splitShards {
			if w := map[bool]string{true: "n3/active/1", false: "n1/active/0"}[s%2 == 1]; got[s] != w {
				t.Errorf("shard %d: %s, want %s", s, got[s], w)
			}
		}
		dst := pool(t, e.standby.DSN(e.db))
		if n := items(dst, 1); n != want1 {
			t.Errorf("shard 1 on n3: %d rows, want %d", n, want1)
		}
		if schemaOn(t, e.src, "shard_0001") || schemaOn(t, dst, "shard_0000") {
			t.Error("cleanup left a half where it does not belong")
		}
		if _, err := pool(t, e.followerDSN).Exec(ctx, `INSERT INTO shard_0001.items (writer, n) VALUES (7, 3)`); err != nil {
			t.Errorf("write to n3: %v", err)
		}
	}
	if n := queryInt(t, e.cat.Pool(), `SELECT count(*) FROM pgtenant.fence_leases`); n != 0 {
		t.Errorf("%d fence leases left", n)
	}
	if n := queryInt(t, e.src, `SELECT CASE WHEN to_regclass('pgtenant_move.fence') IS NULL THEN 0 ELSE 1 END`); n != 0 {
		if n := queryInt(t, e.src, `SELECT count(*) FROM pgtenant_move.fence`); n != 0 {
			t.Errorf("%d fence rows left on n1", n)
		}
	}
}

var _ = pgtest.Server{}
