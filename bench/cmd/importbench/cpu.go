package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pgtenant/pgtenant/internal/localpg"
)

// clockTicks is Linux's USER_HZ, the unit of /proc's CPU times.
const clockTicks = 100

// cpuTimes is the CPU time used so far by each cluster (its postmaster,
// the children it reaped and its live children, from /proc) and by this
// process (getrusage): what a round costs on a machine shared with other
// work, where its wall time says more about the others than about it.
type cpuTimes struct {
	clusters []time.Duration
	self     time.Duration
}

func readCPU(clusters []*localpg.Cluster) cpuTimes {
	var c cpuTimes
	stats := procStats()
	for _, cl := range clusters {
		c.clusters = append(c.clusters, clusterCPU(cl, stats))
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		c.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return c
}

// sub is c - before, per cluster.
func (c cpuTimes) sub(before cpuTimes) cpuTimes {
	out := cpuTimes{self: c.self - before.self}
	for i := range c.clusters {
		out.clusters = append(out.clusters, c.clusters[i]-before.clusters[i])
	}
	return out
}

// String lists the clusters' CPU seconds (legacy, n1, n2) and this
// process's.
func (c cpuTimes) String() string {
	parts := make([]string, 0, len(c.clusters)+1)
	for _, d := range c.clusters {
		parts = append(parts, fmt.Sprintf("%.1f", d.Seconds()))
	}
	return strings.Join(parts, "/") + fmt.Sprintf(" +%.1f", c.self.Seconds())
}

func (c cpuTimes) total() time.Duration {
	t := c.self
	for _, d := range c.clusters {
		t += d
	}
	return t
}

// procStat is one process's parent, own CPU ticks and its reaped
// children's.
type procStat struct {
	ppid        int
	own, reaped int64
}

func procStats() map[int]procStat {
	out := map[int]procStat{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(f) < 15 {
			continue
		}
		num := func(i int) int64 { n, _ := strconv.ParseInt(f[i], 10, 64); return n }
		out[pid] = procStat{ppid: int(num(1)), own: num(11) + num(12), reaped: num(13) + num(14)}
	}
	return out
}

// clusterCPU is the CPU time of the cluster's processes so far (0 when
// /proc or its postmaster.pid cannot be read).
func clusterCPU(cl *localpg.Cluster, stats map[int]procStat) time.Duration {
	b, err := os.ReadFile(filepath.Join(cl.DataDir(), "postmaster.pid"))
	if err != nil {
		return 0
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return 0
	}
	p, ok := stats[pm]
	if !ok {
		return 0
	}
	ticks := p.own + p.reaped
	for _, s := range stats {
		if s.ppid == pm {
			ticks += s.own
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks
}
