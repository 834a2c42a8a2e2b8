"""Exit stoppers: phase 1 order, eg_stopper_after edges, errors, cancellation."""

import json

import pytest

from conftest import assert_clean


def test_newest_first_with_after_edges(run_py):
    """Phase 1 runs stoppers newest first, holding each back until those it was put after have run."""
    res = run_py(
        """
        import scenario, json
        log = []
        scenario.at_exit(lambda: {"order": log})
        import exitguard, egtest
        a = egtest.c_stopper("a", log)
        b = egtest.c_stopper("b", log)
        c = exitguard.exit_stopper(log.append, "c")
        d = egtest.c_stopper("d", log)
        e = exitguard.exit_stopper(log.append, "e")
        assert egtest.stopper_after(a, d) == 0      # d only after a
        f = exitguard.exit_stopper(log.append, "f")
        f.after(c)                                  # f only after c
        """
    )
    assert_clean(res)
    # Newest first: f is blocked until c; e runs; d is blocked until a; c, then f
    # becomes runnable and is newest; b; a; then d.
    assert res.data["order"] == ["e", "c", "f", "b", "a", "d"], res.describe()


def test_raising_stopper_does_not_stop_the_rest(run_py):
    """A stopper that raises is counted and reported as unraisable, and the stoppers after it still run."""
    res = run_py(
        """
        import scenario
        log = []
        scenario.at_exit(lambda: {"order": log})
        import exitguard
        exitguard.exit_stopper(log.append, "first-registered")
        def boom():
            log.append("boom")
            raise ValueError("stopper failed on purpose")
        exitguard.exit_stopper(boom)
        """
    )
    assert_clean(res, traceback_ok=True, allow="stopper error")
    assert res.stats["stopper_errors"] == 1
    assert res.data["order"] == ["boom", "first-registered"]
    assert "ValueError: stopper failed on purpose" in res.stderr
    assert "Exception ignored" in res.stderr     # via sys.unraisablehook


def test_unraisablehook_receives_stopper_error(run_py):
    """A stopper's exception reaches a custom sys.unraisablehook and is still counted in stopper_errors."""
    res = run_py(
        """
        import scenario, sys
        seen = []
        sys.unraisablehook = lambda u: seen.append(type(u.exc_value).__name__)
        scenario.at_exit(lambda: {"seen": seen})
        import exitguard
        exitguard.exit_stopper(lambda: 1 / 0)
        """
    )
    assert_clean(res, allow="stopper error")
    assert res.stats["stopper_errors"] == 1          # counted though the hook kept it quiet
    assert res.data["seen"] == ["ZeroDivisionError"]


def test_edge_errors(run_py):
    """eg_stopper_after() takes a repeated edge, refuses a cycle (-EDEADLK), itself and NULL (-EINVAL)."""
    res = run_py(
        """
        import errno, json, exitguard, egtest
        log = []
        a = egtest.c_stopper("a", log)
        b = egtest.c_stopper("b", log)
        c = egtest.c_stopper("c", log)
        out = {
            "ok": egtest.stopper_after(a, b),
            "dup": egtest.stopper_after(a, b),
            "chain": egtest.stopper_after(b, c),
            "cycle": egtest.stopper_after(c, a),
            "self": egtest.stopper_after(a, a),
            "null": egtest.stopper_after(None, a),
            "EDEADLK": -errno.EDEADLK, "EINVAL": -errno.EINVAL,
            "msg": egtest.strerror(-errno.EDEADLK),
        }
        egtest.stopper_remove(b)     # its edges go with it
        egtest.stopper_remove(None)  # no-op
        out["stoppers"] = exitguard.stats()["stoppers"]
        try:
            egtest.stopper_add_null()
        except TypeError as e:
            out["null_stop"] = str(e)
        print(json.dumps(out))
        """
    )
    assert_clean(res)
    d = res.data
    assert d["ok"] == 0 and d["dup"] == 0 and d["chain"] == 0
    assert d["cycle"] == d["EDEADLK"]
    assert d["self"] == d["EINVAL"] and d["null"] == d["EINVAL"]
    assert "cycle" in d["msg"]
    assert d["stoppers"] == 2
    assert "NULL" in d["null_stop"]


def test_removed_stopper_does_not_run(run_py):
    """Removed, cancelled and context-managed stoppers do not run at exit; the others do."""
    res = run_py(
        """
        import scenario
        log = []
        scenario.at_exit(lambda: {"order": log})
        import exitguard, egtest
        a = egtest.c_stopper("a", log)
        b = egtest.c_stopper("b", log)
        egtest.stopper_remove(b)
        with exitguard.exit_stopper(log.append, "ctx") as s:
            assert s.active
        assert not s.active
        c = exitguard.exit_stopper(log.append, "cancelled")
        assert c.cancel() is True and c.cancel() is False
        """
    )
    assert_clean(res)
    assert res.data["order"] == ["a"]


def test_stopper_added_by_stopper_runs_and_late_ones_are_refused(run_py):
    """A stopper added during phase 1 still runs; exit_stopper() after phase 1 raises RuntimeError."""
    res = run_py(
        """
        import scenario
        log = []
        late = {}
        def try_late():
            try:
                exitguard.exit_stopper(log.append, "too late")
                late["late"] = "accepted"
            except RuntimeError as e:
                late["late"] = str(e)
            return late
        scenario.at_exit(lambda: dict(try_late(), order=log))
        import exitguard
        def outer():
            log.append("outer")
            exitguard.exit_stopper(log.append, "added during phase 1")
        exitguard.exit_stopper(outer)
        """
    )
    assert_clean(res)
    assert res.data["order"] == ["outer", "added during phase 1"]
    assert "phase 1 has already run" in res.data["late"]


def test_stopper_releases_waiting_nondaemon_thread(run_py):
    """Phase 1 runs before threading joins non-daemon threads, so a stopper can
    release a thread that would otherwise keep the interpreter from exiting."""
    res = run_py(
        """
        import scenario, threading
        stop = threading.Event()
        done = []
        def worker():
            stop.wait()            # no timeout: only the stopper ends this
            done.append("worker saw stop")
        scenario.at_exit(lambda: {"done": done})
        import exitguard
        exitguard.exit_stopper(stop.set)
        threading.Thread(target=worker).start()   # non-daemon
        """,
        timeout=30,
    )
    assert_clean(res)
    assert res.data["done"] == ["worker saw stop"]
    assert res.elapsed < 20


def test_stopper_runs_before_an_executor_imported_later_joins_its_workers(run_py):
    """A stopper runs before concurrent.futures joins the workers of an executor made after it.

    concurrent.futures joins its workers from a threading._register_atexit hook of
    its own, registered when the first executor is made -- after exitguard's -- and
    such hooks run newest first.  The stopper that releases a blocked worker must
    still run before that join (realworld/grpc_11804_atexit: the exit hung)."""
    res = run_py(
        """
        import scenario, threading, sys
        import exitguard
        assert "concurrent.futures.thread" not in sys.modules
        from concurrent.futures import ThreadPoolExecutor
        stop = threading.Event()
        started = threading.Event()
        order = []
        def work():
            started.set()
            stop.wait()                      # only the stopper ends this
            order.append("worker released")
        def stopper():
            order.append("stopper")
            stop.set()
        exitguard.exit_stopper(stopper)
        pool = ThreadPoolExecutor(max_workers=1)  # imports concurrent.futures.thread now
        pool.submit(work)
        started.wait()
        scenario.at_exit(lambda: {"order": order})
        """,
        timeout=30,
    )
    assert_clean(res)
    assert res.data["order"] == ["stopper", "worker released"], res.describe()
    assert res.elapsed < 20


def test_stopper_callback_runs_once_even_if_phases_called_again(run_py):
    """Running phase 1 and phase 2 again calls each stopper only once."""
    res = run_py(
        """
        import scenario
        log = []
        scenario.at_exit(lambda: {"order": log})
        import exitguard, exitguard._core as core
        exitguard.exit_stopper(log.append, "x")
        core._phase1(); core._phase1(); core._phase2(); core._phase2()
        assert exitguard.state() == "stopped"
        """
    )
    assert_clean(res)
    assert res.data["order"] == ["x"]


def test_thread_started_by_a_stopper_is_refused(run_py):
    """eg_thread_start from inside a running stopper returns -ESHUTDOWN, as documented:
    phase 1 would never join that thread (issue 11 item 10; it returned 0)."""
    res = run_py(
        """
        import scenario, errno, exitguard, egtest
        scenario.at_exit(lambda: {"rc": egtest.stopper_thread_rc(), "ESHUTDOWN": -errno.ESHUTDOWN})
        egtest.c_stopper_starting_thread()
        """
    )
    assert_clean(res)
    assert res.data["rc"] == res.data["ESHUTDOWN"], res.describe()


def test_removing_a_stopper_twice_is_harmless(run_py):
    """A second eg_stopper_remove of the same handle is a bug; a release build ignores
    it when it can tell (tests/test_debug_build.py: a debug build aborts naming it)."""
    res = run_py(
        """
        import scenario, egtest
        log = []
        scenario.at_exit(lambda: {"log": log})
        h = egtest.c_stopper("never", log)
        egtest.stopper_remove(h)
        egtest.stopper_remove(h)
        """
    )
    assert_clean(res)
    assert res.data["log"] == []


def test_a_blocking_stopper_is_named(run_py):
    """A stopper still running after EXITGUARD_JOIN_TIMEOUT is named on stderr -- a
    Python one by module and qualified name, a C one by its library and offset -- so a
    hang at exit names its cause (issue 11 item 14).  Exit then goes on once it
    returns."""
    res = run_py(
        """
        import time, exitguard, egtest
        def slow_python_stopper():
            time.sleep(2.5)
        exitguard.exit_stopper(slow_python_stopper)
        egtest.c_blocking_stopper(2.5)
        """,
        env={"EXITGUARD_JOIN_TIMEOUT": "1"},
        timeout=30,
    )
    assert_clean(res)
    assert "exit stopper __main__.slow_python_stopper has been running for 1.0 s" in res.stderr, res.describe()
    assert "exit stopper a C function at egtest" in res.stderr, res.describe()
    assert res.stderr.count("has been running for") == 2
    assert 5 <= res.elapsed < 15
