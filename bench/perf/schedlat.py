#!/usr/bin/env python3
"""schedlat.py < `go tool trace -d=parsed TRACE`: the Go scheduler's delay, from each goroutine's becoming
runnable (a netpoll wake-up, a channel or lock handed over) to its running on a P, as a distribution:
how long the router's goroutines wait for a thread and a CPU. routerbench -latency -trace FILE writes
FILE.latency, a trace of the router's latency case. bench/README.md, session 12."""
import sys, re
pat = re.compile(r'StateTransition Time=(\d+) GoID=(\d+) (\w+)->(\w+)')
runnable, delays = {}, []
for line in sys.stdin:
    m = pat.search(line)
    if not m:
        continue
    t, g, frm, to = int(m.group(1)), m.group(2), m.group(3), m.group(4)
    if to == 'Runnable':
        runnable[g] = t
    elif frm == 'Runnable' and to == 'Running' and g in runnable:
        delays.append(t - runnable.pop(g))
delays.sort()
n = len(delays)
if not n:
    sys.exit('no goroutine went from runnable to running in this trace')
pct = lambda q: delays[min(n - 1, int(q * n))] / 1000
print('wake-ups %d; delay µs: p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f; total %.2f s'
      % (n, pct(.5), pct(.9), pct(.99), pct(.999), delays[-1] / 1000, sum(delays) / 1e9))
