"""The realworld scenarios inside `make test`: every exitguard build clean, every run.

Each scenario (scenarios.py) re-creates one upstream shutdown failure as a small
extension built twice -- the naive pattern as reported, and ported to exitguard.
Here, on the interpreter running the tests, each exitguard build runs RUNS times in
fresh processes and must be clean every time: expected exit status, no fatal error,
no std::terminate, no traceback, no hang (a few seconds' timeout, the whole process
group killed), every object native code held freed or counted by exitguard, every
message delivered or counted.  The naive build runs once: it must still do its work
(an "idle" reproducer reproduces nothing); what it did is written to
$REALWORLD_BUILD/last-test-run.json.

The full counts per interpreter, and docs/realworld.md, come from `make realworld`
(results/*.json); the last tests here check that the table is in step with them.
"""

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gen_table  # noqa: E402
import harness  # noqa: E402
import scenarios  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(HERE))
RUNS = int(os.environ.get("REALWORLD_TEST_RUNS", "3"))
NAIVE_RUNS = int(os.environ.get("REALWORLD_TEST_NAIVE_RUNS", "1"))
# A clean run takes well under a second; a hang is detected long before 60 s.
EG_TIMEOUT = float(os.environ.get("REALWORLD_TEST_TIMEOUT", "6"))
NAIVE_TIMEOUT = 3.0

_seen = {}


@pytest.fixture(scope="session")
def realworld_build(tmp_path_factory):
    d = os.environ.get("REALWORLD_BUILD") or str(tmp_path_factory.mktemp("realworld"))
    harness.build(scenarios.SCENARIOS, d)
    yield d
    with open(os.path.join(d, "last-test-run.json"), "w") as f:
        json.dump({"interpreter": harness.interpreter_label(), "scenarios": _seen}, f,
                  indent=1, sort_keys=True)


@pytest.mark.parametrize("scn", scenarios.SCENARIOS, ids=[s.name for s in scenarios.SCENARIOS])
def test_scenario(scn, realworld_build):
    """Each realworld scenario's exitguard build exits clean in every run; its naive build still works."""
    naive = [harness.run_once(scn, "naive", realworld_build, timeout=NAIVE_TIMEOUT)
             for _ in range(NAIVE_RUNS)]
    eg = []
    for _ in range(RUNS):
        o = harness.run_once(scn, "exitguard", realworld_build, timeout=EG_TIMEOUT)
        eg.append(o)
        if o.kind != "clean":
            break                       # one failure says it; do not wait out more hangs
    _seen[scn.name] = {"naive": harness.tally(naive), "exitguard": harness.tally(eg)}
    bad = [o for o in eg if o.kind != "clean"]
    assert not bad, "%s (%s): the exitguard build is not clean:\n%s" % (
        scn.name, scn.upstream, bad[0].describe())
    idle = [o for o in naive if o.kind == "idle"]
    assert not idle, "%s: the naive build no longer does its work:\n%s" % (
        scn.name, idle[0].describe())


def test_table_is_in_step():
    """docs/realworld.md is what gen_table.py makes of scenarios.py and results/*.json."""
    with open(os.path.join(ROOT, "docs", "realworld.md")) as f:
        committed = f.read()
    assert committed == gen_table.render(gen_table.load_results()), (
        "docs/realworld.md is out of step: run `make realworld` (or "
        "`python tests/realworld/gen_table.py` after editing scenarios.py)")


def test_every_scenario_was_run_everywhere():
    """Every recorded results/*.json holds a run of every scenario in scenarios.py."""
    results = gen_table.load_results()
    assert results, "no results/*.json: run `make realworld`"
    for label, res in results.items():
        missing = [s.name for s in scenarios.SCENARIOS if s.name not in res["scenarios"]]
        assert not missing, "results/%s.json lacks %s: run `make realworld`" % (label, missing)


def test_every_naive_build_reproduces_somewhere():
    """Every scenario's naive build failed on at least one interpreter of the recorded runs.

    A scenario whose naive build is clean on every interpreter is not a reproducer."""
    results = gen_table.load_results()
    for scn in scenarios.SCENARIOS:
        failing = [label for label, res in results.items()
                   if any(k != "clean" for k in
                          res["scenarios"].get(scn.name, {}).get("naive", {}).get("outcomes", {}))]
        assert failing, "%s: the naive build was clean on every interpreter" % scn.name


def test_exitguard_builds_were_clean_everywhere():
    """The recorded full runs: every exitguard build clean on every interpreter."""
    bad = []
    for label, res in gen_table.load_results().items():
        for name, entry in res["scenarios"].items():
            outcomes = entry["exitguard"]["outcomes"]
            if any(k != "clean" for k in outcomes):
                bad.append("%s on %s: %s %s" % (name, label, outcomes, entry["exitguard"]["examples"]))
    assert not bad, "exitguard builds not clean in results/*.json:\n" + "\n".join(bad)


def test_outcome_words():
    """The harness names each failure as docs/realworld.md defines it."""
    scn = scenarios.select("cpython_124619_gdbus")[0]
    report = 'REALWORLD {"module": "m", "made": 2, "freed": 2, "calls": 1}\n'

    def kind(returncode=0, stdout=report, stderr="", timed_out=False, variant="exitguard"):
        return harness.classify(scn, variant, returncode, 0.1, stdout, stderr, timed_out, 8)[0]

    assert kind() == "clean"
    assert kind(timed_out="idle", returncode=-9, stdout="") == "hang"
    assert kind(timed_out="busy", returncode=-9, stdout="") == "slow"
    assert kind(-6, "", "terminate called without an active exception\n"
                        "Fatal Python error: Aborted\n") == "terminate"
    assert kind(-11, "", "Fatal Python error: Segmentation fault\n") == "crash"
    assert kind(-6, "", "python: ../Python/pystate.c:1: f: Assertion `x' failed.\n"
                        "Fatal Python error: Aborted\n") == "fatal"
    assert kind(-6, "", "Fatal Python error: PyThreadState_Get: no current thread\n") == "fatal"
    assert kind(1) == "error"
    assert kind(stderr="Exception ignored in: <x>\nPythonFinalizationError: cannot join\n") == "error"
    assert kind(stderr="RuntimeError: Event loop is closed\n") == "error"
    assert kind(stdout="") == "error"                               # no report from exit()
    assert kind(stdout=report.replace('"freed": 2', '"freed": 1')) == "leak"
    # A decref exitguard dropped on purpose and counted is accounted for.
    assert kind(stdout=report.replace('"freed": 2', '"freed": 1'),
                stderr="exitguard: 1 deferred decref(s) arrived after phase 2 and were leaked\n") \
        == "clean"
    assert kind(stdout=report.replace('"calls": 1', '"calls": 0')) == "idle"
    assert kind(stdout=report.replace('"calls": 1', '"calls": 1, "cpu_ms": 9000')) == "slow"
