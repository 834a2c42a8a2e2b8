"""Run a command under valgrind memcheck and say which shared objects leak or misbehave.

    python -m exitguard.leakcheck [--keep-xml FILE] [--valgrind-arg ARG]... -- COMMAND ...

COMMAND runs with PYTHONMALLOC=malloc (so valgrind sees every allocation), exitguard's
valgrind suppressions (exitguard.valgrind_suppressions()) and EXITGUARD_LEAKS=warn.  The
summary groups definite leaks by the first shared object outside CPython in the
allocation's stack (an object your extension created through the C API and never
DECREF'd is yours, though CPython's allocator frames are on top) and invalid memory
accesses by the object that made them -- your extension modules first, CPython's own
last, each example with your frames before CPython's.  Exit status: 1 when any leak or
invalid access comes from outside CPython, 3 when COMMAND itself failed, 2 when
valgrind cannot run, else 0.  Free-threaded builds cannot run with PYTHONMALLOC=malloc
(they need mimalloc): leakcheck refuses them with status 2.
"""

import argparse
import collections
import os
import re
import shutil
import signal
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


def _frame(f):
    return {"obj": f.findtext("obj") or "", "fn": f.findtext("fn") or "", "file": f.findtext("file"),
            "line": f.findtext("line")}


def _where(fr):
    name = fr["fn"] or "???"
    return "%s (%s:%s)" % (name, fr["file"], fr["line"]) if fr["file"] else name


# CPython functions below which an allocation is CPython's to free, even when code
# outside CPython called them: they keep what they create.  Interning (3.12 makes
# interned strings immortal and never frees them), the *String helpers that intern the
# key they create, imports (modules, code objects and their constants belong to the
# import system), and bytecode evaluation (objects Python code made; a leak of one --
# a callback's result the extension never DECREF'd, say -- cannot be told apart from
# CPython's own, so leakcheck does not blame the extension for it).
_CPYTHON_KEEPS = {
    "PyUnicode_InternFromString", "PyUnicode_InternInPlace", "PyUnicode_InternImmortal",
    "_PyUnicode_InternInPlace", "_PyUnicode_InternImmortal", "_PyUnicode_InternMortal", "intern_common",
    "PyDict_SetItemString", "PyObject_SetAttrString", "PyDict_GetItemString",
    "import_find_and_load", "PyImport_ImportModuleLevelObject", "PyImport_Import", "PyImport_ImportModule",
    "_PyEval_EvalFrameDefault", "_PyEval_EvalFrame", "PyEval_EvalCode", "_PyEval_Vector",
}


def _culprit(kind, frames):
    """The index of the frame to blame in `frames` (innermost first), or None.

    Allocator and libc frames never are.  A leak belongs to the first frame outside
    CPython: an object created through the C API (PyBytes_FromStringAndSize, ...) and
    never DECREF'd has CPython's frames on top and the extension's below them -- unless
    on the way there CPython ran a function that keeps what it creates
    (_CPYTHON_KEEPS): then it is CPython's.  An invalid access belongs to the frame that
    made it, the innermost one: CPython code that misbehaves while it runs Python code
    for an extension is CPython's problem.
    """
    idx = [i for i, fr in enumerate(frames) if fr["fn"] not in _SKIP_FN and not _is_system(fr["obj"])]
    if not idx:
        return None
    if kind.startswith("Leak_"):
        for i in idx:
            if not _is_cpython(frames[i]["obj"]):
                return i
            if frames[i]["fn"] in _CPYTHON_KEEPS:
                break
    return idx[0]


def _example(error, kind, frames, culprit):
    """A few lines for one error: what, then the culprit's frames first, then CPython's."""
    what = error.findtext("./xwhat/text") or error.findtext("what") or kind
    lines = ["%s: %s" % (kind, re.sub(r" in loss record \d+ of \d+$", "", what))]
    if culprit is None:
        return lines
    mine = [culprit]                    # the culprit and its callers outside CPython
    for i in range(culprit + 1, min(len(frames), culprit + 4)):
        if _is_cpython(frames[i]["obj"]) or _is_system(frames[i]["obj"]):
            break
        mine.append(i)
    lines += ["  > " + _where(frames[i]) for i in mine]
    via = [_where(fr) for fr in frames[:culprit] if fr["fn"] not in _SKIP_FN][::-1]
    if via:
        lines.append("    via " + " -> ".join(via[:4]) + (" -> ..." if len(via) > 4 else ""))
    if _is_cpython(frames[culprit]["obj"]):
        # CPython's, but say when code outside CPython was on the way there.
        outer = [fr for fr in frames[culprit:] if not _is_cpython(fr["obj"]) and not _is_system(fr["obj"])]
        if outer:
            lines.append("    reached from %s in %s" % (_where(outer[0]), os.path.basename(outer[0]["obj"])))
    return lines


def parse(xml_path):
    """Return {object: {"leaks": n, "bytes": b, "invalid": m, "examples": [[line, ...], ...]}}."""
    tree = ET.parse(xml_path)
    groups = collections.defaultdict(lambda: {"leaks": 0, "bytes": 0, "invalid": 0, "examples": []})
    for error in tree.getroot().iter("error"):
        kind = error.findtext("kind") or ""
        if kind.startswith("Leak_") and kind != "Leak_DefinitelyLost":
            continue                     # possibly lost / still reachable: not errors here
        frames = [_frame(f) for f in error.findall("./stack/frame")]
        culprit = _culprit(kind, frames)
        obj = (frames[culprit]["obj"] if culprit is not None else frames[0]["obj"] if frames else "") or "?"
        g = groups[obj]
        if kind == "Leak_DefinitelyLost":
            g["leaks"] += 1
            g["bytes"] += int(error.findtext("./xwhat/leakedbytes") or 0)
        else:
            g["invalid"] += 1
        if len(g["examples"]) < 3:
            g["examples"].append(_example(error, kind, frames, culprit))
    return groups


def _status(returncode):
    if returncode is not None and returncode < 0:
        try:
            return "killed by %s" % signal.Signals(-returncode).name
        except ValueError:
            return "killed by signal %d" % -returncode
    return "exited with status %s" % returncode


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
    except (ET.ParseError, OSError) as e:
        print("leakcheck: valgrind wrote no readable report (%s); its exit status was %s" % (e, proc.returncode),
              file=sys.stderr)
        return 2
    finally:
        if args.keep_xml:
            shutil.move(xml_path, args.keep_xml)
        else:
            os.unlink(xml_path)
    order = sorted(groups.items(), key=lambda kv: (_is_cpython(kv[0]), kv[0]))
    print("leakcheck: %s %s" % (" ".join(command), _status(proc.returncode)))
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
        for example in g["examples"]:
            for line in example:
                print("      " + line)
    if bad:
        print("leakcheck: FAILED: leaks or invalid accesses outside CPython")
        return 1
    if proc.returncode != 0:
        # A command that failed checked nothing worth trusting (and may have died before
        # the code under test ran): never a pass.
        print("leakcheck: FAILED: the command %s" % _status(proc.returncode))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
