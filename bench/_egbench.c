/*
 * _egbench.c -- the native side of exitguard's benchmarks (bench/run.py),
 * together with the baselines they are compared against, so that both are
 * measured in the same process, the same run and the same build.
 *
 * It is a client extension like any other: it includes <exitguard.h>, calls
 * eg_import() and uses only the public C API.  The baselines are written
 * here, not taken from exitguard:
 *
 *   pool      PyO3's deferred-decref pool (bindings.md section 2.1): a dirty
 *             flag plus one global pthread mutex around a growable vector of
 *             PyObject*; producers push under the mutex, an attached thread
 *             takes the whole vector and applies it;
 *   gs_kept   PyGILState_Ensure / work / PyGILState_Release per operation on
 *             a thread that keeps its thread state: an outer Ensure (which
 *             creates the thread state) plus PyEval_SaveThread at thread
 *             start, undone at the end, so the inner pairs only attach and
 *             detach;
 *   gs_new    the same pairs on a thread without a thread state: every
 *             Ensure creates one and every Release deletes it.
 *
 *   raw_kept  PyEval_RestoreThread/SaveThread on an own thread state: the
 *             floor of any attach;
 *   pep788    (3.15) PyThreadState_EnsureFromView/Release, kept and new.
 * The binding peers (pybind11, nanobind, Cython) live in bench/peers/; the
 * attach and drop families of bench/run.py mix their variants with these.
 *
 * Timing: the CPU time of the thread that runs a tight loop
 * (CLOCK_THREAD_CPUTIME_ID, beside the wall clock where both are returned;
 * bench/peers/harness.h), on native threads (pthreads) wherever the
 * benchmark is about native threads; results go back to Python as
 * nanoseconds per operation.  Each timed loop is a separate noinline
 * function named egb_loop_*, which bench/callgrind.py hands to callgrind's
 * --toggle-collect to count the instructions of exactly that loop (and
 * what it calls); callgrind_dump() separates its cases.
 *
 * Draining during the enqueue benchmarks: where the caller holds the GIL
 * across the timed loop (benchmarks 1, 3 and the memory figures), neither
 * exitguard's drainers nor the pool's can run (except on a free-threaded
 * build, whose kicker does not wait for a GIL), so the loop measures the push
 * alone and the queue is applied afterwards, timed separately (3).
 * Benchmark 2 measures the opposite case: a sustained stream while the main
 * thread runs bytecode and the queue is applied concurrently.
 *
 * Everything here is benchmark code: a few deliberate leaks (the live
 * references of the exit benchmark) and no attempt at recovering from
 * pthread_create failures beyond raising.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>            /* first: defines _GNU_SOURCE */
#include <exitguard.h>

#include "harness.h"           /* bench/peers/harness.h */

/* Instruction counts (bench/callgrind.py): one valgrind process runs every
 * case, counting only inside the egb_loop_* functions, and asks callgrind to
 * dump and zero its counters, named after the case, between cases -- so
 * each dump holds one case's loops.  Outside valgrind a client request is a
 * few instructions that do nothing; without valgrind's header, nothing. */
#if defined(__has_include)
#  if __has_include(<valgrind/callgrind.h>)
#    include <valgrind/callgrind.h>
#    define EGB_HAVE_CALLGRIND 1
#  endif
#endif
#if !defined(EGB_HAVE_CALLGRIND)
#  define EGB_HAVE_CALLGRIND 0
#  define CALLGRIND_DUMP_STATS_AT(name) ((void)(name))
#endif

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#if PY_VERSION_HEX < 0x030A00A3
/* Py_NewRef arrived in 3.10 (bpo-42262). */
static inline PyObject *
egb_newref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#  define Py_NewRef egb_newref
#endif

#define EGB_MAX_THREADS 64


static PyObject *
errno_error(int rc, const char *what)
{
    PyErr_Format(PyExc_RuntimeError, "%s: %s", what,
                 rc < 0 ? eg_strerror(rc) : strerror(rc));
    return NULL;
}

/* A count argument: 0 with *n >= 1, or -1 with an exception. */
static int
parse_count(PyObject *arg, long *n)
{
    *n = PyLong_AsLong(arg);
    if (*n == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (*n < 1) {
        PyErr_SetString(PyExc_ValueError, "count must be >= 1");
        return -1;
    }
    return 0;
}

/* Adds n references to obj, as n decrefs will take them away. */
static void
add_refs(PyObject *obj, long n)
{
    for (long i = 0; i < n; i++) {
        Py_INCREF(obj);
    }
}

/* ---- Start line --------------------------------------------------------- */

/* Threads of one measurement start their clocks together: each checks in,
 * the caller waits for all of them, then opens the line.  A single thread
 * needs no line (and must not spin under callgrind, which runs one thread
 * at a time). */
typedef struct {
    atomic_int ready;
    atomic_int go;
} startline;

static void
startline_wait(startline *s)
{
    atomic_fetch_add(&s->ready, 1);
    while (!atomic_load(&s->go)) {
        sched_yield();
    }
}

static void
startline_open(startline *s, int nthreads)
{
    while (atomic_load(&s->ready) < nthreads) {
        sched_yield();
    }
    atomic_store(&s->go, 1);
}

/* ---- Baseline (a): PyO3's pool -------------------------------------------- */

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static PyObject **pool_items;
static size_t pool_len, pool_cap;
static atomic_int pool_dirty;

/* register_decref: dirty flag (relaxed: the mutex orders the data), then
 * push under the mutex; the vector doubles like a Rust Vec. */
static void
pool_push(PyObject *o)
{
    atomic_store_explicit(&pool_dirty, 1, memory_order_relaxed);
    pthread_mutex_lock(&pool_lock);
    if (pool_len == pool_cap) {
        size_t cap = pool_cap ? pool_cap * 2 : 8;
        PyObject **grown = realloc(pool_items, cap * sizeof(*grown));
        if (grown == NULL) {
            abort();                  /* a Rust Vec aborts as well */
        }
        pool_items = grown;
        pool_cap = cap;
    }
    pool_items[pool_len++] = o;
    pthread_mutex_unlock(&pool_lock);
}

/* drop_deferred_references: one drainer (CAS on the flag), take the vector
 * and drop the lock before any decref runs.  Attached. */
static Py_ssize_t
pool_drain(void)
{
    int expected = 1;
    if (!atomic_compare_exchange_strong_explicit(&pool_dirty, &expected, 0,
                                                 memory_order_relaxed,
                                                 memory_order_relaxed)) {
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

/* ---- Baselines (b)/(c): a kept thread state --------------------------------- */

typedef struct {
    PyGILState_STATE outer;
    PyThreadState *saved;
} kept_tstate;

/* Thread start: create this thread's gilstate thread state and keep it
 * (detached) until kept_end, so inner Ensure/Release pairs reuse it. */
static void
kept_begin(kept_tstate *k)
{
    k->outer = PyGILState_Ensure();
    k->saved = PyEval_SaveThread();
}

static void
kept_end(kept_tstate *k)
{
    PyEval_RestoreThread(k->saved);
    PyGILState_Release(k->outer);
}

/* ---- Timed loops (callgrind toggles on these names) -------------------------- */

EGB_NOINLINE void
egb_loop_eg_decref(PyObject *obj, long n)
{
    for (long i = 0; i < n; i++) {
        eg_decref(obj);
    }
}

EGB_NOINLINE void
egb_loop_pool_push(PyObject *obj, long n)
{
    for (long i = 0; i < n; i++) {
        pool_push(obj);
    }
}

EGB_NOINLINE void
egb_loop_gs_decref(PyObject *obj, long n)
{
    for (long i = 0; i < n; i++) {
        PyGILState_STATE g = PyGILState_Ensure();
        Py_DECREF(obj);
        PyGILState_Release(g);
    }
}

/* Applies up to `n` queued decrefs; returns how many it applied (fewer
 * when something else drained part of the queue first: on a free-threaded
 * build the kicker does not wait for a GIL). */
EGB_NOINLINE Py_ssize_t
egb_loop_flush(Py_ssize_t n)
{
    Py_ssize_t done = 0, k;
    while (done < n && (k = eg_flush()) > 0) {
        done += k;
    }
    return done;
}

EGB_NOINLINE void
egb_loop_bare_decref(PyObject **objs, long n)
{
    for (long i = 0; i < n; i++) {
        Py_DECREF(objs[i]);
    }
}

EGB_NOINLINE void
egb_loop_ref_pair(PyObject *obj, long n)
{
    for (long i = 0; i < n; i++) {
        eg_ref *r = eg_ref_new(obj);
        eg_ref_release(r);
    }
}

EGB_NOINLINE void
egb_loop_incdec(PyObject *obj, long n)
{
    for (long i = 0; i < n; i++) {
        Py_INCREF(obj);
        egb_clobber(obj);
        Py_DECREF(obj);
    }
}

/* ---- Modes ------------------------------------------------------------------ */

enum { M_EG, M_POOL, M_GS_KEPT, M_GS_NEW, M_SPIN };

static int
mode_needs_gil(int mode)
{
    return mode == M_GS_KEPT || mode == M_GS_NEW;
}

/* ---- 1: deferred-decref enqueue from native threads ------------------------- */

typedef struct {
    int mode;
    long n;
    PyObject *obj;
    startline *line;
    double ns;
} enq_t;

static void *
enq_main(void *arg)
{
    enq_t *e = arg;
    kept_tstate kept = {0, NULL};
    if (e->mode == M_GS_KEPT) {
        kept_begin(&kept);
    }
    if (e->line != NULL) {
        startline_wait(e->line);
    }
    double t0 = egb_cpu_ns();
    switch (e->mode) {
    case M_EG:
        egb_loop_eg_decref(e->obj, e->n);
        break;
    case M_POOL:
        egb_loop_pool_push(e->obj, e->n);
        break;
    default:
        egb_loop_gs_decref(e->obj, e->n);
    }
    e->ns = (egb_cpu_ns() - t0) / (double)e->n;
    if (e->mode == M_GS_KEPT) {
        kept_end(&kept);
    }
    return NULL;
}

/* Run `nthreads` enqueue threads and join them.  For M_EG and M_POOL the
 * caller keeps the GIL throughout (no drain can run: the push alone is
 * timed); the PyGILState modes need it released. */
static int
run_enqueue(enq_t *e, int nthreads, int release_gil)
{
    pthread_t tid[EGB_MAX_THREADS];
    startline line = {0, 0};
    int started = 0, rc = 0;
    PyThreadState *save = NULL;
    if (release_gil || mode_needs_gil(e[0].mode)) {
        save = PyEval_SaveThread();
    }
    for (; started < nthreads; started++) {
        e[started].line = nthreads > 1 ? &line : NULL;
        if ((rc = pthread_create(&tid[started], NULL, enq_main,
                                 &e[started])) != 0) {
            break;
        }
    }
    if (rc == 0 && nthreads > 1) {
        startline_open(&line, nthreads);
    }
    else if (rc != 0) {
        atomic_store(&line.go, 1);
    }
    for (int t = 0; t < started; t++) {
        pthread_join(tid[t], NULL);
    }
    if (save != NULL) {
        PyEval_RestoreThread(save);
    }
    return rc;
}

/* enqueue(mode, nthreads, n_per_thread[, release_gil]) -> (mean ns/op per
 * thread, decrefs applied by a concurrent drain).  Every thread drops `n`
 * references to one list; afterwards they are applied (eg_flush / pool
 * drain) and the list's refcount is checked.  release_gil=1 lets the
 * producers run while no thread holds the GIL -- which on 3.9-3.11 makes
 * eg_decref's "am I attached?" test cheaper (see run.py) -- and lets
 * exitguard's drainers run meanwhile. */
static PyObject *
b_enqueue(PyObject *m, PyObject *args)
{
    (void)m;
    int mode, nthreads, release_gil = 0;
    long n;
    if (!PyArg_ParseTuple(args, "iil|p", &mode, &nthreads, &n, &release_gil)) {
        return NULL;
    }
    if (nthreads < 1 || nthreads > EGB_MAX_THREADS || n < 1
            || mode < M_EG || mode > M_GS_NEW) {
        PyErr_SetString(PyExc_ValueError, "bad mode, thread count or n");
        return NULL;
    }
    PyObject *obj = PyList_New(0);
    if (obj == NULL) {
        return NULL;
    }
    add_refs(obj, n * nthreads);
    enq_t e[EGB_MAX_THREADS];
    for (int t = 0; t < nthreads; t++) {
        e[t] = (enq_t){mode, n, obj, NULL, 0};
    }
    int rc = run_enqueue(e, nthreads, release_gil);
    Py_ssize_t applied_after = 0, k;
    if (mode == M_EG) {
        while ((k = eg_flush()) > 0) {
            applied_after += k;
        }
    }
    else if (mode == M_POOL) {
        pool_drain();
    }
    Py_ssize_t left = Py_REFCNT(obj);
    Py_DECREF(obj);
    if (rc != 0) {
        return errno_error(rc, "pthread_create");
    }
    if (EGB_EXACT_REFCNT && left != 1) {
        PyErr_Format(PyExc_AssertionError,
                     "decrefs lost or still queued: refcount %zd", left);
        return NULL;
    }
    double sum = 0;
    for (int t = 0; t < nthreads; t++) {
        sum += e[t].ns;
    }
    /* For exitguard, how many decrefs a concurrent drain (possible only
     * with release_gil) applied before our flush. */
    Py_ssize_t early = mode == M_EG
        ? (Py_ssize_t)n * nthreads - applied_after : 0;
    return Py_BuildValue("(dn)", sum / nthreads, early);
}

/* ---- 2: a producer while the main thread runs bytecode ------------------------ */

/* One native producer drops references to a private list until told to
 * stop, while the main thread runs bytecode for a fixed time: the
 * producer's rate and the main thread's progress are both measured over
 * the same window.  The list carries PROD_LIMIT extra references (set
 * directly: a loop of that many increfs would dominate the run); the
 * producer never drops more than that. */
#define PROD_LIMIT (1L << 30)
#define PROD_CHUNK 1024

static struct {
    pthread_t tid;
    int mode;
    PyObject *obj;
    atomic_int stop;
    long ops;
    double ns;
    int running;
} prod;

static void *
prod_main(void *arg)
{
    (void)arg;
    kept_tstate kept = {0, NULL};
    if (prod.mode == M_GS_KEPT) {
        kept_begin(&kept);
    }
    long ops = 0;
    double t0 = egb_now_ns();
    while (!atomic_load_explicit(&prod.stop, memory_order_relaxed)
           && ops < PROD_LIMIT) {
        if (prod.mode == M_EG) {
            egb_loop_eg_decref(prod.obj, PROD_CHUNK);
            ops += PROD_CHUNK;
        }
        else if (prod.mode == M_SPIN) {
            /* The control: a native thread that only burns its core,
             * touching neither Python nor memory. */
            for (int i = 0; i < PROD_CHUNK; i++) {
                egb_clobber(prod.obj);
            }
        }
        else {
            egb_loop_gs_decref(prod.obj, 1);
            ops++;
        }
    }
    prod.ns = (egb_now_ns() - t0) / (double)(ops ? ops : 1);
    prod.ops = ops;
    if (prod.mode == M_GS_KEPT) {
        kept_end(&kept);
    }
    return NULL;
}

/* producer_start(mode): M_EG, M_GS_KEPT, or M_SPIN (a thread that only
 * spins: the control for sharing the machine); returns at once. */
static PyObject *
b_producer_start(PyObject *m, PyObject *args)
{
    (void)m;
    int mode;
    if (!PyArg_ParseTuple(args, "i", &mode)) {
        return NULL;
    }
    if (prod.running || (mode != M_EG && mode != M_GS_KEPT && mode != M_SPIN)) {
        PyErr_SetString(PyExc_ValueError, "producer busy, or bad mode");
        return NULL;
    }
    PyObject *obj = PyList_New(0);
    if (obj == NULL) {
        return NULL;
    }
    Py_SET_REFCNT(obj, 1 + PROD_LIMIT);
    prod.mode = mode;
    prod.obj = obj;
    prod.ops = 0;
    atomic_store(&prod.stop, 0);
    int rc = pthread_create(&prod.tid, NULL, prod_main, NULL);
    if (rc != 0) {
        Py_SET_REFCNT(obj, 1);
        Py_DECREF(obj);
        return errno_error(rc, "pthread_create");
    }
    prod.running = 1;
    Py_RETURN_NONE;
}

/* producer_stop() -> (operations, ns/op in the producer's loop, decrefs
 * still queued when it stopped). */
static PyObject *
b_producer_stop(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    if (!prod.running) {
        PyErr_SetString(PyExc_RuntimeError, "no producer");
        return NULL;
    }
    atomic_store(&prod.stop, 1);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(prod.tid, NULL);
    Py_END_ALLOW_THREADS
    prod.running = 0;
    PyObject *obj = prod.obj;
    Py_ssize_t queued = (Py_ssize_t)(Py_REFCNT(obj) - (1 + PROD_LIMIT - prod.ops));
    while (eg_flush() > 0) {
    }
    Py_ssize_t left = Py_REFCNT(obj) - (PROD_LIMIT - prod.ops);
    Py_SET_REFCNT(obj, 1);
    Py_DECREF(obj);
    if (EGB_EXACT_REFCNT && left != 1) {
        PyErr_Format(PyExc_AssertionError, "decrefs lost: %zd", left - 1);
        return NULL;
    }
    return Py_BuildValue("(ldn)", prod.ops, prod.ns, queued);
}

/* push_one(obj): a native thread drops one reference to obj with
 * eg_decref and ends (a producer that went idle); returns at once. */
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
    pthread_t tid;
    Py_INCREF(obj);
    int rc = pthread_create(&tid, NULL, push_one_main, obj);
    if (rc != 0) {
        Py_DECREF(obj);
        return errno_error(rc, "pthread_create");
    }
    pthread_detach(tid);
    Py_RETURN_NONE;
}

/* ---- 3: drain cost per object -------------------------------------------------- */

static void *
push_array_main(void *arg)
{
    enq_t *e = arg;
    PyObject **objs = (PyObject **)e->obj;
    for (long i = 0; i < e->n; i++) {
        eg_decref(objs[i]);
    }
    return NULL;
}

/* A native thread queues one decref per element of objs; the caller holds
 * the GIL meanwhile, so nothing is applied yet. */
static int
queue_array(PyObject **objs, long n)
{
    enq_t e = {M_EG, n, (PyObject *)objs, NULL, 0};
    pthread_t tid;
    int rc = pthread_create(&tid, NULL, push_array_main, &e);
    if (rc == 0) {
        pthread_join(tid, NULL);
    }
    return rc;
}

static PyObject **
new_floats(long n)
{
    PyObject **objs = malloc(sizeof(PyObject *) * (size_t)n);
    if (objs == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    for (long i = 0; i < n; i++) {
        if ((objs[i] = PyFloat_FromDouble((double)i + 0.5)) == NULL) {
            while (i-- > 0) {
                Py_DECREF(objs[i]);
            }
            free(objs);
            return NULL;
        }
    }
    return objs;
}

/* drain(n, dealloc) -> (ns/object of eg_flush over the n queued decrefs it
 * applied, ns/object of a bare Py_DECREF loop over the same objects, how
 * many eg_flush applied).  n distinct floats, in the same order for both; dealloc=0: each keeps another reference (the
 * queue's own overhead), dealloc=1: the decref frees it. */
static PyObject *
b_drain(PyObject *m, PyObject *args)
{
    (void)m;
    long n;
    int dealloc;
    if (!PyArg_ParseTuple(args, "lp", &n, &dealloc)) {
        return NULL;
    }
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "n >= 1");
        return NULL;
    }
    while (eg_flush() > 0) {              /* start from an empty queue */
    }
    PyObject **objs = new_floats(n);
    if (objs == NULL) {
        return NULL;
    }
    if (!dealloc) {
        for (long i = 0; i < n; i++) {
            Py_INCREF(objs[i]);
        }
    }
    int rc = queue_array(objs, n);
    if (rc != 0) {
        return errno_error(rc, "pthread_create");   /* leaks: benchmark */
    }
    double t0 = egb_cpu_ns();
    Py_ssize_t applied = egb_loop_flush(n);
    double eg_ns = (egb_cpu_ns() - t0) / (double)(applied > 0 ? applied : 1);
    CALLGRIND_DUMP_STATS_AT("drain");

    if (dealloc) {
        free(objs);
        if ((objs = new_floats(n)) == NULL) {
            return NULL;
        }
    }
    else {
        for (long i = 0; i < n; i++) {
            Py_INCREF(objs[i]);
        }
    }
    t0 = egb_cpu_ns();
    egb_loop_bare_decref(objs, n);
    double bare_ns = (egb_cpu_ns() - t0) / (double)n;
    CALLGRIND_DUMP_STATS_AT("drain_ref");
    if (!dealloc) {
        for (long i = 0; i < n; i++) {
            Py_DECREF(objs[i]);
        }
    }
    free(objs);
    /* With a GIL nothing else can drain while we hold it: every decref
     * must have been ours to apply. */
    if (EGB_EXACT_REFCNT && applied != n) {
        PyErr_SetString(PyExc_AssertionError,
                        "eg_flush applied fewer decrefs than were queued");
        return NULL;
    }
    return Py_BuildValue("(ddn)", eg_ns, bare_ns, applied);
}

/* ---- 4: eg_ref_new + eg_ref_release, attached ------------------------------------ */

static PyObject *
b_ref_pair(PyObject *m, PyObject *arg)
{
    (void)m;
    long n;
    if (parse_count(arg, &n) < 0) {
        return NULL;
    }
    PyObject *obj = PyList_New(0);
    if (obj == NULL) {
        return NULL;
    }
    eg_ref *warm = eg_ref_new(obj);       /* the registry has its first chunk */
    if (warm == NULL) {
        Py_DECREF(obj);
        return NULL;
    }
    eg_ref_release(warm);
    double t0 = egb_cpu_ns();
    egb_loop_ref_pair(obj, n);
    double eg_ns = (egb_cpu_ns() - t0) / (double)n;
    t0 = egb_cpu_ns();
    egb_loop_incdec(obj, n);
    double base_ns = (egb_cpu_ns() - t0) / (double)n;
    Py_DECREF(obj);
    return Py_BuildValue("(dd)", eg_ns, base_ns);
}

/* ---- 5: attach and drop, variant by variant ------------------------------------- */

/* The variants exitguard and CPython's own APIs contribute to the attach
 * and drop families of bench/run.py; the binding peers' variants are in
 * bench/peers/.  Each runs on a fresh native pthread (harness.h), n
 * operations, uncontended.
 *
 *   attach/eg               eg_gil_ensure(NULL) + eg_gil_release: the gate,
 *                           the cached thread state, the PEP 788 guard on 3.15
 *   attach/gilstate_kept    PyGILState_Ensure/Release on a thread that keeps
 *                           its state (outer Ensure + PyEval_SaveThread)
 *   attach/gilstate_new     the same pairs with nothing kept: each Ensure
 *                           creates a state, each Release deletes it
 *   attach/raw_kept         PyEval_RestoreThread/PyEval_SaveThread on the
 *                           thread's own PyThreadState_New state: the floor,
 *                           what any attach costs with no bookkeeping at all
 *   attach/pep788_kept      (3.15) PyThreadState_EnsureFromView/Release on a
 *                           view of the main interpreter, the state kept by an
 *                           outer Ensure + PyEval_SaveThread
 *   attach/pep788_new       (3.15) the same with nothing kept
 *   drop/eg_decref          eg_decref with no GIL (queued)
 *   drop/eg_ref_release     eg_ref_release of a registered reference with no
 *                           GIL (queued, and the registry slot freed)
 *   drop/gilstate_kept      PyGILState_Ensure + Py_DECREF + Release, kept
 *   drop/gilstate_new       the same, a new thread state each time
 */

EGB_NOINLINE void
egb_loop_eg_attach(egb_job *j)
{
    for (long i = 0; i < j->n; i++) {
        eg_gil st;
        if (eg_gil_ensure(NULL, &st) != 0) {
            j->failed++;
            continue;
        }
        egb_touch(j->obj);
        eg_gil_release(&st);
    }
}

EGB_NOINLINE void
egb_loop_gs_attach(egb_job *j)
{
    for (long i = 0; i < j->n; i++) {
        PyGILState_STATE g = PyGILState_Ensure();
        egb_touch(j->obj);
        PyGILState_Release(g);
    }
}

EGB_NOINLINE void
egb_loop_raw_attach(egb_job *j)
{
    PyThreadState *ts = j->ctx;
    for (long i = 0; i < j->n; i++) {
        PyEval_RestoreThread(ts);
        egb_touch(j->obj);
        (void)PyEval_SaveThread();
    }
}

EGB_NOINLINE void
egb_loop_eg_decref_job(egb_job *j)
{
    for (long i = 0; i < j->n; i++) {
        eg_decref(j->obj);
    }
}

EGB_NOINLINE void
egb_loop_eg_ref_release(egb_job *j)
{
    eg_ref **refs = j->items;
    for (long i = 0; i < j->n; i++) {
        eg_ref_release(refs[i]);
    }
}

EGB_NOINLINE void
egb_loop_gs_drop(egb_job *j)
{
    for (long i = 0; i < j->n; i++) {
        PyGILState_STATE g = PyGILState_Ensure();
        Py_DECREF(j->obj);
        PyGILState_Release(g);
    }
}

static void
body_eg_attach(egb_job *j)
{
    eg_gil st;                  /* the first attach makes the cached state */
    if (eg_gil_ensure(NULL, &st) != 0) {
        j->failed = j->n;
        return;
    }
    eg_gil_release(&st);
    egb_time(j, egb_loop_eg_attach);
}

static void
gilstate_kept(egb_job *j, void (*loop)(egb_job *))
{
    kept_tstate kept;
    kept_begin(&kept);
    egb_time(j, loop);
    kept_end(&kept);
}

static void body_gs_attach_kept(egb_job *j) { gilstate_kept(j, egb_loop_gs_attach); }
static void body_gs_attach_new(egb_job *j) { egb_time(j, egb_loop_gs_attach); }
static void body_gs_drop_kept(egb_job *j) { gilstate_kept(j, egb_loop_gs_drop); }
static void body_gs_drop_new(egb_job *j) { egb_time(j, egb_loop_gs_drop); }
static void body_eg_decref(egb_job *j) { egb_time(j, egb_loop_eg_decref_job); }
static void body_eg_ref_release(egb_job *j) { egb_time(j, egb_loop_eg_ref_release); }

/* The floor: a state of our own, made without the GIL (PyThreadState_New
 * takes the runtime's lock), deleted attached at the end. */
static void
body_raw_attach(egb_job *j)
{
    PyInterpreterState *interp = j->items;
    PyThreadState *ts = PyThreadState_New(interp);
    if (ts == NULL) {
        j->failed = j->n;
        return;
    }
    j->ctx = ts;
    egb_time(j, egb_loop_raw_attach);
    PyEval_RestoreThread(ts);
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent();
}

#if PY_VERSION_HEX >= 0x030F00B1
/* PEP 788 (CPython 3.15): the protected attach CPython itself offers. */
EGB_NOINLINE void
egb_loop_pep788_attach(egb_job *j)
{
    PyInterpreterView *view = j->items;
    for (long i = 0; i < j->n; i++) {
        PyThreadStateToken *t = PyThreadState_EnsureFromView(view);
        if (t == NULL) {
            j->failed++;
            continue;
        }
        egb_touch(j->obj);
        PyThreadState_Release(t);
    }
}

/* Kept: an outer Ensure makes the thread's state and PyEval_SaveThread
 * detaches it; each inner Ensure re-attaches that state (CPython reuses the
 * thread's gilstate state of the same interpreter). */
static void
body_pep788_attach_kept(egb_job *j)
{
    PyThreadStateToken *outer = PyThreadState_EnsureFromView(j->items);
    if (outer == NULL) {
        j->failed = j->n;
        return;
    }
    PyThreadState *saved = PyEval_SaveThread();
    egb_time(j, egb_loop_pep788_attach);
    PyEval_RestoreThread(saved);
    PyThreadState_Release(outer);
}

static void body_pep788_attach_new(egb_job *j) { egb_time(j, egb_loop_pep788_attach); }
#endif

enum { ITEMS_NONE, ITEMS_REFS, ITEMS_INTERP, ITEMS_VIEW };

typedef struct {
    const char *name;
    void (*body)(egb_job *j);
    int drops;                  /* each operation drops one reference */
    int items;
} egb_variant;

static const egb_variant egb_variants[] = {
    {"attach/eg", body_eg_attach, 0, ITEMS_NONE},
    {"attach/gilstate_kept", body_gs_attach_kept, 0, ITEMS_NONE},
    {"attach/gilstate_new", body_gs_attach_new, 0, ITEMS_NONE},
    {"attach/raw_kept", body_raw_attach, 0, ITEMS_INTERP},
#if PY_VERSION_HEX >= 0x030F00B1
    {"attach/pep788_kept", body_pep788_attach_kept, 0, ITEMS_VIEW},
    {"attach/pep788_new", body_pep788_attach_new, 0, ITEMS_VIEW},
#endif
    {"drop/eg_decref", body_eg_decref, 1, ITEMS_NONE},
    {"drop/eg_ref_release", body_eg_ref_release, 1, ITEMS_REFS},
    {"drop/gilstate_kept", body_gs_drop_kept, 1, ITEMS_NONE},
    {"drop/gilstate_new", body_gs_drop_new, 1, ITEMS_NONE},
};

/* run(variant, n) -> (CPU ns, wall ns) per operation.  Attached. */
static PyObject *
b_run(PyObject *m, PyObject *args)
{
    (void)m;
    const char *name;
    long n;
    if (!PyArg_ParseTuple(args, "sl", &name, &n)) {
        return NULL;
    }
    const egb_variant *v = NULL;
    for (size_t i = 0; i < sizeof(egb_variants) / sizeof(egb_variants[0]); i++) {
        if (strcmp(name, egb_variants[i].name) == 0) {
            v = &egb_variants[i];
        }
    }
    if (v == NULL || n < 1) {
        PyErr_Format(PyExc_ValueError, "unknown variant %s, or n < 1", name);
        return NULL;
    }
    PyObject *obj = PyList_New(0);
    if (obj == NULL) {
        return NULL;
    }
    egb_job j = {v->body, obj, NULL, NULL, n, 0, 0, 0};
    eg_ref **refs = NULL;
    if (v->items == ITEMS_REFS) {
        if ((refs = malloc(sizeof(*refs) * (size_t)n)) == NULL) {
            Py_DECREF(obj);
            return PyErr_NoMemory();
        }
        for (long i = 0; i < n; i++) {
            if ((refs[i] = eg_ref_new(obj)) == NULL) {
                return NULL;            /* leaks: benchmark */
            }
        }
        j.items = refs;
    }
    else if (v->drops) {
        add_refs(obj, n);
    }
    else if (v->items == ITEMS_INTERP) {
        j.items = PyThreadState_GetInterpreter(PyThreadState_Get());
    }
#if PY_VERSION_HEX >= 0x030F00B1
    else if (v->items == ITEMS_VIEW) {
        /* nanobind's choice: a view of the main interpreter. */
        if ((j.items = PyInterpreterView_FromMain()) == NULL) {
            Py_DECREF(obj);
            return PyErr_NoMemory();
        }
    }
#endif
    Py_ssize_t before = Py_REFCNT(obj);
    int rc = egb_run_native(&j);
#if PY_VERSION_HEX >= 0x030F00B1
    if (v->items == ITEMS_VIEW) {
        PyInterpreterView_Close(j.items);
    }
#endif
    free(refs);
    while (eg_flush() > 0) {            /* what was queued */
    }
    Py_ssize_t after = Py_REFCNT(obj);
    Py_DECREF(obj);
    if (rc < 0) {
        return NULL;
    }
    if (EGB_EXACT_REFCNT && after != before - (v->drops ? n : 0)) {
        PyErr_Format(PyExc_AssertionError, "%s: reference count %zd, expected %zd",
                     name, after, before - (v->drops ? n : 0));
        return NULL;
    }
    return egb_result(&j);
}

static PyObject *
variant_names(void)
{
    size_t k = sizeof(egb_variants) / sizeof(egb_variants[0]);
    PyObject *list = PyList_New((Py_ssize_t)k);
    for (size_t i = 0; list != NULL && i < k; i++) {
        PyObject *s = PyUnicode_FromString(egb_variants[i].name);
        if (s == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, s);
    }
    return list;
}

/* ---- 6: a process exiting with native threads and live references ------------------ */

/* The workers of the exit benchmark: registered native threads that wake
 * every 10 ms, attach, detach, and end when phase 1 asks them to (their
 * request_stop writes one shared eventfd, which stays readable). */
static int workers_efd = -1;

static void
worker_stop(void *arg)
{
    (void)arg;
    uint64_t one = 1;
    ssize_t w = write(workers_efd, &one, sizeof(one));
    (void)w;
}

static void
worker_run(void *arg)
{
    (void)arg;
    while (!eg_thread_stop_requested()) {
        struct pollfd p = {.fd = workers_efd, .events = POLLIN};
        if (poll(&p, 1, 10) != 0) {
            continue;                     /* stop requested (or EINTR) */
        }
        eg_gil st;
        if (eg_gil_ensure(NULL, &st) != 0) {
            break;
        }
        eg_gil_release(&st);
    }
}

/* start_workers(n): n registered native threads, never joined by us:
 * exitguard's phase 1 stops and joins them. */
static PyObject *
b_start_workers(PyObject *m, PyObject *arg)
{
    (void)m;
    long n;
    if (parse_count(arg, &n) < 0) {
        return NULL;
    }
    if (workers_efd < 0
            && (workers_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    for (long i = 0; i < n; i++) {
        eg_thread *t;
        int rc = eg_thread_start(&t, "egbench-worker", worker_run,
                                 worker_stop, NULL);
        if (rc < 0) {
            return errno_error(rc, "eg_thread_start");
        }
    }
    Py_RETURN_NONE;
}

/* hold_refs(iterable): one eg_ref per item, never released by us: phase 2
 * releases them.  Returns how many. */
static PyObject *
b_hold_refs(PyObject *m, PyObject *seq)
{
    (void)m;
    PyObject *fast = PySequence_Fast(seq, "hold_refs: a sequence");
    if (fast == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    eg_ref **refs = malloc(sizeof(eg_ref *) * (size_t)(n ? n : 1));
    if (refs == NULL) {
        Py_DECREF(fast);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if ((refs[i] = eg_ref_new(PySequence_Fast_GET_ITEM(fast, i)))
                == NULL) {
            Py_DECREF(fast);
            return NULL;                  /* leaks: benchmark */
        }
    }
    Py_DECREF(fast);
    return PyLong_FromSsize_t(n);         /* refs: left to phase 2 */
}

/* ---- 7: eg_log versus an attach and a logging call -------------------------------- */

static const char egb_logger[] = "egbench";

enum { L_ENABLED, L_DISABLED, L_ENABLED_QUERY, L_BASELINE, L_SITE };

EGB_NOINLINE void
egb_loop_log(int level, long n)
{
    for (long i = 0; i < n; i++) {
        eg_log(level, egb_logger, "message %ld from a native thread", i);
    }
}

/* EG_LOG: the same message through a call site that keeps the level. */
EGB_NOINLINE void
egb_loop_log_site(int level, long n)
{
    for (long i = 0; i < n; i++) {
        EG_LOG(level, "egbench", "message %ld from a native thread", i);
    }
}

EGB_NOINLINE long
egb_loop_log_enabled(int level, long n)
{
    long yes = 0;
    for (long i = 0; i < n; i++) {
        yes += eg_log_enabled(level, egb_logger);
    }
    return yes;
}

EGB_NOINLINE void
egb_loop_log_baseline(PyObject *call, long n)
{
    for (long i = 0; i < n; i++) {
        PyGILState_STATE g = PyGILState_Ensure();
        PyObject *r = PyObject_CallFunction(call, "sl",
                                            "message %d from a native thread",
                                            i);
        if (r == NULL) {
            PyErr_WriteUnraisable(call);
        }
        Py_XDECREF(r);
        PyGILState_Release(g);
    }
}

/* One persistent native thread runs every logging job, so that the first
 * message of a thread (which looks up the thread's name once) is never
 * inside a timed burst. */
static struct {
    pthread_t tid;
    int started;
    sem_t go, done;
    int mode;               /* -1: quit */
    int level;
    long n;
    PyObject *call;
    double ns;
} lw;

static void *
lw_main(void *arg)
{
    (void)arg;
    for (;;) {
        while (sem_wait(&lw.go) != 0) {
        }
        if (lw.mode < 0) {
            return NULL;
        }
        kept_tstate kept = {0, NULL};
        if (lw.mode == L_BASELINE) {
            kept_begin(&kept);
        }
        double t0 = egb_cpu_ns();
        switch (lw.mode) {
        case L_ENABLED:
        case L_DISABLED:
            egb_loop_log(lw.level, lw.n);
            break;
        case L_ENABLED_QUERY:
            (void)egb_loop_log_enabled(lw.level, lw.n);
            break;
        case L_SITE:
            egb_loop_log_site(lw.level, lw.n);
            break;
        default:
            egb_loop_log_baseline(lw.call, lw.n);
        }
        lw.ns = (egb_cpu_ns() - t0) / (double)lw.n;
        if (lw.mode == L_BASELINE) {
            kept_end(&kept);
        }
        sem_post(&lw.done);
    }
}

/* log_job(mode, level, n[, call]) -> ns per message on the logging thread.
 * mode: 0/1 eg_log (the level decides enabled or not), 2 eg_log_enabled()
 * alone, 3 baseline: attach (kept thread state) + call(fmt, i) + detach,
 * 4 EG_LOG (the level kept at its call site). */
static PyObject *
b_log_job(PyObject *m, PyObject *args)
{
    (void)m;
    int mode, level;
    long n;
    PyObject *call = NULL;
    if (!PyArg_ParseTuple(args, "iil|O", &mode, &level, &n, &call)) {
        return NULL;
    }
    if (n < 1 || mode < L_ENABLED || mode > L_SITE
            || (mode == L_BASELINE && call == NULL)) {
        PyErr_SetString(PyExc_ValueError, "bad mode or n, or no callable");
        return NULL;
    }
    if (!lw.started) {
        if (sem_init(&lw.go, 0, 0) != 0 || sem_init(&lw.done, 0, 0) != 0) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        int rc = pthread_create(&lw.tid, NULL, lw_main, NULL);
        if (rc != 0) {
            return errno_error(rc, "pthread_create");
        }
        pthread_setname_np(lw.tid, "egbench-log");
        lw.started = 1;
    }
    lw.mode = mode;
    lw.level = level;
    lw.n = n;
    lw.call = call;
    Py_BEGIN_ALLOW_THREADS
    sem_post(&lw.go);
    while (sem_wait(&lw.done) != 0) {
    }
    Py_END_ALLOW_THREADS
    return PyFloat_FromDouble(lw.ns);
}

/* A paced producer for the forwarder's throughput: bursts of `burst`
 * messages at an enabled level, a pause of `pause_us` after each, until
 * stopped.  Bursts keep the ring fed -- when the forwarder is slower, the
 * ring stays full and the excess is dropped and counted -- while the
 * pauses leave the forwarder a core of its own on a two-core machine.
 * bench/run.py reads the delivered count from exitguard.stats(). */
static struct {
    pthread_t tid;
    atomic_int stop;
    int running;
    long burst, pause_us, calls;
    double seconds;
} ls;

static void *
ls_main(void *arg)
{
    (void)arg;
    struct timespec pause = {0, ls.pause_us * 1000L};
    long calls = 0;
    double t0 = egb_now_ns();
    while (!atomic_load_explicit(&ls.stop, memory_order_relaxed)) {
        egb_loop_log(EG_LOG_WARNING, ls.burst);
        calls += ls.burst;
        nanosleep(&pause, NULL);
    }
    ls.seconds = (egb_now_ns() - t0) / 1e9;
    ls.calls = calls;
    return NULL;
}

static PyObject *
b_log_stream_start(PyObject *m, PyObject *args)
{
    (void)m;
    if (ls.running) {
        PyErr_SetString(PyExc_RuntimeError, "log stream already running");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "ll", &ls.burst, &ls.pause_us)) {
        return NULL;
    }
    atomic_store(&ls.stop, 0);
    int rc = pthread_create(&ls.tid, NULL, ls_main, NULL);
    if (rc != 0) {
        return errno_error(rc, "pthread_create");
    }
    ls.running = 1;
    Py_RETURN_NONE;
}

/* log_stream_stop() -> (messages logged, seconds). */
static PyObject *
b_log_stream_stop(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    if (!ls.running) {
        PyErr_SetString(PyExc_RuntimeError, "no log stream");
        return NULL;
    }
    atomic_store(&ls.stop, 1);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(ls.tid, NULL);
    Py_END_ALLOW_THREADS
    ls.running = 0;
    return Py_BuildValue("(ld)", ls.calls, ls.seconds);
}

/* ---- 8: completions into asyncio ------------------------------------------------- */

/* Consumer-side state, touched only attached on the loop's thread. */
static struct {
    long target;
    long count;
    PyObject *done;         /* called once when count reaches target */
} cq_sink;

static void
cq_sink_tick(void)
{
    if (++cq_sink.count == cq_sink.target && cq_sink.done != NULL) {
        PyObject *done = cq_sink.done;
        cq_sink.done = NULL;
        PyObject *r = PyObject_CallNoArgs(done);
        if (r == NULL) {
            PyErr_WriteUnraisable(done);
        }
        Py_XDECREF(r);
        Py_DECREF(done);
    }
}

static void
on_complete(void *arg, int cancelled)
{
    (void)arg;
    if (!cancelled) {
        cq_sink_tick();
    }
}

/* tick(): the baseline's callback, a builtin like on_complete is C. */
static PyObject *
b_tick(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    cq_sink_tick();
    Py_RETURN_NONE;
}

typedef struct {
    eg_cq *q;               /* exitguard: post here */
    PyObject *cst;          /* baseline: loop.call_soon_threadsafe */
    PyObject *tick;
    long n;
    long enomem;
} post_t;

static struct {
    pthread_t tid[EGB_MAX_THREADS];
    post_t p[EGB_MAX_THREADS];
    int nthreads;
} posters;

static void *
post_main(void *arg)
{
    post_t *p = arg;
    if (p->q != NULL) {
        for (long i = 0; i < p->n; i++) {
            int rc;
            while ((rc = eg_cq_post(p->q, on_complete, NULL)) == -ENOMEM) {
                p->enomem++;
            }
            if (rc != 0) {
                break;          /* closed: cannot happen in the benchmark */
            }
        }
        return NULL;
    }
    kept_tstate kept = {0, NULL};
    kept_begin(&kept);
    for (long i = 0; i < p->n; i++) {
        PyGILState_STATE g = PyGILState_Ensure();
        PyObject *r = PyObject_CallOneArg(p->cst, p->tick);
        if (r == NULL) {
            PyErr_WriteUnraisable(p->cst);
        }
        Py_XDECREF(r);
        PyGILState_Release(g);
    }
    kept_end(&kept);
    return NULL;
}

/* post(queue_or_None, call_soon_threadsafe_or_None, n, nthreads, done):
 * start nthreads posting threads (n completions in all) and return at
 * once; done() is called on the loop's thread after the n-th completion.
 * post_join() joins the posters (call it after done). */
static PyObject *
b_post(PyObject *m, PyObject *args)
{
    PyObject *qobj, *cst, *done;
    long n;
    int nthreads;
    if (!PyArg_ParseTuple(args, "OOliO", &qobj, &cst, &n, &nthreads, &done)) {
        return NULL;
    }
    if (posters.nthreads || nthreads < 1 || nthreads > EGB_MAX_THREADS
            || n < nthreads) {
        PyErr_SetString(PyExc_ValueError, "posters busy, or bad n/nthreads");
        return NULL;
    }
    eg_cq *q = NULL;
    if (qobj != Py_None && (q = eg_cq_from_object(qobj)) == NULL) {
        return NULL;
    }
    PyObject *tick = PyObject_GetAttrString(m, "tick");
    if (tick == NULL) {
        return NULL;
    }
    Py_XDECREF(cq_sink.done);
    cq_sink.target = n;
    cq_sink.count = 0;
    cq_sink.done = Py_NewRef(done);
    for (int t = 0; t < nthreads; t++) {
        /* A strong reference: the bound method is a temporary of the
         * caller's.  post_join() drops it. */
        posters.p[t] = (post_t){q, q ? NULL : Py_NewRef(cst), tick,
                                n / nthreads + (t < n % nthreads), 0};
        int rc = pthread_create(&posters.tid[t], NULL, post_main,
                                &posters.p[t]);
        if (rc != 0) {
            Py_DECREF(tick);
            return errno_error(rc, "pthread_create");   /* benchmark */
        }
        posters.nthreads = t + 1;
    }
    Py_DECREF(tick);          /* the module keeps it alive */
    Py_RETURN_NONE;
}

static PyObject *
b_post_join(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    long enomem = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int t = 0; t < posters.nthreads; t++) {
        pthread_join(posters.tid[t], NULL);
        enomem += posters.p[t].enomem;
    }
    Py_END_ALLOW_THREADS
    for (int t = 0; t < posters.nthreads; t++) {
        Py_CLEAR(posters.p[t].cst);
    }
    posters.nthreads = 0;
    return PyLong_FromLong(enomem);
}

/* ---- Memory ------------------------------------------------------------------------ */

/* Peak resident set size (VmHWM) in bytes. */
static long long
peak_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long long kb = -1;
    if (f == NULL) {
        return -1;
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        if (sscanf(line, "VmHWM: %lld kB", &kb) == 1) {
            break;
        }
    }
    fclose(f);
    return kb * 1024;
}

/* mem_queue(n) -> bytes of peak RSS per queued decref: a native thread
 * queues n decrefs while the caller holds the GIL (nothing is applied
 * meanwhile), then they are applied.  Run it in a fresh process. */
static PyObject *
b_mem_queue(PyObject *m, PyObject *arg)
{
    (void)m;
    long n;
    if (parse_count(arg, &n) < 0) {
        return NULL;
    }
    PyObject *obj = PyList_New(0);
    if (obj == NULL) {
        return NULL;
    }
    add_refs(obj, n);
    while (eg_flush() > 0) {
    }
    long long before = peak_rss();
    enq_t e = {M_EG, n, obj, NULL, 0};
    pthread_t tid;
    int rc = pthread_create(&tid, NULL, enq_main, &e);
    if (rc != 0) {
        return errno_error(rc, "pthread_create");
    }
    pthread_join(tid, NULL);
    long long after = peak_rss();
    Py_ssize_t applied = 0, k;
    while ((k = eg_flush()) > 0) {
        applied += k;
    }
    Py_ssize_t left = Py_REFCNT(obj);
    Py_DECREF(obj);
    if (EGB_EXACT_REFCNT && (applied != n || left != 1)) {
        PyErr_Format(PyExc_AssertionError, "applied %zd of %ld", applied, n);
        return NULL;
    }
    return PyFloat_FromDouble((double)(after - before) / (double)n);
}

/* mem_refs(n) -> bytes of peak RSS per live eg_ref (n references to one
 * object; our own array of handles is allocated and touched before the
 * first reading).  Run it in a fresh process. */
static PyObject *
b_mem_refs(PyObject *m, PyObject *arg)
{
    (void)m;
    long n;
    if (parse_count(arg, &n) < 0) {
        return NULL;
    }
    eg_ref **refs = malloc(sizeof(eg_ref *) * (size_t)n);
    if (refs == NULL) {
        return PyErr_NoMemory();
    }
    /* Not 0: GCC turns malloc + memset(0) into calloc, whose fresh pages
     * stay untouched -- and would then be counted against eg_ref. */
    memset(refs, 0xff, sizeof(eg_ref *) * (size_t)n);
    PyObject *obj = PyList_New(0);
    if (obj == NULL) {
        free(refs);
        return NULL;
    }
    long long before = peak_rss();
    for (long i = 0; i < n; i++) {
        if ((refs[i] = eg_ref_new(obj)) == NULL) {
            return NULL;                  /* leaks: benchmark */
        }
    }
    long long after = peak_rss();
    for (long i = 0; i < n; i++) {
        eg_ref_release(refs[i]);
    }
    free(refs);
    Py_DECREF(obj);
    return PyFloat_FromDouble((double)(after - before) / (double)n);
}

/* ---- Module -------------------------------------------------------------------------- */

/* callgrind_dump(name): under callgrind, dump the counters collected since
 * the last dump as `name` and zero them (bench/callgrind.py); elsewhere a
 * no-op.  Returns whether valgrind's header was there at build time. */
static PyObject *
b_callgrind_dump(PyObject *m, PyObject *arg)
{
    (void)m;
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL) {
        return NULL;
    }
    CALLGRIND_DUMP_STATS_AT(name);
    return PyBool_FromLong(EGB_HAVE_CALLGRIND);
}

static PyObject *
b_pool_drain(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    return PyLong_FromSsize_t(pool_drain());
}

static PyMethodDef methods[] = {
    {"enqueue", b_enqueue, METH_VARARGS,
     "enqueue(mode, nthreads, n[, release_gil]) -> (ns/op per thread, "
     "applied early)"},
    {"producer_start", b_producer_start, METH_VARARGS, NULL},
    {"producer_stop", b_producer_stop, METH_NOARGS, NULL},
    {"push_one", b_push_one, METH_O, NULL},
    {"drain", b_drain, METH_VARARGS,
     "drain(n, dealloc) -> (eg_flush ns/object, bare Py_DECREF ns/object, applied)"},
    {"ref_pair", b_ref_pair, METH_O,
     "ref_pair(n) -> (eg_ref_new+eg_ref_release ns, Py_INCREF+Py_DECREF ns)"},
    {"run", b_run, METH_VARARGS, "run(variant, n) -> (CPU ns, wall ns) per operation"},
    {"log_stream_start", b_log_stream_start, METH_VARARGS, NULL},
    {"log_stream_stop", b_log_stream_stop, METH_NOARGS, NULL},
    {"start_workers", b_start_workers, METH_O, NULL},
    {"hold_refs", b_hold_refs, METH_O, NULL},
    {"log_job", b_log_job, METH_VARARGS, NULL},
    {"post", b_post, METH_VARARGS, NULL},
    {"post_join", b_post_join, METH_NOARGS, NULL},
    {"tick", b_tick, METH_NOARGS, NULL},
    {"mem_queue", b_mem_queue, METH_O, NULL},
    {"mem_refs", b_mem_refs, METH_O, NULL},
    {"pool_drain", b_pool_drain, METH_NOARGS, NULL},
    {"callgrind_dump", b_callgrind_dump, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static int
exec_mod(PyObject *m)
{
    if (eg_import() < 0) {
        return -1;
    }
    if (PyModule_AddIntConstant(m, "M_EG", M_EG) < 0
            || PyModule_AddIntConstant(m, "M_POOL", M_POOL) < 0
            || PyModule_AddIntConstant(m, "M_GS_KEPT", M_GS_KEPT) < 0
            || PyModule_AddIntConstant(m, "M_GS_NEW", M_GS_NEW) < 0
            || PyModule_AddIntConstant(m, "M_SPIN", M_SPIN) < 0
            || PyModule_AddIntConstant(m, "L_ENABLED", L_ENABLED) < 0
            || PyModule_AddIntConstant(m, "L_DISABLED", L_DISABLED) < 0
            || PyModule_AddIntConstant(m, "L_ENABLED_QUERY",
                                       L_ENABLED_QUERY) < 0
            || PyModule_AddIntConstant(m, "L_SITE", L_SITE) < 0
            || PyModule_AddIntConstant(m, "L_BASELINE", L_BASELINE) < 0
            || PyModule_AddStringConstant(m, "LOGGER", egb_logger) < 0
            || PyModule_AddStringConstant(m, "EG_VERSION",
                                          EG_VERSION_STRING) < 0) {
        return -1;
    }
    PyObject *names = variant_names();
    if (names == NULL || PyModule_AddObject(m, "VARIANTS", names) < 0) {
        Py_XDECREF(names);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)exec_mod},
#if defined(Py_GIL_DISABLED)
    /* Importing a module without this slot re-enables the GIL of a
     * free-threaded build for the whole process: every figure would be a
     * GIL build's. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_egbench",
    .m_doc = "exitguard's benchmarks and their baselines (bench/run.py).",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit__egbench(void)
{
    return PyModuleDef_Init(&def);
}
