"""Check that your own extension exits cleanly: :func:`assert_clean_exit`.

Each check runs the given code in a fresh interpreter (the same ``sys.executable``)
with ``EXITGUARD_LEAKS=abort`` and fails with a readable report when the process:

- hangs (the report carries every thread's Python stack, dumped by faulthandler),
- dies from a signal (a crash),
- prints "Fatal Python error",
- exits with another code than expected,
- exits holding references native code never released (exitguard's leak report),
- had attaches refused by exitguard's gate, when the caller said none may be.

The same check is the ``clean_exit`` pytest fixture (:mod:`exitguard.pytest_plugin`).
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

__all__ = ["CleanExitError", "ExitReport", "assert_clean_exit"]

# Runs first in the child: a watchdog that dumps every thread's stack before the
# parent's deadline, and an atexit hook -- registered before the user's code imports
# exitguard, so it runs after exitguard's phase 2 -- that writes exitguard's counters.
_BOOTSTRAP = r"""
import atexit, faulthandler, json, os, sys
faulthandler.dump_traceback_later(float(os.environ["_EG_CLEAN_EXIT_DUMP_AFTER"]), exit=True)
def _eg_report(path=os.environ["_EG_CLEAN_EXIT_REPORT"]):
    stats = sys.modules["exitguard"].stats() if "exitguard" in sys.modules else None
    with open(path, "w") as f:
        json.dump(stats, f)
atexit.register(_eg_report)
del _eg_report
__code = os.environ.pop("_EG_CLEAN_EXIT_CODE")
exec(compile(__code, "<clean_exit>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""

_LEAK_EXIT_STATUS = 70
_SIGNAL_LINES = {"Segmentation fault", "Bus error", "Floating-point exception", "Floating point exception",
                 "Illegal instruction", "Aborted"}


class CleanExitError(AssertionError):
    """The code did not exit cleanly; the message says how, with the evidence."""

    def __init__(self, kind, message, report):
        super().__init__(message)
        self.kind = kind
        self.report = report


class ExitReport:
    """What one run did: exit code, output, timing and exitguard's counters."""

    def __init__(self, returncode, stdout, stderr, elapsed, stats, timed_out):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.elapsed = elapsed
        self.stats = stats
        self.timed_out = timed_out

    def __repr__(self):
        return "<ExitReport returncode=%r elapsed=%.2fs>" % (self.returncode, self.elapsed)


def _tail(text, lines=40):
    parts = text.rstrip().splitlines()
    if len(parts) > lines:
        parts = ["... (%d lines cut)" % (len(parts) - lines)] + parts[-lines:]
    return "\n".join("    " + p for p in parts) if parts else "    (empty)"


def _run(code, timeout, env):
    if not isinstance(code, str):
        raise TypeError("code must be a str, not %s" % type(code).__name__)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds, not %r" % (timeout,))
    fd, report_path = tempfile.mkstemp(prefix="exitguard-clean-exit-", suffix=".json")
    os.close(fd)
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault("EXITGUARD_LEAKS", "abort")
    full_env["_EG_CLEAN_EXIT_CODE"] = code
    full_env["_EG_CLEAN_EXIT_REPORT"] = report_path
    # Dump stacks a little before the deadline, so that the report has them.
    full_env["_EG_CLEAN_EXIT_DUMP_AFTER"] = str(max(timeout - min(2.0, timeout / 5), timeout / 2))
    t0 = time.monotonic()
    timed_out = False
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", _BOOTSTRAP],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        proc.kill()
        out, err = proc.communicate()
    elapsed = time.monotonic() - t0
    stats = None
    try:
        with open(report_path) as f:
            text = f.read()
        stats = json.loads(text) if text else None
    except (OSError, ValueError):
        stats = None
    finally:
        try:
            os.unlink(report_path)
        except OSError:
            pass
    return ExitReport(proc.returncode, out, err, elapsed, stats, timed_out)


def assert_clean_exit(code, *, timeout=60.0, expect_returncode=0, env=None, refused_attaches_ok=True):
    """Run `code` in a fresh interpreter and fail unless it exits cleanly.

    `code` is Python source run as ``__main__``.  `env` adds environment variables
    (``EXITGUARD_LEAKS`` defaults to ``abort``, so references native code never released
    fail the check).  With ``refused_attaches_ok=False``, any attach that exitguard's gate
    refused fails it too.  Returns an :class:`ExitReport`; raises
    :class:`CleanExitError` (an ``AssertionError``) with a readable report otherwise.
    """
    r = _run(code, timeout, env)
    hung = r.timed_out or "Timeout (" in r.stderr and "!\nThread" in r.stderr
    # faulthandler reports a fatal signal as "Fatal Python error: Segmentation fault"
    # (and the like); a real Py_FatalError names its cause.
    fatal = [l for l in r.stderr.splitlines() if l.startswith("Fatal Python error:")
             and l.split(":", 1)[1].strip() not in _SIGNAL_LINES]
    if hung:
        kind, what = "hang", "did not exit within %.1f s" % timeout
        detail = "threads' stacks (faulthandler) and stderr:\n" + _tail(r.stderr, 80)
        if r.timed_out and "Timeout (" not in r.stderr:
            detail = "no stacks: it hung where faulthandler no longer runs (late finalization)\n" + _tail(r.stderr)
    elif fatal:
        kind, what = "fatal error", "hit a %s (exit code %r)" % (fatal[0], r.returncode)
        detail = "stderr:\n" + _tail(r.stderr, 60)
    elif r.returncode is not None and r.returncode < 0:
        try:
            name = signal.Signals(-r.returncode).name
        except ValueError:
            name = "signal %d" % -r.returncode
        kind, what = "crash", "crashed with %s" % name
        detail = "stderr:\n" + _tail(r.stderr, 60)
    elif r.returncode == _LEAK_EXIT_STATUS and "EXITGUARD_LEAKS=abort" in r.stderr and expect_returncode != _LEAK_EXIT_STATUS:
        kind, what = "leak", "exited holding references native code never released"
        detail = "exitguard's leak report:\n" + _tail("\n".join(l for l in r.stderr.splitlines() if l.startswith("exitguard:")))
    elif r.returncode != expect_returncode:
        kind, what = "exit code", "exited with code %r, expected %r" % (r.returncode, expect_returncode)
        detail = "stderr:\n" + _tail(r.stderr)
    elif not refused_attaches_ok and r.stats and r.stats.get("attach_refused"):
        kind, what = "refused attaches", "had %d attach(es) refused by exitguard's gate" % r.stats["attach_refused"]
        detail = "a native thread tried to enter Python after shutdown began; exitguard's counters: %s" % r.stats
    else:
        return r
    raise CleanExitError(kind, "clean_exit: the code %s (after %.2f s).\n%s" % (what, r.elapsed, detail), r)
