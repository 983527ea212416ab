#!/bin/bash
# Profiles node a's Postgres backends inside routerbench's cases (bench/README.md,
# "Session 11: the server's CPU behind the router"). Run as root, from the repository root:
#
#   bench/serverperf/run.sh ROUTERBENCH OUTDIR [routerbench flags]
#   python3 bench/serverperf/phases.py OUTDIR r1_pgtenant__1_node_ r1_pgbouncer_router_texts
#   python3 bench/serverperf/sched.py OUTDIR
#
# ROUTERBENCH is a built routerbench (go build -o /tmp/rb ./bench/cmd/routerbench).
# By default the cases are "pgtenant (1 node)" and "pgbouncer router texts", simple, 1 query,
# 28 s each (ONLY, MODES, WL, DUR and NCASES, the cases to profile, override). Into each case:
# strace of one backend's sendto/recvfrom for 1 s (the messages), then node a's xact_commit,
# every backend's CPU ticks and context switches, and perf record on the backends for 8 s
# (PERFEV, default cpu-clock with call graphs and the sched_waking, sched_switch and
# reschedule-IPI tracepoints). Files are named r<round>_<target>.
RB=$1; OUT=$2; shift 2
mkdir -p "$OUT"
ONLY=${ONLY:-"pgbouncer router texts,pgtenant (1 node)"}
NCASES=${NCASES:-2}
PERFEV=${PERFEV:-"-e cpu-clock -g -e sched:sched_waking,sched:sched_switch,irq_vectors:reschedule_entry"}
"$RB" -scripts "$(dirname "$0")/../pgbench" -only "$ONLY" -modes "${MODES:-simple}" -workloads "${WL:-1 query}" \
  -duration "${DUR:-28s}" "$@" > "$OUT/rb.out" 2> "$OUT/rb.err" &
RBPID=$!
port=""
while [ -z "$port" ]; do
  sleep 0.5
  port=$(grep -o 'node=a port=[0-9]*' "$OUT/rb.err" | grep -o '[0-9]*$')
  kill -0 $RBPID || exit 1
done
pm=$(ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
echo "node a port $port postmaster $pm" > "$OUT/info"
# pid, CPU ticks, voluntary and involuntary switches, command line of every child of node a's postmaster
cpu_of() {
  for p in $(ps --ppid "$pm" -o pid=); do
    echo "$p $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null) $(awk '/^voluntary_ctxt/{v=$2} /^nonvoluntary_ctxt/{n=$2} END{print v, n}' /proc/$p/status 2>/dev/null) $(tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null)"
  done
}
xacts() { psql -h 127.0.0.1 -p "$port" -U postgres -d bench -Atc "select xact_commit from pg_stat_database where datname = 'bench'"; }
seen=0
tail -n +1 -F --pid=$RBPID "$OUT/rb.err" 2>/dev/null | while read -r line; do
  case "$line" in *'msg=pgbench'*) ;; *) continue;; esac
  t=$(echo "$line" | sed 's/.*target="\([^"]*\)".*/\1/')
  r=$(echo "$line" | sed 's/.*round=\([0-9]*\).*/\1/')
  tag=r${r}_$(echo "$t" | tr -c 'a-z0-9\n' '_')
  sleep 3
  one=$(ps --ppid "$pm" -o pid=,args= | grep 'postgres bench' | tail -1 | awk '{print $1}')
  timeout 1 strace -tt -e trace=sendto,recvfrom -s 400 -p "$one" -o "$OUT/$tag.strace" 2>/dev/null
  sleep 1
  cpu_of > "$OUT/$tag.cpu0"; x0=$(xacts)
  pids=$(ps --ppid "$pm" -o pid=,args= | grep 'postgres bench' | awk '{print $1}' | paste -sd,)
  perf record $PERFEV -p "$pids" -o "$OUT/$tag.perf.data" -- sleep 8 > "$OUT/$tag.perf.log" 2>&1
  x1=$(xacts); cpu_of > "$OUT/$tag.cpu1"
  echo "$tag xacts $((x1 - x0))" >> "$OUT/info"
  seen=$((seen + 1)); [ $seen -ge "$NCASES" ] && break
done
wait $RBPID
