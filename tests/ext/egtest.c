/*
 * egtest.c -- a small client extension the test-suite drives.
 *
 * It uses exitguard only through the public header and the capsule, like
 * any third-party extension, and exposes each C API call to Python so that
 * the tests can drive it from scenario scripts.  Handles (eg_ref *,
 * eg_stopper *) cross into Python as plain integers: this is test code, and
 * passing a stale handle back is exactly the misuse some tests provoke.
 *
 * Threads started here are raw pthreads that never attach: they model the
 * native threads of real extensions.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>            /* defines _GNU_SOURCE: pthread_timedjoin_np */
#include <exitguard.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <unistd.h>

#if PY_VERSION_HEX < 0x030900A4
#  error "egtest needs 3.9"
#endif
#if PY_VERSION_HEX < 0x030A0000
/* Py_NewRef arrived in 3.10 (bpo-42262). */
static inline PyObject *
egtest_newref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#  define Py_NewRef egtest_newref
#endif

static PyObject *
handle_to_py(void *p)
{
    return PyLong_FromVoidPtr(p);
}

static void *
py_to_handle(PyObject *o)
{
    return PyLong_AsVoidPtr(o);
}

static void
sleep_us(int us)
{
    struct timespec ts = {us / 1000000, (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

/* ---- references -------------------------------------------------------- */

static PyObject *
t_ref_new(PyObject *m, PyObject *obj)
{
    (void)m;
    eg_ref *r = eg_ref_new(obj);
    return r ? handle_to_py(r) : NULL;
}

static PyObject *
t_ref_get(PyObject *m, PyObject *h)
{
    (void)m;
    eg_ref *r = py_to_handle(h);
    if (r == NULL && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *o = eg_ref_get(r);
    return Py_NewRef(o ? o : Py_None);
}

static PyObject *
t_ref_release(PyObject *m, PyObject *h)
{
    (void)m;
    eg_ref *r = py_to_handle(h);
    if (r == NULL && PyErr_Occurred()) {
        return NULL;
    }
    eg_ref_release(r);
    Py_RETURN_NONE;
}

/* ---- native threads ------------------------------------------------------ */

typedef struct {
    void **items;
    size_t n;
    int kind;              /* 0: eg_ref_release, 1: eg_decref */
    atomic_int *go;        /* start barrier, may be NULL */
} job_t;

static atomic_long n_job_items;      /* items dropped by job threads */

static void *
job_run(void *arg)
{
    job_t *j = arg;
    if (j->go != NULL) {
        while (!atomic_load(j->go)) {
        }
    }
    for (size_t i = 0; i < j->n; i++) {
        if (j->kind == 0) {
            eg_ref_release((eg_ref *)j->items[i]);
        }
        else {
            eg_decref((PyObject *)j->items[i]);
        }
        atomic_fetch_add(&n_job_items, 1);
    }
    return NULL;
}

static PyObject *
t_job_items(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    return PyLong_FromLong(atomic_load(&n_job_items));
}

/* Split `seq` over nthreads raw pthreads that drop every item without the
 * GIL.  kind 0: items are eg_ref handles (ints); kind 1: objects, each
 * INCREF'd here and dropped with eg_decref.  With join=1 the threads are
 * joined with the GIL released; with join=0 they are detached and the call
 * returns at once (the threads go away when done). */
static PyObject *
run_jobs(PyObject *seq, int kind, int nthreads, int join)
{
    PyObject *fast = PySequence_Fast(seq, "expected a sequence");
    if (fast == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    if (nthreads < 1 || nthreads > 64) {
        Py_DECREF(fast);
        PyErr_SetString(PyExc_ValueError, "nthreads must be 1..64");
        return NULL;
    }
    void **items = malloc(sizeof(void *) * (size_t)(n ? n : 1));
    job_t *jobs = calloc((size_t)nthreads, sizeof(job_t));
    pthread_t *tids = calloc((size_t)nthreads, sizeof(pthread_t));
    atomic_int *go = malloc(sizeof(atomic_int));
    if (!items || !jobs || !tids || !go) {
        Py_DECREF(fast);
        free(items); free(jobs); free(tids); free(go);
        return PyErr_NoMemory();
    }
    atomic_init(go, 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *o = PySequence_Fast_GET_ITEM(fast, i);
        if (kind == 0) {
            items[i] = py_to_handle(o);
            if (PyErr_Occurred()) {
                Py_DECREF(fast);
                free(items); free(jobs); free(tids); free(go);
                return NULL;
            }
        }
        else {
            Py_INCREF(o);
            items[i] = o;
        }
    }
    Py_DECREF(fast);
    size_t per = (size_t)n / (size_t)nthreads;
    size_t off = 0;
    for (int t = 0; t < nthreads; t++) {
        jobs[t].items = items + off;
        jobs[t].n = (t == nthreads - 1) ? (size_t)n - off : per;
        jobs[t].kind = kind;
        jobs[t].go = go;
        off += jobs[t].n;
        if (pthread_create(&tids[t], NULL, job_run, &jobs[t]) != 0) {
            abort();
        }
    }
    atomic_store(go, 1);
    if (join) {
        Py_BEGIN_ALLOW_THREADS
        for (int t = 0; t < nthreads; t++) {
            pthread_join(tids[t], NULL);
        }
        Py_END_ALLOW_THREADS
        free(items); free(jobs); free(tids); free(go);
    }
    else {
        /* Leaked on purpose: the detached threads read them until done. */
        for (int t = 0; t < nthreads; t++) {
            pthread_detach(tids[t]);
        }
    }
    return PyLong_FromSsize_t(n);
}

static PyObject *
t_release_in_threads(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *seq;
    int nthreads = 1, join = 1;
    if (!PyArg_ParseTuple(args, "O|ip", &seq, &nthreads, &join)) {
        return NULL;
    }
    return run_jobs(seq, 0, nthreads, join);
}

static PyObject *
t_decref_in_threads(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *seq;
    int nthreads = 1, join = 1;
    if (!PyArg_ParseTuple(args, "O|ip", &seq, &nthreads, &join)) {
        return NULL;
    }
    return run_jobs(seq, 1, nthreads, join);
}

/* Drop one object from a native thread that then stays alive but idle
 * (blocked on a condition) until release_idle() -- the "producer went
 * quiet" case of the latency requirement. */
static pthread_mutex_t idle_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t idle_cond = PTHREAD_COND_INITIALIZER;
static int idle_release;
static pthread_t idle_tid;
static int idle_started;

static void *
idle_run(void *arg)
{
    eg_decref((PyObject *)arg);
    pthread_mutex_lock(&idle_lock);
    while (!idle_release) {
        pthread_cond_wait(&idle_cond, &idle_lock);
    }
    pthread_mutex_unlock(&idle_lock);
    return NULL;
}

static PyObject *
t_decref_then_idle(PyObject *m, PyObject *obj)
{
    (void)m;
    if (idle_started) {
        PyErr_SetString(PyExc_RuntimeError, "already started");
        return NULL;
    }
    Py_INCREF(obj);
    idle_release = 0;
    if (pthread_create(&idle_tid, NULL, idle_run, obj) != 0) {
        abort();
    }
    idle_started = 1;
    Py_RETURN_NONE;
}

static PyObject *
t_release_idle(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    if (!idle_started) {
        Py_RETURN_NONE;
    }
    pthread_mutex_lock(&idle_lock);
    idle_release = 1;
    pthread_cond_broadcast(&idle_cond);
    pthread_mutex_unlock(&idle_lock);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(idle_tid, NULL);
    Py_END_ALLOW_THREADS
    idle_started = 0;
    Py_RETURN_NONE;
}

/* ---- stoppers ---------------------------------------------------------- */

typedef struct {
    PyObject *log;        /* list, strong */
    PyObject *tag;
} cstop_t;

/* Phase 1, attached: append the tag to the log list. */
static void
cstop_run(void *arg)
{
    cstop_t *c = arg;
    if (PyList_Append(c->log, c->tag) < 0) {
        PyErr_Clear();
    }
}

static PyObject *
t_c_stopper(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *tag, *log;
    if (!PyArg_ParseTuple(args, "OO!", &tag, &PyList_Type, &log)) {
        return NULL;
    }
    cstop_t *c = malloc(sizeof(*c));
    if (c == NULL) {
        return PyErr_NoMemory();
    }
    /* Leaked on purpose for the life of the process: the stopper may run
     * at exit and the test never frees it. */
    c->log = Py_NewRef(log);
    c->tag = Py_NewRef(tag);
    eg_stopper *s = eg_stopper_add(cstop_run, c);
    if (s == NULL) {
        Py_DECREF(c->log);
        Py_DECREF(c->tag);
        free(c);
        return NULL;
    }
    return handle_to_py(s);
}

/* c_stopper_starting_thread(): a C stopper that tries eg_thread_start from
 * inside phase 1; the result is kept for stopper_thread_rc(). */
static atomic_int stopper_thread_rc = 1;

static void
cstop_noop_run(void *arg)
{
    (void)arg;
}

static void
cstop_start_thread(void *arg)
{
    (void)arg;
    eg_thread *t = NULL;
    atomic_store(&stopper_thread_rc,
                 eg_thread_start(&t, "too-late", cstop_noop_run, NULL, NULL));
}

static PyObject *
t_c_stopper_starting_thread(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    eg_stopper *s = eg_stopper_add(cstop_start_thread, NULL);
    return s ? handle_to_py(s) : NULL;
}

static PyObject *
t_stopper_thread_rc(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    return PyLong_FromLong(atomic_load(&stopper_thread_rc));
}

/* c_blocking_stopper(seconds): a C stopper that blocks phase 1 (it sleeps,
 * holding the GIL: a stopper that forgot to release it). */
static void
cstop_block(void *arg)
{
    sleep_us((int)(intptr_t)arg);
}

static PyObject *
t_c_blocking_stopper(PyObject *m, PyObject *arg)
{
    (void)m;
    double secs = PyFloat_AsDouble(arg);
    if (secs == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    eg_stopper *s = eg_stopper_add(cstop_block, (void *)(intptr_t)(secs * 1e6));
    return s ? handle_to_py(s) : NULL;
}

/* Phase 1, attached: a C stopper that breaks its contract and leaves an
 * exception set. */
static void
cstop_raise_run(void *arg)
{
    PyErr_SetString(PyExc_RuntimeError, (const char *)arg);
}

/* c_stopper_raise(message): register that stopper (leaked on purpose). */
static PyObject *
t_c_stopper_raise(PyObject *m, PyObject *arg)
{
    (void)m;
    const char *msg = PyUnicode_AsUTF8(arg);
    char *copy = msg ? strdup(msg) : NULL;
    if (copy == NULL) {
        return msg ? PyErr_NoMemory() : NULL;
    }
    eg_stopper *s = eg_stopper_add(cstop_raise_run, copy);
    if (s == NULL) {
        free(copy);
        return NULL;
    }
    return handle_to_py(s);
}

static PyObject *
t_stopper_after(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *a, *b;
    if (!PyArg_ParseTuple(args, "OO", &a, &b)) {
        return NULL;
    }
    void *pa = a == Py_None ? NULL : py_to_handle(a);
    void *pb = b == Py_None ? NULL : py_to_handle(b);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromLong(eg_stopper_after(pa, pb));
}

static PyObject *
t_stopper_remove(PyObject *m, PyObject *h)
{
    (void)m;
    void *p = h == Py_None ? NULL : py_to_handle(h);
    if (PyErr_Occurred()) {
        return NULL;
    }
    eg_stopper_remove(p);
    Py_RETURN_NONE;
}

static PyObject *
t_stopper_add_null(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    eg_stopper *s = eg_stopper_add(NULL, NULL);
    if (s != NULL) {
        PyErr_SetString(PyExc_AssertionError, "NULL stop accepted");
        return NULL;
    }
    return NULL;    /* the TypeError eg_stopper_add set */
}

/* ---- attaching threads (the gate) ------------------------------------------ */

/* Counters of every attaching thread started below, read by Python.
 * n_in_ensure counts threads inside an eg_gil_ensure() call right now: one
 * parked for ever inside CPython's attach would keep it above zero. */
static atomic_long n_attach_ok, n_attach_refused, n_ok_after_refused,
    n_callback_errors, n_stopped_cleanly, n_in_ensure;

typedef struct {
    PyObject *callback;         /* strong; leaked at exit on purpose */
    eg_interp *interp;          /* NULL: main */
    int interval_us;
    int registered;             /* stop when eg_thread_stop_requested() */
    int ignore_stop;            /* a stubborn thread */
    atomic_int raw_stop;        /* for adopted threads */
    pthread_t tid;
    eg_thread *t;
} attacher_t;


/* Loop: attach, call the callback, release.  Runs without the GIL. */
static void
attacher_run(void *arg)
{
    attacher_t *a = arg;
    int refused_once = 0;
    for (;;) {
        if (a->registered && !a->ignore_stop && eg_thread_stop_requested()) {
            atomic_fetch_add(&n_stopped_cleanly, 1);
            return;
        }
        if (atomic_load(&a->raw_stop)) {
            atomic_fetch_add(&n_stopped_cleanly, 1);
            return;
        }
        eg_gil st;
        atomic_fetch_add(&n_in_ensure, 1);
        int rc = eg_gil_ensure(a->interp, &st);
        atomic_fetch_sub(&n_in_ensure, 1);
        if (rc == 0) {
            if (refused_once) {
                atomic_fetch_add(&n_ok_after_refused, 1);
            }
            atomic_fetch_add(&n_attach_ok, 1);
            if (a->callback != NULL) {
                PyObject *r = PyObject_CallNoArgs(a->callback);
                if (r == NULL) {
                    atomic_fetch_add(&n_callback_errors, 1);
                    PyErr_Clear();
                }
                Py_XDECREF(r);
            }
            eg_gil_release(&st);
        }
        else {
            refused_once = 1;
            atomic_fetch_add(&n_attach_refused, 1);
            if (!a->registered && !a->ignore_stop) {
                /* An unregistered thread keeps trying only a little while
                 * after refusal, then parks (the process exits around it). */
                if (atomic_load(&n_attach_refused) > 100000) {
                    for (;;) {
                        sleep_us(1000000);
                    }
                }
            }
        }
        if (a->interval_us > 0) {
            sleep_us(a->interval_us);
        }
    }
}

static void *
attacher_raw_main(void *arg)
{
    attacher_run(arg);
    return NULL;
}

static attacher_t *
attacher_new(PyObject *callback, PyObject *interp_handle, int interval_us)
{
    attacher_t *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    if (callback != Py_None) {
        a->callback = Py_NewRef(callback);
    }
    if (interp_handle != NULL && interp_handle != Py_None) {
        a->interp = py_to_handle(interp_handle);
        if (PyErr_Occurred()) {
            free(a);
            return NULL;
        }
    }
    a->interval_us = interval_us;
    atomic_init(&a->raw_stop, 0);
    return a;
}

/* registered_attachers(n, callback, interval_us=1000, ignore_stop=False,
 *                      name="attacher"): n threads started with
 * eg_thread_start that attach in a loop and stop when asked (unless
 * ignore_stop).  Not joined by us: exitguard's phase 1 does. */
static PyObject *
t_registered_attachers(PyObject *m, PyObject *args)
{
    (void)m;
    int n, interval = 1000, ignore = 0;
    PyObject *cb, *interp = Py_None;
    const char *name = "attacher";
    if (!PyArg_ParseTuple(args, "iO|ipsO", &n, &cb, &interval, &ignore,
                          &name, &interp)) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        attacher_t *a = attacher_new(cb, interp, interval);
        if (a == NULL) {
            return NULL;
        }
        a->registered = 1;
        a->ignore_stop = ignore;
        int rc = eg_thread_start(&a->t, name, attacher_run, NULL, a);
        if (rc < 0) {
            PyErr_Format(PyExc_RuntimeError, "eg_thread_start: %s",
                         eg_strerror(rc));
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* raw_attachers(n, callback, interval_us=1000, interp=None): n raw
 * pthreads nobody registered, attaching in a loop forever (detached). */
static PyObject *
t_raw_attachers(PyObject *m, PyObject *args)
{
    (void)m;
    int n, interval = 1000;
    PyObject *cb, *interp = Py_None;
    if (!PyArg_ParseTuple(args, "iO|iO", &n, &cb, &interval, &interp)) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        attacher_t *a = attacher_new(cb, interp, interval);
        if (a == NULL) {
            return NULL;
        }
        if (pthread_create(&a->tid, NULL, attacher_raw_main, a) != 0) {
            abort();
        }
        pthread_detach(a->tid);
    }
    Py_RETURN_NONE;
}

/* Adoption: a raw pthread a "third-party library" created, registered with
 * eg_thread_adopt(request_stop, join). */
static void
adopted_request_stop(void *arg)
{
    atomic_store(&((attacher_t *)arg)->raw_stop, 1);
}

static int
adopted_join(void *arg, double timeout_s)
{
    attacher_t *a = arg;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)timeout_s;
    if (pthread_timedjoin_np(a->tid, NULL, &ts) != 0) {
        return -110;   /* -ETIMEDOUT */
    }
    return 0;
}

static PyObject *
t_adopted_attacher(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *cb;
    int interval = 1000;
    if (!PyArg_ParseTuple(args, "O|i", &cb, &interval)) {
        return NULL;
    }
    attacher_t *a = attacher_new(cb, NULL, interval);
    if (a == NULL) {
        return NULL;
    }
    if (pthread_create(&a->tid, NULL, attacher_raw_main, a) != 0) {
        abort();
    }
    int rc = eg_thread_adopt(&a->t, "adopted", adopted_request_stop,
                             adopted_join, a);
    if (rc < 0) {
        PyErr_Format(PyExc_RuntimeError, "eg_thread_adopt: %s",
                     eg_strerror(rc));
        return NULL;
    }
    return handle_to_py(a->t);
}

static PyObject *
t_attach_counts(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    return Py_BuildValue("{s:l,s:l,s:l,s:l,s:l,s:l}",
                         "in_ensure", atomic_load(&n_in_ensure),
                         "ok", atomic_load(&n_attach_ok),
                         "refused", atomic_load(&n_attach_refused),
                         "ok_after_refused", atomic_load(&n_ok_after_refused),
                         "callback_errors", atomic_load(&n_callback_errors),
                         "stopped_cleanly", atomic_load(&n_stopped_cleanly));
}

/* Py_AtExit hook (report_at_exit()): after Py_FinalizeEx() has returned,
 * print the attach counters as a JSON line -- the only report a scenario
 * can make once atexit callbacks are gone.  CAUTION: no Python API here. */
static void
report_at_exit_ll(void)
{
    /* Refused threads leave eg_gil_ensure within microseconds; a thread
     * parked inside CPython's attach never does.  Give the former 0.5 s. */
    for (int i = 0; i < 500 && atomic_load(&n_in_ensure) != 0; i++) {
        sleep_us(1000);
    }
    printf("{\"ll_in_ensure\": %ld, \"ll_ok\": %ld, \"ll_refused\": %ld}\n",
           atomic_load(&n_in_ensure), atomic_load(&n_attach_ok),
           atomic_load(&n_attach_refused));
    fflush(stdout);
}

static PyObject *
t_report_at_exit(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    if (Py_AtExit(report_at_exit_ll) < 0) {
        PyErr_SetString(PyExc_RuntimeError, "Py_AtExit is full");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* attach_then_join_holding_gil(): a raw pthread attaches once through
 * exitguard (a cached thread state is made for it), detaches and ends;
 * this thread joins it WITHOUT releasing the GIL -- what many extensions'
 * close() does.  Returns the thread's eg_gil_ensure result.  If ending the
 * thread needed the GIL, this would never return. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int attached, may_exit, rc;
} joiner_t;

static void *
joiner_main(void *arg)
{
    joiner_t *j = arg;
    eg_gil st;
    int rc = eg_gil_ensure(NULL, &st);
    if (rc == 0) {
        eg_gil_release(&st);
    }
    pthread_mutex_lock(&j->mu);
    j->rc = rc;
    j->attached = 1;
    pthread_cond_broadcast(&j->cv);
    while (!j->may_exit) {
        pthread_cond_wait(&j->cv, &j->mu);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;           /* thread exit: exitguard's key destructor runs */
}

static PyObject *
t_attach_then_join_holding_gil(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    joiner_t j = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0};
    pthread_t tid;
    if (pthread_create(&tid, NULL, joiner_main, &j) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    /* Its attach needs the GIL: release it until the thread has attached. */
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&j.mu);
    while (!j.attached) {
        pthread_cond_wait(&j.cv, &j.mu);
    }
    pthread_mutex_unlock(&j.mu);
    Py_END_ALLOW_THREADS
    /* Now with the GIL held: let it end, and join it. */
    pthread_mutex_lock(&j.mu);
    j.may_exit = 1;
    pthread_cond_broadcast(&j.cv);
    pthread_mutex_unlock(&j.mu);
    pthread_join(tid, NULL);
    return PyLong_FromLong(j.rc);
}

/* ---- the C-API way to use subinterpreters (an embedder's) ----------------
 *
 * capi_subinterp_cycles(n, own_gil=False, nthreads=2, nobjs=200,
 *                       with_exitguard=True) -> dict
 * n times: create an interpreter with Py_NewInterpreter (or, own_gil on
 * 3.12+, Py_NewInterpreterFromConfig with its own GIL); import exitguard and
 * egtest there; take nobjs references on objects whose finalizer counts;
 * start nthreads registered native threads that attach to it through a
 * handle, call Python there and check which interpreter they are in, and
 * release the references without the GIL; then Py_EndInterpreter while the
 * threads are still registered and attaching.  Afterwards a native thread
 * with the old handle must be refused.  Returns counters and the resident
 * set size after 10% of the cycles and at the end.  with_exitguard=False
 * only creates and ends the interpreters: the memory baseline. */
static atomic_long capi_created, capi_freed, capi_calls, capi_wrong_interp,
    capi_stopped, capi_refused_after;
static atomic_uintptr_t stash;     /* tentative: defined with stash_set below */

typedef struct {
    eg_interp *h;
    int64_t id;
    eg_ref **refs;
    size_t nrefs;
    eg_ref *callback;            /* the subinterpreter's: released by the worker */
    eg_thread *t;
} capi_worker_t;

/* The workers of the interpreter being cycled, joined and freed by the loop
 * after Py_EndInterpreter (their owner). */
static capi_worker_t *capi_workers[16];
static int capi_nworkers;

static void
capi_worker_run(void *arg)
{
    capi_worker_t *w = arg;
    size_t next = 0;
    while (!eg_thread_stop_requested()) {
        if (next < w->nrefs) {
            eg_ref_release(w->refs[next++]);      /* no GIL */
        }
        eg_gil st;
        if (eg_gil_ensure(w->h, &st) != 0) {
            continue;                  /* stopping: phase 1 asks us to end */
        }
        if (PyInterpreterState_GetID(PyInterpreterState_Get()) != w->id) {
            atomic_fetch_add(&capi_wrong_interp, 1);
        }
        PyObject *cb = eg_ref_get(w->callback);
        PyObject *r = cb ? PyObject_CallNoArgs(cb) : NULL;
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
        atomic_fetch_add(&capi_calls, 1);
        eg_gil_release(&st);
        sleep_us(200);
    }
    while (next < w->nrefs) {
        eg_ref_release(w->refs[next++]);
    }
    eg_ref_release(w->callback);       /* no GIL: queued, applied by phase 2 */
    w->callback = NULL;
    atomic_fetch_add(&capi_stopped, 1);
}

/* _capi_sub_work(nthreads, nobjs, cls, callback): runs inside the new
 * interpreter (called by the setup code).  Returns the handle. */
static PyObject *
t_capi_sub_work(PyObject *m, PyObject *args)
{
    (void)m;
    int nthreads, nobjs;
    PyObject *cls, *cb;
    if (!PyArg_ParseTuple(args, "iiOO", &nthreads, &nobjs, &cls, &cb)) {
        return NULL;
    }
    eg_interp *h = eg_interp_current();
    if (h == NULL) {
        return NULL;
    }
    int64_t id = PyInterpreterState_GetID(PyInterpreterState_Get());
    if (nthreads > 16) {
        nthreads = 16;
    }
    capi_nworkers = 0;
    for (int i = 0; i < nthreads; i++) {
        capi_worker_t *w = calloc(1, sizeof(*w));
        size_t per = (size_t)nobjs / (size_t)nthreads;
        w->refs = calloc(per ? per : 1, sizeof(eg_ref *));
        if (w == NULL || w->refs == NULL) {
            return PyErr_NoMemory();
        }
        w->h = h;
        w->id = id;
        w->callback = eg_ref_new(cb);
        if (w->callback == NULL) {
            return NULL;
        }
        for (size_t k = 0; k < per; k++) {
            PyObject *o = PyObject_CallNoArgs(cls);
            if (o == NULL) {
                return NULL;
            }
            w->refs[k] = eg_ref_new(o);
            Py_DECREF(o);
            if (w->refs[k] == NULL) {
                return NULL;
            }
            w->nrefs++;
            atomic_fetch_add(&capi_created, 1);
        }
        int rc = eg_thread_start(&w->t, "capi-worker", capi_worker_run, NULL,
                                 w);
        if (rc < 0) {
            PyErr_Format(PyExc_RuntimeError, "eg_thread_start: %s",
                         eg_strerror(rc));
            return NULL;
        }
        capi_workers[capi_nworkers++] = w;
    }
    return handle_to_py(h);
}

static atomic_long capi_max_gen;

static PyObject *
t_capi_gen(PyObject *m, PyObject *arg)
{
    (void)m;
    long g = PyLong_AsLong(arg);
    if (g > atomic_load(&capi_max_gen)) {
        atomic_store(&capi_max_gen, g);
    }
    Py_RETURN_NONE;
}

static PyObject *
t_capi_freed_inc(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    atomic_fetch_add(&capi_freed, 1);
    Py_RETURN_NONE;
}

static long
rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kib = strtol(line + 6, NULL, 10);
        }
    }
    if (f != NULL) {
        fclose(f);
    }
    return kib;
}

static const char capi_setup[] =
    "import exitguard, egtest\n"
    "class _T:\n"
    "    def __del__(self):\n"
    "        egtest._capi_freed_inc()\n"
    "egtest.stash_set(egtest._capi_sub_work(_NTHREADS, _NOBJS, _T, lambda: None))\n"
    "egtest._capi_gen(exitguard.stats()[\"records\"])\n";

/* The baseline's native threads: attach to the interpreter by hand
 * (PyThreadState_New, then Clear + DeleteCurrent after each call: the same
 * create-per-attach pattern exitguard uses for subinterpreters), until told
 * to stop; joined before the interpreter ends, as code without exitguard
 * must. */
typedef struct {
    PyInterpreterState *interp;
    atomic_int *stop;
    int calls;
} capi_raw_t;

static void *
capi_raw_main(void *arg)
{
    capi_raw_t *r = arg;
    while (!atomic_load(r->stop) || r->calls < 1) {
        PyThreadState *ts = PyThreadState_New(r->interp);
        PyEval_RestoreThread(ts);
        PyObject *o = PyList_New(0);
        Py_XDECREF(o);
        r->calls++;
        PyThreadState_Clear(ts);
        PyThreadState_DeleteCurrent();
        sleep_us(200);
    }
    return NULL;
}

/* The baseline imports what importing exitguard imports in a
 * subinterpreter, and makes the same objects, without exitguard. */
static const char capi_baseline[] =
    "import os, threading, atexit\n"
    "class _T:\n"
    "    def __del__(self):\n"
    "        pass\n"
    "_objs = [_T() for _ in range(200)]\n"
    "del _objs\n";

static void *
capi_try_stale(void *arg)
{
    eg_gil st;
    if (eg_gil_ensure((eg_interp *)arg, &st) == 0) {
        eg_gil_release(&st);
    }
    else {
        atomic_fetch_add(&capi_refused_after, 1);
    }
    return NULL;
}

static PyObject *
t_capi_subinterp_cycles(PyObject *m, PyObject *args, PyObject *kw)
{
    (void)m;
    static char *kwlist[] = {"n", "own_gil", "nthreads", "nobjs",
                             "with_exitguard", NULL};
    int n, own_gil = 0, nthreads = 2, nobjs = 200, with_eg = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "i|piip", kwlist, &n, &own_gil,
                                     &nthreads, &nobjs, &with_eg)) {
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000
    if (own_gil) {
        PyErr_SetString(PyExc_ValueError, "own_gil needs CPython 3.12+");
        return NULL;
    }
#endif
    char code[sizeof(capi_setup) + 64];
    snprintf(code, sizeof(code), "_NTHREADS = %d\n_NOBJS = %d\n%s", nthreads,
             nobjs, capi_setup);
    long rss_warm = -1;
    int failures = 0;
    PyThreadState *main_ts = PyThreadState_Swap(NULL);
    for (int c = 0; c < n; c++) {
        PyThreadState *sub = NULL;
#if PY_VERSION_HEX >= 0x030C0000
        if (own_gil) {
            PyInterpreterConfig cfg = {
                .use_main_obmalloc = 0,
                .allow_fork = 0,
                .allow_exec = 0,
                .allow_threads = 1,
                .allow_daemon_threads = 0,
                .check_multi_interp_extensions = 1,
                .gil = PyInterpreterConfig_OWN_GIL,
            };
            PyStatus status = Py_NewInterpreterFromConfig(&sub, &cfg);
            if (PyStatus_Exception(status)) {
                sub = NULL;
            }
        }
        else
#endif
        {
            sub = Py_NewInterpreter();
        }
        if (sub == NULL) {
            failures++;
            break;
        }
        eg_interp *h = NULL;
        if (with_eg) {
            if (PyRun_SimpleString(code) != 0) {
                failures++;
            }
            h = (eg_interp *)atomic_load(&stash);
        }
        else if (PyRun_SimpleString(capi_baseline) != 0) {
            failures++;
        }
        if (!with_eg && nthreads > 0) {
            pthread_t tids[16];
            capi_raw_t raws[16];
            atomic_int stop = 0;
            int k = nthreads < 16 ? nthreads : 16;
            for (int i = 0; i < k; i++) {
                raws[i] = (capi_raw_t){PyThreadState_GetInterpreter(sub), &stop, 0};
                pthread_create(&tids[i], NULL, capi_raw_main, &raws[i]);
            }
            Py_BEGIN_ALLOW_THREADS
            sleep_us(1000);
            atomic_store(&stop, 1);
            for (int i = 0; i < k; i++) {
                pthread_join(tids[i], NULL);
            }
            Py_END_ALLOW_THREADS
        }
        Py_EndInterpreter(sub);         /* the threads are still registered */
        for (int i = 0; i < capi_nworkers; i++) {
            /* Phase 1 joined them: this returns at once and frees the
             * handle, as the owner must. */
            capi_worker_t *w = capi_workers[i];
            if (eg_thread_join(w->t, 5.0) != 0) {
                failures++;
            }
            free(w->refs);
            free(w);
        }
        capi_nworkers = 0;
        if (h != NULL) {
            pthread_t tid;
            if (pthread_create(&tid, NULL, capi_try_stale, h) == 0) {
                pthread_join(tid, NULL);
            }
            eg_interp_close(h);
        }
        if (c == n / 10) {
            rss_warm = rss_kib();
        }
    }
    PyThreadState_Swap(main_ts);
    return Py_BuildValue(
        "{s:i,s:l,s:l,s:l,s:l,s:l,s:l,s:l,s:l,s:l}", "failures", failures,
        "max_records", atomic_load(&capi_max_gen),
        "created", atomic_load(&capi_created), "freed", atomic_load(&capi_freed),
        "calls", atomic_load(&capi_calls),
        "wrong_interp", atomic_load(&capi_wrong_interp),
        "stopped", atomic_load(&capi_stopped),
        "refused_after", atomic_load(&capi_refused_after),
        "rss_warm_kib", rss_warm, "rss_end_kib", rss_kib());
}

/* quick_thread(): a registered thread that ends at once (for joins). */
static PyObject *
t_quick_thread(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    eg_thread *t;
    int rc = eg_thread_start(&t, "quick", cstop_noop_run, NULL, NULL);
    if (rc < 0) {
        PyErr_Format(PyExc_RuntimeError, "eg_thread_start: %s",
                     eg_strerror(rc));
        return NULL;
    }
    return handle_to_py(t);
}

/* stubborn_thread(name): a registered thread that never looks at its stop
 * request (it sleeps until the process ends): phase 1 abandons it. */
static void
stubborn_run(void *arg)
{
    (void)arg;
    for (;;) {
        sleep_us(100000);
    }
}

static PyObject *
t_stubborn_thread(PyObject *m, PyObject *arg)
{
    (void)m;
    const char *name = PyUnicode_AsUTF8(arg);
    if (name == NULL) {
        return NULL;
    }
    eg_thread *t;
    int rc = eg_thread_start(&t, name, stubborn_run, NULL, NULL);
    if (rc < 0) {
        PyErr_Format(PyExc_RuntimeError, "eg_thread_start: %s",
                     eg_strerror(rc));
        return NULL;
    }
    return handle_to_py(t);
}

/* A registered thread blocked in native work (a pipe read) that only its
 * request_stop can unblock. */
typedef struct {
    int fds[2];
    eg_thread *t;
} blocked_t;

static void
blocked_run(void *arg)
{
    blocked_t *b = arg;
    char c;
    while (read(b->fds[0], &c, 1) < 0) {
    }
    atomic_fetch_add(&n_stopped_cleanly, 1);
}

static void
blocked_stop(void *arg)
{
    blocked_t *b = arg;
    while (write(b->fds[1], "x", 1) < 0) {
    }
}

static PyObject *
t_blocked_thread(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    blocked_t *b = calloc(1, sizeof(*b));
    if (b == NULL || pipe(b->fds) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    int rc = eg_thread_start(&b->t, "blocked", blocked_run, blocked_stop, b);
    if (rc < 0) {
        PyErr_Format(PyExc_RuntimeError, "eg_thread_start: %s",
                     eg_strerror(rc));
        return NULL;
    }
    return handle_to_py(b->t);
}

static PyObject *
t_thread_join(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *h;
    double timeout;
    if (!PyArg_ParseTuple(args, "Od", &h, &timeout)) {
        return NULL;
    }
    void *t = py_to_handle(h);
    if (PyErr_Occurred()) {
        return NULL;
    }
    return PyLong_FromLong(eg_thread_join(t, timeout));
}

/* From a raw thread: ensure, ensure again (nested), call, release twice.
 * Returns [rc1, rc2, result]. */
typedef struct {
    PyObject *callback;
    eg_interp *interp;
    int rc1, rc2;
    PyObject *result;
} nested_t;

static void *
nested_main(void *arg)
{
    nested_t *n = arg;
    eg_gil a, b;
    n->rc1 = eg_gil_ensure(n->interp, &a);
    if (n->rc1 != 0) {
        return NULL;
    }
    n->rc2 = eg_gil_ensure(n->interp, &b);
    n->result = PyObject_CallNoArgs(n->callback);
    if (n->result == NULL) {
        PyErr_Clear();
    }
    if (n->rc2 == 0) {
        eg_gil_release(&b);
    }
    eg_gil_release(&a);
    return NULL;
}

static PyObject *
t_nested_in_thread(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *cb, *interp = Py_None;
    if (!PyArg_ParseTuple(args, "O|O", &cb, &interp)) {
        return NULL;
    }
    nested_t n = {cb, NULL, -1, -1, NULL};
    if (interp != Py_None) {
        n.interp = py_to_handle(interp);
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    pthread_t tid;
    if (pthread_create(&tid, NULL, nested_main, &n) != 0) {
        abort();
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(tid, NULL);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("[iiN]", n.rc1, n.rc2,
                         n.result ? n.result : Py_NewRef(Py_None));
}

/* eg_gil_ensure on this (attached) thread: nested, returns 0. */
static PyObject *
t_ensure_here(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    eg_gil st;
    int rc = eg_gil_ensure(NULL, &st);
    if (rc == 0) {
        eg_gil_release(&st);
    }
    return PyLong_FromLong(rc);
}

static PyObject *
t_interp_current(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    eg_interp *h = eg_interp_current();
    return h ? handle_to_py(h) : NULL;
}

static PyObject *
t_interp_main(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    eg_interp *h = eg_interp_main();
    return h ? handle_to_py(h) : Py_NewRef(Py_None);
}

static PyObject *
t_interp_close(PyObject *m, PyObject *h)
{
    (void)m;
    void *p = h == Py_None ? NULL : py_to_handle(h);
    if (PyErr_Occurred()) {
        return NULL;
    }
    eg_interp_close(p);
    Py_RETURN_NONE;
}

/* run_in_thread(interp_handle, code): a raw thread attaches to exactly that
 * interpreter and runs `code` there (PyRun_SimpleString). */
typedef struct {
    eg_interp *interp;
    const char *code;
    int rc;
    int run_rc;
} runner_t;

static void *
runner_main(void *arg)
{
    runner_t *r = arg;
    eg_gil st;
    r->rc = eg_gil_ensure(r->interp, &st);
    if (r->rc == 0) {
        r->run_rc = PyRun_SimpleString(r->code);
        eg_gil_release(&st);
    }
    return NULL;
}

static PyObject *
t_run_in_thread(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *h;
    const char *code;
    if (!PyArg_ParseTuple(args, "Os", &h, &code)) {
        return NULL;
    }
    runner_t r = {py_to_handle(h), code, -1, -1};
    if (PyErr_Occurred()) {
        return NULL;
    }
    pthread_t tid;
    if (pthread_create(&tid, NULL, runner_main, &r) != 0) {
        abort();
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(tid, NULL);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(ii)", r.rc, r.run_rc);
}

/* churn_threads(n): detached raw threads that, as fast as they can,
 * attach, create a list of 50 lists (GC-tracked allocations), detach, and
 * drop it with eg_decref() without the GIL.  They park once the gate
 * refuses them. */
static atomic_long n_churned;

static void *
churn_main(void *arg)
{
    (void)arg;
    for (;;) {
        eg_gil st;
        if (eg_gil_ensure(NULL, &st) != 0) {
            for (;;) {
                sleep_us(1000000);
            }
        }
        /* A list of 50 lists: container allocations, so that the GC runs
         * now and then on these threads too. */
        PyObject *o = PyList_New(0);
        for (int i = 0; o != NULL && i < 50; i++) {
            PyObject *inner = PyList_New(0);
            if (inner == NULL || PyList_Append(o, inner) < 0) {
                PyErr_Clear();
            }
            Py_XDECREF(inner);
        }
        eg_gil_release(&st);
        eg_decref(o);                 /* without the GIL: queued */
        atomic_fetch_add(&n_churned, 1);
    }
    return NULL;
}

static PyObject *
t_churn_threads(PyObject *m, PyObject *arg)
{
    (void)m;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    for (long i = 0; i < n; i++) {
        pthread_t tid;
        if (pthread_create(&tid, NULL, churn_main, NULL) != 0) {
            abort();
        }
        pthread_detach(tid);
    }
    Py_RETURN_NONE;
}

static PyObject *
t_churned(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    return PyLong_FromLong(atomic_load(&n_churned));
}

/* ---- logging ----------------------------------------------------------------- */

typedef struct {
    int index, count, level, big;
    const char *logger;
} logjob_t;

static atomic_long n_logged;          /* eg_log calls completed */

static void *
log_main(void *arg)
{
    logjob_t *j = arg;
    char name[16];
    snprintf(name, sizeof(name), "eglog-%d", j->index & 0xff);
    pthread_setname_np(pthread_self(), name);
    for (int i = 0; i < j->count; i++) {
        if (j->big) {
            eg_log(j->level, j->logger, "t%d m%d %0600d", j->index, i, 7);
        }
        else {
            eg_log(j->level, j->logger, "t%d m%d", j->index, i);
        }
        atomic_fetch_add(&n_logged, 1);
    }
    return NULL;
}

/* log_detached(nthreads, per_thread): like log_from_threads, not joined. */
static PyObject *
t_log_detached(PyObject *m, PyObject *args)
{
    (void)m;
    int n, per;
    if (!PyArg_ParseTuple(args, "ii", &n, &per)) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        logjob_t *j = malloc(sizeof(*j));         /* leaked on purpose */
        *j = (logjob_t){i, per, EG_LOG_INFO, 0, "egtest.native"};
        pthread_t tid;
        if (pthread_create(&tid, NULL, log_main, j) != 0) {
            abort();
        }
        pthread_detach(tid);
    }
    Py_RETURN_NONE;
}

/* log_runtime_names(n, prefix, level): log one message to each of the loggers
 * "<prefix>.0" ... "<prefix>.n-1", the name formatted each time into the same
 * stack buffer -- the shape that an address-keyed cache sent to the first
 * name ever seen there -- and one message whose text and logger name are not
 * valid UTF-8.  From a raw thread, joined with the GIL released. */
typedef struct {
    int n, level;
    char prefix[64];
} runtime_names_t;

static void *
runtime_names_main(void *arg)
{
    runtime_names_t *r = arg;
    char name[96];
    for (int i = 0; i < r->n; i++) {
        snprintf(name, sizeof(name), "%s.%d", r->prefix, i);
        eg_log(r->level, name, "to %s", name);
    }
    snprintf(name, sizeof(name), "%s.bad\xff", r->prefix);
    eg_log(r->level, name, "bytes \xc3\x28 here");
    return NULL;
}

static PyObject *
t_log_runtime_names(PyObject *m, PyObject *args)
{
    (void)m;
    runtime_names_t r;
    const char *prefix;
    if (!PyArg_ParseTuple(args, "isi", &r.n, &prefix, &r.level)) {
        return NULL;
    }
    snprintf(r.prefix, sizeof(r.prefix), "%s", prefix);
    pthread_t tid;
    if (pthread_create(&tid, NULL, runtime_names_main, &r) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(tid, NULL);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *
t_logged(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    return PyLong_FromLong(atomic_load(&n_logged));
}

/* log_from_threads(nthreads, per_thread, level=20, which=0, big=False):
 * raw threads named eglog-N log "tN mI" to logger "egtest.native" (which 0)
 * or "egtest.quiet" (which 1); joined with the GIL released. */
static PyObject *
t_log_from_threads(PyObject *m, PyObject *args)
{
    (void)m;
    int n, per, level = EG_LOG_INFO, which = 0, big = 0;
    if (!PyArg_ParseTuple(args, "ii|iip", &n, &per, &level, &which, &big)) {
        return NULL;
    }
    if (n < 1 || n > 64) {
        PyErr_SetString(PyExc_ValueError, "1..64 threads");
        return NULL;
    }
    pthread_t tids[64];
    logjob_t jobs[64];
    for (int i = 0; i < n; i++) {
        jobs[i] = (logjob_t){i, per, level, big,
                             which ? "egtest.quiet" : "egtest.native"};
        if (pthread_create(&tids[i], NULL, log_main, &jobs[i]) != 0) {
            abort();
        }
    }
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < n; i++) {
        pthread_join(tids[i], NULL);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *
t_log_enabled(PyObject *m, PyObject *args)
{
    (void)m;
    int level, which = 0;
    if (!PyArg_ParseTuple(args, "i|i", &level, &which)) {
        return NULL;
    }
    return PyBool_FromLong(eg_log_enabled(level, which ? "egtest.quiet"
                                                       : "egtest.native"));
}

/* site_log(count, level): a raw thread logs `count` messages through one
 * EG_LOG call site to logger "egtest.site", joined with the GIL released.
 * The message's argument counts its own evaluations (site_evals()): EG_LOG
 * evaluates nothing for a message below the level. */
static atomic_long n_site_evals;

static long
site_eval(long i)
{
    atomic_fetch_add(&n_site_evals, 1);
    return i;
}

typedef struct {
    int count, level;
} sitejob_t;

static void *
site_log_main(void *arg)
{
    sitejob_t *j = arg;
    for (int i = 0; i < j->count; i++) {
        EG_LOG(j->level, "egtest.site", "site m%ld", site_eval(i));
    }
    return NULL;
}

static PyObject *
t_site_log(PyObject *m, PyObject *args)
{
    (void)m;
    sitejob_t j;
    if (!PyArg_ParseTuple(args, "ii", &j.count, &j.level)) {
        return NULL;
    }
    pthread_t tid;
    if (pthread_create(&tid, NULL, site_log_main, &j) != 0) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_join(tid, NULL);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *
t_site_evals(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    return PyLong_FromLong(atomic_load(&n_site_evals));
}

/* log_enabled_name(level, name): eg_log_enabled for any logger name. */
static PyObject *
t_log_enabled_name(PyObject *m, PyObject *args)
{
    (void)m;
    int level;
    const char *name;
    if (!PyArg_ParseTuple(args, "is", &level, &name)) {
        return NULL;
    }
    return PyBool_FromLong(eg_log_enabled(level, name));
}

/* ---- events ----------------------------------------------------------------- */

static eg_event *the_event;

static PyObject *
t_event_wait(PyObject *m, PyObject *arg)
{
    (void)m;
    double timeout = PyFloat_AsDouble(arg);
    if (timeout == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    if (the_event == NULL && (the_event = eg_event_new()) == NULL) {
        return PyErr_NoMemory();
    }
    int rc = eg_event_wait(the_event, timeout);
    if (rc == EG_WAIT_INTERRUPTED) {
        return NULL;         /* the signal handler's exception */
    }
    return PyLong_FromLong(rc);
}

static void *
set_later_main(void *arg)
{
    sleep_us((int)(intptr_t)arg * 1000);
    eg_event_set(the_event);
    return NULL;
}

static PyObject *
t_event_set_later(PyObject *m, PyObject *arg)
{
    (void)m;
    long ms = PyLong_AsLong(arg);
    if (ms == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (the_event == NULL && (the_event = eg_event_new()) == NULL) {
        return PyErr_NoMemory();
    }
    eg_event_clear(the_event);
    pthread_t tid;
    if (pthread_create(&tid, NULL, set_later_main, (void *)(intptr_t)ms)) {
        abort();
    }
    pthread_detach(tid);
    Py_RETURN_NONE;
}

/* ---- completion queues -------------------------------------------------------- */

static atomic_long cq_ran, cq_cancelled, build_ran, build_cancelled,
    accepted_plain, accepted_futures, refused_posts;

/* Attached: a posted completion; arg is a malloc'd counter cell. */
static void
completion_fn(void *arg, int cancelled)
{
    free(arg);
    atomic_fetch_add(cancelled ? &cq_cancelled : &cq_ran, 1);
}

typedef struct {
    eg_cq *q;
    long n;
    int futures;              /* post futures instead */
    int errors;               /* futures: every thousandth gets ValueError */
    eg_ref **refs;
    long first;
} poster_t;

static PyObject *
build_result(void *arg, int cancelled, int *is_exception)
{
    long i = (long)(intptr_t)arg;
    if (cancelled) {
        atomic_fetch_add(&build_cancelled, 1);
        return NULL;
    }
    atomic_fetch_add(&build_ran, 1);
    if (i >= 0 && i % 1000 == 999) {     /* negative: posted with errors=False */
        *is_exception = 1;
        return PyObject_CallFunction(PyExc_ValueError, "l", i);
    }
    return PyLong_FromLong(i);
}

static void *
poster_main(void *arg)
{
    poster_t *p = arg;
    for (long i = 0; i < p->n; i++) {
        int rc;
        if (p->futures) {
            long v = p->errors ? p->first + i : -1 - (p->first + i);
            rc = eg_cq_post_future(p->q, p->refs[i], build_result,
                                   (void *)(intptr_t)v);
            if (rc < 0) {
                eg_ref_release(p->refs[i]);    /* not taken over */
            }
            else {
                atomic_fetch_add(&accepted_futures, 1);
            }
        }
        else {
            long *cell = malloc(sizeof(long));
            rc = eg_cq_post(p->q, completion_fn, cell);
            if (rc < 0) {
                free(cell);
            }
            else {
                atomic_fetch_add(&accepted_plain, 1);
            }
        }
        if (rc < 0) {
            atomic_fetch_add(&refused_posts, 1);
        }
        if (p->futures && (i & 63) == 0) {
            sleep_us(50);       /* spread futures over the loop's run */
        }
    }
    return NULL;
}

/* cq_post_many(cq, n, nthreads, join=True): post n completions. */
static PyObject *
t_cq_post_many(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *cqobj;
    long n;
    int nthreads = 2, join = 1;
    if (!PyArg_ParseTuple(args, "Ol|ip", &cqobj, &n, &nthreads, &join)) {
        return NULL;
    }
    eg_cq *q = eg_cq_from_object(cqobj);
    if (q == NULL) {
        return NULL;
    }
    if (nthreads < 1 || nthreads > 16) {
        PyErr_SetString(PyExc_ValueError, "1..16 threads");
        return NULL;
    }
    poster_t *ps = calloc((size_t)nthreads, sizeof(poster_t));
    pthread_t *tids = calloc((size_t)nthreads, sizeof(pthread_t));
    for (int i = 0; i < nthreads; i++) {
        ps[i].q = q;
        ps[i].n = n / nthreads + (i == 0 ? n % nthreads : 0);
        if (pthread_create(&tids[i], NULL, poster_main, &ps[i]) != 0) {
            abort();
        }
    }
    if (join) {
        Py_BEGIN_ALLOW_THREADS
        for (int i = 0; i < nthreads; i++) {
            pthread_join(tids[i], NULL);
        }
        Py_END_ALLOW_THREADS
        free(ps);
        free(tids);
    }
    else {
        for (int i = 0; i < nthreads; i++) {
            pthread_detach(tids[i]);   /* ps leaked on purpose */
        }
        free(tids);
    }
    Py_RETURN_NONE;
}

/* cq_complete_futures(cq, futures, nthreads=2): each future becomes an
 * eg_ref (here, attached); native threads resolve them through the queue.
 * Result i, or ValueError(i) for every thousandth.  Detached threads. */
static PyObject *
t_cq_complete_futures(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *cqobj, *futs;
    int nthreads = 2, errors = 1;
    if (!PyArg_ParseTuple(args, "OO|ip", &cqobj, &futs, &nthreads, &errors)) {
        return NULL;
    }
    eg_cq *q = eg_cq_from_object(cqobj);
    if (q == NULL) {
        return NULL;
    }
    PyObject *fast = PySequence_Fast(futs, "futures must be a sequence");
    if (fast == NULL) {
        return NULL;
    }
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    eg_ref **refs = calloc((size_t)(n ? n : 1), sizeof(eg_ref *));
    for (Py_ssize_t i = 0; i < n; i++) {
        refs[i] = eg_ref_new(PySequence_Fast_GET_ITEM(fast, i));
        if (refs[i] == NULL) {
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    long per = (long)n / nthreads;
    for (int t = 0; t < nthreads; t++) {
        poster_t *p = calloc(1, sizeof(poster_t));   /* leaked on purpose */
        p->q = q;
        p->futures = 1;
        p->errors = errors;
        p->first = t * per;
        p->n = (t == nthreads - 1) ? (long)n - p->first : per;
        p->refs = refs + p->first;
        pthread_t tid;
        if (pthread_create(&tid, NULL, poster_main, p) != 0) {
            abort();
        }
        pthread_detach(tid);
    }
    Py_RETURN_NONE;
}

/* cq_post_keeper(q): post a C callback that, run cancelled while q is being
 * deallocated, takes a new reference to q (a borrowed pointer an extension
 * object kept): it must get a live, closed queue, not freed memory. */
static PyObject *cq_kept_obj;

static void
cq_keeper_cb(void *arg, int cancelled)
{
    if (cancelled && cq_kept_obj == NULL) {
        cq_kept_obj = Py_NewRef((PyObject *)arg);
    }
}

static PyObject *
t_cq_post_keeper(PyObject *m, PyObject *obj)
{
    (void)m;
    eg_cq *q = eg_cq_from_object(obj);
    if (q == NULL) {
        return NULL;
    }
    int rc = eg_cq_post(q, cq_keeper_cb, obj);   /* borrowed on purpose */
    return PyLong_FromLong(rc);
}

static PyObject *
t_cq_kept(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    PyObject *o = cq_kept_obj;
    cq_kept_obj = NULL;
    return o ? o : Py_NewRef(Py_None);
}

static PyObject *
t_cq_counts(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    return Py_BuildValue("{s:l,s:l,s:l,s:l,s:l,s:l,s:l}",
                         "ran", atomic_load(&cq_ran),
                         "cancelled", atomic_load(&cq_cancelled),
                         "build_ran", atomic_load(&build_ran),
                         "build_cancelled", atomic_load(&build_cancelled),
                         "accepted_plain", atomic_load(&accepted_plain),
                         "accepted_futures", atomic_load(&accepted_futures),
                         "refused", atomic_load(&refused_posts));
}

/* ---- releases late in finalization (the leak report must wait) --------- */

/* Module state: references released in m_free, during module teardown --
 * after exitguard's phase 2 released their objects. */
#define EGTEST_HELD 16
typedef struct {
    eg_ref *held[EGTEST_HELD];
    int nheld;
} egtest_state;

/* hold_until_free(obj): keep obj as an eg_ref until this module is freed. */
static PyObject *
t_hold_until_free(PyObject *m, PyObject *obj)
{
    egtest_state *st = PyModule_GetState(m);
    if (st->nheld == EGTEST_HELD) {
        PyErr_SetString(PyExc_OverflowError, "hold_until_free: full");
        return NULL;
    }
    eg_ref *r = eg_ref_new(obj);
    if (r == NULL) {
        return NULL;
    }
    st->held[st->nheld++] = r;
    Py_RETURN_NONE;
}

static void
egtest_free(void *m)
{
    egtest_state *st = PyModule_GetState((PyObject *)m);
    if (st == NULL || st->nheld == 0) {
        return;
    }
    int n = st->nheld;
    for (int i = 0; i < n; i++) {
        eg_ref_release(st->held[i]);
    }
    st->nheld = 0;
    fprintf(stderr, "egtest: m_free released %d reference(s)\n", n);
}

/* Process-wide references released after Py_FinalizeEx: by a libc atexit
 * handler, and by a library destructor (_dl_fini, later still).  Both run
 * without a thread state: eg_ref_release is all they may call. */
static eg_ref *atexit_held[EGTEST_HELD], *dtor_held[EGTEST_HELD];
static atomic_int n_atexit_held, n_dtor_held;

static void
release_atexit_held(void)
{
    int n = atomic_exchange(&n_atexit_held, 0);
    for (int i = 0; i < n; i++) {
        eg_ref_release(atexit_held[i]);
    }
    fprintf(stderr, "egtest: atexit handler released %d reference(s)\n", n);
}

__attribute__((destructor)) static void
release_dtor_held(void)
{
    int n = atomic_exchange(&n_dtor_held, 0);
    for (int i = 0; i < n; i++) {
        eg_ref_release(dtor_held[i]);
    }
    if (n > 0) {
        fprintf(stderr, "egtest: destructor released %d reference(s)\n", n);
    }
}

static PyObject *
hold_in(eg_ref **slots, atomic_int *count, PyObject *obj)
{
    if (atomic_load(count) == EGTEST_HELD) {
        PyErr_SetString(PyExc_OverflowError, "hold: full");
        return NULL;
    }
    eg_ref *r = eg_ref_new(obj);
    if (r == NULL) {
        return NULL;
    }
    slots[atomic_load(count)] = r;
    atomic_fetch_add(count, 1);
    Py_RETURN_NONE;
}

/* hold_until_atexit(obj): released by a libc atexit handler (registered at
 * the first call, so it runs before those registered earlier). */
static PyObject *
t_hold_until_atexit(PyObject *m, PyObject *obj)
{
    (void)m;
    static int registered;
    if (!registered) {
        if (atexit(release_atexit_held) != 0) {
            return PyErr_NoMemory();
        }
        registered = 1;
    }
    return hold_in(atexit_held, &n_atexit_held, obj);
}

/* hold_until_destructor(obj): released by this library's destructor. */
static PyObject *
t_hold_until_destructor(PyObject *m, PyObject *obj)
{
    (void)m;
    return hold_in(dtor_held, &n_dtor_held, obj);
}

/* late_attacher(attach): a raw thread that waits for a libc atexit handler
 * -- which runs after Py_FinalizeEx returned -- and then, if `attach`, tries
 * eg_gil_ensure once (refused: the interpreter is gone).  The handler waits
 * (bounded) until the thread has made its attempt, so the refusal happens
 * late in finalization, and surely before the process ends. */
static pthread_mutex_t late_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t late_cond = PTHREAD_COND_INITIALIZER;
static int late_go, late_done, late_attach, late_rc;

static void *
late_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&late_lock);
    while (!late_go) {
        pthread_cond_wait(&late_cond, &late_lock);
    }
    pthread_mutex_unlock(&late_lock);
    int rc = 0;
    if (late_attach) {
        eg_gil st;
        rc = eg_gil_ensure(NULL, &st);
        if (rc == 0) {
            eg_gil_release(&st);     /* would be a gate violation */
        }
    }
    pthread_mutex_lock(&late_lock);
    late_rc = rc;
    late_done = 1;
    pthread_cond_broadcast(&late_cond);
    pthread_mutex_unlock(&late_lock);
    return NULL;
}

static void
late_atexit(void)
{
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 5;
    pthread_mutex_lock(&late_lock);
    late_go = 1;
    pthread_cond_broadcast(&late_cond);
    while (!late_done) {
        if (pthread_cond_timedwait(&late_cond, &late_lock, &deadline) != 0) {
            break;
        }
    }
    int done = late_done, rc = late_rc;
    pthread_mutex_unlock(&late_lock);
    fprintf(stderr, "egtest: late attacher %s (rc %d)\n",
            !done ? "did not answer" : late_attach ? "tried to attach"
            : "did not try to attach", rc);
}

static PyObject *
t_late_attacher(PyObject *m, PyObject *arg)
{
    (void)m;
    late_attach = PyObject_IsTrue(arg);
    if (late_attach < 0) {
        return NULL;
    }
    pthread_t tid;
    if (atexit(late_atexit) != 0 || pthread_create(&tid, NULL, late_main,
                                                   NULL) != 0) {
        return PyErr_NoMemory();
    }
    pthread_detach(tid);
    Py_RETURN_NONE;
}

/* ---- misbehaving on purpose (for exitguard.testing's own tests) ---------- */

/* Lose a malloc'd block: a definite leak in this module, for leakcheck. */
static void *volatile leak_sink;

static PyObject *
t_leak_bytes(PyObject *m, PyObject *arg)
{
    (void)m;
    long n = PyLong_AsLong(arg);
    if (n < 0 && PyErr_Occurred()) {
        return NULL;
    }
    leak_sink = malloc((size_t)n);
    memset(leak_sink, 1, (size_t)n);
    leak_sink = NULL;
    Py_RETURN_NONE;
}

/* The classic refcount leak: n objects created by this module and never
 * DECREF'd.  Bytes objects, not GC-tracked ones (a list stays reachable
 * through the GC's own links), so that valgrind sees each as definitely
 * lost -- and the allocation stack's top frames are CPython's, with this
 * module's below them. */
static PyObject *
t_leak_objects(PyObject *m, PyObject *arg)
{
    (void)m;
    long n = PyLong_AsLong(arg);
    if (n < 0 && PyErr_Occurred()) {
        return NULL;
    }
    for (long i = 0; i < n; i++) {
        if (PyBytes_FromStringAndSize(NULL, 1000) == NULL) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

static PyObject *
t_crash(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    raise(SIGSEGV);
    Py_RETURN_NONE;
}

static PyObject *
t_fatal(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    Py_FatalError("egtest: fatal on purpose");
}

/* A process-wide slot to pass a handle between interpreters (the .so, and
 * so this static, is shared by every interpreter that imports egtest). */
static atomic_uintptr_t stash;

static PyObject *
t_stash_set(PyObject *m, PyObject *h)
{
    (void)m;
    void *p = py_to_handle(h);
    if (PyErr_Occurred()) {
        return NULL;
    }
    atomic_store(&stash, (uintptr_t)p);
    Py_RETURN_NONE;
}

static PyObject *
t_stash_get(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    return handle_to_py((void *)atomic_load(&stash));
}

/* ---- misc ------------------------------------------------------------------ */

static PyObject *
t_strerror(PyObject *m, PyObject *arg)
{
    (void)m;
    long e = PyLong_AsLong(arg);
    if (e == -1 && PyErr_Occurred()) {
        return NULL;
    }
    return PyUnicode_FromString(eg_strerror((int)e));
}

static PyObject *
t_flush(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    return PyLong_FromSsize_t(eg_flush());
}

static PyObject *
t_decref(PyObject *m, PyObject *obj)
{
    /* Attached eg_decref of a reference we take here: applied at once. */
    (void)m;
    Py_INCREF(obj);
    eg_decref(obj);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"ref_new", t_ref_new, METH_O, NULL},
    {"ref_get", t_ref_get, METH_O, NULL},
    {"ref_release", t_ref_release, METH_O, NULL},
    {"release_in_threads", t_release_in_threads, METH_VARARGS, NULL},
    {"decref_in_threads", t_decref_in_threads, METH_VARARGS, NULL},
    {"decref_then_idle", t_decref_then_idle, METH_O, NULL},
    {"release_idle", t_release_idle, METH_NOARGS, NULL},
    {"c_stopper", t_c_stopper, METH_VARARGS, NULL},
    {"c_stopper_raise", t_c_stopper_raise, METH_O, NULL},
    {"hold_until_free", t_hold_until_free, METH_O, NULL},
    {"hold_until_atexit", t_hold_until_atexit, METH_O, NULL},
    {"hold_until_destructor", t_hold_until_destructor, METH_O, NULL},
    {"late_attacher", t_late_attacher, METH_O, NULL},
    {"stopper_after", t_stopper_after, METH_VARARGS, NULL},
    {"stopper_remove", t_stopper_remove, METH_O, NULL},
    {"stopper_add_null", t_stopper_add_null, METH_NOARGS, NULL},
    {"strerror", t_strerror, METH_O, NULL},
    {"flush", t_flush, METH_NOARGS, NULL},
    {"decref", t_decref, METH_O, NULL},
    {"registered_attachers", t_registered_attachers, METH_VARARGS, NULL},
    {"raw_attachers", t_raw_attachers, METH_VARARGS, NULL},
    {"adopted_attacher", t_adopted_attacher, METH_VARARGS, NULL},
    {"attach_counts", t_attach_counts, METH_NOARGS, NULL},
    {"blocked_thread", t_blocked_thread, METH_NOARGS, NULL},
    {"thread_join", t_thread_join, METH_VARARGS, NULL},
    {"nested_in_thread", t_nested_in_thread, METH_VARARGS, NULL},
    {"ensure_here", t_ensure_here, METH_NOARGS, NULL},
    {"interp_current", t_interp_current, METH_NOARGS, NULL},
    {"interp_main", t_interp_main, METH_NOARGS, NULL},
    {"interp_close", t_interp_close, METH_O, NULL},
    {"run_in_thread", t_run_in_thread, METH_VARARGS, NULL},
    {"stash_set", t_stash_set, METH_O, NULL},
    {"churn_threads", t_churn_threads, METH_O, NULL},
    {"job_items", t_job_items, METH_NOARGS, NULL},
    {"log_detached", t_log_detached, METH_VARARGS, NULL},
    {"logged", t_logged, METH_NOARGS, NULL},
    {"log_runtime_names", t_log_runtime_names, METH_VARARGS, NULL},
    {"crash", t_crash, METH_NOARGS, NULL},
    {"leak_bytes", t_leak_bytes, METH_O, NULL},
    {"leak_objects", t_leak_objects, METH_O, NULL},
    {"fatal", t_fatal, METH_NOARGS, NULL},
    {"log_from_threads", t_log_from_threads, METH_VARARGS, NULL},
    {"log_enabled", t_log_enabled, METH_VARARGS, NULL},
    {"site_log", t_site_log, METH_VARARGS, NULL},
    {"site_evals", t_site_evals, METH_NOARGS, NULL},
    {"log_enabled_name", t_log_enabled_name, METH_VARARGS, NULL},
    {"event_wait", t_event_wait, METH_O, NULL},
    {"event_set_later", t_event_set_later, METH_O, NULL},
    {"cq_post_many", t_cq_post_many, METH_VARARGS, NULL},
    {"cq_complete_futures", t_cq_complete_futures, METH_VARARGS, NULL},
    {"cq_counts", t_cq_counts, METH_NOARGS, NULL},
    {"cq_post_keeper", t_cq_post_keeper, METH_O, NULL},
    {"cq_kept", t_cq_kept, METH_NOARGS, NULL},
    {"churned", t_churned, METH_NOARGS, NULL},
    {"stash_get", t_stash_get, METH_NOARGS, NULL},
    {"report_at_exit", t_report_at_exit, METH_NOARGS, NULL},
    {"c_stopper_starting_thread", t_c_stopper_starting_thread, METH_NOARGS, NULL},
    {"stopper_thread_rc", t_stopper_thread_rc, METH_NOARGS, NULL},
    {"c_blocking_stopper", t_c_blocking_stopper, METH_O, NULL},
    {"quick_thread", t_quick_thread, METH_NOARGS, NULL},
    {"stubborn_thread", t_stubborn_thread, METH_O, NULL},
    {"capi_subinterp_cycles", (PyCFunction)(void (*)(void))t_capi_subinterp_cycles,
     METH_VARARGS | METH_KEYWORDS, NULL},
    {"_capi_sub_work", t_capi_sub_work, METH_VARARGS, NULL},
    {"_capi_freed_inc", t_capi_freed_inc, METH_NOARGS, NULL},
    {"_capi_gen", t_capi_gen, METH_O, NULL},
    {"attach_then_join_holding_gil", t_attach_then_join_holding_gil,
     METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static int
egtest_exec(PyObject *m)
{
    if (eg_import() < 0) {
        return -1;
    }
    return PyModule_AddIntConstant(m, "ABI_VERSION", EG_ABI_VERSION);
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)egtest_exec},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "egtest",
    .m_size = sizeof(egtest_state),
    .m_methods = methods,
    .m_slots = slots,
    .m_free = egtest_free,
};

PyMODINIT_FUNC
PyInit_egtest(void)
{
    return PyModuleDef_Init(&def);
}
