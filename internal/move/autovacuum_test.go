package move

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// vacuumHold stands in for an autovacuum worker on a table: a session holding SHARE UPDATE EXCLUSIVE on it from the fence step on, let
// go a while after the mover starts waiting for it (as Postgres cancels
// autovacuum for a waiter after deadlock_timeout, 1s), or at stop.
type vacuumHold struct {
	waited chan struct{} // closed when a waiter for the table was seen
	stop   chan struct{}
	done   chan struct{} // closed when the lock is released
}

// holdLikeAutovacuum takes the lock now; unless after is 0 it is released
// after more than that once another session waits for the table.
func holdLikeAutovacuum(t *testing.T, p *pgxpool.Pool, table string, after time.Duration) *vacuumHold {
	t.Helper()
	ctx := context.Background()
	tx, err := p.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE `+table+` IN SHARE UPDATE EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	h := &vacuumHold{waited: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		defer tx.Rollback(ctx)
		for {
			var n int
			if err := p.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE relation = $1::regclass AND NOT granted`, table).Scan(&n); err != nil {
				t.Errorf("watch the lock's waiters: %v", err)
				return
			}
			if n > 0 {
				break
			}
			select {
			case <-h.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
		close(h.waited)
		var release <-chan time.Time
		if after > 0 {
			release = time.After(after)
		}
		select {
		case <-release:
		case <-h.stop:
		}
	}()
	return h
}

// assertWaited fails t unless a waiter for the lock was seen (else the test did not test).
func (h *vacuumHold) assertWaited(t *testing.T) {
	t.Helper()
	select {
	case <-h.waited:
	default:
		t.Error("nobody waited for the lock: the test did not test")
	}
}

// release lets go of the lock (if still held) and waits until it is.
func (h *vacuumHold) release() {
	close(h.stop)
	<-h.done
}

// moveBehindHold moves the shard with method while holdLikeAutovacuum
// holds its lock from the fence step on (released after after, or at the
// move's end) and returns the hold and the move's error.
func moveBehindHold(t *testing.T, e *env, method Method, after time.Duration, cfg Config) (*vacuumHold, error) {
	t.Helper()
	fenceStep := StepFence
	if method == MethodCopy {
		fenceStep = StepCopyData
	}
	var h *vacuumHold
	cfg.Fencer = newGateFencer(e)
	cfg.BeforeStep = func(ctx context.Context, _ int64, step Step) error {
		if step == fenceStep {
			h = holdLikeAutovacuum(t, e.src, "shard_0005.items", after)
		}
		return nil
	}
	_, err := testMover(t, e, cfg).Move(context.Background(), testShard, "n2", Options{Method: method})
	if h == nil {
		t.Fatalf("move: %v; it never reached the fence", err)
	}
	h.release()
	return h, err
}

// TestFenceOutlastsAutovacuumLock: a lock like an autovacuum worker's on one
// of the shard's tables when the fence comes, released 1.5s after the mover
// starts waiting for it (Postgres cancels autovacuum for a waiter after
// deadlock_timeout; the node role may not cancel it itself), does not fail
// the move, whatever the method (TestMoveUnderLoadNodeRole failed so once
// with 55P03, its shard freshly loaded). The lock is waited for before the
// pause, holding off autovacuum from then on.
func TestFenceOutlastsAutovacuumLock(t *testing.T) {
	for _, method := range []Method{MethodLogical, MethodCopy, MethodTrigger} {
		t.Run(string(method), func(t *testing.T) {
			e := newEnvNodeRole(t)
			fillShard(t, e, 1000)
			// A fence lease shorter than the wait: the lease starts at the pause, not before it.
			h, err := moveBehindHold(t, e, method, 1500*time.Millisecond, Config{FenceLease: time.Second})
			if err != nil {
				t.Fatalf("move behind a lock like autovacuum's: %v", err)
			}
			h.assertWaited(t)
			if got, want := shardState(t, e), (shardRow{"n2", "active", 1}); got != want {
				t.Errorf("catalog shard: %+v, want %+v", got, want)
			}
			if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items`); n != 1000 {
				t.Errorf("target has %d items, want 1000", n)
			}
		})
	}
}

// TestFenceLockHeldAbortsNamingHolder: a lock on one of the shard's tables
// that is never let go aborts the move cleanly, the error carrying 55P03 and
// naming the table and who holds it; the shard stays on its source and
// takes writes.
func TestFenceLockHeldAbortsNamingHolder(t *testing.T) {
	for _, method := range []Method{MethodLogical, MethodCopy} {
		t.Run(string(method), func(t *testing.T) {
			e := newEnvNodeRole(t)
			fillShard(t, e, 100)
			_, err := moveBehindHold(t, e, method, 0, Config{FenceTimeout: 2 * time.Second})
			ctx := context.Background()
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "55P03" {
				t.Fatalf("move: %v; want 55P03", err)
			}
			for _, want := range []string{"55P03", "shard_0005.items", "ShareUpdateExclusiveLock", "pid "} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not name %q", err, want)
				}
			}
			if got, want := shardState(t, e), (shardRow{"n1", "active", 0}); got != want {
				t.Errorf("catalog shard: %+v, want %+v", got, want)
			}
			if n := queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.moves WHERE status = 'aborted'`); n != 1 {
				t.Errorf("move not recorded as aborted")
			}
			if err := appInsert(ctx, e.srcDSN, testSchema, 1); err != nil {
				t.Errorf("write as %s after the abort: %v", appRole, err)
			}
			if n := queryInt(t, e.src, `SELECT count(*) FROM shard_0005.items`); n != 101 {
				t.Errorf("source has %d items, want 101", n)
			}
			assertNoLeftovers(t, e)
		})
	}
}

// TestFollowerSplitOutlastsAutovacuumLock: a follower split's fence waits
// out a lock like autovacuum's on a moved table (released 1.5s after the
// split starts waiting for it) as a move's does, the node role unable to
// cancel autovacuum.
func TestFollowerSplitOutlastsAutovacuumLock(t *testing.T) {
	e := newSplitEnv(t)
	var h *vacuumHold
	m := e.mover(t, Config{Fencer: newSplitGate(t, e), BeforeStep: func(ctx context.Context, _ int64, step Step) error {
		if step == StepStart && h == nil {
			h = holdLikeAutovacuum(t, e.src, "shard_0001.items", 1500*time.Millisecond)
		}
		return nil
	}})
	_, err := m.SplitViaFollower(context.Background(), e.options())
	if h == nil {
		t.Fatalf("split: %v; it never reached the fence", err)
	}
	h.release()
	if err != nil {
		t.Fatalf("split behind a lock like autovacuum's: %v", err)
	}
	h.assertWaited(t)
	want := map[int]string{0: "n1/active/0", 1: "n3/active/1", 2: "n1/active/0", 3: "n3/active/1"}
	if got := e.placement(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("placement %v, want %v", got, want)
	}
}
