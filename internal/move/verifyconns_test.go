package move

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
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

// TestPacedChecksumEqualsOneScan: the paced comparison reads a table in
// chunks of blocks and adds them up; the count and sum must be those of one
// scan, whatever the table's layout (dead rows, a last chunk past the size
// read first), and a missing table is still reported as undefined.
func TestPacedChecksumEqualsOneScan(t *testing.T) {
	ctx := context.Background()
	dsn := srvA.NewDatabase(t)
	p := pool(t, dsn)
	// Several chunks of 1 MB (128 blocks), then holes.
	mustExec(t, p, `CREATE SCHEMA s; CREATE TABLE s.t (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = off);
		INSERT INTO s.t SELECT i, repeat(md5(i::text), 3) FROM generate_series(1, 200000) i;
		DELETE FROM s.t WHERE id % 7 = 0; UPDATE s.t SET v = 'x' WHERE id % 11 = 0`)
	if blocks := queryInt(t, p, `SELECT pg_relation_size('s.t') / 8192`); blocks < 3*DefaultVerifyChunk/8192 {
		t.Fatalf("table has %d blocks, want several chunks of %d", blocks, DefaultVerifyChunk/8192)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	wantRows, wantSum, err := sumTable(ctx, conn, "s", "t", pacing{pace: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, chunk := range []int64{0, 8 << 20, 3 * 8192} {
		gotRows, gotSum, err := sumTable(ctx, conn, "s", "t", pacing{pace: 0.01, chunk: chunk})
		if err != nil {
			t.Fatal(err)
		}
		if gotRows != wantRows || gotSum != wantSum {
			t.Errorf("paced, chunk %d: %d rows, sum %s; one scan: %d rows, sum %s", chunk, gotRows, gotSum, wantRows, wantSum)
		}
	}
	if n := 200000 - 200000/7; wantRows != int64(n) {
		t.Errorf("rows: %d, want %d", wantRows, n)
	}
	if _, _, err := sumTable(ctx, conn, "s", "missing", pacing{pace: 1}); !isUndefined(err) {
		t.Errorf("missing table: got %v, want 42P01", err)
	}
}
