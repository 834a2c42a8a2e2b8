"""EG_DEBUG=1 builds catch a double release of an eg_ref with a clear fatal message."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def debug_build(tmp_path_factory):
    """exitguard built from this checkout with EG_DEBUG=1, in a folder of its own."""
    out = tmp_path_factory.mktemp("debug")
    env = dict(os.environ, EG_DEBUG="1", EG_WERROR="1")
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "-b", str(out), "-t", str(out / "tmp")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    # The package's Python files next to the debug _core.
    pkg = out / "exitguard"
    for name in os.listdir(os.path.join(ROOT, "src", "exitguard")):
        if name.endswith(".py"):
            shutil.copyfile(os.path.join(ROOT, "src", "exitguard", name), str(pkg / name))
    return str(out)


def test_double_release_is_fatal_in_debug_builds(run_py, debug_build):
    """An EG_DEBUG=1 build aborts on a second eg_ref_release() of one eg_ref, with a message saying so."""
    res = run_py(
        """
        import sys
        sys.path.insert(0, %r)
        import exitguard
        assert "debug" in exitguard._core.__file__
        import egtest
        h = egtest.ref_new(object())
        egtest.ref_release(h)
        egtest.ref_release(h)
        print("not reached")
        """ % debug_build,
    )
    assert res.returncode == -6, res.describe()          # abort()
    assert "exitguard: fatal: eg_ref_release() called on an eg_ref that was already released (double release)" in res.stderr
    assert "not reached" not in res.stdout


def _run_debug(run_py, debug_build, body):
    return run_py(
        """
        import sys
        sys.path.insert(0, %r)
        import exitguard
        assert "debug" in exitguard._core.__file__
        import egtest
        """ % debug_build + body,
    )


def test_double_stopper_remove_is_fatal_in_debug_builds(run_py, debug_build):
    """An EG_DEBUG=1 build aborts on a second eg_stopper_remove() of one stopper, with a message saying so."""
    res = _run_debug(run_py, debug_build, """
        h = egtest.c_stopper("x", [])
        egtest.stopper_remove(h)
        egtest.stopper_remove(h)
        print("not reached")
        """)
    assert res.returncode == -6, res.describe()
    assert "exitguard: fatal: eg_stopper_remove()/eg_stopper_after() called on a stopper that was already removed" in res.stderr, res.describe()
    assert "not reached" not in res.stdout


def test_double_thread_join_is_fatal_in_debug_builds(run_py, debug_build):
    """An EG_DEBUG=1 build aborts on a second eg_thread_join() of one handle, with a message saying so."""
    res = _run_debug(run_py, debug_build, """
        h = egtest.quick_thread()
        assert egtest.thread_join(h, 5) == 0
        egtest.thread_join(h, 5)
        print("not reached")
        """)
    assert res.returncode == -6, res.describe()
    assert "exitguard: fatal: eg_thread_join() called on a handle that was already joined" in res.stderr, res.describe()
    assert "not reached" not in res.stdout
