"""The leak report: EXITGUARD_LEAKS=warn|abort counts exactly what native code never released."""

import pytest

from conftest import assert_clean

HOLD = """
import scenario
import exitguard, egtest
class Widget: pass
held = [egtest.ref_new(Widget()) for _ in range(3)] + [egtest.ref_new([]) for _ in range(2)]
released = [egtest.ref_new(Widget()) for _ in range(4)]
egtest.release_in_threads(released, 2)     # released properly: not reported
"""


def test_warn_reports_exact_counts_per_type(run_py):
    res = run_py(HOLD, env={"EXITGUARD_LEAKS": "warn"})
    assert_clean(res)
    err = res.stderr
    assert "exitguard: leaks in interpreter 0 at exit:" in err, res.describe()
    assert "5 reference(s) never released by native code" in err
    lines = [l.split() for l in err.splitlines() if l.startswith("exitguard:     ")]
    counts = {parts[2]: int(parts[1]) for parts in lines}
    assert counts == {"Widget": 3, "list": 2}, res.describe()
    assert "0 deferred decref(s) dropped after stop" in err
    assert res.data["stats"]["refs_released_at_exit"] == 5


def test_abort_exits_nonzero(run_py):
    res = run_py(HOLD, env={"EXITGUARD_LEAKS": "abort"})
    assert res.returncode == 70, res.describe()
    assert "EXITGUARD_LEAKS=abort" in res.stderr
    assert "Fatal Python error" not in res.stderr


def test_abort_with_no_leak_exits_zero(run_py):
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
    res = run_py(HOLD)
    assert_clean(res)
    assert "exitguard:" not in res.stderr


def test_late_decrefs_are_counted_and_reported(run_py):
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
    assert_clean(res)
    d = res.data
    assert d["stats"]["decref_dropped"] == 10
    assert d["freed"] == 0                  # leaked on purpose, not decref'd late
    assert "10 deferred decref(s) arrived after phase 2 and were leaked" in res.stderr


def test_unknown_value_warns(run_py):
    res = run_py("import exitguard", env={"EXITGUARD_LEAKS": "bogus"})
    assert_clean(res)
    assert "unknown EXITGUARD_LEAKS value 'bogus'" in res.stderr
