"""A build's flags decide its objects: EG_DEBUG=1 or EG_SANITIZE=... on a tree that
was built before must produce that build, not reuse the previous one's objects
(setuptools compares only timestamps, so it used to relink -- or skip -- silently)."""

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

# What a source checkout needs to build (no build/, .venv/ or .git/).
TREE = ["setup.py", "pyproject.toml", "README.md", "valgrind.supp", "src", "include"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A private copy of the checkout, so that its build/ folder is this test's alone."""
    dest = tmp_path_factory.mktemp("tree")
    for name in TREE:
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, str(dest / name), ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.egg-info"))
        else:
            shutil.copyfile(src, str(dest / name))
    return dest


def _pip_install(tree, target, **flags):
    """`pip install .` of `tree` into `target` with the build switches in `flags`."""
    env = dict(os.environ, EG_WERROR="1")
    for k in ("EG_DEBUG", "EG_SANITIZE"):
        env.pop(k, None)
    env.update(flags)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-build-isolation",
         "--no-deps", "--target", str(target), str(tree)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (so,) = [f for f in os.listdir(str(target / "exitguard")) if f.startswith("_core") and f.endswith(".so")]
    with open(str(target / "exitguard" / so), "rb") as f:
        data = f.read()
    return {"debug": DEBUG_MARK in data, "ubsan": UBSAN_MARK in data}


# Compiled only into EG_DEBUG builds (registry.c), and what -fsanitize=undefined calls.
DEBUG_MARK = b"(double release)"
UBSAN_MARK = b"__ubsan_handle_"


def test_switches_rebuild_a_built_tree(tree, tmp_path, run_py):
    """EG_DEBUG=1 or EG_SANITIZE=undefined on a built tree produces that build, not the previous one's."""
    release = _pip_install(tree, tmp_path / "release")
    assert release == {"debug": False, "ubsan": False}
    assert os.path.isdir(str(tree / "build")), "pip did not build in the tree: the test would prove nothing"

    debug = _pip_install(tree, tmp_path / "debug", EG_DEBUG="1")
    assert debug == {"debug": True, "ubsan": False}, "EG_DEBUG=1 on a built tree produced another build"
    # And the documented abort fires with that build.
    res = run_py(
        """
        import sys
        sys.path.insert(0, %r)
        import exitguard, egtest
        h = egtest.ref_new(object())
        egtest.ref_release(h)
        egtest.ref_release(h)
        print("not reached")
        """ % str(tmp_path / "debug"),
    )
    assert res.returncode == -6, res.describe()
    assert "(double release)" in res.stderr and "not reached" not in res.stdout

    sanitized = _pip_install(tree, tmp_path / "ubsan", EG_SANITIZE="undefined")
    assert sanitized == {"debug": False, "ubsan": True}

    again = _pip_install(tree, tmp_path / "release-again")
    assert again == {"debug": False, "ubsan": False}
