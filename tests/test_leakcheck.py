"""python -m exitguard.leakcheck: valgrind with exitguard's suppressions, summary per
shared object, non-zero only for problems outside CPython."""

import os
import shutil
import subprocess
import sys

import pytest

import exitguard

import sysconfig

FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
pytestmark = pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")


def test_suppressions_are_installed():
    """valgrind_suppressions() names an installed file, exitguard's valgrind.supp."""
    path = exitguard.valgrind_suppressions()
    assert os.path.isfile(path)
    with open(path) as f:
        assert f.read().startswith("# valgrind.supp")


def _leakcheck(ext_dir, code):
    env = dict(os.environ, PYTHONPATH=ext_dir)
    return subprocess.run([sys.executable, "-m", "exitguard.leakcheck", "--", sys.executable, "-c", code],
                          capture_output=True, text=True, env=env, timeout=600)


def test_free_threaded_build_is_refused_clearly(ext_dir):
    """leakcheck refuses a free-threaded build with exit 2 naming PYTHONMALLOC=malloc; elsewhere it passes."""
    if not FREE_THREADED:
        proc = _leakcheck(ext_dir, "pass")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return
    proc = _leakcheck(ext_dir, "pass")
    assert proc.returncode == 2
    assert "PYTHONMALLOC=malloc" in proc.stderr


@pytest.mark.skipif(FREE_THREADED, reason="free-threaded CPython cannot run under PYTHONMALLOC=malloc")
def test_leaking_extension_is_named_and_fails(ext_dir):
    """leakcheck fails with exit 1 on a definite leak, naming the leaking extension first, with its size."""
    proc = _leakcheck(ext_dir, "import egtest; egtest.leak_bytes(4096)")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [l for l in proc.stdout.splitlines() if "definite leak" in l]
    assert lines and "egtest" in lines[0], proc.stdout       # the user's module first
    assert "4096 bytes" in lines[0]
    assert "leakcheck: FAILED" in proc.stdout


@pytest.mark.skipif(FREE_THREADED, reason="free-threaded CPython cannot run under PYTHONMALLOC=malloc")
def test_clean_extension_passes(ext_dir):
    """leakcheck passes an extension whose eg_ref is released from a native thread."""
    proc = _leakcheck(ext_dir, "import egtest, exitguard; h = egtest.ref_new(object()); egtest.release_in_threads([h])")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(FREE_THREADED, reason="free-threaded CPython cannot run under PYTHONMALLOC=malloc")
def test_refcount_leak_is_blamed_on_the_extension_not_cpython(ext_dir):
    """Objects the extension created and never DECREF'd: the allocation's top frames
    are CPython's (PyBytes_FromStringAndSize, malloc), the culprit is the first frame
    outside CPython -- egtest's, with its file and line, shown before CPython's."""
    proc = _leakcheck(ext_dir, "import egtest; egtest.leak_objects(3)")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    (head,) = [l for l in lines if "definite leak" in l and "egtest" in l]
    assert "[CPython]" not in head and " 1 definite leak(s)" in head, proc.stdout
    what, first, via = lines[lines.index(head) + 1:][:3]
    assert what.strip().startswith("Leak_DefinitelyLost:") and " in 3 blocks " in what, proc.stdout
    assert first.split()[:2] == [">", "t_leak_objects"] and "egtest.c:" in first, proc.stdout   # the user's frame
    assert via.split()[:2] == ["via", "PyBytes_FromStringAndSize"], proc.stdout                 # then CPython's
    assert "leakcheck: FAILED" in proc.stdout


@pytest.mark.skipif(FREE_THREADED, reason="free-threaded CPython cannot run under PYTHONMALLOC=malloc")
def test_failing_command_fails_the_check(ext_dir):
    """leakcheck exits 3 when the checked command exits non-zero or is killed, saying which."""
    proc = _leakcheck(ext_dir, "import sys; sys.exit(3)")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "leakcheck: FAILED: the command exited with status 3" in proc.stdout
    proc = _leakcheck(ext_dir, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "killed by SIGTERM" in proc.stdout
