package move

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// countingFencer counts Fence and Unfence calls.
type countingFencer struct{ fence, unfence atomic.Int32 }

func (f *countingFencer) Fence(context.Context, int) error   { f.fence.Add(1); return nil }
func (f *countingFencer) Unfence(context.Context, int) error { f.unfence.Add(1); return nil }

// TestFenceShardAPI: the fence offered to imports holds the shard with a
// lease under its owner id, flips in one catalog transaction with the
// caller's statements, leaves the shard fenced when those fail (Release
// gives it back unchanged), and ends its context with ErrFenceLost when the
// lease goes (a router released it), after which nothing flips.
func TestFenceShardAPI(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fencer := &countingFencer{}
	m := testMover(t, e, Config{Fencer: fencer, FenceLease: 500 * time.Millisecond})
	mustExec(t, e.cat, `CREATE TABLE pgtenant.flips (shard int)`)
	lease := func() (int64, bool) {
		var owner int64
		err := e.cat.QueryRow(ctx, `SELECT move_id FROM pgtenant.fence_leases WHERE shard = $1`, testShard).Scan(&owner)
		if errors.Is(err, pgx.ErrNoRows) {
			return 0, false
		}
		if err != nil {
			t.Fatal(err)
		}
		return owner, true
	}

	if _, err := m.FenceShard(ctx, testShard, "n2", -1); !errors.Is(err, ErrShardBusy) {
		t.Fatalf("fence on the wrong node: %v", err)
	}
	f, err := m.FenceShard(ctx, testShard, "n1", -1)
	if err != nil {
		t.Fatal(err)
	}
	if st := shardState(t, e); st.state != "fenced" || st.node != "n1" {
		t.Fatalf("after FenceShard: %+v", st)
	}
	if owner, ok := lease(); !ok || owner != -1 || fencer.fence.Load() != 1 {
		t.Fatalf("lease %d %v, %d fences", owner, ok, fencer.fence.Load())
	}
	if _, err := m.FenceShard(ctx, testShard, "n1", -1); !errors.Is(err, ErrShardBusy) {
		t.Fatalf("second fence: %v", err)
	}
	time.Sleep(time.Second) // two lease periods: the renewals keep it
	if _, ok := lease(); !ok {
		t.Fatal("the lease lapsed while its holder lived")
	}

	// The caller's statements fail: nothing flips, the shard stays fenced.
	boom := errors.New("boom")
	err = f.Flip(f.Context(), func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO pgtenant.flips VALUES ($1)`, testShard); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) || f.Ended() {
		t.Fatalf("flip with a failing statement: %v (ended %v)", err, f.Ended())
	}
	if st := shardState(t, e); st.state != "fenced" || st.epoch != 0 || queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.flips`) != 0 {
		t.Fatalf("after a failed flip: %+v", st)
	}
	if err := f.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if st := shardState(t, e); st.state != "active" || st.epoch != 0 {
		t.Fatalf("after Release: %+v", st)
	}
	if _, ok := lease(); ok {
		t.Fatal("lease left after Release")
	}

	// A flip.
	if f, err = m.FenceShard(ctx, testShard, "n1", -1); err != nil {
		t.Fatal(err)
	}
	if err := f.Flip(f.Context(), func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO pgtenant.flips VALUES ($1)`, testShard)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if st := shardState(t, e); st.state != "active" || st.epoch != 1 || st.node != "n1" || queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.flips`) != 1 {
		t.Fatalf("after Flip: %+v", st)
	}
	if _, ok := lease(); ok || f.FlippedAt.IsZero() || fencer.unfence.Load() != 2 {
		t.Fatalf("after Flip: lease %v, flipped at %v, %d unfences", ok, f.FlippedAt, fencer.unfence.Load())
	}

	// The lease goes (a router released the shard): the fence's context
	// ends with ErrFenceLost and the flip is refused.
	if f, err = m.FenceShard(ctx, testShard, "n1", -1); err != nil {
		t.Fatal(err)
	}
	mustExec(t, e.cat, `WITH l AS (DELETE FROM pgtenant.fence_leases WHERE shard = $1) UPDATE pgtenant.shards SET state = 'active' WHERE id = $1`, testShard)
	select {
	case <-f.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the fence's context did not end when its lease went")
	}
	if c := context.Cause(f.Context()); !errors.Is(c, ErrFenceLost) {
		t.Fatalf("cause %v", c)
	}
	if err := f.Flip(ctx, nil); err == nil {
		t.Fatal("flip after the lease went succeeded")
	}
	if st := shardState(t, e); st.state != "active" || st.epoch != 1 {
		t.Fatalf("after a refused flip: %+v", st)
	}
	if err := f.Release(ctx); err != nil {
		t.Fatal(err)
	}
}

// addMapVersion gives the test catalog a map version, bumped by every
// change of the shards (as internal/catalog's trigger does).
func addMapVersion(t *testing.T, e *env) {
	t.Helper()
	mustExec(t, e.cat, `CREATE TABLE pgtenant.map_version (version bigint NOT NULL);
		INSERT INTO pgtenant.map_version VALUES (1);
		CREATE FUNCTION pgtenant.bump() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN UPDATE pgtenant.map_version SET version = version + 1; RETURN NULL; END $$;
		CREATE TRIGGER bump AFTER UPDATE ON pgtenant.shards FOR EACH STATEMENT EXECUTE FUNCTION pgtenant.bump()`)
}

// versionFencer records the map versions FenceShard and FlipStatements
// pass it.
type versionFencer struct {
	countingFencer
	fenced, unfenced atomic.Int64
}

func (f *versionFencer) FenceVersion(_ context.Context, _ int, v int64) error {
	f.fenced.Store(v)
	return nil
}

func (f *versionFencer) UnfenceVersion(_ context.Context, _ int, v int64) error {
	f.unfenced.Store(v)
	return nil
}

// TestFlipStatements: the flip with the caller's statements in its
// pipeline commits them with the shard's flip, and the routers are waited
// for at the map versions the fence and the flip made; a statement that
// changes the wrong number of rows (or fails) rolls everything back with
// its error and leaves the shard fenced; a fence of a shard that is not
// active on the node changes nothing.
func TestFlipStatements(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	fencer := &versionFencer{}
	m := testMover(t, e, Config{Fencer: fencer, FenceLease: 5 * time.Second})
	mustExec(t, e.cat, `CREATE TABLE pgtenant.flips (shard int PRIMARY KEY, state text)`)
	addMapVersion(t, e)
	mustExec(t, e.cat, `INSERT INTO pgtenant.flips VALUES ($1, 'copied')`, testShard)
	version := func() int64 { return queryInt(t, e.cat, `SELECT version FROM pgtenant.map_version`) }
	leases := func() int64 {
		return queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.fence_leases WHERE shard = $1`, testShard)
	}

	if _, err := m.FenceShard(ctx, testShard, "n2", -1); !errors.Is(err, ErrShardBusy) {
		t.Fatalf("fence on the wrong node: %v", err)
	}
	if st := shardState(t, e); st.state != "active" || leases() != 0 {
		t.Fatalf("after a refused fence: %+v, %d leases", st, leases())
	}
	if _, err := m.FenceShard(ctx, 9999, "n1", -1); err == nil {
		t.Fatal("fence of a shard that does not exist")
	}
	f, err := m.FenceShard(ctx, testShard, "n1", -1)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := fencer.fenced.Load(), version(); got != want || fencer.fence.Load() != 0 {
		t.Fatalf("routers waited for version %d (Fence called %d times), the fence made %d", got, fencer.fence.Load(), want)
	}
	if st := shardState(t, e); st.state != "fenced" || leases() != 1 {
		t.Fatalf("after FenceShard: %+v, %d leases", st, leases())
	}

	// The caller's statement finds no row: nothing flips.
	notCopied := errors.New("not copied")
	err = f.FlipStatements(f.Context(),
		FlipStatement{SQL: `UPDATE pgtenant.flips SET state = 'flipped' WHERE shard = $1 AND state = 'copied'`, Args: []any{testShard}, Rows: -1},
		FlipStatement{SQL: `UPDATE pgtenant.flips SET state = 'flipped' WHERE shard = $1 AND state = 'copied'`, Args: []any{testShard}, Rows: 1, Err: notCopied})
	if !errors.Is(err, notCopied) || f.Ended() {
		t.Fatalf("flip with a statement that changed no row: %v (ended %v)", err, f.Ended())
	}
	if st := shardState(t, e); st.state != "fenced" || st.epoch != 0 || leases() != 1 ||
		queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.flips WHERE state = 'copied'`) != 1 {
		t.Fatalf("after a failed flip: %+v, %d leases", st, leases())
	}
	// A statement that fails: its error, nothing flips.
	if err := f.FlipStatements(f.Context(), FlipStatement{SQL: `INSERT INTO pgtenant.flips VALUES ($1, 'again')`, Args: []any{testShard}, Rows: -1}); err == nil || f.Ended() {
		t.Fatalf("flip with a failing statement: %v (ended %v)", err, f.Ended())
	}
	if st := shardState(t, e); st.state != "fenced" || st.epoch != 0 {
		t.Fatalf("after a failed flip: %+v", st)
	}

	// The flip.
	if err := f.FlipStatements(f.Context(), FlipStatement{SQL: `UPDATE pgtenant.flips SET state = 'flipped' WHERE shard = $1 AND state = 'copied'`, Args: []any{testShard}, Rows: 1}); err != nil {
		t.Fatal(err)
	}
	if st := shardState(t, e); st.state != "active" || st.epoch != 1 || st.node != "n1" || leases() != 0 ||
		queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.flips WHERE state = 'flipped'`) != 1 {
		t.Fatalf("after the flip: %+v, %d leases", st, leases())
	}
	if got, want := fencer.unfenced.Load(), version(); got != want || !f.Ended() || f.FlippedAt.IsZero() || fencer.unfence.Load() != 0 {
		t.Fatalf("routers waited for version %d (Unfence called %d times), the flip made %d", got, fencer.unfence.Load(), want)
	}
	if err := f.FlipStatements(ctx); err == nil {
		t.Fatal("a second flip of an ended fence")
	}

	// The lease lapsed and a router released the shard: the flip is refused.
	if f, err = m.FenceShard(ctx, testShard, "n1", -1); err != nil {
		t.Fatal(err)
	}
	mustExec(t, e.cat, `WITH l AS (DELETE FROM pgtenant.fence_leases WHERE shard = $1) UPDATE pgtenant.shards SET state = 'active' WHERE id = $1`, testShard)
	if err := f.FlipStatements(ctx); !errors.Is(err, ErrFenceLost) {
		t.Fatalf("flip after the lease went: %v", err)
	}
	if st := shardState(t, e); st.state != "active" || st.epoch != 1 {
		t.Fatalf("after a refused flip: %+v", st)
	}
	if err := f.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
