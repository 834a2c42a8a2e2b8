/*
 * event_type.c -- exitguard.Event: the Python face of eg_event (event.c), an
 * event that native threads and signal handlers set and that Python waits
 * on with the GIL released.
 *
 * Every function here runs attached.  The object holds only its eg_event;
 * the shape of the wait (the GIL released around the blocking call only,
 * signal handlers run when it is interrupted, the time left recomputed from
 * a deadline) is event.c's.  This file is the boundary between the two error
 * conventions: it checks the timeout argument and turns eg_event_wait's
 * result into True, False, StoppingError (phase 1 has begun, so a waiting
 * thread never blocks exit) or the signal handler's exception.  It also
 * holds eg__no_args, the argument check CompletionQueue() shares (py.h).
 */
#include "py/py.h"
#include "base/platform.h"
#include "core/record.h"

#include <errno.h>
#include <math.h>

/* ---- Event ------------------------------------------------------------------ */

int
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

PyType_Spec eg__event_spec = {
    .name = "exitguard.Event",
    .basicsize = sizeof(EventObject),
    .flags = Py_TPFLAGS_DEFAULT | EG__TPFLAGS_IMMUTABLE,
    .slots = event_slots,
};
