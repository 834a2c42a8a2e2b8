/*
 * compat.h -- every CPython version difference exitguard depends on.
 *
 * Private to exitguard.  This is the only file that tests PY_VERSION_HEX:
 * everything else calls the helpers below, named after the upstream API they
 * stand in for (pythoncapi-compat style), so that dropping an old version
 * means deleting a block here and nothing else.  Each block says which
 * CPython change it follows.
 *
 * Supported: CPython 3.9 and newer, GIL and free-threaded builds.
 */
#ifndef EG__COMPAT_H
#define EG__COMPAT_H

#ifndef EG_BUILDING
#  error "compat.h is private to exitguard"
#endif

#include <Python.h>

#if PY_VERSION_HEX < 0x03090000
#  error "exitguard needs CPython 3.9 or newer (threading._register_atexit, bpo-39812)"
#endif

#if defined(Py_GIL_DISABLED) && PY_VERSION_HEX < 0x030D0000
#  error "free-threaded builds are supported from CPython 3.13"
#endif

/* ---- Is the calling thread attached? -------------------------------------
 *
 * eg__tstate_attached() returns the calling thread's thread state when the
 * thread is attached (holds the GIL), else NULL.  It needs no GIL and never
 * dereferences another thread's state.
 *
 * 3.13 made PyThreadState_GetUnchecked() public (gh-108867).  3.12 keeps the
 * current thread state in a real thread-local (_Py_tss_tstate), so the
 * private _PyThreadState_UncheckedGet() answers for this thread.  Before
 * 3.12 that function returns the runtime-wide "GIL holder" -- some other
 * thread's state when we do not hold the GIL -- so we compare it, by
 * pointer only, with this thread's own gilstate thread state.  A thread
 * attached through a thread state that is not its gilstate one reads as
 * detached there; its decrefs are then queued rather than applied, which is
 * safe. */
static inline PyThreadState *
eg__tstate_attached(void)
{
#if PY_VERSION_HEX >= 0x030D0000
    return PyThreadState_GetUnchecked();
#elif PY_VERSION_HEX >= 0x030C0000
    return _PyThreadState_UncheckedGet();
#else
    PyThreadState *holder = _PyThreadState_UncheckedGet();
    if (holder != NULL && holder == PyGILState_GetThisThreadState()) {
        return holder;
    }
    return NULL;
#endif
}

/* ---- Is the runtime finalizing? ------------------------------------------
 * gh-108014 made Py_IsFinalizing() public in 3.13.0a1. */
#if PY_VERSION_HEX < 0x030D00A1 && !defined(Py_IsFinalizing)
static inline int
Py_IsFinalizing(void)
{
    return _Py_IsFinalizing();
}
#endif

/* ---- Py_NewRef: added in 3.10.0a3 (bpo-42262). ---- */
#if PY_VERSION_HEX < 0x030A00A3 && !defined(Py_NewRef)
static inline PyObject *
eg__Py_NewRef(PyObject *obj)
{
    Py_INCREF(obj);
    return obj;
}
#  define Py_NewRef(obj) eg__Py_NewRef((PyObject *)(obj))
#endif

/* ---- PyModule_AddObjectRef: added in 3.10.0a3 (bpo-42327). ---- */
#if PY_VERSION_HEX < 0x030A00A3
static inline int
eg__PyModule_AddObjectRef(PyObject *mod, const char *name, PyObject *value)
{
    Py_INCREF(value);
    if (PyModule_AddObject(mod, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#  define PyModule_AddObjectRef eg__PyModule_AddObjectRef
#endif

/* ---- Saving the current exception around a finalizer (PEP 442) ----------
 * PyErr_GetRaisedException/SetRaisedException: 3.12 (gh-101578).  Before
 * that, PyErr_Fetch/PyErr_Restore keep (type, value, traceback); the
 * helpers carry the normalized value alone, its traceback attached. */
static inline PyObject *
PyErr_GetRaisedException_compat(void)
{
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (type == NULL) {
        return NULL;
    }
    PyErr_NormalizeException(&type, &value, &tb);
    if (tb != NULL && value != NULL) {
        PyException_SetTraceback(value, tb);
    }
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

static inline void
PyErr_SetRaisedException_compat(PyObject *exc)
{
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    if (exc == NULL) {
        return;
    }
    PyObject *type = Py_NewRef(Py_TYPE(exc));
    PyObject *tb = PyException_GetTraceback(exc);
    PyErr_Restore(type, exc, tb);
#endif
}

/* ---- Module slots that declare what the module supports ----------------
 * Py_mod_multiple_interpreters: 3.12 (gh-104108, PEP 684).
 * Py_mod_gil: 3.13 (gh-116322, PEP 703); only free-threaded builds read it. */
#if PY_VERSION_HEX >= 0x030C0000
#  define EG__SLOT_MULTIPLE_INTERPRETERS \
       {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#else
#  define EG__SLOT_MULTIPLE_INTERPRETERS
#endif
#if PY_VERSION_HEX >= 0x030D0000
#  define EG__SLOT_GIL {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#else
#  define EG__SLOT_GIL
#endif

/* ---- PEP 788: interpreter guards and views (3.15) ------------------------
 *
 * CPython 3.15 implements PEP 788 (gh-149101): a PyInterpreterGuard, while
 * held, keeps its interpreter from starting to finalize -- finalization waits
 * until every guard is closed, and no guard can be taken once it has begun --
 * and a PyInterpreterView names an interpreter that may already be gone.
 * exitguard's gate does the same job for 3.9-3.14 and keeps its own
 * semantics on 3.15 (refusal from phase 2 on, -ESHUTDOWN, never a hang);
 * underneath it, on 3.15, every outermost attach also holds a real guard
 * taken from a view, so that even an embedder whose finalization never runs
 * our atexit phase cannot finalize under an attached native thread.
 *
 * Before 3.15 the helpers emulate the shape: a view is a dummy, and taking a
 * guard is the old best-effort Py_IsFinalizing() check (racy on its own --
 * PEP 788's rationale -- but it only ever turns an attach into a refusal;
 * the gate is what makes exitguard's own phases safe). */
#if PY_VERSION_HEX >= 0x030F00B1
#  define EG__HAVE_PEP788 1
typedef PyInterpreterView eg__pyview;
typedef PyInterpreterGuard eg__pyguard;

/* Attached: a view of the calling thread's interpreter, or NULL with an
 * exception set. */
static inline eg__pyview *
eg__view_current(void)
{
    return PyInterpreterView_FromCurrent();
}

/* Any thread: a view of the main interpreter, or NULL (no exception). */
static inline eg__pyview *
eg__view_main(void)
{
    return PyInterpreterView_FromMain();
}

/* Any thread.  NULL is a no-op. */
static inline void
eg__view_close(eg__pyview *view)
{
    if (view != NULL) {
        PyInterpreterView_Close(view);
    }
}

/* Any thread, no thread state needed: a guard on the viewed interpreter, or
 * NULL (no exception) when it is finalizing or gone, or out of memory. */
static inline eg__pyguard *
eg__guard_from_view(eg__pyview *view)
{
    return view != NULL ? PyInterpreterGuard_FromView(view) : NULL;
}

/* Any thread.  NULL is a no-op. */
static inline void
eg__guard_close(eg__pyguard *guard)
{
    if (guard != NULL) {
        PyInterpreterGuard_Close(guard);
    }
}
#else
#  define EG__HAVE_PEP788 0
typedef struct eg__pyview eg__pyview;     /* never defined: only (void *)1 */
typedef struct eg__pyguard eg__pyguard;

static inline eg__pyview *
eg__view_current(void)
{
    return (eg__pyview *)(uintptr_t)1;
}

static inline eg__pyview *
eg__view_main(void)
{
    return (eg__pyview *)(uintptr_t)1;
}

static inline void
eg__view_close(eg__pyview *view)
{
    (void)view;
}

static inline eg__pyguard *
eg__guard_from_view(eg__pyview *view)
{
    (void)view;
    return Py_IsFinalizing() ? NULL : (eg__pyguard *)(uintptr_t)1;
}

static inline void
eg__guard_close(eg__pyguard *guard)
{
    (void)guard;
}
#endif

/* ---- Deleting the thread state of a thread that has exited ---------------
 *
 * Since 3.12 a thread state remembers whether it is its OS thread's
 * "gilstate" state (the one PyGILState_Ensure reuses), and deleting a state
 * that is unbinds it from the gilstate slot of the *calling* thread: a
 * debug build asserts that the caller is its owner, a release build silently
 * clears the caller's own binding (gh-131012; CPython's zapthreads trips on
 * it too).  exitguard deletes the states of native threads after those
 * threads have exited, from a thread attached to the same interpreter: the
 * dead thread's slot no longer matters, so the binding is forgotten first.
 * Only for threads that are gone: a live thread would keep a dangling
 * pointer in its slot, and CPython writes through it at its next attach.
 * Before 3.12 the delete compares with the caller's slot and leaves it alone. */
static inline void
eg__tstate_forget_gilstate(PyThreadState *ts)
{
#if PY_VERSION_HEX >= 0x030C0000
    ts->_status.bound_gilstate = 0;
#else
    (void)ts;
#endif
}

/* ---- 3.13.0: a subinterpreter's thread list must not run empty -----------
 *
 * CPython 3.13.0 (gh-126914, fixed in 3.13.1 by gh-127114): when an
 * interpreter's last thread state is deleted, its thread list reads empty
 * while the interpreter's embedded initial thread state is still being torn
 * down, and a thread state created at that moment reuses the embedded one:
 * "Fatal Python error: init_threadstate: thread state already initialized".
 * A subinterpreter that native threads attach to in a loop (each attach
 * makes a state, each release deletes one) met it in 2 of 3 runs.  There,
 * each subinterpreter keeps one thread state of exitguard's own, never
 * attached, from its module exec to its phase 2 (eg__record.anchor), so the
 * list never empties while threads come and go. */
#if PY_VERSION_HEX >= 0x030D0000 && PY_VERSION_HEX < 0x030D01F0
#  define EG__SUBINTERP_ANCHOR 1
#else
#  define EG__SUBINTERP_ANCHOR 0
#endif

/* Is `ts` still one of `interp`'s thread states?  (CPython's own ending of
 * a subinterpreter may have deleted it.)  Attached to `interp`. */
static inline int
eg__tstate_listed(PyInterpreterState *interp, PyThreadState *ts)
{
    for (PyThreadState *p = PyInterpreterState_ThreadHead(interp); p != NULL;
         p = PyThreadState_Next(p)) {
        if (p == ts) {
            return 1;
        }
    }
    return 0;
}

/* ---- Waiting without the GIL while the runtime finalizes ------------------
 *
 * EG__BEGIN_WAIT / EG__END_WAIT bracket a wait the way Py_BEGIN_ALLOW_THREADS /
 * Py_END_ALLOW_THREADS do -- the GIL is released around it -- except where
 * taking the GIL back would end the calling thread.  Before 3.12.1, once the
 * runtime is finalizing, take_gil() exits every thread whose state is not the
 * one that began finalization, and that includes the main OS thread itself
 * while it ends a subinterpreter (gh-109793, fixed by checking the thread id
 * in 3.12.1): a subinterpreter ended during the main interpreter's
 * finalization runs exitguard's phases there, and a released GIL in them
 * killed the main thread (the process then hung on its native threads, or
 * lost its exit status).  In that one case the wait keeps the GIL: the main
 * interpreter's phase 2 has shut that interpreter's gate already, so no
 * thread being waited for needs it. */
static inline PyThreadState *
eg__wait_begin(void)
{
#if PY_VERSION_HEX < 0x030C0100
    if (Py_IsFinalizing()
            && PyInterpreterState_Get() != PyInterpreterState_Main()) {
        return NULL;
    }
#endif
    return PyEval_SaveThread();
}

static inline void
eg__wait_end(PyThreadState *ts)
{
    if (ts != NULL) {
        PyEval_RestoreThread(ts);
    }
}

#define EG__BEGIN_WAIT { PyThreadState *eg__wait_ts = eg__wait_begin();
#define EG__END_WAIT eg__wait_end(eg__wait_ts); }

/* ---- Free-threaded builds: biased reference counting ---------------------
 * On free-threaded builds an object's reference count is split between its
 * owning thread (the one that allocated it) and everybody else.  A decref
 * from another thread -- exactly what a deferred decref is -- can push the
 * shared count negative, and then the object is queued for its owner to
 * merge and free; the owner does that only when its eval loop checks the
 * eval breaker (_Py_brc_merge_refcounts), or when its thread state is
 * deleted.  A native thread that attaches through exitguard to create
 * objects but never runs Python bytecode would let them pile up for ever
 * (the torture and fork tests ran a 3.13t process out of memory).  So on
 * those builds eg_gil_ensure runs one tiny Python function after attaching:
 * its RESUME checks the eval breaker and merges the thread's queue.  There
 * is no public API for the merge (_Py_HandlePending is internal). */
#if defined(Py_GIL_DISABLED)
#  define EG__FREE_THREADED 1
#else
#  define EG__FREE_THREADED 0
#endif

/* ---- Type flags ------------------------------------------------------------
 * Py_TPFLAGS_IMMUTABLETYPE (3.10, bpo-43908): exitguard's heap types refuse
 * attribute assignment, as static types always did.  3.9 has no such flag;
 * there the types stay mutable. */
#if PY_VERSION_HEX >= 0x030A0000
#  define EG__TPFLAGS_IMMUTABLE Py_TPFLAGS_IMMUTABLETYPE
#else
#  define EG__TPFLAGS_IMMUTABLE 0
#endif

#endif /* EG__COMPAT_H */
