"""Shared fixtures: build the client extensions once, run scenarios in fresh interpreters.

Every shutdown scenario runs in its own interpreter through exitguard.testing -- the
helper users get -- so that each scenario exercises it: ``run_py`` is
``exitguard.testing.run_exit`` with the leak report on (``EXITGUARD_LEAKS=warn``), and
``assert_clean`` is ``ExitReport.check``: exit code, hang, crash, fatal error,
traceback, stopper errors, abandoned threads and leaks, judged from exitguard's final
counters.  A scenario that provokes one of those on purpose says so (``allow=``).
The counters a scenario prints as JSON lines are its ``data``.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap

import pytest

from exitguard import testing

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Default time bound for one scenario; each test passes its own where it matters.
TIMEOUT = 60


def _build_ext(name, source, build_dir, extra_args=(), std="c11"):
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
                        extra_compile_args=["-std=%(std)s", "-Wall", "-Wextra", "-Werror"] + %(extra)r,
                        extra_link_args=["-pthread"],
                        language=%(lang)r,
                    )],
                )
                """
                % dict(name=name, source=source, inc=exitguard.get_include(), extra=list(extra_args), std=std,
                       lang="c++" if std.startswith("c++") else "c")
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
    """A folder holding the built test extensions ``egtest`` and ``egcxx`` and the ``ticker`` example."""
    d = str(tmp_path_factory.mktemp("ext"))
    _build_ext("egtest", os.path.join(HERE, "ext", "egtest.c"), d)
    _build_ext("egbase", os.path.join(HERE, "ext", "egbase.c"), d)
    _build_ext("egcxx", os.path.join(HERE, "ext", "egcxx.cpp"), d, std="c++17")
    ticker = os.path.join(ROOT, "examples", "ticker", "ticker.c")
    if os.path.exists(ticker):
        _build_ext("ticker", ticker, d)
    return d


class Result:
    """An exitguard.testing.ExitReport, plus the JSON the scenario printed."""

    def __init__(self, report):
        self.report = report

    def __getattr__(self, name):
        return getattr(self.report, name)

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


@pytest.fixture
def run_py(ext_dir):
    """Run a scenario script in a fresh interpreter (exitguard.testing.run_exit); returns a Result.

    The leak report is on (warn: exit codes stay the scenario's own) unless `env`
    says otherwise.
    """

    def run(code, *, env=None, timeout=TIMEOUT, args=()):
        full_env = {"EXITGUARD_LEAKS": "warn"}
        full_env["PYTHONPATH"] = os.pathsep.join([ext_dir, HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        if env:
            full_env.update(env)
        return Result(testing.run_exit(textwrap.dedent(code), env=full_env, timeout=timeout, args=args))

    return run


def assert_clean(res, returncode=0, *, traceback_ok=False, allow=()):
    """The scenario exited cleanly by exitguard.testing's judgement, with `returncode`.

    Refused attaches are the gate doing its job here; `allow` adds the kinds of bad
    exit (exitguard.testing.KINDS) a scenario provokes on purpose, `traceback_ok` the
    traceback one.
    """
    allow = set([allow] if isinstance(allow, str) else allow) | {"refused attaches"}
    if traceback_ok:
        allow.add("traceback")
    res.report.check(expect_returncode=returncode, allow=allow)


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
