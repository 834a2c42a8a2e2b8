"""Run a command under valgrind memcheck and say which shared objects leak or misbehave.

    python -m exitguard.leakcheck [--keep-xml FILE] [--valgrind-arg ARG]... -- COMMAND ...

COMMAND runs with PYTHONMALLOC=malloc (so valgrind sees every allocation), exitguard's
valgrind suppressions (exitguard.valgrind_suppressions()) and EXITGUARD_LEAKS=warn.  The
summary groups definite leaks and invalid memory accesses by the shared object at the top
of each stack -- your extension modules first, CPython's own last -- and the exit status
is non-zero when any of them come from outside CPython.  Free-threaded builds cannot run
with PYTHONMALLOC=malloc (they need mimalloc): leakcheck refuses them with status 2.
"""

import argparse
import collections
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import xml.etree.ElementTree as ET

from . import valgrind_suppressions

# Frames that are never "the culprit": the allocator and valgrind's own preload.
_SKIP_FN = {"malloc", "calloc", "realloc", "free", "memalign", "posix_memalign", "aligned_alloc",
            "strdup", "operator new(unsigned long)", "operator new[](unsigned long)"}


def _is_cpython(obj):
    """CPython's own code: the interpreter binary, libpython, stdlib extension modules."""
    if not obj:
        return True
    base = os.path.basename(obj)
    if base.startswith(("libpython", "python")) and ".so" in base or base.startswith("python3"):
        return True
    dest = sysconfig.get_config_var("DESTSHARED") or ""
    return bool(dest) and os.path.realpath(obj).startswith(os.path.realpath(dest))


def _is_system(obj):
    base = os.path.basename(obj or "")
    return base.startswith(("vgpreload", "libc.so", "libc-", "ld-linux", "libstdc++", "libgcc_s", "libm.so"))


def _culprit(error):
    frames = error.findall("./stack/frame")
    for f in frames:
        obj = f.findtext("obj") or ""
        fn = f.findtext("fn") or ""
        if fn in _SKIP_FN or _is_system(obj):
            continue
        return obj or "?", fn, f.findtext("file"), f.findtext("line")
    f = frames[0] if frames else None
    return ((f.findtext("obj") if f is not None else "?") or "?", "", None, None)


def parse(xml_path):
    """Return {object: {"leaks": n, "bytes": b, "invalid": m, "examples": [...]}}."""
    tree = ET.parse(xml_path)
    groups = collections.defaultdict(lambda: {"leaks": 0, "bytes": 0, "invalid": 0, "examples": []})
    for error in tree.getroot().iter("error"):
        kind = error.findtext("kind") or ""
        obj, fn, file, line = _culprit(error)
        g = groups[obj]
        if kind == "Leak_DefinitelyLost":
            g["leaks"] += 1
            g["bytes"] += int(error.findtext("./xwhat/leakedbytes") or 0)
        elif kind.startswith("Leak_"):
            continue                     # possibly lost / still reachable: not errors here
        else:
            g["invalid"] += 1
        if len(g["examples"]) < 3:
            where = "%s (%s:%s)" % (fn, file, line) if file else fn
            g["examples"].append("%s in %s" % (kind, where or "?"))
    return groups


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m exitguard.leakcheck", description=__doc__.splitlines()[0])
    ap.add_argument("--keep-xml", metavar="FILE", help="keep valgrind's XML report here")
    ap.add_argument("--valgrind-arg", action="append", default=[], metavar="ARG", help="extra valgrind argument")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no COMMAND given (put it after --)")
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        print("leakcheck: free-threaded CPython cannot run with PYTHONMALLOC=malloc (it needs "
              "mimalloc), so valgrind cannot see its allocations; use a GIL build", file=sys.stderr)
        return 2
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("leakcheck: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    fd, xml_path = tempfile.mkstemp(prefix="leakcheck-", suffix=".xml")
    os.close(fd)
    env = dict(os.environ, PYTHONMALLOC="malloc", EXITGUARD_LEAKS="warn")
    cmd = [valgrind, "--tool=memcheck", "--leak-check=full", "--show-leak-kinds=definite",
           "--errors-for-leak-kinds=definite", "--num-callers=30",
           "--suppressions=" + valgrind_suppressions(), "--xml=yes", "--xml-file=" + xml_path] + args.valgrind_arg + command
    proc = subprocess.run(cmd, env=env)
    try:
        groups = parse(xml_path)
    finally:
        if args.keep_xml:
            shutil.move(xml_path, args.keep_xml)
        else:
            os.unlink(xml_path)
    order = sorted(groups.items(), key=lambda kv: (_is_cpython(kv[0]), kv[0]))
    print("leakcheck: %s exited with %s" % (" ".join(command), proc.returncode))
    bad = False
    if not any(g["leaks"] or g["invalid"] for g in groups.values()):
        print("leakcheck: no definite leaks, no invalid accesses")
    for obj, g in order:
        if not (g["leaks"] or g["invalid"]):
            continue
        mine = not _is_cpython(obj)
        bad = bad or mine
        print("  %-60s %s%d definite leak(s) (%d bytes), %d invalid access(es)"
              % (obj, "" if mine else "[CPython] ", g["leaks"], g["bytes"], g["invalid"]))
        for e in g["examples"]:
            print("      " + e)
    if bad:
        print("leakcheck: FAILED: leaks or invalid accesses outside CPython")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
