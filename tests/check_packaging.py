"""Packaging checks, run once per CI run (`make check-packaging`), not per interpreter.

Steps, each printed as PASS/FAIL (or NOT RUN, with the reason) with its time:

  tools        a fresh virtual environment with build, twine, mypy, cmake, pkgconf
               and pyright (pyright only if it installs from the package index)
  build        python -m build: the sdist, then the wheel built from that sdist
  twine        twine check --strict on both
  contents     the sdist and the wheel hold the headers (adapters included), the
               .pxd, the stubs, the CMake package and the pkg-config file
  wheel venv   the wheel installed in a fresh venv: tests/typed_user.py runs there
  sdist venv   the same from the sdist (a build from source in isolation)
  clients      in the wheel's venv, tests/test_examples.py, test_discovery.py and
               test_stubs.py: every example built in isolation against that wheel,
               with the builds make test leaves to this step (isolated_build.ONCE)
  adapters     exitguard/pybind11.h and nanobind.h compile with -Wall -Wextra -Werror
               as C++17 and C++20 against the bindings from the index (the examples
               build them as C++17 only)
  cmake        exitguardConfigVersion.cmake's rules, with a CMake from the index
  pkgconf      the pkg_config entry point: pkgconf-pypi finds exitguard.pc by itself
  mypy         mypy --strict on the stubs and on tests/typed_user.py
  stubtest     mypy's stubtest: stubs against the runtime, signatures included
  pyright      pyright (strict) on tests/typed_user.py

    python tests/check_packaging.py [--work DIR] [--keep]

It ends with a line "N passed, N failed" and exits 1 if anything failed.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TIMEOUT = 1800


class Failed(Exception):
    pass


class NotRun(Exception):
    pass


def run(cmd, *, cwd=None, env=None, timeout=TIMEOUT, check=True):
    full_env = dict(os.environ)
    full_env.pop("PYTHONPATH", None)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise Failed("$ %s\nexit code %d\n%s%s" % (" ".join(map(str, cmd)), proc.returncode,
                                                   _tail(proc.stdout), _tail(proc.stderr)))
    return proc


def _tail(text, n=60):
    lines = text.rstrip().splitlines()
    return "\n".join(lines[-n:]) + "\n" if lines else ""


def venv(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    run([sys.executable, "-m", "venv", path])
    py = os.path.join(path, "bin", "python")
    run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    return py


class Checks:
    def __init__(self, work):
        self.work = work
        self.dist = os.path.join(work, "dist")
        self.results = []

    def step(self, name, fn):
        t0 = time.monotonic()
        try:
            fn()
            status, detail = "PASS", ""
        except NotRun as e:
            status, detail = "NOT RUN", str(e)
        except Failed as e:
            status, detail = "FAIL", str(e)
        except Exception as e:     # a bug in a check is a failure too, with its traceback
            import traceback

            status, detail = "FAIL", traceback.format_exc()
        self.results.append((status, name))
        print("%-7s %-11s (%.0f s)%s" % (status, name, time.monotonic() - t0,
                                         "" if not detail else "\n" + textwrap.indent(detail.rstrip(), "    ")),
              flush=True)
        return status == "PASS"

    # ---- the steps -------------------------------------------------------------

    def tools(self):
        self.tpy = venv(os.path.join(self.work, "tools"))
        run([self.tpy, "-m", "pip", "install", "-q", "build", "twine", "mypy", "cmake", "ninja"])
        proc = run([self.tpy, "-m", "pip", "install", "-q", "pyright[nodejs]"], check=False)
        self.pyright = None
        if proc.returncode == 0:
            self.pyright = os.path.join(self.work, "tools", "bin", "pyright")
        else:
            self.pyright_missing = _tail(proc.stdout + proc.stderr, 5)

    def build(self):
        shutil.rmtree(self.dist, ignore_errors=True)
        # No --sdist/--wheel: build makes the sdist, then the wheel from it, which
        # proves the sdist complete.
        run([self.tpy, "-m", "build", "--outdir", self.dist, ROOT])
        self.sdist = _one(os.path.join(self.dist, "exitguard-*.tar.gz"))
        self.wheel = _one(os.path.join(self.dist, "exitguard-*.whl"))

    def twine(self):
        run([self.tpy, "-m", "twine", "check", "--strict", self.sdist, self.wheel])

    def contents(self):
        with zipfile.ZipFile(self.wheel) as z:
            wheel = set(z.namelist())
            entry_points = z.read(next(n for n in wheel if n.endswith("entry_points.txt"))).decode()
        with tarfile.open(self.sdist) as t:
            sdist = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
        want_wheel = [
            "exitguard/include/exitguard.h", "exitguard/include/exitguard.hpp",
            "exitguard/include/exitguard/version.h", "exitguard/include/exitguard/pybind11.h",
            "exitguard/include/exitguard/nanobind.h", "exitguard/__init__.pxd", "exitguard/__init__.pyi",
            "exitguard/_core.pyi",
            "exitguard/testing.pyi", "exitguard/py.typed", "exitguard/cmake/exitguardConfig.cmake",
            "exitguard/cmake/exitguardConfigVersion.cmake", "exitguard/pkgconfig/exitguard.pc",
            "exitguard/__main__.py", "exitguard/valgrind.supp",
        ]
        want_sdist = [
            "include/exitguard.h", "include/exitguard.hpp", "include/exitguard/version.h",
            "include/exitguard/pybind11.h", "include/exitguard/nanobind.h", "src/core/record.h",
            "src/base/compat.h", "src/py/module.c", "src/py/py.h", "src/exitguard/__init__.pxd",
            "src/exitguard/pkgconfig/exitguard.pc.in", "src/exitguard/cmake/exitguardConfig.cmake",
            "valgrind.supp", "README.md", "pyproject.toml", "setup.py",
        ]
        missing = ["wheel: " + n for n in want_wheel if n not in wheel]
        missing += ["sdist: " + n for n in want_sdist if n not in sdist]
        for group in ("[pytest11]", "[pkg_config]"):
            if group not in entry_points:
                missing.append("wheel entry points: " + group)
        if any(n.endswith(".pc.in") for n in wheel):
            missing.append("wheel: the .pc template should not be installed")
        if missing:
            raise Failed("missing:\n" + "\n".join(missing))

    def _smoke(self, py):
        proc = run([py, os.path.join(HERE, "typed_user.py")], cwd=self.work)
        if "typed user: ok" not in proc.stdout or "typed user: stopping" not in proc.stdout:
            raise Failed("tests/typed_user.py did not report ok:\n" + proc.stdout + proc.stderr)
        version = run([py, "-m", "exitguard", "--version"]).stdout.strip()
        if not os.path.basename(self.wheel).startswith("exitguard-%s-" % version):
            raise Failed("python -m exitguard --version says %r for %s" % (version, self.wheel))

    def wheel_venv(self):
        self.wpy = venv(os.path.join(self.work, "venv-wheel"))
        run([self.wpy, "-m", "pip", "install", "-q", self.wheel])
        self._smoke(self.wpy)

    def sdist_venv(self):
        spy = venv(os.path.join(self.work, "venv-sdist"))
        run([spy, "-m", "pip", "install", "-q", self.sdist])
        self._smoke(spy)

    def clients(self):
        run([self.wpy, "-m", "pip", "install", "-q", "pytest", "pytest-timeout"])
        proc = run([self.wpy, "-m", "pytest", "-c", os.path.join(ROOT, "pyproject.toml"), "--rootdir", ROOT,
                    "-q", "test_examples.py", "test_discovery.py", "test_stubs.py"],
                   cwd=HERE, env={"EXITGUARD_TEST_WHEELHOUSE": self.dist, "EXITGUARD_TEST_ONCE_PER_RUN": "1"},
                   check=False)
        print(textwrap.indent(_tail(proc.stdout, 12).rstrip(), "    "))
        if proc.returncode != 0:
            raise Failed(_tail(proc.stdout, 80) + proc.stderr)

    def adapters(self):
        run([self.wpy, "-m", "pip", "install", "-q", "pybind11", "nanobind"])
        paths = run([self.wpy, "-c", "import exitguard, pybind11, nanobind, sysconfig; "
                     "print(exitguard.get_include()); print(pybind11.get_include()); "
                     "print(nanobind.include_dir()); print(sysconfig.get_paths()['include'])"]).stdout.split()
        eg_inc, pb_inc, nb_inc, py_inc = paths
        sources = {
            "pybind11": "#include <pybind11/pybind11.h>\n#include <exitguard/pybind11.h>\n"
                        "PYBIND11_MODULE(m, mod) { exitguard::py::import();\n"
                        "  mod.def(\"f\", [](exitguard::py::object o) { return o; }); }\n",
            "nanobind": "#include <nanobind/nanobind.h>\n#include <exitguard/nanobind.h>\n"
                        "NB_MODULE(m, mod) { exitguard::nb::import();\n"
                        "  mod.def(\"f\", [](exitguard::nb::object o) { return o; }); }\n",
        }
        for binding, text in sources.items():
            src = os.path.join(self.work, "adapter_%s.cpp" % binding)
            with open(src, "w") as f:
                f.write(text)
            for std in ("c++17", "c++20"):
                run(["g++", "-std=" + std, "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
                     "-I", eg_inc, "-I", pb_inc if binding == "pybind11" else nb_inc, "-I", py_inc, src])

    def cmake(self):
        cmake = os.path.join(self.work, "tools", "bin", "cmake")
        ninja = os.path.join(self.work, "tools", "bin", "ninja")
        cmakedir = run([self.wpy, "-m", "exitguard", "--cmakedir"]).stdout.strip()
        include = run([self.wpy, "-m", "exitguard", "--includedir"]).stdout.strip()
        version = run([self.wpy, "-m", "exitguard", "--version"]).stdout.strip()
        major = version.split(".")[0]
        cases = [("", True), (version, True), ("0.0.1" if major == "0" else major + ".0", True),
                 ("%d.0" % (int(major) + 1), False), ("99.0", False)]
        for req, ok in cases:
            src = tempfile.mkdtemp(dir=self.work, prefix="cmake-")
            with open(os.path.join(src, "CMakeLists.txt"), "w") as f:
                f.write(textwrap.dedent("""
                    cmake_minimum_required(VERSION 3.15)
                    project(probe NONE)
                    find_package(exitguard %s CONFIG)
                    if(exitguard_FOUND)
                      get_target_property(inc exitguard::exitguard INTERFACE_INCLUDE_DIRECTORIES)
                      message(STATUS "probe: found ${exitguard_VERSION} abi=${exitguard_ABI_VERSION} inc=${inc}")
                    else()
                      message(STATUS "probe: not found")
                    endif()
                    """ % req))
            proc = run([cmake, "-G", "Ninja", "-DCMAKE_MAKE_PROGRAM=" + ninja, "-Dexitguard_DIR=" + cmakedir,
                        "-S", src, "-B", os.path.join(src, "b")])
            found = "probe: found %s abi=" % version in proc.stdout
            if found != ok:
                raise Failed("find_package(exitguard %s CONFIG): expected %s\n%s" %
                             (req, "found" if ok else "not found", proc.stdout))
            if ok and ("inc=" + include) not in proc.stdout.replace("\\", "/"):
                raise Failed("exitguard::exitguard does not carry %s:\n%s" % (include, proc.stdout))

    def pkgconf(self):
        run([self.wpy, "-m", "pip", "install", "-q", "pkgconf"])
        tool = os.path.join(self.work, "venv-wheel", "bin", "pkgconf-pypi")
        proc = run([tool, "--modversion", "exitguard"], env={"PKG_CONFIG_PATH": None, "VIRTUAL_ENV": None})
        version = run([self.wpy, "-m", "exitguard", "--version"]).stdout.strip()
        if proc.stdout.strip() != version:
            raise Failed("pkgconf-pypi --modversion exitguard printed %r, not %r" % (proc.stdout, version))

    def mypy(self):
        common = [self.tpy, "-m", "mypy", "--strict", "--no-incremental", "--python-executable", self.wpy]
        empty = tempfile.mkdtemp(prefix="mypy-")
        try:
            for target in (["-m", "exitguard", "-m", "exitguard.testing"], [os.path.join(HERE, "typed_user.py")]):
                proc = run(common + target, cwd=empty)
                print("    mypy --strict %s: %s" % (" ".join(target), proc.stdout.strip().splitlines()[-1]))
        finally:
            shutil.rmtree(empty, ignore_errors=True)

    def stubtest(self):
        run([self.wpy, "-m", "pip", "install", "-q", "mypy"])
        # From an empty folder: mypy would otherwise also find the venv below the
        # work folder as a source tree ("Duplicate module").
        empty = tempfile.mkdtemp(prefix="stubtest-")
        try:
            # A package: its submodules with stubs (_core, testing) are checked too.
            run([self.wpy, "-m", "mypy.stubtest", "--concise", "exitguard"], cwd=empty)
        finally:
            shutil.rmtree(empty, ignore_errors=True)

    def pyright_check(self):
        if self.pyright is None:
            raise NotRun("pyright did not install from the package index:\n" + self.pyright_missing)
        proc = run([self.pyright, "--pythonpath", self.wpy, os.path.join(HERE, "typed_user.py")],
                   cwd=self.work, check=False)
        if proc.returncode != 0 or not re.search(r"^0 errors", proc.stdout, re.M):
            raise Failed(proc.stdout + proc.stderr)
        print("    pyright (strict): %s" % proc.stdout.strip().splitlines()[-1])
        # For the record, not a pass/fail criterion: the modules without stubs
        # (leakcheck's CLI, the pytest plugin) are untyped on purpose.
        bindir = os.path.dirname(self.wpy)
        info = run([self.pyright, "--verifytypes", "exitguard", "--ignoreexternal"], cwd=self.work, check=False,
                   env={"VIRTUAL_ENV": os.path.dirname(bindir), "PATH": bindir + os.pathsep + os.environ["PATH"]})
        score = [l for l in info.stdout.splitlines() if l.startswith("Type completeness score")]
        print("    pyright --verifytypes exitguard: %s" % (score[0] if score else "no score printed"))


def _one(pattern):
    found = glob.glob(pattern)
    if len(found) != 1:
        raise Failed("expected one %s, found %s" % (pattern, found))
    return found[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=os.path.join(ROOT, "build", "packaging"))
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    args = parser.parse_args()
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    c = Checks(work)
    t0 = time.monotonic()
    if c.step("tools", c.tools) and c.step("build", c.build):
        c.step("twine", c.twine)
        c.step("contents", c.contents)
        if c.step("wheel venv", c.wheel_venv):
            c.step("clients", c.clients)
            c.step("adapters", c.adapters)
            c.step("cmake", c.cmake)
            c.step("pkgconf", c.pkgconf)
            c.step("mypy", c.mypy)
            c.step("stubtest", c.stubtest)
            c.step("pyright", c.pyright_check)
        c.step("sdist venv", c.sdist_venv)
    passed = sum(1 for s, _ in c.results if s == "PASS")
    failed = sum(1 for s, _ in c.results if s == "FAIL")
    not_run = [n for s, n in c.results if s == "NOT RUN"]
    print("check-packaging finished in %.0f s%s" % (time.monotonic() - t0,
          "; not run: " + ", ".join(not_run) if not_run else ""))
    print("%d passed, %d failed" % (passed, failed))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
