/*
 * _egbench.c -- the native side of exitguard's benchmarks, with the baselines
 * they are compared against, all measured in the same process and run.
 *
 * Baselines written here (not exitguard code):
 *   pool      PyO3's design: one global mutex-protected growable vector of
 *             PyObject* that producers push to and an attached thread drains;
 *   gs_kept   PyGILState_Ensure / Py_DECREF / PyGILState_Release per object on
 *             a thread that keeps its thread state (an outer Ensure held);
 *   gs_new    the same with a new thread state every time.
 *
 * Every timed loop runs on native threads (or the calling thread where the
 * benchmark is about an attached caller) and reports nanoseconds per
 * operation from CLOCK_MONOTONIC around the loop.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <exitguard.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double
now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* ---- the PyO3-style pool baseline ------------------------------------------ */

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static PyObject **pool_items;
static size_t pool_len, pool_cap;
static atomic_int pool_dirty;

static void
pool_push(PyObject *o)
{
    atomic_store_explicit(&pool_dirty, 1, memory_order_relaxed);
    pthread_mutex_lock(&pool_lock);
    if (pool_len == pool_cap) {
        pool_cap = pool_cap ? pool_cap * 2 : 1024;
        pool_items = realloc(pool_items, pool_cap * sizeof(PyObject *));
    }
    pool_items[pool_len++] = o;
    pthread_mutex_unlock(&pool_lock);
}

static Py_ssize_t
pool_drain(void)       /* attached */
{
    if (!atomic_exchange(&pool_dirty, 0)) {
        return 0;
    }
    pthread_mutex_lock(&pool_lock);
    PyObject **items = pool_items;
    size_t n = pool_len;
    pool_items = NULL;
    pool_len = pool_cap = 0;
    pthread_mutex_unlock(&pool_lock);
    for (size_t i = 0; i < n; i++) {
        Py_DECREF(items[i]);
    }
    free(items);
    return (Py_ssize_t)n;
}

/* ---- benchmark 1: deferred-decref enqueue from native threads ---------------- */

enum { M_EG, M_POOL, M_GS_KEPT, M_GS_NEW };

typedef struct {
    int mode;
    long n;
    PyObject *obj;
    atomic_int *go;
    double ns;
} enq_t;

static void *
enq_main(void *arg)
{
    enq_t *e = arg;
    PyGILState_STATE outer = 0;
    PyThreadState *kept = NULL;
    if (e->mode == M_GS_KEPT) {           /* keep a thread state alive */
        outer = PyGILState_Ensure();
        kept = PyEval_SaveThread();
    }
    while (!atomic_load(e->go)) {
    }
    double t0 = now_ns();
    switch (e->mode) {
    case M_EG:
        for (long i = 0; i < e->n; i++) {
            eg_decref(e->obj);
        }
        break;
    case M_POOL:
        for (long i = 0; i < e->n; i++) {
            pool_push(e->obj);
        }
        break;
    default:
        for (long i = 0; i < e->n; i++) {
            PyGILState_STATE g = PyGILState_Ensure();
            Py_DECREF(e->obj);
            PyGILState_Release(g);
        }
    }
    e->ns = (now_ns() - t0) / (double)e->n;
    if (kept != NULL) {
        PyEval_RestoreThread(kept);
        PyGILState_Release(outer);
    }
    return NULL;
}

/* enqueue(mode, nthreads, n_per_thread) -> mean ns/op per thread.  The
 * queued decrefs are applied afterwards (flush / pool drain), attached. */
static PyObject *
b_enqueue(PyObject *m, PyObject *args)
{
    (void)m;
    int mode, nthreads;
    long n;
    if (!PyArg_ParseTuple(args, "iil", &mode, &nthreads, &n)) {
        return NULL;
    }
    if (nthreads < 1 || nthreads > 16) {
        PyErr_SetString(PyExc_ValueError, "nthreads 1..16");
        return NULL;
    }
    PyObject *obj = PyList_New(0);       /* kept alive by the extra refs */
    for (long i = 0; i < n * nthreads; i++) {
        Py_INCREF(obj);
    }
    atomic_int go;
    /* One thread needs no start line (and must not spin on one under
     * callgrind, which runs one thread at a time). */
    atomic_init(&go, nthreads == 1);
    enq_t e[16];
    pthread_t tid[16];
    for (int t = 0; t < nthreads; t++) {
        e[t] = (enq_t){mode, n, obj, &go, 0};
        pthread_create(&tid[t], NULL, enq_main, &e[t]);
    }
    Py_BEGIN_ALLOW_THREADS
    if (nthreads > 1) {
        struct timespec d = {0, 20 * 1000 * 1000};
        nanosleep(&d, NULL);           /* let every thread reach the start line */
        atomic_store(&go, 1);
    }
    for (int t = 0; t < nthreads; t++) {
        pthread_join(tid[t], NULL);
    }
    Py_END_ALLOW_THREADS
    if (mode == M_EG) {
        while (eg_flush() > 0) {
        }
    }
    else if (mode == M_POOL) {
        pool_drain();
    }
    double sum = 0;
    for (int t = 0; t < nthreads; t++) {
        sum += e[t].ns;
    }
    Py_ssize_t left = Py_REFCNT(obj);
    Py_DECREF(obj);
    if (left != 1) {
        PyErr_Format(PyExc_AssertionError, "decrefs lost: refcount %zd", left);
        return NULL;
    }
    return PyFloat_FromDouble(sum / nthreads);
}

/* ---- benchmark 3: drain cost per object ---------------------------------------- */

static void *
push_n(void *arg)
{
    enq_t *e = arg;
    for (long i = 0; i < e->n; i++) {
        eg_decref(e->obj);
    }
    return NULL;
}

/* drain(n) -> (ns per object for eg_flush of n queued decrefs, ns per
 * object of a bare Py_DECREF loop).  The objects stay alive (extra refs). */
static PyObject *
b_drain(PyObject *m, PyObject *arg)
{
    (void)m;
    long n = PyLong_AsLong(arg);
    if (n <= 0) {
        PyErr_SetString(PyExc_ValueError, "n > 0");
        return NULL;
    }
    PyObject *obj = PyList_New(0);
    for (long i = 0; i < 2 * n; i++) {
        Py_INCREF(obj);
    }
    enq_t e = {M_EG, n, obj, NULL, 0};
    pthread_t tid;
    pthread_create(&tid, NULL, push_n, &e);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(tid, NULL);
    Py_END_ALLOW_THREADS
    double t0 = now_ns();
    Py_ssize_t done = 0, k;
    while ((k = eg_flush()) > 0) {
        done += k;
    }
    double eg_ns = (now_ns() - t0) / (double)n;
    t0 = now_ns();
    for (long i = 0; i < n; i++) {
        Py_DECREF(obj);
    }
    double bare_ns = (now_ns() - t0) / (double)n;
    Py_DECREF(obj);
    (void)done;
    return Py_BuildValue("(dd)", eg_ns, bare_ns);
}

/* ---- benchmark 4: eg_ref_new + eg_ref_release, attached ------------------------ */

static PyObject *
b_ref_pair(PyObject *m, PyObject *arg)
{
    (void)m;
    long n = PyLong_AsLong(arg);
    PyObject *obj = PyList_New(0);
    eg_ref *warm = eg_ref_new(obj);            /* the registry is grown */
    eg_ref_release(warm);
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        eg_ref *r = eg_ref_new(obj);
        eg_ref_release(r);
    }
    double eg_ns = (now_ns() - t0) / (double)n;
    t0 = now_ns();
    for (long i = 0; i < n; i++) {
        Py_INCREF(obj);
        __asm__ volatile("" ::: "memory");
        Py_DECREF(obj);
    }
    double base_ns = (now_ns() - t0) / (double)n;
    Py_DECREF(obj);
    return Py_BuildValue("(dd)", eg_ns, base_ns);
}

/* ---- benchmark 5: attach/release from a native thread ---------------------------- */

typedef struct {
    int mode;          /* 0 eg_gil_ensure (registered thread), 1 gs kept, 2 gs new */
    long n;
    double ns;
} att_t;

static void
att_run(void *arg)
{
    att_t *a = arg;
    PyGILState_STATE outer = 0;
    PyThreadState *kept = NULL;
    if (a->mode == 1) {
        outer = PyGILState_Ensure();
        kept = PyEval_SaveThread();
    }
    else if (a->mode == 0) {
        eg_gil st;                       /* warm: create the cached state */
        if (eg_gil_ensure(NULL, &st) == 0) {
            eg_gil_release(&st);
        }
    }
    double t0 = now_ns();
    for (long i = 0; i < a->n; i++) {
        if (a->mode == 0) {
            eg_gil st;
            if (eg_gil_ensure(NULL, &st) == 0) {
                eg_gil_release(&st);
            }
        }
        else {
            PyGILState_STATE g = PyGILState_Ensure();
            PyGILState_Release(g);
        }
    }
    a->ns = (now_ns() - t0) / (double)a->n;
    if (kept != NULL) {
        PyEval_RestoreThread(kept);
        PyGILState_Release(outer);
    }
}

static PyObject *
b_attach(PyObject *m, PyObject *args)
{
    (void)m;
    att_t a = {0, 0, 0};
    if (!PyArg_ParseTuple(args, "il", &a.mode, &a.n)) {
        return NULL;
    }
    eg_thread *t;
    int rc = eg_thread_start(&t, "egbench", att_run, NULL, &a);
    if (rc < 0) {
        PyErr_SetString(PyExc_RuntimeError, eg_strerror(rc));
        return NULL;
    }
    eg_thread_join(t, -1);               /* releases the GIL while waiting */
    return PyFloat_FromDouble(a.ns);
}

/* ---- benchmark 7: eg_log enabled / disabled vs attach + logging ------------------- */

typedef struct {
    int mode;          /* 0 eg_log enabled, 1 eg_log disabled, 2 attach + logger.info */
    long n;
    PyObject *info;    /* bound logger.info for mode 2 */
    double ns;
} log_t;

static void *
log_main(void *arg)
{
    log_t *l = arg;
    double t0 = now_ns();
    for (long i = 0; i < l->n; i++) {
        if (l->mode == 0) {
            eg_log(EG_LOG_WARNING, "egbench", "message %ld from a native thread", i);
        }
        else if (l->mode == 1) {
            eg_log(EG_LOG_DEBUG, "egbench", "message %ld from a native thread", i);
        }
        else {
            PyGILState_STATE g = PyGILState_Ensure();
            PyObject *r = PyObject_CallFunction(l->info, "sl", "message %d from a native thread", i);
            Py_XDECREF(r);
            PyErr_Clear();
            PyGILState_Release(g);
        }
    }
    l->ns = (now_ns() - t0) / (double)l->n;
    return NULL;
}

static PyObject *
b_log(PyObject *m, PyObject *args)
{
    (void)m;
    log_t l = {0, 0, NULL, 0};
    if (!PyArg_ParseTuple(args, "il|O", &l.mode, &l.n, &l.info)) {
        return NULL;
    }
    pthread_t tid;
    pthread_create(&tid, NULL, log_main, &l);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(tid, NULL);
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(l.ns);
}

/* ---- benchmark 8: completions into asyncio --------------------------------------- */

static atomic_long completed;

static void
on_complete(void *arg, int cancelled)
{
    (void)arg;
    (void)cancelled;
    atomic_fetch_add(&completed, 1);
}

typedef struct {
    eg_cq *q;
    PyObject *loop_cst;     /* loop.call_soon_threadsafe for the baseline */
    PyObject *cb;
    long n;
    int baseline;
} post_t;

static void *
post_main(void *arg)
{
    post_t *p = arg;
    for (long i = 0; i < p->n; i++) {
        if (!p->baseline) {
            while (eg_cq_post(p->q, on_complete, NULL) == -ENOMEM) {
            }
        }
        else {
            PyGILState_STATE g = PyGILState_Ensure();
            PyObject *r = PyObject_CallOneArg(p->loop_cst, p->cb);
            Py_XDECREF(r);
            PyErr_Clear();
            PyGILState_Release(g);
        }
    }
    return NULL;
}

/* post(queue_or_None, call_soon_threadsafe_or_None, callback, n, nthreads):
 * start posting threads; returns immediately (the loop runs meanwhile). */
static PyObject *
b_post(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *qobj, *cst, *cb;
    long n;
    int nthreads;
    if (!PyArg_ParseTuple(args, "OOOli", &qobj, &cst, &cb, &n, &nthreads)) {
        return NULL;
    }
    for (int t = 0; t < nthreads; t++) {
        post_t *p = calloc(1, sizeof(*p));     /* leaked: a benchmark */
        p->n = n / nthreads;
        p->baseline = qobj == Py_None;
        if (!p->baseline && (p->q = eg_cq_from_object(qobj)) == NULL) {
            return NULL;
        }
        p->loop_cst = cst;
        p->cb = cb;
        Py_INCREF(cst);
        Py_INCREF(cb);
        pthread_t tid;
        pthread_create(&tid, NULL, post_main, p);
        pthread_detach(tid);
    }
    Py_RETURN_NONE;
}

static PyObject *
b_completed(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    return PyLong_FromLong(atomic_exchange(&completed, 0));
}

/* ---- memory: queued decrefs and live references ------------------------------- */

static eg_ref **mem_refs;

static PyObject *
b_hold_refs(PyObject *m, PyObject *arg)
{
    (void)m;
    long n = PyLong_AsLong(arg);
    PyObject *obj = Py_None;
    mem_refs = malloc(sizeof(eg_ref *) * (size_t)n);
    for (long i = 0; i < n; i++) {
        mem_refs[i] = eg_ref_new(obj);
    }
    Py_RETURN_NONE;
}

static PyObject *
b_queue_decrefs(PyObject *m, PyObject *arg)
{
    (void)m;
    long n = PyLong_AsLong(arg);
    PyObject *obj = PyList_New(0);
    for (long i = 0; i < n; i++) {
        Py_INCREF(obj);
    }
    enq_t e = {M_EG, n, obj, NULL, 0};
    pthread_t tid;
    pthread_create(&tid, NULL, push_n, &e);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(tid, NULL);
    Py_END_ALLOW_THREADS
    return obj;      /* the caller drops it after measuring */
}

/* push_one(obj): a native thread drops one reference with eg_decref and
 * exits at once (the "producer that went idle"); returns immediately. */
static void *
push_one_main(void *arg)
{
    eg_decref((PyObject *)arg);
    return NULL;
}

static PyObject *
b_push_one(PyObject *m, PyObject *obj)
{
    (void)m;
    Py_INCREF(obj);
    pthread_t tid;
    pthread_create(&tid, NULL, push_one_main, obj);
    pthread_detach(tid);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"push_one", b_push_one, METH_O, NULL},
    {"enqueue", b_enqueue, METH_VARARGS, NULL},
    {"drain", b_drain, METH_O, NULL},
    {"ref_pair", b_ref_pair, METH_O, NULL},
    {"attach", b_attach, METH_VARARGS, NULL},
    {"log", b_log, METH_VARARGS, NULL},
    {"post", b_post, METH_VARARGS, NULL},
    {"completed", b_completed, METH_NOARGS, NULL},
    {"hold_refs", b_hold_refs, METH_O, NULL},
    {"queue_decrefs", b_queue_decrefs, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static int
exec_mod(PyObject *m)
{
    (void)m;
    return eg_import();
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)exec_mod},
    {0, NULL},
};

static struct PyModuleDef def = {
    PyModuleDef_HEAD_INIT, "_egbench", NULL, 0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__egbench(void)
{
    return PyModuleDef_Init(&def);
}
