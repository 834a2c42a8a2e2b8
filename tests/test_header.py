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


def test_installed_headers():
    inc = exitguard.get_include()
    assert os.path.isfile(os.path.join(inc, "exitguard.h"))
    assert os.path.isfile(os.path.join(inc, "exitguard", "version.h"))
    with open(os.path.join(inc, "exitguard", "version.h")) as f:
        assert '#define EG_VERSION_STRING "%s"' % exitguard.__version__ in f.read()
