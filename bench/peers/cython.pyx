# cython: language_level=3, freethreading_compatible=True
"""The Cython 3.3 peer of exitguard's benchmarks (module _egb_cython, built by
bench/build.py with Cython from PyPI).

What Cython users write when a native thread calls back into Python, measured
from a native pthread (bench/peers/harness.h):

  attach/kept      `with gil:` around each callback in a nogil function, on a
                   thread that keeps its thread state: an outer `with gil:` and
                   a `with nogil:` inside it for the thread's life, so each
                   inner `with gil:` (PyGILState_Ensure underneath, Cython's
                   cached fast path before 3.12) only attaches
  attach/default   the same `with gil:` on a thread with nothing kept: a new
                   thread state each time
  drop/kept        dropping a held reference: `with gil:` and a decref
  drop/default     the same with a new thread state each time

Cython has no deferred decref and no shutdown protection; exitguard's
equivalents are measured in _egbench.  run(variant, n) returns (CPU ns, wall
ns) per operation.
"""

cdef extern from "Python.h":
    ctypedef struct PyObject
    Py_ssize_t Py_REFCNT(object o)
    void Py_INCREF(object o)

cdef extern from "harness.h" nogil:
    ctypedef struct egb_job:
        void (*body)(egb_job *j) noexcept nogil
        PyObject *obj
        long n
        long failed
        double ns
        double wall_ns
    int EGB_EXACT_REFCNT
    double egb_now_ns()
    double egb_cpu_ns()
    void egb_touch(PyObject *o)
    void egb_decref(PyObject *o)

cdef extern from "harness.h":
    int egb_run_native(egb_job *j) except -1

VARIANTS = ["attach/kept", "attach/default", "drop/kept", "drop/default"]
VERSION = "@CYTHON_VERSION@"       # filled in by bench/build.py

# ---- Timed loops (callgrind toggles on egb_loop_*) ----------------------

cdef void egb_loop_cy_attach(egb_job *j) noexcept nogil:
    cdef long i
    for i in range(j.n):
        with gil:
            egb_touch(j.obj)

cdef void egb_loop_cy_drop(egb_job *j) noexcept nogil:
    cdef long i
    for i in range(j.n):
        with gil:
            egb_decref(j.obj)

# ---- Bodies (on the native thread) ---------------------------------------

cdef void timed(egb_job *j, bint drop) noexcept nogil:
    # CPU and wall time per operation, as harness.h's egb_time.
    cdef double w0, c0, c1
    w0 = egb_now_ns()
    c0 = egb_cpu_ns()
    if drop:
        egb_loop_cy_drop(j)
    else:
        egb_loop_cy_attach(j)
    c1 = egb_cpu_ns()
    j.wall_ns = (egb_now_ns() - w0) / j.n
    j.ns = (c1 - c0) / j.n

cdef void kept(egb_job *j, bint drop) noexcept nogil:
    # The outer `with gil:` creates this thread's state; `with nogil:`
    # detaches it and the loop's `with gil:` blocks reuse it.
    with gil:
        with nogil:
            timed(j, drop)

cdef void body_attach_kept(egb_job *j) noexcept nogil:
    kept(j, False)

cdef void body_attach_default(egb_job *j) noexcept nogil:
    timed(j, False)

cdef void body_drop_kept(egb_job *j) noexcept nogil:
    kept(j, True)

cdef void body_drop_default(egb_job *j) noexcept nogil:
    timed(j, True)


def run(str variant, long n):
    """One measurement of `variant` over n operations: (CPU ns, wall ns) per operation."""
    cdef egb_job j
    cdef long i
    cdef bint drop = variant.startswith("drop/")
    if n < 1:
        raise ValueError("n < 1")
    if variant == "attach/kept":
        j.body = body_attach_kept
    elif variant == "attach/default":
        j.body = body_attach_default
    elif variant == "drop/kept":
        j.body = body_drop_kept
    elif variant == "drop/default":
        j.body = body_drop_default
    else:
        raise ValueError("unknown variant " + variant)
    target = []
    j.obj = <PyObject *>target
    j.n = n
    if drop:
        for i in range(n):
            Py_INCREF(target)          # one reference per decref to come
    before = Py_REFCNT(target)
    egb_run_native(&j)
    if EGB_EXACT_REFCNT and Py_REFCNT(target) != before - (n if drop else 0):
        raise AssertionError("reference count off after " + variant)
    return j.ns, j.wall_ns
