"""exitguard's benchmarks: every figure beside its baselines, measured in the same run.

    python bench/run.py [--quick] [--only 1,3,mem] [--no-write]      (make bench)

Builds bench/_egbench.c (bench/setup.py) into bench/build/<python-version>/, runs the
benchmarks of issue 5 and writes bench/results/<python-version>.json, the chart
bench/results/<python-version>.png and this interpreter's table in docs/performance.md
(bench/report.py).  Each figure is the median of REPS (>= 5) repetitions, in ns/op
unless its unit says otherwise, printed with its ratio to the baseline measured in
the same run and PASS/MISS against the issue's target.  A MISS is information: the
exit status is 0 whatever the figures are.

Noise: the single-threaded benchmarks pin the calling thread -- and so the native
threads it starts, which inherit the mask -- to one core (os.sched_setaffinity);
the load average before and after the run goes into the JSON.  bench/callgrind.py
gives instruction counts for benchmarks 1 and 3, which do not move with load.
"""

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VER = platform.python_version() + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else "")
BUILD = os.path.join(HERE, "build", VER)
REPS = 7


def build():
    """Build _egbench against the installed exitguard's header and make it importable."""
    cmd = [sys.executable, os.path.join(HERE, "setup.py"), "-q", "build_ext",
           "--build-lib", BUILD, "--build-temp", os.path.join(BUILD, "tmp")]
    # cwd=bench/: setuptools must not read the project's own pyproject.toml.
    p = subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        raise SystemExit("bench: building _egbench failed")
    if BUILD not in sys.path:
        sys.path.insert(0, BUILD)


# ---- measurement helpers -----------------------------------------------------------

def median_of(fn, reps=REPS):
    """Median and samples of reps calls of fn() (each returns a number)."""
    samples = [fn() for _ in range(reps)]
    return statistics.median(samples), samples


def median_pairs(fn, reps=REPS):
    """fn() returns a tuple; the median of each position, and the samples."""
    samples = [fn() for _ in range(reps)]
    return [statistics.median(s[i] for s in samples) for i in range(len(samples[0]))], samples


CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


@contextlib.contextmanager
def pinned(ncpus):
    """Pin the calling thread (and the threads it starts) to ncpus cores, the last
    ones first: CPU 0 takes most interrupts.  A no-op where affinity is unsupported."""
    if not CPUS or ncpus >= len(CPUS):
        yield
        return
    os.sched_setaffinity(0, CPUS[-ncpus:])
    try:
        yield
    finally:
        os.sched_setaffinity(0, CPUS)


class Results:
    """The rows of one run.  A row: bench number, label, the exitguard value and its unit,
    baselines [(name, value)] in the same unit (the first is the one the ratio uses),
    targets [(text, ok)], and the repetitions' samples."""

    def __init__(self):
        self.rows = []

    def add(self, bench, label, value, unit, baselines=(), targets=(), samples=None, note=None,
            delta=False, ratio=True, higher_is_better=False, censored=False):
        base = [(name, v) for name, v in baselines if v is not None]
        if not (ratio and base and value and base[0][1]):
            ratio = None
        else:
            # > 1 always means exitguard is better (faster, or more per second).
            ratio = value / base[0][1] if higher_is_better else base[0][1] / value
        row = dict(bench=str(bench), label=label, value=value, unit=unit,
                   baselines=[dict(name=n, value=v) for n, v in base], ratio=ratio,
                   delta=(value - base[0][1]) if (delta and base) else None,
                   targets=[dict(text=t, verdict="PASS" if ok else "MISS") for t, ok in targets],
                   samples=samples, note=note, censored=censored)
        self.rows.append(row)
        print("  " + format_row(row), flush=True)
        return row


def fmt_value(v, unit, censored=False):
    """A value with its unit; censored: the measurement stopped waiting at v."""
    if v is None:
        return "-"
    if censored:
        return "> " + fmt_value(v, unit)
    if unit == "%":
        return "%.0f%%" % v
    if unit in ("bytes", "writes", "msgs", "completions/s", "decrefs"):
        return "%s %s" % (("{:,.0f}" if abs(v) >= 100 or float(v).is_integer() else "{:,.1f}").format(v), unit)
    if abs(v) >= 100:
        return "%.0f %s" % (v, unit)
    if abs(v) >= 10:
        return "%.1f %s" % (v, unit)
    return "%.2f %s" % (v, unit)


def fmt_ratio(row):
    r = row["ratio"]
    if r is None:
        return ""
    name = row["baselines"][0]["name"]
    if row["delta"] is not None:
        return "%+.2f %s vs %s" % (row["delta"], row["unit"], name)
    if r >= 1:
        return "%.1fx faster than %s" % (r, name) if r < 10 else "%.0fx faster than %s" % (r, name)
    return "%.2fx slower than %s" % (1 / r, name)


def format_row(row):
    base = " | ".join("%s %s" % (b["name"], fmt_value(b["value"], row["unit"])) for b in row["baselines"])
    tgt = "; ".join("%s: %s" % (t["text"], t["verdict"]) for t in row["targets"])
    parts = ["#%-3s %-52s %14s" % (row["bench"], row["label"],
                                   fmt_value(row["value"], row["unit"], row.get("censored")))]
    if base:
        parts.append("[%s]" % base)
    if row["ratio"] is not None:
        parts.append(fmt_ratio(row))
    if tgt:
        parts.append("-> " + tgt)
    if row.get("note"):
        parts.append("\n         (%s)" % row["note"])
    return "  ".join(parts)


# ---- the benchmarks ------------------------------------------------------------------

def bench_1(R, quick):
    """Deferred-decref enqueue from 1, 2, 4 native threads (ns/op per thread)."""
    import _egbench as B
    n = 200_000 if quick else 1_000_000
    print("1. deferred decref: enqueue from native threads, ns/op per thread "
          "(the main thread holds the GIL: no drain during the loop)")
    for threads in (1, 2, 4):
        with pinned(1 if threads == 1 else len(CPUS)):
            eg, eg_s = median_of(lambda: B.enqueue(B.M_EG, threads, n)[0])
            pool, _ = median_of(lambda: B.enqueue(B.M_POOL, threads, n)[0])
            kept, _ = median_of(lambda: B.enqueue(B.M_GS_KEPT, threads, max(n // 20, 2000))[0])
            new, _ = median_of(lambda: B.enqueue(B.M_GS_NEW, threads, max(n // 200, 500))[0])
        targets = {1: [("<= 8 ns/op", eg <= 8)],
                   2: [("<= 15 ns/op per thread", eg <= 15), (">= 4x faster than (a)", pool / eg >= 4)],
                   4: []}[threads]
        R.add(1, "eg_decref, %d thread%s" % (threads, "s" if threads > 1 else ""), eg, "ns",
              [("(a) mutex+vector pool", pool), ("(b) PyGILState kept tstate", kept),
               ("(c) PyGILState new tstate", new)], targets, eg_s)
    if sys.version_info < (3, 12):
        # 3.9-3.11 only: eg_decref asks "am I attached?" by comparing the GIL holder
        # with this thread's gilstate state, a TSS lookup that is skipped when no
        # thread holds the GIL (eg_compat.h).
        with pinned(1):
            idle, idle_s = median_of(lambda: B.enqueue(B.M_EG, 1, n, True)[0])
        R.add(1, "eg_decref, 1 thread, GIL idle (3.9-3.11 fast path)", idle, "ns", samples=idle_s,
              note="no thread holds the GIL, so the attached test skips its TSS lookup")


def bench_2(R, quick):
    """A native producer while the main thread runs bytecode; idle-producer latency."""
    import _egbench as B
    import threading
    import weakref
    import exitguard
    print("2. native producer while the main thread runs Python bytecode (ns/op in the producer); "
          "latency of a decref queued by an idle producer (ms)")
    window = 0.2 if quick else 0.5

    def spin(seconds):
        """Bytecode for `seconds`; returns loop iterations per second."""
        x = 0
        t0 = time.perf_counter()
        end = t0 + seconds
        while time.perf_counter() < end:
            x += 1
        return x / (time.perf_counter() - t0)

    def run(mode):
        B.producer_start(mode)
        rate = spin(window)
        ops, ns, queued = B.producer_stop()
        return ns, rate, queued, ops

    spin(window)                               # warm-up (CPU frequency, caches)
    # Interleaved, so that every variant sees the same machine state on average.
    reps = [(spin(window), run(B.M_SPIN), run(B.M_EG), run(B.M_GS_KEPT)) for _ in range(REPS)]
    idle_rate = statistics.median(r[0] for r in reps)
    spin_rate = statistics.median(r[1][1] for r in reps)
    eg_s, kept_s = [r[2] for r in reps], [r[3] for r in reps]
    eg, eg_rate = (statistics.median(x[i] for x in eg_s) for i in (0, 1))
    kept, kept_rate = (statistics.median(x[i] for x in kept_s) for i in (0, 1))
    R.add(2, "eg_decref throughput, main thread busy in bytecode", eg, "ns",
          [("(b) PyGILState kept tstate", kept)], [(">= 1000x faster than (b)", kept / eg >= 1000)],
          [s[0] for s in eg_s],
          note="%.1f s windows, the queue drained while decrefs arrive; (b)'s repetitions: %s ns"
               % (window, ", ".join("%.0f" % s[0] for s in kept_s)))
    queued = statistics.median(x[2] for x in eg_s)
    ops = statistics.median(x[3] for x in eg_s)
    R.add(2, "  decrefs still queued when the producer stopped", queued, "decrefs",
          note="of %s dropped in the window: %.0f%% never applied while it ran (%s MB of queue)"
               % ("{:,.0f}".format(ops), 100.0 * queued / ops, "{:,.0f}".format(queued * 8 / 1e6)))
    R.add(2, "  main thread's bytecode speed meanwhile, % of idle", 100.0 * eg_rate / idle_rate, "%",
          [("(b) PyGILState kept tstate", 100.0 * kept_rate / idle_rate),
           ("a native thread that only spins", 100.0 * spin_rate / idle_rate)], ratio=False,
          note="the spinning thread is the control: what sharing the machine's cores costs by itself")

    class Obj:
        pass

    def latency(busy):
        exitguard.flush()                    # nothing queued: the push requests a drain
        time.sleep(0.03)
        o = Obj()
        done = threading.Event()
        stamp = []
        weakref.finalize(o, lambda: (stamp.append(time.perf_counter()), done.set()))
        t0 = time.perf_counter()
        B.push_one(o)
        del o                                # the queued decref is now the last reference
        if busy:
            while not stamp and time.perf_counter() - t0 < 2.0:
                sum(range(50))
        else:
            done.wait(2.0)                   # blocked in a C call, GIL released
        lat = (stamp[0] - t0) * 1e3 if stamp else 2000.0
        exitguard.flush()
        time.sleep(0.01)
        return lat

    for busy, label in ((True, "main thread in bytecode"), (False, "main thread blocked")):
        lat, lat_s = median_of(lambda: latency(busy), 7)
        R.add(2, "idle producer's decref applied after, %s" % label, lat, "ms",
              targets=[("<= 100 ms", lat <= 100)], samples=lat_s, censored=lat >= 2000,
              note="not applied within the 2 s the benchmark waits" if lat >= 2000 else None)


def bench_3(R, quick):
    """Drain cost per object: eg_flush versus a bare Py_DECREF loop over the same objects."""
    import _egbench as B
    n = 200_000 if quick else 1_000_000
    print("3. drain: eg_flush per object vs a bare Py_DECREF loop over the same %d objects (ns)" % n)
    with pinned(1):
        for dealloc, label in ((False, "objects stay alive"), (True, "each decref frees its object")):
            (eg, bare), samples = median_pairs(lambda: B.drain(n, dealloc))
            R.add(3, "eg_flush per object, %s" % label, eg, "ns", [("bare Py_DECREF loop", bare)],
                  [("<= 5 ns above", eg - bare <= 5)], [s[0] for s in samples], delta=True)


def bench_4(R, quick):
    """eg_ref_new + eg_ref_release attached, versus Py_INCREF + Py_DECREF."""
    import _egbench as B
    n = 1_000_000 if quick else 5_000_000
    print("4. eg_ref_new + eg_ref_release, attached (ns per pair)")
    with pinned(1):
        (eg, base), samples = median_pairs(lambda: B.ref_pair(n))
    R.add(4, "eg_ref_new + eg_ref_release", eg, "ns", [("Py_INCREF + Py_DECREF", base)],
          [("<= 20 ns per pair", eg <= 20)], [s[0] for s in samples], delta=True)


def bench_5(R, quick):
    """eg_gil_ensure/release from a registered thread versus PyGILState pairs."""
    import _egbench as B
    n = 200_000 if quick else 1_000_000
    print("5. attach + detach from a native thread, uncontended (ns per pair)")
    with pinned(1):
        eg, eg_s = median_of(lambda: B.attach(B.M_EG, n))
        kept, _ = median_of(lambda: B.attach(B.M_GS_KEPT, n))
        new, _ = median_of(lambda: B.attach(B.M_GS_NEW, max(n // 20, 2000)))
    R.add(5, "eg_gil_ensure + eg_gil_release, registered thread", eg, "ns",
          [("(b) PyGILState kept tstate", kept), ("(c) PyGILState new tstate", new)],
          [("<= 1.1x (b)", eg <= 1.1 * kept), (">= 4x faster than (c)", new / eg >= 4)], eg_s)


EXIT_SCRIPT = r"""
import sys, time
kind, build = sys.argv[1], sys.argv[2]
objs = [object() for _ in range(1_000_000)]
if kind != "plain":
    sys.path.insert(0, build)
    import _egbench                      # imports exitguard (eg_import)
    if kind in ("refs", "full"):
        _egbench.hold_refs(objs)         # 1,000,000 live eg_refs, left to phase 2
    if kind == "full":
        _egbench.start_workers(64)       # 64 registered native threads, stopped by phase 1
        time.sleep(0.05)
print(repr(time.monotonic()), flush=True)
"""


def bench_6(R, quick):
    """Time from the end of a script to the end of its process."""
    print("6. time from script end to process exit (ms; subprocesses)")
    env = dict(os.environ)
    env.pop("EXITGUARD_LEAKS", None)

    def once(kind):
        p = subprocess.Popen([sys.executable, "-c", EXIT_SCRIPT, kind, BUILD], stdout=subprocess.PIPE,
                             env=env, text=True)
        out = p.stdout.read()                # EOF: the process has exited
        p.wait()
        end = time.monotonic()
        if p.returncode != 0:
            raise RuntimeError("exit benchmark (%s) failed with %d" % (kind, p.returncode))
        return (end - float(out.strip().splitlines()[-1])) * 1e3

    plain, _ = median_of(lambda: once("plain"))
    imp, _ = median_of(lambda: once("import"))
    refs, _ = median_of(lambda: once("refs"))
    full, full_s = median_of(lambda: once("full"))
    R.add(6, "exitguard imported, no refs, no threads", imp, "ms",
          [("same script without exitguard", plain)], delta=True)
    R.add(6, "+ 1,000,000 live eg_refs", refs, "ms", [("same script without exitguard", plain)], delta=True)
    R.add(6, "+ 1,000,000 live eg_refs + 64 native threads", full, "ms",
          [("same script without exitguard or threads", plain)],
          [("<= 100 ms added", full - plain <= 100)], full_s, delta=True)


def bench_7(R, quick):
    """eg_log enabled / disabled versus an attach and a logging call per message."""
    import _egbench as B
    import logging
    import exitguard
    print("7. logging from a native thread (ns per message)")
    logging.getLogger("exitguard").setLevel(logging.ERROR)   # our drop warnings are expected
    logger = logging.getLogger(B.LOGGER)
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.handlers[:] = [logging.NullHandler()]

    def settle(timeout=10.0):
        """Wait (GIL released) until the forwarder has delivered every accepted message."""
        t0 = time.monotonic()
        while True:
            s = exitguard.stats()
            if s["log_delivered"] >= s["log_formatted"] or time.monotonic() - t0 > timeout:
                return
            time.sleep(0.0005)

    B.log_job(B.L_ENABLED, logging.WARNING, 10)              # the logger's level is learnt
    settle()
    burst, bursts = 256, (20 if quick else 100)              # a burst fits the 1024-slot ring

    def enabled():
        total = 0.0
        for _ in range(bursts):
            settle()
            total += B.log_job(B.L_ENABLED, logging.WARNING, burst)
        settle()
        return total / bursts

    s0 = exitguard.stats()
    en, en_s = median_of(enabled)
    s1 = exitguard.stats()
    dropped = s1["log_dropped"] - s0["log_dropped"]
    n = 200_000 if quick else 2_000_000
    with pinned(1):
        dis, dis_s = median_of(lambda: B.log_job(B.L_DISABLED, logging.DEBUG, n))
        query, _ = median_of(lambda: B.log_job(B.L_ENABLED_QUERY, logging.DEBUG, n))
    base, _ = median_of(lambda: B.log_job(B.L_BASELINE, logging.WARNING, 5_000 if quick else 20_000,
                                          logger.warning))
    s2 = exitguard.stats()
    full, _ = median_of(lambda: B.log_job(B.L_ENABLED, logging.WARNING, 100_000))
    settle()
    s3 = exitguard.stats()
    R.add(7, "eg_log, enabled level (message accepted)", en, "ns",
          [("attach (kept tstate) + logger.warning", base)], [("<= 150 ns", en <= 150)], en_s,
          note="bursts of %d into an empty ring; %d dropped" % (burst, dropped))
    R.add(7, "eg_log, disabled level", dis, "ns", [("attach (kept tstate) + logger.warning", base)],
          [("<= 5 ns", dis <= 5)], dis_s)
    R.add(7, "  eg_log_enabled(), same disabled level", query, "ns",
          note="the same level lookup as a disabled eg_log, without the log_filtered counter")
    drops = s3["log_dropped"] - s2["log_dropped"]
    R.add(7, "  eg_log, enabled, ring full (%.0f%% dropped)" % (100.0 * drops / (REPS * 100_000)), full, "ns",
          note="a producer faster than logging: messages beyond the ring are dropped and counted")


def bench_8(R, quick):
    """1,000,000 completions from 2 native threads into asyncio."""
    import _egbench as B
    import asyncio
    import exitguard
    n = 200_000 if quick else 1_000_000
    m = 20_000 if quick else 100_000
    print("8. completions from 2 native threads into an asyncio loop")

    async def run_eg():
        loop = asyncio.get_running_loop()
        q = exitguard.CompletionQueue()
        q.attach(loop)
        fut = loop.create_future()
        t0 = time.perf_counter()
        B.post(q, None, n, 2, lambda: fut.set_result(None))
        await fut
        dt = time.perf_counter() - t0
        B.post_join()
        wakeups = q.stats()["wakeups"]
        q.detach()
        q.close()
        return dt / n * 1e9, wakeups

    async def run_base():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        t0 = time.perf_counter()
        B.post(None, loop.call_soon_threadsafe, m, 2, lambda: fut.set_result(None))
        await fut
        dt = time.perf_counter() - t0
        B.post_join()
        return dt / m * 1e9

    (eg, wakeups), samples = median_pairs(lambda: asyncio.run(run_eg()))
    base, _ = median_of(lambda: asyncio.run(run_base()))
    R.add(8, "eg_cq_post: %s completions, time per completion" % "{:,}".format(n), eg, "ns",
          [("attach (kept tstate) + call_soon_threadsafe", base)], samples=[s[0] for s in samples],
          note="baseline timed over %s completions" % "{:,}".format(m))
    R.add(8, "  completions per second", 1e9 / eg, "completions/s",
          [("attach (kept tstate) + call_soon_threadsafe", 1e9 / base)], higher_is_better=True)
    R.add(8, "  eventfd writes for %s completions" % "{:,}".format(n), wakeups, "writes",
          note="the baseline writes asyncio's self-pipe once per call_soon_threadsafe")


MEM_SCRIPT = "import sys; sys.path.insert(0, sys.argv[1]); import _egbench as B; print(B.%s(1_000_000))"


def bench_mem(R, quick):
    """Peak RSS per queued decref and per live eg_ref, over 1,000,000 of each (fresh processes)."""
    print("memory: peak RSS over 1,000,000 (fresh process each)")

    def once(fn):
        out = subprocess.run([sys.executable, "-c", MEM_SCRIPT % fn, BUILD], capture_output=True,
                             text=True, check=True).stdout
        return float(out.strip().splitlines()[-1])

    q, q_s = median_of(lambda: once("mem_queue"))
    r, r_s = median_of(lambda: once("mem_refs"))
    R.add("mem", "bytes per queued decref", q, "bytes", samples=q_s,
          note="a pointer is 8 bytes; segments are 8 KiB")
    R.add("mem", "bytes per live eg_ref", r, "bytes", samples=r_s,
          note="registry chunks double in size: up to ~2x the live count is allocated")


BENCHES = {"1": bench_1, "2": bench_2, "3": bench_3, "4": bench_4, "5": bench_5,
           "6": bench_6, "7": bench_7, "8": bench_8, "mem": bench_mem}

# What each benchmark needs from exitguard; one whose feature has not landed is skipped
# and listed as missing.
REQUIRES = {
    "7": lambda eg: "log_delivered" in eg.stats(),
    "8": lambda eg: hasattr(eg, "CompletionQueue"),
}


def machine_description():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return "%s, %d cores, Linux %s" % (model, os.cpu_count(), platform.release())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller counts (a smoke test, not for the docs)")
    ap.add_argument("--only", default=",".join(BENCHES), help="comma list of benchmarks (default: all)")
    ap.add_argument("--no-write", action="store_true", help="print only: no JSON, chart or docs table")
    args = ap.parse_args(argv)
    build()
    import exitguard
    import _egbench
    machine = machine_description()
    load0 = os.getloadavg()
    print("exitguard %s benchmarks -- CPython %s -- %s -- median of %d%s" % (
        exitguard.__version__, VER, machine, REPS, " -- QUICK" if args.quick else ""))
    R = Results()
    missing = []
    t0 = time.monotonic()
    for key in args.only.split(","):
        if key not in BENCHES:
            raise SystemExit("unknown benchmark %r (have %s)" % (key, ", ".join(BENCHES)))
        if key in REQUIRES and not REQUIRES[key](exitguard):
            missing.append(key)
            print("%s. skipped: the exitguard feature it measures has not landed" % key)
            continue
        BENCHES[key](R, args.quick)
    print("missing benchmarks (feature not landed): %s" % (", ".join(missing) or "none"))
    meta = dict(python=VER, exitguard=exitguard.__version__, egbench_header=_egbench.EG_VERSION,
                machine=machine, date=time.strftime("%Y-%m-%d"), reps=REPS, quick=args.quick,
                loadavg_before=load0, loadavg_after=os.getloadavg(), seconds=round(time.monotonic() - t0, 1),
                missing=missing)
    misses = sum(t["verdict"] == "MISS" for r in R.rows for t in r["targets"])
    passes = sum(t["verdict"] == "PASS" for r in R.rows for t in r["targets"])
    print("targets: %d PASS, %d MISS (a MISS never fails the run); %.0f s" % (passes, misses, meta["seconds"]))
    if not args.no_write:
        import report
        for path in report.write_all(meta, R.rows):
            print("wrote %s" % os.path.relpath(path, ROOT))


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
