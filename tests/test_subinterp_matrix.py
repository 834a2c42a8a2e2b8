"""Subinterpreters that native threads attached to behave as if they had not (issue 12).

Each scenario runs 10 cycles in one fresh process -- flakiness is failure -- through the
Python-level interpreter modules of the running CPython: `_xxsubinterpreters` (3.9-3.12),
`_interpreters` (3.13+) and `concurrent.interpreters` (3.14+).  After native threads have
attached to a subinterpreter and called Python there, it can run code again, be destroyed,
or be ended implicitly by the main interpreter's exit; every callback ran in the right
interpreter, a stale handle is refused, and the exit status is the script's.
"""

import errno
import sys

import pytest

from conftest import assert_clean

ESHUTDOWN = errno.ESHUTDOWN

# The low-level module of this CPython, behind one shape: create() -> id,
# run(id, code) raises on failure, destroy(id).
LOW = """
try:
    import _interpreters as _low
except ImportError:
    import _xxsubinterpreters as _low
def create():
    return _low.create()
def run(iid, code):
    r = _low.run_string(iid, code)
    if r is not None:                     # 3.13+: a snapshot instead of raising
        raise RuntimeError(r.formatted)
def destroy(iid):
    _low.destroy(iid)
"""

# The same shape on concurrent.interpreters (3.14+).
HIGH = """
from concurrent import interpreters as _ci
_objs = {}
def create():
    i = _ci.create()
    _objs[i.id] = i
    return i.id
def run(iid, code):
    _objs[iid].exec(code)
def destroy(iid):
    _objs.pop(iid).close()
"""


def _has(module):
    try:
        __import__(module)
    except ImportError:
        return False
    return True


APIS = [
    pytest.param(LOW, id="low-level", marks=pytest.mark.skipif(
        not (_has("_interpreters") or _has("_xxsubinterpreters")), reason="no subinterpreter module")),
    pytest.param(HIGH, id="concurrent.interpreters", marks=pytest.mark.skipif(
        not _has("concurrent.interpreters"), reason="concurrent.interpreters is 3.14+")),
]

# Runs in the subinterpreter: exitguard and egtest there, and a handle on it.
SUB_SETUP = """
import exitguard, egtest
egtest.stash_set(egtest.interp_current())
"""

# Runs on a native thread attached to the subinterpreter (egtest.run_in_thread):
# which interpreter is this, and is exitguard's record the subinterpreter's?
PROBE = """
import exitguard, egtest
egtest.stash_set(1000 + exitguard.stats()["interpreter_id"])
"""


@pytest.mark.parametrize("api", APIS)
def test_run_again_and_destroy_after_native_attaches(run_py, api):
    """Native threads attach to a subinterpreter (raw ones, ten times each, and one that
    nests), then the subinterpreter runs code again and is destroyed; a native thread
    holding the old handle is refused afterwards.  10 cycles."""
    res = run_py(
        api
        + """
import json, exitguard, egtest
out = []
prev = None
for cycle in range(10):
    iid = create()
    run(iid, %(setup)r)
    h = egtest.stash_get()
    # The ended interpreter's record may serve this one now: its old handle
    # must still be refused, never attach here.
    old_refused = egtest.nested_in_thread(lambda: "must not run", prev)[0] if prev else None
    if prev:
        egtest.interp_close(prev)
    seen = []
    for i in range(10):
        rc = egtest.run_in_thread(h, %(probe)r)
        seen.append((rc, egtest.stash_get()))
    nested = egtest.nested_in_thread(lambda: "called", h)
    run(iid, "x = 1 + 1")                   # the interpreter runs code again
    run(iid, "import exitguard, egtest; s = exitguard.stats(); "
             "egtest.stash_set((s['interpreter_id'] + 1000) * 1000 + s['record_generation'])")
    v = egtest.stash_get()
    sub_id, gen = divmod(v, 1000)
    sub_id -= 1000
    destroy(iid)
    stale = egtest.nested_in_thread(lambda: "must not run", h)
    prev = h
    out.append({"seen": seen, "nested": nested[:2], "sub_id": sub_id, "stale": stale[0],
                "old_refused": old_refused, "gen": gen})
egtest.interp_close(prev)
print(json.dumps({"cycles": out, "main_id": exitguard.stats()["interpreter_id"]}))
""" % {"setup": SUB_SETUP, "probe": PROBE},
        timeout=120,
    )
    assert_clean(res)
    d = res.data
    assert len(d["cycles"]) == 10
    for c in d["cycles"]:
        assert all(rc == [0, 0] for rc, _ in c["seen"]), c
        assert all(v - 1000 == c["sub_id"] for _, v in c["seen"]), c   # the right interpreter
        assert c["sub_id"] != d["main_id"]
        assert c["nested"] == [0, 0]
        assert c["stale"] == -ESHUTDOWN, c
        assert c["old_refused"] in (None, -ESHUTDOWN), c
    # The records of ended interpreters were reused, not piled up.
    assert max(c["gen"] for c in d["cycles"]) >= 5, d["cycles"]


@pytest.mark.parametrize("api", APIS)
def test_destroy_while_registered_threads_attach(run_py, api):
    """Registered native threads attach to a subinterpreter in a loop while it is
    destroyed: its phase 1 stops and joins them, its phase 2 runs before CPython's "not
    the last thread" check.  3.9-3.11's _xxsubinterpreters refuses to destroy an
    interpreter while another thread state exists at that instant, before any of that
    can run: there the phases are run first (tests/test_subinterp_capi.py covers the
    Py_EndInterpreter way on those versions)."""
    res = run_py(
        api
        + """
import json, sys, exitguard, egtest
for cycle in range(10):
    iid = create()
    code = '''
import exitguard, egtest, time
calls = []
h = egtest.interp_current()
egtest.registered_attachers(3, lambda: calls.append(1), 200, False, "sub-attacher", h)
while len(calls) < 30:
    time.sleep(0.001)
'''
    if sys.version_info < (3, 12):
        code += "import exitguard; exitguard._core._phase2()"
    run(iid, code)
    destroy(iid)
counts = egtest.attach_counts()
print(json.dumps(dict(counts, main_state=exitguard.state())))
""",
        timeout=120,
    )
    assert_clean(res)
    d = res.data
    assert d["stopped_cleanly"] == 30, res.describe()
    assert d["ok_after_refused"] == 0
    assert d["main_state"] == "running"


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("ending,code", [("pass", 0), ("sys.exit(5)", 5)])
def test_implicit_end_at_exit_with_attached_threads(run_py, api, ending, code):
    """Subinterpreters that native threads are attaching to are never destroyed: the
    main interpreter's exit ends them (3.12+) or leaves them (3.9-3.11).  No abort, no
    hang, no thread killed inside CPython, and the script's exit status survives.
    Each process does it with 3 subinterpreters; 10 processes."""
    for run in range(10):
        res = run_py(
            api
            + """
import sys, time, exitguard, egtest
egtest.report_at_exit()
subs = []         # kept: on 3.9-3.12 dropping an interpreter's last ID object ends it
for i in range(3):
    iid = create()
    subs.append(iid)
    run(iid, '''
import exitguard, egtest, time
calls = []
egtest.registered_attachers(2, lambda: calls.append(1), 200, False, "sub-attacher", egtest.interp_current())
raws = egtest.raw_attachers(1, lambda: calls.append(1), 200, egtest.interp_current())
while len(calls) < 20:
    time.sleep(0.001)
''')
%s
""" % ending,
            timeout=30,
        )
        assert_clean(res, code)
        assert res.data["ll_in_ensure"] == 0, res.describe()
        assert res.elapsed < 15, res.describe()
