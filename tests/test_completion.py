"""Completion queues: native threads post callbacks; asyncio runs them, or they are cancelled."""

import pytest

import exitguard
from conftest import assert_clean


def test_burst_costs_one_wakeup(run_py):
    """A burst of posts to a completion queue nobody runs costs one wake-up; run() then runs them all."""
    res = run_py(
        """
        import json, exitguard, egtest
        q = exitguard.CompletionQueue()
        egtest.cq_post_many(q, 100000, 2)      # nobody runs the queue meanwhile
        before = q.stats()
        ran = q.run()
        print(json.dumps({"before": before, "ran": ran, "counts": egtest.cq_counts(), "after": q.stats()}))
        """
    )
    assert_clean(res)
    d = res.data
    assert d["before"]["posted"] == 100000
    assert d["before"]["wakeups"] == 1          # only the empty-to-non-empty push wrote
    assert d["ran"] == 100000 and d["counts"]["ran"] == 100000
    assert d["after"]["ran"] == 100000


def test_asyncio_awaits_native_futures_then_exits_with_work_posted(run_py):
    """Native threads complete asyncio futures; posts left at exit run or are cancelled, exactly once."""
    res = run_py(
        """
        import scenario, asyncio, exitguard, egtest
        results = {}
        keep = []        # the queue outlives the loop: exitguard's phase 2 cancels its work
        scenario.at_exit(lambda: dict(egtest.cq_counts(), **results))
        N = 10000
        async def main():
            loop = asyncio.get_running_loop()
            q = exitguard.CompletionQueue()
            q.attach(loop)
            futs = [loop.create_future() for _ in range(N)]
            egtest.cq_complete_futures(q, futs, 2)
            done = await asyncio.gather(*futs, return_exceptions=True)
            results["values_ok"] = all(
                (isinstance(v, ValueError) and v.args[0] % 1000 == 999) if i % 1000 == 999 else v == i
                for i, v in enumerate(done))
            results["awaited"] = len(done)
            # Leave with work still posted: more completions, never awaited.
            # (Results only: an exception set while asyncio.run closes the loop
            # would be reported as never retrieved -- asyncio's rule, not ours.)
            more = [loop.create_future() for _ in range(5000)]
            egtest.cq_complete_futures(q, more, 2, False)
            egtest.cq_post_many(q, 5000, 2, False)
            keep.append(q)
        asyncio.run(main())
        """,
        timeout=120,
    )
    assert_clean(res)
    d = res.data
    assert d["values_ok"] and d["awaited"] == 10000
    # Every accepted post ran or was called cancelled, exactly once; posts the
    # closed queue refused were never taken over (the poster kept them).
    assert d["build_ran"] + d["build_cancelled"] == d["accepted_futures"], res.describe()
    assert d["ran"] + d["cancelled"] == d["accepted_plain"], res.describe()
    assert d["accepted_futures"] >= 10000
    assert d["accepted_futures"] + d["accepted_plain"] + d["refused"] <= 20000
    assert "Event loop is closed" not in res.stderr
    assert "Warning" not in res.stderr and "never retrieved" not in res.stderr


def test_close_cancels_and_refuses(run_py):
    """close() calls pending callbacks cancelled, is idempotent, refuses later posts and attach()."""
    res = run_py(
        """
        import json, exitguard, egtest
        q = exitguard.CompletionQueue()
        egtest.cq_post_many(q, 100, 1)
        q.close()
        q.close()
        c = egtest.cq_counts()
        egtest.cq_post_many(q, 10, 1)          # refused: callbacks never called
        err = None
        try:
            import asyncio
            q.attach(asyncio.new_event_loop())
        except ValueError as e:
            err = str(e)
        print(json.dumps({"counts": c, "after": egtest.cq_counts(), "stats": q.stats(), "err": err}))
        """
    )
    assert_clean(res)
    d = res.data
    assert d["counts"]["cancelled"] == 100 and d["counts"]["ran"] == 0
    assert d["after"]["refused"] == d["counts"]["refused"] + 10
    assert {k: v for k, v in d["after"].items() if k != "refused"} == {k: v for k, v in d["counts"].items() if k != "refused"}
    assert d["stats"]["closed"] is True
    assert "closed" in d["err"]


def test_bad_input(run_py):
    """Posting to a non-queue and CompletionQueue(1) raise TypeError."""
    res = run_py(
        """
        import json, egtest, exitguard
        out = {}
        try:
            egtest.cq_post_many(object(), 1)
        except TypeError as e:
            out["type"] = str(e)
        try:
            exitguard.CompletionQueue(1)
        except TypeError as e:
            out["args"] = str(e)
        print(json.dumps(out))
        """
    )
    assert_clean(res)
    assert "CompletionQueue" in res.data["type"]
    assert "no arguments" in res.data["args"]


def test_callback_may_keep_the_queue_it_is_cancelled_by(run_py):
    """A completion queue being deallocated calls its pending callbacks cancelled; one
    that takes a reference to the queue resurrects it -- closed, but a whole object --
    instead of keeping a pointer to freed memory (issue 11 item 5: PEP 442)."""
    res = run_py(
        """
        import gc, json, exitguard, egtest
        q = exitguard.CompletionQueue()
        assert egtest.cq_post_keeper(q) == 0
        del q                              # dealloc: the callback runs cancelled, keeps q
        gc.collect()
        k = egtest.cq_kept()
        out = {"kept": type(k).__name__, "closed": k.closed, "stats": k.stats()}
        del k                              # the second end: no finalizer, no callback
        gc.collect()
        print(json.dumps(out))
        """
    )
    assert_clean(res)
    d = res.data
    assert d["kept"] == "CompletionQueue" and d["closed"] is True, res.describe()
    assert d["stats"]["cancelled"] >= 1
