package main

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/proclife"
)

// proc is a pgtenant process started from the built binary.
type proc struct {
	cmd         *exec.Cmd
	out, errOut syncBuffer
	exited      chan error
}

func startProc(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(bin, args...), exited: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.errOut
	exited, err := proclife.Start(p.cmd, syscall.SIGKILL) // dies with this test binary
	if err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- <-exited }()
	t.Cleanup(func() { p.kill() })
	return p
}

// kill SIGKILLs the process (once) and waits for it.
func (p *proc) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// startRouterProc starts `pgtenant router` and waits until it listens.
func startRouterProc(t *testing.T, bin string) (*proc, string) {
	t.Helper()
	port, err := localpg.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	p := startProc(t, bin, "router", "--listen", addr, "--auth", "trust")
	for i := 0; ; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return p, addr
		}
		if i > 300 {
			t.Fatalf("router not listening: %s", p.errOut.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// shardState reads a shard's catalog state and import state.
func shardState(ctx context.Context, cat *pgx.Conn, shard int) (string, string, error) {
	var st, imp string
	err := cat.QueryRow(ctx, `SELECT s.state, i.state FROM pgtenant.shards s JOIN pgtenant.import_shards i ON i.shard = s.id WHERE s.id = $1`, shard).Scan(&st, &imp)
	return st, imp, err
}

// killWhenFenced SIGKILLs p as soon as shard is fenced in the catalog, and
// reports whether it did so while the shard was fenced and not cut over.
func killWhenFenced(t *testing.T, cat *pgx.Conn, shard int, p func(), done <-chan struct{}) bool {
	t.Helper()
	ctx := context.Background()
	for {
		st, imp, err := shardState(ctx, cat, shard)
		if err != nil {
			t.Fatal(err)
		}
		if st == "fenced" && imp == "copied" {
			p()
			return true
		}
		select {
		case <-done:
			return false
		default:
		}
		time.Sleep(time.Millisecond)
	}
}

// TestImportKills (issue 12): `import start` SIGKILLed twice while it
// streams (and started again), an `import cutover` SIGKILLed under its
// fence (the lease lapses, routers serve the shard from the legacy database
// again, a second cutover finishes it), and one of two routers SIGKILLed
// during a cutover (the cutover waits for the live router only and
// finishes). Ledger writers through both routers the whole time: every
// acknowledged write is on the shards exactly once after every shard is
// cut over; the writers of the surviving router saw no error.
func TestImportKills(t *testing.T) {
	bin := buildBinary(t)
	f := newImportFixture(t, 8, 2, 80)
	catDSN, ids, n1, n2 := f.catDSN, f.ids, f.nodes[0], f.nodes[1]
	routerA, addrA := startRouterProc(t, bin)
	_, addrB := startRouterProc(t, bin)
	lA := startLedger(t, addrA, ids, 2, "a")
	lB := startLedger(t, addrB, ids, 2, "b")
	cat, err := pgx.Connect(context.Background(), catDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close(context.Background())

	startImport := func() *proc { return startImportProc(t, bin, "--parallel", "2") }
	// Streaming, killed while writes flow. The restarted stream starts with
	// a backlog (the writes made while no stream ran, and those it could not
	// keep up with): the cutovers below wait for it to be applied (their
	// markers travel behind it). They used to give up after 30s asking
	// whether import start ran, 8 shards in a row in a CI run.
	const streamingKills = 2
	imp := startImport()
	for i := 0; i < streamingKills; i++ {
		lB.waitWrites(t, 300)
		imp.kill()
		lB.waitWrites(t, 100) // writes the stream has not read yet
		imp = startImport()
	}
	lB.waitWrites(t, 100)
	t.Logf("import start killed %d times while streaming and started again (%s)", streamingKills, uptimeLoad())

	// A cutover killed under its fence: the lease lapses, the routers give
	// the shard back to the legacy database.
	killed := -1
	for shard := 0; shard < 8 && killed < 0; shard++ {
		p := startProc(t, bin, "import", "cutover", "--shard", fmt.Sprint(shard))
		done := make(chan struct{})
		go func() { err := <-p.exited; p.exited <- err; close(done) }()
		t1 := time.Now()
		if killWhenFenced(t, cat, shard, p.kill, done) {
			killed = shard
			continue
		}
		// Done before it was caught under its fence: it must have cut the shard over.
		err := <-p.exited
		p.exited <- err
		if err != nil {
			t.Errorf("shard %d: cutover failed (%s, %v): %s%s", shard, time.Since(t1).Round(time.Millisecond), err, p.out.String(), p.errOut.String())
		} else {
			t.Logf("shard %d: cutover not caught under its fence (%s): %s", shard, time.Since(t1).Round(time.Millisecond), p.out.String())
		}
	}
	if killed < 0 {
		select {
		case err := <-imp.exited:
			imp.exited <- err
			t.Logf("import start has exited: %v", err)
		default:
		}
		t.Fatalf("no cutover was caught under its fence; import start's output:\n%s%s", imp.out.String(), imp.errOut.String())
	}
	t0 := time.Now()
	for {
		st, impState, err := shardState(context.Background(), cat, killed)
		if err != nil {
			t.Fatal(err)
		}
		if st == "active" {
			if impState != "copied" {
				t.Fatalf("shard %d after the killed cutover: %s", killed, impState)
			}
			break
		}
		if time.Since(t0) > 30*time.Second {
			t.Fatalf("shard %d still fenced 30s after its cutover was killed", killed)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("shard %d: cutover killed under the fence, served from the legacy database again after %s", killed, time.Since(t0).Round(time.Millisecond))
	lB.waitWrites(t, 100)
	t.Log(strings.TrimSpace(mustRun(t, "import", "cutover", "--shard", fmt.Sprint(killed))))

	// Router A killed during a cutover.
	target := (killed + 1) % 8
	if st, _, _ := shardState(context.Background(), cat, target); st != "active" {
		t.Fatalf("shard %d is %s", target, st)
	}
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cutDone := make(chan string, 1)
	go func() {
		var out, errOut syncBuffer
		code := run(cctx, []string{"import", "cutover", "--shard", fmt.Sprint(target)}, strings.NewReader(""), &out, &errOut)
		cutDone <- fmt.Sprintf("exit %d\n%s%s", code, out.String(), errOut.String())
	}()
	done := make(chan struct{})
	var cutOut string
	go func() { cutOut = <-cutDone; close(done) }()
	if !killWhenFenced(t, cat, target, routerA.kill, done) {
		t.Log("router A killed after the cutover's fence")
		routerA.kill()
	}
	<-done
	t.Log(strings.TrimSpace(cutOut))
	if !strings.HasPrefix(cutOut, "exit 0") {
		// An abort is clean too: the shard is back on the legacy database; cut it over again.
		if st, impState, err := shardState(context.Background(), cat, target); err != nil || st != "active" || impState != "copied" {
			t.Fatalf("shard %d after a failed cutover: %s %s %v", target, st, impState, err)
		}
	}
	lA.stop()
	lA.wg.Wait()

	// The rest, then the ledger.
	lB.waitWrites(t, 100)
	t.Log(strings.TrimSpace(mustRun(t, "import", "cutover", "--all", "--parallel", "2")))
	lB.waitWrites(t, 100)
	lB.finish(t)
	imp.kill()
	mustRun(t, "import", "finish")
	checkOnShards(t, []string{n1, n2}, lA, lB)
	t.Logf("%d writes acknowledged through router A (%d errors after its kill), %d through router B; max latency on B %s; %s",
		len(lA.acks), len(lA.errs), len(lB.acks), lB.maxLat.Round(time.Millisecond), uptimeLoad())
}
