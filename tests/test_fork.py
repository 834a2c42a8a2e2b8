"""fork(): decrefs the parent's threads had queued are applied in the child too."""

import os

import pytest

from conftest import assert_clean

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def test_queued_decrefs_survive_fork(run_py):
    res = run_py(
        """
        import scenario, exitguard, egtest, os, json, warnings
        warnings.simplefilter("ignore", DeprecationWarning)   # 3.12+: fork with threads
        N = 5000
        objs = [scenario.Tracked() for _ in range(N)]
        egtest.decref_in_threads(objs, 2)       # queued; main was blocked in join
        del objs
        pid = os.fork()
        if pid == 0:
            exitguard.flush()                   # the child applies its copy of the queue
            before_exit = scenario.freed
            # More native work in the child, with new threads.
            more = [scenario.Tracked() for _ in range(100)]
            egtest.decref_in_threads(more, 2)
            del more
            exitguard.flush()
            print(json.dumps({"child_freed": before_exit, "child_total": scenario.freed}), flush=True)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        exitguard.flush()
        print(json.dumps({"child_status": status, "parent_freed": scenario.freed}))
        """
    )
    assert_clean(res)
    d = res.data
    assert d["child_status"] == 0
    assert d["child_freed"] == 5000, res.describe()
    assert d["child_total"] == 5100
    assert d["parent_freed"] == 5000
