// Command membench measures the router's memory under many clients that each
// send one large message (issue 10, defect 6). It starts a local Postgres
// cluster with one shard, runs the router in a child process (so that the
// clients' own buffers do not count), connects -clients clients that each
// send one Query of -size bytes at the same moment, and meanwhile runs one
// client sending small queries. It prints the router's peak RSS (VmHWM and
// sampled VmRSS), how many large messages were served and how many were
// refused with 53200, and the small client's latencies. See bench/README.md.
//
//	go run ./bench/cmd/membench [-clients 500] [-size 33554432] [-budget 268435456] [-wait 10s]
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgtenant/pgtenant/internal/localpg"
	"github.com/pgtenant/pgtenant/internal/placement"
	"github.com/pgtenant/pgtenant/internal/proclife"
	"github.com/pgtenant/pgtenant/internal/router"
	"github.com/pgtenant/pgtenant/internal/wire"
)

type options struct {
	clients  int
	size     int
	budget   int64
	wait     time.Duration
	poolSize int
}

func main() {
	var o options
	child := flag.Bool("child", false, "internal: run the router and print its address")
	dsn := flag.String("dsn", "", "internal: the node's DSN (child mode)")
	flag.IntVar(&o.clients, "clients", 500, "clients sending one large message each, all at once")
	flag.IntVar(&o.size, "size", 32<<20, "size of each large message, in bytes")
	flag.Int64Var(&o.budget, "budget", router.DefaultMaxMessageMemory, "the router's max_message_memory in bytes (-1: no bound)")
	flag.DurationVar(&o.wait, "wait", 10*time.Second, "the router's message_memory_wait")
	flag.IntVar(&o.poolSize, "pool", 20, "backend connections per node")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	if *child {
		err = runRouter(ctx, o, *dsn)
	} else {
		err = run(ctx, o, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "membench:", err)
		os.Exit(1)
	}
}

// runRouter is the child: a router in front of the node with one shard and
// tenant "t", serving until its stdin closes.
func runRouter(ctx context.Context, o options, dsn string) error {
	m := &placement.Map{Version: 1, Nodes: map[string]placement.Node{"a": {Name: "a", DSN: dsn}},
		Shards:  []placement.Shard{{ID: 0, Schema: placement.SchemaName(0), Node: "a", State: placement.StateActive, Epoch: 1}},
		Tenants: map[string]int{"t": 0}}
	srv := router.New(router.Config{Listen: "127.0.0.1:0", Auth: router.AuthTrust, MaxClients: o.clients + 10,
		Pool: router.PoolConfig{MaxSize: o.poolSize, WaitTimeout: time.Hour}, MaxMessageMemory: o.budget, MessageMemoryWait: o.wait,
		StartupTimeout: time.Minute})
	if err := srv.SetMap(ctx, m); err != nil {
		return err
	}
	if err := srv.Open(ctx); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	fmt.Printf("ADDR %s\n", srv.Addr())
	return srv.Serve(ctx)
}

// result is what one large client saw.
type result struct {
	served  bool
	code    string // SQLSTATE of a refusal
	err     error
	elapsed time.Duration
}

func run(ctx context.Context, o options, w io.Writer) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	root, err := os.MkdirTemp("", "membench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)
	if err := os.Chmod(root, 0o755); err != nil {
		return err
	}
	c := localpg.New(filepath.Join(root, "a"), 0)
	c.Settings = map[string]string{"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "100"}
	if err := c.Init(ctx); err != nil {
		return fmt.Errorf("init node: %w", err)
	}
	if err := c.Start(ctx); err != nil {
		return fmt.Errorf("start node: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c.Stop(sctx)
	}()
	if err := setupNode(ctx, c); err != nil {
		return err
	}

	// The router, in a child process.
	self, err := os.Executable()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, self, "-child", "-dsn", c.DSN("bench"), "-clients", strconv.Itoa(o.clients),
		"-budget", strconv.FormatInt(o.budget, 10), "-wait", o.wait.String(), "-pool", strconv.Itoa(o.poolSize))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = os.Stderr
	// The router child dies with the bench, even a killed one (proclife).
	exited, err := proclife.Start(cmd, syscall.SIGKILL)
	if err != nil {
		return err
	}
	defer func() {
		stdin.Close()
		<-exited
	}()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return fmt.Errorf("router child: %w", err)
	}
	addr := strings.TrimSpace(strings.TrimPrefix(line, "ADDR "))
	host, port, _ := strings.Cut(addr, ":")
	connStr := fmt.Sprintf("host=%s port=%s user=postgres dbname=bench sslmode=disable options='-c pgtenant.tenant=t'", host, port)
	pid := cmd.Process.Pid
	log.Info("router started", "addr", addr, "pid", pid)

	// Warm up: a few queries, then the baseline RSS.
	small, err := pgx.Connect(ctx, connStr)
	if err != nil {
		return err
	}
	defer small.Close(ctx)
	for i := 0; i < 100; i++ {
		if _, err := small.Exec(ctx, "SELECT 1"); err != nil {
			return err
		}
	}
	baseline := rss(pid, "VmRSS")

	// Connect every large client first.
	conns := make([]*pgconn.HijackedConn, o.clients)
	var cwg sync.WaitGroup
	var cerr atomic.Pointer[error]
	sem := make(chan struct{}, 16)
	for i := range conns {
		cwg.Add(1)
		sem <- struct{}{}
		go func() {
			defer cwg.Done()
			defer func() { <-sem }()
			pc, err := pgconn.Connect(ctx, connStr)
			if err == nil {
				conns[i], err = pc.Hijack()
			}
			if err != nil {
				cerr.Store(&err)
			}
		}()
	}
	cwg.Wait()
	if e := cerr.Load(); e != nil {
		return fmt.Errorf("connect large clients: %w", *e)
	}
	connected := rss(pid, "VmRSS")
	log.Info("clients connected", "clients", o.clients, "rss_mib", connected>>20)

	// One shared frame: SELECT length('xxx…') of o.size bytes in all.
	lit := o.size - len("SELECT length('')") - 1
	frame := wire.AppendQuery(nil, "SELECT length('"+strings.Repeat("x", lit)+"')")
	want := strconv.Itoa(lit)

	// Sample the router's RSS while the attack runs.
	var peak atomic.Int64
	sampleDone := make(chan struct{})
	stopSampling := make(chan struct{})
	go func() {
		defer close(sampleDone)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if r := rss(pid, "VmRSS"); r > peak.Load() {
				peak.Store(r)
			}
			select {
			case <-stopSampling:
				return
			case <-t.C:
			}
		}
	}()
	start := time.Now()
	// The small client keeps querying meanwhile.
	var lat []time.Duration
	var worstAt time.Duration // when the slowest small query started, from the attack's start
	var smallErr error
	smallStop := make(chan struct{})
	smallDone := make(chan struct{})
	go func() {
		defer close(smallDone)
		for {
			select {
			case <-smallStop:
				return
			default:
			}
			t0 := time.Now()
			var n int
			if err := small.QueryRow(ctx, "SELECT 1").Scan(&n); err != nil {
				smallErr = err
				return
			}
			d := time.Since(t0)
			if len(lat) == 0 || d > slices.Max(lat) {
				worstAt = t0.Sub(start)
			}
			lat = append(lat, d)
			time.Sleep(5 * time.Millisecond)
		}
	}()

	results := make([]result, o.clients)
	var wg sync.WaitGroup
	for i, hc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer hc.Conn.Close()
			results[i] = bigClient(hc, frame, want)
			results[i].elapsed = time.Since(start)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(smallStop)
	<-smallDone
	close(stopSampling)
	<-sampleDone
	hwm := rss(pid, "VmHWM")

	var served, refused, failed int
	var lastServed time.Duration
	codes := map[string]int{}
	for _, r := range results {
		switch {
		case r.served:
			served++
			lastServed = max(lastServed, r.elapsed)
		case r.code != "":
			refused++
			codes[r.code]++
		default:
			failed++
			if failed <= 3 {
				log.Warn("large client failed", "err", r.err)
			}
		}
	}
	budget := "none"
	if o.budget > 0 {
		budget = fmt.Sprintf("%d MiB", o.budget>>20)
	}
	fmt.Fprintf(w, "clients %d × %d MiB, budget %s, wait %s, pool %d\n", o.clients, o.size>>20, budget, o.wait, o.poolSize)
	fmt.Fprintf(w, "router RSS: %d MiB idle, %d MiB with the clients connected, peak %d MiB sampled, VmHWM %d MiB\n",
		baseline>>20, connected>>20, peak.Load()>>20, hwm>>20)
	fmt.Fprintf(w, "large messages: %d served (last after %s), %d refused %v, %d failed otherwise; all done in %s\n",
		served, lastServed.Round(time.Millisecond), refused, codes, failed, elapsed.Round(time.Millisecond))
	slices.Sort(lat)
	if smallErr != nil {
		fmt.Fprintf(w, "small client: FAILED after %d queries: %v\n", len(lat), smallErr)
	} else if len(lat) > 0 {
		q := func(p float64) time.Duration { return lat[int(p*float64(len(lat)-1))].Round(10 * time.Microsecond) }
		fmt.Fprintf(w, "small client: %d queries served meanwhile, latency p50 %s p99 %s max %s (at %s)\n", len(lat), q(0.5), q(0.99),
			lat[len(lat)-1].Round(10*time.Microsecond), worstAt.Round(time.Millisecond))
	}
	return nil
}

// bigClient sends frame and reads the answer.
func bigClient(hc *pgconn.HijackedConn, frame []byte, want string) result {
	if _, err := hc.Conn.Write(frame); err != nil {
		return result{err: fmt.Errorf("send: %w", err)}
	}
	var r result
	for {
		m, err := hc.Frontend.Receive()
		if err != nil {
			return result{err: fmt.Errorf("receive: %w", err)}
		}
		switch m := m.(type) {
		case *pgproto3.DataRow:
			if string(m.Values[0]) == want {
				r.served = true
			} else {
				r.err = fmt.Errorf("answer %q, want %q", m.Values[0], want)
			}
		case *pgproto3.ErrorResponse:
			r.code = m.Code
			if m.Severity == "FATAL" {
				return r
			}
		case *pgproto3.ReadyForQuery:
			if !r.served && r.code == "" && r.err == nil {
				r.err = errors.New("no answer")
			}
			return r
		}
	}
}

func setupNode(ctx context.Context, c *localpg.Cluster) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE bench"); err != nil {
		return err
	}
	conn.Close(ctx)
	conn, err = pgx.Connect(ctx, c.DSN("bench"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{placement.SchemaName(0)}.Sanitize())
	return err
}

// rss returns a /proc/PID/status memory field (VmRSS, VmHWM) in bytes.
func rss(pid int, field string) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
