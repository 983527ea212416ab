package move

import (
	"context"
	"testing"
)

// TestVerifyConnectionsOpenBeforeTheFence: the comparison after the flip
// runs on connections opened before the fence, so that the backends'
// start (tens of ms of CPU each) does not compete with the shard's held
// transactions when the routers release them to the target.
func TestVerifyConnectionsOpenBeforeTheFence(t *testing.T) {
	e := newEnv(t)
	fillShard(t, e, 1000)
	ctx := context.Background()
	const q = `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = '` + verifyApp + `'`
	seen := map[Step][2]int64{}
	m := testMover(t, e, Config{BeforeStep: func(ctx context.Context, id int64, s Step) error {
		if s == StepFence || s == StepVerify {
			seen[s] = [2]int64{queryInt(t, e.src, q), queryInt(t, e.dst, q)}
		}
		return nil
	}})
	res, err := m.Move(ctx, testShard, "n2", Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Verified {
		t.Fatalf("move not verified: %+v", res)
	}
	// A small shard is compared on one pair of connections.
	if got, want := seen[StepFence], [2]int64{0, 0}; got != want {
		t.Errorf("comparison connections (source, target) before the fence step: %v, want %v", got, want)
	}
	if got, want := seen[StepVerify], [2]int64{1, 1}; got != want {
		t.Errorf("comparison connections (source, target) once flipped, before the comparison: %v, want %v", got, want)
	}
	if got := [2]int64{queryInt(t, e.src, q), queryInt(t, e.dst, q)}; got != [2]int64{0, 0} {
		t.Errorf("comparison connections left open after the move: %v", got)
	}
}
