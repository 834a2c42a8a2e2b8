/*
 * py.h -- the Python surface's private header: the module state of
 * exitguard._core and what the files of src/py/ share with each other.
 *
 * Private to exitguard, and within it to src/py/: the core (the files
 * directly in src/) never includes it, so nothing below the Python surface
 * reaches the module state.  Everything declared here is called attached
 * -- by Python, through a method, a type slot or the module's exec and
 * teardown -- and may raise: each function returns NULL or -1 with an
 * exception set on failure.  Each
 * interpreter that imports exitguard has its own module object, hence its
 * own eg__modstate pointing at that interpreter's record (interp.c), and its
 * own heap types, created in eg_exec (module.c) from the specs below.
 */
#ifndef EG__PY_H
#define EG__PY_H

#ifndef EG_BUILDING
#  error "py.h is private to exitguard"
#endif

#include "core/record.h"

/* ---- Module state --------------------------------------------------------- */

typedef struct {
    eg__record *rec;
    PyTypeObject *ExitStopper_Type;
    PyTypeObject *Event_Type;
    PyTypeObject *CompletionQueue_Type;
    PyObject *StoppingError;
} eg__modstate;

static inline eg__modstate *
eg__get_state(PyObject *module)
{
    eg__modstate *st = (eg__modstate *)PyModule_GetState(module);
    assert(st != NULL);
    return st;
}

/* ---- The types (stopper_type.c, event_type.c, cq_type.c) ---------------- */

/* The specs of exitguard.ExitStopper, exitguard.Event and
 * exitguard.CompletionQueue.  Attached, in eg_exec only: each becomes a heap
 * type of the importing module (PyType_FromModuleAndSpec), whose methods
 * find the module state through PyType_GetModuleState. */
extern PyType_Spec eg__exitstopper_spec;
extern PyType_Spec eg__event_spec;
extern PyType_Spec eg__cq_spec;

/* Attached: the argument check of a constructor that takes no arguments
 * (Event(), CompletionQueue()).  Returns 0, or -1 with TypeError set
 * ("NAME() takes no arguments").  In event_type.c. */
int eg__no_args(const char *name, PyObject *args, PyObject *kwargs);

/* ---- Module functions defined outside module.c -------------------------- */
/* module.c's method table lists them; each is METH_NOARGS, attached. */

/* exitguard._core.stats(): a new dict of this interpreter's counters, or
 * NULL with an exception set.  eg__py_stats_doc is its docstring.  In
 * stats.c. */
PyObject *eg__py_stats(PyObject *module, PyObject *Py_UNUSED(ignored));
extern const char eg__py_stats_doc[];

/* The os.register_at_fork callbacks (eg__hook_fork), attached: before=
 * pauses every gate and returns once no native thread is inside CPython (or
 * the fork timeout passed); after_in_parent= resumes them; after_in_child=,
 * in the main interpreter, applies what the parent's threads had queued.
 * Each returns None.  In hooks.c. */
PyObject *eg__py_before_fork(PyObject *module, PyObject *Py_UNUSED(ignored));
PyObject *eg__py_after_fork_parent(PyObject *module,
                                   PyObject *Py_UNUSED(ignored));
PyObject *eg__py_after_fork_child(PyObject *module,
                                  PyObject *Py_UNUSED(ignored));

/* ---- Hooks (hooks.c), installed by eg_exec ------------------------------ */

/* Attached: call `modname.attr(module.fname)`.  Returns 0, or -1 with an
 * exception set; with `tolerate_runtime_error`, 1 when the call raised
 * RuntimeError (threading refuses registrations once it is shutting down),
 * the exception cleared. */
int eg__hook(PyObject *module, const char *fname, const char *modname,
             const char *attr, int tolerate_runtime_error);
/* Attached: replace threading._shutdown with a wrapper that runs phase 1 of
 * the module's interpreter first, then the original.  Returns 0, or -1 with
 * an exception set. */
int eg__hook_shutdown(PyObject *module);
/* Attached: os.register_at_fork() with the module's _before_fork,
 * _after_fork_parent and _after_fork_child.  Returns 0, or -1 with an
 * exception set. */
int eg__hook_fork(PyObject *module);

/* The C API table the capsule exports (capi.c). */
extern const eg_capi eg__capi;

#endif /* EG__PY_H */
