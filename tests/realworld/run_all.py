"""`make realworld`: every scenario, both builds, N runs, on every interpreter; then the table.

Interpreters come in the tiers of `make test-all` (.ci/test-all.sh): every CPython
>= 3.9 under pyenv, 3.13.15 and 3.13.15t built from source (.ci/build-cpython.sh),
and 3.14, 3.15 and their debug builds in the Debian sid chroot (.ci/sid.sh).  For
each, `make realworld-one PYTHON=...` builds exitguard and the scenarios in that
interpreter's venv and prints one "REALWORLD-RESULTS {json}" line, stored as
tests/realworld/results/<interpreter>.json; then docs/realworld.md is regenerated.

    REALWORLD_RUNS=10       runs per scenario and build (default 10)
    REALWORLD_PYTHONS="..." these interpreters instead of the tiers (host paths)
    REALWORLD_ONLY="a,b"    only these scenarios; their entries replace the old ones
    EG_TIERS="pyenv source sid"

A tier that cannot be set up here is reported and skipped; its old results file,
if any, stays (the table says when each was made).  Exit status 1 when an
exitguard build was not clean anywhere, or an interpreter could not be run.
"""

import glob
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RESULTS = os.path.join(HERE, "results")
sys.path.insert(0, HERE)

import gen_table  # noqa: E402


def log(msg):
    print("realworld: " + msg, file=sys.stderr, flush=True)


def is_cpython_39(py):
    try:
        return subprocess.run([py, "-c", "import sys; sys.exit(not (sys.implementation.name == "
                               "'cpython' and sys.version_info >= (3, 9)))"],
                              capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def interpreters():
    """[(label for messages, command prefix to run make with, PYTHON value)]."""
    explicit = os.environ.get("REALWORLD_PYTHONS", "").split()
    if explicit:
        return [(py, [], py) for py in explicit], []
    found, problems = [], []
    tiers = os.environ.get("EG_TIERS", "pyenv source sid").split()
    if "pyenv" in tiers:
        root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
        pys = [p for p in sorted(glob.glob(os.path.join(root, "versions", "*", "bin", "python")))
               if is_cpython_39(p)]
        if not pys:
            problems.append("tier pyenv: no CPython >= 3.9 under %s" % root)
        found += [(p, [], p) for p in pys]
    if "source" in tiers:
        proc = subprocess.run([os.path.join(ROOT, ".ci", "build-cpython.sh")], cwd=ROOT,
                              capture_output=True, text=True)
        if proc.returncode == 0:
            found += [(p, [], p) for p in proc.stdout.split()]
        else:
            problems.append("tier source: %s" % (proc.stderr.strip().splitlines() or ["?"])[-1])
    if "sid" in tiers:
        sid = os.path.join(ROOT, ".ci", "sid.sh")
        setup = subprocess.run([sid, "setup"], cwd=ROOT, capture_output=True, text=True)
        if setup.returncode == 0:
            names = subprocess.run([sid, "pythons"], cwd=ROOT, capture_output=True,
                                   text=True).stdout.split()
            found += [("%s (sid chroot)" % n, [sid, "run"], n) for n in names]
        else:
            problems.append("tier sid: %s" % (setup.stderr.strip().splitlines() or ["?"])[-1])
    return found, problems


def run_one(label, prefix, python, runs):
    cmd = prefix + ["make", "--no-print-directory", "realworld-one", "PYTHON=" + python,
                    "REALWORLD_RUNS=%d" % runs]
    if os.environ.get("REALWORLD_ONLY"):         # on the command line: the chroot's env is its own
        cmd.append("REALWORLD_ONLY=" + ",".join(os.environ["REALWORLD_ONLY"].replace(",", " ").split()))
    log("%s: %s" % (label, " ".join(cmd)))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=None, text=True)
    result = None
    for line in proc.stdout:
        if line.startswith("REALWORLD-RESULTS "):
            result = json.loads(line[len("REALWORLD-RESULTS "):])
        else:
            sys.stderr.write(line)
    proc.wait()
    if result is None:
        return None, "no results (make exited with %d)" % proc.returncode
    result["seconds"] = round(time.monotonic() - t0, 1)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, result["interpreter"] + ".json")
    if os.environ.get("REALWORLD_ONLY") and os.path.exists(path):
        # Some scenarios re-run: their entries replace the old ones, the rest stay.
        with open(path) as f:
            old = json.load(f)
        old["scenarios"].update(result["scenarios"])
        old["date"] = result["date"]
        result = old
    with open(path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")
    return result, None


def main():
    runs = int(os.environ.get("REALWORLD_RUNS", "10"))
    found, problems = interpreters()
    status = 0
    for p in problems:
        log("NOT RUN " + p)
        status = 1
    for label, prefix, python in found:
        result, err = run_one(label, prefix, python, runs)
        if err:
            log("FAIL %s: %s" % (label, err))
            status = 1
    with open(gen_table.DOC, "w") as f:
        f.write(gen_table.render(gen_table.load_results()))
    log("wrote docs/realworld.md")
    for line in gen_table.summary(gen_table.load_results()):
        print(line)
    if any(set(e["exitguard"]["outcomes"]) - {"clean"}
           for r in gen_table.load_results().values() for e in r["scenarios"].values()):
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
