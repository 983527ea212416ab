package move

import (
	"context"
	"errors"
	"testing"
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
	if !errors.Is(err, errCrash) {
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

var crashSteps = []Step{StepSchema, StepPublication, StepSubscription, StepCopy, StepIndexes, StepCatchUp, StepFence, StepCleanup}

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
			if step == StepCleanup {
				if !errors.Is(err, ErrFlipped) {
					t.Fatalf("abort after flip: got %v, want ErrFlipped", err)
				}
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
