"""exitguard.hpp: compiles with -Wall -Wextra -Werror as C++17 and C++20, and drives a
C++ extension (examples/cxx_pool) through a clean exit."""

import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

import exitguard
from conftest import ROOT, assert_clean

USE = r"""
#include <exitguard.hpp>
#include <vector>
int use(PyObject *o);
int use(PyObject *o)
{
    exitguard::ref r = exitguard::ref::make(o);
    exitguard::ref moved = std::move(r);
    exitguard::gil g;
    if (!g) return g.error();
    exitguard::stopper s([] {});
    exitguard::stopper t([] {});
    (void)t.after(s);
    exitguard::stopper u(exitguard::without_gil, [] {});     // runs with the GIL released
    (void)u.after(t);
    std::vector<exitguard::thread> pool;
    pool.push_back(exitguard::thread::start("x", [] {}, [] {}));
    pool.push_back(exitguard::thread::start("y", [] { (void)exitguard::thread::stop_requested(); }));
    return moved.get() != nullptr && pool[0].join(1.0) == 0 ? 0 : 1;
}
"""


@pytest.mark.parametrize("std", ["c++17", "c++20"])
def test_hpp_compiles(tmp_path, std):
    """exitguard.hpp's classes compile under -Wall -Wextra -Werror as C++17 and as C++20."""
    cxx = shutil.which("g++")
    assert cxx, "g++ is required"
    src = tmp_path / "use.cpp"
    src.write_text(USE)
    cmd = [cxx, "-std=" + std, "-fsyntax-only", "-Wall", "-Wextra", "-Werror",
           "-I", exitguard.get_include(), "-I", sysconfig.get_paths()["include"], str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, " ".join(cmd) + "\n" + proc.stderr


@pytest.fixture(scope="module")
def cxxpool_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cxxpool")
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "-b", str(out), "-t", str(out / "tmp")],
        cwd=os.path.join(ROOT, "examples", "cxx_pool"), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return str(out)


def test_cxx_pool_exits_cleanly_mid_work(run_py, cxxpool_dir):
    """The C++ pool example exits cleanly mid-work: each task ran or was dropped, no ref or decref left."""
    res = run_py(
        """
        import sys
        sys.path.insert(0, %r)
        import scenario, cxxpool, time
        pool = cxxpool.Pool(3)
        scenario.at_exit(lambda: pool.stats())
        calls = []
        for i in range(20000):
            pool.submit(lambda: calls.append(1))
        while len(calls) < 100:
            time.sleep(0.001)
        """ % cxxpool_dir,
        timeout=60,
    )
    assert_clean(res)
    d = res.data
    # Every task either ran or was dropped by the stopper; none leaked.
    assert d["ran"] + d["dropped_at_stop"] + d["refused"] == 20000, res.describe()
    assert d["stats"]["refs_live"] == 0 and d["stats"]["decref_dropped"] == 0


STATIC_THREAD = r"""
// A namespace-scope exitguard::thread whose body never looks at its stop request: phase 1
// abandons it, and its destructor runs at static destruction, after Py_Finalize.
#include <exitguard.hpp>
#include <chrono>
#include <thread>

static exitguard::thread worker;

static PyObject *start(PyObject *, PyObject *)
{
    worker = exitguard::thread::start("cxx-static-worker-that-ignores-stop", [] {
        for (;;) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
    });
    return PyBool_FromLong(worker.ok());
}

static PyMethodDef methods[] = {{"start", start, METH_NOARGS, nullptr}, {nullptr, nullptr, 0, nullptr}};

static int exec_module(PyObject *) { return eg_import(); }

static PyModuleDef_Slot slots[] = {{Py_mod_exec, (void *)exec_module}, {0, nullptr}};

static PyModuleDef def = {PyModuleDef_HEAD_INIT, "cxxstatic", nullptr, 0, methods, slots,
                          nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit_cxxstatic(void) { return PyModuleDef_Init(&def); }
"""


def test_static_thread_abandoned_at_exit_does_not_hang_static_destruction(run_py, tmp_path):
    """exitguard::thread's destructor joins; once phase 1 abandoned the thread, that
    join returns -ESHUTDOWN at once and the destructor gives the handle up, so static
    destruction -- after Py_Finalize -- does not hang (issue 11 item 2)."""
    (tmp_path / "cxxstatic.cpp").write_text(STATIC_THREAD)
    (tmp_path / "setup.py").write_text(
        "from setuptools import Extension, setup\n"
        "setup(name='cxxstatic', ext_modules=[Extension('cxxstatic', ['cxxstatic.cpp'], "
        "include_dirs=[%r], language='c++', "
        "extra_compile_args=['-std=c++17', '-Wall', '-Wextra', '-Werror'], "
        "extra_link_args=['-pthread'])])\n" % exitguard.get_include()
    )
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    res = run_py(
        """
        import sys
        sys.path.insert(0, %r)
        import exitguard, cxxstatic
        assert cxxstatic.start()
        """ % str(tmp_path),
        env={"EXITGUARD_JOIN_TIMEOUT": "1"},
        timeout=30,
    )
    assert_clean(res, allow="abandoned thread")        # the point of the scenario
    assert res.stats["threads_abandoned"] == 1, res.describe()
    assert "native thread 'cxx-static-worker-that-ignores-stop' did not stop within 1.0 s" in res.stderr, res.describe()
    assert res.elapsed < 8, res.describe()
