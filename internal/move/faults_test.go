package move

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgtenant/pgtenant/internal/pgtest"
)

var errCrash = errors.New("simulated crash")

// crashAt returns a BeforeStep hook that stops the move when it reaches step,
// as if the process had been killed there. At the fence step it first marks
// the shard fenced, as a process killed under the fence would leave it.
func crashAt(e *env, step Step) func(context.Context, int64, Step) error {
	return func(ctx context.Context, _ int64, s Step) error {
		if s != step {
			return nil
		}
		if s == StepFence {
			if _, err := e.cat.Exec(ctx, `UPDATE pgtenant.shards SET state = 'fenced' WHERE id = $1`, testShard); err != nil {
				return err
			}
		}
		return errCrash
	}
}

// crashedMove starts a move that stops at step and returns its id.
func crashedMove(t *testing.T, e *env, step Step) int64 {
	t.Helper()
	m := testMover(t, e, Config{BeforeStep: crashAt(e, step)})
	_, err := m.Move(context.Background(), testShard, "n2", Options{})
	if !errors.Is(err, errCrash) || !errors.Is(err, ErrInterrupted) {
		t.Fatalf("move: got %v, want the simulated crash", err)
	}
	list, err := m.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Status != "running" || list[0].Step != step {
		t.Fatalf("moves after crash: %+v", list)
	}
	return list[0].ID
}

var crashSteps = []Step{StepSchema, StepPublication, StepSubscription, StepCopy, StepIndexes, StepCatchUp, StepFence, StepVerify, StepCleanup}

func TestResumeAfterCrashAtEveryStep(t *testing.T) {
	for _, step := range crashSteps {
		t.Run(string(step), func(t *testing.T) {
			e := newEnv(t)
			fillShard(t, e, 2000)
			ctx := context.Background()
			id := crashedMove(t, e, step)
			// Writes keep going to wherever the catalog points.
			home := e.src
			if shardState(t, e).node == "n2" {
				home = e.dst
			}
			mustExec(t, home, `INSERT INTO shard_0005.items (account_id, writer, n) SELECT 1, 9, i FROM generate_series(1, 100) i`)

			m := testMover(t, e, Config{})
			res, err := m.Resume(ctx, id)
			if err != nil {
				t.Fatalf("resume: %v", err)
			}
			if got, want := shardState(t, e), (shardRow{"n2", "active", 1}); got != want {
				t.Errorf("catalog shard: %+v, want %+v", got, want)
			}
			if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items`); n != 2100 {
				t.Errorf("target has %d items, want 2100", n)
			}
			if in := moveInfo(t, m, res.MoveID); in.Status != "done" {
				t.Errorf("move status %s", in.Status)
			} else if step == StepVerify && (res.Verified || in.Progress.VerifySkipped == "") {
				t.Errorf("resumed after the flip: verified %v, skipped %q; want not verified, and why", res.Verified, in.Progress.VerifySkipped)
			}
			if n := queryInt(t, e.dst, `SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgtenant_capture%'`); n != 0 {
				t.Errorf("%d capture triggers left on the target", n)
			}
			assertNoLeftovers(t, e)
			if schemaOn(t, e.src, testSchema) {
				t.Error("source schema not retired")
			}
			// Resuming a finished move is refused.
			if _, err := m.Resume(ctx, id); !errors.Is(err, ErrNotRunning) {
				t.Errorf("second resume: %v", err)
			}
		})
	}
}

func TestAbortAfterCrashAtEveryStep(t *testing.T) {
	for _, step := range crashSteps {
		t.Run(string(step), func(t *testing.T) {
			e := newEnv(t)
			fillShard(t, e, 2000)
			ctx := context.Background()
			id := crashedMove(t, e, step)
			m := testMover(t, e, Config{})

			if _, err := m.Move(ctx, testShard, "n2", Options{}); !errors.Is(err, ErrMoveRunning) {
				t.Errorf("second move of the shard: got %v, want ErrMoveRunning", err)
			}
			if step == StepCatchUp {
				rep, err := m.Verify(ctx, testShard)
				if err != nil {
					t.Fatal(err)
				}
				if !rep.OK() || len(rep.Tables) != 3 {
					t.Errorf("verify while caught up: %+v %v", rep, rep.Err())
				}
			}
			err := m.Abort(ctx, id)
			if step == StepCleanup || step == StepVerify {
				if !errors.Is(err, ErrFlipped) {
					t.Fatalf("abort after flip: got %v, want ErrFlipped", err)
				}
				if _, err := m.Resume(ctx, id); err != nil {
					t.Fatalf("resume: %v", err)
				}
				assertNoLeftovers(t, e)
				return
			}
			if err != nil {
				t.Fatalf("abort: %v", err)
			}
			if got, want := shardState(t, e), (shardRow{"n1", "active", 0}); got != want {
				t.Errorf("catalog shard: %+v, want %+v", got, want)
			}
			if in := moveInfo(t, m, id); in.Status != "aborted" || in.FinishedAt == nil {
				t.Errorf("move after abort: %+v", in)
			}
			assertNoLeftovers(t, e)
			if schemaOn(t, e.dst, testSchema) {
				t.Error("schema left on target")
			}
			if n := queryInt(t, e.src, `SELECT count(*) FROM shard_0005.items`); n != 2000 {
				t.Errorf("source has %d items", n)
			}
			mustExec(t, e.src, `UPDATE shard_0005.items SET val = 1 WHERE n = 1`) // updates work: no half-dropped publication
			if err := m.Abort(ctx, id); !errors.Is(err, ErrNotRunning) {
				t.Errorf("second abort: %v", err)
			}
		})
	}
}

func TestRouterFenceTimeoutAborts(t *testing.T) {
	e := newEnv(t)
	fillShard(t, e, 1000)
	ctx := context.Background()
	f := newGateFencer(e)
	held := make(chan struct{})
	release := make(chan struct{})
	done := make(chan error, 1)
	m := testMover(t, e, Config{Fencer: f, FenceTimeout: 300 * time.Millisecond,
		BeforeStep: func(ctx context.Context, _ int64, s Step) error {
			if s == StepFence {
				// A client transaction that outlives the fence's budget.
				go func() {
					p := f.begin()
					close(held)
					<-release
					_, err := p.Exec(context.Background(), `UPDATE shard_0005.items SET val = 7 WHERE n = 2`)
					f.end()
					done <- err
				}()
				<-held
			}
			return nil
		}})
	_, err := m.Move(ctx, testShard, "n2", Options{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("move: got %v, want the fence deadline", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("the long transaction failed: %v", err)
	}
	if got, want := shardState(t, e), (shardRow{"n1", "active", 0}); got != want {
		t.Errorf("catalog shard: %+v, want %+v", got, want)
	}
	if n := queryInt(t, e.src, `SELECT val FROM shard_0005.items WHERE n = 2`); n != 7 {
		t.Errorf("write lost: val %d", n)
	}
	// New transactions flow again, to the source.
	p := f.begin()
	_, err = p.Exec(ctx, `UPDATE shard_0005.items SET val = 8 WHERE n = 3`)
	f.end()
	if err != nil || p != e.src {
		t.Errorf("after abort: err %v, routed to source %v", err, p == e.src)
	}
	assertNoLeftovers(t, e)
	if schemaOn(t, e.dst, testSchema) {
		t.Error("schema left on target")
	}
}

func TestTargetDownDuringCatchUp(t *testing.T) {
	c, err := pgtest.Start("c")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	e := newEnvTarget(t, c)
	fillShard(t, e, 2000)
	ctx := context.Background()
	// Pre-check: the target lacks a role the schema is granted to.
	if _, err := testMover(t, e, Config{}).Move(ctx, testShard, "n2", Options{}); err == nil || !strings.Contains(err.Error(), appRole) {
		t.Fatalf("move to a node without role %s: %v", appRole, err)
	}
	createAppRole(c)
	m := testMover(t, e, Config{BeforeStep: func(ctx context.Context, _ int64, s Step) error {
		if s == StepCatchUp {
			return c.Cluster.Stop(ctx)
		}
		return nil
	}})
	_, err = m.Move(ctx, testShard, "n2", Options{})
	if err == nil {
		t.Fatal("move succeeded with the target down")
	}
	t.Logf("move failed as expected: %v", err)
	list, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Status != "failed" {
		t.Fatalf("moves: %+v", list)
	}
	if got, want := shardState(t, e), (shardRow{"n1", "active", 0}); got != want {
		t.Errorf("catalog shard: %+v, want %+v", got, want)
	}
	// The source is clean already: no slot retains WAL, writes work.
	if n := queryInt(t, e.src, `SELECT count(*) FROM pg_replication_slots`) + queryInt(t, e.src, `SELECT count(*) FROM pg_publication`); n != 0 {
		t.Errorf("%d slots or publications left on the source", n)
	}
	mustExec(t, e.src, `UPDATE shard_0005.items SET val = 5 WHERE n = 5`)

	// The target comes back: abort again finishes the job there.
	if err := c.Cluster.Start(ctx); err != nil {
		t.Fatal(err)
	}
	dst := pool(t, e.dstDSN)
	e.dst = dst
	if err := m.Abort(ctx, list[0].ID); err != nil {
		t.Fatalf("abort: %v", err)
	}
	assertNoLeftovers(t, e)
	if schemaOn(t, e.dst, testSchema) {
		t.Error("schema left on target")
	}
	if in := moveInfo(t, m, list[0].ID); in.Status != "aborted" {
		t.Errorf("move status %s", in.Status)
	}
}

// TestMismatchAfterFlipUndoes injects a difference on the target before the
// fence: the move flips, verification after the flip finds it while writers
// go on on the target, and the flip is undone with every acknowledged write
// (those made on the target in between included) on the source exactly once.
func TestMismatchAfterFlipUndoes(t *testing.T) {
	e := newEnv(t)
	const seedRows = 5000
	fillShard(t, e, seedRows)
	ctx := context.Background()
	f := newGateFencer(e)
	var captured int64
	m := testMover(t, e, Config{Fencer: f, BeforeStep: func(ctx context.Context, id int64, s Step) error {
		switch s {
		case StepFence:
			// Something (a person, a bug) changed the target behind the move's back.
			// (SET LOCAL: the pool's connection goes on to serve the writers.)
			// A seed row only: a writer's row deleted here, and deleted by its
			// writer after the flip, would be a delete that found nothing on
			// the target, so nothing to undo on the source (the ledger then
			// failed now and then: "deleted row 10 is on the node").
			_, err := e.dst.Exec(ctx, `BEGIN; SET LOCAL session_replication_role = replica; DELETE FROM shard_0005.items WHERE writer = 0 AND n = 10; COMMIT`)
			return err
		case StepVerify:
			// The writers go on on the target while the comparison runs.
			time.Sleep(400 * time.Millisecond)
			return e.dst.QueryRow(ctx, `SELECT count(*) FROM pgtenant_move.undo_log WHERE move_id = $1`, id).Scan(&captured)
		}
		return nil
	}})
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
	res, err := m.Move(ctx, testShard, "n2", Options{})
	time.Sleep(200 * time.Millisecond) // writers go on, back on the source
	stop()
	wg.Wait()
	if !errors.Is(err, ErrMismatch) {
		t.Fatalf("move: got %v, want ErrMismatch", err)
	}
	t.Logf("move failed as expected: %v", err)
	if captured == 0 {
		t.Error("no write reached the target between the flip and the verdict")
	}
	if got, want := shardState(t, e), (shardRow{"n1", "active", 2}); got != want {
		t.Errorf("catalog shard: %+v, want %+v", got, want)
	}
	checkLedgers(t, e.src, ledgers)
	if n := queryInt(t, e.src, `SELECT count(*) FROM shard_0005.items WHERE writer = 0`); n != seedRows {
		t.Errorf("source has %d seed rows, want %d", n, seedRows)
	}
	if f.fences.Load() != 2 {
		t.Errorf("fenced %d times, want 2 (move, undo)", f.fences.Load())
	}
	list, lerr := m.List(ctx)
	if lerr != nil {
		t.Fatal(lerr)
	}
	if len(list) != 1 || list[0].Status != "aborted" || list[0].Progress.Undo == "" || list[0].Progress.UndoPauseMS <= 0 {
		t.Errorf("move record: %+v", list)
	} else {
		t.Logf("%d writes made on the target replayed on the source; undo pause %.1f ms", captured, list[0].Progress.UndoPauseMS)
	}
	_ = res
	// The source takes writes again, with its sequences past the target's.
	if err := appInsert(ctx, e.srcDSN, testSchema, 1); err != nil {
		t.Errorf("write as %s after the undo: %v", appRole, err)
	}
	mustExec(t, e.src, `INSERT INTO shard_0005.events (kind) VALUES ('after')`)
	assertNoLeftovers(t, e)
	if schemaOn(t, e.dst, testSchema) {
		t.Error("schema left on target")
	}
	if n := queryInt(t, e.src, `SELECT count(*) FROM pg_trigger WHERE tgname = 'pgtenant_fence'`); n != 0 {
		t.Errorf("%d fence triggers left on the source", n)
	}
}

func TestSourceDownDuringCleanup(t *testing.T) {
	c, err := pgtest.Start("c")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	createAppRole(c)
	e := newEnvNodes(t, c, srvB)
	fillShard(t, e, 2000)
	ctx := context.Background()
	id := crashedMove(t, e, StepCleanup) // flipped, not cleaned up
	if err := c.Cluster.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	m := testMover(t, e, Config{})
	if _, err := m.Resume(ctx, id); err == nil {
		t.Fatal("resume finished with the source down")
	}
	in := moveInfo(t, m, id)
	if in.Status != "running" || !in.Progress.OrphanSlot || in.Error == "" {
		t.Errorf("move with the source down: %+v", in)
	}
	// The target no longer replicates from the dead source; the shard is served there.
	if n := queryInt(t, e.dst, `SELECT count(*) FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())`); n != 0 {
		t.Errorf("%d subscriptions left on the target", n)
	}
	if got, want := shardState(t, e), (shardRow{"n2", "active", 1}); got != want {
		t.Errorf("catalog shard: %+v, want %+v", got, want)
	}

	// The source is back: resume drops the orphaned slot and retires the old schema.
	if err := c.Cluster.Start(ctx); err != nil {
		t.Fatal(err)
	}
	e.src = pool(t, e.srcDSN)
	if _, err := m.Resume(ctx, id); err != nil {
		t.Fatalf("resume: %v", err)
	}
	assertNoLeftovers(t, e)
	if in := moveInfo(t, m, id); in.Status != "done" || in.Progress.OrphanSlot {
		t.Errorf("move after resume: %+v", in)
	}
	if schemaOn(t, e.src, testSchema) {
		t.Error("source schema not retired")
	}
}

// cancelFencer cancels the mover's context once the shard is fenced, as if the
// process were killed under the fence (but with time to release it).
type cancelFencer struct {
	*gateFencer
	cancel context.CancelFunc
}

func (f cancelFencer) Fence(ctx context.Context, shard int) error {
	if err := f.gateFencer.Fence(ctx, shard); err != nil {
		return err
	}
	f.cancel()
	return nil
}

func TestCancelUnderFenceThenResume(t *testing.T) {
	e := newEnv(t)
	fillShard(t, e, 2000)
	g := newGateFencer(e)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	m := testMover(t, e, Config{Fencer: cancelFencer{g, cancel}})
	_, err := m.Move(ctx, testShard, "n2", Options{})
	if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrInterrupted) {
		t.Fatalf("move: got %v, want an interruption by cancellation", err)
	}
	// The fence was released, the shard is still served by the source, the move waits for resume.
	if got, want := shardState(t, e), (shardRow{"n1", "active", 0}); got != want {
		t.Errorf("catalog shard: %+v, want %+v", got, want)
	}
	p := g.begin()
	_, err = p.Exec(context.Background(), `INSERT INTO shard_0005.items (account_id, writer, n) VALUES (1, 5, 1)`)
	g.end()
	if err != nil || p != e.src {
		t.Fatalf("write after the cancelled fence: %v (to source: %v)", err, p == e.src)
	}
	if err := appInsert(context.Background(), e.srcDSN, testSchema, 2); err != nil {
		t.Errorf("grants not restored: %v", err)
	}
	list, err := m.List(context.Background())
	if err != nil || len(list) != 1 || list[0].Status != "running" || list[0].Progress.SourceBytes == 0 {
		t.Fatalf("moves: %+v, %v", list, err)
	}
	if _, err := testMover(t, e, Config{Fencer: g}).Resume(context.Background(), list[0].ID); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items`); n != 2002 {
		t.Errorf("target has %d items, want 2002", n)
	}
	if g.cur.Load() != e.dst {
		t.Error("writers not routed to the target after the resumed move")
	}
	assertNoLeftovers(t, e)
}
