package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgtenant/pgtenant/internal/move"
)

// timeline, with -timeline, records what the box does during each move and
// lines the clients' stalls up with it (issue 13: what stalls every client
// during a move). Every -timeline-every (10 ms) it samples:
//   - every backend of every node (pg_stat_activity: type, wait event, query
//     head) and, for each, its CPU time and run-queue wait (/proc/PID/schedstat);
//   - the box: /proc/pressure/cpu and io, the disk's writes, busy time and
//     cache flushes (/proc/diskstats), dirty and writeback page cache (/proc/meminfo);
//   - this process (router, mover, clients): the Go scheduler's latency.
//
// It also records the mover's steps (BeforeStep), and after the move reads
// the Go GC pauses (debug.ReadGCStats) and the nodes' checkpoint log lines.
// The report lists every client transaction longer than -timeline-slow,
// merged into windows where they overlap, each with what the box did then,
// and a table per step.
type timeline struct {
	w     io.Writer
	slow  time.Duration
	every time.Duration
	dsns  map[string]string // node -> DSN
	pids  []int             // the nodes' postmasters
	logs  map[string]string // node -> server log
	disk  string            // block device of the data directories, e.g. "vda"

	mu    sync.Mutex
	steps []mark
	ticks []tick
}

// tick is one sample of the box.
type tick struct {
	at        time.Time
	psi       [4]int64 // total µs: cpu some, cpu full, io some, io full
	dirtyKB   int64
	wbackKB   int64
	disk      [5]int64 // sectors written, ms doing I/O, in flight, flushes, ms flushing
	schedMax  float64  // this process: longest goroutine scheduling latency since the last tick (s, bucket bound)
	cpu       [3]int64 // box (/proc/stat, clock ticks): busy (all but idle and iowait), iowait, steal
	self      [3]int64 // this process's threads: ns on CPU, ns waiting for a CPU; its waited-for children (pg_dump, pg_restore): clock ticks
	pms       [2]int64 // the nodes' postmasters (forking backends): ns on CPU, ns waiting
	backends  []backend
	sampledIn time.Duration // how long the sample took
}

// backend is one server process seen in pg_stat_activity.
type backend struct {
	node, kind, wait, query string
	pid                     int
	runNs, waitNs           int64 // /proc/PID/schedstat: on CPU, waiting for a CPU
}

func (t *timeline) on() bool { return t != nil }

func (t *timeline) beforeStep(_ context.Context, _ int64, step move.Step) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.steps = append(t.steps, mark{step, time.Now()})
	return nil
}

// start samples until the returned stop is called.
func (t *timeline) start(ctx context.Context) (stop func()) {
	t.mu.Lock()
	t.steps, t.ticks = nil, nil
	t.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	conns := map[string]*pgx.Conn{}
	for node, dsn := range t.dsns {
		c, err := pgx.Connect(ctx, dsn)
		if err != nil {
			fmt.Fprintf(t.w, "timeline: connect to %s: %v\n", node, err)
			continue
		}
		conns[node] = c
	}
	sched := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(sched)
	prev := sched[0].Value.Float64Histogram()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			for _, c := range conns {
				c.Close(context.Background())
			}
		}()
		tk := time.NewTicker(t.every)
		defer tk.Stop()
		for {
			t0 := time.Now()
			s := tick{at: t0}
			s.psi[0], s.psi[1] = readPSI("/proc/pressure/cpu")
			s.psi[2], s.psi[3] = readPSI("/proc/pressure/io")
			s.dirtyKB, s.wbackKB = readDirty()
			s.disk = readDisk(t.disk)
			s.cpu = readCPU()
			s.self = readSelf()
			for _, pid := range t.pids {
				r, w := readSchedstat(pid)
				s.pms[0] += r
				s.pms[1] += w
			}
			metrics.Read(sched)
			h := sched[0].Value.Float64Histogram()
			for i := len(h.Counts) - 1; i >= 0; i-- {
				if h.Counts[i] > prev.Counts[i] {
					s.schedMax = h.Buckets[i] // lower bound of the bucket
					break
				}
			}
			prev = &metrics.Float64Histogram{Counts: slices.Clone(h.Counts), Buckets: h.Buckets}
			for node, c := range conns {
				rows, err := c.Query(ctx, `SELECT pid, backend_type, coalesce(wait_event_type || ':' || wait_event, ''),
					CASE WHEN backend_type <> 'client backend' THEN '' WHEN application_name <> '' THEN application_name || ': ' ELSE '' END
					  || CASE WHEN state = 'active' THEN left(regexp_replace(query, '\s+', ' ', 'g'), 40) ELSE coalesce(state, '') END
					FROM pg_stat_activity WHERE pid <> pg_backend_pid()`)
				if err != nil {
					continue
				}
				for rows.Next() {
					b := backend{node: node}
					if rows.Scan(&b.pid, &b.kind, &b.wait, &b.query) == nil {
						b.runNs, b.waitNs = readSchedstat(b.pid)
						s.backends = append(s.backends, b)
					}
				}
				rows.Close()
			}
			s.sampledIn = time.Since(t0)
			t.mu.Lock()
			t.ticks = append(t.ticks, s)
			t.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
		}
	}()
	return func() { cancel(); <-done }
}

func readPSI(path string) (some, full int64) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		v, _ := strconv.ParseInt(strings.TrimPrefix(f[4], "total="), 10, 64)
		switch f[0] {
		case "some":
			some = v
		case "full":
			full = v
		}
	}
	return some, full
}

// readCPU returns the box's CPU time in clock ticks: busy, iowait, steal.
func readCPU() (c [3]int64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return c
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return c
	}
	var v [8]int64
	for i := range v {
		v[i], _ = strconv.ParseInt(f[i+1], 10, 64)
	}
	// user nice system idle iowait irq softirq steal
	c[0] = v[0] + v[1] + v[2] + v[5] + v[6]
	c[1], c[2] = v[4], v[7]
	return c
}

// readSelf returns this process's threads' time on CPU and waiting for a
// CPU (ns), and its waited-for children's CPU time (clock ticks).
func readSelf() (s [3]int64) {
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, t := range tasks {
		r, w := readSchedstat0("/proc/self/task/" + t.Name() + "/schedstat")
		s[0] += r
		s[1] += w
	}
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		// fields after the command's closing parenthesis: state is field 3; cutime, cstime are 16, 17
		if i := strings.LastIndexByte(string(b), ')'); i > 0 {
			f := strings.Fields(string(b)[i+1:])
			if len(f) > 14 {
				cu, _ := strconv.ParseInt(f[13], 10, 64)
				cs, _ := strconv.ParseInt(f[14], 10, 64)
				s[2] = cu + cs
			}
		}
	}
	return s
}

// postmasterPID reads the server's pid from its data directory.
func postmasterPID(dataDir string) int {
	b, err := os.ReadFile(dataDir + "/postmaster.pid")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

func readDirty() (dirty, wback int64) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(fs[1], 10, 64)
		switch fs[0] {
		case "Dirty:":
			dirty = v
		case "Writeback:":
			wback = v
		}
	}
	return dirty, wback
}

// readDisk returns the device's sectors written, ms doing I/O, I/Os in
// flight, flushes and ms flushing (/proc/diskstats fields 7, 10, 9, 16, 17).
func readDisk(dev string) (d [5]int64) {
	b, err := os.ReadFile("/proc/diskstats")
	if err != nil {
		return d
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 14 || f[2] != dev {
			continue
		}
		n := func(i int) int64 {
			if i >= len(f) {
				return 0
			}
			v, _ := strconv.ParseInt(f[i], 10, 64)
			return v
		}
		return [5]int64{n(9), n(12), n(11), n(18), n(19)}
	}
	return d
}

func readSchedstat(pid int) (run, wait int64) {
	return readSchedstat0("/proc/" + strconv.Itoa(pid) + "/schedstat")
}

func readSchedstat0(path string) (run, wait int64) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, 0
	}
	run, _ = strconv.ParseInt(f[0], 10, 64)
	wait, _ = strconv.ParseInt(f[1], 10, 64)
	return run, wait
}

// diskOf names the block device holding path (the first /proc/diskstats
// device whose major:minor matches the file system's, or its parent disk).
func diskOf(path string) string {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	best, dev := "", ""
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 {
			continue
		}
		mp := f[4]
		if strings.HasPrefix(path, mp) && len(mp) > len(best) {
			best = mp
			// after the "-" separator: fstype, source
			for i, x := range f {
				if x == "-" && i+2 < len(f) {
					dev = strings.TrimPrefix(f[i+2], "/dev/")
				}
			}
		}
	}
	return dev
}

// window is a stretch of time in which at least one client transaction ran
// longer than the threshold.
type window struct {
	from, to time.Time
	txns     []stalledTxn
}

type stalledTxn struct {
	cl     *client
	s      sample
	moving bool
}

// report prints the move's stalls and a table per step; t0..t1 is the move.
// control, when set, is the same load without a move (its ticks summarised
// as a baseline line).
func (t *timeline) report(title string, l *load, moving int, t0, t1 time.Time, shardNode map[int]string) {
	t.mu.Lock()
	steps, ticks := slices.Clone(t.steps), slices.Clone(t.ticks)
	t.mu.Unlock()
	var b strings.Builder
	rel := func(x time.Time) float64 { return float64(x.Sub(t0).Microseconds()) / 1000 }
	fmt.Fprintf(&b, "== timeline: %s (move %s → %s, %.1f s; times in ms from the move's start; %d samples, every %s)\n",
		title, t0.Format("15:04:05.000"), t1.Format("15:04:05.000"), t1.Sub(t0).Seconds(), len(ticks), t.every)
	var sb []string
	for _, s := range steps {
		sb = append(sb, fmt.Sprintf("%s %+.0f", s.step, rel(s.at)))
	}
	fmt.Fprintf(&b, "   steps: %s, end %+.0f\n", strings.Join(sb, ", "), rel(t1))
	stepAt := func(x time.Time) move.Step {
		st := move.Step("start")
		for _, s := range steps {
			if !s.at.After(x) {
				st = s.step
			}
		}
		return st
	}
	// GC pauses of this process (the router is in it).
	var gs debug.GCStats
	gs.PauseQuantiles = nil
	debug.ReadGCStats(&gs)
	var gcs []gcPause
	for i := range gs.Pause {
		if i < len(gs.PauseEnd) && gs.PauseEnd[i].After(t0) && gs.PauseEnd[i].Before(t1) {
			gcs = append(gcs, gcPause{gs.PauseEnd[i], gs.Pause[i]})
		}
	}
	var gcTotal, gcMax time.Duration
	for _, g := range gcs {
		gcTotal += g.d
		gcMax = max(gcMax, g.d)
	}
	b.WriteString(strings.Replace(t.describe(ticks, t0, t1, "below"), "      box:", "   whole: box:", 1))
	b.WriteString(diskBursts(ticks, t0))
	fmt.Fprintf(&b, "   go: %d GC pauses during the move, total %.2f ms, longest %.2f ms\n", len(gcs), ms(gcTotal), ms(gcMax))
	// Checkpoints and other server log lines of interest.
	for node, path := range t.logs {
		for _, ev := range logEvents(path, t0.Add(-time.Second), t1) {
			fmt.Fprintf(&b, "   log %s %+9.1f %s\n", node, rel(ev.at), ev.text)
		}
	}
	// Stall windows.
	var txns []stalledTxn
	for _, cl := range l.clients {
		for _, s := range cl.samples {
			end := s.start.Add(s.dur)
			if s.dur < t.slow || end.Before(t0) || !s.start.Before(t1) {
				continue
			}
			txns = append(txns, stalledTxn{cl, s, cl.shard == moving})
		}
	}
	slices.SortFunc(txns, func(a, b stalledTxn) int { return a.s.start.Compare(b.s.start) })
	var wins []window
	for _, x := range txns {
		end := x.s.start.Add(x.s.dur)
		if n := len(wins); n > 0 && !x.s.start.After(wins[n-1].to) {
			wins[n-1].to = later(wins[n-1].to, end)
			wins[n-1].txns = append(wins[n-1].txns, x)
			continue
		}
		wins = append(wins, window{from: x.s.start, to: end, txns: []stalledTxn{x}})
	}
	fmt.Fprintf(&b, "   %d client transactions > %s in %d windows (%d clients)\n", len(txns), t.slow, len(wins), len(l.clients))
	for _, w := range wins {
		var mov, oth int
		byNode := map[string]int{}
		longest := time.Duration(0)
		for _, x := range w.txns {
			if x.moving {
				mov++
			} else {
				oth++
			}
			byNode[shardNode[x.cl.shard]]++
			longest = max(longest, x.s.dur)
		}
		var nodes []string
		for n, c := range byNode {
			nodes = append(nodes, fmt.Sprintf("%s %d", n, c))
		}
		slices.Sort(nodes)
		fmt.Fprintf(&b, "   stall %+9.1f .. %+9.1f (%.1f ms, longest txn %.1f ms) in step %s: %d txns, moving shard %d, other %d; on %s\n",
			rel(w.from), rel(w.to), ms(w.to.Sub(w.from)), ms(longest), stepAt(w.from), len(w.txns), mov, oth, strings.Join(nodes, ", "))
		for _, x := range w.txns {
			fmt.Fprintf(&b, "      client %3d shard %d (%s): begin %+9.1f insert answered %+9.1f commit %+9.1f (%.1f ms)\n",
				x.cl.id, x.cl.shard, shardNode[x.cl.shard], rel(x.s.start), rel(x.s.inserted), rel(x.s.start.Add(x.s.dur)), ms(x.s.dur))
		}
		b.WriteString(t.describe(ticks, w.from, w.to, gcIn(gcs, w.from, w.to)))
	}
	// The fence step, tick by tick: every active backend but the clients'
	// idle ones (what the pause's parts wait on).
	for i, st := range steps {
		if st.step != move.StepFence {
			continue
		}
		end := t1
		if i+1 < len(steps) {
			end = steps[i+1].at
		}
		fmt.Fprintf(&b, "   fence step %+.1f .. %+.1f, active backends per sample:\n", rel(st.at), rel(end))
		for _, tk := range ticks {
			if tk.at.Before(st.at) || tk.at.After(end) {
				continue
			}
			var act []string
			for _, bk := range tk.backends {
				client := bk.kind == "client backend"
				idle := bk.query == "" || strings.HasPrefix(bk.query, "idle") || strings.Contains(bk.query, ": idle") || bk.wait == "Client:ClientRead"
				if client && idle || !client && idleWait(bk.wait) {
					continue
				}
				w := bk.wait
				if w == "" {
					w = "CPU"
				}
				what := bk.kind
				if client {
					what = short(bk.query)
				}
				act = append(act, fmt.Sprintf("%s %s [%s]", bk.node, what, w))
			}
			fmt.Fprintf(&b, "      %+9.1f %s\n", rel(tk.at), strings.Join(act, "; "))
		}
	}
	// Per step.
	fmt.Fprintf(&b, "   %-12s %8s %8s %8s %8s %8s %8s %8s %8s %9s %9s %9s %9s\n", "step", "ms", "box busy", "cpu some", "cpu full", "io some", "io full", "disk MB", "flush/s", "flush ms", "dirty MB", "mb+kids ms", "max txn")
	for i, s := range steps {
		end := t1
		if i+1 < len(steps) {
			end = steps[i+1].at
		}
		sum := summarize(ticks, s.at, end)
		mm, _, _ := l.stats(moving, true, s.at, end)
		om, _, _ := l.stats(moving, false, s.at, end)
		fmt.Fprintf(&b, "   %-12s %8.0f %7.0f%% %7.0f%% %7.0f%% %7.0f%% %7.0f%% %8.1f %8.0f %9.2f %9.0f %10.0f %4.0f/%4.0f\n", s.step, ms(end.Sub(s.at)), sum.boxBusy, sum.cpuSome, sum.cpuFull, sum.ioSome, sum.ioFull,
			sum.diskMB, sum.flushesPerS, sum.flushMs, sum.dirtyMaxMB, sum.selfRun+sum.children, ms(mm), ms(om))
	}
	fmt.Fprint(t.w, b.String())
}

// gcPause is one stop-the-world pause of this process's garbage collector.
type gcPause struct {
	end time.Time
	d   time.Duration
}

// gcIn lists the GC pauses that ended in [from, to].
func gcIn(all []gcPause, from, to time.Time) string {
	var parts []string
	for _, g := range all {
		if g.end.After(from) && g.end.Before(to) {
			parts = append(parts, fmt.Sprintf("%.2f ms", ms(g.d)))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

type tickSum struct {
	cpuSome, cpuFull, ioSome, ioFull float64 // % of the time
	diskMB, flushesPerS, flushMs     float64 // flushMs: average ms per cache flush
	dirtyMaxMB, wbackMaxMB           float64
	busy                             float64 // % of the time the disk had I/O in flight
	inflightMax                      int64
	schedMax                         float64
	boxBusy, boxIOWait, boxSteal     float64 // % of the box's CPUs
	selfRun, selfWait, children      float64 // ms: this process on CPU, waiting for a CPU; its children on CPU
	pmRun, pmWait                    float64 // ms: the postmasters
	n                                int
}

// summarize sums the box's counters between the last tick at or before from
// and the first at or after to.
func summarize(ticks []tick, from, to time.Time) tickSum {
	var s tickSum
	i := 0
	for i+1 < len(ticks) && !ticks[i+1].at.After(from) {
		i++
	}
	j := i
	for j+1 < len(ticks) && ticks[j].at.Before(to) {
		j++
	}
	if len(ticks) == 0 || j == i {
		return s
	}
	a, z := ticks[i], ticks[j]
	us := float64(z.at.Sub(a.at).Microseconds())
	s.cpuSome = 100 * float64(z.psi[0]-a.psi[0]) / us
	s.cpuFull = 100 * float64(z.psi[1]-a.psi[1]) / us
	s.ioSome = 100 * float64(z.psi[2]-a.psi[2]) / us
	s.ioFull = 100 * float64(z.psi[3]-a.psi[3]) / us
	s.diskMB = float64(z.disk[0]-a.disk[0]) * 512 / 1e6
	s.busy = 100 * float64(z.disk[1]-a.disk[1]) * 1000 / us
	if fl := z.disk[3] - a.disk[3]; fl > 0 {
		s.flushesPerS = float64(fl) / (us / 1e6)
		s.flushMs = float64(z.disk[4]-a.disk[4]) / float64(fl)
	}
	const hz = 100 // USER_HZ
	ncpu := float64(runtime.NumCPU())
	s.boxBusy = 100 * float64(z.cpu[0]-a.cpu[0]) / hz * 1e6 / us / ncpu
	s.boxIOWait = 100 * float64(z.cpu[1]-a.cpu[1]) / hz * 1e6 / us / ncpu
	s.boxSteal = 100 * float64(z.cpu[2]-a.cpu[2]) / hz * 1e6 / us / ncpu
	s.selfRun, s.selfWait = float64(z.self[0]-a.self[0])/1e6, float64(z.self[1]-a.self[1])/1e6
	s.children = float64(z.self[2]-a.self[2]) * 1000 / hz
	s.pmRun, s.pmWait = float64(z.pms[0]-a.pms[0])/1e6, float64(z.pms[1]-a.pms[1])/1e6
	for k := i; k <= j; k++ {
		s.dirtyMaxMB = max(s.dirtyMaxMB, float64(ticks[k].dirtyKB)/1024)
		s.wbackMaxMB = max(s.wbackMaxMB, float64(ticks[k].wbackKB)/1024)
		s.inflightMax = max(s.inflightMax, ticks[k].disk[2])
		s.schedMax = max(s.schedMax, ticks[k].schedMax)
	}
	s.n = j - i
	return s
}

// describe says what the box did in [from, to]: pressure, the disk, the
// wait events seen, the processes that ran most and waited most for a CPU.
func (t *timeline) describe(ticks []tick, from, to time.Time, gc string) string {
	var b strings.Builder
	s := summarize(ticks, from, to)
	fmt.Fprintf(&b, "      box: cpu some %.0f%% full %.0f%%, io some %.0f%% full %.0f%%; disk %.1f MB written, busy %.0f%%, in flight max %d, %.0f flushes/s of %.2f ms; dirty max %.0f MB, writeback max %.0f MB; go sched latency max %.1f ms, GC pauses %s\n",
		s.cpuSome, s.cpuFull, s.ioSome, s.ioFull, s.diskMB, s.busy, s.inflightMax, s.flushesPerS, s.flushMs, s.dirtyMaxMB, s.wbackMaxMB, s.schedMax*1000, gc)
	// Wait events: samples per (node, kind, wait) in the window.
	waits := map[string]int{}
	type key struct {
		node string
		pid  int
	}
	first, last := map[key]backend{}, map[key]backend{}
	label := map[key]string{}
	for _, tk := range ticks {
		if tk.at.Before(from) || tk.at.After(to) {
			continue
		}
		for _, bk := range tk.backends {
			k := key{bk.node, bk.pid}
			if _, ok := first[k]; !ok {
				first[k] = bk
			}
			last[k] = bk
			lbl := bk.kind
			if bk.kind == "client backend" {
				lbl = bk.query
				if strings.Contains(bk.query, "kv") {
					lbl = "client backend (load)"
				}
			}
			label[k] = lbl
			if bk.wait != "" && !idleWait(bk.wait) {
				waits[fmt.Sprintf("%s %s %s", bk.node, short(lbl), bk.wait)]++
			}
		}
	}
	type kv struct {
		k string
		n int
	}
	var ws []kv
	for k, n := range waits {
		ws = append(ws, kv{k, n})
	}
	slices.SortFunc(ws, func(a, b kv) int { return b.n - a.n })
	var parts []string
	for i, w := range ws {
		if i == 10 {
			break
		}
		parts = append(parts, fmt.Sprintf("%s ×%d", w.k, w.n))
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	fmt.Fprintf(&b, "      wait events (samples): %s\n", strings.Join(parts, "; "))
	// CPU and run-queue wait per process label.
	run, rq := map[string]int64{}, map[string]int64{}
	for k, f := range first {
		l := last[k]
		lbl := k.node + " " + short(label[k])
		run[lbl] += l.runNs - f.runNs
		rq[lbl] += l.waitNs - f.waitNs
	}
	top := func(m map[string]int64) string {
		var xs []kv
		for k, v := range m {
			if v > 2e6 {
				xs = append(xs, kv{k, int(v / 1e6)})
			}
		}
		slices.SortFunc(xs, func(a, b kv) int { return b.n - a.n })
		var p []string
		for i, x := range xs {
			if i == 6 {
				break
			}
			p = append(p, fmt.Sprintf("%s %d ms", x.k, x.n))
		}
		if len(p) == 0 {
			return "none > 2 ms"
		}
		return strings.Join(p, "; ")
	}
	var ourRun, ourWait int64
	for k := range run {
		ourRun += run[k]
		ourWait += rq[k]
	}
	span := float64(to.Sub(from).Microseconds()) / 1000
	fmt.Fprintf(&b, "      box CPU busy %.0f%% (iowait %.0f%%, steal %.0f%%) = %.0f ms of %d CPUs' %.0f ms: the nodes' backends %.0f ms (run queue %.0f), postmasters %.0f (%.0f), movebench %.0f (%.0f), its children %.0f\n",
		s.boxBusy, s.boxIOWait, s.boxSteal, s.boxBusy/100*span*float64(runtime.NumCPU()), runtime.NumCPU(), span*float64(runtime.NumCPU()),
		float64(ourRun)/1e6, float64(ourWait)/1e6, s.pmRun, s.pmWait, s.selfRun, s.selfWait, s.children)
	fmt.Fprintf(&b, "      on CPU: %s\n      waiting for a CPU: %s\n", top(run), top(rq))
	return b.String()
}

func idleWait(w string) bool {
	switch w {
	case "Activity:CheckpointerMain", "Activity:WalWriterMain", "Activity:BgWriterMain", "Activity:BgWriterHibernate", "Activity:AutoVacuumMain",
		"Activity:LogicalLauncherMain", "Activity:WalSenderMain", "Client:ClientRead", "Activity:ArchiverMain", "Activity:LogicalApplyMain":
		return true
	}
	return false
}

func short(s string) string {
	if len(s) > 40 {
		return s[:40]
	}
	return s
}

type logEvent struct {
	at   time.Time
	text string
}

// logEvents returns the server log's lines about checkpoints, slow
// statements and locks between from and to (log_line_prefix '%m [%p] ').
func logEvents(path string, from, to time.Time) []logEvent {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []logEvent
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, "checkpoint") && !strings.Contains(line, "still waiting") && !strings.Contains(line, "duration:") {
			continue
		}
		if len(line) < 27 {
			continue
		}
		at, err := time.Parse("2006-01-02 15:04:05.000 MST", line[:27])
		if err != nil {
			continue
		}
		if at.Before(from) || at.After(to) {
			continue
		}
		text := line[28:]
		if len(text) > 200 {
			text = text[:200]
		}
		out = append(out, logEvent{at, text})
	}
	return out
}

// diskBursts names the three seconds of the move in which the disk took the
// most writes (non-overlapping), with the cache flushes' latency (what a
// commit's WAL fsync waits for) and the dirty page cache then.
func diskBursts(ticks []tick, t0 time.Time) string {
	type burst struct {
		from, to time.Time
		s        tickSum
	}
	var all []burst
	for i := range ticks {
		j := i
		for j+1 < len(ticks) && ticks[j].at.Sub(ticks[i].at) < time.Second {
			j++
		}
		if j == i {
			continue
		}
		all = append(all, burst{ticks[i].at, ticks[j].at, summarize(ticks, ticks[i].at, ticks[j].at)})
	}
	slices.SortFunc(all, func(a, b burst) int { return int(b.s.diskMB*1000 - a.s.diskMB*1000) })
	var picked []burst
	for _, x := range all {
		if len(picked) == 3 {
			break
		}
		overlaps := false
		for _, p := range picked {
			if x.from.Before(p.to) && p.from.Before(x.to) {
				overlaps = true
			}
		}
		if !overlaps {
			picked = append(picked, x)
		}
	}
	var parts []string
	for _, p := range picked {
		parts = append(parts, fmt.Sprintf("%+.0f: %.0f MB/s, busy %.0f%%, flushes %.1f ms, io some %.0f%%, dirty max %.0f MB, writeback max %.0f MB",
			float64(p.from.Sub(t0).Milliseconds()), p.s.diskMB/p.to.Sub(p.from).Seconds(), p.s.busy, p.s.flushMs, p.s.ioSome, p.s.dirtyMaxMB, p.s.wbackMaxMB))
	}
	return "   busiest disk seconds: " + strings.Join(parts, "; ") + "\n"
}
