"""eg_log: native threads log into Python's logging without blocking or taking the GIL."""

import json

from conftest import assert_clean

COLLECT = """
import logging, collections, json
received = []
class Collect(logging.Handler):
    def emit(self, record):
        received.append((record.threadName, record.getMessage(), record.levelno, record.name))
handler = Collect()
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.DEBUG)
"""


def test_every_message_delivered_in_order_or_counted(run_py):
    res = run_py(
        COLLECT
        + """
import scenario, exitguard, egtest
N_THREADS, PER = 4, 25000
scenario.at_exit(lambda: {
    "received": sum(1 for r in received if r[3] == "egtest.native"),
    "in_order": in_order(),
    "threads": sorted({r[0] for r in received if r[3] == "egtest.native"}),
    "drop_warnings": [r[1] for r in received if r[3] == "exitguard"],
})
def in_order():
    last = {}
    for tname, msg, level, name in received:
        if name != "egtest.native":
            continue
        t, m = msg.split()
        i = int(m[1:])
        if i <= last.get(t, -1):
            return False
        last[t] = i
    return True
egtest.log_from_threads(N_THREADS, PER)
""",
        timeout=120,
    )
    assert_clean(res)
    d = res.data
    s = d["stats"]
    assert d["received"] + s["log_dropped"] == 100000, res.describe()
    assert s["log_delivered"] >= d["received"]
    assert d["in_order"], res.describe()
    # A thread whose every message met a full ring has none delivered: a subset.
    assert set(d["threads"]) <= {"eglog-0", "eglog-1", "eglog-2", "eglog-3"} and d["threads"]
    if s["log_dropped"]:
        counted = sum(int(w.split()[0]) for w in d["drop_warnings"])
        assert counted == s["log_dropped"], d["drop_warnings"]


def test_messages_queued_just_before_exit_are_delivered(run_py):
    res = run_py(
        COLLECT
        + """
import scenario, exitguard, egtest
scenario.at_exit(lambda: {"received": len([r for r in received if r[3] == "egtest.native"]),
                          "threads": sorted({r[0] for r in received if r[3] == "egtest.native"})})
egtest.log_from_threads(2, 300)     # 600 < ring size: none may be dropped
"""
    )
    assert_clean(res)
    assert res.data["received"] == 600, res.describe()
    assert res.data["threads"] == ["eglog-0", "eglog-1"]     # the native threads' names
    assert res.data["stats"]["log_dropped"] == 0


def test_below_level_is_not_formatted_and_level_changes_follow(run_py):
    res = run_py(
        COLLECT
        + """
import exitguard, egtest, time
q = logging.getLogger("egtest.quiet")
q.setLevel(logging.WARNING)
egtest.log_from_threads(1, 1, logging.WARNING, 1)    # teaches exitguard this logger
t0 = time.monotonic()
while not egtest.log_enabled(0, 1) is False and time.monotonic() - t0 < 5:
    time.sleep(0.001)                                # until its level is known
f0 = exitguard.stats()["log_formatted"]
egtest.log_from_threads(2, 1000, logging.DEBUG, 1)   # below the level
f1 = exitguard.stats()["log_formatted"]
enabled_before = egtest.log_enabled(logging.DEBUG, 1)
q.setLevel(logging.DEBUG)                            # exitguard's cache follows
enabled_after = egtest.log_enabled(logging.DEBUG, 1)
egtest.log_from_threads(1, 10, logging.DEBUG, 1)
f2 = exitguard.stats()["log_formatted"]
print(json.dumps({"formatted_below": f1 - f0, "formatted_after": f2 - f1,
                  "enabled_before": enabled_before, "enabled_after": enabled_after,
                  "filtered": exitguard.stats()["log_filtered"]}))
"""
    )
    assert_clean(res)
    d = res.data
    assert d["formatted_below"] == 0, res.describe()
    assert d["filtered"] >= 2000
    assert d["enabled_before"] is False and d["enabled_after"] is True
    assert d["formatted_after"] == 10


def test_long_message_truncated_with_marker(run_py):
    res = run_py(
        COLLECT
        + """
import scenario, exitguard, egtest
scenario.at_exit(lambda: {"msgs": [r[1] for r in received if r[3] == "egtest.native"]})
egtest.log_from_threads(1, 1, logging.INFO, 0, True)
"""
    )
    assert_clean(res)
    (msg,) = res.data["msgs"]
    assert msg.startswith("t0 m0 0000") and msg.endswith("...[truncated]")


def test_after_stop_messages_go_to_stderr(run_py):
    res = run_py(
        """
import scenario
@scenario.at_exit
def late():
    import egtest
    egtest.log_from_threads(1, 2, 30)      # after phase 2
    return {}
import exitguard, egtest
"""
    )
    assert_clean(res)
    assert "WARNING:egtest.native:t0 m0\n" in res.stderr, res.describe()
    assert "WARNING:egtest.native:t0 m1\n" in res.stderr
