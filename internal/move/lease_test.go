package move

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgtenant/pgtenant/internal/catalog"
)

// childEnv switches the test binary into a child process that runs one move
// (TestFenceLeaseAfterKill SIGKILLs it under the fence).
const childEnv = "PGTENANT_MOVE_CHILD"

// childSpec is what the child is told.
type childSpec struct {
	CatalogDSN string
	TargetDSN  string
	Shard      int
	To         string
	Lease      time.Duration
}

// runChild runs a move whose target stops applying changes at the fence (a
// transaction of the child holds the target's marker table locked against
// writes), so the mover waits under the fence for the marker until it is
// killed. It prints "fencing" when it reaches the fence.
func runChild(spec string) int {
	var cs childSpec
	if err := json.Unmarshal([]byte(spec), &cs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	cat, err := pgxpool.New(ctx, cs.CatalogDSN)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	// The locking connection must stay reachable: a connection the garbage
	// collector finalizes closes its socket, the server ends its
	// transaction, and the move went on to flip before the kill (seen once).
	var held *pgx.Conn
	defer func() { runtime.KeepAlive(held) }()
	m := New(Config{Catalog: cat, FenceLease: cs.Lease, FenceTimeout: 5 * time.Minute, CatchUpTimeout: 2 * time.Minute,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, nil)),
		BeforeStep: func(ctx context.Context, id int64, s Step) error {
			if s != StepFence {
				return nil
			}
			conn, err := pgx.Connect(ctx, cs.TargetDSN) // held until the process dies
			if err != nil {
				return err
			}
			held = conn
			if _, err := conn.Exec(ctx, `BEGIN; LOCK TABLE pgtenant_move.marker IN EXCLUSIVE MODE`); err != nil {
				return err
			}
			fmt.Println("fencing")
			return nil
		}})
	if _, err := m.Move(ctx, cs.Shard, cs.To, Options{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// startMoverChild starts a child process moving the test shard to n2 and
// returns it once it reports that it reached the fence step.
func startMoverChild(t *testing.T, e *env, lease time.Duration) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	spec, err := json.Marshal(childSpec{CatalogDSN: e.catDSN, TargetDSN: e.dstDSN, Shard: testShard, To: "n2", Lease: lease})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+string(spec))
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "fencing" {
		t.Fatalf("child did not reach the fence: %q\n%s", lines.Text(), stderr.String())
	}
	return cmd, stderr
}

// TestFenceLeaseAfterKill SIGKILLs a mover under the fence: the source
// refuses direct writes (SQLSTATE 25006, superuser included) while the lease
// holds; once it lapses, the catalog gives the shard back to its source, the
// move asks for --resume, the source takes writes again, and Resume
// completes the move with every row.
func TestFenceLeaseAfterKill(t *testing.T) {
	e := newEnv(t)
	fillShard(t, e, 2000)
	ctx := context.Background()
	const lease = 2 * time.Second
	cmd, stderr := startMoverChild(t, e, lease)

	// Wait until the source is fenced (the lease row exists), then kill.
	deadline := time.Now().Add(time.Minute)
	for {
		var n int64
		err := e.src.QueryRow(ctx, `SELECT count(*) FROM pgtenant_move.fence WHERE schema_name = $1 AND expires_at > now()`, testSchema).Scan(&n)
		if err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("source never fenced (%v)\n%s", err, stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	cmd.Wait()

	cat := catalog.New(e.catDSN, nil)
	if err := cat.Open(ctx); err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	// Under the fence: no direct write reaches the source, and the lease still holds.
	var pgErr *pgconn.PgError
	if _, err := e.src.Exec(ctx, `INSERT INTO shard_0005.items (account_id, writer, n) VALUES (1, 5, 1)`); !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Errorf("superuser write to the fenced source: got %v, want SQLSTATE 25006", err)
	}
	if err := appInsert(ctx, e.srcDSN, testSchema, 2); !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Errorf("app write to the fenced source: got %v, want SQLSTATE 25006", err)
	}
	if got := shardState(t, e); got.state != "fenced" {
		t.Fatalf("shard right after the kill: %+v, want fenced", got)
	}
	if rel, err := cat.ReleaseExpiredFences(ctx); err != nil || len(rel) != 0 {
		t.Fatalf("release while the lease holds: %v %v, want nothing", rel, err)
	}

	// The lease lapses; releasing (as a router does every second) gives the shard back.
	var released []catalog.ExpiredFence
	for len(released) == 0 {
		if time.Since(killed) > time.Minute {
			t.Fatal("the fence was never released")
		}
		time.Sleep(100 * time.Millisecond)
		var err error
		if released, err = cat.ReleaseExpiredFences(ctx); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("fence released %s after the kill (lease %s)", time.Since(killed).Round(time.Millisecond), lease)
	list, err := testMover(t, e, Config{}).List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(released) != 1 || released[0].Shard != testShard || released[0].Node != "n1" || released[0].Move != list[0].ID {
		t.Errorf("released %+v, want shard %d on n1, move %d", released, testShard, list[0].ID)
	}
	if got, want := shardState(t, e), (shardRow{"n1", "active", 0}); got != want {
		t.Errorf("shard after the lapse: %+v, want %+v", got, want)
	}
	if in := list[0]; in.Status != "running" || !strings.Contains(in.Error, "--resume") {
		t.Errorf("move after the lapse: status %s, error %q; want running and a hint to resume", in.Status, in.Error)
	}
	// The source takes writes again, from anyone.
	mustExec(t, e.src, `INSERT INTO shard_0005.items (account_id, writer, n) SELECT 1, 9, i FROM generate_series(1, 100) i`)
	if err := appInsert(ctx, e.srcDSN, testSchema, 3); err != nil {
		t.Errorf("app write to the released source: %v", err)
	}

	// Resume completes the move with every row, those written after the release included.
	if _, err := testMover(t, e, Config{}).Resume(ctx, list[0].ID); err != nil {
		t.Fatalf("resume: %v", err)
	}
	if got, want := shardState(t, e), (shardRow{"n2", "active", 1}); got != want {
		t.Errorf("shard after resume: %+v, want %+v", got, want)
	}
	if n := queryInt(t, e.dst, `SELECT count(*) FROM shard_0005.items`); n != 2101 {
		t.Errorf("target has %d items, want 2101", n)
	}
	if n := queryInt(t, e.cat, `SELECT count(*) FROM pgtenant.fence_leases`); n != 0 {
		t.Errorf("%d fence leases left in the catalog", n)
	}
	if n := queryInt(t, e.src, `SELECT count(*) FROM pgtenant_move.fence`); n != 0 {
		t.Errorf("%d source leases left", n)
	}
	assertNoLeftovers(t, e)
}
