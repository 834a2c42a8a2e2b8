/*
 * pycyphal_202_loop_closed -- OpenCyphal/pycyphal#202 "Worker threads should
 * automatically terminate when the event loop is closed" (and #224; the same
 * RuntimeError in home-assistant/core#46336 and ramses_rf PR #824).
 *
 * The report: a media driver's reader thread (SocketCAN) hands every frame it reads
 * to asyncio with loop.call_soon_threadsafe(handler, frames).  After asyncio.run()
 * has closed the loop the thread keeps reading, and every delivery fails:
 * "thread failure: Event loop is closed" with a traceback in the log -- and the
 * thread is still there when the interpreter finalizes.
 *
 * Here: Media(loop, handler) starts a native reader thread that "reads" a frame
 * every millisecond and delivers it.  Naive: attach, call_soon_threadsafe, log the
 * failure with its traceback (logging.exception, as the driver does) and go on.
 *
 * The port: frames are posted to an exitguard.CompletionQueue attached to the loop
 * (eg_cq_post: no GIL, no lock); a callback runs on the loop, or is called
 * cancelled when the queue closes (at the latest in exitguard's phase 2) -- never
 * against a closed loop.  The reader is an eg_thread, stopped and joined in
 * phase 1.
 */
#include "rw.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

typedef struct {
    PyObject_HEAD
    atomic_int stop;
    pthread_t tid;
#ifdef RW_NAIVE
    PyObject *loop, *handler, *log_exception;
#else
    eg_ref *handler;
    eg_ref *cq_obj;                     /* the exitguard.CompletionQueue */
    eg_cq *cq;
    eg_thread *thread;
#endif
} Media;

static void
frame_sleep(void)
{
    struct timespec ms = {0, 1000000};
    nanosleep(&ms, NULL);
}

#ifdef RW_NAIVE
static void *
reader_main(void *arg)
{
    Media *self = arg;
    rw_bump(RW_STARTED);
    for (long n = 0; !atomic_load(&self->stop); n++) {
        frame_sleep();                  /* recv() on the CAN socket */
        rw_bump(RW_EMITTED);
        PyGILState_STATE g = PyGILState_Ensure();
        PyObject *r = PyObject_CallMethod(self->loop, "call_soon_threadsafe", "Ol",
                                          self->handler, n);
        if (r == NULL) {
            /* "SocketCANMedia thread failure: Event loop is closed" + traceback */
            PyObject *t, *v, *tb;
            PyErr_Fetch(&t, &v, &tb);
            PyErr_NormalizeException(&t, &v, &tb);
            PyObject *msg = Py_NewRef(v ? v : Py_None);
            PyErr_SetExcInfo(t, v, tb);         /* "handled": logging.exception sees it */
            PyObject *res = PyObject_CallFunction(self->log_exception, "sO",
                                                  "Media thread failure: %s", msg);
            if (res == NULL) {
                PyErr_Clear();
            }
            Py_XDECREF(res);
            Py_DECREF(msg);
            PyErr_SetExcInfo(NULL, NULL, NULL);
            rw_bump(RW_DROPPED);
        }
        Py_XDECREF(r);
        PyGILState_Release(g);
    }
    rw_bump(RW_ENDED);
    return NULL;
}
#else
/* Runs on the loop (attached) -- or cancelled, when the queue is closed. */
static void
deliver(void *arg, int cancelled)
{
    Media *self = arg;
    if (cancelled) {
        rw_bump(RW_DROPPED);            /* never against a closed loop */
        return;
    }
    PyObject *handler = eg_ref_get(self->handler);
    PyObject *r = handler ? PyObject_CallFunction(handler, "l", 0L) : NULL;
    if (r == NULL && PyErr_Occurred()) {
        PyErr_WriteUnraisable(handler);
    }
    Py_XDECREF(r);
    rw_bump(RW_DELIVERED);
}

static void
reader_main(void *arg)
{
    Media *self = arg;
    rw_bump(RW_STARTED);
    while (!atomic_load(&self->stop) && !eg_thread_stop_requested()) {
        frame_sleep();
        rw_bump(RW_EMITTED);
        if (eg_cq_post(self->cq, deliver, self) != 0) {
            rw_bump(RW_DROPPED);        /* the queue is closed: stop reading */
            break;
        }
    }
    rw_bump(RW_ENDED);
}

static void
reader_stop(void *arg)
{
    atomic_store(&((Media *)arg)->stop, 1);
}
#endif

static PyObject *
Media_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    PyObject *loop, *handler;
    if (kw != NULL || !PyArg_ParseTuple(args, "OO", &loop, &handler)) {
        return PyErr_Format(PyExc_TypeError, "Media(loop, handler)");
    }
    Media *self = (Media *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        return NULL;
    }
#ifdef RW_NAIVE
    PyObject *logging = PyImport_ImportModule("logging");
    PyObject *logger = logging ? PyObject_CallMethod(logging, "getLogger", "s", "media")
                               : NULL;
    self->log_exception = logger ? PyObject_GetAttrString(logger, "exception") : NULL;
    Py_XDECREF(logger);
    Py_XDECREF(logging);
    if (self->log_exception == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->loop = Py_NewRef(loop);
    self->handler = Py_NewRef(handler);
    Py_INCREF(self);                    /* the reader thread's reference, never dropped */
    if (pthread_create(&self->tid, NULL, reader_main, self) != 0) {
        Py_DECREF(self);
        Py_DECREF(self);
        return PyErr_Format(PyExc_OSError, "cannot start the reader");
    }
    pthread_detach(self->tid);
#else
    PyObject *exitguard = PyImport_ImportModule("exitguard");
    PyObject *cq = exitguard ? PyObject_CallMethod(exitguard, "CompletionQueue", NULL) : NULL;
    PyObject *r = cq ? PyObject_CallMethod(cq, "attach", "O", loop) : NULL;
    Py_XDECREF(exitguard);
    if (r == NULL) {
        Py_XDECREF(cq);
        Py_DECREF(self);
        return NULL;
    }
    Py_DECREF(r);
    self->cq = eg_cq_from_object(cq);
    self->cq_obj = eg_ref_new(cq);      /* keeps the queue alive for the reader */
    Py_DECREF(cq);
    self->handler = eg_ref_new(handler);
    if (self->cq == NULL || self->cq_obj == NULL || self->handler == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    Py_INCREF(self);                    /* the reader's; the thread never drops it */
    int rc = eg_thread_start(&self->thread, "can-reader", reader_main, reader_stop, self);
    if (rc != 0) {
        Py_DECREF(self);
        Py_DECREF(self);
        return PyErr_Format(PyExc_OSError, "cannot start the reader: %s", eg_strerror(rc));
    }
#endif
    return (PyObject *)self;
}

static PyType_Slot Media_slots[] = {
    {Py_tp_new, (void *)Media_new},
    {0, NULL},
};

static PyType_Spec Media_spec = {
    RW_MODNAME ".Media", sizeof(Media), 0, Py_TPFLAGS_DEFAULT, Media_slots,
};

static int
exec_module(PyObject *m)
{
    if (rw_exec(m) < 0) {
        return -1;
    }
    PyObject *t = PyType_FromSpec(&Media_spec);
    if (t == NULL || PyModule_AddObjectRef(m, "Media", t) < 0) {
        Py_XDECREF(t);
        return -1;
    }
    Py_DECREF(t);
    return 0;
}

static PyMethodDef methods[] = {
    RW_COMMON_METHODS
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)exec_module},
    RW_SLOT_GIL
    {0, NULL},
};

static struct PyModuleDef def = {
    PyModuleDef_HEAD_INIT, RW_MODNAME, NULL, 0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC
RW_INITFUNC(void)
{
    return PyModuleDef_Init(&def);
}
