"""The instruction-count guard: exitguard's hot paths (the decref enqueue, the drain
per object, an attach and release, the eg_ref pair, a disabled-level eg_log) must not
grow by more than the stated margin over bench/callgrind_baseline.json.

Instruction counts under callgrind do not move with machine load, so this is a test
where timing never could be.  It runs bench/callgrind.py --check (one valgrind
process, about ten seconds) on the interpreters the baseline keeps -- one per path
that differs: 3.11 (the attached test of 3.9-3.11), 3.13t (free-threaded), 3.14 and
3.15 (PEP 788) -- and is skipped elsewhere, and where valgrind is missing.  After a
deliberate change, `make bench-callgrind PYTHON=...` records the new counts.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = os.path.join(ROOT, "bench", "callgrind_baseline.json")
KEY = "%d.%d%s" % (sys.version_info[0], sys.version_info[1], getattr(sys, "abiflags", ""))


def test_hot_paths_do_not_grow():
    """The hot paths' instruction counts under callgrind stay within the margin of the recorded baseline."""
    if shutil.which("valgrind") is None:
        pytest.skip("valgrind is not installed")
    with open(BASELINE) as f:
        base = json.load(f)
    if KEY not in base["interpreters"]:
        pytest.skip("no instruction-count baseline for %s (bench/callgrind_baseline.json keeps %s)"
                    % (KEY, ", ".join(base["interpreters"])))
    p = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "callgrind.py"), "--check"],
                       cwd=ROOT, capture_output=True, text=True, timeout=280)
    print(p.stdout)
    assert p.returncode == 0, "instruction counts grew (margin %.0f%% + %g):\n%s%s" % (
        100 * base["margin"], base["slack"], p.stdout, p.stderr[-3000:])
