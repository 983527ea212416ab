package move

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

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// gateFencer stands in for the routers: writers take a read lock per
// transaction and use the pool of the node the catalog named at the last
// release; Fence takes the write lock (holding new transactions, waiting for
// in-flight ones) and Unfence re-reads the shard's node and releases.
type gateFencer struct {
	mu     sync.RWMutex
	state  sync.Mutex
	fenced bool
	cat    *pgxpool.Pool
	pools  map[string]*pgxpool.Pool
	cur    atomic.Pointer[pgxpool.Pool]
	fences atomic.Int32
}

func newGateFencer(e *env) *gateFencer {
	f := &gateFencer{cat: e.cat, pools: map[string]*pgxpool.Pool{"n1": e.src, "n2": e.dst}}
	f.cur.Store(e.src)
	return f
}

func (f *gateFencer) begin() *pgxpool.Pool { f.mu.RLock(); return f.cur.Load() }
func (f *gateFencer) end()                 { f.mu.RUnlock() }

func (f *gateFencer) Fence(ctx context.Context, shard int) error {
	f.state.Lock()
	defer f.state.Unlock()
	if f.fenced {
		return nil
	}
	acquired := make(chan struct{})
	go func() { f.mu.Lock(); close(acquired) }()
	select {
	case <-acquired:
		f.fenced = true
		f.fences.Add(1)
		return nil
	case <-ctx.Done():
		go func() { <-acquired; f.mu.Unlock() }()
		return ctx.Err()
	}
}

func (f *gateFencer) Unfence(ctx context.Context, shard int) error {
	f.state.Lock()
	defer f.state.Unlock()
	if !f.fenced {
		return nil
	}
	var node string
	err := f.cat.QueryRow(ctx, `SELECT node FROM pgtenant.shards WHERE id = $1`, shard).Scan(&node)
	if err == nil {
		f.cur.Store(f.pools[node])
	}
	f.fenced = false
	f.mu.Unlock()
	return err
}

// ledger is what one writer had acknowledged.
type ledger struct {
	sent    map[int]bool // every n ever sent in an insert
	live    map[int]int  // acknowledged n → val, not deleted
	deleted map[int]bool
	events  int // acknowledged event inserts
	errs    []error
	maxTx   time.Duration
}

func runWriter(ctx context.Context, f *gateFencer, w int, l *ledger) {
	rng := rand.New(rand.NewPCG(uint64(w), 7))
	var keys []int
	for i := 1; ctx.Err() == nil; i++ {
		start := time.Now()
		p := f.begin()
		var err error
		switch op := rng.IntN(10); {
		case op < 5 || len(keys) < 10:
			l.sent[i] = true
			_, err = p.Exec(context.Background(), `INSERT INTO shard_0005.items (account_id, writer, n) VALUES ($1, $2, $3)`, 1+rng.IntN(100), w, i)
			if err == nil {
				l.live[i] = 0
				keys = append(keys, i)
				_, err = p.Exec(context.Background(), `INSERT INTO shard_0005.events (kind) VALUES ($1)`, fmt.Sprintf("w%d", w))
				if err == nil {
					l.events++
				}
			}
		case op < 8:
			k := keys[rng.IntN(len(keys))]
			var tag int64
			err = p.QueryRow(context.Background(), `WITH u AS (UPDATE shard_0005.items SET val = val + 1 WHERE writer = $1 AND n = $2 RETURNING 1) SELECT count(*) FROM u`, w, k).Scan(&tag)
			if err == nil && tag == 1 {
				l.live[k]++
			}
		default:
			idx := rng.IntN(len(keys))
			k := keys[idx]
			_, err = p.Exec(context.Background(), `DELETE FROM shard_0005.items WHERE writer = $1 AND n = $2`, w, k)
			if err == nil {
				delete(l.live, k)
				l.deleted[k] = true
				keys = append(keys[:idx], keys[idx+1:]...)
			}
		}
		f.end()
		if d := time.Since(start); d > l.maxTx {
			l.maxTx = d
		}
		if err != nil {
			l.errs = append(l.errs, err)
		}
		time.Sleep(writerThink)
	}
}

// writerThink is a writer's pause between transactions. Without one, three
// writers on a saturated 2-core machine (CI at load 15-25) outran the single
// WAL sender that decodes their changes for the move: the catch-up lag grew
// from 5 to 45 s until the test's deadline. No logical replication can
// follow writers that out-produce its decoder; an app's clients think
// between transactions, and the write rate stays in the thousands per second.
const writerThink = time.Millisecond

func TestMoveUnderWrites(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		rows int
	}{
		{"logical", Options{}, 50000},
		{"logical skip verify", Options{SkipVerify: true}, 50000},
		{"copy", Options{Method: MethodCopy}, 20000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { testMoveUnderWrites(t, newEnv(t), tt.opts, tt.rows) })
	}
}

// TestMoveUnderWritesNodeRole is the ledger test with nodes registered as a
// role that is not a superuser (owner of the node databases, REPLICATION):
// on PostgreSQL 15 it cannot CREATE SUBSCRIPTION, publish FOR TABLES IN
// SCHEMA or set session_replication_role.
func TestMoveUnderWritesNodeRole(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		rows int
	}{
		{"logical", Options{}, 20000},
		{"copy", Options{Method: MethodCopy}, 10000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { testMoveUnderWrites(t, newEnvNodeRole(t), tt.opts, tt.rows) })
	}
}

func testMoveUnderWrites(t *testing.T, e *env, opts Options, seedRows int) {
	fillShard(t, e, seedRows)
	f := newGateFencer(e)
	m := testMover(t, e, Config{Fencer: f})
	ctx := context.Background()

	const writers = 3
	wctx, stop := context.WithCancel(ctx)
	ledgers := make([]*ledger, writers)
	var wg sync.WaitGroup
	for w := range writers {
		ledgers[w] = &ledger{sent: map[int]bool{}, live: map[int]int{}, deleted: map[int]bool{}}
		wg.Add(1)
		go func() { defer wg.Done(); runWriter(wctx, f, w+1, ledgers[w]) }()
	}
	time.Sleep(200 * time.Millisecond)
	res, err := m.Move(ctx, testShard, "n2", opts)
	if err != nil {
		stop()
		wg.Wait()
		t.Fatalf("move: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // writers go on, now on the target
	stop()
	wg.Wait()
	if res.Verified == opts.SkipVerify {
		t.Errorf("verified %v with SkipVerify %v", res.Verified, opts.SkipVerify)
	}
	t.Logf("moved: pause %v, rows %d, bytes %d, duration %v, verified %v", res.Pause, res.Rows, res.Bytes, res.Duration, res.Verified)

	checkLedgers(t, e.dst, ledgers)
	if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items WHERE writer = 0`); n != int64(seedRows) {
		t.Errorf("seed rows on target: %d, want %d", n, seedRows)
	}

	// Sequences on the target are past the source's.
	movedSchema := fmt.Sprintf("shard_0005_moved_%d", res.MoveID)
	for _, seq := range []string{"accounts_id_seq", "items_id_seq", "events_id_seq", "invoice_no"} {
		s := queryInt(t, e.src, `SELECT coalesce(last_value, 0) FROM pg_sequences WHERE schemaname = $1 AND sequencename = $2`, movedSchema, seq)
		d := queryInt(t, e.dst, `SELECT coalesce(last_value, 0) FROM pg_sequences WHERE schemaname = $1 AND sequencename = $2`, testSchema, seq)
		if d < s || d == 0 {
			t.Errorf("sequence %s: target %d, source %d", seq, d, s)
		}
	}
	// The view, function, trigger and index came along.
	if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.account_items`); n != 100 {
		t.Errorf("view rows on target: %d", n)
	}
	if n := queryInt(t, e.dst, `SELECT count(*) FROM pg_indexes WHERE schemaname = 'shard_0005' AND indexname = 'items_account'`); n != 1 {
		t.Error("index items_account missing on target")
	}
	if n := queryInt(t, e.dst, `SELECT count(*) FROM pg_trigger WHERE tgname = 'items_fill'`); n != 1 {
		t.Error("trigger missing on target")
	}
	if n := queryInt(t, e.dst, `SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = 'shard_0005'::regnamespace`); n != 1 {
		t.Error("foreign key missing on target")
	}

	if got, want := shardState(t, e), (shardRow{"n2", "active", 1}); got != want {
		t.Errorf("catalog shard: %+v, want %+v", got, want)
	}
	in := moveInfo(t, m, res.MoveID)
	if in.Status != "done" || in.Step != StepDone || in.Pause <= 0 || in.FinishedAt == nil {
		t.Errorf("move record: %+v", in)
	}
	assertNoLeftovers(t, e)
	if schemaOn(t, e.src, testSchema) || !schemaOn(t, e.src, movedSchema) {
		t.Errorf("source schema not renamed to %s", movedSchema)
	}
	// A writer that bypassed the routers cannot write to the old copy; grants came along to the target.
	var pgErr *pgconn.PgError
	if err := appInsert(ctx, e.srcDSN, movedSchema, 1); !errors.As(err, &pgErr) || pgErr.Code != "42501" {
		t.Errorf("stale write to the source as %s: got %v, want SQLSTATE 42501", appRole, err)
	}
	if err := appInsert(ctx, e.dstDSN, testSchema, 1); err != nil {
		t.Errorf("write to the target as %s: %v", appRole, err)
	}
	if !schemaOn(t, e.src, "shard_0006") || schemaOn(t, e.dst, "shard_0006") {
		t.Error("the other shard was touched")
	}
	if f.fences.Load() != 1 {
		t.Errorf("fenced %d times", f.fences.Load())
	}

	// Cleanup drops the renamed schema.
	dropped, err := m.Cleanup(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(dropped) != 1 || schemaOn(t, e.src, movedSchema) {
		t.Errorf("cleanup dropped %v", dropped)
	}
}

// checkLedgers checks that every acknowledged write is on the node of p
// exactly once, and nothing that was not sent.
func checkLedgers(t *testing.T, p *pgxpool.Pool, ledgers []*ledger) {
	t.Helper()
	ctx := context.Background()
	for w, l := range ledgers {
		t.Logf("writer %d: %d live rows, %d deleted, %d events, %d errors, longest transaction %v", w+1, len(l.live), len(l.deleted), l.events, len(l.errs), l.maxTx)
		for _, err := range l.errs {
			t.Errorf("writer %d: %v", w+1, err)
		}
		rows, err := p.Query(ctx, `SELECT n, val FROM shard_0005.items WHERE writer = $1`, w+1)
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
				t.Errorf("writer %d row %d twice", w+1, n)
			}
			got[n] = val
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		for n, val := range l.live {
			if g, ok := got[n]; !ok {
				t.Errorf("writer %d: acknowledged row %d missing on the node", w+1, n)
			} else if g != val {
				t.Errorf("writer %d: row %d has val %d on the node, want %d", w+1, n, g, val)
			}
		}
		for n := range got {
			if l.deleted[n] {
				t.Errorf("writer %d: deleted row %d is on the node", w+1, n)
			} else if !l.sent[n] {
				t.Errorf("writer %d: row %d on the node was never sent", w+1, n)
			}
		}
		if n := queryInt(t, p, `SELECT count(*) FROM shard_0005.events WHERE kind = $1`, fmt.Sprintf("w%d", w+1)); n != int64(l.events) {
			t.Errorf("writer %d: %d events on the node, want %d", w+1, n, l.events)
		}
	}
}

func TestUnreplicableTablesReportedFirst(t *testing.T) {
	e := newEnv(t)
	fillShard(t, e, 10)
	mustExec(t, e.src, `CREATE TABLE shard_0005.nokey (a int, b text);
		CREATE UNLOGGED TABLE shard_0005.scratch (id int PRIMARY KEY);
		CREATE TABLE shard_0005.fullid (a int); ALTER TABLE shard_0005.fullid REPLICA IDENTITY FULL`)
	m := testMover(t, e, Config{})
	// Missing extension on the target: reported before anything starts.
	mustExec(t, e.src, `CREATE EXTENSION IF NOT EXISTS citext; CREATE TABLE shard_0005.emails (id int PRIMARY KEY, e citext)`)
	if _, err := m.Move(context.Background(), testShard, "n2", Options{}); err == nil || !strings.Contains(err.Error(), "citext") {
		t.Fatalf("move with an extension missing on the target: %v", err)
	}
	mustExec(t, e.dst, `CREATE EXTENSION citext`)
	_, err := m.Move(context.Background(), testShard, "n2", Options{})
	var ue *UnreplicableError
	if !errors.As(err, &ue) {
		t.Fatalf("got %v, want UnreplicableError", err)
	}
	var names []string
	for _, b := range ue.Tables {
		names = append(names, b.Name)
	}
	if got, want := fmt.Sprint(names), "[nokey scratch]"; got != want {
		t.Errorf("reported %s, want %s", got, want)
	}
	if n := queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.moves`); n != 0 {
		t.Errorf("%d moves recorded", n)
	}
	if schemaOn(t, e.dst, testSchema) {
		t.Error("schema created on target")
	}
}

func TestFenceLockTimeoutAborts(t *testing.T) {
	e := newEnv(t)
	fillShard(t, e, 1000)
	ctx := context.Background()
	// A long transaction holds a row lock: LOCK TABLE … EXCLUSIVE times out.
	long, err := e.src.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer long.Rollback(ctx)
	m := testMover(t, e, Config{Fencer: newGateFencer(e), LockTimeout: 200 * time.Millisecond,
		BeforeStep: func(ctx context.Context, _ int64, step Step) error {
			if step == StepFence {
				// Opened only now: a slot cannot be created while a write transaction is open.
				_, err := long.Exec(ctx, `UPDATE shard_0005.items SET val = 99 WHERE n = 1`)
				return err
			}
			return nil
		}})
	_, err = m.Move(ctx, testShard, "n2", Options{})
	if err == nil {
		t.Fatal("move succeeded behind a long transaction")
	}
	t.Logf("move failed as expected: %v", err)
	if err := long.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := shardState(t, e), (shardRow{"n1", "active", 0}); got != want {
		t.Errorf("catalog shard: %+v, want %+v", got, want)
	}
	if n := queryInt(t, e.src, `SELECT val FROM shard_0005.items WHERE n = 1`); n != 99 {
		t.Errorf("the long transaction's write is lost: val %d", n)
	}
	if err := appInsert(ctx, e.srcDSN, testSchema, 1); err != nil {
		t.Errorf("write as %s after the abort: %v", appRole, err)
	}
	if n := queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.moves WHERE status = 'aborted'`); n != 1 {
		t.Errorf("move not recorded as aborted")
	}
	assertNoLeftovers(t, e)
	if schemaOn(t, e.dst, testSchema) {
		t.Error("schema left on target")
	}
	// A new move of the shard works afterwards.
	if _, err := testMover(t, e, Config{}).Move(ctx, testShard, "n2", Options{}); err != nil {
		t.Fatalf("second move: %v", err)
	}
	if n := queryInt(t, e.dst, `SELECT val FROM shard_0005.items WHERE n = 1`); n != 99 {
		t.Errorf("val on target %d", n)
	}
}

func TestVerifyDetectsMismatch(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, p := range []*pgxpool.Pool{e.src, e.dst} {
		mustExec(t, p, `CREATE SCHEMA s; CREATE TABLE s.a (id int PRIMARY KEY, v text); CREATE TABLE s.b (id int PRIMARY KEY);
			INSERT INTO s.a SELECT i, 'v' || i FROM generate_series(1, 1000) i; INSERT INTO s.b SELECT generate_series(1, 10)`)
	}
	src, err := e.src.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Release()
	dst, err := e.dst.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Release()
	tests := []struct {
		name, change, want string
	}{
		{"equal", ``, ""},
		{"changed value", `UPDATE s.a SET v = 'x' WHERE id = 500`, "a checksum differs"},
		{"missing row", `DELETE FROM s.b WHERE id = 3`, "b has 10 rows on source, 9 on target"},
		{"extra table", `CREATE TABLE s.c (id int PRIMARY KEY)`, "c missing on source"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.change != "" {
				mustExec(t, e.dst, tt.change)
			}
			rep, err := VerifySchemas(ctx, src.Conn(), dst.Conn(), "s")
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == "" {
				if !rep.OK() {
					t.Fatalf("mismatch: %v", rep.Err())
				}
				return
			}
			if rep.OK() || !errors.Is(rep.Err(), ErrMismatch) {
				t.Fatalf("no mismatch reported")
			}
			if got := rep.Err().Error(); !strings.Contains(got, tt.want) {
				t.Errorf("got %q, want it to mention %q", got, tt.want)
			}
		})
	}
}

func TestMoveAllConcurrently(t *testing.T) {
	e := newEnv(t)
	fillShard(t, e, 5000)
	mustExec(t, e.src, `INSERT INTO shard_0006.t SELECT generate_series(1, 3000)`)
	m := testMover(t, e, Config{})
	var calls atomic.Int32
	sum := m.MoveAll(context.Background(), []Plan{{testShard, "n1", "n2"}, {6, "n1", "n2"}, {testShard, "n1", "n2"}}, 2, Options{},
		nil, func(Outcome) { calls.Add(1) })
	for _, o := range sum.Outcomes {
		t.Logf("shard %d: pause %v, err %v", o.Plan.Shard, o.Result.Pause, o.Err)
	}
	// The third plan repeats shard 5: it either finds a running move or the shard already moved.
	if sum.Moved != 2 || sum.Failed != 1 || calls.Load() != 3 || sum.LongestPause <= 0 {
		t.Fatalf("summary: %+v", sum)
	}
	if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0006.t`); n != 3000 {
		t.Errorf("shard 6 on target: %d rows", n)
	}
	if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items`); n != 5000 {
		t.Errorf("shard 5 on target: %d rows", n)
	}
	if n := queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.shards WHERE node = 'n2' AND epoch = 1`); n != 2 {
		t.Errorf("%d shards flipped", n)
	}
	assertNoLeftovers(t, e)
}
