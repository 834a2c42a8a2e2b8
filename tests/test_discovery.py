"""Discovery: python -m exitguard, get_cmake_dir(), get_pkgconfig_dir() and the files they name.

Every tool reports the same version -- the installed package's, which is the headers'
EG_VERSION_STRING -- and the same ABI as the capsule.  The CMake package is exercised by
the scikit-build-core examples (tests/test_examples.py) and, for its version rules, by
`make check-packaging`; pkg-config here and by the meson example.
"""

import os
import re
import subprocess
import sys
import sysconfig

import pytest

import exitguard
import isolated_build


def _cli(*args):
    # abspath: 3.14's site warns on stderr about a sys.prefix spelled with "..".
    return subprocess.run([os.path.abspath(sys.executable), "-m", "exitguard"] + list(args),
                          capture_output=True, text=True, timeout=60)


def _header_define(name):
    with open(os.path.join(exitguard.get_include(), "exitguard", "version.h")) as f:
        m = re.search(r"#define %s (\S+)" % name, f.read())
    return m.group(1).strip('"')


def test_cli_prints_what_the_api_returns():
    """python -m exitguard prints, for each option, exactly what the matching Python function returns."""
    expect = {
        "--version": exitguard.__version__,
        "--abi": str(exitguard.ABI_VERSION),
        "--includedir": exitguard.get_include(),
        "--cmakedir": exitguard.get_cmake_dir(),
        "--pkgconfigdir": exitguard.get_pkgconfig_dir(),
        "--cflags": "-I" + exitguard.get_include(),
    }
    for option, value in expect.items():
        proc = _cli(option)
        assert proc.returncode == 0 and proc.stderr == "", (option, proc)
        assert proc.stdout == value + "\n", (option, proc.stdout)


def test_version_and_abi_are_the_headers():
    """__version__ and ABI_VERSION equal version.h's EG_VERSION_STRING and EG_ABI_VERSION."""
    assert exitguard.__version__ == _header_define("EG_VERSION_STRING")
    assert exitguard.ABI_VERSION == int(_header_define("EG_ABI_VERSION"))


def test_includes_are_enough_to_compile_the_header(tmp_path):
    """python -m exitguard --includes gives flags that compile exitguard.h as C11 with -Werror."""
    flags = _cli("--includes").stdout.split()
    assert flags[0] == "-I" + exitguard.get_include(), flags
    assert "-I" + sysconfig.get_paths()["include"] in flags, flags
    src = tmp_path / "use.c"
    src.write_text("#include <exitguard.h>\nint use(void);\nint use(void) { return eg_import(); }\n")
    proc = subprocess.run(["gcc", "-std=c11", "-fsyntax-only", "-Wall", "-Wextra", "-Werror"] + flags + [str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args,message", [
    ([], "one of the arguments"),
    (["--cflags", "--abi"], "not allowed with argument"),
    (["--version", "--libs"], "unrecognized arguments: --libs"),
])
def test_cli_rejects_bad_usage_clearly(args, message):
    """python -m exitguard rejects no, conflicting and unknown options with exit code 2 and its usage."""
    proc = _cli(*args)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert message in proc.stderr and "usage: python -m exitguard" in proc.stderr, proc.stderr


def test_installed_build_files():
    """The installed package holds its headers, the CMake config, the .pxd and a filled-in exitguard.pc."""
    inc = exitguard.get_include()
    for header in ("exitguard.h", "exitguard.hpp", os.path.join("exitguard", "version.h"),
                   os.path.join("exitguard", "pybind11.h"), os.path.join("exitguard", "nanobind.h")):
        assert os.path.isfile(os.path.join(inc, header)), header
    cmake = exitguard.get_cmake_dir()
    for name in ("exitguardConfig.cmake", "exitguardConfigVersion.cmake"):
        assert os.path.isfile(os.path.join(cmake, name)), name
    assert os.path.isfile(os.path.join(os.path.dirname(exitguard.__file__), "__init__.pxd"))
    with open(os.path.join(exitguard.get_pkgconfig_dir(), "exitguard.pc")) as f:
        pc = f.read()
    assert "\nVersion: %s\n" % exitguard.__version__ in pc, pc
    assert "\nabi_version=%d\n" % exitguard.ABI_VERSION in pc, pc
    assert "@" not in pc, pc


def test_pkg_config_reports_the_same_version_and_folder():
    """pkg-config reports the package's own version, ABI version and include folder for exitguard."""
    found = isolated_build.pkg_config()
    if found is None:
        pytest.skip(isolated_build.NO_PKG_CONFIG)
    program, env = found

    def query(*args):
        proc = subprocess.run([program] + list(args) + ["exitguard"], capture_output=True, text=True,
                              env=dict(os.environ, **env))
        assert proc.returncode == 0, proc
        return proc.stdout.strip()

    assert query("--modversion") == exitguard.__version__
    assert query("--variable=abi_version") == str(exitguard.ABI_VERSION)
    cflags = query("--cflags")
    assert cflags.startswith("-I"), cflags
    assert os.path.realpath(cflags[2:]) == os.path.realpath(exitguard.get_include()), cflags
