/*
 * stopper_type.c -- exitguard.ExitStopper: a Python callable, with its
 * arguments, registered as an exit stopper (stopper.c) of the interpreter
 * that created it and called there in phase 1.
 *
 * Every function here runs attached.  The registry entry owns one reference
 * to the ExitStopper until it has run or was cancelled, so a stopper whose
 * object the caller dropped still runs.  Whoever swaps the object's entry
 * pointer to NULL first -- cancel() or the run -- owns the transition: the
 * callback is called at most once, and never after cancel() returned True.
 * The file does not order stoppers itself: after() hands the ordering to the
 * registry (eg_stopper_after), and phase 1 runs them (shutdown.c).
 */
#include "py/py.h"
#include "base/platform.h"
#include "core/record.h"
#include "core/stopper.h"
#include "core/decref_drain.h"

#include <errno.h>

/* ---- ExitStopper ---------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *callback;
    PyObject *args;               /* tuple */
    PyObject *kwargs;             /* dict or NULL */
    /* The registry entry while the stopper is active; whoever swaps it to
     * NULL first -- cancel() or the run -- owns the transition. */
    _Atomic(eg_stopper *) stopper;
    _Atomic int ran;
} ExitStopperObject;

/* Stopper callback, phase 1, attached. */
static void
exitstopper_run(void *arg)
{
    ExitStopperObject *self = (ExitStopperObject *)arg;
    if (atomic_exchange_explicit(&self->stopper, NULL,
                                 memory_order_seq_cst) == NULL) {
        return;    /* cancelled concurrently; cancel() frees the entry */
    }
    atomic_store_explicit(&self->ran, 1, memory_order_seq_cst);
    PyObject *r = PyObject_Call(self->callback, self->args, self->kwargs);
    if (r == NULL) {
        /* Goes to sys.unraisablehook; the other stoppers still run.
         * Counted too: exitguard.testing fails an exit with a raising
         * stopper even when the hook was silenced. */
        PyErr_WriteUnraisable(self->callback);
        eg__record *in = eg__record_current();
        if (in != NULL) {
            eg__stoppers_note_error(in);
        }
    }
    Py_XDECREF(r);
}

/* The entry's reference to the ExitStopper, dropped when it is freed
 * (after the run, or by cancel()).  Attached. */
static void
exitstopper_entry_dtor(void *arg)
{
    Py_DECREF((PyObject *)arg);
}

/* Attached: "module.qualname" of a callable (or its repr), for messages.
 * Never fails: errors are cleared and a placeholder is used. */
static void
eg__callable_label(PyObject *fn, char *buf, size_t cap)
{
    PyObject *qual = PyObject_GetAttrString(fn, "__qualname__");
    PyObject *mod = qual ? PyObject_GetAttrString(fn, "__module__") : NULL;
    PyObject *text = NULL;
    if (qual != NULL && PyUnicode_Check(qual)) {
        text = (mod != NULL && PyUnicode_Check(mod))
            ? PyUnicode_FromFormat("%U.%U", mod, qual) : Py_NewRef(qual);
    }
    PyErr_Clear();
    if (text == NULL) {
        text = PyObject_Repr(fn);
        PyErr_Clear();
    }
    const char *utf8 = text ? PyUnicode_AsUTF8(text) : NULL;
    PyErr_Clear();
    snprintf(buf, cap, "%s", utf8 ? utf8 : "<a Python callable>");
    Py_XDECREF(text);
    Py_XDECREF(mod);
    Py_XDECREF(qual);
}

static PyObject *
exitstopper_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    eg__modstate *st = (eg__modstate *)PyType_GetModuleState(type);
    if (st == NULL) {
        return NULL;
    }
    if (PyTuple_GET_SIZE(args) < 1) {
        PyErr_SetString(PyExc_TypeError,
                        "exit_stopper() missing required argument: "
                        "'callback'");
        return NULL;
    }
    PyObject *callback = PyTuple_GET_ITEM(args, 0);
    if (!PyCallable_Check(callback)) {
        PyErr_Format(PyExc_TypeError,
                     "exit_stopper() callback must be callable, not %.200s",
                     Py_TYPE(callback)->tp_name);
        return NULL;
    }
    ExitStopperObject *self = (ExitStopperObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->callback = Py_NewRef(callback);
    self->args = PyTuple_GetSlice(args, 1, PyTuple_GET_SIZE(args));
    if (self->args == NULL) {
        goto fail;
    }
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs) > 0) {
        self->kwargs = PyDict_Copy(kwargs);
        if (self->kwargs == NULL) {
            goto fail;
        }
    }
    eg__decref_maybe_drain(st->rec);
    /* What the watchdog calls it if it blocks exit: module.qualname. */
    char label[300];
    eg__callable_label(callback, label, sizeof(label));
    /* The registry entry owns one reference: an ExitStopper whose result
     * the caller dropped must still run. */
    Py_INCREF(self);
    int err;
    eg_stopper *s = eg__stopper_add_ex(st->rec, exitstopper_run, self,
                                       exitstopper_entry_dtor, 1, label,
                                       &err);
    if (s == NULL) {
        Py_DECREF(self);
        if (err == -ENOMEM) {
            PyErr_NoMemory();
        }
        else {
            PyErr_Format(PyExc_RuntimeError,
                         "exit_stopper(): phase 1 has already run in this "
                         "interpreter (exitguard is %s); stop the work "
                         "directly instead",
                         eg__state_name(eg__state_of(st->rec)));
        }
        goto fail;
    }
    atomic_store_explicit(&self->stopper, s, memory_order_seq_cst);
    return (PyObject *)self;

fail:
    Py_DECREF(self);
    return NULL;
}

static int
exitstopper_traverse(ExitStopperObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->callback);
    Py_VISIT(self->args);
    Py_VISIT(self->kwargs);
    return 0;
}

static int
exitstopper_clear(ExitStopperObject *self)
{
    Py_CLEAR(self->callback);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    return 0;
}

static void
exitstopper_dealloc(ExitStopperObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    /* An active stopper's entry holds a reference, so we only get here once
     * it ran or was cancelled. */
    (void)exitstopper_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

PyDoc_STRVAR(exitstopper_cancel_doc,
"cancel() -> bool\n\n"
"Unregister the stopper.  Returns True if this call cancelled it, False if\n"
"it had already run or been cancelled.  Thread-safe; idempotent.");

static PyObject *
exitstopper_cancel(ExitStopperObject *self, PyObject *Py_UNUSED(ignored))
{
    eg_stopper *s = atomic_exchange_explicit(&self->stopper, NULL,
                                             memory_order_seq_cst);
    if (s == NULL) {
        Py_RETURN_FALSE;
    }
    /* Frees the entry, whose destructor drops its reference to self; the
     * caller's reference keeps self alive through this call. */
    eg_stopper_remove(s);
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(exitstopper_after_doc,
"after(first) -> None\n\n"
"Run this stopper only after `first` (another active ExitStopper of the\n"
"same interpreter) has run.  Raises TypeError for a non-ExitStopper and\n"
"ValueError if either stopper is no longer active, or if the ordering\n"
"would form a cycle.");

static PyObject *
exitstopper_after(ExitStopperObject *self, PyObject *first)
{
    if (!PyObject_TypeCheck(first, Py_TYPE(self))) {
        PyErr_Format(PyExc_TypeError,
                     "after() argument must be an ExitStopper, not %.200s",
                     Py_TYPE(first)->tp_name);
        return NULL;
    }
    /* XXX: on free-threaded builds a cancel() racing with after() on the
     * same stopper could free the entry between these loads and the call;
     * the GIL excludes that elsewhere. */
    eg_stopper *a = atomic_load_explicit(&((ExitStopperObject *)first)->stopper,
                                         memory_order_seq_cst);
    eg_stopper *b = atomic_load_explicit(&self->stopper, memory_order_seq_cst);
    if (a == NULL || b == NULL) {
        PyErr_SetString(PyExc_ValueError,
                        "after(): both stoppers must still be active "
                        "(not run, not cancelled)");
        return NULL;
    }
    int rc = eg_stopper_after(a, b);
    if (rc == -ENOMEM) {
        return PyErr_NoMemory();
    }
    if (rc < 0) {
        PyErr_Format(PyExc_ValueError, "after(): %s", eg_strerror(rc));
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
exitstopper_enter(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return Py_NewRef(self);
}

static PyObject *
exitstopper_exit(ExitStopperObject *self, PyObject *args)
{
    (void)args;
    PyObject *r = exitstopper_cancel(self, NULL);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *
exitstopper_get_active(ExitStopperObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(atomic_load_explicit(&self->stopper,
                                                memory_order_seq_cst) != NULL);
}

static PyObject *
exitstopper_get_ran(ExitStopperObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(atomic_load_explicit(&self->ran,
                                                memory_order_seq_cst));
}

static PyObject *
exitstopper_get_callback(ExitStopperObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->callback);
}

static PyObject *
exitstopper_repr(ExitStopperObject *self)
{
    int active = atomic_load_explicit(&self->stopper,
                                      memory_order_seq_cst) != NULL;
    int ran = atomic_load_explicit(&self->ran, memory_order_seq_cst);
    const char *what = active ? "active" : ran ? "ran" : "cancelled";
    return PyUnicode_FromFormat("<exitguard.ExitStopper %R %s>",
                                self->callback, what);
}

static PyMethodDef exitstopper_methods[] = {
    {"cancel", (PyCFunction)exitstopper_cancel, METH_NOARGS,
     exitstopper_cancel_doc},
    {"after", (PyCFunction)exitstopper_after, METH_O, exitstopper_after_doc},
    {"__enter__", (PyCFunction)exitstopper_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)exitstopper_exit, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef exitstopper_getset[] = {
    {"active", (getter)exitstopper_get_active, NULL,
     "True until the stopper runs or is cancelled.", NULL},
    {"ran", (getter)exitstopper_get_ran, NULL,
     "True once phase 1 has called the callback.", NULL},
    {"callback", (getter)exitstopper_get_callback, NULL,
     "The callable given at registration.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(exitstopper_doc,
"ExitStopper(callback, /, *args, **kwargs)\n\n"
"Call callback(*args, **kwargs) in exitguard's phase 1 of this interpreter:\n"
"at exit, before the interpreter joins non-daemon threads.  Stoppers run\n"
"newest first, honouring after() orderings.  An exception in the callback\n"
"goes to sys.unraisablehook and the other stoppers still run.  Use as a\n"
"context manager to cancel on leaving the block.");

static PyType_Slot exitstopper_slots[] = {
    {Py_tp_new, exitstopper_new},
    {Py_tp_dealloc, exitstopper_dealloc},
    {Py_tp_traverse, exitstopper_traverse},
    {Py_tp_clear, exitstopper_clear},
    {Py_tp_repr, exitstopper_repr},
    {Py_tp_methods, exitstopper_methods},
    {Py_tp_getset, exitstopper_getset},
    {Py_tp_doc, (void *)exitstopper_doc},
    {0, NULL},
};

PyType_Spec eg__exitstopper_spec = {
    .name = "exitguard.ExitStopper",
    .basicsize = sizeof(ExitStopperObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | EG__TPFLAGS_IMMUTABLE,
    .slots = exitstopper_slots,
};
