"""Instruction counts of exitguard's hot paths under valgrind's callgrind: the
regression guard that does not move with machine load.

    python bench/callgrind.py            print this interpreter's counts beside its baseline
    python bench/callgrind.py --update   ... and record them in bench/callgrind_baseline.json
    python bench/callgrind.py --check    exit 1 when a guarded count grew past the margin
                                         (tests/test_callgrind_guard.py runs this)

One valgrind process runs every case: `--toggle-collect=egb_loop_*` counts only inside
the timed loops of bench/_egbench.c (noinline functions) and what they call, so
interpreter start-up and each case's set-up are not counted, and after each case
_egbench.callgrind_dump() (a callgrind client request) dumps the counters under the
case's name and zeroes them; a dump's total divided by the case's operations is the
count per operation.  (Dumps, not callgrind_annotate's inclusive costs: those lose the
callees of a loop whose calls block and switch threads, as an attach does.)  Instructions are not time: an atomic read-modify-write or a
cache miss counts as one instruction.  Under valgrind threads run one at a time, so
only single-thread paths are measured.

Counts depend on CPython's own code (the attach path is mostly CPython's), on the
compiler and on glibc, so the baseline is kept per interpreter (major.minor plus ABI
flags); a count is guarded when it belongs to exitguard ("guarded": true), and the
CPython references beside it are information.  The check fails when a guarded count
exceeds baseline * (1 + MARGIN) + SLACK; a count that fell by more than the margin is
reported so that the baseline can be lowered with --update (make bench-callgrind).
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import build as egbuild  # noqa: E402

BASELINE = os.path.join(HERE, "callgrind_baseline.json")
MARGIN = 0.10       # a guarded count may grow by 10% ...
SLACK = 3.0         # ... plus 3 instructions, for the paths of a dozen instructions
# Version plus ABI flags: 3.13t and 3.15d count differently from 3.13 and 3.15.
KEY = "%d.%d%s" % (sys.version_info[0], sys.version_info[1], getattr(sys, "abiflags", ""))
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

# (name, label, loop function, Python code, operations, guarded)
CASES = [
    ("enqueue", "eg_decref from a native thread, main thread attached (enqueue)",
     "egb_loop_eg_decref", "B.enqueue(B.M_EG, 1, {n})", 100_000, True),
    ("drain", "eg_flush per queued object (objects stay alive)",
     "egb_loop_flush", "print('EGB-OPS drain', B.drain({n}, False)[2])", 100_000, True),
    ("drain_ref", "  reference: bare Py_DECREF loop over the same objects",
     "egb_loop_bare_decref", None, 100_000, False),
    ("attach", "eg_gil_ensure + eg_gil_release from a native thread (kept state)",
     "egb_loop_eg_attach", "B.run('attach/eg', {n})", 20_000, True),
    ("attach_ref", "  reference: PyGILState_Ensure + Release, thread state kept",
     "egb_loop_gs_attach", "B.run('attach/gilstate_kept', {n})", 20_000, False),
    ("ref_pair", "eg_ref_new + eg_ref_release, attached",
     "egb_loop_ref_pair", "B.ref_pair({n})", 100_000, True),
    ("log_disabled", "eg_log at a disabled level",
     "egb_loop_log", "B.log_job(B.L_DISABLED, 10, {n})", 100_000, True),
    ("log_site", "EG_LOG at a disabled level (level kept at the call site)",
     "egb_loop_log_site", "B.log_job(B.L_SITE, 10, {n})", 100_000, True),
    ("log_enabled_query", "eg_log_enabled at the same level",
     "egb_loop_log_enabled", "B.log_job(B.L_ENABLED_QUERY, 10, {n})", 100_000, True),
]

SCRIPT = """
import sys, logging
sys.path.insert(0, {build!r})
import _egbench as B
logging.getLogger(B.LOGGER).setLevel(logging.WARNING)
B.log_job(B.L_ENABLED, logging.WARNING, 1)    # the logger's level is learnt
import exitguard, time
t0 = time.monotonic()
while exitguard.stats()["log_delivered"] < 1 and time.monotonic() - t0 < 60:
    time.sleep(0.01)
B.callgrind_dump("setup")                      # what the set-up collected: dropped
{cases}
"""


def measure():
    """{case: instructions per operation} for this interpreter, from one valgrind run."""
    lines = []
    for name, _, _, code, n, _ in CASES:
        if code is not None:
            lines.append(code.format(n=n))
            if name != "drain":                  # b_drain dumps "drain" and "drain_ref" itself
                lines.append("B.callgrind_dump(%r)" % name)
    prog = SCRIPT.format(build=egbuild.BUILD, cases="\n".join(lines))
    env = dict(os.environ, PYTHONHASHSEED="0")
    env.pop("EXITGUARD_LEAKS", None)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        p = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out,
                            "--collect-atstart=no", "--toggle-collect=egb_loop_*",
                            sys.executable, "-c", prog], capture_output=True, text=True, env=env)
        if p.returncode != 0:
            raise SystemExit("callgrind failed (%d):\n%s" % (p.returncode, p.stderr[-3000:]))
        # A case whose operations are known only after it ran prints "EGB-OPS name n"
        # (the drain: on a free-threaded build the kicker may apply part of the queue).
        ops = {m.group(1): int(m.group(2)) for m in re.finditer(r"^EGB-OPS (\S+) (\d+)$", p.stdout, re.M)}
        totals = {}
        for path in os.listdir(d):
            with open(os.path.join(d, path)) as f:
                text = f.read()
            # Each dump: "desc: Trigger: Client Request: <name>" ... "totals: <Ir>".
            trig = re.search(r"^desc: Trigger: Client Request: (\S+)", text, re.M)
            tot = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
            if trig and tot:
                totals[trig.group(1)] = int(tot.group(1))
    counts = {}
    for name, _, loop, _, n, _ in CASES:
        if name not in totals:
            raise SystemExit("callgrind: no dump for %s (dumps: %s); is valgrind/callgrind.h missing at "
                             "build time?\n%s" % (name, ", ".join(sorted(totals)) or "none", p.stderr[-2000:]))
        counts[name] = round(totals[name] / max(ops.get(name, n), 1), 1)
    return counts


def valgrind_version():
    return subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip()


def load_baseline():
    if os.path.exists(BASELINE):
        with open(BASELINE) as f:
            return json.load(f)
    return {"margin": MARGIN, "slack": SLACK, "interpreters": {}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--update", action="store_true", help="record this interpreter's counts as its baseline")
    ap.add_argument("--check", action="store_true", help="exit 1 when a guarded count grew past the margin")
    args = ap.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_annotate") is None:
        raise SystemExit("bench/callgrind.py needs valgrind (Debian/Ubuntu: apt-get install valgrind)")
    egbuild.build(peers=False)
    import exitguard
    counts = measure()
    base = load_baseline()
    entry = base["interpreters"].get(KEY)
    print("callgrind: instructions per operation, CPython %s (baseline key %s), exitguard %s, %s" % (
        platform.python_version(), KEY, exitguard.__version__, valgrind_version()))
    grew, fell = [], []
    for name, label, _, _, _, guarded in CASES:
        # Free-threaded: the kicker, with no GIL to wait for, drains part of the queue
        # while the case runs, so the drain's count per object is information only.
        guarded = guarded and not (FREE_THREADED and name == "drain")
        now = counts[name]
        was = entry["counts"].get(name) if entry else None
        verdict = ""
        if was is not None:
            limit = was * (1 + base["margin"]) + base["slack"]
            if guarded and now > limit:
                verdict = "GREW past %.1f" % limit
                grew.append(name)
            elif guarded and now < was * (1 - base["margin"]):
                verdict = "fell: lower the baseline (make bench-callgrind)"
                fell.append(name)
        print("  %-18s %-66s %8.1f  baseline %-8s %s%s" % (
            name, label, now, "-" if was is None else "%.1f" % was, "" if guarded else "(reference) ", verdict))
    if args.update:
        base["interpreters"][KEY] = dict(python=platform.python_version(), exitguard=exitguard.__version__,
                                         valgrind=valgrind_version(), counts=counts)
        base["interpreters"] = dict(sorted(base["interpreters"].items(),
                                           key=lambda kv: tuple(int(x) for x in re.findall(r"\d+", kv[0]))
                                           + (kv[0].endswith("t"),)))
        base.setdefault("cases", {})
        base["cases"] = {c[0]: dict(label=c[1].strip(), loop=c[2], guarded=c[5]) for c in CASES}
        with open(BASELINE, "w") as f:
            json.dump(base, f, indent=1)
            f.write("\n")
        print("wrote %s (%s)" % (os.path.relpath(BASELINE, ROOT), KEY))
    if args.check:
        if entry is None:
            print("no baseline for %s: nothing to check" % KEY)
        elif grew:
            print("FAIL: %s grew by more than %.0f%% + %g instructions over the baseline" % (
                ", ".join(grew), 100 * base["margin"], base["slack"]))
            return 1
        else:
            print("OK: no guarded count grew by more than %.0f%% + %g instructions" % (
                100 * base["margin"], base["slack"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
