package move

import (
	"context"
	"errors"
	"testing"
)

// TestFlipNeedsLiveLease: the flip (one catalog statement) moves a fenced
// shard only with a live lease of its move, consuming the lease and
// recording the step; a lapsed lease or a shard no longer fenced on the
// source changes nothing, and the lease is left for the routers to release.
func TestFlipNeedsLiveLease(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name       string
		state      string
		expires    string // fence_leases.expires_at
		wantErr    error
		wantLeased bool // errLeaseLost expected
	}{
		{"live lease", "fenced", "now() + interval '5 seconds'", nil, false},
		{"lapsed lease", "fenced", "now() - interval '1 second'", ErrFlipConflict, true},
		{"not fenced", "active", "now() + interval '5 seconds'", ErrFlipConflict, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			m := testMover(t, e, Config{})
			mv := &moveRun{Info: Info{Shard: testShard, Source: "n1", Target: "n2", Step: StepFence}}
			if err := m.cfg.Catalog.QueryRow(ctx, `INSERT INTO pgtenant.moves (shard, source_node, target_node, step) VALUES ($1, 'n1', 'n2', 'fence') RETURNING id`, testShard).Scan(&mv.ID); err != nil {
				t.Fatal(err)
			}
			mustExec(t, e.cat, `UPDATE pgtenant.shards SET state = $2 WHERE id = $1`, testShard, tc.state)
			mustExec(t, e.cat, `INSERT INTO pgtenant.fence_leases (shard, move_id, expires_at) VALUES ($1, $2, `+tc.expires+`)`, testShard, mv.ID)
			before := shardState(t, e)

			err := m.flip(ctx, mv)
			after := shardState(t, e)
			leases := queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.fence_leases WHERE shard = $1`, testShard)
			step := ""
			if err := e.cat.QueryRow(ctx, `SELECT step FROM pgtenant.moves WHERE id = $1`, mv.ID).Scan(&step); err != nil {
				t.Fatal(err)
			}
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("flip: %v", err)
				}
				if after.node != "n2" || after.state != "active" || after.epoch != before.epoch+1 || leases != 0 || step != string(StepFlipped) || mv.Step != StepFlipped {
					t.Fatalf("after the flip: shard %+v (before %+v), %d leases, step %q", after, before, leases, step)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || errors.Is(err, errLeaseLost) != tc.wantLeased {
				t.Fatalf("flip: %v; want %v (lease lost %v)", err, tc.wantErr, tc.wantLeased)
			}
			if after != before || leases != 1 || step != "fence" {
				t.Fatalf("a refused flip changed something: shard %+v (before %+v), %d leases, step %q", after, before, leases, step)
			}
		})
	}
}
