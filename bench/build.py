"""Build the benchmark extensions: bench/_egbench.c and the binding peers in
bench/peers/ (pybind11, nanobind, Cython), for the running interpreter.

    python bench/build.py            (bench/run.py and bench/callgrind.py call build())

Everything goes under bench/build/<python-version>/ (one folder per interpreter and
ABI: 3.13.15 and 3.13.15t never share one).  The peers come from PyPI, installed by
this file itself with pip into bench/build/<version>/tools -- never into the
interpreter's environment -- from wheels cached in bench/build/wheels, which is
filled on first use and then reused, also offline.  A peer that cannot be installed
or built on this interpreter is left out with its reason, and its rows are
missing from the run; exitguard's own module must build.

The compiler is driven directly rather than through setuptools: libnanobind
(nanobind's nb_combined.cpp) and Cython's generated C are third-party code,
compiled without -Werror, while every file of ours gets -Wall -Wextra -Werror.
Outputs are rebuilt only when a source, a header or the command changes.
"""

import concurrent.futures
import glob
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.path.join(HERE, "peers")
VER = platform.python_version() + ("t" if sysconfig.get_config_var("Py_GIL_DISABLED") else "")
BUILD = os.path.join(HERE, "build", VER)
TOOLS = os.path.join(BUILD, "tools")
WHEELS = os.path.join(HERE, "build", "wheels")
EXT = sysconfig.get_config_var("EXT_SUFFIX") or ".so"

# The releases issue 17 names: pybind11 3.1, nanobind 3.x, Cython 3.3.
REQUIREMENTS = ["pybind11>=3.1,<3.2", "nanobind>=3.0,<4", "cython>=3.3,<3.4"]

OURS = ["-Wall", "-Wextra", "-Werror"]
COMMON = ["-fPIC", "-O2", "-g", "-DNDEBUG", "-pthread", "-fno-strict-aliasing",
          "-fvisibility=hidden"]


class BuildError(Exception):
    pass


def _tool(var, default):
    return shlex.split(sysconfig.get_config_var(var) or default)


def _run(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise BuildError("%s\n%s%s" % (" ".join(cmd), p.stdout[-4000:], p.stderr[-4000:]))


def _includes():
    import exitguard
    paths = [sysconfig.get_path("include"), sysconfig.get_path("platinclude"),
             exitguard.get_include(), PEERS]
    return ["-I" + p for p in dict.fromkeys(paths)]


def _up_to_date(out, deps, cmds):
    """True when out exists, is newer than every dep and was made by the same cmds."""
    stamp = out + ".cmd"
    key = hashlib.sha256(json.dumps(cmds).encode()).hexdigest()
    if not os.path.exists(out) or not os.path.exists(stamp) or open(stamp).read() != key:
        return False, stamp, key
    t = os.path.getmtime(out)
    return all(os.path.getmtime(d) <= t for d in deps), stamp, key


def _exitguard_headers():
    import exitguard
    return glob.glob(os.path.join(exitguard.get_include(), "**", "*.h*"), recursive=True)


def _make(out, units, deps, link_cxx):
    """Compile units [(source, language, flags)] and link them into out."""
    os.makedirs(os.path.join(BUILD, "obj"), exist_ok=True)
    cmds = []
    objs = []
    for src, lang, flags in units:
        obj = os.path.join(BUILD, "obj", os.path.basename(out) + "." + os.path.basename(src) + ".o")
        cc = _tool("CXX", "g++") if lang == "c++" else _tool("CC", "cc")
        std = ["-std=c++17"] if lang == "c++" else ["-std=c11"]
        cmds.append(cc + std + COMMON + flags + _includes() + ["-c", src, "-o", obj])
        objs.append(obj)
    link = (_tool("CXX", "g++") if link_cxx else _tool("CC", "cc")) + ["-shared", "-pthread", "-o", out] + objs
    cmds.append(link)
    ok, stamp, key = _up_to_date(out, [u[0] for u in units] + deps, cmds)
    if ok:
        return out
    for cmd in cmds:
        _run(cmd)
    with open(stamp, "w") as f:
        f.write(key)
    return out


def install_tools():
    """pybind11, nanobind and Cython into bench/build/<version>/tools (pip --target),
    from the wheel cache; the cache is filled from PyPI when it lacks one."""
    stamp = os.path.join(TOOLS, ".requirements")
    want = "\n".join(REQUIREMENTS)
    if os.path.exists(stamp) and open(stamp).read() == want:
        return
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    install = pip + ["install", "--upgrade", "--target", TOOLS, "--only-binary", ":all:",
                     "--no-index", "--find-links", WHEELS] + REQUIREMENTS
    os.makedirs(WHEELS, exist_ok=True)
    try:
        _run(install)
    except BuildError:
        # Not cached yet (or no wheel for this interpreter's tags): fetch them once.
        _run(pip + ["download", "--only-binary", ":all:", "-d", WHEELS] + REQUIREMENTS)
        _run(install)
    with open(stamp, "w") as f:
        f.write(want)


def _tools_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = TOOLS + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _tool_path(code):
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_tools_env())
    if p.returncode != 0:
        raise BuildError(p.stderr[-2000:])
    return p.stdout.strip()


def build_egbench():
    deps = [os.path.join(PEERS, "harness.h")] + _exitguard_headers()
    return _make(os.path.join(BUILD, "_egbench" + EXT),
                 [(os.path.join(HERE, "_egbench.c"), "c", OURS)], deps, link_cxx=False)


def build_pybind11():
    inc = _tool_path("import pybind11; print(pybind11.get_include())")
    deps = [os.path.join(PEERS, "harness.h")] + _exitguard_headers()
    return _make(os.path.join(BUILD, "_egb_pybind11" + EXT),
                 [(os.path.join(PEERS, "pybind11.cpp"), "c++", OURS + ["-isystem", inc])],
                 deps, link_cxx=True)


def build_nanobind():
    root = _tool_path("import nanobind, os; print(os.path.dirname(nanobind.__file__))")
    flags = ["-isystem", os.path.join(root, "include"),
             "-isystem", os.path.join(root, "ext", "robin_map", "include"), "-DNB_COMPACT_ASSERTIONS"]
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        flags.append("-DNB_FREE_THREADED")   # declares Py_mod_gil: the GIL stays off
    deps = [os.path.join(PEERS, "harness.h")] + _exitguard_headers()
    return _make(os.path.join(BUILD, "_egb_nanobind" + EXT),
                 [(os.path.join(root, "src", "nb_combined.cpp"), "c++", flags),
                  (os.path.join(PEERS, "nanobind.cpp"), "c++", OURS + flags)],
                 deps, link_cxx=True)


def build_cython():
    src = os.path.join(PEERS, "cython.pyx")
    gen = os.path.join(BUILD, "obj", "_egb_cython.c")
    os.makedirs(os.path.dirname(gen), exist_ok=True)
    if not os.path.exists(gen) or os.path.getmtime(gen) < os.path.getmtime(src):
        # The module is named by the output file: _egb_cython.
        work = os.path.join(BUILD, "obj", "_egb_cython.pyx")
        version = _tool_path("import Cython; print(Cython.__version__)")
        with open(src) as f, open(work, "w") as g:
            g.write(f.read().replace("@CYTHON_VERSION@", version))
        p = subprocess.run([sys.executable, "-m", "cython", "-3", "-I", PEERS, work, "-o", gen],
                           capture_output=True, text=True, env=_tools_env())
        if p.returncode != 0:
            raise BuildError("cython: " + p.stdout[-3000:] + p.stderr[-3000:])
    return _make(os.path.join(BUILD, "_egb_cython" + EXT),
                 [(gen, "c", ["-Wno-unused-function", "-Wno-unreachable-code"])],
                 [os.path.join(PEERS, "harness.h"), src], link_cxx=False)


def version_of(code):
    try:
        return _tool_path(code)
    except BuildError:
        return None


PEER_BUILDERS = {"pybind11": build_pybind11, "nanobind": build_nanobind, "cython": build_cython}


def build(peers=True):
    """Build everything for this interpreter; put bench/build/<version> on sys.path.
    Returns {peer: None (built) or the reason it is missing}."""
    os.makedirs(BUILD, exist_ok=True)
    missing = {}
    try:
        build_egbench()
    except BuildError as e:
        sys.stderr.write(str(e) + "\n")
        raise SystemExit("bench: building _egbench failed")
    if peers:
        try:
            install_tools()
        except BuildError as e:
            missing = {p: "pip could not install the peers: " + str(e).splitlines()[-1] for p in PEER_BUILDERS}
        else:
            # Two at a time: the machine has two cores.
            with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
                futs = {p: ex.submit(fn) for p, fn in PEER_BUILDERS.items()}
                for p, fut in futs.items():
                    try:
                        fut.result()
                        missing[p] = None
                    except BuildError as e:
                        text = str(e).strip().splitlines()
                        missing[p] = "build failed: " + (text[-1] if text else "?")
                        sys.stderr.write("bench: %s peer not built:\n%s\n" % (p, e))
    if BUILD not in sys.path:
        sys.path.insert(0, BUILD)
    return missing


if __name__ == "__main__":
    print(json.dumps(build(), indent=1))
