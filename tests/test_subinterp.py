"""Subinterpreters: each has its own registry, queue, gate and stop phases."""

import sys

import pytest

from conftest import assert_clean

INTERPS = """
try:
    import _interpreters as interps          # 3.13+
except ImportError:
    import _xxsubinterpreters as interps     # 3.9-3.12
"""


def _skip_without_subinterpreters():
    try:
        import _interpreters  # noqa: F401
    except ImportError:
        try:
            import _xxsubinterpreters  # noqa: F401
        except ImportError:
            pytest.skip("this Python has neither _interpreters nor _xxsubinterpreters")


def test_native_thread_attaches_to_a_given_subinterpreter(run_py, tmp_path):
    """A native thread attaches to the subinterpreter its handle names; decrefs made there apply there."""
    _skip_without_subinterpreters()
    out = tmp_path / "out.txt"
    res = run_py(
        INTERPS
        + """
import exitguard, egtest, json
iid = interps.create()
interps.run_string(iid, '''
import exitguard, egtest
egtest.stash_set(egtest.interp_current())
''')
sub = egtest.stash_get()
# From the main interpreter: a raw thread attaches to exactly the subinterpreter.
rc = egtest.run_in_thread(sub, '''
import exitguard
with open(%(out)r, "w") as f:
    f.write(str(exitguard.stats()["interpreter_id"]))
''')
with open(%(out)r) as f:
    seen_id = int(f.read())
main_id = exitguard.stats()["interpreter_id"]
# Decref the subinterpreter's own objects from native threads: queued to it,
# applied there (by its flush), not in main.
interps.run_string(iid, '''
import exitguard, egtest
freed = []
class T:
    def __del__(self): freed.append(1)
hs = [egtest.ref_new(T()) for _ in range(1000)]
egtest.release_in_threads(hs, 2)
n = exitguard.flush()
assert len(freed) == 1000, (len(freed), n)
assert exitguard.stats()["decref_applied"] == 1000
''')
interps.destroy(iid)
print(json.dumps({"rc": rc, "seen": seen_id, "main": main_id,
                  "main_applied": exitguard.stats()["decref_applied"]}))
"""
        % {"out": str(out)},
        timeout=60,
    )
    assert_clean(res)
    d = res.data
    assert d["rc"] == [0, 0]
    assert d["seen"] != d["main"] and d["main"] == 0
    assert d["main_applied"] == 0


def test_ending_subinterpreter_with_native_threads(run_py):
    """Registered threads attaching to a subinterpreter are stopped by its phase 1 and
    their thread states deleted in its phase 2, before Py_EndInterpreter's check for
    other threads ("not the last thread")."""
    _skip_without_subinterpreters()
    res = run_py(
        INTERPS
        + """
import exitguard, egtest, json, sys
iid = interps.create()
code = '''
import exitguard, egtest, time
calls = []
h = egtest.interp_current()
egtest.registered_attachers(3, lambda: calls.append(1), 500, False, "sub-attacher", h)
while len(calls) < 30:
    time.sleep(0.001)
'''
if sys.version_info < (3, 12):
    # 3.9-3.11's _xxsubinterpreters refuses run_string() and destroy() for an
    # interpreter with more than one thread state, before Py_EndInterpreter
    # could run anything; so run the phases an embedder's Py_EndInterpreter
    # runs through atexit (phase 2 runs phase 1 first), in the same call.
    code += "import atexit; atexit._run_exitfuncs()"
interps.run_string(iid, code)
interps.destroy(iid)        # Py_EndInterpreter: the phases run (3.12+), then its checks
counts = egtest.attach_counts()
print(json.dumps(dict(counts, main_state=exitguard.state())))
""",
        timeout=60,
    )
    assert_clean(res)
    d = res.data
    assert d["stopped_cleanly"] == 3
    assert d["ok_after_refused"] == 0
    assert d["main_state"] == "running"
