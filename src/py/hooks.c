/*
 * hooks.c -- where exitguard hooks into CPython's exit and fork: the
 * registrations eg_exec (module.c) makes, the threading._shutdown wrapper
 * that puts phase 1 first, and the os.register_at_fork callbacks.
 *
 * Every function here runs attached.  Phase 1 is hooked twice -- the
 * wrapped threading._shutdown and a threading._register_atexit hook -- and
 * phase 2 once, with atexit; the phases are idempotent, so whichever hook
 * comes first runs them and the others return.  The fork callbacks keep
 * native threads out of CPython across fork(); in the child (the main
 * interpreter's) they close the gate to the parent's threads, apply what
 * those had queued and start a new kicker.  Nothing here unregisters a
 * hook: they last as long as the interpreter, and an import too late for
 * atexit is caught by the module's teardown instead (module.c).
 */
#include "py/py.h"
#include "core/record.h"
#include "core/gate.h"
#include "core/kicker.h"
#include "core/decref_drain.h"
#include "lifecycle/shutdown.h"
#include "lifecycle/interp.h"

/* ---- Fork ---------------------------------------------------------------- */

/* os.register_at_fork(after_in_child=...): the child, attached.  Apply what
 * the parent's threads had queued (valid objects of the main interpreter;
 * their threads are gone). */
PyObject *
eg__py_after_fork_child(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    eg__record *in = eg__get_state(module)->rec;
    if (in->is_main) {
        eg__gate_close_fork_orphans(in);
        (void)eg__decref_drain_sc(in);
        eg__kicker_start();          /* the parent's is gone */
    }
    Py_RETURN_NONE;
}

/* os.register_at_fork(before=...): attached.  Returns once no native
 * thread is inside CPython (or the fork timeout passed). */
PyObject *
eg__py_before_fork(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    eg__fork_prepare();
    Py_RETURN_NONE;
}

/* os.register_at_fork(after_in_parent=...): attached. */
PyObject *
eg__py_after_fork_parent(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    eg__fork_parent();
    Py_RETURN_NONE;
}

/* ---- Hooks ---------------------------------------------------------------------- */

/* Register `fn` (a function of this module) with `modname.attr(fn)`.
 * Returns 0, or -1 with an exception set.  With `tolerate_runtime_error`, a
 * RuntimeError (threading refuses registrations once it is shutting down)
 * is swallowed and 1 returned. */
int
eg__hook(PyObject *module, const char *fname, const char *modname,
         const char *attr, int tolerate_runtime_error)
{
    int rc = -1;
    PyObject *fn = PyObject_GetAttrString(module, fname);
    PyObject *mod = fn ? PyImport_ImportModule(modname) : NULL;
    PyObject *r = mod ? PyObject_CallMethod(mod, attr, "O", fn) : NULL;
    if (r != NULL) {
        rc = 0;
    }
    else if (tolerate_runtime_error
             && PyErr_ExceptionMatches(PyExc_RuntimeError)) {
        PyErr_Clear();
        rc = 1;
    }
    Py_XDECREF(r);
    Py_XDECREF(mod);
    Py_XDECREF(fn);
    return rc;
}

/* threading._shutdown, wrapped: phase 1 first, then the original.
 * threading runs its _register_atexit callbacks newest first, so a hook
 * registered there by a module imported after exitguard -- concurrent.futures
 * imports lazily, at the first executor, and its _python_exit joins the
 * workers -- would run before phase 1 and wait for a worker only a stopper
 * can release (realworld/grpc_11804_atexit).  Wrapping the function CPython
 * calls at exit (wait_for_thread_shutdown looks it up by name, 3.9-3.15)
 * puts phase 1 before every one of them.  self: (module, original). */
static PyObject *
eg_py_shutdown_first(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *module = PyTuple_GET_ITEM(self, 0);
    eg__phase1(eg__get_state(module)->rec);
    return PyObject_CallNoArgs(PyTuple_GET_ITEM(self, 1));
}

static PyMethodDef eg__shutdown_first_def = {
    "_shutdown", eg_py_shutdown_first, METH_NOARGS,
    "threading._shutdown, with exitguard's phase 1 first."};

/* Wrap threading._shutdown (above).  Returns 0, or -1 with an exception
 * set.  The _register_atexit hook stays, for a program that replaces
 * threading._shutdown after us; phase 1 runs once. */
int
eg__hook_shutdown(PyObject *module)
{
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *orig = threading
        ? PyObject_GetAttrString(threading, "_shutdown") : NULL;
    PyObject *self = orig ? PyTuple_Pack(2, module, orig) : NULL;
    PyObject *fn = self ? PyCFunction_New(&eg__shutdown_first_def, self)
                        : NULL;
    int rc = fn ? PyObject_SetAttrString(threading, "_shutdown", fn) : -1;
    Py_XDECREF(fn);
    Py_XDECREF(self);
    Py_XDECREF(orig);
    Py_XDECREF(threading);
    return rc;
}

int
eg__hook_fork(PyObject *module)
{
    PyObject *child = PyObject_GetAttrString(module, "_after_fork_child");
    PyObject *before = child ? PyObject_GetAttrString(module, "_before_fork")
                             : NULL;
    PyObject *parent = before
        ? PyObject_GetAttrString(module, "_after_fork_parent") : NULL;
    PyObject *os = parent ? PyImport_ImportModule("os") : NULL;
    PyObject *reg = os ? PyObject_GetAttrString(os, "register_at_fork") : NULL;
    PyObject *args = reg ? PyTuple_New(0) : NULL;
    PyObject *kw = args ? Py_BuildValue("{s:O,s:O,s:O}", "before", before,
                                        "after_in_parent", parent,
                                        "after_in_child", child) : NULL;
    PyObject *r = kw ? PyObject_Call(reg, args, kw) : NULL;
    int rc = r ? 0 : -1;
    Py_XDECREF(r);
    Py_XDECREF(kw);
    Py_XDECREF(args);
    Py_XDECREF(reg);
    Py_XDECREF(os);
    Py_XDECREF(parent);
    Py_XDECREF(before);
    Py_XDECREF(child);
    return rc;
}
