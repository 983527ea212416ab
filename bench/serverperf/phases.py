#!/usr/bin/env python3
"""phases.py OUTDIR TAG_A TAG_B: the backends' CPU µs per transaction by phase of
PostgresMain (perf cpu-clock samples of run.sh, over the window's transactions),
for two cases side by side. A sample counts for the first phase function met
walking its call chain from the leaf up."""
import collections, re, subprocess, sys

d, ta, tb = sys.argv[1:4]
xs = {l.split(" xacts ")[0]: int(l.split(" xacts ")[1]) for l in open(f"{d}/info") if " xacts " in l}
PHASES = [
    ("wait: epoll sleep", ("do_epoll_wait",)),
    ("recv", ("__x64_sys_recvfrom", "secure_read", "pq_recvbuf")),
    ("send", ("__x64_sys_sendto", "secure_write", "socket_flush", "internal_flush", "__send")),
    ("irq/preempt", ("asm_sysvec_reschedule_ipi", "asm_sysvec_apic_timer_interrupt", "asm_sysvec_call_function_single",
                     "asm_common_interrupt", "irqentry_exit_to_user_mode")),
    ("parse", ("pg_parse_query", "raw_parser")),
    ("analyze", ("pg_analyze_and_rewrite_fixedparams", "pg_analyze_and_rewrite_varparams", "parse_analyze_fixedparams")),
    ("plan", ("pg_plan_queries", "pg_plan_query", "planner", "standard_planner")),
    ("utility (SET, DISCARD)", ("standard_ProcessUtility", "ProcessUtility")),
    ("execute", ("PortalRun", "ExecutorRun", "standard_ExecutorRun", "ExecutorStart", "standard_ExecutorStart",
                 "ExecutorEnd", "standard_ExecutorEnd", "PortalStart")),
    ("portal", ("PortalDrop", "CreatePortal", "PortalCleanup")),
    ("commit", ("CommitTransactionCommand", "CommitTransaction")),
    ("start transaction", ("StartTransactionCommand", "StartTransaction")),
]


def phase(frames):
    for s in frames:
        for name, syms in PHASES:
            if s in syms:
                return name
    return "other"


def profile(tag):
    out = subprocess.run(["perf", "script", "-i", f"{d}/{tag}.perf.data", "-F", "event,period,ip,sym"],
                         capture_output=True, text=True).stdout
    r = collections.Counter()
    for blk in out.split("\n\n"):
        ls = [l for l in blk.splitlines() if l.strip()]
        if not ls or "cpu-clock" not in ls[0]:
            continue
        period = int(ls[0].split()[0])
        frames = [re.sub(r"\+0x[0-9a-f]+$", "", l.split()[1]) for l in ls[1:] if len(l.split()) >= 2]
        r[phase(frames)] += period
    return r


A, B = profile(ta), profile(tb)
xa, xb = xs[ta], xs[tb]
print(f"{'phase (µs/txn)':24s} {ta[:22]:>22s} {tb[:22]:>22s}    diff")
for k in sorted(set(A) | set(B), key=lambda k: -(A[k] / xa - B[k] / xb)):
    print(f"{k:24s} {A[k] / 1000 / xa:22.2f} {B[k] / 1000 / xb:22.2f} {A[k] / 1000 / xa - B[k] / 1000 / xb:+7.2f}")
print(f"{'all':24s} {sum(A.values()) / 1000 / xa:22.2f} {sum(B.values()) / 1000 / xb:22.2f}")
