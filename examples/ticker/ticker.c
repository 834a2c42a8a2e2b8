/*
 * ticker.c -- an example extension with native worker threads, written the
 * way extension authors write them, in two builds from one source:
 *
 *   ticker        (default) uses exitguard through its capsule C API only
 *                 (#include <exitguard.h>, eg_import() in the module exec):
 *                 references held as eg_ref, dropped without the GIL with
 *                 eg_ref_release / eg_decref, callbacks through
 *                 eg_gil_ensure, threads stopped and joined by an exit
 *                 stopper with the GIL released, logging with eg_log;
 *   ticker_naive  (-DTICKER_NAIVE) the same workload on the raw CPython API:
 *                 PyGILState_Ensure around every Python touch, and nothing
 *                 at exit -- what most extensions do today.
 *
 * DESIGN
 *
 * Ticker(nthreads, spin) starts `nthreads` POSIX threads ("ticker-N") that
 * wait on a work queue: a growable ring guarded by this file's own mutex
 * and condition variable.  Python code feeds objects in -- feed() as an
 * eg_ref, feed_raw() as a plain strong reference -- and a worker pops one,
 * spins `spin` rounds of busy work, and drops it without the GIL:
 * eg_ref_release() or eg_decref() queue the decref to the interpreter,
 * which applies it at its next exitguard entry point.  Workers never attach
 * to the interpreter, except to call the optional on_tick(n) callback every
 * `tick_every` items, and then only through eg_gil_ensure(), which refuses
 * (-ESHUTDOWN) instead of hanging once shutdown has begun.
 *
 * Stopping is one idempotent path, ticker_stop_join(): set `stop`, wake the
 * workers, join them with the GIL released.  A worker that sees `stop`
 * skips the busy work but still drops every item left in the queue, so
 * nothing fed is ever lost.  The constructor registers the same path as an
 * exitguard exit stopper, so the workers are stopped and joined in phase 1,
 * before the interpreter joins its own threads, and every drop they queue
 * is applied by phase 2 at the latest.  The stopper borrows `self`: it must
 * not keep the ticker alive, and dealloc removes it before freeing.
 *
 * All state the workers touch is guarded by `lock` or is a C11 atomic,
 * never by the GIL: the module declares Py_MOD_GIL_NOT_USED, and the
 * methods that attached threads run concurrently on a free-threaded build
 * (hold, held_get, release_held_in_thread) take `lock` too.  Lock order:
 * never wait for the GIL while holding `lock` (every wait on `lock` that
 * may be long is made with the GIL released), so the two cannot deadlock.
 *
 * Which thread runs what, and whether it holds the GIL (is attached):
 *
 *   function                     thread                   attached
 *   ---------------------------- ------------------------ ----------------
 *   ticker_exec, methods, new,   the Python caller        yes; release the
 *     dealloc                                             GIL around joins
 *   ticker_stop_cb               exitguard's phase 1      yes; releases it
 *                                (normally main)          around the joins
 *   worker_main, drop_item,      the ticker-N workers     no; tick() only
 *     busy_work                                           inside
 *                                                         eg_gil_ensure
 *   release_held_main,           one raw helper pthread   no, never
 *     decref_main
 *
 * What it deliberately does not do: use eg_decref() for objects of a
 * subinterpreter (an unattached eg_decref goes to the main interpreter,
 * docs/api.md), so feed_raw() and decref_in_thread() refuse there and
 * feed_many() feeds eg_refs only; and on_tick must not drop the last
 * reference to its own ticker (dealloc would then run on a worker, which
 * cannot join itself).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
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

/* join_state, under lock: RUNNING -> JOINING (one caller joins, GIL
 * released) -> JOINED.  Later callers see JOINING and wait for JOINED on
 * `joined`, so stop() returns only once every worker has ended, whoever
 * does the joining. */
enum { TICKER_RUNNING, TICKER_JOINING, TICKER_JOINED };

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;   /* guards items..join_state and held..capheld */
    pthread_cond_t cond;    /* workers: an item arrived, or stop */
    pthread_cond_t joined;  /* join_state became TICKER_JOINED */
    item_t *items;          /* ring of cap slots, len of them used from head */
    size_t head, len, cap;
    int stop;               /* workers: drain what is queued, then exit */
    int join_state;
    /* Set while attached in new and never changed afterwards; the workers
     * read them after pthread_create, which orders the writes before. */
    pthread_t *tids;
    int nthreads;
    long spin;
    long tick_every;
#ifndef TICKER_NAIVE
    int is_main_interp;     /* eg_decref goes to the main interpreter */
    eg_stopper *stopper;
    eg_ref *on_tick;        /* callable, or NULL */
    eg_interp *interp;      /* where on_tick runs */
    eg_ref **held;          /* hold(): never released by the ticker itself */
    size_t nheld, capheld;
#else
    PyObject *on_tick;
#endif
    /* Counters for stats().  Relaxed everywhere: each is a tally with no
     * data hanging off it, and whoever needs final values (stats() after
     * stop()) is ordered after the workers by pthread_join. */
    atomic_long fed, processed, ticks, ticks_refused;
    /* Set by the exit stopper, read by stats(); a lone flag, relaxed. */
    atomic_int stopped_by_exitguard;
    /* Folds in the busy work so the compiler cannot drop it; relaxed, its
     * value means nothing. */
    atomic_uint_fast64_t work_sink;
} Ticker;

/* ---- Workers: no GIL ------------------------------------------------------- */

/*
 * CAUTION: busy_work, drop_item and worker_main below (and the raw helper
 * threads further down, release_held_main and decref_main) run on threads
 * with no thread state.  They use only libc, pthreads, C11 atomics and the
 * eg_* calls documented for any thread: no PyObject_*, no Py_DECREF, no
 * PyMem_*.  Python is touched only inside tick(), between eg_gil_ensure and
 * eg_gil_release (PyGILState_Ensure in the naive build), and in
 * build_result, which exitguard calls attached.
 */

/* Any thread, no GIL: `spin` rounds of a 64-bit LCG, a stand-in for the
 * native work a real extension does per item.  The result is folded into
 * work_sink, which keeps the loop (no volatile needed). */
static uint64_t
busy_work(long spin, uint64_t x)
{
    for (long i = 0; i < spin; i++) {
        x = x * 6364136223846793005u + 1442695040888963407u;
    }
    return x;
}

#ifndef TICKER_NAIVE
/* The loop's thread, attached; or the thread that cancels the completion
 * (queue closed, exitguard stopping), then with cancelled == 1.  The result
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

/* Worker thread, no GIL: drop the reference(s) one item holds. */
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

/* Worker thread, not attached on entry or exit: call on_tick(n), attached
 * for the duration of the call only. */
static void
tick(Ticker *t, long n)
{
    if (t->on_tick == NULL) {
        return;
    }
#ifndef TICKER_NAIVE
    eg_gil st;
    if (eg_gil_ensure(t->interp, &st) != 0) {
        /* -ESHUTDOWN: the interpreter is stopping; skip the callback. */
        atomic_fetch_add_explicit(&t->ticks_refused, 1, memory_order_relaxed);
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
    atomic_fetch_add_explicit(&t->ticks, 1, memory_order_relaxed);
#ifndef TICKER_NAIVE
    eg_gil_release(&st);
#else
    PyGILState_Release(g);
#endif
}

/* The ticker whose worker the calling thread is, or NULL: lets stop() refuse
 * to run on a worker (from on_tick), which would have to join itself. */
static _Thread_local Ticker *current_worker;

/* Worker thread (ticker-N), no GIL: pop, work, drop, until stopped and the
 * queue is empty. */
static void *
worker_main(void *arg)
{
    Ticker *t = arg;
    current_worker = t;
    uint64_t acc = (uint64_t)(uintptr_t)&acc;
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
            acc = busy_work(t->spin, acc);
        }
        drop_item(it);
        long n = atomic_fetch_add_explicit(&t->processed, 1,
                                           memory_order_relaxed) + 1;
        if (t->tick_every > 0 && n % t->tick_every == 0 && !stopping) {
            tick(t, n);
        }
    }
    atomic_fetch_xor_explicit(&t->work_sink, acc, memory_order_relaxed);
#ifndef TICKER_NAIVE
    eg_log(EG_LOG_INFO, "ticker", "worker stopping; %ld items processed in all",
           atomic_load_explicit(&t->processed, memory_order_relaxed));
#endif
    return NULL;
}

/* Attached; idempotent.  Ask the workers to stop (they drain and drop what
 * is still queued first) and join them with the GIL released: a worker may
 * need the GIL to finish (on_tick, and the naive build's every drop).
 * Returns once every worker has ended, also when another thread is doing
 * the joining. */
static void
ticker_stop_join(Ticker *t)
{
    pthread_mutex_lock(&t->lock);
    if (t->join_state == TICKER_JOINED) {
        pthread_mutex_unlock(&t->lock);
        return;
    }
    if (t->join_state == TICKER_JOINING) {
        pthread_mutex_unlock(&t->lock);
        /* Another thread is joining: wait for it, without the GIL (and
         * without `lock` while taking the GIL back). */
        Py_BEGIN_ALLOW_THREADS
        pthread_mutex_lock(&t->lock);
        while (t->join_state != TICKER_JOINED) {
            pthread_cond_wait(&t->joined, &t->lock);
        }
        pthread_mutex_unlock(&t->lock);
        Py_END_ALLOW_THREADS
        return;
    }
    t->join_state = TICKER_JOINING;
    t->stop = 1;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->lock);

    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < t->nthreads; i++) {
        pthread_join(t->tids[i], NULL);
    }
    Py_END_ALLOW_THREADS

    /* No worker is left to call on_tick: let it go now rather than leave it
     * to phase 2 (which would report it as never released).  Attached. */
#ifndef TICKER_NAIVE
    eg_ref_release(t->on_tick);
    t->on_tick = NULL;
#else
    Py_CLEAR(t->on_tick);
#endif
    pthread_mutex_lock(&t->lock);
    t->join_state = TICKER_JOINED;
    pthread_cond_broadcast(&t->joined);
    pthread_mutex_unlock(&t->lock);
}

#ifndef TICKER_NAIVE
/* exitguard's phase 1, attached (normally the main thread): stop the
 * workers before the interpreter joins its own threads.  `arg` is borrowed;
 * dealloc removes this stopper before it frees the ticker. */
static void
ticker_stop_cb(void *arg)
{
    Ticker *t = arg;
    atomic_store_explicit(&t->stopped_by_exitguard, 1, memory_order_relaxed);
    ticker_stop_join(t);
}
#endif

/* 1 when the calling thread is one of t's workers (attached in on_tick).
 * A thread-local rather than a search of tids: a pthread_t is reused once
 * its thread has been joined. */
static int
on_worker_thread(Ticker *t)
{
    return current_worker == t;
}

/* ---- The type ------------------------------------------------------------------ */

/* Attached: Ticker(nthreads=4, spin=0, on_tick=None, tick_every=0). */
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
    /* From here on every failure goes through dealloc, which copes with a
     * half-built ticker (no threads, no stopper, NULL arrays). */
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, NULL);
    pthread_cond_init(&t->joined, NULL);
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
    t->is_main_interp = PyInterpreterState_Get() == PyInterpreterState_Main();
    t->interp = eg_interp_current();
    if (t->interp == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    if (on_tick != Py_None && (t->on_tick = eg_ref_new(on_tick)) == NULL) {
        Py_DECREF(t);
        return NULL;
    }
    /* Borrowed `t`: the stopper must not keep the ticker alive; dealloc
     * removes it before freeing. */
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
        int rc = pthread_create(&t->tids[i], NULL, worker_main, t);
        if (rc != 0) {
            Py_DECREF(t);           /* joins the i threads already started */
            errno = rc;             /* pthread_create returns, not sets, it */
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        t->nthreads = i + 1;
        char name[16];
        /* i < 256: the mask only tells the compiler the name fits. */
        snprintf(name, sizeof(name), "ticker-%u", (unsigned)i & 0xffu);
        pthread_setname_np(t->tids[i], name);   /* cosmetic: ignore errors */
    }
    return (PyObject *)t;
}

/* Attached: append one item under the lock, growing the ring.  Returns 0,
 * or -1 with RuntimeError (stopped) or MemoryError; the item is then still
 * the caller's. */
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
    atomic_fetch_add_explicit(&t->fed, 1, memory_order_relaxed);
    return 0;
}

/* Attached: hand obj to the workers, as an eg_ref (as_ref) or as a raw
 * strong reference.  0, or -1 with an exception set. */
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
        if (it.ref != NULL) {
            eg_ref_release(it.ref);
            return -1;
        }
#endif
        Py_DECREF(it.raw);
        return -1;
    }
    return 0;
}

#ifndef TICKER_NAIVE
/* Attached: RuntimeError unless we are in the main interpreter, where an
 * unattached eg_decref() sends its decref. */
static int
require_main_interp(Ticker *t, const char *what)
{
    if (t->is_main_interp) {
        return 0;
    }
    PyErr_Format(PyExc_RuntimeError,
                 "%s drops objects with eg_decref(), which queues to the "
                 "main interpreter; in a subinterpreter use feed()", what);
    return -1;
}
#endif

/* feed(obj), attached: hand obj over as an eg_ref. */
static PyObject *
ticker_feed(Ticker *t, PyObject *obj)
{
    return feed_one(t, obj, 1) < 0 ? NULL : Py_NewRef(Py_None);
}

/* feed_raw(obj), attached: hand obj over as a raw strong reference, which a
 * worker drops with eg_decref(). */
static PyObject *
ticker_feed_raw(Ticker *t, PyObject *obj)
{
#ifndef TICKER_NAIVE
    if (require_main_interp(t, "feed_raw()") < 0) {
        return NULL;
    }
#endif
    return feed_one(t, obj, 0) < 0 ? NULL : Py_NewRef(Py_None);
}

#ifndef TICKER_NAIVE
/* submit(queue, future, obj), attached: a worker processes obj, then
 * resolves future with it through the CompletionQueue (eg_cq_post_future). */
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

/* feed_many(iterable), attached: feed every item, alternating raw and
 * eg_ref (eg_ref only in a subinterpreter).  Returns how many. */
static PyObject *
ticker_feed_many(Ticker *t, PyObject *iterable)
{
    PyObject *it = PyObject_GetIter(iterable);
    if (it == NULL) {
        return NULL;
    }
#ifndef TICKER_NAIVE
    int alternate = t->is_main_interp;
#else
    int alternate = 1;
#endif
    long n = 0;
    PyObject *obj;
    while ((obj = PyIter_Next(it)) != NULL) {
        int rc = feed_one(t, obj, alternate ? (int)(n & 1) : 1);
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

/* stop(), attached: the exit stopper's path, callable any time. */
static PyObject *
ticker_stop(Ticker *t, PyObject *Py_UNUSED(ignored))
{
    if (on_worker_thread(t)) {
        PyErr_SetString(PyExc_RuntimeError,
                        "stop() called from on_tick: a worker cannot join "
                        "itself");
        return NULL;
    }
    ticker_stop_join(t);
    Py_RETURN_NONE;
}

#ifndef TICKER_NAIVE
/* Run f(arg) on one raw pthread (no thread state, never attaches) and join
 * it with the GIL released.  Attached.  Returns 0, or pthread_create's
 * error number, with no exception set: the caller cleans up, then raises. */
static int
run_in_raw_thread(void *(*f)(void *), void *arg)
{
    pthread_t tid;
    int rc = pthread_create(&tid, NULL, f, arg);
    if (rc != 0) {
        return rc;
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(tid, NULL);
    Py_END_ALLOW_THREADS
    return 0;
}

/* hold(obj), attached: keep an eg_ref to obj that the ticker never releases
 * by itself (dealloc, release_held_in_thread() or phase 2 do), for
 * leak-report tests. */
static PyObject *
ticker_hold(Ticker *t, PyObject *obj)
{
    eg_ref *r = eg_ref_new(obj);
    if (r == NULL) {
        return NULL;
    }
    pthread_mutex_lock(&t->lock);
    if (t->nheld == t->capheld) {
        size_t cap = t->capheld ? t->capheld * 2 : 16;
        eg_ref **grown = realloc(t->held, cap * sizeof(*grown));
        if (grown == NULL) {
            pthread_mutex_unlock(&t->lock);
            eg_ref_release(r);
            return PyErr_NoMemory();
        }
        t->held = grown;
        t->capheld = cap;
    }
    t->held[t->nheld++] = r;
    pthread_mutex_unlock(&t->lock);
    Py_RETURN_NONE;
}

/* held_get(), attached: [eg_ref_get(ref) or None for each held ref]. */
static PyObject *
ticker_held_get(Ticker *t, PyObject *Py_UNUSED(ignored))
{
    /* Take strong references under the lock (Py_NewRef runs no code), build
     * the list after: PyList_New may run the GC, and so finalizers, which
     * must never find `lock` held. */
    pthread_mutex_lock(&t->lock);
    size_t n = t->nheld;
    PyObject **objs = malloc((n ? n : 1) * sizeof(*objs));
    if (objs == NULL) {
        pthread_mutex_unlock(&t->lock);
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < n; i++) {
        PyObject *o = eg_ref_get(t->held[i]);  /* NULL once phase 2 ran */
        objs[i] = Py_NewRef(o ? o : Py_None);
    }
    pthread_mutex_unlock(&t->lock);

    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; i < n; i++) {
        if (list != NULL) {
            PyList_SET_ITEM(list, (Py_ssize_t)i, objs[i]);  /* steals */
        }
        else {
            Py_DECREF(objs[i]);
        }
    }
    free(objs);
    return list;
}

typedef struct {
    eg_ref **refs;
    size_t n;
} ref_batch;

/* Raw helper pthread, no GIL, never attaches: release every reference.
 * The objects' decrefs are queued to their interpreter (after its phase 2,
 * only native memory is freed). */
static void *
release_held_main(void *arg)
{
    ref_batch *b = arg;
    for (size_t i = 0; i < b->n; i++) {
        eg_ref_release(b->refs[i]);
    }
    return NULL;
}

/* release_held_in_thread(), attached: release every held ref from one raw
 * pthread, joined with the GIL released.  Returns how many. */
static PyObject *
ticker_release_held_in_thread(Ticker *t, PyObject *Py_UNUSED(ignored))
{
    /* Detach the array first: hold() may run while we wait without the GIL
     * and must not realloc what the helper reads. */
    pthread_mutex_lock(&t->lock);
    ref_batch b = {t->held, t->nheld};
    t->held = NULL;
    t->nheld = t->capheld = 0;
    pthread_mutex_unlock(&t->lock);

    int rc = run_in_raw_thread(release_held_main, &b);
    if (rc != 0) {
        /* No thread: release them here, attached, so none is lost. */
        release_held_main(&b);
        free(b.refs);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    free(b.refs);
    return PyLong_FromSize_t(b.n);
}

typedef struct {
    PyObject **objs;
    Py_ssize_t n;
} obj_batch;

/* Raw helper pthread, no GIL, never attaches: eg_decref every object (each
 * decref is queued to the main interpreter). */
static void *
decref_main(void *arg)
{
    obj_batch *b = arg;
    for (Py_ssize_t i = 0; i < b->n; i++) {
        eg_decref(b->objs[i]);
    }
    return NULL;
}

/* decref_in_thread(seq), attached: take one strong reference to each item
 * here, then drop them all with eg_decref() from one raw pthread, joined
 * with the GIL released.  Returns how many. */
static PyObject *
ticker_decref_in_thread(Ticker *t, PyObject *seq)
{
    if (require_main_interp(t, "decref_in_thread()") < 0) {
        return NULL;
    }
    PyObject *fast = PySequence_Fast(seq, "decref_in_thread() needs a "
                                          "sequence");
    if (fast == NULL) {
        return NULL;
    }
    obj_batch b = {NULL, PySequence_Fast_GET_SIZE(fast)};
    b.objs = malloc((size_t)(b.n ? b.n : 1) * sizeof(PyObject *));
    if (b.objs == NULL) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    PyObject **items = PySequence_Fast_ITEMS(fast);
    for (Py_ssize_t i = 0; i < b.n; i++) {
        b.objs[i] = Py_NewRef(items[i]);
    }
    Py_DECREF(fast);
    int rc = run_in_raw_thread(decref_main, &b);
    if (rc != 0) {
        for (Py_ssize_t i = 0; i < b.n; i++) {
            Py_DECREF(b.objs[i]);
        }
        free(b.objs);
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    free(b.objs);
    return PyLong_FromSsize_t(b.n);
}
#endif

/* stats(), attached: a dict of counters. */
static PyObject *
ticker_stats(Ticker *t, PyObject *Py_UNUSED(ignored))
{
    pthread_mutex_lock(&t->lock);
    int stopped = t->stop;
    pthread_mutex_unlock(&t->lock);
    int by_eg = atomic_load_explicit(&t->stopped_by_exitguard,
                                     memory_order_relaxed);
    return Py_BuildValue(
        "{s:l,s:l,s:l,s:l,s:i,s:O,s:O}",
        "fed", atomic_load_explicit(&t->fed, memory_order_relaxed),
        "processed", atomic_load_explicit(&t->processed, memory_order_relaxed),
        "ticks", atomic_load_explicit(&t->ticks, memory_order_relaxed),
        "ticks_refused", atomic_load_explicit(&t->ticks_refused,
                                              memory_order_relaxed),
        "threads", t->nthreads,
        "stopped", stopped ? Py_True : Py_False,
        "stopped_by_exitguard", by_eg ? Py_True : Py_False);
}

/* Attached, the last reference gone (also a half-built ticker from new). */
static void
ticker_dealloc(Ticker *t)
{
    PyTypeObject *tp = Py_TYPE(t);
#ifndef TICKER_NAIVE
    /* Unregister first: eg_stopper_remove waits (GIL released) if phase 1
     * is running our stopper on another thread, so afterwards nothing but
     * this function refers to t.  NULL is a no-op. */
    eg_stopper_remove(t->stopper);
#endif
    ticker_stop_join(t);    /* idempotent; joins nothing when no thread */
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
    pthread_cond_destroy(&t->joined);
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
     "Feed every item of an iterable, alternating feed_raw and feed; "
     "returns how many."},
    {"stop", (PyCFunction)ticker_stop, METH_NOARGS,
     "Stop the workers and join them (idempotent); they drop what is "
     "still queued first."},
#ifndef TICKER_NAIVE
    {"submit", (PyCFunction)ticker_submit, METH_VARARGS,
     "submit(queue, future, obj): process obj natively, then resolve future "
     "with it through the CompletionQueue (keep a reference to the queue)."},
    {"hold", (PyCFunction)ticker_hold, METH_O,
     "Keep an eg_ref to obj that the ticker never releases by itself."},
    {"held_get", (PyCFunction)ticker_held_get, METH_NOARGS,
     "eg_ref_get() of every held reference (None once released)."},
    {"release_held_in_thread", (PyCFunction)ticker_release_held_in_thread,
     METH_NOARGS,
     "Release every held reference from a native thread; returns how "
     "many."},
    {"decref_in_thread", (PyCFunction)ticker_decref_in_thread, METH_O,
     "Take a reference to each item, then drop them with eg_decref from a "
     "native thread; returns how many."},
#endif
    {"stats", (PyCFunction)ticker_stats, METH_NOARGS,
     "dict(fed, processed, ticks, ticks_refused, threads, stopped, "
     "stopped_by_exitguard)."},
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

/* Module exec, attached, once per interpreter that imports the module. */
static int
ticker_exec(PyObject *m)
{
#ifndef TICKER_NAIVE
    if (eg_import() < 0) {
        return -1;
    }
#endif
    PyObject *type = PyType_FromSpec(&ticker_spec);   /* one per module */
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
#if PY_VERSION_HEX >= 0x030C0000
    /* Py_mod_multiple_interpreters: 3.12 (gh-104108, PEP 684).  The guarded
     * build keeps no per-process Python state (its type is made per module,
     * its objects' references go through eg_ref); the naive one relies on
     * PyGILState_Ensure, which knows only the main interpreter. */
#  ifndef TICKER_NAIVE
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#  else
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#  endif
#endif
#if PY_VERSION_HEX >= 0x030D0000
    /* Py_mod_gil: 3.13 (gh-116322, PEP 703).  Shared state is guarded by our
     * own mutex and atomics. */
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
