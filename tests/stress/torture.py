"""Randomized shutdown torture: many scenarios, each in a fresh interpreter.

Each scenario picks, from a seeded random generator, which native activities run when
the program ends -- threads attaching and calling Python, references held and released,
deferred decrefs, logging, completions posted, Python threads waiting -- how the program
ends (return, sys.exit(n), an uncaught exception, KeyboardInterrupt, sys.exit in a
non-main thread, a forked child exiting) and a timing jitter.  Each runs through
exitguard.testing.run_exit and must pass its judgement (expected exit code, no hang, no
"Fatal Python error", no crash signal, no stray traceback, no stopper error, no
abandoned thread, and no leak but the decrefs that arrive after phase 2 on purpose)
and show consistent counters: every object handed to native code freed or counted as a decref dropped after
stop, every completion run or cancelled, every log line delivered, dropped or written
to stderr after stop.

    python tests/stress/torture.py --runs 200              # prints the seed it used
    python tests/stress/torture.py --seed 1234 --only 17   # replay one scenario

It needs the egtest extension on PYTHONPATH (built by the test suite, or by
`python tests/stress/torture.py --build DIR` which builds it into DIR first).
"""

import argparse
import json
import os
import random
import signal
import sys
import textwrap
import time

from exitguard.testing import run_exit

# tests/, one folder up: the suite's builder (conftest) and the egtest source.
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTIVITIES = ["attach", "refs", "decref", "log", "complete", "wait"]
ENDINGS = ["return", "exit", "raise", "keyboard", "thread_exit", "fork"]
TIMEOUT = 60

PRELUDE = r"""
import atexit, json, os, sys, threading, time, warnings
warnings.simplefilter("ignore", DeprecationWarning)     # 3.12+: fork with threads
freed = []
class Tracked:
    # No lock here: finalizers run on whichever thread applies the decref (a native
    # thread inside eg_gil_ensure too), and a lock held across a fork would deadlock
    # the child.  list.append is atomic (and thread-safe on free-threaded builds).
    def __del__(self):
        freed.append(1)
plan = {"handed": 0, "jobs": 0, "logs": 0}
keep = []
waits = []
def report():
    # Registered before exitguard is imported: runs after its phase 2.  Wait
    # (bounded) for detached native jobs to finish, so the counts are final.
    import egtest
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10 and (egtest.job_items() < plan["jobs"] or egtest.logged() < plan["logs"]):
        time.sleep(0.001)
    s = sys.modules["exitguard"].stats()
    out = dict(freed=len(freed), stats=s, cq=egtest.cq_counts(), job_items=egtest.job_items(),
               logged=egtest.logged(), waits=waits, **plan)
    sys.stdout.write("REPORT " + json.dumps(out) + "\n")
    sys.stdout.flush()
atexit.register(report)
import exitguard, egtest
"""

ACTIVITY_CODE = {
    "attach": """
calls = []
egtest.registered_attachers({n1}, lambda: calls.append(1), {interval})
egtest.raw_attachers({n2}, lambda: calls.append(1), {interval})
""",
    "refs": """
hs = [egtest.ref_new(Tracked()) for _ in range({count})]
plan["handed"] += {count}; plan["jobs"] += {count}
egtest.release_in_threads(hs, {threads}, False)
""",
    "decref": """
objs = [Tracked() for _ in range({count})]
plan["handed"] += {count}; plan["jobs"] += {count}
egtest.decref_in_threads(objs, {threads}, False)
del objs
""",
    "log": """
plan["logs"] += {threads} * {count}
egtest.log_detached({threads}, {count})
""",
    "complete": """
q = exitguard.CompletionQueue()
keep.append(q)
egtest.cq_post_many(q, {count}, {threads}, False)
""",
    "wait": """
def waiter(ev=exitguard.Event()):
    try:
        ev.wait()
        waits.append("set")
    except exitguard.StoppingError:
        waits.append("stopping")
threading.Thread(target=waiter).start()
""",
}

ENDING_CODE = {
    "return": ("", 0),
    "exit": ("sys.exit({code})", None),
    "raise": ("raise RuntimeError('torture: ended by an exception')", 1),
    "keyboard": ("raise KeyboardInterrupt", -signal.SIGINT),
    "thread_exit": (
        "t = threading.Thread(target=sys.exit, args=(5,)); t.start(); t.join()   # exits that thread only",
        0,
    ),
    "fork": (
        textwrap.dedent(
            """
            pid = os.fork()
            if pid == 0:
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)    # the child's report is not ours
                more = [Tracked() for _ in range(100)]
                egtest.decref_in_threads(more, 2)
                del more
                exitguard.flush()
                sys.exit(0 if exitguard.state() == "running" else 9)
            _, status = os.waitpid(pid, 0)
            if status != 0:
                print("CHILD FAILED", status, file=sys.stderr)
            """
        ),
        0,
    ),
}


def make_scenario(rng):
    acts = sorted(rng.sample(ACTIVITIES, rng.randint(1, len(ACTIVITIES))))
    ending = rng.choice(ENDINGS)
    params = {
        "n1": rng.randint(1, 3), "n2": rng.randint(0, 2), "interval": rng.choice([0, 100, 1000]),
        "count": rng.choice([100, 1000, 5000]), "threads": rng.randint(1, 4),
        "code": rng.randint(2, 9), "jitter": rng.choice([0, 0, 1, 5, 20]),
    }
    return {"activities": acts, "ending": ending, "params": params}


def scenario_script(sc):
    p = sc["params"]
    body = [PRELUDE]
    for a in sc["activities"]:
        body.append(ACTIVITY_CODE[a].format(**p))
    body.append("time.sleep(%f)\n" % (p["jitter"] / 1000.0))
    code, _ = ENDING_CODE[sc["ending"]]
    body.append(code.format(**p) + "\n")
    return "".join(body)


def expected_code(sc):
    _, code = ENDING_CODE[sc["ending"]]
    return sc["params"]["code"] if code is None else code


def check(sc, proc, elapsed):
    """Return a list of problems (empty: the run is consistent)."""
    allow = {"refused attaches"}          # raw attachers meet the closed gate: its job
    if sc["ending"] in ("raise", "keyboard"):
        allow.add("traceback")
    if "decref" in sc["activities"] or "refs" in sc["activities"]:
        # Detached native threads still dropping objects (eg_decref, or eg_ref_release
        # of a reference phase 2 had not swept yet) when phase 2 ends: those decrefs
        # come after its last drain -- leaked and counted, by design.
        allow.add("leak")
    problems = ["%s: the code %s" % (kind, what)
                for kind, what, _ in proc.problems(expect_returncode=expected_code(sc), allow=allow)]
    if "CHILD FAILED" in proc.stderr:
        problems.append("the forked child failed")
    reports = [l for l in proc.stdout.splitlines() if l.startswith("REPORT ")]
    if not reports:
        problems.append("no report (the atexit hook did not run)")
        return problems
    d = json.loads(reports[-1][len("REPORT "):])
    s = d["stats"]
    if d["job_items"] < d["jobs"]:
        problems.append("native jobs unfinished after 10 s: %d of %d" % (d["job_items"], d["jobs"]))
    elif d["freed"] + s["decref_dropped"] != d["handed"]:
        problems.append("objects: handed %d, freed %d + dropped %d" % (d["handed"], d["freed"], s["decref_dropped"]))
    # Every eg_log call is accounted for: below the cached level (never formatted),
    # delivered, dropped from a full ring, or written to stderr after stop.
    accounted = s["log_filtered"] + s["log_delivered"] + s["log_dropped"] + s["log_to_stderr"]
    if d["logged"] >= d["logs"] and accounted != d["logs"]:
        problems.append("log lines: %d logged, %d filtered + %d delivered + %d dropped + %d to stderr"
                        % (d["logs"], s["log_filtered"], s["log_delivered"], s["log_dropped"], s["log_to_stderr"]))
    cq = d["cq"]
    if cq["ran"] + cq["cancelled"] != cq["accepted_plain"]:
        problems.append("completions: %d accepted, %d ran + %d cancelled" % (cq["accepted_plain"], cq["ran"], cq["cancelled"]))
    if "wait" in sc["activities"] and d["waits"] != ["stopping"]:
        problems.append("waiter ended with %r, expected ['stopping']" % (d["waits"],))
    if s["state"] != "stopped" or s["refs_live"] != 0:
        problems.append("exitguard not fully stopped: %s, refs_live %d" % (s["state"], s["refs_live"]))
    return problems


def run_one(sc, env):
    report = run_exit(scenario_script(sc), env=env, timeout=TIMEOUT)
    return check(sc, report, report.elapsed), report, report.elapsed


def build_egtest(dest):
    sys.path.insert(0, TESTS)
    import conftest  # the test suite's builder

    conftest._build_ext("egtest", os.path.join(TESTS, "ext", "egtest.c"), dest)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--only", type=int, default=None, help="replay scenario number ONLY of SEED")
    ap.add_argument("--build", metavar="DIR", help="build egtest into DIR and use it")
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    env = {"EXITGUARD_LEAKS": "warn"}
    if args.build:
        args.build = os.path.abspath(args.build)
        os.makedirs(args.build, exist_ok=True)
        build_egtest(args.build)
        env["PYTHONPATH"] = os.pathsep.join([args.build, TESTS] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    rng = random.Random(seed)
    scenarios = [make_scenario(rng) for _ in range(args.runs if args.only is None else args.only + 1)]
    indexes = range(len(scenarios)) if args.only is None else [args.only]
    print("torture: seed %d, %d scenario(s), Python %s" % (seed, len(indexes), sys.version.split()[0]), flush=True)
    failures = 0
    t0 = time.monotonic()
    for i in indexes:
        sc = scenarios[i]
        problems, proc, elapsed = run_one(sc, env)
        if problems:
            failures += 1
            print("FAIL #%d %s ending=%s params=%s (%.2fs)" % (i, ",".join(sc["activities"]), sc["ending"], sc["params"], elapsed))
            for p in problems:
                print("     - " + p)
            if proc is not None:
                print(textwrap.indent(proc.stderr[-2000:], "     | "))
            print("     replay: %s %s --seed %d --only %d%s" % (sys.executable, os.path.abspath(__file__), seed, i,
                                                       " --build " + args.build if args.build else ""))
    print("torture: %d passed, %d failed (seed %d, %.0f s)" % (len(indexes) - failures, failures, seed, time.monotonic() - t0))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
