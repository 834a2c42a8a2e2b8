"""Shared fixtures: build the client extensions once, run scenarios in fresh interpreters.

Every shutdown scenario runs in its own interpreter (``run_py``), so that a crash or
hang can never take the test runner down with it; the helpers assert on exit code,
stderr and the counters a scenario prints as its last line of JSON.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Default time bound for one scenario; each test passes its own where it matters.
TIMEOUT = 60


def _build_ext(name, source, build_dir, extra_args=()):
    """Build one client extension against the installed exitguard, like a user would."""
    import exitguard

    setup_py = os.path.join(build_dir, "setup_%s.py" % name)
    with open(setup_py, "w") as f:
        f.write(
            textwrap.dedent(
                """
                from setuptools import setup, Extension
                setup(
                    name=%(name)r,
                    ext_modules=[Extension(
                        %(name)r, [%(source)r],
                        include_dirs=[%(inc)r],
                        extra_compile_args=["-std=c11", "-Wall", "-Wextra", "-Werror"] + %(extra)r,
                        extra_link_args=["-pthread"],
                    )],
                )
                """
                % dict(name=name, source=source, inc=exitguard.get_include(), extra=list(extra_args))
            )
        )
    proc = subprocess.run(
        [sys.executable, setup_py, "-q", "build_ext", "-b", build_dir, "-t", os.path.join(build_dir, "tmp_" + name)],
        cwd=build_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise RuntimeError("building %s failed:\n%s\n%s" % (name, proc.stdout, proc.stderr))


@pytest.fixture(scope="session")
def ext_dir(tmp_path_factory):
    """A folder holding the built test extension ``egtest`` and the ``ticker`` example."""
    d = str(tmp_path_factory.mktemp("ext"))
    _build_ext("egtest", os.path.join(HERE, "ext", "egtest.c"), d)
    _build_ext("egbase", os.path.join(HERE, "ext", "egbase.c"), d)
    ticker = os.path.join(ROOT, "examples", "ticker", "ticker.c")
    if os.path.exists(ticker):
        _build_ext("ticker", ticker, d)
    return d


class Result:
    def __init__(self, proc, elapsed):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.elapsed = elapsed

    @property
    def data(self):
        """The JSON objects the scenario printed (stdout lines starting with '{'), merged."""
        merged = None
        for line in self.stdout.splitlines():
            if line.startswith("{"):
                merged = dict(merged or {}, **json.loads(line))
        if merged is None:
            raise AssertionError("scenario printed no JSON line:\n" + self.describe())
        return merged

    def describe(self):
        return "exit code %r after %.2fs\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
            self.returncode,
            self.elapsed,
            self.stdout,
            self.stderr,
        )


@pytest.fixture
def run_py(ext_dir):
    """Run a scenario script in a fresh interpreter; returns a Result."""

    def run(code, *, env=None, timeout=TIMEOUT, args=()):
        full_env = dict(os.environ)
        full_env.pop("EXITGUARD_LEAKS", None)
        full_env["PYTHONPATH"] = os.pathsep.join([ext_dir, HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        full_env["PYTHONFAULTHANDLER"] = "1"
        if env:
            full_env.update(env)
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)] + list(args),
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(proc, time.monotonic() - t0)

    return run


def assert_clean(res, returncode=0, *, traceback_ok=False):
    """The scenario exited with `returncode`, without a fatal error, crash or stray traceback."""
    assert res.returncode == returncode, res.describe()
    assert "Fatal Python error" not in res.stderr, res.describe()
    assert "Segmentation fault" not in res.stderr, res.describe()
    if not traceback_ok:
        assert "Traceback" not in res.stderr, res.describe()


@pytest.fixture(scope="session")
def example_builds(request):
    """Isolated pip builds of the examples that the selected tests use, made once, two at a time.

    A test asks for an example with ``@pytest.mark.example(KEY)`` (keys:
    isolated_build.BUILDS) and gets ``example_builds[KEY]``, a BuildResult.
    """
    import isolated_build

    keys = sorted({m.args[0] for item in request.session.items for m in item.iter_markers("example")})
    unknown = [k for k in keys if k not in isolated_build.BUILDS]
    if unknown:
        raise ValueError("unknown example build(s) %s; known: %s" % (unknown, sorted(isolated_build.BUILDS)))
    # Not under pytest's basetemp: on a machine shared with other pytest sessions
    # (/tmp/pytest-of-<user>), a session that starts deletes all but the three
    # newest basetemps -- this one too, in the middle of its builds.
    scratch = tempfile.mkdtemp(prefix="exitguard-examples-")
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    return isolated_build.build_examples(keys, scratch)


def python_is_free_threaded():
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
