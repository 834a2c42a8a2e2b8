"""Property-based tests of the Python API with wrong types and values: a clean exception,
no crash, and exitguard's state intact afterwards (this process: nothing here exits)."""

import math

import pytest

hypothesis = pytest.importorskip("hypothesis")   # installed by the Makefile's venvs
from hypothesis import given, settings, strategies as st

import exitguard

ANY = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=8),
    st.binary(max_size=8), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(object()), st.just(print), st.just(lambda: None), st.just(exitguard),
)

SETTINGS = settings(max_examples=200, deadline=None)


def _intact():
    s = exitguard.stats()
    assert s["state"] == "running" and s["gate"] == "open"
    return s["stoppers"]


@SETTINGS
@given(ANY, st.lists(ANY, max_size=3))
def test_exit_stopper_any_callback(cb, args):
    """exit_stopper() takes any callable with any arguments and refuses other values with TypeError."""
    before = _intact()
    if callable(cb):
        s = exitguard.exit_stopper(cb, *args)
        assert s.active
        assert s.cancel() is True and not s.active
    else:
        with pytest.raises(TypeError):
            exitguard.exit_stopper(cb, *args)
    assert _intact() == before


@SETTINGS
@given(ANY)
def test_after_any_argument(other):
    """after() refuses any value that is not an ExitStopper with TypeError, exitguard's state intact."""
    before = _intact()
    a = exitguard.exit_stopper(print)
    try:
        if isinstance(other, exitguard.ExitStopper):
            a.after(other)
        else:
            with pytest.raises(TypeError):
                a.after(other)
    finally:
        a.cancel()
    assert _intact() == before


@SETTINGS
@given(st.one_of(ANY, st.floats(min_value=-1e9, max_value=0.01)))
def test_event_wait_any_timeout(timeout):
    """Event.wait() accepts None and numbers >= 0 and refuses any other timeout, the event intact."""
    ev = exitguard.Event()
    ev.set()                                   # a valid wait returns at once
    numeric = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
    if timeout is None or (numeric and not math.isnan(timeout) and timeout >= 0):
        assert ev.wait(timeout) is True
    elif numeric:
        with pytest.raises((ValueError, OverflowError)):
            ev.wait(timeout)
    else:
        with pytest.raises(TypeError):
            ev.wait(timeout)
    assert ev.is_set()                         # the event is intact
    ev.clear()
    assert ev.wait(0) is False


@SETTINGS
@given(ANY)
def test_completion_queue_attach_any(loop_like):
    """CompletionQueue.attach() refuses anything but an event loop; the queue stays open and usable."""
    q = exitguard.CompletionQueue()
    with pytest.raises(Exception):
        q.attach(loop_like)                    # nothing here is an event loop
    assert q.run() == 0 and not q.closed
    q.close()
    assert q.closed and q.stats()["cancelled"] == 0


@SETTINGS
@given(st.lists(ANY, max_size=3), st.dictionaries(st.sampled_from(["a", "timeout", "x"]), ANY, max_size=2))
def test_constructors_reject_arguments(args, kwargs):
    """Event() and CompletionQueue() refuse any positional or keyword argument with TypeError."""
    for cls in (exitguard.Event, exitguard.CompletionQueue):
        if args or kwargs:
            with pytest.raises(TypeError):
                cls(*args, **kwargs)
        else:
            cls()


def test_flush_and_stats_are_stable():
    """flush() called again and again returns a count >= 0, and stats() keeps its documented keys."""
    for _ in range(100):
        assert exitguard.flush() >= 0
        assert set(exitguard.stats()) >= {"state", "refs_live", "decref_queued", "decref_applied", "decref_dropped", "stoppers"}
