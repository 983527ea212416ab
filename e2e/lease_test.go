package e2e

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

	"github.com/pgtenant/pgtenant/internal/catalog"
	"github.com/pgtenant/pgtenant/internal/move"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/router"
)

// moverChildEnv switches the test binary into a mover process (wired as
// `pgtenant shard move` is: catalog, RouterFencer, default fence lease) that
// TestMoveFenceLeaseAfterKill SIGKILLs under the fence.
const moverChildEnv = "PGTENANT_E2E_MOVER"

type moverChildSpec struct {
	CatalogDSN, TargetDSN string
	Shard                 int
	To                    string
}

// runMoverChild moves a shard; at the fence step it locks the target's marker
// table against writes in a transaction it never ends, so the mover then waits under the fence
// (source write-protected, routers holding the shard) for a marker that
// never comes, until it is killed. It prints "fencing" at that step.
func runMoverChild(spec string) int {
	var cs moverChildSpec
	if err := json.Unmarshal([]byte(spec), &cs); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx := context.Background()
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cat := catalog.New(cs.CatalogDSN, logger)
	if err := cat.Open(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var held []*pgx.Conn // the marker table locks, see BeforeStep
	defer runtime.KeepAlive(&held)
	m := move.New(move.Config{Catalog: cat.Pool(), Fencer: catalog.RouterFencer{Catalog: cat}, Logger: logger,
		FenceTimeout: 5 * time.Minute, CatchUpTimeout: 2 * time.Minute,
		BeforeStep: func(ctx context.Context, id int64, s move.Step) error {
			if s != move.StepFence {
				return nil
			}
			conn, err := pgx.Connect(ctx, cs.TargetDSN)
			if err != nil {
				return err
			}
			// Held until the process dies: kept reachable, since a socket the
			// GC finds unreachable is closed by its finalizer, and the lock
			// with it (the move then flipped before the kill: a flaky test).
			held = append(held, conn)
			if _, err := conn.Exec(ctx, `BEGIN; LOCK TABLE pgtenant_move.marker IN EXCLUSIVE MODE`); err != nil {
				return err
			}
			fmt.Println("fencing")
			return nil
		}})
	if _, err := m.Move(ctx, cs.Shard, cs.To, move.Options{}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// TestMoveFenceLeaseAfterKill is the fence lease acceptance test: a mover
// process is SIGKILLed under the fence while clients write through the
// router. While the lease holds, writes sent straight to the source are
// refused (25006); then, with only the routers running, the shard serves again
// from its source (the time from the kill to the first transaction through the
// router that succeeds is logged), the move waits for --resume, and resuming
// it completes the move. No acknowledged write is lost (ledgers).
func TestMoveFenceLeaseAfterKill(t *testing.T) {
	ctx := context.Background()
	c := newMoveCluster(t, moveOpts{router: router.Config{HoldTimeout: 10 * time.Second}})
	c.fill(ctx, movingShard, 5_000)
	w := c.startClients(movingShard, 4, 4, 2*time.Millisecond)
	w.waitReady(t, time.Minute) // sessions open, tenants looked up
	defer w.stop()
	time.Sleep(300 * time.Millisecond)

	spec, err := json.Marshal(moverChildSpec{CatalogDSN: c.catDSN, TargetDSN: c.nodeDSN["b"], Shard: movingShard, To: "b"})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), moverChildEnv+"="+string(spec))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if lines := bufio.NewScanner(out); !lines.Scan() || lines.Text() != "fencing" {
		t.Fatalf("mover did not reach the fence\n%s", stderr.String())
	}
	// Kill once the source is write-protected (the whole fence is taken).
	schema := placement.SchemaName(movingShard)
	deadline := time.Now().Add(time.Minute)
	for {
		var n int
		err := c.nodes["a"].QueryRow(ctx, `SELECT count(*) FROM pgtenant_move.fence WHERE schema_name = $1 AND expires_at > now()`, schema).Scan(&n)
		if err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the source was never fenced (%v)\n%s", err, stderr.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	cmd.Wait()

	// While the lease holds, nothing written straight to the source gets in.
	var pgErr *pgconn.PgError
	_, err = c.nodes["a"].Exec(ctx, fmt.Sprintf(`INSERT INTO %s.kv (client, k, val, tenant, account_id) VALUES (9999, 1, 1, 'direct', 1)`, pgx.Identifier{schema}.Sanitize()))
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Errorf("direct write to the fenced source: got %v, want SQLSTATE 25006", err)
	}

	// A client through the router: its transaction is held, then served from the source.
	probe, err := pgx.Connect(ctx, routerDSN(c.routerAddr(0), c.tenants[movingShard][0]))
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close(ctx)
	var served time.Duration
	for i := 0; ; i++ {
		_, err := probe.Exec(ctx, `INSERT INTO kv (client, k, val, tenant, account_id) VALUES (9998, $1, 1, 'probe', 1)`, i)
		if err == nil {
			served = time.Since(killed)
			break
		}
		if time.Since(killed) > time.Minute {
			t.Fatalf("the shard never served again after the mover died: %v", err)
		}
		t.Logf("probe: %v", err)
	}
	node, state := c.shardNode(ctx, movingShard)
	t.Logf("the shard served again from node %s %s after the mover was killed (lease %s)", node, served.Round(time.Millisecond), move.DefaultFenceLease)
	if node != "a" || state != placement.StateActive {
		t.Errorf("shard after the lease lapsed: %s %s, want a active", node, state)
	}
	m := c.mover(move.Config{})
	list, err := m.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("moves: %+v %v", list, err)
	}
	if list[0].Status != "running" || !strings.Contains(list[0].Error, "--resume") {
		t.Errorf("move after the lease lapsed: %s %q, want running with a hint to resume", list[0].Status, list[0].Error)
	}
	// The source takes writes again, also those sent straight to it.
	if _, err := c.nodes["a"].Exec(ctx, fmt.Sprintf(`INSERT INTO %s.kv (client, k, val, tenant, account_id) VALUES (9999, 1, 1, 'direct', 1)`, pgx.Identifier{schema}.Sanitize())); err != nil {
		t.Errorf("direct write to the released source: %v", err)
	}
	time.Sleep(500 * time.Millisecond) // clients write to the source meanwhile

	// --resume completes the move.
	res, err := m.Resume(ctx, list[0].ID)
	if err != nil {
		t.Fatalf("resume: %v", err)
	}
	t.Logf("resumed: pause %s", res.Pause)
	time.Sleep(300 * time.Millisecond)
	w.stop()
	if node, state := c.shardNode(ctx, movingShard); node != "b" || state != placement.StateActive {
		t.Errorf("shard after resume: %s %s, want b active", node, state)
	}
	var n int
	if err := c.nodes["b"].QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM %s.kv WHERE client IN (9998, 9999)`, pgx.Identifier{schema}.Sanitize())).Scan(&n); err != nil || n == 0 {
		t.Errorf("probe and direct rows on the target: %d (%v)", n, err)
	}
	c.verify(ctx, w, nil)
	c.assertNoReplicationLeft(ctx)
}
