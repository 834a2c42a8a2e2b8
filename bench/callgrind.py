"""Instruction counts per operation for benchmarks 1 and 3 under valgrind's callgrind
(`make bench-callgrind`): stable from run to run, whatever the machine is doing.

Each measurement runs the operation N and 2N times in separate processes and divides the
difference of the total instruction counts by N, which cancels interpreter start-up.
"""
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import run as benchrun  # noqa: E402

CODE = {
    "eg_decref enqueue + its drain (1 thread)": "import _egbench as B; B.enqueue(0, 1, {n})",
    "pool push + its drain (1 thread)": "import _egbench as B; B.enqueue(1, 1, {n})",
    "drain: eg_flush + bare Py_DECREF per object": "import _egbench as B; B.drain({n})",
}


def instructions(code):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        p = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, sys.executable, "-c", code],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=benchrun.BUILD))
        m = re.search(r"Collected\s*:\s*(\d+)", p.stderr)
        if not m:
            raise RuntimeError(p.stderr[-2000:])
        return int(m.group(1))


def main():
    benchrun.build()
    n = 100_000
    print("callgrind instruction counts per operation (CPython %s)" % benchrun.VER)
    for name, code in CODE.items():
        a = instructions(code.format(n=n))
        b = instructions(code.format(n=2 * n))
        print("  %-46s %8.1f instructions/op" % (name, (b - a) / n))


if __name__ == "__main__":
    main()
