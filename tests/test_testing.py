"""exitguard.testing.assert_clean_exit and the clean_exit fixture: every kind of bad exit
it reports is caught when present -- with its own clear message, blaming the right
party -- and quiet when absent."""

import errno
import os
import shutil
import subprocess
import sys

import pytest

from exitguard.testing import KINDS, CleanExitError, assert_clean_exit, run_exit


@pytest.fixture
def env(ext_dir):
    return {"PYTHONPATH": ext_dir, "EXITGUARD_JOIN_TIMEOUT": "1"}


def _fails(code, env, **kw):
    with pytest.raises(CleanExitError) as info:
        assert_clean_exit(code, env=env, **kw)
    return info.value


# Each kind of bad exit: (kind, code that has it, the same code without it, arguments).
CASES = [
    ("hang",
     "import threading\nthreading.Thread(target=threading.Event().wait, name='stuck').start()\n",
     "import threading, time\nthreading.Thread(target=time.sleep, args=(0.2,), name='brief').start()\n",
     dict(timeout=8)),
    ("crash", "import egtest\negtest.crash()\n", "import egtest\n", {}),
    ("fatal error", "import egtest\negtest.fatal()\n", "import egtest\n", {}),
    ("exit code", "import sys\nsys.exit(4)\n", "import sys\nsys.exit(0)\n", {}),
    ("stopper error",
     "import exitguard\nexitguard.exit_stopper(lambda: 1 / 0)\n",
     "import exitguard\nexitguard.exit_stopper(lambda: None)\n", {}),
    ("abandoned thread",
     "import exitguard, egtest\negtest.registered_attachers(1, None, 1000, True, 'stubborn-1')\n",
     "import exitguard, egtest\negtest.registered_attachers(1, None, 1000, False, 'willing-1')\n", {}),
    ("refused attaches",
     "import exitguard, egtest\negtest.late_attacher(True)\n",
     "import exitguard, egtest\negtest.late_attacher(False)\n", dict(refused_attaches_ok=False)),
    ("leak",
     "import egtest\nclass Gadget: pass\nkeep = [egtest.ref_new(Gadget()) for _ in range(3)]\n",
     "import egtest\nclass Gadget: pass\negtest.release_in_threads([egtest.ref_new(Gadget()) for _ in range(3)])\n",
     {}),
    ("traceback",
     "import threading\ndef boom(): raise ValueError('thread failed on purpose')\n"
     "t = threading.Thread(target=boom); t.start(); t.join()\n",
     "import threading\nt = threading.Thread(target=lambda: None); t.start(); t.join()\n", {}),
]


def test_every_kind_is_tested():
    """The bad-exit cases below cover exactly the kinds exitguard.testing.KINDS names."""
    assert sorted(c[0] for c in CASES) == sorted(KINDS)


@pytest.mark.parametrize("kind,bad,good,kw", CASES, ids=[c[0] for c in CASES])
def test_caught_when_present(env, kind, bad, good, kw):
    """assert_clean_exit() raises CleanExitError of the right kind for each kind of bad exit."""
    e = _fails(bad, env, **kw)
    assert e.kind == kind, str(e)
    assert str(e).startswith("clean_exit: the code ")


@pytest.mark.parametrize("kind,bad,good,kw", CASES, ids=[c[0] for c in CASES])
def test_quiet_when_absent(env, kind, bad, good, kw):
    """assert_clean_exit() passes each case's code once its bad exit is taken out."""
    r = assert_clean_exit(good, env=env, **kw)
    assert r.returncode == 0


def test_clean_extension_passes_every_check(env):
    """An extension busy at exit on exitguard passes every check, refused attaches included."""
    r = assert_clean_exit(
        "import ticker\nt = ticker.Ticker(2)\nt.feed_many(object() for _ in range(1000))\n",
        env=env, timeout=60, refused_attaches_ok=False,
    )
    assert r.returncode == 0 and r.stats["state"] == "stopped"
    assert r.stats["refs_unreleased"] == 0 and r.stats["threads_abandoned"] == 0


def test_hang_reports_thread_stacks(env):
    """A hang is reported at its deadline, with the hung thread's stack."""
    e = _fails(
        "import threading\n"
        "def stuck_worker():\n"
        "    threading.Event().wait()\n"
        "threading.Thread(target=stuck_worker, name='stuck').start()\n",
        env, timeout=6,
    )
    assert e.kind == "hang"
    assert "did not exit within 6.0 s" in str(e)
    assert "stuck_worker" in str(e)          # the hung thread's stack is in the report
    assert e.report.elapsed < 12


def test_forking_programs(env):
    """A child forked by clean code exits normally (no armed watchdog thread for it to
    wait for at exit); a parent waiting for a hung child hangs, and the whole process
    group goes at the deadline; a parent that exits while its child still holds the
    output pipes did not hang (its orphan is killed at the deadline)."""
    r = assert_clean_exit(
        "import os, sys\npid = os.fork()\nif pid == 0:\n    sys.exit(0)\n"
        "assert os.waitpid(pid, 0)[1] == 0\n", env=env, timeout=20)
    assert r.elapsed < 10
    e = _fails("import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(600)\nos.waitpid(pid, 0)\n",
               env, timeout=5)
    assert e.kind == "hang" and e.report.elapsed < 20
    # Both stacks: the parent's in waitpid, the hung child's in its sleep.
    assert 'File "<clean_exit>", line 5' in str(e) and 'File "<clean_exit>", line 4' in str(e), str(e)
    r = assert_clean_exit("import os, time\nif os.fork() == 0:\n    time.sleep(600)\n", env=env, timeout=5)
    assert r.returncode == 0 and r.elapsed < 20


def test_crash_is_named(env):
    """A crash is reported with the signal that killed the process."""
    e = _fails("import egtest\negtest.crash()\n", env, timeout=30)
    assert "crashed with SIGSEGV" in str(e)


def test_fatal_error(env):
    """A fatal error is reported with its message, and the abort() after it as a crash too."""
    e = _fails("import egtest\negtest.fatal()\n", env, timeout=30)
    assert "egtest: fatal on purpose" in str(e)
    assert "crash" in e.kinds                 # abort() after it: both, the fatal error first


def test_unexpected_exit_code(env):
    """An exit code other than the expected one is reported; expect_returncode accepts it."""
    e = _fails("import sys\nsys.exit(4)\n", env, timeout=30)
    assert "exited with code 4, expected 0" in str(e)
    assert_clean_exit("import sys\nsys.exit(4)\n", env=env, expect_returncode=4)


@pytest.mark.parametrize("code", [
    "import exitguard\ndef boom():\n    raise ValueError('stopper failed on purpose')\nexitguard.exit_stopper(boom)\n",
    # Silenced: the error never reaches stderr, exitguard's count still has it.
    "import exitguard, sys\nsys.unraisablehook = lambda u: None\nexitguard.exit_stopper(lambda: 1 / 0)\n",
    # A C stopper that leaves an exception set.
    "import exitguard, egtest\negtest.c_stopper_raise('C stopper failed on purpose')\n",
], ids=["python", "silenced", "c"])
def test_stopper_error(env, code):
    """A raising stopper is reported whether Python, silenced by unraisablehook or C."""
    e = _fails(code, env, timeout=30)
    assert e.kind == "stopper error"
    assert "1 exit stopper(s) raise" in str(e)


def test_abandoned_thread_is_named(env):
    """A native thread abandoned at exit is reported by its name and the join timeout."""
    e = _fails("import exitguard, egtest\negtest.registered_attachers(1, None, 1000, True, 'stubborn-1')\n",
               env, timeout=30)
    assert e.kind == "abandoned thread"
    assert "native thread 'stubborn-1' did not stop within 1.0 s" in str(e)


def test_thread_left_inside_the_gate_is_abandoned(env):
    """A raw thread still attached (inside the gate) when phase 2 closes it: exit goes
    on without it."""
    code = ("import exitguard, egtest, time\n"
            "entered = []\n"
            "def stay():\n"
            "    entered.append(1)\n"
            "    time.sleep(30)\n"
            "egtest.raw_attachers(1, stay, 1000)\n"
            "while not entered:\n"
            "    time.sleep(0.001)\n")
    e = _fails(code, env, timeout=30)
    assert e.kind == "abandoned thread"
    assert "still inside the attach gate" in str(e)


def test_refused_attach_late_in_finalization_is_counted(env):
    """An attach refused after Py_FinalizeEx returned is counted; refused_attaches_ok=False fails on it.

    The refusal happens in a libc atexit handler, after Py_FinalizeEx returned --
    long after any Python atexit hook could read the counters."""
    code = "import exitguard, egtest\negtest.late_attacher(True)\n"
    r = assert_clean_exit(code, env=env, timeout=30)        # allowed by default
    assert "egtest: late attacher tried to attach (rc -%d)" % errno.ESHUTDOWN in r.stderr, r.describe()
    assert r.stats["attach_refused"] == 1
    e = _fails(code, env, timeout=30, refused_attaches_ok=False)
    assert e.kind == "refused attaches"
    assert "1 attach(es) refused by exitguard's gate" in str(e)


def test_leak_names_type_count_and_creation_site(env):
    """A leak is reported with its count, its type and the module (and line) that created it."""
    e = _fails("import egtest\nclass Gadget: pass\nkeep = [egtest.ref_new(Gadget()) for _ in range(3)]\n",
               env, timeout=30)
    assert e.kind == "leak"
    assert "3 reference(s) native code never released" in str(e)
    (row,) = [l for l in str(e).splitlines() if "__main__.Gadget" in l]
    assert row.split()[0] == "3"
    assert "egtest" in row                      # the module that created them ...
    if shutil.which("addr2line"):
        assert "egtest.c:" in row and "(t_ref_new)" in row, row    # ... and the line


def test_leak_check_follows_exitguard_leaks(env):
    """The leak check follows EXITGUARD_LEAKS: off passes, warn fails with exit 0, the default with 70."""
    code = "import egtest\nkeep = egtest.ref_new(object())\n"
    assert_clean_exit(code, env=dict(env, EXITGUARD_LEAKS="off"))
    e = _fails(code, dict(env, EXITGUARD_LEAKS="warn"))
    assert e.kind == "leak" and e.report.returncode == 0
    e = _fails(code, env)
    assert e.kind == "leak" and e.report.returncode == 70 and e.kinds == ["leak"]   # 70 is the leak's


def test_traceback_in_a_thread(env):
    """An uncaught exception in a thread is reported as a traceback, with the exception."""
    e = _fails("import threading\ndef boom(): raise ValueError('thread failed on purpose')\n"
               "t = threading.Thread(target=boom); t.start(); t.join()\n", env, timeout=30)
    assert e.kind == "traceback"
    assert "ValueError: thread failed on purpose" in str(e)


def test_allow_and_all_kinds_listed(env):
    """Every bad exit present is listed, allow= lets the named kinds pass, an unknown kind is refused."""
    code = "import exitguard, egtest, sys\nexitguard.exit_stopper(lambda: 1 / 0)\nsys.exit(3)\n"
    e = _fails(code, env, timeout=30)
    assert e.kinds == ["exit code", "stopper error", "traceback"]
    assert "also (stopper error)" in str(e) and "also (traceback)" in str(e)
    assert_clean_exit(code, env=env, expect_returncode=3, allow=["stopper error", "traceback"])
    with pytest.raises(ValueError, match="unknown kind"):
        assert_clean_exit("pass", allow=["hangs"])


def test_run_exit_collects_without_judging(env):
    """run_exit() collects exit code, output and stats without judging; problems() judges on request."""
    r = run_exit("import sys, exitguard\nprint(sys.argv[1:])\nsys.exit(5)\n", env=env, args=["a", "b"])
    assert r.returncode == 5 and r.stdout == "['a', 'b']\n"
    assert r.stats["state"] == "stopped" and len(r.interpreters) == 1
    assert [p[0] for p in r.problems()] == ["exit code"] and r.problems(expect_returncode=5) == []
    assert run_exit("pass", env=env).stats is None         # exitguard never imported


def test_bad_arguments():
    """assert_clean_exit() refuses bytes for code (TypeError) and a zero timeout (ValueError)."""
    with pytest.raises(TypeError):
        assert_clean_exit(b"pass")
    with pytest.raises(ValueError):
        assert_clean_exit("pass", timeout=0)


FIXTURE_TEST = '''
def test_exits_cleanly(clean_exit):
    clean_exit("import exitguard")

def test_detects_a_crash(clean_exit):
    import pytest
    with pytest.raises(AssertionError, match="crashed with SIGSEGV"):
        clean_exit("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
'''


def _run_pytest(tmp_path, extra_args, extra_env):
    (tmp_path / "test_user.py").write_text(FIXTURE_TEST)
    # A project of its own: pytest looks for its configuration upwards, and
    # the temporary folder may be inside this repository (make test puts it
    # in the venv), whose pyproject.toml names pytest-timeout's option.
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    env = dict(os.environ, **extra_env)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_user.py")] + extra_args,
        capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=120,
    )


def test_fixture_with_explicit_plugin(tmp_path):
    """The clean_exit fixture, with the plugin loaded by -p, passes a clean exit and catches a crash."""
    proc = _run_pytest(tmp_path, ["-p", "exitguard.pytest_plugin"], {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_fixture_registered_by_entry_point(tmp_path):
    """The clean_exit fixture is available through the pytest11 entry point alone."""
    from importlib.metadata import entry_points

    eps = entry_points()
    group = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", [])
    if not any(ep.value == "exitguard.pytest_plugin" for ep in group):
        pytest.skip("exitguard is not installed as a distribution here (no entry points)")
    proc = _run_pytest(tmp_path, [], {})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
