/*
 * module.c -- the CPython module exitguard._core: multi-phase init, the
 * module functions, and the module's lifecycle (exec, traverse, clear,
 * free), which includes running phase 2 from the interpreter's teardown
 * when no hook ran it.
 *
 * Every function here runs attached (it is called by Python).  The module
 * holds no process-wide Python state: each interpreter that imports it gets
 * its own module object whose state (py.h) points at that interpreter's
 * record (interp.c), so the module declares per-interpreter-GIL support
 * (3.12+) and, on free-threaded builds, that it does not need the GIL:
 * everything it shares between threads is guarded by exitguard's own locks
 * and atomics.  This file is the composition root of the Python surface:
 * eg_exec creates the types (stopper_type.c, event_type.c, cq_type.c),
 * exports the C API table (capi.c) and installs the hooks (hooks.c); the
 * stats builder is stats.c's.
 */
#include "py/py.h"
#include "core/record.h"
#include "core/thread.h"
#include "core/log.h"
#include "core/kicker.h"
#include "core/decref_drain.h"
#include "core/log_forwarder.h"
#include "lifecycle/shutdown.h"
#include "lifecycle/interp.h"

/* ---- Module functions -------------------------------------------------------- */

PyDoc_STRVAR(flush_doc,
"flush() -> int\n\n"
"Apply this interpreter's queued decrefs now; return how many.  Returns 0\n"
"when another thread is already applying them.");

static PyObject *
eg_py_flush(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(eg__decref_drain_sc(eg__get_state(module)->rec));
}

PyDoc_STRVAR(state_doc,
"state() -> str\n\n"
"This interpreter's exitguard state: 'running', 'stopping' (phase 1 has\n"
"begun), 'releasing' (phase 2 has begun) or 'stopped'.");

static PyObject *
eg_py_state(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    eg__record *in = eg__get_state(module)->rec;
    return PyUnicode_FromString(eg__state_name(eg__state_of(in)));
}

static PyObject *
eg_py_phase1(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    eg__phase1(eg__get_state(module)->rec);
    Py_RETURN_NONE;
}

/* Phase 2 of `in`, attached to it: from the atexit hook, or from the
 * interpreter's teardown when no hook ran it (eg__late_phase2). */
static void
eg__run_phase2(eg__record *in)
{
    if (in->is_main) {
        /* The process is going: no native thread may attach to any
         * interpreter from here (see eg__shut_other_gates). */
        eg__shut_other_gates(in, eg__join_timeout);
    }
    eg__phase2(in);
}

static PyObject *
eg_py_phase2(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    eg__run_phase2(eg__get_state(module)->rec);
    Py_RETURN_NONE;
}

static PyObject *
eg_py_log_levels_changed(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *fn;
    int only_unknown = 0;
    if (!PyArg_ParseTuple(args, "O|p", &fn, &only_unknown)) {
        return NULL;
    }
    if (eg__log_levels_changed(fn, only_unknown) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
eg_py_log_ring_size(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    return PyLong_FromUnsignedLongLong(eg__log_ring_size());
}

static PyMethodDef eg_methods[] = {
    {"_log_levels_changed", eg_py_log_levels_changed, METH_VARARGS,
     "Recompute exitguard's cached logger levels (exitguard._logging)."},
    {"_log_ring_size", eg_py_log_ring_size, METH_NOARGS,
     "Slots in the native log ring."},
    {"flush", eg_py_flush, METH_NOARGS, flush_doc},
    {"state", eg_py_state, METH_NOARGS, state_doc},
    {"stats", eg__py_stats, METH_NOARGS, eg__py_stats_doc},
    {"_phase1", eg_py_phase1, METH_NOARGS,
     "exitguard's phase 1 (threading._register_atexit hook)."},
    {"_phase2", eg_py_phase2, METH_NOARGS,
     "exitguard's phase 2 (atexit hook)."},
    {"_after_fork_child", eg__py_after_fork_child, METH_NOARGS,
     "os.register_at_fork(after_in_child=...) hook."},
    {"_before_fork", eg__py_before_fork, METH_NOARGS,
     "os.register_at_fork(before=...) hook: the fork barrier."},
    {"_after_fork_parent", eg__py_after_fork_parent, METH_NOARGS,
     "os.register_at_fork(after_in_parent=...) hook."},
    {NULL, NULL, 0, NULL},
};

/* ---- Module lifecycle ---------------------------------------------------------- */

/* Phase 2 when no hook ran it, from the interpreter's teardown.  Attached.
 * exitguard first imported by an exit handler misses atexit, which never
 * runs a callback registered while it runs its callbacks (realworld/
 * arrow_38626_import_at_exit): the teardown is then the last moment the
 * interpreter is whole enough to release what native code holds.  Two
 * moments, whichever comes first: the module's dict is cleared
 * (`_teardown` below; 3.9 clears the dicts of modules it never frees) and
 * the module is freed (m_free).  `from_dict`: only in the teardown (the
 * runtime finalizing, or sys.modules no longer listing us) -- a `del` of
 * the attribute must not stop a live interpreter. */
static void
eg__late_phase2(eg__record *in, int from_dict)
{
    if (eg__state_of(in) == EG__STOPPED || eg__record_modules(in) != 1) {
        return;
    }
    if (from_dict && !Py_IsFinalizing()) {
        PyObject *mods = PyImport_GetModuleDict();      /* borrowed */
        PyObject *m = mods && PyDict_Check(mods)
            ? PyDict_GetItemString(mods, "exitguard._core") : NULL;
        int listed = m != NULL && m != Py_None;
        PyErr_Clear();
        if (listed) {
            return;
        }
    }
    eg__run_phase2(in);
}

static void
eg__teardown_destructor(PyObject *capsule)
{
    eg__record *in = PyCapsule_GetPointer(capsule, "exitguard._teardown");
    if (in != NULL) {
        eg__late_phase2(in, 1);
    }
    else {
        PyErr_Clear();
    }
}

static int
eg_exec(PyObject *module)
{
    eg__modstate *st = eg__get_state(module);
    eg__records_process_init();
    st->rec = eg__record_acquire();
    if (st->rec == NULL) {
        return -1;
    }
    eg__kicker_start();
    st->ExitStopper_Type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &eg__exitstopper_spec, NULL);
    if (st->ExitStopper_Type == NULL
        || PyModule_AddObjectRef(module, "ExitStopper",
                                 (PyObject *)st->ExitStopper_Type) < 0) {
        return -1;
    }
    st->Event_Type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &eg__event_spec, NULL);
    if (st->Event_Type == NULL
        || PyModule_AddObjectRef(module, "Event",
                                 (PyObject *)st->Event_Type) < 0) {
        return -1;
    }
    st->CompletionQueue_Type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &eg__cq_spec, NULL);
    if (st->CompletionQueue_Type == NULL
        || PyModule_AddObjectRef(module, "CompletionQueue",
                                 (PyObject *)st->CompletionQueue_Type) < 0) {
        return -1;
    }
    /* A SystemExit, not an Exception: a thread blocked in Event.wait() at
     * exit unwinds all the way and ends quietly (threading's excepthook
     * ignores SystemExit); `except Exception` loops do not swallow it and
     * spin; code that wants to clean up catches StoppingError itself. */
    st->StoppingError = PyErr_NewExceptionWithDoc(
        "exitguard.StoppingError",
        "A wait was ended because exitguard is stopping this interpreter.\n\n"
        "Derives from SystemExit: a thread that does not catch it ends "
        "quietly.",
        PyExc_SystemExit, NULL);
    if (st->StoppingError == NULL
        || PyModule_AddObjectRef(module, "StoppingError",
                                 st->StoppingError) < 0) {
        return -1;
    }
#if EG__FREE_THREADED
    if (st->rec->noop == NULL) {
        /* A Python-level function (its RESUME checks the eval breaker);
         * kept for the life of the interpreter. */
        PyObject *globals = PyDict_New();
        if (globals == NULL || PyDict_SetItemString(
                globals, "__builtins__", PyEval_GetBuiltins()) < 0) {
            Py_XDECREF(globals);
            return -1;
        }
        st->rec->noop = PyRun_String("lambda: None", Py_eval_input, globals,
                                     globals);
        Py_DECREF(globals);
        if (st->rec->noop == NULL) {
            return -1;
        }
    }
#endif
    if (st->rec->is_main) {
        /* The main interpreter receives native log messages. */
        if (eg__log_init_main() < 0) {
            return -1;
        }
        /* Signal handlers run on the main thread: eg_event_wait polls in
         * slices there (event.c). */
        PyObject *thr = PyImport_ImportModule("threading");
        PyObject *mt = thr ? PyObject_CallMethod(thr, "main_thread", NULL)
                           : NULL;
        PyObject *ident = mt ? PyObject_GetAttrString(mt, "ident") : NULL;
        if (ident != NULL) {
            eg__set_main_thread(PyLong_AsUnsignedLong(ident));
        }
        Py_XDECREF(ident);
        Py_XDECREF(mt);
        Py_XDECREF(thr);
        if (PyErr_Occurred()) {
            return -1;
        }
    }
    PyObject *capsule = PyCapsule_New((void *)&eg__capi, "exitguard._C_API",
                                      NULL);
    if (capsule == NULL) {
        return -1;
    }
    int rc = PyModule_AddObjectRef(module, "_C_API", capsule);
    Py_DECREF(capsule);
    PyObject *teardown = rc < 0 ? NULL
        : PyCapsule_New(st->rec, "exitguard._teardown", eg__teardown_destructor);
    rc = teardown ? PyModule_AddObjectRef(module, "_teardown", teardown) : -1;
    Py_XDECREF(teardown);
    if (rc < 0
        || PyModule_AddStringConstant(module, "__version__",
                                      EG_VERSION_STRING) < 0
        || PyModule_AddIntConstant(module, "ABI_VERSION", EG_ABI_VERSION) < 0
        || PyModule_AddIntConstant(module, "LEAK_EXIT_STATUS", 70) < 0) {
        return -1;
    }
    /* Phase 1 before non-daemon threads are joined; importing threading
     * also makes CPython call threading._shutdown() at exit at all.  Phase
     * 2 from atexit.  Both idempotent. */
    int refused = eg__hook(module, "_phase1", "threading",
                           "_register_atexit", 1);
    if (refused < 0
        || (!refused && eg__hook_shutdown(module) < 0)
        || eg__hook(module, "_phase2", "atexit", "register", 0) < 0
        || eg__hook_fork(module) < 0) {
        return -1;
    }
    return 0;
}

static int
eg_traverse(PyObject *module, visitproc visit, void *arg)
{
    eg__modstate *st = (eg__modstate *)PyModule_GetState(module);
    if (st != NULL) {
        Py_VISIT(st->ExitStopper_Type);
        Py_VISIT(st->Event_Type);
        Py_VISIT(st->CompletionQueue_Type);
        Py_VISIT(st->StoppingError);
    }
    return 0;
}

static int
eg_clear(PyObject *module)
{
    eg__modstate *st = (eg__modstate *)PyModule_GetState(module);
    if (st != NULL) {
        Py_CLEAR(st->ExitStopper_Type);
        Py_CLEAR(st->Event_Type);
        Py_CLEAR(st->CompletionQueue_Type);
        Py_CLEAR(st->StoppingError);
    }
    return 0;
}

static void
eg_free(void *module)
{
    eg__modstate *st = (eg__modstate *)PyModule_GetState((PyObject *)module);
    (void)eg_clear((PyObject *)module);
    if (st != NULL && st->rec != NULL) {
        eg__late_phase2(st->rec, 0);
    }
    if (st != NULL && st->rec != NULL) {
        eg__record_release(st->rec);
        st->rec = NULL;
    }
}

static PyModuleDef_Slot eg_slots[] = {
    {Py_mod_exec, (void *)eg_exec},
    EG__SLOT_MULTIPLE_INTERPRETERS
    EG__SLOT_GIL
    {0, NULL},
};

static struct PyModuleDef eg_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "exitguard._core",
    .m_doc = "exitguard's C core: native references, deferred decrefs and "
             "the two-phase exit stopper.",
    .m_size = sizeof(eg__modstate),
    .m_methods = eg_methods,
    .m_slots = eg_slots,
    .m_traverse = eg_traverse,
    .m_clear = eg_clear,
    .m_free = eg_free,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&eg_module);
}
