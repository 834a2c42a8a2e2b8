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
    """A registered thread blocked in read() is woken by its request_stop callback at exit and joined."""
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
    """A thread ignoring its stop request is abandoned after the join timeout, named, never attached again."""
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
    """eg_gil_ensure() succeeds on an attached thread and nests on a native one, with or without a handle."""
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
    """A thread given to eg_thread_adopt() is stopped and joined by phase 1 at exit."""
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
    """eg_thread_join() that times out returns -ETIMEDOUT and leaves the thread for exit to join."""
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


def test_thread_that_attached_ends_while_its_joiner_holds_the_gil(run_py):
    """A native thread that attached through exitguard ends without needing the GIL
    (issue 11 item 1): its joiner may hold the GIL, as many close() methods do.  Its
    cached thread state is deleted later, by the next thread that attaches."""
    res = run_py(
        """
        import json, exitguard, egtest
        rcs = [egtest.attach_then_join_holding_gil() for _ in range(3)]
        egtest.nested_in_thread(lambda: None)    # a later attach reaps the ended threads' states
        print(json.dumps({"rcs": rcs, "reaped": exitguard.stats()["tstates_reaped"]}))
        """,
        timeout=20,
    )
    assert_clean(res)
    d = res.data
    assert d["rcs"] == [0, 0, 0]
    assert d["reaped"] >= 3, res.describe()
    assert res.elapsed < 10, res.describe()


PEP788 = sys.version_info >= (3, 15)


def test_pep788_guards_are_taken_on_315_only(run_py):
    """On 3.15 every outermost attach holds a real PyInterpreterGuard (issue 10): the
    counter only the PEP 788 path increments moves, and _core imports the symbol.
    Before 3.15 neither is there (the gate emulates the guard)."""
    import exitguard._core as core

    res = run_py(
        """
        import json, exitguard, egtest
        egtest.nested_in_thread(lambda: None)
        h = egtest.interp_main()
        egtest.nested_in_thread(lambda: None, h)
        egtest.interp_close(h)
        s = exitguard.stats()
        print(json.dumps({"pep788": s["pep788"], "guards": s["attach_guards"]}))
        """
    )
    assert_clean(res)
    assert res.data["pep788"] is PEP788
    assert res.data["guards"] == (2 if PEP788 else 0), res.describe()
    with open(core.__file__, "rb") as f:
        imports_guard = b"PyInterpreterGuard_FromView" in f.read()
    assert imports_guard is PEP788


@pytest.mark.skipif(not PEP788, reason="PEP 788 guards exist from CPython 3.15 on")
def test_guards_keep_a_finalizing_interpreter_out_even_without_phase_2(run_py):
    """An embedder-style exit in which exitguard's phase 2 never runs (its atexit
    callback is cleared): the gate stays open, and only the PEP 788 guards stand
    between attaching threads and finalization.  None may be parked inside CPython's
    attach, and attaches are refused once finalization began."""
    res = run_py(
        """
        import atexit, time, exitguard, egtest
        egtest.report_at_exit()
        egtest.raw_attachers(4, lambda: None, 100)
        while egtest.attach_counts()["ok"] < 200:
            time.sleep(0.001)
        atexit._clear()
        """,
        timeout=30,
    )
    assert_clean(res)
    d = res.data
    assert d["ll_in_ensure"] == 0, res.describe()
    assert d["ll_refused"] > 0, res.describe()
    assert res.elapsed < 10, res.describe()


def test_joining_an_abandoned_thread_returns_at_once(run_py):
    """Phase 1 abandons a stubborn thread; its owner's later join -- an atexit handler,
    a C++ static destructor -- returns -ESHUTDOWN at once instead of waiting for ever
    (issue 11 item 2), and the thread's whole name is printed (item 13: the OS keeps 15
    bytes of it)."""
    res = run_py(
        """
        import scenario, errno, time, exitguard, egtest
        name = "stubborn-native-worker-with-a-long-name"
        h = egtest.stubborn_thread(name)
        @scenario.at_exit
        def report():
            t0 = time.monotonic()
            rc = egtest.thread_join(h, -1)          # after phase 1 abandoned it
            return {"rc": rc, "took": time.monotonic() - t0, "ESHUTDOWN": -errno.ESHUTDOWN}
        """,
        env={"EXITGUARD_JOIN_TIMEOUT": "1"},
        timeout=30,
    )
    assert_clean(res, allow="abandoned thread")        # the point of the scenario
    assert res.stats["threads_abandoned"] == 1, res.describe()
    d = res.data
    assert d["rc"] == d["ESHUTDOWN"] and d["took"] < 1, res.describe()
    assert "native thread 'stubborn-native-worker-with-a-long-name' did not stop" in res.stderr, res.describe()


def test_joining_a_joined_thread_is_an_error_not_a_crash(run_py):
    """A second eg_thread_join of a handle returns -EINVAL in a release build (a debug
    build aborts naming it, tests/test_debug_build.py)."""
    res = run_py(
        """
        import json, errno, egtest
        h = egtest.quick_thread()
        first = egtest.thread_join(h, 5)
        second = egtest.thread_join(h, 5)
        print(json.dumps({"first": first, "second": second, "EINVAL": -errno.EINVAL}))
        """
    )
    assert_clean(res)
    d = res.data
    assert d["first"] == 0 and d["second"] == d["EINVAL"], res.describe()
