/*
 * cq_type.c -- exitguard.CompletionQueue: the Python face of a completion
 * queue (completion.c), which native threads post callbacks to and which
 * runs them attached -- on run(), or on an asyncio loop it is attached to
 * (loop.add_reader on its eventfd) -- and eg_cq_from_object, the C API's
 * way from the object to its queue.
 *
 * Every function here runs attached.  close() and the PEP 442 finalizer
 * detach the loop and then close the queue, which calls the pending
 * callbacks cancelled (phase 2 closes its interpreter's queues too:
 * completion.c); the finalizer runs while the object is whole, so a
 * callback that keeps a reference resurrects a closed but valid queue, and
 * deallocation only frees what closing left.  The object holds the loop by
 * reference (traversed and cleared for the GC); the queue holds only a
 * borrowed pointer back to its object.
 */
#include "py/py.h"
#include "core/record.h"
#include "core/completion.h"

#include <stddef.h>
#include <structmember.h>

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

PyType_Spec eg__cq_spec = {
    .name = "exitguard.CompletionQueue",
    .basicsize = sizeof(CQObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | EG__TPFLAGS_IMMUTABLE,
    .slots = cq_slots,
};

/* The C API accessor: attached. */
eg_cq *
eg_cq_from_object(PyObject *obj)
{
    eg__record *in = eg__record_current();
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
