"""Instruction counts per operation for benchmarks 1 and 3 under valgrind's callgrind
(`make bench-callgrind`): unlike nanoseconds they do not move with machine load, so a
change in the enqueue or drain path shows up as a change in these numbers.

Each measurement runs one bench/_egbench.c function in a fresh interpreter under
`valgrind --tool=callgrind --toggle-collect=<loop>`: only the timed loop (an egb_loop_*
function, noinline) and what it calls are counted, so interpreter start-up, the set-up
and the drain of the enqueue benchmarks are not.  Instructions are not cycles: an atomic
read-modify-write or a cache miss counts as one.  Under valgrind, threads run one at a
time and membarrier(2) may be unavailable (exitguard then uses a fence instead: one
instruction), so only the single-thread paths are measured.

Writes bench/results/<python-version>-callgrind.json and this interpreter's callgrind
table in docs/performance.md.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import report  # noqa: E402
import run  # noqa: E402

N = 100_000

# (bench, label, loop function, Python code run under callgrind, operations counted)
CASES = [
    ("1", "eg_decref, 1 thread (main thread holds the GIL)", "egb_loop_eg_decref",
     "B.enqueue(B.M_EG, 1, {n})", N),
    ("1", "(a) mutex+vector pool push", "egb_loop_pool_push", "B.enqueue(B.M_POOL, 1, {n})", N),
    ("1", "(b) PyGILState_Ensure + Py_DECREF + Release, kept tstate", "egb_loop_gs_decref",
     "B.enqueue(B.M_GS_KEPT, 1, {n})", N // 10),
    ("1", "(c) the same, new tstate each time", "egb_loop_gs_decref",
     "B.enqueue(B.M_GS_NEW, 1, {n})", N // 100),
    ("3", "eg_flush per object (objects stay alive)", "egb_loop_flush", "B.drain({n}, False)", N),
    ("3", "bare Py_DECREF loop, same objects", "egb_loop_bare_decref", "B.drain({n}, False)", N),
    ("3", "eg_flush per object (each decref frees)", "egb_loop_flush", "B.drain({n}, True)", N),
    ("3", "bare Py_DECREF loop, same objects (frees)", "egb_loop_bare_decref", "B.drain({n}, True)", N),
]
if sys.version_info < (3, 12):
    CASES.insert(1, ("1", "eg_decref, 1 thread, GIL idle (3.9-3.11 fast path)", "egb_loop_eg_decref",
                     "B.enqueue(B.M_EG, 1, {n}, True)", N))


def instructions(loop, code):
    """Instructions executed inside `loop` (inclusive) while running `code`."""
    prog = "import sys; sys.path.insert(0, %r); import _egbench as B; %s" % (run.BUILD, code)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "callgrind.out")
        p = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                            "--toggle-collect=%s*" % loop, sys.executable, "-c", prog],
                           capture_output=True, text=True)
        m = re.search(r"Collected\s*:\s*(\d+)", p.stderr)
        if p.returncode != 0 or not m:
            raise RuntimeError("callgrind failed (%d):\n%s" % (p.returncode, p.stderr[-3000:]))
        return int(m.group(1))


def main():
    if shutil.which("valgrind") is None:
        sys.exit("bench-callgrind needs valgrind (Debian/Ubuntu: apt-get install valgrind)")
    run.build()
    import exitguard
    print("callgrind: instructions per operation, CPython %s, exitguard %s" % (run.VER, exitguard.__version__))
    rows = []
    for bench, label, loop, code, n in CASES:
        ir = instructions(loop, code.format(n=n))
        rows.append(dict(bench=bench, label=label, loop=loop, ops=n, instructions=ir, per_op=ir / n))
        print("  #%s %-60s %9.1f instructions/op" % (bench, label, ir / n), flush=True)
    os.makedirs(report.RESULTS, exist_ok=True)
    path = os.path.join(report.RESULTS, run.VER + "-callgrind.json")
    meta = dict(python=run.VER, exitguard=exitguard.__version__, date=time.strftime("%Y-%m-%d"),
                valgrind=subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip())
    with open(path, "w") as f:
        json.dump(dict(meta, rows=rows), f, indent=1)
        f.write("\n")
    lines = ["CPython %s, exitguard %s, %s, %s." % (meta["python"], meta["exitguard"], meta["valgrind"], meta["date"]),
             "", "| # | loop | instructions per operation |", "|---|---|---|"]
    lines += ["| %s | %s | %.1f |" % (r["bench"], r["label"], r["per_op"]) for r in rows]
    report.replace_block("callgrind", run.VER, "\n".join(lines))
    print("wrote %s, docs/performance.md" % os.path.relpath(path, run.ROOT))


if __name__ == "__main__":
    main()
