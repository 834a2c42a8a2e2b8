"""exitguard.Event / eg_event_wait: waits that release the GIL and honour Ctrl-C."""

import math
import os
import select
import signal
import subprocess
import sys
import time

import pytest

import exitguard
from conftest import assert_clean


def test_set_clear_fileno():
    """Event's set(), clear(), is_set() and wait() agree with its fileno()'s readability."""
    ev = exitguard.Event()
    assert not ev.is_set()
    assert select.select([ev.fileno()], [], [], 0)[0] == []
    ev.set()
    ev.set()
    assert ev.is_set() and ev.wait(0) is True
    assert select.select([ev.fileno()], [], [], 0)[0] == [ev.fileno()]
    ev.clear()
    assert not ev.is_set()
    assert select.select([ev.fileno()], [], [], 0)[0] == []
    assert ev.wait(0.01) is False


@pytest.mark.parametrize("bad,exc", [(-1, ValueError), (math.nan, ValueError), ("1", TypeError), (True, TypeError)])
def test_bad_timeouts(bad, exc):
    """Event.wait() refuses negative, NaN, string and bool timeouts and leaves the event working."""
    ev = exitguard.Event()
    with pytest.raises(exc):
        ev.wait(bad)
    ev.set()
    assert ev.wait(None) is True      # state intact after the errors


def test_no_arguments():
    """Event() takes no arguments."""
    with pytest.raises(TypeError):
        exitguard.Event(1)


def test_native_set_wakes_wait(run_py):
    """eg_event_wait() returns 0 once a native thread sets the event, long before its timeout."""
    res = run_py(
        """
        import json, time, egtest
        egtest.event_set_later(50)
        t0 = time.monotonic()
        rc = egtest.event_wait(10.0)
        print(json.dumps({"rc": rc, "waited": time.monotonic() - t0}))
        """
    )
    assert_clean(res)
    assert res.data["rc"] == 0
    assert res.data["waited"] < 5


def test_timeout_from_deadline(run_py):
    """eg_event_wait() on an event nobody sets returns -ETIMEDOUT, no sooner than its timeout."""
    res = run_py(
        """
        import json, time, errno, egtest
        t0 = time.monotonic()
        rc = egtest.event_wait(0.2)
        print(json.dumps({"rc": rc, "ETIMEDOUT": -errno.ETIMEDOUT, "waited": time.monotonic() - t0}))
        """
    )
    assert_clean(res)
    assert res.data["rc"] == res.data["ETIMEDOUT"]
    assert res.data["waited"] >= 0.2


@pytest.mark.parametrize("native", [False, True], ids=["Event.wait", "eg_event_wait"])
def test_sigint_raises_keyboardinterrupt_quickly(run_py, native):
    """SIGINT to a main thread in Event.wait() or eg_event_wait() raises KeyboardInterrupt within 100 ms."""
    res = run_py(
        """
        import json, os, signal, threading, time, exitguard, egtest
        # As from a terminal, even when our runner was started with SIGINT ignored
        # (a background job of a non-interactive shell is; CPython keeps it so).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sent = []
        def fire():
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
        threading.Timer(0.2, fire).start()
        try:
            if %r:
                egtest.event_wait(30.0)
            else:
                exitguard.Event().wait(30)
            outcome = "no exception"
        except KeyboardInterrupt:
            outcome = "KeyboardInterrupt"
        print(json.dumps({"outcome": outcome, "latency_ms": (time.monotonic() - sent[0]) * 1e3}))
        """
        % native,
        timeout=60,
    )
    assert_clean(res)
    assert res.data["outcome"] == "KeyboardInterrupt"
    assert res.data["latency_ms"] < 100, res.describe()     # the bound; typically < 1 ms


def test_sigint_to_a_process_in_a_native_wait(run_py, ext_dir):
    """Ctrl-C on a process blocked in a native wait ends it by KeyboardInterrupt."""
    env = dict(os.environ, PYTHONPATH=ext_dir)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import egtest, sys; print('waiting', flush=True); egtest.event_wait(60.0)"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        # SIGINT as from a terminal, even when our runner was started with it ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout.readline() == "waiting\n"
        time.sleep(0.1)       # into the wait (nothing to synchronise on across processes)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (1, -signal.SIGINT), err
    assert "KeyboardInterrupt" in err
    assert "Fatal Python error" not in err


def test_wait_in_progress_when_exit_begins_returns_stopping(run_py):
    """An Event.wait() under way on a non-daemon thread when exit begins raises StoppingError."""
    res = run_py(
        """
        import scenario, threading, exitguard
        seen = []
        scenario.at_exit(lambda: {"seen": seen})
        ev = exitguard.Event()
        def worker():
            try:
                ev.wait()                      # nobody will set it
                seen.append("set")
            except exitguard.StoppingError:
                seen.append("stopping")
        threading.Thread(target=worker).start()   # non-daemon: exit waits for it
        """,
        timeout=30,
    )
    assert_clean(res)
    assert res.data["seen"] == ["stopping"]
    assert res.elapsed < 20


@pytest.mark.parametrize("shape", ["wait", "poll"])
def test_waiter_ended_by_the_stopper_ends_quietly(run_py, shape):
    """A non-daemon Python thread blocked in Event.wait() -- or polling it -- at exit is
    ended by phase 1 without a traceback (StoppingError is a SystemExit, which threading
    ignores); the exit code is the script's (issue 11 item 11)."""
    body = "ev.wait()" if shape == "wait" else "while not ev.wait(0.1):\n                pass"
    res = run_py(
        """
        import threading, exitguard, sys
        ev = exitguard.Event()
        started = threading.Event()
        def worker():
            started.set()
            %s
        t = threading.Thread(target=worker)     # non-daemon: exit joins it
        t.start()
        started.wait()
        sys.exit(4)
        """ % body,
        timeout=30,
    )
    assert_clean(res, 4)
    assert "StoppingError" not in res.stderr and "Exception in thread" not in res.stderr, res.describe()
    assert res.elapsed < 10
