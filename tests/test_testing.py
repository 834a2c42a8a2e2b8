"""exitguard.testing.assert_clean_exit and the clean_exit fixture: each failure kind
produces its own clear message."""

import os
import subprocess
import sys
import textwrap

import pytest

from exitguard.testing import CleanExitError, assert_clean_exit


@pytest.fixture
def env(ext_dir):
    return {"PYTHONPATH": ext_dir, "EXITGUARD_JOIN_TIMEOUT": "1"}


def test_clean_extension_passes(env):
    r = assert_clean_exit(
        "import ticker, time\nt = ticker.Ticker(2)\nt.feed_many(object() for _ in range(1000))\n",
        env=env, timeout=60,
    )
    assert r.returncode == 0 and r.stats["state"] == "stopped"


def _fails(code, env, **kw):
    with pytest.raises(CleanExitError) as info:
        assert_clean_exit(code, env=env, **kw)
    return info.value


def test_hang_reports_thread_stacks(env):
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


def test_crash_is_named(env):
    e = _fails("import egtest\negtest.crash()\n", env, timeout=30)
    assert e.kind == "crash"
    assert "crashed with SIGSEGV" in str(e)


def test_fatal_error(env):
    e = _fails("import egtest\negtest.fatal()\n", env, timeout=30)
    assert e.kind == "fatal error"
    assert "egtest: fatal on purpose" in str(e)


def test_unexpected_exit_code(env):
    e = _fails("import sys\nsys.exit(4)\n", env, timeout=30)
    assert e.kind == "exit code"
    assert "exited with code 4, expected 0" in str(e)
    assert_clean_exit("import sys\nsys.exit(4)\n", env=env, expect_returncode=4)


def test_leaked_references(env):
    e = _fails("import egtest\nclass Gadget: pass\nkeep = [egtest.ref_new(Gadget()) for _ in range(3)]\n", env, timeout=30)
    assert e.kind == "leak"
    assert "3 reference(s) never released" in str(e)
    assert "Gadget" in str(e)


def test_refused_attaches(env):
    # The atexit hook (registered before exitguard is imported) runs after exitguard's
    # phase 2 and waits until the raw threads have met the closed gate.
    code = ("import atexit, time\n"
            "def wait_refused():\n"
            "    t0 = time.monotonic()\n"
            "    while egtest.attach_counts()['refused'] == 0 and time.monotonic() - t0 < 10:\n"
            "        time.sleep(0.001)\n"
            "atexit.register(wait_refused)\n"
            "import egtest\negtest.raw_attachers(2, None, 0)\n")
    assert_clean_exit(code, env=env, timeout=30)        # allowed by default
    e = _fails(code, env, timeout=30, refused_attaches_ok=False)
    assert e.kind == "refused attaches"
    assert "refused by exitguard's gate" in str(e)


def test_bad_arguments():
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
    proc = _run_pytest(tmp_path, ["-p", "exitguard.pytest_plugin"], {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_fixture_registered_by_entry_point(tmp_path):
    from importlib.metadata import entry_points

    eps = entry_points()
    group = eps.select(group="pytest11") if hasattr(eps, "select") else eps.get("pytest11", [])
    if not any(ep.value == "exitguard.pytest_plugin" for ep in group):
        pytest.skip("exitguard is not installed as a distribution here (no entry points)")
    proc = _run_pytest(tmp_path, [], {})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout
