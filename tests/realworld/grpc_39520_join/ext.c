/*
 * grpc_39520_join -- grpc/grpc#39520 "PythonFinalizationError: cannot join thread
 * at interpreter shutdown" (3.14.0b1; the same error in jumpstarter#636,
 * opengris-scaler#935, strands harness-sdk#2143).
 *
 * The report: grpc's asyncio layer polls its completion queue on a Python daemon
 * thread that spends its life in native code with the GIL released.  The last
 * channel going away shuts the queue down and joins that thread -- and when that
 * happens during finalization (a channel held by a module global, collected at
 * teardown), Thread.join() is no longer allowed: PythonFinalizationError, printed
 * as "Exception ignored", on 3.14.  Older versions join a thread that can no
 * longer come back to Python.
 *
 * Here a Channel owns a native "core" thread that completes calls (one per
 * millisecond) into a completion queue, and a Python daemon thread that polls the
 * queue with the GIL released and runs each call's callback.  Each call holds a
 * Token until its callback has run.  Channel's deallocation shuts everything down
 * and joins both threads.
 *
 * The port (docs/porting.md section 5): the channel registers an exit stopper
 * that does the same shutdown in phase 1, before finalization -- Thread.join is
 * legal there -- releasing the GIL while it joins the core thread; the calls'
 * objects are eg_refs.  Deallocation removes the stopper first.
 */
#include "rw.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

typedef struct call {
    struct call *next;
#ifdef RW_NAIVE
    PyObject *token;
#else
    eg_ref *token;
#endif
} call;

/* The native side: calls waiting in the core, completions waiting in the queue. */
typedef struct {
    pthread_mutex_t lock;       /* guards everything below */
    pthread_cond_t wake;        /* core: calls arrived / shutdown */
    pthread_cond_t ready;       /* poller: completions arrived / shutdown */
    call *pending, *completed;
    int shutdown;
    pthread_t core;
    int core_running;
} cq;

static void
list_push(call **head, call *c)
{
    c->next = NULL;
    while (*head) {
        head = &(*head)->next;
    }
    *head = c;
}

static void *
core_main(void *arg)
{
    cq *q = arg;
    rw_bump(RW_STARTED);
    pthread_mutex_lock(&q->lock);
    while (!q->shutdown) {
        if (q->pending == NULL) {
            pthread_cond_wait(&q->wake, &q->lock);
            continue;
        }
        call *c = q->pending;
        q->pending = c->next;
        list_push(&q->completed, c);
        pthread_cond_signal(&q->ready);
        pthread_mutex_unlock(&q->lock);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);           /* the network */
        pthread_mutex_lock(&q->lock);
    }
    pthread_mutex_unlock(&q->lock);
    rw_bump(RW_ENDED);
    return NULL;
}

static void
call_free(call *c)
{
#ifdef RW_NAIVE
    Py_DECREF(c->token);                /* attached: every caller holds the GIL */
#else
    eg_ref_release(c->token);
#endif
    free(c);
}

static void
cq_capsule_free(PyObject *capsule)
{
    cq *q = PyCapsule_GetPointer(capsule, "rw.cq");
    /* Both threads are gone (shutdown joined them) or were never started. */
    call *lists[2] = {q->pending, q->completed};
    for (int i = 0; i < 2; i++) {
        for (call *c = lists[i], *n; c; c = n) {
            n = c->next;
            call_free(c);
        }
    }
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->wake);
    pthread_cond_destroy(&q->ready);
    free(q);
}

/* _poll(capsule, callback): the poller thread's body (a Python thread). */
static PyObject *
py_poll(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *capsule, *callback;
    if (!PyArg_ParseTuple(args, "OO", &capsule, &callback)) {
        return NULL;
    }
    cq *q = PyCapsule_GetPointer(capsule, "rw.cq");
    if (q == NULL) {
        return NULL;
    }
    for (;;) {
        call *c = NULL;
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&q->lock);
        while (!q->shutdown && q->completed == NULL) {
            pthread_cond_wait(&q->ready, &q->lock);
        }
        if (!q->shutdown) {
            c = q->completed;
            q->completed = c->next;
        }
        pthread_mutex_unlock(&q->lock);
        Py_END_ALLOW_THREADS
        if (c == NULL) {
            Py_RETURN_NONE;             /* shut down */
        }
#ifdef RW_NAIVE
        PyObject *token = c->token;
#else
        PyObject *token = eg_ref_get(c->token);
#endif
        PyObject *r = token ? PyObject_CallOneArg(callback, token) : NULL;
        rw_bump(RW_CALLS);
        call_free(c);
        if (r == NULL) {
            return NULL;
        }
        Py_DECREF(r);
    }
}

typedef struct {
    PyObject_HEAD
    PyObject *capsule;          /* the cq */
    PyObject *thread;           /* the poller: threading.Thread */
    atomic_int shut;            /* the stopper and dealloc may both try */
#ifndef RW_NAIVE
    eg_stopper *stopper;
#endif
} Channel;

/* Shut the queue down and join both threads.  Attached; idempotent. */
static void
channel_shutdown(Channel *self)
{
    if (atomic_exchange(&self->shut, 1)) {
        return;
    }
    cq *q = PyCapsule_GetPointer(self->capsule, "rw.cq");
    pthread_mutex_lock(&q->lock);
    q->shutdown = 1;
    pthread_cond_broadcast(&q->wake);
    pthread_cond_broadcast(&q->ready);
    pthread_mutex_unlock(&q->lock);
    if (q->core_running) {
        Py_BEGIN_ALLOW_THREADS
        pthread_join(q->core, NULL);
        Py_END_ALLOW_THREADS
        q->core_running = 0;
    }
    /* grpc's PollerCompletionQueue.shutdown(): join the poller thread. */
    PyObject *r = PyObject_CallMethod(self->thread, "join", NULL);
    if (r == NULL) {
        PyErr_WriteUnraisable((PyObject *)self);
    }
    Py_XDECREF(r);
}

#ifndef RW_NAIVE
static void
channel_stop(void *arg)                 /* phase 1, attached */
{
    channel_shutdown((Channel *)arg);
}
#endif

static PyTypeObject *Channel_Type;

static PyObject *
Channel_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    PyObject *callback;
    if (kw != NULL || !PyArg_ParseTuple(args, "O", &callback)) {
        return PyErr_Format(PyExc_TypeError, "Channel(callback)");
    }
    cq *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        return PyErr_NoMemory();
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->wake, NULL);
    pthread_cond_init(&q->ready, NULL);
    PyObject *capsule = PyCapsule_New(q, "rw.cq", cq_capsule_free);
    if (capsule == NULL) {
        free(q);
        return NULL;
    }
    Channel *self = (Channel *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        Py_DECREF(capsule);
        return NULL;
    }
    self->capsule = capsule;
    if (pthread_create(&q->core, NULL, core_main, q) != 0) {
        Py_DECREF(self);
        return PyErr_Format(PyExc_OSError, "cannot start the core thread");
    }
    q->core_running = 1;
    /* threading.Thread(target=_poll, args=(capsule, callback), daemon=True) */
    PyObject *mod = PyImport_ImportModule(RW_MODNAME);
    PyObject *poll = mod ? PyObject_GetAttrString(mod, "_poll") : NULL;
    PyObject *threading = PyImport_ImportModule("threading");
    PyObject *cls = threading ? PyObject_GetAttrString(threading, "Thread") : NULL;
    PyObject *kwargs = poll ? Py_BuildValue("{s:O,s:(OO),s:O,s:s}", "target", poll, "args",
                                            capsule, callback, "daemon", Py_True,
                                            "name", "poller") : NULL;
    PyObject *empty = PyTuple_New(0);
    self->thread = (cls && kwargs && empty) ? PyObject_Call(cls, empty, kwargs) : NULL;
    Py_XDECREF(empty);
    Py_XDECREF(kwargs);
    Py_XDECREF(cls);
    Py_XDECREF(threading);
    Py_XDECREF(poll);
    Py_XDECREF(mod);
    PyObject *r = self->thread ? PyObject_CallMethod(self->thread, "start", NULL) : NULL;
    if (r == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    Py_DECREF(r);
#ifndef RW_NAIVE
    /* Borrowed: the stopper must not keep the channel alive; dealloc removes it. */
    self->stopper = eg_stopper_add(channel_stop, self);
    if (self->stopper == NULL) {
        Py_DECREF(self);
        return NULL;
    }
#endif
    return (PyObject *)self;
}

static PyObject *
Channel_call(PyObject *op, PyObject *token)
{
    Channel *self = (Channel *)op;
    call *c = malloc(sizeof(*c));
    if (c == NULL) {
        return PyErr_NoMemory();
    }
#ifdef RW_NAIVE
    c->token = Py_NewRef(token);
#else
    c->token = eg_ref_new(token);
    if (c->token == NULL) {
        free(c);
        return NULL;
    }
#endif
    cq *q = PyCapsule_GetPointer(self->capsule, "rw.cq");
    pthread_mutex_lock(&q->lock);
    list_push(&q->pending, c);
    pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->lock);
    Py_RETURN_NONE;
}

static void
Channel_dealloc(PyObject *op)
{
    Channel *self = (Channel *)op;
    PyTypeObject *tp = Py_TYPE(op);
#ifndef RW_NAIVE
    eg_stopper_remove(self->stopper);   /* first: phase 1 cannot start it now */
#endif
    if (self->capsule != NULL && self->thread != NULL) {
        channel_shutdown(self);         /* the last channel: shut down, join */
    }
    Py_XDECREF(self->thread);
    Py_XDECREF(self->capsule);
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyMethodDef Channel_methods[] = {
    {"call", Channel_call, METH_O, "Start a call holding token until it completes."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Channel_slots[] = {
    {Py_tp_new, (void *)Channel_new},
    {Py_tp_dealloc, (void *)Channel_dealloc},
    {Py_tp_methods, Channel_methods},
    {0, NULL},
};

static PyType_Spec Channel_spec = {
    RW_MODNAME ".Channel", sizeof(Channel), 0, Py_TPFLAGS_DEFAULT, Channel_slots,
};

static int
exec_module(PyObject *m)
{
    if (rw_exec(m) < 0) {
        return -1;
    }
    Channel_Type = (PyTypeObject *)PyType_FromSpec(&Channel_spec);
    if (Channel_Type == NULL
        || PyModule_AddObjectRef(m, "Channel", (PyObject *)Channel_Type) < 0) {
        return -1;
    }
    return 0;
}

static PyMethodDef methods[] = {
    RW_COMMON_METHODS
    {"_poll", py_poll, METH_VARARGS, "The poller thread's body."},
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
