"""exitguard benchmarks: each figure beside its baseline, measured in the same run.

    python bench/run.py [--quick] [--only 1,3]     (make bench)

Writes bench/results/<python-version>.json, bench/results/<python-version>.png and the
table in docs/performance.md.  Each figure is the median of at least 5 repetitions in
ns/op, with its ratio to the same-run baseline and PASS/MISS against the target (a MISS
is information, never a failure).  The process pins itself to one core where a
benchmark is single-threaded.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import textwrap
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VER = platform.python_version() + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else "")
BUILD = os.path.join(HERE, "build", VER)
REPS = 5
M_EG, M_POOL, M_GS_KEPT, M_GS_NEW = range(4)


def build():
    import exitguard

    os.makedirs(BUILD, exist_ok=True)
    flags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
    setup = textwrap.dedent(
        """
        from setuptools import setup, Extension
        setup(name="egbench", ext_modules=[
            Extension("_egbench", [%r], include_dirs=[%r], extra_compile_args=%r, extra_link_args=["-pthread"]),
            Extension("ticker", [%r], include_dirs=[%r], extra_compile_args=%r, extra_link_args=["-pthread"])])
        """
        % (os.path.join(HERE, "_egbench.c"), exitguard.get_include(), flags,
           os.path.join(ROOT, "examples", "ticker", "ticker.c"), exitguard.get_include(), flags)
    )
    path = os.path.join(BUILD, "setup_bench.py")
    with open(path, "w") as f:
        f.write(setup)
    subprocess.run([sys.executable, path, "-q", "build_ext", "-b", BUILD, "-t", os.path.join(BUILD, "tmp")],
                   check=True, cwd=BUILD)
    sys.path.insert(0, BUILD)


def median(fn, reps=REPS):
    vals = [fn() for _ in range(reps)]
    return statistics.median(vals)


def pin(cpus):
    if hasattr(os, "sched_setaffinity"):
        try:
            os.sched_setaffinity(0, cpus)
        except OSError:
            pass


ALL_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]


def rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


class Results:
    def __init__(self):
        self.rows = []

    def add(self, num, name, value, unit, baseline_name=None, baseline=None, target=None, ok=None):
        ratio = (baseline / value) if (baseline and value) else None
        row = dict(num=num, name=name, value=value, unit=unit, baseline_name=baseline_name,
                   baseline=baseline, ratio=ratio, target=target,
                   verdict=None if ok is None else ("PASS" if ok else "MISS"))
        self.rows.append(row)
        base = "" if baseline is None else "  vs %s %.1f %s (%.1fx)" % (baseline_name, baseline, unit, ratio or 0)
        verdict = "" if ok is None else "  [%s: %s]" % (row["verdict"], target)
        print("  #%s %-46s %10.1f %s%s%s" % (num, name, value, unit, base, verdict), flush=True)


def bench_enqueue(R, quick):
    import _egbench as B
    n = 200_000 if quick else 1_000_000
    print("1. deferred-decref enqueue from native threads (ns/op per thread)")
    for threads in (1, 2, 4):
        pin(ALL_CPUS[:1] if threads == 1 else ALL_CPUS)
        eg = median(lambda: B.enqueue(M_EG, threads, n))
        pool = median(lambda: B.enqueue(M_POOL, threads, n))
        kept = median(lambda: B.enqueue(M_GS_KEPT, threads, max(n // 20, 1000)))
        new = median(lambda: B.enqueue(M_GS_NEW, threads, max(n // 100, 500)))
        target = {1: ("<= 8 ns/op", eg <= 8), 2: ("<= 15 ns/op per thread, >= 4x pool", eg <= 15 and pool / eg >= 4),
                  4: (None, None)}[threads]
        R.add(1, "eg_decref, %d thread(s)" % threads, eg, "ns", "mutex+vector pool", pool, *target)
        R.add(1, "  vs PyGILState+DECREF, kept tstate, %d thr" % threads, kept, "ns")
        R.add(1, "  vs PyGILState+DECREF, new tstate, %d thr" % threads, new, "ns")
    pin(ALL_CPUS)


def bench_producer_while_python(R, quick):
    import _egbench as B
    import weakref
    print("2. native producer throughput while the main thread runs bytecode; idle-producer latency")
    n = 200_000 if quick else 1_000_000

    def run(mode, count):
        # The producer's own clock (ns/op inside its loop) while the main thread
        # spins in bytecode the whole time.
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("ns", B.enqueue(mode, 1, count)))
        t.start()
        x = 0
        while t.is_alive():
            x += 1
        t.join()
        return out["ns"]

    eg = median(lambda: run(M_EG, n))
    kept = median(lambda: run(M_GS_KEPT, max(n // 50, 1000)))
    R.add(2, "eg_decref throughput under a busy main thread", eg, "ns/op", "PyGILState kept", kept,
          ">= 1000x", kept / eg >= 1000)

    class X:
        pass

    def latency():
        o = X()
        done = []
        weakref.finalize(o, lambda: done.append(time.perf_counter()))
        B.push_one(o)
        t0 = time.perf_counter()
        del o
        while not done and time.perf_counter() - t0 < 5:
            sum(range(50))
        return (done[0] - t0) * 1e3 if done else 5000.0

    lat = median(latency, 9)
    R.add(2, "latency, idle producer -> decref applied", lat, "ms", target="<= 100 ms", ok=lat <= 100)


def bench_drain(R, quick):
    import _egbench as B
    pin(ALL_CPUS[:1])
    n = 200_000 if quick else 1_000_000
    print("3. drain cost per object (ns)")
    vals = [B.drain(n) for _ in range(REPS)]
    eg = statistics.median(v[0] for v in vals)
    bare = statistics.median(v[1] for v in vals)
    R.add(3, "eg_flush per object", eg, "ns", "bare Py_DECREF loop", bare, "<= 5 ns above", eg - bare <= 5)
    pin(ALL_CPUS)


def bench_ref_pair(R, quick):
    import _egbench as B
    pin(ALL_CPUS[:1])
    n = 1_000_000 if quick else 5_000_000
    print("4. eg_ref_new + eg_ref_release, attached (ns per pair)")
    vals = [B.ref_pair(n) for _ in range(REPS)]
    eg = statistics.median(v[0] for v in vals)
    base = statistics.median(v[1] for v in vals)
    R.add(4, "eg_ref_new + eg_ref_release", eg, "ns", "Py_INCREF+Py_DECREF", base, "<= 20 ns", eg <= 20)
    pin(ALL_CPUS)


def bench_attach(R, quick):
    import _egbench as B
    pin(ALL_CPUS[:1])
    n = 200_000 if quick else 1_000_000
    print("5. attach + release from a registered native thread (ns per pair)")
    eg = median(lambda: B.attach(0, n))
    kept = median(lambda: B.attach(1, n))
    new = median(lambda: B.attach(2, max(n // 20, 1000)))
    R.add(5, "eg_gil_ensure + eg_gil_release", eg, "ns", "PyGILState kept tstate", kept,
          "<= 1.1x kept", eg <= 1.1 * kept)
    R.add(5, "  vs PyGILState with a new tstate each time", new, "ns", target=">= 4x faster", ok=new / eg >= 4)
    pin(ALL_CPUS)


EXIT_SCRIPT = r"""
import sys, time
EG = sys.argv[1] == "eg"
if EG:
    sys.path.insert(0, sys.argv[2])
    import exitguard, _egbench, ticker
    _egbench.hold_refs(1_000_000)
    t = ticker.Ticker(64)
    t.feed_many(object() for _ in range(10_000))
print(repr(time.time()), flush=True)
"""


def bench_exit(R, quick):
    print("6. time from script end to process exit (ms)")

    def once(kind):
        t0 = None
        p = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, kind, BUILD], capture_output=True, text=True, timeout=120)
        end = time.time()
        t0 = float(p.stdout.strip().splitlines()[-1])
        return (end - t0) * 1e3

    base = median(lambda: once("plain"))
    eg = median(lambda: once("eg"))
    R.add(6, "exit with 64 threads + 1,000,000 live refs", eg, "ms", "no exitguard, no threads", base,
          "<= 100 ms added", eg - base <= 100)


def bench_log(R, quick):
    import _egbench as B
    import logging
    logging.getLogger("exitguard").setLevel(logging.ERROR)   # drop warnings: expected here
    logger = logging.getLogger("egbench")
    logger.setLevel(logging.WARNING)
    logger.propagate = False
    logger.addHandler(logging.NullHandler())
    n = 100_000 if quick else 500_000
    print("7. eg_log from a native thread (ns per message)")
    B.log(0, 1000)                        # let exitguard learn the logger's level
    time.sleep(0.2)
    enabled = median(lambda: B.log(0, n))
    disabled = median(lambda: B.log(1, n))
    info = logger.warning
    base = median(lambda: B.log(2, max(n // 20, 1000), info))
    s = __import__("exitguard").stats()
    R.add(7, "eg_log, enabled level (ring full most of the time)", enabled, "ns", "attach + logger call", base,
          "<= 150 ns", enabled <= 150)
    R.add(7, "  log messages delivered / dropped in this run", s["log_delivered"], "msgs")
    R.add(7, "  (dropped)", s["log_dropped"], "msgs")
    R.add(7, "eg_log, disabled level", disabled, "ns", target="<= 5 ns", ok=disabled <= 5)


def bench_completions(R, quick):
    import _egbench as B
    import asyncio
    import exitguard
    n = 200_000 if quick else 1_000_000
    print("8. completions from 2 native threads into asyncio")

    async def run_eg():
        loop = asyncio.get_running_loop()
        q = exitguard.CompletionQueue()
        q.attach(loop)
        B.completed()
        t0 = time.perf_counter()
        B.post(q, None, None, n, 2)
        got = 0
        while got < n:
            await asyncio.sleep(0.001)
            got += B.completed()
        dt = time.perf_counter() - t0
        q.detach()
        return dt, q.stats()["wakeups"]

    async def run_base():
        loop = asyncio.get_running_loop()
        count = [0]
        m = max(n // 20, 1000)

        def cb():
            count[0] += 1

        t0 = time.perf_counter()
        B.post(None, loop.call_soon_threadsafe, cb, m, 2)
        while count[0] < m:
            await asyncio.sleep(0.001)
        return (time.perf_counter() - t0) / m * n

    dt, wakeups = asyncio.run(run_eg())
    base = asyncio.run(run_base())
    R.add(8, "%d completions: time per completion" % n, dt / n * 1e9, "ns", "attach+call_soon_threadsafe", base / n * 1e9)
    R.add(8, "  eventfd writes for the whole run", wakeups, "writes")


def bench_memory(R, quick):
    import _egbench as B
    n = 1_000_000
    print("memory")
    import exitguard
    r0 = rss_kb()
    obj = B.queue_decrefs(n)
    r1 = rss_kb()
    queued = exitguard.stats()["decref_queued"]      # the kicker / pending call may have run
    exitguard.flush()
    del obj
    r2 = rss_kb()
    B.hold_refs(n)
    r3 = rss_kb()
    if queued > n // 2:
        R.add("mem", "bytes per queued decref", (r1 - r0) * 1024 / queued, "bytes")
    else:
        print("  (queued decrefs were applied before they could be measured: %d of %d left)" % (queued, n))
    R.add("mem", "bytes per live eg_ref", (r3 - r2) * 1024 / n, "bytes")


BENCHES = {"1": bench_enqueue, "2": bench_producer_while_python, "3": bench_drain, "4": bench_ref_pair,
           "5": bench_attach, "6": bench_exit, "7": bench_log, "8": bench_completions, "mem": bench_memory}


def write_outputs(R, machine):
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    js = os.path.join(HERE, "results", VER + ".json")
    with open(js, "w") as f:
        json.dump({"python": VER, "machine": machine, "rows": R.rows}, f, indent=1)
    # docs/performance.md: the table between the markers.
    table = ["| # | measurement | exitguard | baseline (same run) | ratio | target |", "|---|---|---|---|---|---|"]
    for r in R.rows:
        base = "%s: %.1f %s" % (r["baseline_name"], r["baseline"], r["unit"]) if r["baseline"] is not None else ""
        ratio = "%.1fx" % r["ratio"] if r["ratio"] else ""
        tgt = "%s **%s**" % (r["target"], r["verdict"]) if r["verdict"] else ""
        table.append("| %s | %s | %.1f %s | %s | %s | %s |" % (r["num"], r["name"].strip(), r["value"], r["unit"], base, ratio, tgt))
    doc = os.path.join(ROOT, "docs", "performance.md")
    text = open(doc).read() if os.path.exists(doc) else ""
    start, end = "<!-- results:%s -->" % VER, "<!-- /results:%s -->" % VER
    block = "%s\nCPython %s on %s.\n\n%s\n%s" % (start, VER, machine, "\n".join(table), end)
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(doc, "w") as f:
        f.write(text)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        rows = [r for r in R.rows if r["baseline"] is not None and r["unit"] == "ns"]
        fig, ax = plt.subplots(figsize=(10, 0.5 + 0.45 * len(rows)))
        names = [r["name"].strip() for r in rows]
        ys = range(len(rows))
        ax.barh([y + 0.2 for y in ys], [r["baseline"] for r in rows], height=0.4, label="baseline (same run)", color="#bbbbbb")
        ax.barh([y - 0.2 for y in ys], [r["value"] for r in rows], height=0.4, label="exitguard", color="#2a6fb0")
        ax.set_yticks(list(ys))
        ax.set_yticklabels(names, fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("ns per operation (log scale, lower is better)")
        ax.set_title("exitguard vs baselines, CPython %s, %s" % (VER, machine), fontsize=9)
        ax.invert_yaxis()
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(HERE, "results", VER + ".png"), dpi=110)
    except ImportError:
        print("(matplotlib not installed: no chart)")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(BENCHES))
    args = ap.parse_args(argv)
    build()
    import exitguard  # noqa: F401
    machine = "%s, %d cores" % (platform.processor() or platform.machine(), os.cpu_count())
    try:
        with open("/proc/cpuinfo") as f:
            model = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")][0]
            machine = "%s, %d cores" % (model, os.cpu_count())
    except (OSError, IndexError):
        pass
    print("exitguard benchmarks -- CPython %s -- %s -- median of %d" % (VER, machine, REPS))
    R = Results()
    for key in args.only.split(","):
        BENCHES[key](R, args.quick)
    write_outputs(R, machine)
    print("wrote bench/results/%s.json, bench/results/%s.png, docs/performance.md" % (VER, VER))


if __name__ == "__main__":
    main()
