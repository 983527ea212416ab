package tenantops

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// vacuumHold stands in for an autovacuum worker on a table: a session
// holding SHARE UPDATE EXCLUSIVE on it that lets go, as Postgres cancels
// autovacuum for a lock request, only once a request has waited for the
// table for deadlock_timeout (1s), or never (forever), or at stop.
type vacuumHold struct {
	waited chan struct{} // closed when a request had waited for the table for 1s
	stop   chan struct{}
	done   chan struct{} // closed when the lock is released
}

func holdLikeAutovacuum(t *testing.T, dsn, table string, forever bool) *vacuumHold {
	t.Helper()
	ctx := context.Background()
	holder, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	watcher, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := holder.Exec(ctx, `BEGIN; LOCK TABLE `+table+` IN SHARE UPDATE EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	h := &vacuumHold{waited: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(h.done)
		defer watcher.Close(ctx)
		defer holder.Close(ctx) // rolls back: lets go
		for {
			var n int
			if err := watcher.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE relation = $1::regclass AND NOT granted
				AND waitstart < clock_timestamp() - (SELECT setting::bigint FROM pg_settings WHERE name = 'deadlock_timeout') * interval '1 ms'`, table).Scan(&n); err != nil {
				t.Errorf("watch the lock's waiters: %v", err)
				return
			}
			if n > 0 {
				select {
				case <-h.waited:
				default:
					close(h.waited)
				}
				if !forever {
					return
				}
			}
			select {
			case <-h.stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	t.Cleanup(h.release)
	return h
}

// release lets go of the lock (if still held) and waits until it is.
func (h *vacuumHold) release() {
	select {
	case <-h.stop:
	default:
		close(h.stop)
	}
	<-h.done
}

// moveBehindHold moves tenant "mover" of shard 0 with opts while
// holdLikeAutovacuum holds its invoices table from the capture step on,
// and returns the hold and the move's error.
func moveBehindHold(t *testing.T, cl *cluster, forever bool, opts MoveOptions) (*vacuumHold, error) {
	t.Helper()
	conn0, schema0 := cl.shardConn(t, 0)
	var h *vacuumHold
	opts.Progress = func(step string) {
		if step == "capture" {
			h = holdLikeAutovacuum(t, conn0.Config().ConnString(), pgx.Identifier{schema0, "invoices"}.Sanitize(), forever)
		}
	}
	_, err := cl.ops.Move(ctxT(t), "mover", opts)
	if h == nil {
		t.Fatalf("move: %v; it never reached the capture", err)
	}
	return h, err
}

// TestMoveOutlastsAutovacuumLock: a lock like an autovacuum worker's on
// one of the source's tables when the capture triggers are created, let go
// only once a lock request waited deadlock_timeout for it (as Postgres
// cancels autovacuum), does not fail the move: the capture waits for
// autovacuum's lock (no writer conflicts with that wait) before its
// triggers' short lock_timeout. Before, every try gave up after 100 ms,
// autovacuum was never cancelled, and the move failed with 55P03 after a
// minute.
func TestMoveOutlastsAutovacuumLock(t *testing.T) {
	ctx := ctxT(t)
	cl := newCluster(t)
	cl.addTenant(t, "mover", 0, 10)
	before := cl.rowsOf(t, "mover", 0)
	h, err := moveBehindHold(t, cl, false, MoveOptions{ToShard: 1})
	h.release()
	if err != nil {
		t.Fatalf("move behind a lock like autovacuum's: %v", err)
	}
	select {
	case <-h.waited:
	default:
		t.Error("nobody waited for the lock: the test did not test")
	}
	if loc, err := cl.cat.Locate(ctx, "mover"); err != nil || loc.Shard.ID != 1 {
		t.Fatalf("tenant after the move: %+v %v", loc, err)
	}
	if got := cl.rowsOf(t, "mover", 1); countAll(got) != countAll(before) {
		t.Errorf("target has %d rows, want %d", countAll(got), countAll(before))
	}
}

// TestMoveLockHeldAbortsNamingHolder: a lock on one of the source's tables
// that is never let go aborts the move cleanly after MoveOptions.LockWait:
// the error carries 55P03 and names the table and who holds it; the
// tenant stays on its source, nothing of the capture is left, and the
// table takes writes.
func TestMoveLockHeldAbortsNamingHolder(t *testing.T) {
	ctx := ctxT(t)
	cl := newCluster(t)
	cl.addTenant(t, "mover", 0, 5)
	conn0, schema0 := cl.shardConn(t, 0)
	before := cl.rowsOf(t, "mover", 0)
	h, err := moveBehindHold(t, cl, true, MoveOptions{ToShard: 1, LockWait: 2 * time.Second})
	if sqlState(err) != "55P03" {
		t.Fatalf("move: %v; want 55P03", err)
	}
	t.Logf("move behind a lock never let go: %v", err)
	for _, want := range []string{"node a", schema0 + ".invoices", "ShareUpdateExclusiveLock", "pid ", "retry once they let go"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	h.release()
	if loc, err := cl.cat.Locate(ctx, "mover"); err != nil || loc.Shard.ID != 0 {
		t.Fatalf("tenant after the aborted move: %+v %v", loc, err)
	}
	if got := cl.rowsOf(t, "mover", 0); countAll(got) != countAll(before) || countAll(cl.rowsOf(t, "mover", 1)) != 0 {
		t.Errorf("rows after the aborted move: source %d (want %d), target %d", countAll(got), countAll(before), countAll(cl.rowsOf(t, "mover", 1)))
	}
	var left int
	if err := conn0.QueryRow(ctx, `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'pgtenant_tmove_%'`).Scan(&left); err != nil || left != 0 {
		t.Errorf("capture schemas left: %d %v", left, err)
	}
	if _, err := conn0.Exec(ctx, `INSERT INTO `+pgx.Identifier{schema0, "invoices"}.Sanitize()+` (tenant_id, customer_id, total) SELECT 'mover', min(id), 1 FROM `+pgx.Identifier{schema0, "customers"}.Sanitize()+` WHERE tenant_id = 'mover'`); err != nil {
		t.Errorf("write after the aborted move: %v", err)
	}
}
