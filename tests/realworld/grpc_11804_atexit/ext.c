/*
 * grpc_11804_atexit -- grpc/grpc#11804 "Python grpc client causes segfault at
 * interpreter shutdown", and the design its fix discussion proposed (grpc PR
 * #17621): keep the completion-queue poller a daemon thread, and from an atexit
 * handler "signal them to stop and block interpreter exit until they do".  The
 * same discussion names the catch: RPC handlers run on a concurrent.futures
 * ThreadPoolExecutor, and a handler blocked in a request iterator's __next__,
 * "waiting for another message to pop up from core", never returns -- and the
 * interpreter joins those (non-daemon, 3.9+) workers *before* atexit runs
 * (grpc#4969/#5084: the exit hangs in concurrent.futures' _python_exit).
 *
 * Here: a Server whose native core has one open client stream that sent three
 * messages and stays open; a daemon poller thread waits in native code (GIL
 * released) for incoming calls and hands each to the executor; the handler reads
 * the stream through a RequestIterator whose __next__ waits, GIL released, for the
 * next message from the core.  stop() cancels the streams (their iterators end),
 * shuts the queue down and joins the poller.
 *
 * Naive: stop() is registered with atexit.register, as proposed -- too late.
 * Port: stop() is an exit stopper (eg_stopper_add): phase 1 runs before the
 * interpreter waits for its threads.
 */
#include "rw.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

static struct {
    pthread_mutex_t lock;       /* guards everything below */
    pthread_cond_t cond;
    int calls_pending;          /* incoming calls not yet handed to the poller */
    int messages;               /* messages the client sent, not yet read */
    int closed;                 /* stop(): streams cancelled, queue shut down */
} core = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};

/* ---- RequestIterator ------------------------------------------------------- */

static PyTypeObject *RequestIterator_Type;

static PyObject *
RequestIterator_next(PyObject *self)
{
    (void)self;
    int got = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&core.lock);
    while (!core.closed && core.messages == 0) {
        pthread_cond_wait(&core.cond, &core.lock);   /* the next message from core */
    }
    if (core.messages > 0) {
        core.messages--;
        got = 1;
    }
    pthread_mutex_unlock(&core.lock);
    Py_END_ALLOW_THREADS
    if (!got) {
        return NULL;                    /* cancelled: StopIteration */
    }
    rw_bump(RW_DELIVERED);
    return rw_token_new();
}

static PyType_Slot RequestIterator_slots[] = {
    {Py_tp_iter, (void *)PyObject_SelfIter},
    {Py_tp_iternext, (void *)RequestIterator_next},
    {0, NULL},
};

static PyType_Spec RequestIterator_spec = {
    RW_MODNAME ".RequestIterator", sizeof(PyObject), 0, Py_TPFLAGS_DEFAULT,
    RequestIterator_slots,
};

/* ---- Server ------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    PyObject *executor, *handler, *poller;
    atomic_int stopped;         /* stop() from Python and the stopper may race */
#ifndef RW_NAIVE
    eg_stopper *stopper;
#endif
} Server;

/* _serve(server): the poller thread's body (a daemon Python thread). */
static PyObject *
py_serve(PyObject *m, PyObject *op)
{
    (void)m;
    Server *self = (Server *)op;
    for (;;) {
        int call = 0;
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&core.lock);
        while (!core.closed && core.calls_pending == 0) {
            pthread_cond_wait(&core.cond, &core.lock);
        }
        if (core.calls_pending > 0) {
            core.calls_pending--;
            call = 1;
        }
        pthread_mutex_unlock(&core.lock);
        Py_END_ALLOW_THREADS            /* grpc#11804's "with gil" */
        if (!call) {
            Py_RETURN_NONE;             /* shut down */
        }
        PyObject *it = PyType_GenericAlloc(RequestIterator_Type, 0);
        PyObject *f = it ? PyObject_CallMethod(self->executor, "submit", "OO",
                                               self->handler, it) : NULL;
        Py_XDECREF(it);
        if (f == NULL) {
            return NULL;
        }
        Py_DECREF(f);
        rw_bump(RW_CALLS);
    }
}

/* Cancel the streams, shut the queue down, join the poller.  Attached. */
static PyObject *
server_stop(Server *self)
{
    if (atomic_exchange(&self->stopped, 1)) {
        Py_RETURN_NONE;
    }
    pthread_mutex_lock(&core.lock);
    core.closed = 1;
    pthread_cond_broadcast(&core.cond);
    pthread_mutex_unlock(&core.lock);
    if (self->poller == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_CallMethod(self->poller, "join", NULL);   /* releases the GIL */
}

static PyObject *
Server_stop(PyObject *op, PyObject *unused)
{
    (void)unused;
    return server_stop((Server *)op);
}

#ifndef RW_NAIVE
static void
server_stopper(void *arg)               /* phase 1, attached */
{
    PyObject *r = server_stop((Server *)arg);
    if (r == NULL) {
        PyErr_WriteUnraisable((PyObject *)arg);
    }
    Py_XDECREF(r);
}
#endif

/* start(executor, handler): the poller thread, one client stream, the cleanup. */
static PyObject *
Server_start(PyObject *op, PyObject *args)
{
    Server *self = (Server *)op;
    PyObject *executor, *handler;
    if (!PyArg_ParseTuple(args, "OO", &executor, &handler)) {
        return NULL;
    }
    Py_XSETREF(self->executor, Py_NewRef(executor));
    Py_XSETREF(self->handler, Py_NewRef(handler));
    PyObject *mod = PyImport_ImportModule(RW_MODNAME);
    PyObject *serve = mod ? PyObject_GetAttrString(mod, "_serve") : NULL;
    PyObject *threading = serve ? PyImport_ImportModule("threading") : NULL;
    PyObject *cls = threading ? PyObject_GetAttrString(threading, "Thread") : NULL;
    PyObject *kw = cls ? Py_BuildValue("{s:O,s:(O),s:O,s:s}", "target", serve, "args", op,
                                       "daemon", Py_True, "name", "serve") : NULL;
    PyObject *empty = kw ? PyTuple_New(0) : NULL;
    PyObject *t = empty ? PyObject_Call(cls, empty, kw) : NULL;
    Py_XDECREF(empty);
    Py_XDECREF(kw);
    Py_XDECREF(cls);
    Py_XDECREF(threading);
    Py_XDECREF(serve);
    Py_XDECREF(mod);
    if (t == NULL) {
        return NULL;
    }
    Py_XSETREF(self->poller, t);
    PyObject *r = PyObject_CallMethod(t, "start", NULL);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
#ifdef RW_NAIVE
    /* grpc PR #17621's proposal: stop the server threads from atexit. */
    PyObject *stop = PyObject_GetAttrString(op, "stop");
    PyObject *atexit = stop ? PyImport_ImportModule("atexit") : NULL;
    r = atexit ? PyObject_CallMethod(atexit, "register", "O", stop) : NULL;
    Py_XDECREF(atexit);
    Py_XDECREF(stop);
    if (r == NULL) {
        return NULL;
    }
    Py_DECREF(r);
#else
    if (self->stopper == NULL) {
        self->stopper = eg_stopper_add(server_stopper, self);  /* borrowed */
        if (self->stopper == NULL) {
            return NULL;
        }
    }
#endif
    /* A client opens a stream, sends three messages, keeps it open. */
    pthread_mutex_lock(&core.lock);
    core.calls_pending++;
    core.messages += 3;
    rw_add(RW_EMITTED, 3);
    pthread_cond_broadcast(&core.cond);
    pthread_mutex_unlock(&core.lock);
    Py_RETURN_NONE;
}

static void
Server_dealloc(PyObject *op)
{
    Server *self = (Server *)op;
    PyTypeObject *tp = Py_TYPE(op);
#ifndef RW_NAIVE
    eg_stopper_remove(self->stopper);
#endif
    Py_XDECREF(self->executor);
    Py_XDECREF(self->handler);
    Py_XDECREF(self->poller);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyMethodDef Server_methods[] = {
    {"start", Server_start, METH_VARARGS, "Start serving on executor with handler."},
    {"stop", Server_stop, METH_NOARGS, "Cancel streams, shut down, join the poller."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Server_slots[] = {
    {Py_tp_new, (void *)PyType_GenericNew},
    {Py_tp_dealloc, (void *)Server_dealloc},
    {Py_tp_methods, Server_methods},
    {0, NULL},
};

static PyType_Spec Server_spec = {
    RW_MODNAME ".Server", sizeof(Server), 0, Py_TPFLAGS_DEFAULT, Server_slots,
};

static int
exec_module(PyObject *m)
{
    if (rw_exec(m) < 0) {
        return -1;
    }
    RequestIterator_Type = (PyTypeObject *)PyType_FromSpec(&RequestIterator_spec);
    PyObject *server = RequestIterator_Type ? PyType_FromSpec(&Server_spec) : NULL;
    if (server == NULL || PyModule_AddObjectRef(m, "Server", server) < 0) {
        Py_XDECREF(server);
        return -1;
    }
    Py_DECREF(server);
    return 0;
}

static PyMethodDef methods[] = {
    RW_COMMON_METHODS
    {"_serve", py_serve, METH_O, "The poller thread's body."},
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
