package move

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

// triggerNodeRole owns the node databases in the trigger-method tests: LOGIN only,
// no SUPERUSER, no REPLICATION (what a host without logical replication gives).
const triggerNodeRole = "pgtenant_trigger_node"

func createNodeRole(t *testing.T, srv *pgtest.Server) {
	t.Helper()
	p := pool(t, srv.Cluster.DSN("postgres"))
	mustExec(t, p, `DO $$ BEGIN CREATE ROLE `+triggerNodeRole+` LOGIN NOSUPERUSER NOREPLICATION NOCREATEDB NOCREATEROLE;
		EXCEPTION WHEN duplicate_object THEN NULL; END $$`)
}

// asTriggerNode returns dsn with the trigger tests' node role instead of the superuser.
func asTriggerNode(dsn string) string { return asRole(dsn, triggerNodeRole) }

// triggerEnv is an env whose node databases are owned by, and registered in
// the catalog with, the non-superuser node role; src and dst connect as it.
// The catalog stays the superuser's (it is not a node).
type triggerEnv struct {
	*env
	appSrc, appDst *pgxpool.Pool // the application role, as writers through a router would run
}

func newTriggerEnv(t *testing.T) *triggerEnv {
	t.Helper()
	createNodeRole(t, srvA)
	createNodeRole(t, srvB)
	e := &env{catDSN: srvA.NewDatabase(t), srcDSN: srvA.NewDatabase(t), dstDSN: srvB.NewDatabase(t)}
	for _, d := range []string{e.srcDSN, e.dstDSN} {
		su := pool(t, d)
		name := d[strings.LastIndex(d, "/")+1 : strings.Index(d, "?")]
		mustExec(t, su, `ALTER DATABASE `+ident(name)+` OWNER TO `+triggerNodeRole)
		su.Close()
	}
	e.srcDSN, e.dstDSN = asTriggerNode(e.srcDSN), asTriggerNode(e.dstDSN)
	e.cat, e.src, e.dst = pool(t, e.catDSN), pool(t, e.srcDSN), pool(t, e.dstDSN)
	if n := queryInt(t, e.src, `SELECT count(*) FROM pg_roles WHERE rolname = current_user AND (rolsuper OR rolreplication)`); n != 0 {
		t.Fatalf("node role is superuser or has REPLICATION")
	}
	mustExec(t, e.cat, catalogDDL)
	mustExec(t, e.cat, `INSERT INTO pgtenant.nodes VALUES ('n1', $1), ('n2', $2)`, e.srcDSN, e.dstDSN)
	mustExec(t, e.cat, `INSERT INTO pgtenant.shards (id, schema_name, node) VALUES ($1, $2, 'n1'), (6, 'shard_0006', 'n1')`, testShard, testSchema)
	return &triggerEnv{env: e, appSrc: pool(t, asApp(strings.Replace(e.srcDSN, triggerNodeRole, "postgres", 1))),
		appDst: pool(t, asApp(strings.Replace(e.dstDSN, triggerNodeRole, "postgres", 1)))}
}

// appFencer is a gateFencer whose writers run as the application role.
func (e *triggerEnv) appFencer() *gateFencer {
	f := &gateFencer{cat: e.cat, pools: map[string]*pgxpool.Pool{"n1": e.appSrc, "n2": e.appDst}}
	f.cur.Store(e.appSrc)
	return f
}

// assertNoTriggerLeftovers checks that no change queue, capture function or
// trigger, or applied position of any move is left on either node.
func assertNoTriggerLeftovers(t *testing.T, e *env) {
	t.Helper()
	for side, p := range map[string]*pgxpool.Pool{"source": e.src, "target": e.dst} {
		if n := queryInt(t, p, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgtenant\_capture\_%'`); n != 0 {
			t.Errorf("%d capture schemas left on the %s", n, side)
		}
		if n := queryInt(t, p, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'PGTENANT\_capture%'`); n != 0 {
			t.Errorf("%d capture triggers left on the %s", n, side)
		}
		if n := queryInt(t, p, `SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname LIKE 'pgtenant\_capture%'`); n != 0 {
			t.Errorf("%d capture functions left on the %s", n, side)
		}
		if queryInt(t, p, `SELECT count(*) FROM pg_tables WHERE schemaname = 'pgtenant_move' AND tablename = 'applied'`) == 1 {
			if n := queryInt(t, p, `SELECT count(*) FROM pgtenant_move.applied`); n != 0 {
				t.Errorf("%d applied positions left on the %s", n, side)
			}
		}
	}
	assertNoLeftovers(t, e)
}

// startWriters runs n ledger writers through f until the returned stop is called.
func startWriters(f *gateFencer, n int) (ledgers []*ledger, stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := range n {
		l := &ledger{sent: map[int]bool{}, live: map[int]int{}, deleted: map[int]bool{}}
		ledgers = append(ledgers, l)
		wg.Add(1)
		go func() { defer wg.Done(); runWriter(ctx, f, w+1, l) }()
	}
	return ledgers, func() { cancel(); wg.Wait() }
}

// checkTriggerLedgers is checkLedgers plus the seed rows written before the writers started.
func checkTriggerLedgers(t *testing.T, p *pgxpool.Pool, ledgers []*ledger, seedRows int) {
	t.Helper()
	checkLedgers(t, p, ledgers)
	if n := queryInt(t, p, `SELECT count(*) FROM shard_0005.items WHERE writer = 0`); n != int64(seedRows) {
		t.Errorf("seed rows: %d, want %d", n, seedRows)
	}
}

// TestTriggerMoveUnderWrites is the ledger test of the trigger method with a
// node role that is neither superuser nor REPLICATION, and writers running
// as the application role.
func TestTriggerMoveUnderWrites(t *testing.T) {
	e := newTriggerEnv(t)
	const seed = 20000
	fillShard(t, e.env, seed)
	// A primary key of two columns, rows with NULLs and odd text.
	mustExec(t, e.src, `CREATE TABLE shard_0005.pairs (a int, b text, note text, PRIMARY KEY (a, b));
		GRANT SELECT, INSERT, UPDATE, DELETE ON shard_0005.pairs TO pgtenant_app;
		INSERT INTO shard_0005.pairs SELECT i, 'b' || i, CASE WHEN i % 3 = 0 THEN NULL ELSE E'x\t"y",\\z(' || i || ')' END FROM generate_series(1, 500) i`)
	f := e.appFencer()
	m := testMover(t, e.env, Config{Fencer: f})
	ctx := context.Background()
	ledgers, stop := startWriters(f, 3)
	time.Sleep(200 * time.Millisecond)
	// Key changes and TRUNCATE while the move runs.
	go func() {
		time.Sleep(300 * time.Millisecond)
		p := f.begin()
		defer f.end()
		p.Exec(ctx, `UPDATE shard_0005.pairs SET a = a + 1000, note = 'moved key' WHERE a % 10 = 0`)
	}()
	res, err := m.Move(ctx, testShard, "n2", Options{Method: MethodTrigger})
	if err != nil {
		stop()
		t.Fatalf("move: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // writers go on, now on the target
	stop()
	t.Logf("moved: pause %v, rows %d, bytes %d, duration %v, verified %v", res.Pause, res.Rows, res.Bytes, res.Duration, res.Verified)
	if !res.Verified {
		t.Error("not verified")
	}
	checkTriggerLedgers(t, e.dst, ledgers, seed)
	if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.pairs WHERE a > 1000 AND note = 'moved key'`); n != 50 {
		t.Errorf("%d rows with a changed key on the target, want 50", n)
	}
	if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.pairs`); n != 500 {
		t.Errorf("%d pairs on the target, want 500", n)
	}
	if got, want := shardState(t, e.env), (shardRow{"n2", "active", 1}); got != want {
		t.Errorf("catalog shard: %+v, want %+v", got, want)
	}
	in := moveInfo(t, m, res.MoveID)
	if in.Status != "done" || in.Method != MethodTrigger || in.Progress.Applied == 0 {
		t.Errorf("move record: %+v", in)
	}
	// The target's user trigger is enabled again and fires.
	if n := queryInt(t, e.dst, `SELECT count(*) FROM pg_trigger WHERE tgname = 'items_fill' AND tgenabled = 'O'`); n != 1 {
		t.Error("trigger items_fill not enabled on the target")
	}
	mustExec(t, e.dst, `INSERT INTO shard_0005.items (account_id, writer, n) VALUES (1, 99, 1)`)
	if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items WHERE writer = 99 AND payload = 'p1'`); n != 1 {
		t.Error("trigger items_fill did not fire on the target")
	}
	movedSchema := fmt.Sprintf("shard_0005_moved_%d", res.MoveID)
	for _, seq := range []string{"accounts_id_seq", "items_id_seq", "events_id_seq", "invoice_no"} {
		s := queryInt(t, e.src, `SELECT coalesce(last_value, 0) FROM pg_sequences WHERE schemaname = $1 AND sequencename = $2`, movedSchema, seq)
		d := queryInt(t, e.dst, `SELECT coalesce(last_value, 0) FROM pg_sequences WHERE schemaname = $1 AND sequencename = $2`, testSchema, seq)
		if d < s || d == 0 {
			t.Errorf("sequence %s: target %d, source %d", seq, d, s)
		}
	}
	assertNoTriggerLeftovers(t, e.env)
	if f.fences.Load() != 1 {
		t.Errorf("fenced %d times", f.fences.Load())
	}
}

func TestTriggerNoPrimaryKeyRefused(t *testing.T) {
	e := newTriggerEnv(t)
	fillShard(t, e.env, 10)
	mustExec(t, e.src, `CREATE TABLE shard_0005.nokey (a int, b text); CREATE TABLE shard_0005.alsonokey (a int UNIQUE)`)
	m := testMover(t, e.env, Config{})
	_, err := m.Move(context.Background(), testShard, "n2", Options{Method: MethodTrigger})
	var te *TriggerTablesError
	if !errors.As(err, &te) {
		t.Fatalf("got %v, want TriggerTablesError", err)
	}
	if got, want := fmt.Sprint(te.Tables), "[{alsonokey no primary key} {nokey no primary key}]"; got != want {
		t.Errorf("reported %s, want %s", got, want)
	}
	if !strings.Contains(err.Error(), "add a primary key, or use --method copy") {
		t.Errorf("no hint in %q", err)
	}
	if n := queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.moves`); n != 0 {
		t.Errorf("%d moves recorded", n)
	}
	if schemaOn(t, e.dst, testSchema) {
		t.Error("schema created on target")
	}
	assertNoTriggerLeftovers(t, e.env)
}

// triggerCrashSteps are the steps of a trigger-method move a crash is simulated at.
var triggerCrashSteps = []Step{StepSchema, StepCapture, StepCopy, StepIndexes, StepCatchUp, StepFence, StepCleanup}

// TestTriggerCrashAtEveryStep kills the mover (as BeforeStep returning an
// error does) at each step while application writers keep writing, then
// resumes or aborts it: every acknowledged write is where the shard is
// served, exactly once, and no queue, function or trigger is left.
func TestTriggerCrashAtEveryStep(t *testing.T) {
	for _, step := range triggerCrashSteps {
		for _, finish := range []string{"resume", "abort"} {
			t.Run(string(step)+"/"+finish, func(t *testing.T) { testTriggerCrash(t, step, finish, false) })
		}
	}
	// Killed in the middle of a round: part of a round applied and recorded.
	for _, finish := range []string{"resume", "abort"} {
		t.Run("mid-round/"+finish, func(t *testing.T) { testTriggerCrash(t, StepCatchUp, finish, true) })
	}
}

func testTriggerCrash(t *testing.T, step Step, finish string, midRound bool) {
	e := newTriggerEnv(t)
	const seed = 3000
	fillShard(t, e.env, seed)
	mustExec(t, e.src, `CREATE TABLE shard_0005.scratch (id int PRIMARY KEY); INSERT INTO shard_0005.scratch VALUES (1)`)
	ctx := context.Background()
	f := e.appFencer()
	ledgers, stop := startWriters(f, 2)
	defer stop()
	time.Sleep(100 * time.Millisecond)
	crash := testMover(t, e.env, Config{Fencer: f, BeforeStep: crashAt(e.env, step)})
	_, err := crash.Move(ctx, testShard, "n2", Options{Method: MethodTrigger})
	if !errors.Is(err, errCrash) || !errors.Is(err, ErrInterrupted) {
		stop()
		t.Fatalf("move: got %v, want the simulated crash", err)
	}
	list, err := crash.List(ctx)
	if err != nil || len(list) != 1 || list[0].Status != "running" || list[0].Step != step {
		stop()
		t.Fatalf("moves after crash: %+v %v", list, err)
	}
	id := list[0].ID
	time.Sleep(300 * time.Millisecond) // writes pile up in the queue
	if step == StepCatchUp || step == StepIndexes {
		// TRUNCATE is refused while changes are captured.
		var pgErr *pgconn.PgError
		if _, err := e.src.Exec(ctx, `TRUNCATE shard_0005.scratch`); !errors.As(err, &pgErr) || pgErr.Code != "55000" {
			t.Errorf("TRUNCATE during the move: got %v, want SQLSTATE 55000", err)
		}
	}
	if midRound {
		mv, err := crash.loadMove(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		src, dst, err := crash.conns(ctx, mv)
		if err != nil {
			t.Fatal(err)
		}
		a, err := crash.newApplier(ctx, mv, src, dst)
		if err != nil {
			t.Fatal(err)
		}
		a.batch = 7
		done, n, err := a.step(ctx)
		closeConns(mv)
		if err != nil || done || n != 7 {
			t.Fatalf("one batch of a round: done %v, %d applied, %v", done, n, err)
		}
		if s := queryInt(t, e.dst, `SELECT count(*) FROM pgtenant_move.applied WHERE cur_snapshot IS NOT NULL AND last_id > 0`); s != 1 {
			t.Fatalf("no round under way recorded on the target")
		}
	}
	m := testMover(t, e.env, Config{Fencer: f})
	home := e.dst
	switch finish {
	case "resume":
		if _, err := m.Resume(ctx, id); err != nil {
			stop()
			t.Fatalf("resume: %v", err)
		}
		if got, want := shardState(t, e.env), (shardRow{"n2", "active", 1}); got != want {
			t.Errorf("catalog shard: %+v, want %+v", got, want)
		}
	case "abort":
		err := m.Abort(ctx, id)
		if step == StepCleanup {
			if !errors.Is(err, ErrFlipped) {
				t.Fatalf("abort after flip: got %v, want ErrFlipped", err)
			}
			if _, err := m.Resume(ctx, id); err != nil {
				t.Fatalf("resume: %v", err)
			}
			break
		}
		if err != nil {
			stop()
			t.Fatalf("abort: %v", err)
		}
		home = e.src
		if got, want := shardState(t, e.env), (shardRow{"n1", "active", 0}); got != want {
			t.Errorf("catalog shard: %+v, want %+v", got, want)
		}
		if schemaOn(t, e.dst, testSchema) {
			t.Error("schema left on target")
		}
		// TRUNCATE works again on the source.
		mustExec(t, e.src, `TRUNCATE shard_0005.scratch`)
	}
	time.Sleep(200 * time.Millisecond)
	stop()
	checkTriggerLedgers(t, home, ledgers, seed)
	if in := moveInfo(t, m, id); in.Status != map[string]string{"resume": "done", "abort": "aborted"}[finish] && !(step == StepCleanup && in.Status == "done") {
		t.Errorf("move status %s", in.Status)
	}
	assertNoTriggerLeftovers(t, e.env)
}

// TestTriggerCleanupDropsLeftQueue: an abort that could not finish (status
// failed) leaves the queue and its triggers on the source; shard cleanup
// drops them.
func TestTriggerCleanupDropsLeftQueue(t *testing.T) {
	e := newTriggerEnv(t)
	fillShard(t, e.env, 100)
	ctx := context.Background()
	m := testMover(t, e.env, Config{BeforeStep: crashAt(e.env, StepCatchUp)})
	if _, err := m.Move(ctx, testShard, "n2", Options{Method: MethodTrigger}); !errors.Is(err, errCrash) {
		t.Fatalf("move: got %v, want the simulated crash", err)
	}
	list, err := m.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("moves: %+v %v", list, err)
	}
	id := list[0].ID
	mustExec(t, e.cat, `UPDATE pgtenant.moves SET status = 'failed' WHERE id = $1`, id)
	if n := queryInt(t, e.src, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'PGTENANT\_capture%'`); n == 0 {
		t.Fatal("no capture triggers after the crash")
	}
	dropped, err := testMover(t, e.env, Config{}).Cleanup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fmt.Sprint(dropped), fmt.Sprintf("[n1.pgtenant_capture_%d]", id); got != want {
		t.Errorf("cleanup dropped %s, want %s", got, want)
	}
	if n := queryInt(t, e.src, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'PGTENANT\_capture%'`) +
		queryInt(t, e.src, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgtenant\_capture\_%'`); n != 0 {
		t.Errorf("%d capture objects left on the source", n)
	}
	mustExec(t, e.src, `TRUNCATE shard_0005.events`)
}

// TestTriggerApplyCommitOrder applies the queue by hand while transactions
// overlap so that neither queue id order nor "xid below the oldest running
// xid" is commit order: C (still open) holds an entry with an id below
// entries already committed by A and B, and A (xid below C's) rewrote B's row
// after B committed. Rounds between snapshots apply B before A and C's entry
// once C commits; the target ends equal to the source.

func TestTriggerApplyCommitOrder(t *testing.T) {
	e := newTriggerEnv(t)
	fillShard(t, e.env, 10)
	ctx := context.Background()
	crash := testMover(t, e.env, Config{BeforeStep: crashAt(e.env, StepCatchUp)})
	if _, err := crash.Move(ctx, testShard, "n2", Options{Method: MethodTrigger}); !errors.Is(err, errCrash) {
		t.Fatalf("move: got %v, want the simulated crash", err)
	}
	list, err := crash.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("moves: %+v %v", list, err)
	}
	id := list[0].ID
	mv, err := crash.loadMove(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer closeConns(mv)
	src, dst, err := crash.conns(ctx, mv)
	if err != nil {
		t.Fatal(err)
	}
	a, err := crash.newApplier(ctx, mv, src, dst)
	if err != nil {
		t.Fatal(err)
	}
	begin := func() pgx.Tx {
		tx, err := e.appSrc.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return tx
	}
	exec := func(tx pgx.Tx, sql string) {
		t.Helper()
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	txA := begin()
	exec(txA, `UPDATE shard_0005.items SET val = 1 WHERE n = 1`) // A takes its xid first
	txC := begin()
	exec(txC, `UPDATE shard_0005.items SET val = 3 WHERE n = 2`)                                             // C: a lower queue id than B's and A's later entries
	mustExec(t, e.appSrc, `INSERT INTO shard_0005.items (account_id, writer, n, val) VALUES (1, 5, 100, 7)`) // B commits
	exec(txA, `UPDATE shard_0005.items SET val = 42 WHERE writer = 5 AND n = 100`)                           // A rewrites B's row
	if err := txA.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	val := func(where string) int64 {
		return queryInt(t, e.dst, `SELECT coalesce((SELECT val FROM shard_0005.items WHERE `+where+`), -1)`)
	}
	if _, err := a.round(ctx); err != nil {
		t.Fatal(err)
	}
	if got := val(`writer = 5 AND n = 100`); got != 42 {
		t.Errorf("after the first round: B's row has val %d on the target, want A's 42", got)
	}
	if got := val(`n = 2 AND writer = 0`); got != 0 {
		t.Errorf("C's uncommitted change applied: val %d", got)
	}
	if err := txC.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.round(ctx); err != nil {
		t.Fatal(err)
	}
	if got := val(`writer = 5 AND n = 100`); got != 42 {
		t.Errorf("after C committed: B's row has val %d on the target, want A's 42", got)
	}
	if got := val(`n = 2 AND writer = 0`); got != 3 {
		t.Errorf("C's change (a queue id below ones applied before) has val %d on the target, want 3", got)
	}
	if got := val(`n = 1 AND writer = 0`); got != 1 {
		t.Errorf("A's first change: val %d on the target, want 1", got)
	}
	if _, err := testMover(t, e.env, Config{}).Resume(ctx, id); err != nil {
		t.Fatalf("resume: %v", err)
	}
	assertNoTriggerLeftovers(t, e.env)
}

// TestTriggerTableAddedDuringMove: a table created in the shard after the
// capture triggers has none, so the move is aborted before the fence, naming it.
func TestTriggerTableAddedDuringMove(t *testing.T) {
	e := newTriggerEnv(t)
	fillShard(t, e.env, 100)
	ctx := context.Background()
	hook := func(ctx context.Context, _ int64, s Step) error {
		if s == StepCatchUp {
			_, err := e.src.Exec(ctx, `CREATE TABLE shard_0005.late (id int PRIMARY KEY); INSERT INTO shard_0005.late VALUES (1)`)
			return err
		}
		return nil
	}
	_, err := testMover(t, e.env, Config{BeforeStep: hook}).Move(ctx, testShard, "n2", Options{Method: MethodTrigger, SkipVerify: true})
	if err == nil || !strings.Contains(err.Error(), "late of schema shard_0005 were created during the move") {
		t.Fatalf("move: got %v, want the uncaptured table named", err)
	}
	if got, want := shardState(t, e.env), (shardRow{"n1", "active", 0}); got != want {
		t.Errorf("catalog shard: %+v, want %+v", got, want)
	}
	if n := queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.moves WHERE status = 'aborted'`); n != 1 {
		t.Error("move not aborted")
	}
	assertNoTriggerLeftovers(t, e.env)
}
