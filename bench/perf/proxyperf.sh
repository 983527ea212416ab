#!/bin/bash
# proxyperf.sh: perf on each proxy inside its routerbench case (session 11).
#
# usage (as root, from anywhere): bench/perf/proxyperf.sh ROUTERBENCH_BINARY OUTDIR [routerbench flags...]
#   e.g. bench/perf/proxyperf.sh /tmp/rb /tmp/pp -only "pgbouncer,pgtenant (1 node)" \
#          -modes simple,extended -workloads "1 query,1 stmt" -duration 16s -rounds 1
#
# For every pgbench that routerbench starts, 3 s into the case: `perf stat` of the proxy
# (routerbench's own process for pgtenant, pgbouncer's for pgbouncer) for 5 s with a count of
# each system call of interest, then `perf record -e cpu-clock -g` for 6 s. Then, per file:
#   python3 bench/perf/perfsplit.py TXNS < <(perf script -i OUTDIR/perf-NAME-PID.data -F tid,period,ip,sym,dso)
# where TXNS is the case's TPS × 6 (the record's seconds). perf stat's counts divided by the
# proxy's writes / 2 are system calls per transaction (both proxies write twice per transaction).
rb=$1; out=$2; shift 2
mkdir -p "$out"
cd "$(dirname "$0")/../.." || exit 1
"$rb" -scripts bench/pgbench "$@" > "$out/rb.txt" 2>&1 &
rbpid=$!
seen=""
while kill -0 $rbpid 2>/dev/null; do
  for pb in $(pgrep -P $rbpid -x pgbench); do
    case " $seen " in *" $pb "*) continue;; esac
    seen="$seen $pb"
    port=$(tr '\0' ' ' < /proc/$pb/cmdline | grep -o -- '-p [0-9]*' | awk '{print $2}')
    bouncer=$(pgrep -P $rbpid -x pgbouncer)
    target=$rbpid; name=router
    if [ -n "$bouncer" ] && ss -ltnp "sport = :$port" 2>/dev/null | grep -q "pid=$bouncer,"; then
      target=$bouncer; name=pgbouncer
    fi
    echo "pgbench $pb port $port -> $name ($target)" | tee -a "$out/cases.txt"
    sleep 3
    ev=task-clock,context-switches,cpu-migrations
    for sc in read write sendto recvfrom epoll_wait epoll_pwait epoll_ctl futex nanosleep sched_yield; do
      ev=$ev,syscalls:sys_enter_$sc
    done
    perf stat -e $ev -p $target -o "$out/stat-$name-$pb.txt" -- sleep 5
    perf record -e cpu-clock -g -p $target -o "$out/perf-$name-$pb.data" -- sleep 6 > "$out/perf-$name-$pb.log" 2>&1
  done
  sleep 0.5
done
wait $rbpid
