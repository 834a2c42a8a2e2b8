/*
 * ticker.c -- an example extension with native worker threads, written the
 * way extension authors write them, in two builds from one source:
 *
 *   ticker        (default) uses exitguard through its capsule C API only:
 *                 references held as eg_ref, dropped without the GIL with
 *                 eg_ref_release / eg_decref, callbacks through
 *                 eg_gil_ensure, threads stopped and joined by an exit
 *                 stopper with the GIL released, logging with eg_log;
 *   ticker_naive  (-DTICKER_NAIVE) the same workload on the raw CPython API:
 *                 PyGILState_Ensure around every Python touch, and nothing
 *                 at exit -- what most extensions do today.
 *
 * Workers take Python objects that Python code feeds in, "process" them
 * (a short spin), drop them, and every `tick_every` items call the Python
 * callback on_tick(n).  They run without the GIL; all shared state here is
 * protected by this file's own mutex and atomics, never by the GIL.
 *
 * Which thread runs what:
 *   module functions and methods   attached (called from Python)
 *   worker_main                    worker threads, not attached except
 *                                  inside eg_gil_ensure/PyGILState_Ensure
 *   ticker_stop_cb                 exitguard's phase 1, attached; releases
 *                                  the GIL while it joins
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef TICKER_NAIVE
#  include <exitguard.h>
#  define MODNAME "ticker"
#  define INITFUNC PyInit_ticker
#else
#  define MODNAME "ticker_naive"
#  define INITFUNC PyInit_ticker_naive
#endif

#if PY_VERSION_HEX < 0x030A0000
/* Py_NewRef arrived in 3.10 (bpo-42262). */
static inline PyObject *
ticker_newref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#  define Py_NewRef ticker_newref
#endif

/* ---- The hand-off queue (the example's own lock) ------------------------- */

typedef struct {
#ifndef TICKER_NAIVE
    eg_ref *ref;        /* feed(): a registered reference */
    eg_ref *future;     /* submit(): resolve this future with ref's object */
    eg_cq *cq;          /* ... through this completion queue */
#endif
    PyObject *raw;      /* feed_raw(): a strong reference we own */
} item_t;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;           /* protects items, head, len, cap, stop */
    pthread_cond_t cond;
    item_t *items;
    size_t head, len, cap;
    int stop;
    int joined;                     /* under lock */
    pthread_t *tids;
    int nthreads;
    long spin;
    long tick_every;
#ifndef TICKER_NAIVE
    eg_stopper *stopper;
    eg_ref *on_tick;                /* callable, or NULL */
    eg_interp *interp;
    eg_ref **held;                  /* hold(): never released by us */
    size_t nheld, capheld;
#else
    PyObject *on_tick;
#endif
    atomic_long fed, processed, ticks, ticks_refused;
    atomic_int stopped_by_exitguard;
} Ticker;

/* ---- Workers: no GIL ------------------------------------------------------- */

#ifndef TICKER_NAIVE
/* Runs on the loop's thread, attached (or cancelled at exit): the result
 * of a submitted item is the object itself. */
static PyObject *
build_result(void *arg, int cancelled, int *is_exception)
{
    eg_ref *ref = arg;
    PyObject *obj = cancelled ? NULL : eg_ref_get(ref);
    PyObject *result = obj ? Py_NewRef(obj) : NULL;
    (void)is_exception;
    eg_ref_release(ref);
    if (!cancelled && result == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "the object was released");
    }
    return result;
}
#endif

static void
drop_item(item_t it)
{
#ifndef TICKER_NAIVE
    if (it.future != NULL) {
        /* Hand the result to the loop; on refusal (queue closed) we still
         * own both references. */
        if (eg_cq_post_future(it.cq, it.future, build_result, it.ref) < 0) {
            eg_ref_release(it.future);
            eg_ref_release(it.ref);
        }
        return;
    }
    if (it.ref != NULL) {
        eg_ref_release(it.ref);     /* any thread, no GIL */
    }
    else {
        eg_decref(it.raw);          /* queued: applied by an attached thread */
    }
#else
    PyGILState_STATE g = PyGILState_Ensure();
    Py_DECREF(it.raw);
    PyGILState_Release(g);
#endif
}

static void
tick(Ticker *t, long n)
{
    if (t->on_tick == NULL) {
        return;
    }
#ifndef TICKER_NAIVE
    eg_gil st;
    if (eg_gil_ensure(t->interp, &st) != 0) {
        atomic_fetch_add(&t->ticks_refused, 1);   /* shutting down: skip */
        return;
    }
    PyObject *cb = eg_ref_get(t->on_tick);
    PyObject *r = cb ? PyObject_CallFunction(cb, "l", n) : NULL;
#else
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *r = PyObject_CallFunction(t->on_tick, "l", n);
#endif
    if (r == NULL && PyErr_Occurred()) {
        PyErr_WriteUnraisable(NULL);
    }
    Py_XDECREF(r);
    atomic_fetch_add(&t->ticks, 1);
#ifndef TICKER_NAIVE
    eg_gil_release(&st);
#else
    PyGILState_Release(g);
#endif
}

static void *
worker_main(void *arg)
{
    Ticker *t = arg;
    for (;;) {
        pthread_mutex_lock(&t->lock);
        while (t->len == 0 && !t->stop) {
            pthread_cond_wait(&t->cond, &t->lock);
        }
        if (t->len == 0) {          /* stop requested and nothing left */
            pthread_mutex_unlock(&t->lock);
            break;
        }
        item_t it = t->items[t->head];
        t->head = (t->head + 1) % t->cap;
        t->len--;
        int stopping = t->stop;
        pthread_mutex_unlock(&t->lock);

        if (!stopping) {
            for (volatile long i = 0; i < t->spin; i++) {
            }
        }
        drop_item(it);
        long n = atomic_fetch_add(&t->processed, 1) + 1;
        if (t->tick_every > 0 && n % t->tick_every == 0 && !stopping) {
            tick(t, n);
        }
    }
#ifndef TICKER_NAIVE
    eg_log(EG_LOG_INFO, "ticker", "worker stopping; %ld items processed in all",
           atomic_load(&t->processed));
#endif
    return NULL;
}

/* Ask the workers to stop and join them, GIL released.  Attached;
 * idempotent.  Workers drain and drop what is still queued first. */
static void
ticker_stop_join(Ticker *t)
{
    pthread_mutex_lock(&t->lock);
    if (t->joined) {
        pthread_mutex_unlock(&t->lock);
        return;
    }
    t->joined = 1;
    t->stop = 1;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->lock);
    /* Never wait while attached: a worker may need the GIL to finish. */
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < t->nthreads; i++) {
        pthread_join(t->tids[i], NULL);
    }
    Py_END_ALLOW_THREADS
}

#ifndef TICKER_NAIVE
/* exitguard phase 1, attached: stop the workers before the interpreter
 * joins its own threads. */
static void
ticker_stop_cb(void *arg)
{
    Ticker *t = arg;
    atomic_store(&t->stopped_by_exitguard, 1);
    ticker_stop_join(t);
}
#endif

/* ---- The type ------------------------------------------------------------------ */

static PyObject *
ticker_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"nthreads", "spin", "on_tick", "tick_every",
                             NULL};
    int nthreads = 4;
    long spin = 0, tick_every = 0;
    PyObject *on_tick = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|ilOl", kwlist,
                                     &nthreads, &spin, &on_tick,
                                     &tick_every)) {
        return NULL;
    }
    if (nthreads < 1 || nthreads > 256 || spin < 0 || tick_every < 0) {
        PyErr_SetString(PyExc_ValueError,
                        "nthreads must be 1..256; spin and tick_every >= 0");
        return NULL;
    }
    if (on_tick != Py_None && !PyCallable_Check(on_tick)) {
        PyErr_SetString(PyExc_TypeError, "on_tick must be callable or None");
        return NULL;
    }
    Ticker *t = (Ticker *)type->tp_alloc(type, 0);
    if (t == NULL) {
        return NULL;
    }
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    t->spin = spin;
    t->tick_every = tick_every;
    t->cap = 1024;
    t->items = malloc(sizeof(item_t) * t->cap);
    t->tids = calloc((size_t)nthreads, sizeof(pthread_t));
    if (t->items == NULL || t->tids == NULL) {
        Py_DECREF(t);
        return PyErr_NoMemory();
    }
#ifndef TICKER_NAIVE
    t->interp = eg_interp_current();
    if (t->interp == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    if (on_tick != Py_None && (t->on_tick = eg_ref_new(on_tick)) == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    /* Borrowed `t`: dealloc removes the stopper before freeing. */
    t->stopper = eg_stopper_add(ticker_stop_cb, t);
    if (t->stopper == NULL) {
        Py_DECREF(t);
        return NULL;
    }
#else
    if (on_tick != Py_None) {
        t->on_tick = Py_NewRef(on_tick);
    }
#endif
    for (int i = 0; i < nthreads; i++) {
        if (pthread_create(&t->tids[i], NULL, worker_main, t) != 0) {
            t->nthreads = i;
            Py_DECREF(t);
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        char name[16];
        snprintf(name, sizeof(name), "ticker-%d", i & 0xff);
        pthread_setname_np(t->tids[i], name);
        t->nthreads = i + 1;
    }
    return (PyObject *)t;
}

/* Attached: append under the lock, growing the ring. */
static int
push_item(Ticker *t, item_t it)
{
    pthread_mutex_lock(&t->lock);
    if (t->stop) {
        pthread_mutex_unlock(&t->lock);
        PyErr_SetString(PyExc_RuntimeError, "the ticker is stopped");
        return -1;
    }
    if (t->len == t->cap) {
        size_t cap = t->cap * 2;
        item_t *grown = malloc(sizeof(item_t) * cap);
        if (grown == NULL) {
            pthread_mutex_unlock(&t->lock);
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = 0; i < t->len; i++) {
            grown[i] = t->items[(t->head + i) % t->cap];
        }
        free(t->items);
        t->items = grown;
        t->head = 0;
        t->cap = cap;
    }
    t->items[(t->head + t->len) % t->cap] = it;
    t->len++;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    atomic_fetch_add(&t->fed, 1);
    return 0;
}

static int
feed_one(Ticker *t, PyObject *obj, int as_ref)
{
    item_t it;
    memset(&it, 0, sizeof(it));
#ifndef TICKER_NAIVE
    if (as_ref) {
        it.ref = eg_ref_new(obj);
        if (it.ref == NULL) {
            return -1;
        }
    }
    else
#endif
    {
        (void)as_ref;
        it.raw = Py_NewRef(obj);
    }
    if (push_item(t, it) < 0) {
#ifndef TICKER_NAIVE
        if (it.ref) {
            eg_ref_release(it.ref);
            return -1;
        }
#endif
        Py_DECREF(it.raw);
        return -1;
    }
    return 0;
}

static PyObject *
ticker_feed(Ticker *t, PyObject *obj)
{
    return feed_one(t, obj, 1) < 0 ? NULL : Py_NewRef(Py_None);
}

static PyObject *
ticker_feed_raw(Ticker *t, PyObject *obj)
{
    return feed_one(t, obj, 0) < 0 ? NULL : Py_NewRef(Py_None);
}

#ifndef TICKER_NAIVE
/* submit(queue, future, obj): a worker processes obj, then resolves
 * future with it through the CompletionQueue (eg_cq_post_future). */
static PyObject *
ticker_submit(Ticker *t, PyObject *args)
{
    PyObject *cqobj, *future, *obj;
    if (!PyArg_ParseTuple(args, "OOO", &cqobj, &future, &obj)) {
        return NULL;
    }
    item_t it;
    memset(&it, 0, sizeof(it));
    if ((it.cq = eg_cq_from_object(cqobj)) == NULL
            || (it.future = eg_ref_new(future)) == NULL) {
        return NULL;
    }
    if ((it.ref = eg_ref_new(obj)) == NULL) {
        eg_ref_release(it.future);
        return NULL;
    }
    if (push_item(t, it) < 0) {
        eg_ref_release(it.future);
        eg_ref_release(it.ref);
        return NULL;
    }
    Py_RETURN_NONE;
}
#endif

static PyObject *
ticker_feed_many(Ticker *t, PyObject *iterable)
{
    PyObject *it = PyObject_GetIter(iterable);
    if (it == NULL) {
        return NULL;
    }
    long n = 0;
    PyObject *obj;
    while ((obj = PyIter_Next(it)) != NULL) {
        int rc = feed_one(t, obj, (int)(n & 1));   /* alternate ref / raw */
        Py_DECREF(obj);
        if (rc < 0) {
            Py_DECREF(it);
            return NULL;
        }
        n++;
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromLong(n);
}

static PyObject *
ticker_stop(Ticker *t, PyObject *Py_UNUSED(ignored))
{
    ticker_stop_join(t);
    Py_RETURN_NONE;
}

#ifndef TICKER_NAIVE
static PyObject *
ticker_hold(Ticker *t, PyObject *obj)
{
    if (t->nheld == t->capheld) {
        size_t cap = t->capheld ? t->capheld * 2 : 16;
        eg_ref **grown = realloc(t->held, cap * sizeof(*grown));
        if (grown == NULL) {
            return PyErr_NoMemory();
        }
        t->held = grown;
        t->capheld = cap;
    }
    eg_ref *r = eg_ref_new(obj);
    if (r == NULL) {
        return NULL;
    }
    t->held[t->nheld++] = r;
    Py_RETURN_NONE;
}

static PyObject *
ticker_held_get(Ticker *t, PyObject *Py_UNUSED(ignored))
{
    PyObject *list = PyList_New((Py_ssize_t)t->nheld);
    if (list == NULL) {
        return NULL;
    }
    for (size_t i = 0; i < t->nheld; i++) {
        PyObject *o = eg_ref_get(t->held[i]);
        PyList_SET_ITEM(list, (Py_ssize_t)i, Py_NewRef(o ? o : Py_None));
    }
    return list;
}

static void *
release_held_main(void *arg)
{
    Ticker *t = arg;
    for (size_t i = 0; i < t->nheld; i++) {
        eg_ref_release(t->held[i]);     /* no GIL; after stop: memory only */
    }
    return NULL;
}

static PyObject *
ticker_release_held_in_thread(Ticker *t, PyObject *Py_UNUSED(ignored))
{
    pthread_t tid;
    if (pthread_create(&tid, NULL, release_held_main, t) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(tid, NULL);
    Py_END_ALLOW_THREADS
    size_t n = t->nheld;
    t->nheld = 0;
    return PyLong_FromSize_t(n);
}
#endif

static PyObject *
ticker_stats(Ticker *t, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&t->lock);
    int stopped = t->stop;
    pthread_mutex_unlock(&t->lock);
    return Py_BuildValue("{s:l,s:l,s:l,s:l,s:i,s:O,s:O}",
                         "fed", atomic_load(&t->fed),
                         "processed", atomic_load(&t->processed),
                         "ticks", atomic_load(&t->ticks),
                         "ticks_refused", atomic_load(&t->ticks_refused),
                         "threads", t->nthreads,
                         "stopped", stopped ? Py_True : Py_False,
                         "stopped_by_exitguard",
                         atomic_load(&t->stopped_by_exitguard) ? Py_True
                                                               : Py_False);
}

static void
ticker_dealloc(Ticker *t)
{
    PyTypeObject *tp = Py_TYPE(t);
#ifndef TICKER_NAIVE
    /* First unregister (waits if phase 1 is running our stopper), then
     * stop; from here nothing else refers to t. */
    eg_stopper_remove(t->stopper);
#endif
    if (t->tids != NULL && t->nthreads > 0) {
        ticker_stop_join(t);
    }
#ifndef TICKER_NAIVE
    for (size_t i = 0; i < t->nheld; i++) {
        eg_ref_release(t->held[i]);
    }
    free(t->held);
    eg_ref_release(t->on_tick);
    eg_interp_close(t->interp);
#else
    Py_XDECREF(t->on_tick);
#endif
    free(t->items);
    free(t->tids);
    pthread_mutex_destroy(&t->lock);
    pthread_cond_destroy(&t->cond);
    tp->tp_free((PyObject *)t);
    Py_DECREF(tp);
}

static PyMethodDef ticker_methods[] = {
    {"feed", (PyCFunction)ticker_feed, METH_O,
     "Hand one object to the workers (held as an eg_ref)."},
    {"feed_raw", (PyCFunction)ticker_feed_raw, METH_O,
     "Hand one object over as a raw strong reference (dropped with "
     "eg_decref)."},
    {"feed_many", (PyCFunction)ticker_feed_many, METH_O,
     "Feed every item of an iterable, alternating feed and feed_raw."},
    {"stop", (PyCFunction)ticker_stop, METH_NOARGS,
     "Stop the workers and join them (idempotent)."},
#ifndef TICKER_NAIVE
    {"submit", (PyCFunction)ticker_submit, METH_VARARGS,
     "submit(queue, future, obj): process obj natively, then resolve future "
     "with it through the CompletionQueue (keep a reference to the queue)."},
    {"hold", (PyCFunction)ticker_hold, METH_O,
     "Keep an eg_ref to obj that the ticker never releases."},
    {"held_get", (PyCFunction)ticker_held_get, METH_NOARGS,
     "eg_ref_get() of every held reference (None once released)."},
    {"release_held_in_thread", (PyCFunction)ticker_release_held_in_thread,
     METH_NOARGS, "Release every held reference from a native thread."},
#endif
    {"stats", (PyCFunction)ticker_stats, METH_NOARGS, "Counters."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot ticker_slots[] = {
    {Py_tp_new, ticker_new},
    {Py_tp_dealloc, ticker_dealloc},
    {Py_tp_methods, ticker_methods},
    {Py_tp_doc, (void *)"Ticker(nthreads=4, spin=0, on_tick=None, "
                        "tick_every=0): native workers that take objects."},
    {0, NULL},
};

static PyType_Spec ticker_spec = {
    .name = MODNAME ".Ticker",
    .basicsize = sizeof(Ticker),
    .flags = Py_TPFLAGS_DEFAULT,
    .slots = ticker_slots,
};

static int
ticker_exec(PyObject *m)
{
#ifndef TICKER_NAIVE
    if (eg_import() < 0) {
        return -1;
    }
#endif
    PyObject *type = PyType_FromSpec(&ticker_spec);
    if (type == NULL) {
        return -1;
    }
    int rc = PyModule_AddObject(m, "Ticker", type);
    if (rc < 0) {
        Py_DECREF(type);
    }
    return rc;
}

static PyModuleDef_Slot ticker_module_slots[] = {
    {Py_mod_exec, (void *)ticker_exec},
#if PY_VERSION_HEX >= 0x030D0000
    /* Shared state is guarded by our own mutex and atomics. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef ticker_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = MODNAME,
    .m_doc = "Native worker threads that take Python objects: an exitguard "
             "example.",
    .m_size = 0,
    .m_slots = ticker_module_slots,
};

PyMODINIT_FUNC
INITFUNC(void)
{
    return PyModuleDef_Init(&ticker_module);
}
