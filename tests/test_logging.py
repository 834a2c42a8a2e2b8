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
    """Every eg_log line from 4 native threads is delivered in per-thread order, or dropped and counted."""
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
    """eg_log lines queued just before exit are all delivered, under the native threads' names."""
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
    """eg_log below a logger's level formats nothing, and exitguard's level cache follows setLevel()."""
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


def test_call_site_level_follows_every_configuration_change(run_py):
    """EG_LOG keeps its logger's level at the call site: below it a message is
    neither formatted nor are its arguments evaluated; setLevel and logging.disable
    reach the site at once (a generation it compares with)."""
    res = run_py(
        COLLECT
        + """
import exitguard, egtest, time
site = logging.getLogger("egtest.site")
site.setLevel(logging.WARNING)
egtest.site_log(1, logging.WARNING)         # first use: level not known yet, delivered
t0 = time.monotonic()
while egtest.log_enabled_name(logging.DEBUG, "egtest.site") and time.monotonic() - t0 < 5:
    time.sleep(0.001)                       # until the forwarder has taught exitguard
steps = {}
def delivered():
    return sum(1 for r in received if r[3] == "egtest.site")
def step(name, count, level):
    e0, f0, d0 = egtest.site_evals(), exitguard.stats()["log_formatted"], delivered()
    egtest.site_log(count, level)
    formatted = exitguard.stats()["log_formatted"] - f0
    t0 = time.monotonic()                   # delivered under this configuration
    while delivered() - d0 < formatted and time.monotonic() - t0 < 5:
        time.sleep(0.001)
    steps[name] = [egtest.site_evals() - e0, formatted]
step("debug_below", 1000, logging.DEBUG)
site.setLevel(logging.DEBUG)
step("debug_after_setlevel", 10, logging.DEBUG)
logging.disable(logging.CRITICAL)
step("error_while_disabled", 10, logging.ERROR)
logging.disable(logging.NOTSET)
step("error_after_enable", 5, logging.ERROR)
print(json.dumps({"steps": steps, "delivered": delivered()}))
"""
    )
    assert_clean(res)
    d = res.data
    assert d["steps"] == {"debug_below": [0, 0], "debug_after_setlevel": [10, 10],
                          "error_while_disabled": [0, 0], "error_after_enable": [5, 5]}, res.describe()
    assert d["delivered"] == 1 + 10 + 5, res.describe()


def test_long_message_truncated_with_marker(run_py):
    """An eg_log message too long for its slot arrives cut, ending in "...[truncated]"."""
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
    """eg_log lines sent after phase 2 are written to stderr rather than lost."""
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


def test_logger_names_built_at_run_time(run_py):
    """Three logger names formatted into one reused buffer reach three loggers, each
    at its own level and with its own handler (issue 11 item 12: the level cache was
    keyed by the name's address, so all three went to the first); a name and a message
    that are not valid UTF-8 arrive with replacement characters (item 7)."""
    res = run_py(
        """
        import json, logging, exitguard, egtest
        got = {}
        class Keep(logging.Handler):
            def __init__(self, tag):
                super().__init__()
                self.tag = tag
            def emit(self, record):
                got.setdefault(self.tag, []).append((record.name, record.getMessage()))
        levels = {"stream.0": logging.DEBUG, "stream.1": logging.WARNING, "stream.2": logging.INFO}
        for name, level in levels.items():
            lg = logging.getLogger(name)
            lg.setLevel(level)
            lg.propagate = False
            lg.addHandler(Keep(name))
        bad = logging.getLogger("stream.bad\\ufffd")
        bad.propagate = False
        bad.addHandler(Keep("bad"))
        bad.setLevel(logging.DEBUG)
        egtest.log_runtime_names(3, "stream", logging.INFO)
        exitguard._core._phase2()          # delivers everything queued, then stops
        print(json.dumps({"got": got, "stats": {k: v for k, v in exitguard.stats().items() if k.startswith("log_")}}))
        """
    )
    assert_clean(res)
    got = res.data["got"]
    assert got.get("stream.0") == [["stream.0", "to stream.0"]], res.describe()
    assert "stream.1" not in got                     # INFO is below its WARNING
    assert got.get("stream.2") == [["stream.2", "to stream.2"]], res.describe()
    assert got.get("bad") == [["stream.bad\ufffd", "bytes \ufffd( here"]], res.describe()
    assert "Traceback" not in res.stderr and "Exception ignored" not in res.stderr
