/*
 * pinger.c -- a native thread that calls into Python, built with CMake
 * (scikit-build-core) against exitguard's CMake package.
 *
 * pinger.start(callback, period_ms=1) starts one thread with
 * eg_thread_start(): every period it attaches with eg_gil_ensure() and calls
 * callback(n) with a running count, and every 100th call it logs through
 * eg_log() (GIL-free, into Python's logging).  pinger.stats() reports the
 * counters.  One pinger per process; the module refuses subinterpreters.
 *
 * At exit, exitguard's phase 1 sets the thread's stop flag, calls
 * request_stop() (which wakes the wait) and joins the thread with the GIL
 * released; the thread drops the callback as it ends, so nothing is left for
 * phase 2 to release.  An attach refused because shutdown has begun
 * (-ESHUTDOWN) ends the loop instead of hanging or killing the thread.
 *
 * State shared with the thread is guarded by `lock` (the module declares it
 * does not need the GIL); the counters are relaxed atomics, tallies with no
 * data hanging off them.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <exitguard.h>

#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

static struct {
    pthread_mutex_t lock;       /* guards started, stop, callback */
    pthread_cond_t wake;
    int started;
    int stop;
    eg_ref *callback;
    long period_ms;
    eg_thread *thread;
    atomic_long calls, refused;
} P = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

/*
 * CAUTION: request_stop and pinger_main run without a thread state: libc,
 * pthreads, atomics and eg_* calls documented for any thread only.  Python
 * is touched only between eg_gil_ensure and eg_gil_release.
 */

/* Phase 1, no GIL, must not block: wake the thread. */
static void
request_stop(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&P.lock);
    P.stop = 1;
    pthread_cond_signal(&P.wake);
    pthread_mutex_unlock(&P.lock);
}

/* Wait one period, or until asked to stop; returns 1 to go on. */
static int
wait_period(void)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_nsec += (P.period_ms % 1000) * 1000000L;
    until.tv_sec += P.period_ms / 1000 + until.tv_nsec / 1000000000L;
    until.tv_nsec %= 1000000000L;
    pthread_mutex_lock(&P.lock);
    while (!P.stop && !eg_thread_stop_requested()) {
        if (pthread_cond_timedwait(&P.wake, &P.lock, &until) != 0) {
            break;              /* the period is over */
        }
    }
    int go_on = !P.stop && !eg_thread_stop_requested();
    pthread_mutex_unlock(&P.lock);
    return go_on;
}

static void
pinger_main(void *arg)
{
    (void)arg;
    while (wait_period()) {
        eg_gil st;
        if (eg_gil_ensure(NULL, &st) != 0) {
            atomic_fetch_add_explicit(&P.refused, 1, memory_order_relaxed);
            break;              /* -ESHUTDOWN: never touch Python again */
        }
        long n = atomic_fetch_add_explicit(&P.calls, 1, memory_order_relaxed) + 1;
        PyObject *cb = eg_ref_get(P.callback);
        PyObject *r = cb ? PyObject_CallFunction(cb, "l", n) : NULL;
        if (r == NULL && PyErr_Occurred()) {
            PyErr_WriteUnraisable(cb);
        }
        Py_XDECREF(r);
        eg_gil_release(&st);
        if (n % 100 == 0) {
            eg_log(EG_LOG_INFO, "pinger", "%ld calls so far", n);
        }
    }
    pthread_mutex_lock(&P.lock);
    eg_ref *cb = P.callback;
    P.callback = NULL;
    pthread_mutex_unlock(&P.lock);
    eg_ref_release(cb);         /* no GIL: queued, applied by phase 2 at the latest */
}

/* Attached. */
static PyObject *
pinger_start(PyObject *module, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"callback", "period_ms", NULL};
    PyObject *callback;
    long period_ms = 1;
    (void)module;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|l", kwlist, &callback, &period_ms)) {
        return NULL;
    }
    if (!PyCallable_Check(callback)) {
        PyErr_SetString(PyExc_TypeError, "callback must be callable");
        return NULL;
    }
    if (period_ms < 0 || period_ms > 60000) {
        PyErr_SetString(PyExc_ValueError, "period_ms must be 0..60000");
        return NULL;
    }
    eg_ref *ref = eg_ref_new(callback);
    if (ref == NULL) {
        return NULL;
    }
    pthread_mutex_lock(&P.lock);
    if (P.started) {
        pthread_mutex_unlock(&P.lock);
        eg_ref_release(ref);
        PyErr_SetString(PyExc_RuntimeError, "the pinger is already started");
        return NULL;
    }
    P.started = 1;
    P.callback = ref;
    P.period_ms = period_ms;
    pthread_mutex_unlock(&P.lock);
    int rc = eg_thread_start(&P.thread, "pinger", pinger_main, request_stop, NULL);
    if (rc != 0) {
        pthread_mutex_lock(&P.lock);
        P.callback = NULL;
        pthread_mutex_unlock(&P.lock);
        eg_ref_release(ref);
        PyErr_Format(PyExc_RuntimeError, "pinger: cannot start the thread: %s", eg_strerror(rc));
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *
pinger_stats(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return Py_BuildValue("{sl,sl}",
                         "calls", atomic_load_explicit(&P.calls, memory_order_relaxed),
                         "refused", atomic_load_explicit(&P.refused, memory_order_relaxed));
}

static int
pinger_exec(PyObject *module)
{
    (void)module;
    return eg_import();         /* ImportError naming both versions on an ABI mismatch */
}

static PyMethodDef pinger_methods[] = {
    {"start", (PyCFunction)(void (*)(void))pinger_start, METH_VARARGS | METH_KEYWORDS,
     "start(callback, period_ms=1): call callback(n) from a native thread every period."},
    {"stats", pinger_stats, METH_NOARGS, "stats() -> {'calls': n, 'refused': n}"},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot pinger_slots[] = {
    {Py_mod_exec, pinger_exec},
#ifdef Py_mod_multiple_interpreters
    /* One pinger per process: a second interpreter would share it. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},      /* `lock` and atomics, never the GIL */
#endif
    {0, NULL},
};

static struct PyModuleDef pinger_module = {
    PyModuleDef_HEAD_INIT, "pinger", "A native thread calling into Python, built with CMake.",
    0, pinger_methods, pinger_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit_pinger(void)
{
    return PyModuleDef_Init(&pinger_module);
}
