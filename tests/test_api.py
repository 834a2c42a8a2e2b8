"""The Python API: names, types and bad input (in this process: nothing here exits)."""

import pytest

import exitguard


def test_public_names():
    """The exitguard module has its documented public names, and __version__ is a string."""
    for name in ["exit_stopper", "ExitStopper", "flush", "state", "stats", "get_include", "__version__"]:
        assert hasattr(exitguard, name), name
    assert isinstance(exitguard.__version__, str)


def test_stats_keys_and_state():
    """stats() has its documented keys, state() is "running" while the program runs, flush() is an int."""
    s = exitguard.stats()
    for key in ["state", "refs_live", "decref_queued", "decref_applied", "decref_dropped", "stoppers"]:
        assert key in s, key
    assert s["state"] == exitguard.state() == "running"
    assert isinstance(exitguard.flush(), int)


@pytest.mark.parametrize("bad", [None, 3, "not callable", object()])
def test_non_callable_raises_typeerror(bad):
    """exit_stopper() refuses a non-callable with TypeError and registers nothing."""
    before = exitguard.stats()["stoppers"]
    with pytest.raises(TypeError, match="callable"):
        exitguard.exit_stopper(bad)
    assert exitguard.stats()["stoppers"] == before


def test_missing_callback():
    """ExitStopper() without a callback raises TypeError."""
    with pytest.raises(TypeError):
        exitguard.ExitStopper()


def test_cancel_is_idempotent_and_context_manager():
    """cancel() is True once then False, and a stopper used as a context manager is cancelled at its end."""
    before = exitguard.stats()["stoppers"]
    s = exitguard.exit_stopper(print, "never printed")
    assert s.active and not s.ran
    assert exitguard.stats()["stoppers"] == before + 1
    assert s.cancel() is True
    assert s.cancel() is False
    assert not s.active
    assert "cancelled" in repr(s)
    with exitguard.exit_stopper(print, "never printed") as t:
        assert t.active
    assert not t.active
    assert exitguard.stats()["stoppers"] == before


def test_after_bad_input():
    """after() refuses a non-stopper, the stopper itself, an ordering cycle and a cancelled stopper."""
    a = exitguard.exit_stopper(print)
    b = exitguard.exit_stopper(print)
    try:
        with pytest.raises(TypeError):
            a.after(3)
        with pytest.raises(ValueError):
            a.after(a)
        b.after(a)
        with pytest.raises(ValueError, match="cycle"):
            a.after(b)
        b.cancel()
        with pytest.raises(ValueError, match="active"):
            a.after(b)
    finally:
        a.cancel()
        b.cancel()


def test_kwargs_are_passed_and_callback_exposed():
    """exit_stopper() takes args and kwargs and exposes .callback; a cancelled stopper never calls it."""
    seen = []

    def cb(*args, **kwargs):
        seen.append((args, kwargs))

    s = exitguard.exit_stopper(cb, 1, 2, key="v")
    assert s.callback is cb
    s.cancel()
    assert seen == []


def test_get_include_is_a_folder():
    """get_include() names an existing folder."""
    import os

    assert os.path.isdir(exitguard.get_include())
