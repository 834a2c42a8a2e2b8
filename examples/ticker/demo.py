"""`make demo`: what exitguard changes for an extension with native threads.

1. The ticker workload on exitguard: in a fresh interpreter, 4 native threads churn
   through 200,000 Python objects (each counts its own finalization), the script ends
   while they are mid-work, and an atexit handler registered before exitguard (so it runs
   after exitguard's phase 2) reports what happened: objects handed over and freed,
   decrefs exitguard applied, and the time from script end to process exit.
2. Naive vs guarded: the same workload built on raw PyGILState_Ensure (the
   ticker_naive module) and on exitguard (ticker), each run many times in fresh
   interpreters with a timeout.  The numbers are shown, not asserted: what the naive
   build does at exit depends on the CPython version (pthread_exit on 3.9-3.13.7,
   a hang on 3.13.8+ and 3.14, a crash once the interpreter is freed).
3. Services: the native workers log into Python's logging (their own thread names on
   the records, no GIL taken by them), and an asyncio program awaits futures that the
   native workers complete through an exitguard.CompletionQueue.

Every child runs with a timeout; the demo exits non-zero only if the guarded build
misbehaves: a non-zero exit code, "Fatal Python error" on stderr, a hang, or fewer
objects freed than handed over.  Ctrl-C ends it cleanly.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

RUNS = int(os.environ.get("DEMO_RUNS", "20"))
TIMEOUT = 20

CHILD = r"""
import atexit, json, sys, time
freed = [0]
class Item:
    __slots__ = ("n",)
    def __init__(self, n): self.n = n
    def __del__(self): freed[0] += 1
report = {}
def final():
    # Registered before exitguard and the extension are imported: atexit runs
    # handlers last-in first-out, so this one runs after exitguard's phase 2.
    report["freed"] = freed[0]
    if "exitguard" in sys.modules:
        report["stats"] = sys.modules["exitguard"].stats()
    report["end"] = END[0]
    sys.stdout.write(json.dumps(report) + "\n"); sys.stdout.flush()
atexit.register(final)
END = [0.0]
import {module} as ticker
ticks = [0]
def on_tick(n): ticks[0] += 1
t = ticker.Ticker({threads}, spin={spin}, on_tick=on_tick, tick_every={tick_every})
N = {items}
t.feed_many(Item(i) for i in range(N))
report["handed_over"] = N
time.sleep(0.05)           # let the workers get going; the script then just ends
report["processed_at_end"] = t.stats()["processed"]
END[0] = time.time()       # wall clock: comparable across processes
"""


def run_child(module, threads=4, items=100000, spin=2000, tick_every=1, timeout=TIMEOUT):
    code = (CHILD.replace("{module}", module).replace("{threads}", str(threads))
            .replace("{items}", str(items)).replace("{spin}", str(spin))
            .replace("{tick_every}", str(tick_every)))
    t0 = time.time()
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"outcome": "hang", "elapsed": time.time() - t0}
    end = time.time()
    report = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
    if proc.returncode < 0:
        outcome = "crash (%s)" % signal.Signals(-proc.returncode).name
    elif "Fatal Python error" in proc.stderr:
        outcome = "fatal error"
    elif proc.returncode != 0:
        outcome = "exit %d" % proc.returncode
    else:
        outcome = "clean"
    report["outcome"] = outcome
    report["returncode"] = proc.returncode
    report["exit_ms"] = (end - report["end"]) * 1000 if report.get("end") else None
    report["stderr"] = proc.stderr
    return report


def part1():
    n = 200000
    print("== 1. ticker on exitguard: 4 native threads, %s objects, the script ends mid-work" % format(n, ","))
    r = run_child("ticker", items=n, spin=20000, tick_every=0, timeout=60)
    s = r.get("stats", {})
    print("   objects handed over:     %s (%s still queued when the script ended)"
          % (r.get("handed_over"), n - r["processed_at_end"] if "processed_at_end" in r else "?"))
    print("   objects freed by exit:   %s" % r.get("freed"))
    print("   decrefs applied by exitguard (queued by native threads): %s" % s.get("decref_applied"))
    if r.get("exit_ms") is not None:
        print("   script end -> exit:      %.0f ms" % r["exit_ms"])
    print("   exit code:               %s (%s)" % (r.get("returncode", "-"), r["outcome"]))
    ok = r["outcome"] == "clean" and r.get("freed") == r.get("handed_over")
    if not ok:
        print(r.get("stderr", ""))
    return ok


def part2():
    print()
    print("== 2. naive (PyGILState_Ensure) vs guarded (exitguard), %d runs each, Python %s" % (RUNS, sys.version.split()[0]))
    print("   workload: 4 native threads each spend ~1 ms of native work per object and call back")
    print("   into Python after each one; the script ends with a backlog of 2,000 objects")
    print("   %-8s %6s %6s %6s %7s %7s %12s %14s" % ("build", "runs", "clean", "hangs", "crashes", "other", "median exit", "objects freed"))
    guarded_ok = True
    for module in ("ticker_naive", "ticker"):
        counts = {"clean": 0, "hang": 0, "crash": 0, "other": 0}
        times = []
        freed = handed = 0
        for _ in range(RUNS):
            r = run_child(module, items=2000, spin=300000)
            freed += r.get("freed", 0)
            handed += 2000
            o = r["outcome"]
            key = "clean" if o == "clean" else "hang" if o == "hang" else "crash" if o.startswith(("crash", "fatal")) else "other"
            counts[key] += 1
            if r.get("exit_ms") is not None:
                times.append(r["exit_ms"])
        times.sort()
        median = "%.0f ms" % times[len(times) // 2] if times else "-"
        name = "naive" if module == "ticker_naive" else "guarded"
        print("   %-8s %6d %6d %6d %7d %7d %12s %13.1f%%" % (name, RUNS, counts["clean"], counts["hang"], counts["crash"],
                                                             counts["other"], median, 100.0 * freed / handed))
        if module == "ticker" and (counts["clean"] != RUNS or freed != handed):
            guarded_ok = False
    return guarded_ok


SERVICES = r"""
import asyncio, atexit, logging, sys, time
logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                    format="   log: %(threadName)-9s %(name)s: %(message)s")
def summary():   # registered before exitguard: runs after its phase 2
    s = exitguard.stats()
    print("   exitguard: %d native log lines delivered, %d dropped" % (s["log_delivered"], s["log_dropped"]))
atexit.register(summary)
import exitguard, ticker

async def main():
    loop = asyncio.get_running_loop()
    q = exitguard.CompletionQueue()
    q.attach(loop)
    t = ticker.Ticker(2, spin=20000)
    futs = []
    for i in range(10000):
        f = loop.create_future()
        t.submit(q, f, i)
        futs.append(f)
    t0 = time.perf_counter()
    results = await asyncio.gather(*futs)
    took = time.perf_counter() - t0
    assert results == list(range(10000))
    print("   asyncio: awaited %d futures completed by native threads in %.0f ms; "
          "eventfd wake-ups: %d" % (len(results), took * 1e3, q.stats()["wakeups"]))
    t.stop()       # the workers log as they stop
    q.detach()

asyncio.run(main())
"""


def part3():
    print()
    print("== 3. native logging and asyncio completions")
    try:
        proc = subprocess.run([sys.executable, "-c", SERVICES], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        print("   timed out")
        return False
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0 or "Traceback" in proc.stderr:
        print(proc.stderr)
        return False
    return True


def main():
    ok = part1()
    ok = part2() and ok
    ok = part3() and ok
    print()
    print("demo %s" % ("OK" if ok else "FAILED: the guarded build misbehaved"))
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ndemo interrupted (Ctrl-C): children were ended by the same signal")
        sys.exit(130)
