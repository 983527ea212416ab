#!/usr/bin/env python3
"""perfsplit.py TXNS < perf script output (-F tid,period,ip,sym,dso): where a proxy's CPU goes,
by system call (and within it: blocked and switched back, waking another task, work), Go runtime
and proxy code, in % and in µs per transaction (TXNS transactions in the recorded window).
bench/README.md, session 11, has the buckets' meaning."""
import sys, re, collections
txns = float(sys.argv[1]) if len(sys.argv) > 1 else 0
buckets = collections.Counter()
detail = collections.defaultdict(collections.Counter)
total = 0
def classify(frames):
    syms = [f[0] for f in frames]
    dsos = [f[1] for f in frames]
    leaf, leafdso = frames[0]
    kernel = 'kernel' in leafdso
    sc = None
    for i, s in enumerate(syms):
        if s in ('do_syscall_64',):
            if i > 0:
                sc = syms[i-1]
            break
    if sc:
        sc = re.sub(r'^(__x64_sys_|__se_sys_|__do_sys_|ksys_)', '', sc)
        # the user caller of the syscall
        user = [s for s, d in frames if 'kernel' not in d]
        caller = ''
        for s in user:
            if s in ('internal/runtime/syscall/linux.Syscall6', 'syscall.RawSyscall', 'syscall.Syscall', 'syscall.RawSyscall6', 'syscall.Syscall6', 'runtime/internal/syscall.Syscall6') or s.startswith('__') or s in ('epoll_wait','read','write','send','recv'):
                continue
            caller = s; break
    if kernel and sc:
        if 'finish_task_switch.isra.0' in syms or '__schedule' in syms:
            sub = 'switch (blocked, back on cpu)'
        elif 'try_to_wake_up' in syms:
            sub = 'wake-up of another task'
        else:
            sub = 'work'
        return 'sys %s' % sc, sub + ' | ' + caller
    if kernel:
        if any(s.startswith('irqentry_exit') or s == 'exit_to_user_mode_loop' or s.startswith('asm_sysvec') for s in syms):
            if '__schedule' in syms: return 'kernel: preempted (irq/return)', leaf
            return 'kernel: interrupts', leaf
        if any('page_fault' in s for s in syms): return 'kernel: page faults', leaf
        return 'kernel: other', ' < '.join(syms[:4])
    # user
    if any(s.startswith('runtime.gcBgMarkWorker') or s.startswith('runtime.gcDrain') or s=='runtime.bgsweep' or s=='runtime.bgscavenge' for s in syms):
        return 'user: Go GC', leaf
    if 'runtime.sysmon' in syms: return 'user: Go sysmon', leaf
    if any(s in ('runtime.schedule','runtime.findRunnable','runtime.park_m','runtime.mcall','runtime.goexit0','runtime.mstart1','runtime.stopm','runtime.startm','runtime.wakep','runtime.ready','runtime.goready','runtime.netpoll') for s in syms):
        return 'user: Go scheduler', leaf
    if leaf.startswith('runtime.mallocgc') or 'runtime.mallocgc' in syms[:3]: return 'user: Go malloc', leaf
    if leaf.startswith('runtime.') or leaf.startswith('internal/runtime') or leaf in ('memeqbody','cmpbody','indexbytebody','countbody','aeshashbody'):
        if 'mapaccess' in leaf or leaf in ('aeshashbody','memeqbody'): return 'user: Go maps/compare', leaf + ' < ' + next((s for s in syms if 'pgtenant' in s), '')
        return 'user: Go runtime other', leaf + ' < ' + next((s for s in syms if not s.startswith('runtime') and not s.startswith('internal/runtime')), '')
    if 'pgtenant' in leaf: return 'user: router code', leaf.split('/')[-1]
    if leafdso.endswith('pgbouncer'): return 'user: pgbouncer', leaf
    if 'libevent' in leafdso: return 'user: libevent', leaf
    if 'libc' in leafdso: return 'user: libc', leaf
    if 'vdso' in leafdso: return 'user: vdso (clock)', leaf + ' < ' + next((s for s in syms if not s.startswith('__vdso') and not s.startswith('runtime.nanotime') ), '')
    return 'user: Go stdlib', leaf

frames = []; period = 0
def flush():
    global total, frames
    if frames:
        b, d = classify(frames)
        buckets[b] += period; detail[b][d] += period; total += period
    frames = []
for line in sys.stdin:
    line = line.rstrip('\n')
    if not line.strip():
        flush(); continue
    if not line.startswith('\t') and not line.startswith(' ' * 8 + ' '):
        m = re.match(r'\s*(\d+)\s+(\d+)', line)
        if m and not line.startswith('\t'):
            flush(); period = int(m.group(2)); continue
    m = re.match(r'\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)$', line)
    if m:
        sym = re.sub(r'\+0x[0-9a-f]+$', '', m.group(2))
        frames.append((sym, m.group(3)))
flush()
print('total %.1f ms of samples' % (total / 1e6) + (', %.0f txns -> %.2f us/txn' % (txns, total / 1e3 / txns) if txns else ''))
for b, v in sorted(buckets.items(), key=lambda x: -x[1]):
    us = ' %6.2f us/txn' % (v / 1e3 / txns) if txns else ''
    print('%5.1f%%%s  %s' % (100.0 * v / total, us, b))
    for d, w in sorted(detail[b].items(), key=lambda x: -x[1])[:6]:
        if 100.0 * w / total >= 0.3:
            print('        %5.1f%%  %s' % (100.0 * w / total, d))
