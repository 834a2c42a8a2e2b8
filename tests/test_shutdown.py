"""The script ends while native threads are mid-work: exit code, no fatal error, bounded time."""

import pytest

from conftest import assert_clean

WORKLOAD = """
import scenario
import exitguard, ticker
t = ticker.Ticker(4, spin=200)
N = 20000
t.feed_many(scenario.Tracked() for _ in range(N))
{ending}
"""

ENDINGS = [
    ("return", "pass", 0, False),
    ("sys.exit(3)", "import sys; sys.exit(3)", 3, False),
    ("uncaught exception", "raise RuntimeError('script failed on purpose')", 1, True),
]


@pytest.mark.parametrize("name,ending,code,tb", ENDINGS, ids=[e[0] for e in ENDINGS])
def test_exit_while_native_threads_work(run_py, name, ending, code, tb):
    """An exit by return, sys.exit or exception mid-work keeps its exit code, and every object is freed."""
    res = run_py(WORKLOAD.format(ending=ending), timeout=60)
    assert_clean(res, code, traceback_ok=tb)
    if tb:
        assert "RuntimeError: script failed on purpose" in res.stderr
    d = res.data
    # Everything handed to the native threads was freed by exit at the latest.
    assert d["freed"] == 20000, res.describe()
    assert d["stats"]["state"] == "stopped"
    assert d["stats"]["refs_live"] == 0
    assert d["stats"]["decref_dropped"] == 0
    assert res.elapsed < 30, res.describe()


def test_raw_threads_without_stopper_still_exit_cleanly(run_py):
    """Detached raw threads still dropping objects when the script ends: whatever
    they queue before phase 2 is applied, whatever comes later is counted, and
    every object is accounted for one way or the other."""
    res = run_py(
        """
        import scenario, json
        N = 200000
        import exitguard, egtest
        objs = [scenario.Tracked() for _ in range(N)]
        egtest.decref_in_threads(objs, 2, False)   # detached; still running at exit
        del objs
        """,
        timeout=60,
    )
    assert_clean(res, allow="leak")          # decrefs that come after phase 2: leaked, counted
    d = res.data
    s = d["stats"]
    # Objects freed plus decrefs dropped after stop (or still in flight when the
    # final report ran) account for all of them.
    assert d["freed"] + s["decref_dropped"] <= 200000
    assert d["freed"] == s["decref_applied"]


def test_first_import_from_an_exit_handler_still_releases(run_py):
    """exitguard first imported by an exit handler (apache/arrow#38626's shape): atexit
    never runs a hook registered while it runs its hooks, so no phase ran at exit.  The
    teardown of exitguard's module runs phase 2 then: what native code holds is
    released while the interpreter exists, the static holder's own release after
    Py_Finalize frees memory only, and nothing is reported leaked."""
    res = run_py(
        """
        import atexit, os
        def late():
            import egtest, exitguard
            class T:
                def __del__(self, write=os.write):
                    write(1, b"held object freed\\n")
            egtest.hold_until_destructor(T())    # released by a C destructor in exit()
            print("imported late:", exitguard.state(), flush=True)
        atexit.register(late)
        """,
        timeout=30,
    )
    assert_clean(res)
    assert "imported late: running" in res.stdout, res.describe()
    assert res.stdout.count("held object freed") == 1, res.describe()
    assert "never applied" not in res.stderr and "leak" not in res.stderr, res.describe()
