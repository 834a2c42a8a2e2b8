"""Check that your own extension exits cleanly: :func:`assert_clean_exit`.

Each check runs the given code in a fresh interpreter (the same ``sys.executable``)
with ``EXITGUARD_LEAKS=abort`` and fails with a readable report for each kind of bad
exit it finds (:data:`KINDS`):

- ``hang``: it did not exit in time (the report carries every thread's Python stack,
  dumped by faulthandler),
- ``crash``: it died from a signal,
- ``fatal error``: it printed "Fatal Python error",
- ``exit code``: it exited with another code than expected,
- ``stopper error``: an exit stopper raised (Python) or left an exception set (C),
  even when ``sys.unraisablehook`` kept it quiet,
- ``abandoned thread``: exit went on without a native thread -- one exitguard could not
  join within ``EXITGUARD_JOIN_TIMEOUT``, or one still inside the attach gate,
- ``refused attaches``: exitguard's gate refused attaches (only when the caller says
  none may be: a refusal is the gate doing its job),
- ``leak``: references native code never released, by the very end of the process
  (a release in module teardown or a static destructor counts), or decrefs that
  arrived too late to be applied -- each reference with its type and where it was
  created,
- ``traceback``: a Python traceback or "Exception ignored" report on stderr (an
  exception in a thread, an atexit handler, a finalizer).

The counters behind these come from exitguard itself, written at the very end of the
process (``EXITGUARD_EXIT_STATS``): after module teardown, atexit handlers and static
destructors, so that nothing that happens late is missed.

The same check is the ``clean_exit`` pytest fixture (:mod:`exitguard.pytest_plugin`).
:func:`run_exit` runs code the same way and returns the evidence without judging it.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

__all__ = ["KINDS", "CleanExitError", "ExitReport", "assert_clean_exit", "run_exit"]

# Every kind of bad exit a check reports, most severe first: a report names the first
# kind it found and lists the others.
KINDS = ("hang", "fatal error", "crash", "leak", "exit code", "stopper error", "abandoned thread",
         "refused attaches", "traceback")

# The signal the parent sends shortly before its deadline; faulthandler turns it into
# a dump of every thread's stack.  Not faulthandler.dump_traceback_later: a process
# forked while its watchdog is armed hangs for ever at exit (the child waits for the
# watchdog thread, which fork did not copy), and the watchdog walks other threads'
# frames unsynchronised (gh-140815).
_DUMP_SIGNAL = signal.SIGUSR2

# Runs first in the child: the stack dump on that signal, then the code as __main__
# (its source registered with linecache, so that tracebacks show its lines).  Nothing
# else is imported: the code must meet the interpreter as a script would.
_BOOTSTRAP = r"""
import faulthandler, linecache, os, signal
faulthandler.register(signal.SIGUSR2, all_threads=True)
__code = os.environ.pop("_EG_CLEAN_EXIT_CODE")
linecache.cache["<clean_exit>"] = (len(__code), None, __code.splitlines(True), "<clean_exit>")
exec(compile(__code, "<clean_exit>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
"""

_LEAK_EXIT_STATUS = 70
_SIGNAL_LINES = {"Segmentation fault", "Bus error", "Floating-point exception", "Floating point exception",
                 "Illegal instruction", "Aborted"}
_OFF = ("", "0", "off")


class CleanExitError(AssertionError):
    """The code did not exit cleanly; the message says how, with the evidence.

    ``kind`` is the first kind of bad exit found (one of :data:`KINDS`), ``kinds`` all
    of them, ``report`` the :class:`ExitReport`.
    """

    def __init__(self, kind, message, report, kinds=None):
        super().__init__(message)
        self.kind = kind
        self.kinds = list(kinds or [kind])
        self.report = report


class ExitReport:
    """What one run did: exit code, output, timing and exitguard's final counters.

    ``stats`` is the main interpreter's counters at the very end of the process (the
    keys of :func:`exitguard.stats`), ``interpreters`` the same for every interpreter
    that imported exitguard; both ``None`` when exitguard was never imported (or the
    process ended without running its exit handlers).
    """

    def __init__(self, returncode, stdout, stderr, elapsed, exit_stats, timed_out, timeout, leak_mode):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.elapsed = elapsed
        self.timed_out = timed_out
        self.timeout = timeout
        self.leak_mode = leak_mode
        self.exit_stats = exit_stats
        self.interpreters = exit_stats["interpreters"] if exit_stats else None
        self.stats = None
        if exit_stats:
            main = [i for i in self.interpreters if i.get("main")]
            if main:
                self.stats = dict(main[0])
                self.stats.update((k, v) for k, v in exit_stats.items() if k.startswith("log_"))

    def __repr__(self):
        return "<ExitReport returncode=%r elapsed=%.2fs>" % (self.returncode, self.elapsed)

    def describe(self):
        """Exit code, time, stdout and stderr, for an assertion message."""
        return "exit code %r after %.2fs\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
            self.returncode, self.elapsed, self.stdout, self.stderr)

    def _total(self, key):
        return sum(i.get(key, 0) for i in self.interpreters or ())

    def problems(self, *, expect_returncode=0, allow=()):
        """Every bad exit found, as ``(kind, what, detail)`` tuples in :data:`KINDS` order.

        `allow` names kinds that are not problems here; ``"exit code"`` is judged against
        `expect_returncode` (a negative number expects that signal).
        """
        allow = _check_allow(allow)
        found = []
        err = self.stderr
        lines = err.splitlines()
        hung = self.timed_out
        if hung:
            detail = "threads' stacks (faulthandler) and stderr:\n" + _tail(err, 80)
            if "most recent call first" not in err:
                detail = "no stacks: it hung where faulthandler no longer runs (late finalization)\n" + _tail(err)
            found.append(("hang", "did not exit within %.1f s" % self.timeout, detail))
        rc = self.returncode
        if rc is not None and rc < 0 and rc != expect_returncode and not hung:
            found.append(("crash", "crashed with %s" % _signame(-rc), "stderr:\n" + _tail(err, 60)))
        fatal = [l for l in lines if l.startswith("Fatal Python error:")
                 and l.split(":", 1)[1].strip() not in _SIGNAL_LINES]
        if fatal:
            found.append(("fatal error", "hit a %s (exit code %r)" % (fatal[0], rc), "stderr:\n" + _tail(err, 60)))
        leaked = self._leak()
        if leaked:
            found.append(leaked)
        explained = leaked and rc == _LEAK_EXIT_STATUS and self.leak_mode == "abort"
        if rc is not None and rc >= 0 and rc != expect_returncode and not explained and not hung:
            found.append(("exit code", "exited with code %r, expected %r" % (rc, expect_returncode),
                          "stderr:\n" + _tail(err)))
        if self._total("stopper_errors"):
            found.append(("stopper error", "had %d exit stopper(s) raise (or leave an exception set)"
                          % self._total("stopper_errors"), "stderr:\n" + _tail(err)))
        abandoned = self._total("threads_abandoned") + self._total("gate_abandoned")
        if abandoned:
            said = [l for l in lines if l.startswith("exitguard:") and ("did not stop" in l or "still inside" in l)]
            found.append(("abandoned thread", "went on without %d native thread(s) at exit" % abandoned,
                          "exitguard said:\n" + _tail("\n".join(said) or "(nothing)")))
        if self._total("attach_refused"):
            found.append(("refused attaches", "had %d attach(es) refused by exitguard's gate"
                          % self._total("attach_refused"),
                          "a native thread tried to enter Python after shutdown began (counted up to the very "
                          "end of the process)"))
        if "Traceback (most recent call last):" in err or any(l.startswith("Exception ignored") for l in lines):
            found.append(("traceback", "printed a traceback", "stderr:\n" + _tail(err, 60)))
        found.sort(key=lambda p: KINDS.index(p[0]))
        return [p for p in found if p[0] not in allow]

    def _leak(self):
        if self.leak_mode in _OFF:
            return None
        if self.interpreters is None:
            if "EXITGUARD_LEAKS=abort: exiting with status" in self.stderr:
                said = [l for l in self.stderr.splitlines() if l.startswith("exitguard:")]
                return ("leak", "exited holding references native code never released",
                        "exitguard's leak report:\n" + _tail("\n".join(said)))
            return None
        unreleased = self._total("refs_unreleased")
        held = sum(i.get("refs_live", 0) for i in self.interpreters if i.get("state") in ("running", "stopping"))
        dropped = self._total("decref_dropped")
        if not (unreleased or held or dropped):
            return None
        what = []
        if unreleased:
            what.append("%d reference(s) native code never released" % unreleased)
        if held:
            what.append("%d reference(s) of an interpreter that never stopped" % held)
        if dropped:
            what.append("%d deferred decref(s) that arrived after phase 2 (objects leaked)" % dropped)
        rows = []
        for interp in self.interpreters:
            for leak in interp.get("leaks", ()):
                rows.append("%6d %s, created at %s%s" % (
                    leak["count"], leak["type"], _resolve(leak["where"]) or "(unknown site)",
                    "" if interp.get("main") else " (interpreter %d)" % interp["id"]))
        detail = "exitguard's leak report:\n" + _tail("\n".join(rows) or "(no reference entries)")
        return ("leak", "exited with " + ", ".join(what), detail)

    def check(self, *, expect_returncode=0, allow=()):
        """Return self, or raise :class:`CleanExitError` for the problems found."""
        found = self.problems(expect_returncode=expect_returncode, allow=allow)
        if not found:
            return self
        kind, what, detail = found[0]
        msg = "clean_exit: the code %s (after %.2f s).\n%s" % (what, self.elapsed, detail)
        for k, w, _ in found[1:]:
            msg += "\nalso (%s): the code %s" % (k, w)
        raise CleanExitError(kind, msg, self, [p[0] for p in found])


def _check_allow(allow):
    if isinstance(allow, str):
        allow = (allow,)
    allow = set(allow)
    unknown = allow - set(KINDS)
    if unknown:
        raise ValueError("unknown kind(s) of bad exit: %s (known: %s)" % (", ".join(sorted(unknown)), ", ".join(KINDS)))
    return allow


def _signame(num):
    try:
        return signal.Signals(num).name
    except ValueError:
        return "signal %d" % num


def _tail(text, lines=40):
    parts = text.rstrip().splitlines()
    if len(parts) > lines:
        parts = ["... (%d lines cut)" % (len(parts) - lines)] + parts[-lines:]
    return "\n".join("    " + p for p in parts) if parts else "    (empty)"


_WHERE = re.compile(r"^(?P<path>/.+)\+0x(?P<off>[0-9a-f]+)(?: \((?P<sym>.*)\))?$")
_HEADERS = ("exitguard.h", "exitguard.hpp")


def _resolve(where):
    """ "PATH+0xOFF" as "file:line (function) in PATH" when addr2line can say, else as is.

    The offset is a return address: the call is the byte before it.  Frames inlined
    from exitguard's own headers (eg_ref_new's wrapper, exitguard::ref::make) are
    skipped, so that the line is the caller's.
    """
    m = _WHERE.match(where or "")
    addr2line = shutil.which("addr2line")
    if not m or addr2line is None:
        return where
    try:
        out = subprocess.run([addr2line, "-f", "-i", "-C", "-e", m.group("path"), hex(int(m.group("off"), 16) - 1)],
                             capture_output=True, text=True, timeout=30).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return where
    pairs = [(out[i], out[i + 1]) for i in range(0, len(out) - 1, 2)]
    for fn, loc in pairs:
        if loc.startswith("??") or os.path.basename(loc.split(":")[0]) in _HEADERS:
            continue
        return "%s (%s) in %s" % (loc.split(" (discriminator")[0], fn, m.group("path"))
    return where


def _group_members(pgid):
    """The other processes of process group `pgid` (Linux: /proc), or None where unknown."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return None
    pids = []
    for name in names:
        if not name.isdigit() or int(name) == pgid:
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                stat = f.read()
            # pgrp is the third field after the command name, which may hold spaces.
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                pids.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(pids)


def _signal_group(proc, signum):
    """Signal the run's whole process group: a forked child that hangs dumps its stacks too.

    One process at a time, the run's own first, 0.1 s apart: dumps written to the shared
    stderr at the same moment interleave character by character."""
    members = _group_members(proc.pid)
    if members is None:
        try:
            os.killpg(proc.pid, signum)
        except OSError:
            pass
        return
    for i, pid in enumerate([proc.pid] + members):
        if i:
            time.sleep(0.1)             # the previous dump written (no event crosses processes)
        try:
            os.kill(pid, signum)
        except OSError:
            pass


def _kill_group(proc):
    """SIGKILL the run's process group; return whatever output can still be read."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired as e:        # a grandchild left the group
        proc.kill()
        decode = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        return decode(e.stdout), decode(e.stderr)


def run_exit(code, *, timeout=60.0, env=None, args=()):
    """Run `code` (Python source, as ``__main__``) in a fresh interpreter; return an :class:`ExitReport`.

    Nothing is judged here (see :meth:`ExitReport.check`).  `env` adds environment
    variables; ``EXITGUARD_LEAKS`` defaults to ``abort``.  `args` become ``sys.argv[1:]``.
    Bad arguments: non-``str`` code -> ``TypeError``; non-positive timeout -> ``ValueError``.
    """
    if not isinstance(code, str):
        raise TypeError("code must be a str, not %s" % type(code).__name__)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not timeout > 0:
        raise ValueError("timeout must be a positive number of seconds, not %r" % (timeout,))
    tmp = tempfile.mkdtemp(prefix="exitguard-clean-exit-")
    try:
        prefix = os.path.join(tmp, "exit")
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("EXITGUARD_LEAKS", "abort")
        full_env["EXITGUARD_EXIT_STATS"] = prefix
        full_env["_EG_CLEAN_EXIT_CODE"] = code
        # Dump the stacks a little before the deadline, so that a hang's report has them.
        dump_at = max(timeout - min(2.0, timeout / 5), timeout / 2)
        t0 = time.monotonic()
        dumped = timed_out = False
        # A session of its own: at the deadline the whole group goes, forked children
        # too (they hold the output pipes open).
        proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-c", _BOOTSTRAP] + [str(a) for a in args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env, start_new_session=True,
        )
        try:
            try:
                out, err = proc.communicate(timeout=dump_at)
            except subprocess.TimeoutExpired:
                if proc.poll() is None:
                    dumped = True
                    _signal_group(proc, _DUMP_SIGNAL)
                try:
                    out, err = proc.communicate(timeout=timeout - dump_at)
                except subprocess.TimeoutExpired:
                    # Still running -- or exited, with children of its own holding the
                    # output open: that is not the code hanging.
                    timed_out = proc.poll() is None
                    out, err = _kill_group(proc)
        except BaseException:          # KeyboardInterrupt: the run must not outlive us
            _kill_group(proc)
            raise
        # Killed by the dump signal: it hung where faulthandler no longer handles it
        # (after finalization began), and the signal's default action ended it.
        if dumped and proc.returncode == -_DUMP_SIGNAL:
            timed_out = True
        elapsed = time.monotonic() - t0
        exit_stats = None
        try:
            with open("%s.%d.json" % (prefix, proc.pid)) as f:
                exit_stats = json.load(f)
        except (OSError, ValueError):
            exit_stats = None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    leak_mode = full_env.get("EXITGUARD_LEAKS", "")
    return ExitReport(proc.returncode, out, err, elapsed, exit_stats, timed_out, timeout, leak_mode)


def assert_clean_exit(code, *, timeout=60.0, expect_returncode=0, env=None, refused_attaches_ok=True, allow=()):
    """Run `code` in a fresh interpreter and fail unless it exits cleanly.

    `code` is Python source run as ``__main__``.  `env` adds environment variables
    (``EXITGUARD_LEAKS`` defaults to ``abort``; ``off`` turns the leak check off).
    `allow` names kinds of bad exit (:data:`KINDS`) that are expected here;
    ``refused_attaches_ok=False`` makes refused attaches one too.  Returns an
    :class:`ExitReport`; raises :class:`CleanExitError` (an ``AssertionError``) with a
    readable report otherwise.
    """
    allow = _check_allow(allow)
    if refused_attaches_ok:
        allow.add("refused attaches")
    return run_exit(code, timeout=timeout, env=env).check(expect_returncode=expect_returncode, allow=allow)
