/*
 * module.c -- the CPython module exitguard._core: multi-phase init, module
 * state, the Python API, the stop-phase hooks and the C API capsule.
 *
 * Every function here runs attached (it is called by Python).  The module
 * holds no process-wide Python state: each interpreter that imports it gets
 * its own module object whose state points at that interpreter's record
 * (interp.c), so the module declares per-interpreter-GIL support (3.12+)
 * and, on free-threaded builds, that it does not need the GIL: everything
 * it shares between threads is guarded by exitguard's own locks and atomics.
 */
#include "eg_internal.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <structmember.h>

/* ---- Module state --------------------------------------------------------- */

typedef struct {
    eg__interp *rec;
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
    if (atomic_exchange(&self->stopper, NULL) == NULL) {
        return;    /* cancelled concurrently; cancel() frees the entry */
    }
    atomic_store(&self->ran, 1);
    PyObject *r = PyObject_Call(self->callback, self->args, self->kwargs);
    if (r == NULL) {
        /* Goes to sys.unraisablehook; the other stoppers still run.
         * Counted too: exitguard.testing fails an exit with a raising
         * stopper even when the hook was silenced. */
        PyErr_WriteUnraisable(self->callback);
        eg__interp *in = eg__interp_current();
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
                         eg__state_name(atomic_load(&st->rec->state)));
        }
        goto fail;
    }
    atomic_store(&self->stopper, s);
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
    eg_stopper *s = atomic_exchange(&self->stopper, NULL);
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
    eg_stopper *a = atomic_load(&((ExitStopperObject *)first)->stopper);
    eg_stopper *b = atomic_load(&self->stopper);
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
    return PyBool_FromLong(atomic_load(&self->stopper) != NULL);
}

static PyObject *
exitstopper_get_ran(ExitStopperObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(atomic_load(&self->ran));
}

static PyObject *
exitstopper_get_callback(ExitStopperObject *self, void *Py_UNUSED(closure))
{
    return Py_NewRef(self->callback);
}

static PyObject *
exitstopper_repr(ExitStopperObject *self)
{
    const char *what = atomic_load(&self->stopper) ? "active"
                     : atomic_load(&self->ran) ? "ran" : "cancelled";
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

static PyType_Spec exitstopper_spec = {
    .name = "exitguard.ExitStopper",
    .basicsize = sizeof(ExitStopperObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
#if PY_VERSION_HEX >= 0x030A0000
             | Py_TPFLAGS_IMMUTABLETYPE
#endif
    ,
    .slots = exitstopper_slots,
};

/* ---- Event ------------------------------------------------------------------ */

static int
eg__no_args(const char *name, PyObject *args, PyObject *kwargs)
{
    if (PyTuple_GET_SIZE(args) != 0
            || (kwargs != NULL && PyDict_GET_SIZE(kwargs) != 0)) {
        PyErr_Format(PyExc_TypeError, "%s() takes no arguments", name);
        return -1;
    }
    return 0;
}

typedef struct {
    PyObject_HEAD
    eg_event *ev;
} EventObject;

static PyObject *
event_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (eg__no_args("Event", args, kwargs) < 0) {
        return NULL;
    }
    EventObject *self = (EventObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->ev = eg_event_new();
    if (self->ev == NULL) {
        Py_DECREF(self);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return (PyObject *)self;
}

static void
event_dealloc(EventObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    eg_event_free(self->ev);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
event_set(EventObject *self, PyObject *Py_UNUSED(ignored))
{
    (void)eg_event_set(self->ev);
    Py_RETURN_NONE;
}

static PyObject *
event_clear(EventObject *self, PyObject *Py_UNUSED(ignored))
{
    (void)eg_event_clear(self->ev);
    Py_RETURN_NONE;
}

static PyObject *
event_is_set(EventObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(eg_event_is_set(self->ev));
}

static PyObject *
event_fileno(EventObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(eg_event_fileno(self->ev));
}

/* Parse a timeout argument: None -> -1 (forever); else a real number >= 0.
 * Returns 0, or -1 with TypeError/ValueError. */
static int
eg__parse_timeout(PyObject *obj, double *out)
{
    if (obj == NULL || obj == Py_None) {
        *out = -1.0;
        return 0;
    }
    if (PyBool_Check(obj) || !(PyFloat_Check(obj) || PyLong_Check(obj))) {
        PyErr_Format(PyExc_TypeError,
                     "timeout must be a number or None, not %.200s",
                     Py_TYPE(obj)->tp_name);
        return -1;
    }
    double t = PyFloat_AsDouble(obj);
    if (t == -1.0 && PyErr_Occurred()) {
        return -1;
    }
    if (isnan(t) || t < 0) {
        PyErr_Format(PyExc_ValueError,
                     "timeout must be a non-negative number, not %R", obj);
        return -1;
    }
    *out = t;
    return 0;
}

PyDoc_STRVAR(event_wait_doc,
"wait(timeout=None) -> bool\n\n"
"Wait until the event is set, with the GIL released.  Returns True when\n"
"set, False on timeout.  Ctrl-C (any signal handler's exception) ends the\n"
"wait by raising.  Raises exitguard.StoppingError once exitguard's phase 1\n"
"has begun in this interpreter, so a waiting thread never blocks exit.");

static PyObject *
event_wait(EventObject *self, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"timeout", NULL};
    PyObject *t = Py_None;
    double timeout;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|O:wait", kwlist, &t)
            || eg__parse_timeout(t, &timeout) < 0) {
        return NULL;
    }
    int rc = eg_event_wait(self->ev, timeout);
    if (rc == 0) {
        Py_RETURN_TRUE;
    }
    if (rc == -ETIMEDOUT) {
        Py_RETURN_FALSE;
    }
    if (rc == EG_WAIT_STOPPING) {
        eg__modstate *st = (eg__modstate *)PyType_GetModuleState(
            Py_TYPE(self));
        if (st != NULL) {
            PyErr_SetString(st->StoppingError,
                            "exitguard is stopping: the wait was ended so "
                            "that exit is not blocked");
        }
        return NULL;
    }
    if (rc == EG_WAIT_INTERRUPTED) {
        return NULL;              /* KeyboardInterrupt or another handler error */
    }
    PyErr_Format(PyExc_OSError, "eg_event_wait: %s", eg_strerror(rc));
    return NULL;
}

static PyMethodDef event_methods[] = {
    {"set", (PyCFunction)event_set, METH_NOARGS,
     "Set the event (also safe from a signal handler in C)."},
    {"clear", (PyCFunction)event_clear, METH_NOARGS, "Clear the event."},
    {"is_set", (PyCFunction)event_is_set, METH_NOARGS,
     "True when the event is set."},
    {"wait", (PyCFunction)(void (*)(void))event_wait,
     METH_VARARGS | METH_KEYWORDS, event_wait_doc},
    {"fileno", (PyCFunction)event_fileno, METH_NOARGS,
     "A file descriptor readable while the event is set."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot event_slots[] = {
    {Py_tp_new, event_new},
    {Py_tp_dealloc, event_dealloc},
    {Py_tp_methods, event_methods},
    {Py_tp_doc, (void *)"Event()\n\nAn event that native threads and signal "
                        "handlers can set and that waits with the GIL "
                        "released, honouring Ctrl-C."},
    {0, NULL},
};

static PyType_Spec event_spec = {
    .name = "exitguard.Event",
    .basicsize = sizeof(EventObject),
    .flags = Py_TPFLAGS_DEFAULT
#if PY_VERSION_HEX >= 0x030A0000
             | Py_TPFLAGS_IMMUTABLETYPE
#endif
    ,
    .slots = event_slots,
};

/* ---- CompletionQueue ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    eg_cq *q;
    PyObject *loop;            /* attached loop, or NULL */
    PyObject *weakreflist;
} CQObject;

static PyObject *
cq_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    if (eg__no_args("CompletionQueue", args, kwargs) < 0) {
        return NULL;
    }
    eg__modstate *st = (eg__modstate *)PyType_GetModuleState(type);
    if (st == NULL) {
        return NULL;
    }
    CQObject *self = (CQObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->q = eg__cq_new(st->rec, (PyObject *)self);
    if (self->q == NULL) {
        Py_DECREF(self);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return (PyObject *)self;
}

static int
cq_check_open(CQObject *self)
{
    if (eg__cq_closed(self->q)) {
        PyErr_SetString(PyExc_ValueError, "the CompletionQueue is closed");
        return -1;
    }
    return 0;
}

static PyObject *
cq_detach(CQObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *loop = self->loop;
    if (loop == NULL) {
        Py_RETURN_NONE;
    }
    self->loop = NULL;
    PyObject *r = NULL;
    PyObject *closed = PyObject_CallMethod(loop, "is_closed", NULL);
    if (closed != NULL && !PyObject_IsTrue(closed)) {
        r = PyObject_CallMethod(loop, "remove_reader", "i",
                                eg__cq_fileno(self->q));
    }
    else if (closed != NULL) {
        r = Py_NewRef(Py_None);    /* a closed loop dropped its readers */
    }
    Py_XDECREF(closed);
    Py_DECREF(loop);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static PyObject *
cq_close(CQObject *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *r = cq_detach(self, NULL);
    if (r == NULL) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    Py_XDECREF(r);
    eg__cq_close(self->q);
    Py_RETURN_NONE;
}

static int
cq_traverse(CQObject *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop);
    return 0;
}

static int
cq_clear(CQObject *self)
{
    Py_CLEAR(self->loop);
    return 0;
}

/* PEP 442 finalizer: the queue is still a whole object here, so the
 * callbacks that closing it runs (cancelled) may look at it, and may even
 * keep it -- a callback that takes a reference resurrects it, closed but
 * valid, instead of holding a pointer to freed memory (issue 11: the old
 * dealloc set the refcount to 1 and back to 0 around them). */
static void
cq_finalize(CQObject *self)
{
    PyObject *exc = PyErr_GetRaisedException_compat();
    PyObject *r = cq_detach(self, NULL);
    if (r == NULL) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    Py_XDECREF(r);
    if (self->q != NULL) {
        eg__cq_close(self->q);
    }
    PyErr_SetRaisedException_compat(exc);
}

static void
cq_dealloc(CQObject *self)
{
    if (PyObject_CallFinalizerFromDealloc((PyObject *)self) < 0) {
        return;                   /* resurrected by a callback */
    }
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    if (self->q != NULL) {
        eg__cq_free(self->q);     /* closed by the finalizer: no callbacks */
        self->q = NULL;
    }
    (void)cq_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
cq_fileno(CQObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(eg__cq_fileno(self->q));
}

static PyObject *
cq_run(CQObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(eg__cq_run(self->q));
}

static PyObject *
cq_attach(CQObject *self, PyObject *loop)
{
    if (cq_check_open(self) < 0) {
        return NULL;
    }
    if (self->loop != NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "the CompletionQueue is already attached to a loop; "
                        "detach() first");
        return NULL;
    }
    PyObject *run = PyObject_GetAttrString((PyObject *)self, "run");
    if (run == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_CallMethod(loop, "add_reader", "iO",
                                      eg__cq_fileno(self->q), run);
    Py_DECREF(run);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
    self->loop = Py_NewRef(loop);
    Py_RETURN_NONE;
}

static PyObject *
cq_stats(CQObject *self, PyObject *Py_UNUSED(ignored))
{
    uint64_t c[4];
    eg__cq_counts(self->q, c);
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:O}",
                         "posted", (unsigned long long)c[0],
                         "ran", (unsigned long long)c[1],
                         "cancelled", (unsigned long long)c[2],
                         "wakeups", (unsigned long long)c[3],
                         "closed", eg__cq_closed(self->q) ? Py_True : Py_False);
}

static PyObject *
cq_get_closed(CQObject *self, void *Py_UNUSED(closure))
{
    return PyBool_FromLong(eg__cq_closed(self->q));
}

static PyMethodDef cq_methods[] = {
    {"fileno", (PyCFunction)cq_fileno, METH_NOARGS,
     "The eventfd that becomes readable when completions are pending."},
    {"run", (PyCFunction)cq_run, METH_NOARGS,
     "run() -> int\n\nRun the pending callbacks here, attached; return "
     "how many ran."},
    {"attach", (PyCFunction)cq_attach, METH_O,
     "attach(loop)\n\nRun callbacks on `loop` (loop.add_reader)."},
    {"detach", (PyCFunction)cq_detach, METH_NOARGS,
     "detach()\n\nStop running callbacks on the attached loop."},
    {"close", (PyCFunction)cq_close, METH_NOARGS,
     "close()\n\nRefuse new posts and call pending callbacks cancelled."},
    {"stats", (PyCFunction)cq_stats, METH_NOARGS,
     "Counters: posted, ran, cancelled, wakeups (eventfd writes), closed."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef cq_getset[] = {
    {"closed", (getter)cq_get_closed, NULL, "True once closed.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef cq_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(CQObject, weakreflist),
     READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot cq_slots[] = {
    {Py_tp_new, cq_new},
    {Py_tp_dealloc, cq_dealloc},
    {Py_tp_finalize, cq_finalize},
    {Py_tp_traverse, cq_traverse},
    {Py_tp_clear, cq_clear},
    {Py_tp_methods, cq_methods},
    {Py_tp_getset, cq_getset},
    {Py_tp_members, cq_members},
    {Py_tp_doc, (void *)"CompletionQueue()\n\nCallbacks posted by native "
                        "threads (eg_cq_post) run here, attached: call "
                        "run(), or attach(loop) to run them on an asyncio "
                        "loop.  Pending ones are called cancelled at "
                        "close() and at exit."},
    {0, NULL},
};

static PyType_Spec cq_spec = {
    .name = "exitguard.CompletionQueue",
    .basicsize = sizeof(CQObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC
#if PY_VERSION_HEX >= 0x030A0000
             | Py_TPFLAGS_IMMUTABLETYPE
#endif
    ,
    .slots = cq_slots,
};

/* The C API accessor: attached. */
eg_cq *
eg_cq_from_object(PyObject *obj)
{
    eg__interp *in = eg__interp_current();
    (void)in;
    if (obj != NULL) {
        PyObject *name = PyObject_GetAttrString((PyObject *)Py_TYPE(obj),
                                                "__qualname__");
        int ok = name != NULL
                 && PyUnicode_CompareWithASCIIString(name, "CompletionQueue")
                    == 0
                 && Py_TYPE(obj)->tp_dealloc == (destructor)cq_dealloc;
        Py_XDECREF(name);
        PyErr_Clear();
        if (ok) {
            return ((CQObject *)obj)->q;
        }
    }
    PyErr_Format(PyExc_TypeError,
                 "expected an exitguard.CompletionQueue, not %.200s",
                 obj ? Py_TYPE(obj)->tp_name : "NULL");
    return NULL;
}

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
    eg__interp *in = eg__get_state(module)->rec;
    return PyUnicode_FromString(eg__state_name(atomic_load(&in->state)));
}

static int
eg__set_u64(PyObject *d, const char *key, uint64_t v)
{
    PyObject *o = PyLong_FromUnsignedLongLong((unsigned long long)v);
    if (o == NULL) {
        return -1;
    }
    int rc = PyDict_SetItemString(d, key, o);
    Py_DECREF(o);
    return rc;
}

PyDoc_STRVAR(stats_doc,
"stats() -> dict\n\n"
"Counters of this interpreter's exitguard (see docs/api.md for each key).");

static PyObject *
eg_py_stats(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    eg__interp *in = eg__get_state(module)->rec;
    eg__decref_queue *q = &in->queue;
    int state = atomic_load(&in->state);
    uint64_t pending = eg__decref_pending_count(in);
    uint64_t dropped = atomic_load(&q->dropped);
    if (state == EG_STOPPED) {
        dropped += pending;     /* never applied now: leaked, counted */
        pending = 0;
    }
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    PyObject *name = PyUnicode_FromString(eg__state_name(state));
    if (name == NULL || PyDict_SetItemString(d, "state", name) < 0) {
        Py_XDECREF(name);
        goto fail;
    }
    Py_DECREF(name);
    name = PyUnicode_FromString(eg__gate_state_name(&in->gate));
    if (name == NULL || PyDict_SetItemString(d, "gate", name) < 0) {
        Py_XDECREF(name);
        goto fail;
    }
    Py_DECREF(name);
    uint64_t attach_guards;
    uint64_t attach_ok = eg__gate_attaches(&in->gate, &attach_guards);
    if (eg__set_u64(d, "refs_live", eg__registry_live(&in->refs)) < 0
        || eg__set_u64(d, "refs_released_at_exit",
                       atomic_load(&in->refs.swept)) < 0
        || eg__set_u64(d, "refs_unreleased", eg__report_unreleased(in)) < 0
        || eg__set_u64(d, "decref_queued", pending) < 0
        || eg__set_u64(d, "decref_applied", atomic_load(&q->applied)) < 0
        || eg__set_u64(d, "decref_dropped", dropped) < 0
        || eg__set_u64(d, "decref_spilled", atomic_load(&q->spilled)) < 0
        || eg__set_u64(d, "kicks", atomic_load(&q->kicks)) < 0
        || eg__set_u64(d, "stoppers", eg__stoppers_count(in)) < 0
        || eg__set_u64(d, "stopper_errors", eg__stoppers_errors(in)) < 0
        || eg__set_u64(d, "threads_live", eg__threads_live(in)) < 0
        || eg__set_u64(d, "threads_abandoned",
                       atomic_load(&in->threads_abandoned)) < 0
        || eg__set_u64(d, "gate_abandoned",
                       atomic_load(&in->gate_abandoned)) < 0
        || eg__set_u64(d, "attach_ok", attach_ok) < 0
        || eg__set_u64(d, "attach_refused",
                       atomic_load(&in->gate.attach_refused)) < 0
        || eg__set_u64(d, "attach_guards", attach_guards) < 0
        || eg__set_u64(d, "tstates_reaped", atomic_load(&in->gate.reaped)) < 0
        || PyDict_SetItemString(d, "pep788",
                                EG_HAVE_PEP788 ? Py_True : Py_False) < 0
        || eg__set_u64(d, "interpreter_id", (uint64_t)in->id) < 0
        || eg__set_u64(d, "record_generation",
                       atomic_load(&in->generation)) < 0
        || eg__set_u64(d, "records", eg__records_allocated()) < 0) {
        goto fail;
    }
    uint64_t ld, ldr, lf, lfi, lse;
    eg__log_stats(&ld, &ldr, &lf, &lfi, &lse);
    if (eg__set_u64(d, "log_delivered", ld) < 0
        || eg__set_u64(d, "log_to_stderr", lse) < 0
        || eg__set_u64(d, "log_dropped", ldr) < 0
        || eg__set_u64(d, "log_formatted", lf) < 0
        || eg__set_u64(d, "log_filtered", lfi) < 0) {
        goto fail;
    }
    return d;
fail:
    Py_DECREF(d);
    return NULL;
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
eg__run_phase2(eg__interp *in)
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

/* os.register_at_fork(after_in_child=...): the child, attached.  Apply what
 * the parent's threads had queued (valid objects of the main interpreter;
 * their threads are gone). */
static PyObject *
eg_py_after_fork_child(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    eg__interp *in = eg__get_state(module)->rec;
    if (in->is_main) {
        eg__gate_close_fork_orphans(in);
        (void)eg__decref_drain_sc(in);
        eg__kicker_start();          /* the parent's is gone */
    }
    Py_RETURN_NONE;
}

/* os.register_at_fork(before=...): attached.  Returns once no native
 * thread is inside CPython (or the fork timeout passed). */
static PyObject *
eg_py_before_fork(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    eg__fork_prepare();
    Py_RETURN_NONE;
}

/* os.register_at_fork(after_in_parent=...): attached. */
static PyObject *
eg_py_after_fork_parent(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    (void)module;
    eg__fork_parent();
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
    {"stats", eg_py_stats, METH_NOARGS, stats_doc},
    {"_phase1", eg_py_phase1, METH_NOARGS,
     "exitguard's phase 1 (threading._register_atexit hook)."},
    {"_phase2", eg_py_phase2, METH_NOARGS,
     "exitguard's phase 2 (atexit hook)."},
    {"_after_fork_child", eg_py_after_fork_child, METH_NOARGS,
     "os.register_at_fork(after_in_child=...) hook."},
    {"_before_fork", eg_py_before_fork, METH_NOARGS,
     "os.register_at_fork(before=...) hook: the fork barrier."},
    {"_after_fork_parent", eg_py_after_fork_parent, METH_NOARGS,
     "os.register_at_fork(after_in_parent=...) hook."},
    {NULL, NULL, 0, NULL},
};

/* ---- The C API table ------------------------------------------------------------ */

const eg_capi eg__capi = {
    .abi_version = EG_ABI_VERSION,
    .size = (uint32_t)sizeof(eg_capi),
    .version_hex = EG_VERSION_HEX,
    .reserved = 0,
    .ref_new = eg_ref_new,
    .ref_get = eg_ref_get,
    .ref_release = eg_ref_release,
    .decref = eg_decref,
    .flush = eg_flush,
    .stopper_add = eg_stopper_add,
    .stopper_after = eg_stopper_after,
    .stopper_remove = eg_stopper_remove,
    .strerror = eg_strerror,
    .interp_current = eg_interp_current,
    .interp_main = eg_interp_main,
    .interp_close = eg_interp_close,
    .gil_ensure = eg_gil_ensure,
    .gil_release = eg_gil_release,
    .thread_start = eg_thread_start,
    .thread_join = eg_thread_join,
    .thread_stop_requested = eg_thread_stop_requested,
    .thread_adopt = eg_thread_adopt,
    .vlog = eg_vlog,
    .log_enabled = eg_log_enabled,
    .log_site_enabled = eg_log_site_enabled,
    .log_generation = (const unsigned int *)&eg__log_generation,
    .event_new = eg_event_new,
    .event_free = eg_event_free,
    .event_set = eg_event_set,
    .event_clear = eg_event_clear,
    .event_is_set = eg_event_is_set,
    .event_wait = eg_event_wait,
    .event_fileno = eg_event_fileno,
    .cq_from_object = eg_cq_from_object,
    .cq_post = eg_cq_post,
    .cq_post_future = eg_cq_post_future,
};

/* ---- Hooks ---------------------------------------------------------------------- */

/* Register `fn` (a function of this module) with `modname.attr(fn)`.
 * Returns 0, or -1 with an exception set.  With `tolerate_runtime_error`, a
 * RuntimeError (threading refuses registrations once it is shutting down)
 * is swallowed and 1 returned. */
static int
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
static int
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

static int
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
eg__late_phase2(eg__interp *in, int from_dict)
{
    if (atomic_load(&in->state) == EG_STOPPED || eg__interp_modules(in) != 1) {
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
    eg__interp *in = PyCapsule_GetPointer(capsule, "exitguard._teardown");
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
    eg__interps_process_init();
    st->rec = eg__interp_acquire();
    if (st->rec == NULL) {
        return -1;
    }
    eg__kicker_start();
    st->ExitStopper_Type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &exitstopper_spec, NULL);
    if (st->ExitStopper_Type == NULL
        || PyModule_AddObjectRef(module, "ExitStopper",
                                 (PyObject *)st->ExitStopper_Type) < 0) {
        return -1;
    }
    st->Event_Type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &event_spec, NULL);
    if (st->Event_Type == NULL
        || PyModule_AddObjectRef(module, "Event",
                                 (PyObject *)st->Event_Type) < 0) {
        return -1;
    }
    st->CompletionQueue_Type = (PyTypeObject *)PyType_FromModuleAndSpec(
        module, &cq_spec, NULL);
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
#if EG_FREE_THREADED
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
         * slices there (wait.c). */
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
        eg__interp_release(st->rec);
        st->rec = NULL;
    }
}

static PyModuleDef_Slot eg_slots[] = {
    {Py_mod_exec, (void *)eg_exec},
    EG_SLOT_MULTIPLE_INTERPRETERS
    EG_SLOT_GIL
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
