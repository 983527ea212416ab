package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/trace"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// syscallCount is one line of `strace -c`: calls and how many of them
// failed (EAGAIN for a read that would block).
type syscallCount struct {
	calls, errors int
}

// startStrace attaches `strace -c -f` to pid (every thread) and returns a
// function that detaches it and returns its counts, written to file.
func startStrace(ctx context.Context, pid int, file string) (func() (map[string]syscallCount, error), error) {
	cmd := exec.CommandContext(ctx, "strace", "-c", "-f", "-o", file, "-p", strconv.Itoa(pid))
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start strace (apt-get install -y strace): %w", err)
	}
	time.Sleep(300 * time.Millisecond) // attached to every thread before pgbench starts
	return func() (map[string]syscallCount, error) {
		cmd.Process.Signal(syscall.SIGINT)
		cmd.Wait()
		return readStrace(file)
	}, nil
}

// libpqCalls are the system calls pgbench (libpq) makes for its
// connections and Go's runtime makes none of: strace -f on routerbench
// follows the pgbench it starts, so these are dropped from the in-process
// router's counts (see excludeLibpq).
var libpqCalls = []string{"sendto", "recvfrom", "ppoll", "poll", "execve", "waitid", "clone", "clone3", "connect"}

// excludeLibpq drops pgbench's own system calls from counts.
func excludeLibpq(counts map[string]syscallCount) {
	for _, n := range libpqCalls {
		delete(counts, n)
	}
}

// readStrace parses the summary table `strace -c` writes.
func readStrace(file string) (map[string]syscallCount, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read strace summary: %w", err)
	}
	defer f.Close()
	out := map[string]syscallCount{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		// % time, seconds, usecs/call, calls, [errors,] syscall
		if len(fs) < 5 || fs[0] == "%" || strings.HasPrefix(fs[0], "-") || fs[len(fs)-1] == "total" {
			continue
		}
		if _, err := strconv.ParseFloat(fs[0], 64); err != nil {
			continue
		}
		calls, err := strconv.Atoi(fs[3])
		if err != nil {
			continue
		}
		c := syscallCount{calls: calls}
		if len(fs) == 6 {
			c.errors, _ = strconv.Atoi(fs[4])
		}
		out[fs[len(fs)-1]] = c
	}
	return out, sc.Err()
}

// straceResult is one case run under strace.
type straceResult struct {
	mode, target, workload string
	txns                   float64
	counts                 map[string]syscallCount
}

// printStrace prints system calls per transaction of each case run under
// strace, the most frequent ones in columns.
func printStrace(w io.Writer, rs []straceResult) {
	if len(rs) == 0 {
		return
	}
	total := map[string]int{}
	for _, r := range rs {
		for name, c := range r.counts {
			total[name] += c.calls
		}
	}
	var names []string
	for name := range total {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool { return total[names[i]] > total[names[j]] })
	if len(names) > 7 {
		names = names[:7]
	}
	fmt.Fprintln(w, "\nsystem calls per transaction of the proxy (strace -c -f on its process during a run of its own; (n) = of them failed, EAGAIN for a read)")
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprint(tw, "mode\ttarget\tper transaction\ttxns\t")
	for _, n := range names {
		fmt.Fprintf(tw, "%s\t", n)
	}
	fmt.Fprintln(tw, "all\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t", r.mode, r.target, r.workload, r.txns)
		all := 0
		for _, c := range r.counts {
			all += c.calls
		}
		for _, n := range names {
			c := r.counts[n]
			if c.errors > 0 {
				fmt.Fprintf(tw, "%.2f (%.2f)\t", float64(c.calls)/r.txns, float64(c.errors)/r.txns)
			} else {
				fmt.Fprintf(tw, "%.2f\t", float64(c.calls)/r.txns)
			}
		}
		fmt.Fprintf(tw, "%.2f\t\n", float64(all)/r.txns)
	}
	tw.Flush()
}

// startTrace starts the Go execution tracer (runtime/trace) into file;
// the returned function stops it.
func startTrace(file string) (func(), error) {
	f, err := os.Create(file)
	if err != nil {
		return nil, fmt.Errorf("create trace file: %w", err)
	}
	if err := trace.Start(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("start trace: %w", err)
	}
	return func() {
		trace.Stop()
		f.Close()
	}, nil
}

// straceFile names the summary file of one case in dir.
func straceFile(dir, mode, target, workload string) string {
	clean := strings.NewReplacer(" ", "_", "(", "", ")", "").Replace(mode + "_" + target + "_" + workload)
	return filepath.Join(dir, clean+".txt")
}
