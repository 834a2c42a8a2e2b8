"""Build and run the realworld scenarios: each build of each scenario in fresh processes.

Used by test_realworld.py (a few runs per scenario inside ``make test``) and by
``make realworld`` (the full count per interpreter, feeding docs/realworld.md):

    python tests/realworld/harness.py --build DIR [--runs N] [--naive-runs N]
                                      [--only NAME,...] [--jobs J] [--json PATH|-]

A run is one ``python run.py <module>`` in a new session (its own process group),
killed as a group when it outlives its timeout.  Its outcome is one word:

    hang       still running at the timeout and using no CPU (a run that still
               burns CPU -- a starved machine -- gets up to 3x the timeout); killed
               with SIGKILL, group-wide; for the exitguard build, every thread's C
               stack (gdb) is appended to its stderr first
    terminate  "terminate called" -- C++ std::terminate (a forced unwind met noexcept)
    fatal      CPython's "Fatal Python error: <function>: <reason>", or a debug
               build's failed C assertion
    crash      killed by a signal (SIGSEGV, SIGABRT, ...) -- also when faulthandler
               reported it as "Fatal Python error: Segmentation fault"
    error      another exit status than expected, or a traceback / "Exception
               ignored" / PythonFinalizationError / "Event loop is closed" on stderr,
               or exitguard naming a thread it could not stop
    killed     exited cleanly, but a native thread was force-unwound (pthread_exit)
    stuck      exited cleanly, but a native thread never ended (parked, or abandoned)
    leak       exited cleanly, but objects native code held were never freed
    lost       exited cleanly, but messages were neither delivered nor counted
    late       exited cleanly, but Python was touched after it must not be
    idle       the scenario never did its work: a broken reproducer, not a result
    slow       clean, but used more CPU time than the scenario's time bound (CPU,
               not wall time: a loaded machine makes runs late, not busy; a run that
               is late and idle is a hang, above) -- or still busy at 3x the timeout
    clean      none of the above

The counters come from the "REALWORLD {json}" line that rw.h prints from exit(),
after every atexit handler and static destructor, and from exitguard's own leak
report (EXITGUARD_LEAKS=warn): a decref exitguard dropped on purpose is counted
there, and counts as accounted for.
"""

import argparse
import concurrent.futures
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import scenarios as scenario_table  # noqa: E402

VARIANTS = ("naive", "exitguard")

# stderr lines that make an otherwise clean exit an "error".
ERROR_MARKERS = (                   # most specific first: the first found names it
    "PythonFinalizationError",
    "Event loop is closed",
    "couldn't stop thread",
    "did not stop within",          # exitguard naming a thread it had to abandon
    "Exception ignored",
    "Traceback (most recent call last)",
)


# What faulthandler prints ("Fatal Python error: <this>") when a signal kills the process.
FAULTHANDLER_SIGNALS = ("Segmentation fault", "Aborted", "Bus error", "Illegal instruction",
                        "Floating-point exception", "Floating point exception")


def module_name(scn, variant):
    return scn.name + ("_naive" if variant == "naive" else "_eg")


def interpreter_label():
    """'3.13.15t', '3.14.0d', ...: the version plus ABI flags, as the Makefile's venvs."""
    import platform

    return platform.python_version() + getattr(sys, "abiflags", "")


# ---- building ---------------------------------------------------------------


def _fingerprint(scns):
    import exitguard

    h = hashlib.sha256()
    h.update(sys.version.encode() + sys.executable.encode())
    files = [os.path.join(HERE, "rw.h"), os.path.abspath(__file__)]
    inc = exitguard.get_include()
    for root, _dirs, names in os.walk(inc):
        files += [os.path.join(root, n) for n in sorted(names)]
    for scn in scns:
        files.append(scn.source)
    for f in files:
        with open(f, "rb") as fh:
            h.update(f.encode() + b"\0" + fh.read())
    return h.hexdigest()


def build(scns, build_dir, *, jobs=2):
    """Build both variants of every scenario into build_dir (cached by content)."""
    import exitguard

    build_dir = os.path.abspath(build_dir)
    os.makedirs(build_dir, exist_ok=True)
    stamp = os.path.join(build_dir, "stamp")
    fp = _fingerprint(scns)
    if os.path.exists(stamp):
        with open(stamp) as f:
            if f.read() == fp:
                return
    exts = []
    for scn in scns:
        cxx = scn.source.endswith(".cpp")
        std = "-std=c++17" if cxx else "-std=c11"
        for variant in VARIANTS:
            name = module_name(scn, variant)
            macros = [("RW_MODULE", name)] + ([("RW_NAIVE", "1")] if variant == "naive" else [])
            # One translation unit per build: setuptools names object files after
            # their source, so the two builds of one source need two files.
            unit = os.path.join(build_dir, "src", name + (".cpp" if cxx else ".c"))
            os.makedirs(os.path.dirname(unit), exist_ok=True)
            with open(unit, "w") as f:
                f.write('/* generated by harness.py */\n#include "%s"\n' % scn.source)
            exts.append(
                dict(name=name, sources=[unit], define_macros=macros,
                     include_dirs=[HERE] + ([] if variant == "naive" else [exitguard.get_include()]),
                     extra_compile_args=[std, "-Wall", "-Wextra", "-Werror", "-O1", "-g"],
                     extra_link_args=["-pthread"], language="c++" if cxx else "c")
            )
    setup_py = os.path.join(build_dir, "setup_realworld.py")
    with open(setup_py, "w") as f:
        f.write(textwrap.dedent(
            """
            import json
            from setuptools import Extension, setup
            exts = [Extension(**dict(e, define_macros=[tuple(m) for m in e["define_macros"]])) for e in json.loads(%r)]
            setup(name="realworld-scenarios", ext_modules=exts)
            """ % json.dumps(exts)))
    proc = subprocess.run(
        [sys.executable, setup_py, "-q", "build_ext", "-j", str(jobs), "-b", build_dir,
         "-t", os.path.join(build_dir, "tmp")],
        cwd=build_dir, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError("building the realworld scenarios failed:\n%s\n%s" % (proc.stdout, proc.stderr))
    with open(stamp, "w") as f:
        f.write(fp)


# ---- running ----------------------------------------------------------------


class Outcome:
    def __init__(self, kind, detail, returncode, elapsed, stdout, stderr, counters):
        self.kind = kind
        self.detail = detail
        self.returncode = returncode
        self.elapsed = elapsed
        self.stdout = stdout
        self.stderr = stderr
        self.counters = counters

    def describe(self):
        return "%s (%s): exit status %r after %.2f s\ncounters: %s\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
            self.kind, self.detail, self.returncode, self.elapsed, json.dumps(self.counters),
            self.stdout[-3000:], self.stderr[-6000:])


def _counters(stdout, stderr):
    counters, overlay = {}, {}
    for line in stdout.splitlines():
        if line.startswith("REALWORLD {"):
            counters.update(json.loads(line[len("REALWORLD "):]))
        elif line.startswith("RWDATA {"):
            # What the script measured itself (from exitguard's counters): wins
            # over the extension's own tallies, which it replaces.
            overlay.update(json.loads(line[len("RWDATA "):]))
    counters.update(overlay)
    # exitguard's own account of what it leaked on purpose (EXITGUARD_LEAKS=warn).
    counted = 0
    for pat in (r"exitguard: (\d+) deferred decref\(s\) arrived after phase 2",
                r"exitguard:\s+(\d+) deferred decref\(s\) dropped after stop"):
        for m in re.finditer(pat, stderr):
            counted += int(m.group(1))
    counters["eg_counted_leaks"] = counted
    return counters


def classify(scn, variant, returncode, elapsed, stdout, stderr, timed_out, timeout=None):
    counters = _counters(stdout, stderr)
    if timed_out == "busy":
        return "slow", "still using CPU after %g s (3x the timeout)" % (3 * (timeout or 0)), counters
    if timed_out:
        return "hang", "no exit within %g s" % (timeout if timeout else elapsed), counters
    if "terminate called" in stderr:
        return "terminate", "std::terminate", counters
    # A debug build's C assertion (abort), or CPython's own Py_FatalError.  Not the
    # "Fatal Python error: Segmentation fault" that faulthandler prints for a
    # signal: that is a crash, named after its signal below.
    for line in stderr.splitlines():
        if "Assertion" in line and "failed" in line:
            return "fatal", "assertion: " + line.strip()[:160], counters
    for line in stderr.splitlines():
        if "Fatal Python error" in line and not any(sig in line for sig in FAULTHANDLER_SIGNALS):
            return "fatal", line.strip()[:160], counters
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "signal %d" % -returncode
        return "crash", name, counters
    expected = scn.exit_code
    if returncode != expected:
        return "error", "exit status %d, expected %d" % (returncode, expected), counters
    for marker in ERROR_MARKERS:
        if marker in stderr and marker not in scn.allowed_stderr.get(variant, ()):
            return "error", "stderr: %s" % marker, counters
    if "module" not in counters:
        return "error", "no REALWORLD report from exit()", counters
    for check in scn.checks:
        problem = check(counters, variant)
        if problem:
            return problem[0], problem[1], counters
    cpu = counters.get("cpu_ms", 0) / 1000.0
    if cpu > scn.time_bound:
        return "slow", "%.1f s of CPU > %.1f s" % (cpu, scn.time_bound), counters
    return "clean", "", counters


def _cpu_seconds(pid):
    """CPU time (user + system, all threads) the process has used, or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _cpu_progress(pid, window=0.5):
    """CPU seconds the process used during the next `window` seconds."""
    a = _cpu_seconds(pid)
    time.sleep(window)
    b = _cpu_seconds(pid)
    return 0.0 if a is None or b is None else b - a


def _native_stacks(pid):
    """Every thread's C stack of a hung process, when gdb is installed (else "")."""
    import shutil

    if shutil.which("gdb") is None:
        return ""
    try:
        proc = subprocess.run(["gdb", "-q", "-batch", "-p", str(pid), "-ex", "thread apply all bt 16"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = [l for l in proc.stdout.splitlines() if l.startswith(("#", "Thread "))]
    return "\n--- native stacks at the timeout (gdb) ---\n" + "\n".join(lines[:200]) + "\n"


def run_once(scn, variant, build_dir, *, timeout=None):
    """One fresh process of one build of one scenario; returns an Outcome."""
    if timeout is None:
        timeout = scn.timeout
    build_dir = os.path.abspath(build_dir)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([build_dir, HERE] + [p for p in [env.get("PYTHONPATH")] if p])
    env["PYTHONFAULTHANDLER"] = "1"
    env["EXITGUARD_LEAKS"] = "warn"
    env.pop("PYTHONDEVMODE", None)
    env.update(scn.env)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, os.path.join(scn.folder, "run.py"), module_name(scn, variant)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env=env, cwd=scn.folder, start_new_session=True,
    )
    timed_out = False
    stacks = ""
    deadline, cap = t0 + timeout, t0 + 3 * timeout
    while True:
        try:
            out, err = proc.communicate(timeout=max(0.05, deadline - time.monotonic()))
            break
        except subprocess.TimeoutExpired:
            pass
        # communicate() raises once its deadline has passed even when the child has
        # already exited -- e.g. when this thread was starved past the deadline.
        if proc.poll() is not None:
            out, err = proc.communicate()
            break
        # Still running at the deadline.  A hang (parked threads, a deadlock) burns
        # no CPU; a run starved by a loaded machine does: give that one more time,
        # up to 3x the timeout.
        busy = _cpu_progress(proc.pid) >= 0.1
        if busy and time.monotonic() < cap:
            deadline = time.monotonic() + 1.0
            continue
        if proc.poll() is not None:
            continue                            # it ended while we were measuring
        timed_out = "busy" if busy else "idle"
        if variant == "exitguard":
            stacks = _native_stacks(proc.pid)   # a finding: say where it hangs
        # A hung naive build may have children or parked threads: kill the group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        break
    elapsed = time.monotonic() - t0
    out = out.decode("utf-8", "replace")
    err = err.decode("utf-8", "replace") + stacks
    kind, detail, counters = classify(scn, variant, proc.returncode, elapsed, out, err, timed_out,
                                      timeout)
    return Outcome(kind, detail, proc.returncode, elapsed, out, err, counters)


def run_matrix(scns, build_dir, *, runs, naive_runs=None, jobs=1, progress=None):
    """Run every scenario `runs` times per build (naive: `naive_runs`).

    Returns {scenario: {variant: [Outcome, ...]}}."""
    if naive_runs is None:
        naive_runs = runs
    work = []
    for scn in scns:
        for variant, n in (("naive", naive_runs), ("exitguard", runs)):
            work += [(scn, variant)] * n
    results = {scn.name: {v: [] for v in VARIANTS} for scn in scns}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        futs = {ex.submit(run_once, scn, variant, build_dir): (scn, variant) for scn, variant in work}
        for fut in concurrent.futures.as_completed(futs):
            scn, variant = futs[fut]
            o = fut.result()
            results[scn.name][variant].append(o)
            if progress:
                progress(scn, variant, o)
    return results


def tally(outcomes):
    """{'clean': 8, 'crash': 2} for a list of Outcomes."""
    counts = {}
    for o in outcomes:
        counts[o.kind] = counts.get(o.kind, 0) + 1
    return counts


def summary_json(results):
    """What make realworld stores per interpreter: counts, plus one example per bad kind."""
    out = {"interpreter": interpreter_label(), "executable": sys.executable,
           "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
           "date": time.strftime("%Y-%m-%d"), "scenarios": {}}
    for name, by_variant in results.items():
        entry = {}
        for variant, outcomes in by_variant.items():
            examples = {}
            for o in outcomes:
                if o.kind != "clean" and o.kind not in examples:
                    examples[o.kind] = o.detail
            entry[variant] = {"runs": len(outcomes), "outcomes": tally(outcomes), "examples": examples}
        out["scenarios"][name] = entry
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", required=True, help="build folder (cached by content)")
    ap.add_argument("--runs", type=int, default=10, help="runs per scenario of the exitguard build")
    ap.add_argument("--naive-runs", type=int, default=None, help="runs of the naive build (default: --runs)")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel")
    ap.add_argument("--json", default=None, help="write the summary here ('-': stdout, one line)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every bad outcome in full")
    args = ap.parse_args(argv)

    scns = scenario_table.select(args.only)
    build(scns, args.build, jobs=args.jobs)

    told = set()

    def progress(scn, variant, o):
        print("%-40s %-9s %-9s %6.2fs %s" % (scn.name, variant, o.kind, o.elapsed, o.detail),
              file=sys.stderr, flush=True)
        # Every bad outcome in full with -v; without it, the first of each kind for
        # an exitguard build (a finding: its output and stacks are the evidence).
        first = variant == "exitguard" and (scn.name, o.kind) not in told
        if o.kind != "clean" and (args.verbose or first):
            told.add((scn.name, o.kind))
            print(textwrap.indent(o.describe(), "    | "), file=sys.stderr, flush=True)

    t0 = time.monotonic()
    results = run_matrix(scns, args.build, runs=args.runs, naive_runs=args.naive_runs,
                         jobs=args.jobs, progress=progress)
    summary = summary_json(results)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    bad = [(n, v) for n, by in results.items() for v, os_ in by.items()
           if v == "exitguard" and any(o.kind != "clean" for o in os_)]
    print("%s: %d scenarios in %.0f s; exitguard not clean in: %s" % (
        summary["interpreter"], len(scns), summary["seconds"],
        ", ".join(n for n, _ in bad) or "none"), file=sys.stderr)
    if args.json == "-":
        print("REALWORLD-RESULTS " + json.dumps(summary, sort_keys=True))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1, sort_keys=True)
            f.write("\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
