"""The house rules of src/, checked on the source itself (issue 14; ../shared/STYLE.md, README "Engineering rules").

Each rule has a checker that takes text and returns its findings, a test that runs it over
src/, and a line in test_each_checker_finds_what_it_is_for that plants a violation to show
the checker is not blind.  The layer table the call-graph test reads is docs/design.md's
"Files and layers".
"""

import os
import re
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")
COMPAT = "base/compat.h"        # the one header allowed to compare CPython versions
MAX_LINES = 600


def src_files(exts=(".c", ".h")):
    """Every C file of src/, as a path relative to src/ ("door.c", "py/module.c")."""
    out = []
    for d, _, names in os.walk(SRC):
        for n in names:
            if n.endswith(exts):
                out.append(os.path.relpath(os.path.join(d, n), SRC))
    return sorted(out)


def read(rel):
    with open(os.path.join(SRC, rel)) as f:
        return f.read()


def strip_comments(text):
    """The text with comments and string literals blanked (line numbers kept)."""
    def blank(m):
        return re.sub(r"[^\n]", " ", m.group(0))
    return re.sub(r'/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"', blank, text, flags=re.S)


def functions(text):
    """(name, first line, comment above it, body) for each function defined at file scope.

    House style puts the return type on its own line and the name at column 0:
        static int
        eg__foo(int x)
        {
    """
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Za-z_]\w*)\s*\(", line)
        if not m or i == 0 or line.rstrip().endswith(";"):
            continue
        j = i
        while j < len(lines) and lines[j] != "{":
            if lines[j].rstrip().endswith(";"):
                break
            j += 1
        if j >= len(lines) or lines[j] != "{":
            continue
        k = j
        while k < len(lines) and lines[k] != "}":
            k += 1
        # The comment right above the return type (or above the name).
        c = i - 1
        while c >= 0 and lines[c].strip() and not lines[c].rstrip().endswith("*/"):
            c -= 1
        comment = ""
        if c >= 0 and lines[c].rstrip().endswith("*/"):
            s = c
            while s >= 0 and "/*" not in lines[s]:
                s -= 1
            comment = "\n".join(lines[s:c + 1])
        out.append((m.group(1), i + 1, comment, "\n".join(lines[j:k + 1])))
    return out


# ---- Checkers: each takes (name, text) and returns a list of findings -------------------

def check_version_checks(name, text):
    """CPython version comparisons live in the compat header only."""
    if name == COMPAT:
        return []
    code = strip_comments(text)
    return ["%s:%d: PY_VERSION_HEX outside %s" % (name, code[:m.start()].count("\n") + 1, COMPAT)
            for m in re.finditer(r"\bPY_VERSION_HEX\b", code)]


# A call into CPython: Py*/_Py* names used as functions.  Py_UNUSED and friends are
# declaration helpers, not calls.
_PY_CALL = re.compile(r"\b(_?Py[A-Za-z0-9_]*)\s*\(")
_NOT_CALLS = {"Py_UNUSED", "Py_ARRAY_LENGTH", "Py_MIN", "Py_MAX"}
_FILE_BANNER = re.compile(r"CAUTION: no thread state is assumed")
_NO_TSTATE = re.compile(r"CAUTION: no thread state")


def check_no_tstate_banners(name, text):
    """Code under a "CAUTION: no thread state" banner calls no Python API.

    A banner covers the whole file ("no thread state is assumed ..." in the file's opening
    comment), a section (a "/* ---- ... (CAUTION: no thread state ...) ---- */" line, up to
    the next "/* ----"), or one function (in the comment right above it).
    """
    findings = []
    head = text.split("*/", 1)[0]
    whole_file = bool(_FILE_BANNER.search(head))
    sections = []               # (first line, last line) of banner sections
    lines = text.split("\n")
    start = None
    for i, line in enumerate(lines):
        if line.startswith("/* ----"):
            if start is not None:
                sections.append((start, i))
                start = None
            if _NO_TSTATE.search(line):
                start = i
    if start is not None:
        sections.append((start, len(lines)))
    for fname, first, comment, body in functions(text):
        covered = (whole_file or _NO_TSTATE.search(comment)
                   or any(a <= first - 1 < b for a, b in sections))
        if not covered:
            continue
        for m in _PY_CALL.finditer(strip_comments(body)):
            if m.group(1) not in _NOT_CALLS:
                findings.append("%s:%d: %s() calls %s under a no-thread-state banner"
                                % (name, first, fname, m.group(1)))
    return findings


_WAIT_PAIRS = [("Py_BEGIN_ALLOW_THREADS", "Py_END_ALLOW_THREADS"),
               ("Py_UNBLOCK_THREADS", "Py_BLOCK_THREADS"),
               ("EG__BEGIN_WAIT", "EG__END_WAIT")]


def check_allow_threads_paired(name, text):
    """Every function that releases the GIL with a macro takes it back in the same function."""
    findings = []
    for fname, first, _, body in functions(text):
        code = strip_comments(body)
        for begin, end in _WAIT_PAIRS:
            nb = len(re.findall(r"\b%s\b" % begin, code))
            ne = len(re.findall(r"\b%s\b" % end, code))
            if nb != ne:
                findings.append("%s:%d: %s(): %d %s, %d %s" % (name, first, fname, nb, begin, ne, end))
    return findings


_IMPLICIT_ATOMIC = re.compile(
    r"\batomic_(load|store|exchange|fetch_add|fetch_sub|fetch_or|fetch_and|fetch_xor"
    r"|compare_exchange_strong|compare_exchange_weak|flag_test_and_set|flag_clear)\s*\(")


def check_explicit_atomics(name, text):
    """Every atomic operation names its memory order (atomic_*_explicit)."""
    code = strip_comments(text)
    return ["%s:%d: implicit atomic_%s" % (name, code[:m.start()].count("\n") + 1, m.group(1))
            for m in _IMPLICIT_ATOMIC.finditer(code)]


def check_private_macro_prefix(name, text):
    """Macros and enumerators defined in src/ are private: EG__, never the public EG_."""
    code = strip_comments(text)
    findings = ["%s:%d: #define %s (private: EG__)" % (name, code[:m.start()].count("\n") + 1, m.group(1))
                for m in re.finditer(r"^\s*#\s*define\s+(EG_(?!_)\w*)", code, flags=re.M)]
    for m in re.finditer(r"\benum\b[^{;]*\{([^}]*)\}", code):
        for e in re.finditer(r"\b(EG_(?!_)\w*)\s*(?:=|,|$)", m.group(1)):
            findings.append("%s:%d: enumerator %s (private: EG__)"
                            % (name, code[:m.start()].count("\n") + 1, e.group(1)))
    return findings


def check_length(name, text):
    """No file of src/ is longer than MAX_LINES lines."""
    n = text.count("\n")
    return ["%s: %d lines (at most %d)" % (name, n, MAX_LINES)] if n > MAX_LINES else []


CHECKS = [check_version_checks, check_no_tstate_banners, check_allow_threads_paired,
          check_explicit_atomics, check_private_macro_prefix, check_length]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__[len("check_"):])
def test_src_keeps_the_rule(check):
    """src/ has no finding for this rule (the rule is the checker's docstring)."""
    findings = []
    for rel in src_files():
        findings += check(rel, read(rel))
    assert not findings, "%s:\n  %s" % (check.__doc__, "\n  ".join(findings))


def test_each_checker_finds_what_it_is_for():
    """Each checker reports a planted violation (none of them is blind)."""
    planted = {
        check_version_checks: "#if PY_VERSION_HEX >= 0x030C0000\n#endif\n",
        check_no_tstate_banners: ("/* CAUTION: no thread state. */\nstatic void\n"
                                  "eg__f(PyObject *o)\n{\n    Py_DECREF(o);\n}\n"),
        check_allow_threads_paired: ("static void\neg__f(void)\n{\n"
                                     "    Py_BEGIN_ALLOW_THREADS\n    sleep(1);\n}\n"),
        check_explicit_atomics: "static void\neg__f(void)\n{\n    atomic_load(&x);\n}\n",
        check_private_macro_prefix: "#define EG_SECRET 1\nenum { EG_ONE = 1 };\n",
        check_length: "\n" * (MAX_LINES + 1),
    }
    assert set(planted) == set(CHECKS)
    for check, text in planted.items():
        assert check("planted.c", text), check.__name__
    # ... and stays quiet on the same shapes done right.
    assert not check_no_tstate_banners("ok.c", "/* CAUTION: no thread state. */\nstatic void\n"
                                       "eg__f(void *p)\n{\n    free(p);\n}\n")
    assert not check_explicit_atomics("ok.c", "atomic_load_explicit(&x, memory_order_relaxed);\n")
    assert not check_private_macro_prefix("ok.c", "#define EG__SECRET 1\n#ifdef EG_DEBUG\n#endif\n")


# ---- Layers: the call graph of src/, from the compiled objects -------------------------

def layer_table():
    """docs/design.md's "Files and layers" table: {path under src/: (rank, layer name)}."""
    with open(os.path.join(ROOT, "docs", "design.md")) as f:
        text = f.read()
    m = re.search(r"^## Files and layers\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert m, 'docs/design.md has no "## Files and layers" section'
    table = {}
    for row in re.finditer(r"^\|\s*(\d+)\s+(\w[\w ]*?)\s*\|\s*`([^`]+)`\s*\|", m.group(1), flags=re.M):
        rank, layer, paths = int(row.group(1)), row.group(2), row.group(3)
        for p in paths.split(","):
            table[p.strip()] = (rank, layer)
    return table


def test_design_lists_every_file_with_its_layer():
    """docs/design.md's layer table names every file of src/, and only files that exist."""
    table = layer_table()
    files = set(src_files())
    assert not files - set(table), "not in docs/design.md's layer table: %s" % sorted(files - set(table))
    assert not set(table) - files, "in the layer table but not in src/: %s" % sorted(set(table) - files)


def _compile_and_read_symbols(tmp_path):
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler: the call-graph rule cannot be checked")
    inc = sysconfig.get_paths()["include"]
    defined, undefined = {}, {}
    for rel in src_files((".c",)):
        obj = tmp_path / (rel.replace("/", "_") + ".o")
        # -Werror=implicit-function-declaration: a call whose header is not
        # included would still link, and its edge would go unchecked below.
        subprocess.run([cc, "-std=c11", "-O0", "-DEG_BUILDING=1", "-Werror=implicit-function-declaration", "-I", os.path.join(ROOT, "include"),
                        "-I", SRC, "-I", inc, "-c", os.path.join(SRC, rel), "-o", str(obj)],
                       check=True, capture_output=True, text=True)
        nm = subprocess.run(["nm", str(obj)], check=True, capture_output=True, text=True).stdout
        undefined[rel] = set()
        for line in nm.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "TDBRC":
                defined[parts[2]] = rel
            elif len(parts) == 2 and parts[0] == "U":
                undefined[rel].add(parts[1])
    edges = {}
    for rel, names in undefined.items():
        for n in names:
            if n in defined and defined[n] != rel:
                edges.setdefault((rel, defined[n]), set()).add(n)
    return edges


def _circles(edges):
    """Strongly connected components with more than one file (Tarjan)."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_calls_go_down_the_layers(tmp_path):
    """No circle of files that call each other, and at most one call from a lower layer up.

    Calls are read from the objects (nm), so a call through an inline function of a header
    counts for the file that includes it.
    """
    edges = _compile_and_read_symbols(tmp_path)
    assert edges, "no call between files found: the reader is broken"
    assert not _circles(edges), "call circles: %s" % _circles(edges)
    table = layer_table()
    up = ["%s (%s) -> %s (%s): %s" % (a, table[a][1], b, table[b][1], ", ".join(sorted(names)))
          for (a, b), names in sorted(edges.items())
          if a in table and b in table and table[a][0] < table[b][0]]
    assert len(up) <= 1, "calls from a lower layer up:\n  " + "\n  ".join(up)


def header_of(rel):
    """The header that declares rel's functions: its own (stem.h), its concept's
    (decref_drain.c -> decref.h), the Python surface's (py/py.h), or None (event.c
    implements public API only: exitguard.h declares it)."""
    if rel.startswith("py/"):
        return "py/py.h"
    stem = rel[:-2]
    for cand in (stem + ".h", stem.rsplit("_", 1)[0] + ".h"):
        if os.path.exists(os.path.join(SRC, cand)):
            return cand
    return None


def test_includes_name_what_a_file_calls(tmp_path):
    """A file includes the header of every file it calls: its #include lines say what it depends on."""
    edges = _compile_and_read_symbols(tmp_path)
    missing = []
    for (a, b), names in sorted(edges.items()):
        hb = header_of(b)
        if hb is None or hb == header_of(a):
            continue
        if not re.search(r'^#include "%s"' % re.escape(hb), read(a), flags=re.M):
            missing.append("%s calls %s (%s) without #include \"%s\"" % (a, b, ", ".join(sorted(names)), hb))
    assert not missing, "\n  ".join(["missing includes:"] + missing)


def test_circle_finder_finds_a_circle():
    """The circle check is not blind: a planted two-file loop is found."""
    assert _circles({("a.c", "b.c"): {"f"}, ("b.c", "a.c"): {"g"}, ("b.c", "c.c"): {"h"}}) == [["a.c", "b.c"]]
    assert _circles({("a.c", "b.c"): {"f"}, ("b.c", "c.c"): {"h"}}) == []
