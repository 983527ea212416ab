#!/usr/bin/env python3
"""sched.py OUTDIR: per case of run.sh and per transaction, the wake-ups node a's
backends make (by the woken task), the times a backend is switched out (asleep or
preempted, by the task that runs next) and the reschedule IPIs it takes."""
import collections, re, subprocess, sys

d = sys.argv[1]
xs = {l.split(" xacts ")[0]: int(l.split(" xacts ")[1]) for l in open(f"{d}/info") if " xacts " in l}


def who(comm):
    if comm.startswith("postgres"):
        return "postgres"
    if comm in ("pgbouncer", "pgbench"):
        return comm
    if comm.startswith(("routerbench", "rb")):
        return "router"
    return "other"


for tag, x in xs.items():
    if x <= 0:
        continue
    out = subprocess.run(["perf", "script", "-i", f"{d}/{tag}.perf.data"], capture_output=True, text=True).stdout
    wakes, outs, ipis = collections.Counter(), collections.Counter(), 0
    for l in out.splitlines():
        if "sched:sched_waking" in l:
            wakes[who(re.search(r"comm=(\S+)", l).group(1))] += 1
        elif "sched:sched_switch" in l:
            m = re.search(r"prev_comm=(.*?) prev_pid=\d+ prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*?) next_pid", l)
            if m and m.group(1).startswith("postgres"):
                outs[("asleep" if m.group(2)[0] in "SD" else "preempted", who(m.group(3)))] += 1
        elif "reschedule_entry" in l:
            ipis += 1
    print(f"{tag}: {x} transactions; per transaction: wake-ups by the backends: "
          + ", ".join(f"{k} {v / x:.2f}" for k, v in sorted(wakes.items()))
          + f"; reschedule IPIs {ipis / x:.2f}; backend switched out: "
          + ", ".join(f"{a} for {b} {v / x:.2f}" for (a, b), v in sorted(outs.items())))
