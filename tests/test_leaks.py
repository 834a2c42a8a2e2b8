"""The leak report: EXITGUARD_LEAKS=warn|abort counts exactly what native code never released
-- by the very end of the process: a reference released in module teardown, a libc atexit
handler, a C++ static destructor or a library destructor was released, not leaked -- and
says where each leaked one was created."""

import pytest

from conftest import assert_clean

HOLD = """
import scenario
import exitguard, egtest
class Widget: pass
held = [egtest.ref_new(Widget() if i % 2 else []) for i in range(5)]   # types alternate: 2 + 3
released = [egtest.ref_new(Widget()) for _ in range(4)]
egtest.release_in_threads(released, 2)     # released properly: not reported
"""


def test_warn_reports_exact_counts_per_type_and_site(run_py):
    """EXITGUARD_LEAKS=warn reports exactly the unreleased eg_refs, per type, with where each was made."""
    res = run_py(HOLD, env={"EXITGUARD_LEAKS": "warn"})
    assert_clean(res, allow="leak")
    err = res.stderr
    assert "exitguard: leaks in interpreter 0 at exit:" in err, res.describe()
    assert "5 reference(s) never released by native code" in err
    rows = [l.split() for l in err.splitlines() if l.startswith("exitguard:     ")]
    counts = {parts[2]: int(parts[1]) for parts in rows}
    assert len(rows) == 2 and counts == {"__main__.Widget": 2, "list": 3}, res.describe()
    for parts in rows:                    # where each was created: egtest's ref_new
        assert parts[3:5] == ["created", "at"] and "egtest" in parts[5], res.describe()
    assert "deferred decref" not in err
    assert res.data["stats"]["refs_released_at_exit"] == 5          # at phase 2 ...
    assert res.stats["refs_unreleased"] == 5                          # ... and at the very end


def test_abort_exits_nonzero(run_py):
    """EXITGUARD_LEAKS=abort turns unreleased eg_refs into exit status 70, without a fatal error."""
    res = run_py(HOLD, env={"EXITGUARD_LEAKS": "abort"})
    assert res.returncode == 70, res.describe()
    assert "EXITGUARD_LEAKS=abort" in res.stderr
    assert "Fatal Python error" not in res.stderr


def test_abort_with_no_leak_exits_zero(run_py):
    """EXITGUARD_LEAKS=abort with every eg_ref released exits 0 and prints nothing."""
    res = run_py(
        """
        import exitguard, egtest
        h = egtest.ref_new(object())
        egtest.release_in_threads([h])
        """,
        env={"EXITGUARD_LEAKS": "abort"},
    )
    assert_clean(res)
    assert "exitguard:" not in res.stderr


def test_default_is_silent(run_py):
    """With EXITGUARD_LEAKS empty, unreleased eg_refs are not reported and the exit stays clean."""
    res = run_py(HOLD, env={"EXITGUARD_LEAKS": ""})
    assert_clean(res)
    assert "exitguard:" not in res.stderr


def test_late_decrefs_are_counted_and_reported(run_py):
    """Decrefs queued after phase 2 are dropped, never applied, and counted and reported as such."""
    res = run_py(
        """
        import scenario
        objs = []
        @scenario.at_exit
        def late():
            import egtest
            egtest.decref_in_threads(objs, 2)     # after phase 2: dropped, never applied
            return {"late": len(objs)}
        import exitguard, egtest
        objs.extend(scenario.Tracked() for _ in range(10))
        """,
        env={"EXITGUARD_LEAKS": "warn"},
    )
    assert_clean(res, allow="leak")
    d = res.data
    assert d["stats"]["decref_dropped"] == 10
    assert d["freed"] == 0                  # leaked on purpose, not decref'd late
    assert "10 deferred decref(s) never applied" in res.stderr
    assert "reference(s)" not in res.stderr


def test_unknown_value_warns(run_py):
    """An unknown EXITGUARD_LEAKS value is named in a warning on stderr."""
    res = run_py("import exitguard", env={"EXITGUARD_LEAKS": "bogus"})
    assert_clean(res)
    assert "unknown EXITGUARD_LEAKS value 'bogus'" in res.stderr


LATE = """
import exitguard, egtest, egcxx
class Widget: pass
{hold}(Widget())
{hold}(Widget())
{leak}
"""

# Where a correct extension releases its references after phase 2 released the objects
# (the message the releaser prints, or None).
LATE_RELEASERS = [
    ("module m_free", "egtest.hold_until_free", "egtest: m_free released 2 reference(s)"),
    ("libc atexit", "egtest.hold_until_atexit", "egtest: atexit handler released 2 reference(s)"),
    ("library destructor", "egtest.hold_until_destructor", "egtest: destructor released 2 reference(s)"),
    ("C++ static", "egcxx.hold_global", None),
    ("C++ function-local static", "egcxx.hold_local", None),
]


@pytest.mark.parametrize("name,hold,said", LATE_RELEASERS, ids=[r[0] for r in LATE_RELEASERS])
def test_release_late_in_finalization_is_not_a_leak(run_py, name, hold, said):
    """A reference released after phase 2 (m_free, atexit, destructor, C++ static) is not called a leak."""
    res = run_py(LATE.format(hold=hold, leak=""), env={"EXITGUARD_LEAKS": "abort"})
    assert_clean(res)
    if said:
        assert said in res.stderr, res.describe()
    assert "exitguard:" not in res.stderr, res.describe()
    # A C++ static holds one object: the second assignment released the first at once.
    expect = 1 if name.startswith("C++") else 2
    assert res.stats["refs_released_at_exit"] == expect and res.stats["refs_unreleased"] == 0


@pytest.mark.parametrize("name,hold,said", LATE_RELEASERS, ids=[r[0] for r in LATE_RELEASERS])
def test_real_leak_beside_late_releases_is_reported_alone(run_py, name, hold, said):
    """The same program plus one reference a C++ extension gives up: exactly that one is
    reported, blamed on the module that created it."""
    res = run_py(LATE.format(hold=hold, leak="egcxx.leak(Widget())"), env={"EXITGUARD_LEAKS": "abort"})
    assert res.returncode == 70, res.describe()
    assert "EXITGUARD_LEAKS=abort: exiting with status 70" in res.stderr
    assert "1 reference(s) never released by native code" in res.stderr, res.describe()
    (row,) = [l for l in res.stderr.splitlines() if l.startswith("exitguard:     ")]
    assert row.split()[1:3] == ["1", "__main__.Widget"] and "egcxx" in row and "egtest" not in row, row
    assert res.stats["refs_unreleased"] == 1
    with pytest.raises(AssertionError, match="1 reference"):
        assert_clean(res, 70)


def test_os_exit_reports_nothing(run_py):
    """os._exit skips every exit handler, exitguard's report too: no false report."""
    res = run_py("import os, exitguard, egtest\nh = egtest.ref_new(object())\nos._exit(0)\n",
                 env={"EXITGUARD_LEAKS": "abort"})
    assert res.returncode == 0 and "exitguard:" not in res.stderr and res.stats is None
