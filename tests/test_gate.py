"""The attach gate and native threads: attaching fails cleanly once shutdown begins."""

import sys

import pytest

from conftest import assert_clean

ENDINGS = [
    ("return", "pass", 0, False),
    ("sys.exit(3)", "sys.exit(3)", 3, False),
    ("uncaught exception", "raise RuntimeError('ended on purpose')", 1, True),
]


@pytest.mark.parametrize("name,ending,code,tb", ENDINGS, ids=[e[0] for e in ENDINGS])
def test_attaching_threads_across_exit(run_py, name, ending, code, tb):
    """Registered threads attach every millisecond and call Python while the script
    ends; unregistered raw threads keep attaching after the gate closed.  Exit code
    preserved, no fatal error, every attach after the gate closed refused."""
    res = run_py(
        """
        import scenario, sys, threading
        calls = []
        late_calls = []
        def callback():
            calls.append(1)
            if exitguard.state() == "stopped":
                late_calls.append(1)          # would be a gate violation
        @scenario.at_exit
        def report():
            # After phase 2: wait (bounded) until the raw threads have met the
            # closed gate, so the refusal count is observed, not assumed.
            import egtest, time
            t0 = time.monotonic()
            while egtest.attach_counts()["refused"] == 0 and time.monotonic() - t0 < 5:
                time.sleep(0.001)
            return dict(egtest.attach_counts(), calls=len(calls), late_calls=len(late_calls))
        import exitguard, egtest, time
        egtest.registered_attachers(4, callback, 1000)
        egtest.raw_attachers(2, callback, 200)     # never told to stop
        while len(calls) < 50:
            time.sleep(0.001)
        %s
        """ % ending,
        timeout=30,
    )
    assert_clean(res, code, traceback_ok=tb)
    d = res.data
    assert d["calls"] >= 50
    assert d["late_calls"] == 0, res.describe()
    assert d["ok_after_refused"] == 0, res.describe()
    assert d["callback_errors"] == 0
    assert d["stopped_cleanly"] == 4            # the registered ones, in phase 1
    assert d["refused"] > 0, res.describe()     # the raw ones hit the closed gate
    s = d["stats"]
    assert s["gate"] == "closed" and s["threads_live"] == 0
    assert s["attach_refused"] >= d["refused"] - 10   # counted by exitguard too
    assert res.elapsed < 10, res.describe()


def test_blocked_thread_is_released_by_request_stop(run_py):
    res = run_py(
        """
        import scenario
        import exitguard, egtest
        scenario.at_exit(lambda: egtest.attach_counts())
        egtest.blocked_thread()     # blocked in read(); only request_stop unblocks it
        """,
        timeout=30,
    )
    assert_clean(res)
    assert res.data["stopped_cleanly"] == 1
    assert res.data["stats"]["threads_live"] == 0


def test_stubborn_thread_is_named_and_exit_completes(run_py):
    res = run_py(
        """
        import scenario, time
        import exitguard, egtest
        @scenario.at_exit
        def report():
            t0 = time.monotonic()      # bounded wait for the abandoned thread's next try
            while egtest.attach_counts()["refused"] == 0 and time.monotonic() - t0 < 5:
                time.sleep(0.001)
            return egtest.attach_counts()
        egtest.registered_attachers(1, None, 1000, True, "stubborn-1")
        """,
        env={"EXITGUARD_JOIN_TIMEOUT": "1"},
        timeout=30,
    )
    assert_clean(res, allow="abandoned thread")
    assert res.stats["threads_abandoned"] == 1
    assert "native thread 'stubborn-1' did not stop within 1.0 s" in res.stderr, res.describe()
    assert 1.0 <= res.elapsed < 6, res.describe()
    d = res.data
    assert d["ok_after_refused"] == 0      # abandoned: it never attaches again
    assert d["refused"] > 0


def test_stopper_joins_thread_waiting_for_the_gil(run_py):
    """Phase 1 holds the GIL while a Python stopper runs; the native threads wait for
    it in eg_gil_ensure.  The join then releases the GIL: no deadlock."""
    res = run_py(
        """
        import scenario, time
        import exitguard, egtest
        scenario.at_exit(lambda: egtest.attach_counts())
        def hog():
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.3:   # hold the GIL, no switch
                pass
        egtest.registered_attachers(3, lambda: None, 100)
        exitguard.exit_stopper(hog)
        while egtest.attach_counts()["ok"] < 30:
            time.sleep(0.001)
        """,
        timeout=30,
    )
    assert_clean(res)
    assert res.data["stopped_cleanly"] == 3
    assert res.elapsed < 10


def test_nested_ensure_and_attached_ensure(run_py):
    res = run_py(
        """
        import json, exitguard, egtest
        out = {"here": egtest.ensure_here(),
               "thread": egtest.nested_in_thread(lambda: "called")}
        h = egtest.interp_main()
        out["with_handle"] = egtest.nested_in_thread(lambda: "main", h)
        egtest.interp_close(h)
        egtest.interp_close(None)
        print(json.dumps(out))
        """
    )
    assert_clean(res)
    d = res.data
    assert d["here"] == 0
    assert d["thread"] == [0, 0, "called"]
    assert d["with_handle"] == [0, 0, "main"]


def test_adopted_thread_is_stopped_and_joined(run_py):
    res = run_py(
        """
        import scenario, time
        import exitguard, egtest
        scenario.at_exit(lambda: egtest.attach_counts())
        calls = []
        egtest.adopted_attacher(lambda: calls.append(1))
        while len(calls) < 20:
            time.sleep(0.001)
        assert exitguard.stats()["threads_live"] == 1
        """,
        timeout=30,
    )
    assert_clean(res)
    assert res.data["stopped_cleanly"] == 1
    assert res.data["stats"]["threads_live"] == 0


def test_thread_join_by_owner(run_py):
    res = run_py(
        """
        import scenario, json, errno, exitguard, egtest
        t = egtest.blocked_thread()
        timed_out = egtest.thread_join(t, 0.05)    # still blocked: the handle stays valid
        print(json.dumps({"timed_out": timed_out, "ETIMEDOUT": -errno.ETIMEDOUT,
                          "live": exitguard.stats()["threads_live"]}))
        """,
        timeout=30,
    )
    assert_clean(res)
    d = res.data
    assert d["timed_out"] == d["ETIMEDOUT"]
    assert d["live"] == 1
    assert d["stats"]["threads_live"] == 0   # phase 1 still stopped and joined it


def test_ensure_after_finalize_is_refused(run_py):
    """A raw thread that keeps trying after Py_FinalizeEx() returned gets -ESHUTDOWN
    (the record outlives the interpreter), never a crash or a hang."""
    res = run_py(
        """
        import exitguard, egtest
        egtest.raw_attachers(4, None, 0)     # no sleep: hammer the gate through exit
        """,
        timeout=30,
    )
    assert_clean(res)
