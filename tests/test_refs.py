"""Native references (eg_ref): registration, release from any thread, phase-2 sweep."""

import json

from conftest import assert_clean


def test_release_from_native_threads_frees(run_py):
    """eg_refs released from native threads free their objects by the next flush(); none stays live."""
    res = run_py(
        """
        import scenario, exitguard, egtest, json
        hs = [egtest.ref_new(scenario.Tracked()) for _ in range(20000)]
        live = exitguard.stats()["refs_live"]
        egtest.release_in_threads(hs, 4)
        exitguard.flush()
        print(json.dumps({"live_before": live, "live_after": exitguard.stats()["refs_live"],
                          "freed": scenario.freed}))
        """
    )
    assert_clean(res)
    d = res.data
    assert d["live_before"] == 20000
    assert d["live_after"] == 0
    assert d["freed"] == 20000


def test_release_while_attached_is_immediate(run_py):
    """eg_ref_release() on an attached thread frees the object at once."""
    res = run_py(
        """
        import scenario, egtest, json
        h = egtest.ref_new(scenario.Tracked())
        egtest.ref_release(h)
        print(json.dumps({"freed_now": scenario.freed}))
        """
    )
    assert_clean(res)
    assert res.data["freed_now"] == 1


def test_phase2_releases_unreleased_refs_and_get_returns_null(run_py):
    """Phase 2 releases every eg_ref left; after it eg_ref_get() is NULL and eg_ref_new() is refused."""
    res = run_py(
        """
        import scenario, json
        late = {}
        @scenario.at_exit
        def after_phase2():
            # Runs after exitguard's phase 2 (registered before exitguard's atexit hook).
            import egtest
            late["get_after_stop"] = [egtest.ref_get(h) for h in handles]
            # Releasing a swept reference from a native thread frees memory only.
            egtest.release_in_threads(handles, 2)
            try:
                egtest.ref_new(object())
                late["new_after_stop"] = "accepted"
            except RuntimeError as e:
                late["new_after_stop"] = str(e)
            return late
        import exitguard, egtest
        handles = [egtest.ref_new(scenario.Tracked()) for _ in range(100)]
        assert egtest.ref_get(handles[0]) is not None
        """
    )
    assert_clean(res)
    d = res.data
    assert d["freed"] == 100
    assert d["get_after_stop"] == [None] * 100
    assert "phase 2" in d["new_after_stop"]
    assert d["stats"]["state"] == "stopped"
    assert d["stats"]["refs_released_at_exit"] == 100
    assert d["stats"]["refs_live"] == 0
    assert d["stats"]["decref_dropped"] == 0


def test_slots_are_reused(run_py):
    """The slots of released eg_refs are reused by later eg_ref_new() calls."""
    res = run_py(
        """
        import exitguard, egtest, json
        first = [egtest.ref_new(i) for i in range(1000)]
        for h in first:
            egtest.ref_release(h)
        second = [egtest.ref_new(i) for i in range(1000)]
        print(json.dumps({"reused": len(set(first) & set(second)),
                          "live": exitguard.stats()["refs_live"]}))
        """
    )
    assert_clean(res, allow="leak")          # the second thousand: left to phase 2
    assert res.stats["refs_unreleased"] == 1000
    assert res.data["reused"] == 1000
    assert res.data["live"] == 1000


def test_ref_new_null_and_ref_get_null(run_py):
    """eg_ref_get(NULL) returns NULL and eg_ref_release(NULL) does nothing."""
    res = run_py(
        """
        import egtest, json
        print(json.dumps({"get_null": egtest.ref_get(0), "release_null": egtest.ref_release(0)}))
        """
    )
    assert_clean(res)
    assert res.data == {"get_null": None, "release_null": None}
