package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"
)

// The "many clients" and latency cases (-many, -latency): pgbench with
// hundreds or thousands of client connections against pgbouncer and the
// router (1 node), the memory each proxy holds per idle client, and the
// latency distribution at half of the router's saturation throughput.

// manyResult is one proxy at one client count.
type manyResult struct {
	round            int
	target           string
	clients          int
	tps, latency     float64
	connMS           float64 // pgbench's initial connection time, all N clients
	proxyUS, proxyCS float64
	rssPerIdleKiB    float64 // -1 when not measured
	// stackKiB and heapKiB split the in-process router's memory per idle
	// client (runtime.MemStats StackInuse and HeapInuse deltas); 0 for
	// pgbouncer.
	stackKiB, heapKiB float64
	err               string
}

// latencyResult is one rate-limited run.
type latencyResult struct {
	round         int
	target        string
	rate          float64 // transactions per second asked for
	tps           float64 // reached
	p50, p99, avg float64 // ms, from pgbench's per-transaction log
	p999, max     float64
	err           string
}

// proxyTarget is a proxy the many-clients cases compare.
type proxyTarget struct {
	name, addr, script string
	pid                int // 0 for the in-process router
}

// holdIdle opens n idle client connections to addr from a child process
// (this program run with -hold), so that their client-side memory is not in
// the router's process, and returns when all of them are ready; the returned
// function closes them.
func holdIdle(ctx context.Context, addr, db string, n int) (func(), error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, self, "-hold", addr, "-hold-clients", strconv.Itoa(n), "-hold-db", db)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop := func() {
		stdin.Close()
		cmd.Wait()
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		stop()
		return nil, fmt.Errorf("idle clients: %q: %v", line, err)
	}
	return stop, nil
}

// runHold is the child of holdIdle: it connects n clients (startup, trust
// authentication, up to ReadyForQuery), prints "ready", and keeps them open
// until its standard input closes.
func runHold(addr, db string, n int) error {
	conns := make([]net.Conn, n)
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := startupConn(addr, db)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		c.Close()
	}
	return nil
}

// startupConn opens a client connection as user postgres with trust
// authentication and reads up to the first ReadyForQuery.
func startupConn(addr, db string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return nil, err
	}
	var body []byte
	body = binary.BigEndian.AppendUint32(body, 196608)
	for _, kv := range []string{"user", "postgres", "database", db} {
		body = append(append(body, kv...), 0)
	}
	body = append(body, 0)
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(body)+4))
	if _, err := c.Write(append(msg, body...)); err != nil {
		c.Close()
		return nil, err
	}
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReader(c)
	for {
		var hdr [5]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			c.Close()
			return nil, fmt.Errorf("startup: %w", err)
		}
		b := make([]byte, binary.BigEndian.Uint32(hdr[1:])-4)
		if _, err := io.ReadFull(r, b); err != nil {
			c.Close()
			return nil, err
		}
		switch hdr[0] {
		case 'E':
			c.Close()
			return nil, fmt.Errorf("startup refused: %q", b)
		case 'Z':
			c.SetReadDeadline(time.Time{})
			return c, nil
		}
	}
}

// rssKiB is the resident memory of process pid (0: this process) in KiB.
func rssKiB(pid int) float64 {
	p := "/proc/self/status"
	if pid != 0 {
		p = fmt.Sprintf("/proc/%d/status", pid)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && k == "VmRSS" {
			f := strings.Fields(v)
			if len(f) > 0 {
				n, _ := strconv.ParseFloat(f[0], 64)
				return n
			}
		}
	}
	return 0
}

// settle returns freed memory to the OS before an RSS reading of this
// process, so that garbage does not count as the router's.
func settle(pid int) {
	if pid == 0 {
		runtime.GC()
		debug.FreeOSMemory()
	}
	time.Sleep(200 * time.Millisecond)
}

// runMany runs, per client count and round, pgbench with that many clients
// against each proxy, and measures each proxy's memory per idle client.
func runMany(ctx context.Context, pgbench string, targets []proxyTarget, counts []int, o options, rowsPer int) []manyResult {
	var out []manyResult
	for round := 1; round <= max(o.rounds, 1); round++ {
		for _, n := range counts {
			for _, tg := range targets {
				r := manyResult{round: round, target: tg.name, clients: n, rssPerIdleKiB: -1}
				log := fmt.Sprintf("many clients: round %d, %d clients, %s", round, n, tg.name)
				fmt.Fprintln(os.Stderr, log)
				// Memory per idle client.
				settle(tg.pid)
				before := rssKiB(tg.pid)
				var m0, m1 runtime.MemStats
				runtime.ReadMemStats(&m0)
				stop, err := holdIdle(ctx, tg.addr, "bench", n)
				if err != nil {
					r.err = err.Error()
					out = append(out, r)
					continue
				}
				// The router parks clients idle for 0.25-0.5 s (their
				// goroutines end): measured once they are.
				time.Sleep(time.Second)
				settle(tg.pid)
				r.rssPerIdleKiB = (rssKiB(tg.pid) - before) / float64(n)
				if tg.pid == 0 {
					runtime.ReadMemStats(&m1)
					perClient := func(a, b uint64) float64 { return (float64(b) - float64(a)) / 1024 / float64(n) }
					r.stackKiB, r.heapKiB = perClient(m0.StackInuse, m1.StackInuse), perClient(m0.HeapInuse, m1.HeapInuse)
				}
				stop()
				out = append(out, manyThroughput(ctx, pgbench, tg, n, o, rowsPer, r, ""))
				if tg.pid != 0 {
					continue
				}
				// The router again under each runtime setting (-variants).
				for _, v := range o.variants {
					vr := manyResult{round: round, target: tg.name + " " + v, clients: n, rssPerIdleKiB: -1}
					restore, _ := applyVariant(v) // checked in main
					out = append(out, manyThroughput(ctx, pgbench, tg, n, o, rowsPer, vr, v))
					restore()
				}
			}
		}
	}
	return out
}

// manyThroughput runs pgbench with n active clients against tg and fills
// in r's throughput and the proxy's CPU per transaction; variant names the
// runtime setting in force ("": none), for the profile's file name.
func manyThroughput(ctx context.Context, pgbench string, tg proxyTarget, n int, o options, rowsPer int, r manyResult, variant string) manyResult {
	log := fmt.Sprintf("many clients: round %d, %d clients, %s", r.round, n, r.target)
	oc := o
	oc.clients = n
	// pgbench's -T counts its connecting too: thousands of
	// connections take seconds on a loaded machine.
	oc.duration = o.duration + time.Duration(n/100)*time.Second
	self0, cs0 := proxyUsage(tg.pid)
	suffix := fmt.Sprintf("many%d", n)
	if variant != "" {
		suffix += "." + strings.ReplaceAll(variant, "=", "")
	}
	stopProf := profileCase(o, tg, r.round, suffix)
	res, err := runPgbench(ctx, pgbench, tg.addr, "bench", []string{filepath.Join(o.scripts, tg.script)}, "simple", oc, rowsPer)
	stopProf()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", log, err)
		r.err = firstLine(err.Error())
		return r
	}
	self1, cs1 := proxyUsage(tg.pid)
	r.tps, r.latency, r.connMS = res.tps, res.latency, res.connMS
	if res.txns > 0 {
		r.proxyUS = (self1 - self0).Seconds() * 1e6 / res.txns
		r.proxyCS = float64(cs1-cs0) / res.txns
	}
	return r
}

// profileCase starts, in round 1 for the in-process router, a CPU profile
// (-cpuprofile FILE: FILE.suffix) and an execution trace (-trace FILE:
// FILE.suffix) of one many-clients or latency case; the returned function
// stops them.
func profileCase(o options, tg proxyTarget, round int, suffix string) func() {
	if tg.pid != 0 || round != 1 {
		return func() {}
	}
	var stops []func()
	if o.cpuprofile != "" {
		if f, err := os.Create(o.cpuprofile + "." + suffix); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				stops = append(stops, func() { pprof.StopCPUProfile(); f.Close() })
			} else {
				f.Close()
			}
		}
	}
	if o.trace != "" {
		if stop, err := startTrace(o.trace + "." + suffix); err == nil {
			stops = append(stops, stop)
		}
	}
	return func() {
		for _, f := range stops {
			f()
		}
	}
}

// proxyUsage is the CPU time and context switches so far of the proxy
// process pid (0: this process, the in-process router).
func proxyUsage(pid int) (time.Duration, int64) {
	if pid == 0 {
		return selfCPU(), selfSwitches()
	}
	return procCPU([]int{pid}), procSwitches(pid)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// runLatency measures, per round, the router's saturation throughput with
// o.clients clients (simple protocol), then runs every target at half of it
// (pgbench -R) and reads the latency of each transaction from pgbench's log.
func runLatency(ctx context.Context, pgbench, root string, targets []proxyTarget, o options, rowsPer int) ([]latencyResult, error) {
	var out []latencyResult
	for round := 1; round <= max(o.rounds, 1); round++ {
		fmt.Fprintf(os.Stderr, "latency: round %d, saturation of %s\n", round, targets[len(targets)-1].name)
		router := targets[len(targets)-1]
		sat, err := runPgbench(ctx, pgbench, router.addr, "bench", []string{filepath.Join(o.scripts, router.script)}, "simple", o, rowsPer)
		if err != nil {
			return nil, err
		}
		rate := sat.tps / 2
		for _, tg := range targets {
			fmt.Fprintf(os.Stderr, "latency: round %d, %s at %.0f TPS\n", round, tg.name, rate)
			r := latencyResult{round: round, target: tg.name, rate: rate}
			dir, err := os.MkdirTemp(root, "latency-")
			if err != nil {
				return nil, err
			}
			oc := o
			oc.extra = []string{"-R", fmt.Sprintf("%.0f", rate), "-l", "--log-prefix", filepath.Join(dir, "tx")}
			stopProf := profileCase(o, tg, round, "latency")
			res, err := runPgbench(ctx, pgbench, tg.addr, "bench", []string{filepath.Join(o.scripts, tg.script)}, "simple", oc, rowsPer)
			stopProf()
			if err != nil {
				r.err = firstLine(err.Error())
				out = append(out, r)
				continue
			}
			r.tps = res.tps
			lat, err := readLatencies(dir)
			if err != nil || len(lat) == 0 {
				r.err = fmt.Sprintf("read pgbench log: %v", err)
				out = append(out, r)
				continue
			}
			slices.Sort(lat)
			var sum float64
			for _, v := range lat {
				sum += v
			}
			pct := func(p float64) float64 { return lat[min(len(lat)-1, int(p*float64(len(lat))))] / 1000 }
			r.p50, r.p99, r.avg = pct(0.50), pct(0.99), sum/float64(len(lat))/1000
			r.p999, r.max = pct(0.999), lat[len(lat)-1]/1000
			out = append(out, r)
			os.RemoveAll(dir)
		}
	}
	return out, nil
}

// readLatencies reads the third field (the transaction's latency in µs,
// counted from its scheduled start under -R) of every line of the pgbench
// logs in dir.
func readLatencies(dir string) ([]float64, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var lat []float64
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		for _, l := range bytes.Split(b, []byte("\n")) {
			f := strings.Fields(string(l))
			if len(f) < 3 {
				continue
			}
			v, err := strconv.ParseFloat(f[2], 64)
			if err != nil {
				continue
			}
			lat = append(lat, v)
		}
	}
	return lat, nil
}

func printMany(w io.Writer, rs []manyResult, ls []latencyResult, o options) {
	if len(rs) > 0 {
		fmt.Fprintf(w, "\nmany clients: pgbench -c N -j %d -T %s + N/100 s (its connecting included), simple protocol, one query per transaction (router: tenant by hint, pgbouncer: set_config of search_path); memory per idle client: the proxy's RSS with N idle clients connected, minus without, ÷ N (round 1: memory never used before; later rounds reuse what earlier ones freed); connecting: pgbench's initial connection time\n\n",
			o.threads, o.duration)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "round\tclients\ttarget\tTPS\tlatency ms\t× pgbouncer\tconnecting s\tproxy CPU µs/txn\tproxy cs/txn\tRSS KiB/idle client\tof it stack / heap KiB\t")
		bouncer := map[string]manyResult{}
		for _, r := range rs {
			if r.target == "pgbouncer" {
				bouncer[fmt.Sprint(r.round, "/", r.clients)] = r
			}
		}
		for _, r := range rs {
			rss := "–"
			if r.rssPerIdleKiB >= 0 {
				rss = fmt.Sprintf("%.1f", r.rssPerIdleKiB)
			}
			split := "–"
			if r.target != "pgbouncer" && r.rssPerIdleKiB >= 0 {
				split = fmt.Sprintf("%.1f / %.1f", r.stackKiB, r.heapKiB)
			}
			if r.err != "" {
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t\t\t\t\t\t%s\t%s\t\n", r.round, r.clients, r.target, r.err, rss, split)
				continue
			}
			x := "–"
			if b := bouncer[fmt.Sprint(r.round, "/", r.clients)]; b.tps > 0 && r.target != "pgbouncer" {
				x = fmt.Sprintf("%.2f", r.tps/b.tps)
			}
			fmt.Fprintf(tw, "%d\t%d\t%s\t%.0f\t%.3f\t%s\t%.1f\t%.1f\t%.2f\t%s\t%s\t\n", r.round, r.clients, r.target, r.tps, r.latency, x, r.connMS/1000, r.proxyUS, r.proxyCS, rss, split)
		}
		tw.Flush()
	}
	if len(ls) > 0 {
		fmt.Fprintf(w, "\nlatency at half of the router's saturation throughput (pgbench -c %d -j %d -R rate, simple protocol, one query per transaction; from pgbench's per-transaction log)\n\n", o.clients, o.threads)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "round\ttarget\trate TPS\treached TPS\tavg ms\tp50 ms\tp99 ms\tp99.9 ms\tmax ms\t")
		for _, r := range ls {
			if r.err != "" {
				fmt.Fprintf(tw, "%d\t%s\t%.0f\t%s\t\t\t\t\t\t\n", r.round, r.target, r.rate, r.err)
				continue
			}
			fmt.Fprintf(tw, "%d\t%s\t%.0f\t%.0f\t%.3f\t%.3f\t%.3f\t%.3f\t%.3f\t\n", r.round, r.target, r.rate, r.tps, r.avg, r.p50, r.p99, r.p999, r.max)
		}
		tw.Flush()
	}
}
