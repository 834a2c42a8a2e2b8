"""The public header compiles as C11 and as C++ with warnings as errors."""

import os
import shutil
import subprocess
import sysconfig

import pytest

import exitguard

SRC = r"""
#include <exitguard.h>
static void stop_cb(void *arg) { (void)arg; }
int use_api(PyObject *o);
int use_api(PyObject *o)
{
    if (eg_import() < 0) return -1;
    eg_ref *r = eg_ref_new(o);
    if (r == NULL) return -1;
    (void)eg_ref_get(r);
    eg_ref_release(r);
    eg_decref(NULL);
    (void)eg_flush();
    eg_stopper *s = eg_stopper_add(stop_cb, NULL);
    (void)eg_stopper_after(s, s);
    eg_stopper_remove(s);
    EG_LOG(EG_LOG_DEBUG, "use.api", "ref %p", (void *)r);
    eg_log(EG_LOG_INFO, NULL, "done");
    return eg_strerror(0) != NULL ? 0 : -1;
}
"""

CASES = [
    ("gcc", ["-x", "c", "-std=c11"], []),
    ("gcc", ["-x", "c", "-std=c11"], ["-DEG_CAPI_SHARED", "-DEG_CAPI_DEFINE"]),
    ("g++", ["-x", "c++", "-std=c++11"], []),
    ("g++", ["-x", "c++", "-std=c++17"], ["-DEG_CAPI_SHARED"]),
    ("g++", ["-x", "c++", "-std=c++20"], []),
]


@pytest.mark.parametrize("compiler,lang,defines", CASES)
def test_header_compiles(tmp_path, compiler, lang, defines):
    """exitguard.h compiles with -Werror as pedantic C11 and C++11/17/20, with and without EG_CAPI_SHARED."""
    cc = shutil.which(compiler)
    assert cc, "%s is required to build extensions" % compiler
    src = tmp_path / "use.c"
    src.write_text(SRC)
    cmd = (
        [cc, "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-pedantic-errors"]
        + lang
        + defines
        + ["-I", exitguard.get_include(), "-I", sysconfig.get_paths()["include"], str(src)]
    )
    # CPython's own headers are not pedantic-clean in C++ on every version:
    # -pedantic-errors applies to C only.
    if "c++" in lang:
        cmd.remove("-pedantic-errors")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, " ".join(cmd) + "\n" + proc.stderr


def test_call_site_log_wants_a_literal_logger_name(tmp_path):
    """EG_LOG keeps its level per call site, which is only right when the logger name
    cannot change under it: a name in a buffer does not compile (eg_log takes it)."""
    src = tmp_path / "bad.c"
    src.write_text('#include <exitguard.h>\n'
                   'void f(char *buf);\n'
                   'void f(char *buf) { EG_LOG(EG_LOG_INFO, buf, "x"); }\n')
    cmd = [shutil.which("gcc"), "-fsyntax-only", "-std=c11", "-I", exitguard.get_include(),
           "-I", sysconfig.get_paths()["include"], str(src)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0 and "bad.c:3" in proc.stderr, proc.stderr


def test_installed_headers():
    """The installed exitguard.h is there, and version.h's EG_VERSION_STRING is __version__."""
    inc = exitguard.get_include()
    assert os.path.isfile(os.path.join(inc, "exitguard.h"))
    assert os.path.isfile(os.path.join(inc, "exitguard", "version.h"))
    with open(os.path.join(inc, "exitguard", "version.h")) as f:
        assert '#define EG_VERSION_STRING "%s"' % exitguard.__version__ in f.read()


NOT_IMPORTED = r"""
// An extension that forgot eg_import(): every call must fail cleanly, never crash.
#include <exitguard.h>
#include <errno.h>

static PyObject *calls(PyObject *m, PyObject *obj)
{
    (void)m;
    eg_gil st;
    int rc_ensure = eg_gil_ensure(NULL, &st);
    eg_gil_release(&st);
    eg_decref(obj);                       /* nothing done: the reference is kept */
    eg_ref *r = eg_ref_new(obj);          /* NULL, RuntimeError set */
    int had_error = r == NULL && PyErr_ExceptionMatches(PyExc_RuntimeError);
    PyErr_Clear();
    eg_log(EG_LOG_WARNING, "noimport", "lost");
    eg_thread *t;
    int rc_thread = eg_thread_start(&t, "x", NULL, NULL, NULL);
    return Py_BuildValue("(iiis)", rc_ensure, had_error, rc_thread, eg_strerror(-ENOSYS));
}

static PyMethodDef methods[] = {{"calls", calls, METH_O, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "noimport", NULL, -1, methods,
                                 NULL, NULL, NULL, NULL};
PyMODINIT_FUNC PyInit_noimport(void) { return PyModule_Create(&def); }
"""


def test_calls_before_eg_import_fail_cleanly(run_py, tmp_path):
    """A file that forgot eg_import() gets a message naming eg_import() and the file,
    and error results -- not a NULL dereference (issue 11 item 8)."""
    import sys

    (tmp_path / "noimport.c").write_text(NOT_IMPORTED)
    (tmp_path / "setup.py").write_text(
        "from setuptools import Extension, setup\n"
        "setup(name='noimport', ext_modules=[Extension('noimport', ['noimport.c'], include_dirs=[%r], "
        "extra_compile_args=['-Wall', '-Wextra', '-Werror'])])\n" % exitguard.get_include()
    )
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    res = run_py(
        """
        import sys, json, errno
        sys.path.insert(0, %r)
        import exitguard, noimport
        o = object()
        before = sys.getrefcount(o)
        rc_ensure, raised, rc_thread, text = noimport.calls(o)
        print(json.dumps({"ensure": rc_ensure, "raised": raised, "thread": rc_thread, "text": text,
                          "kept": sys.getrefcount(o) == before, "ENOSYS": -errno.ENOSYS}))
        """ % str(tmp_path)
    )
    from conftest import assert_clean

    assert_clean(res)
    d = res.data
    assert d["ensure"] == d["ENOSYS"] and d["thread"] == d["ENOSYS"], res.describe()
    assert d["raised"] == 1 and d["kept"], res.describe()
    assert "not imported" in d["text"]
    assert "exitguard: eg_gil_ensure() called before eg_import() in noimport.c" in res.stderr, res.describe()
    assert res.stderr.count("called before eg_import()") == 1       # said once per file
