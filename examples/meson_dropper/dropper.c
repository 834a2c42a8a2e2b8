/*
 * dropper.c -- a thread that exitguard did not create, registered with it,
 * dropping Python references without the GIL; built with meson (meson-python)
 * against exitguard's pkg-config file.
 *
 * dropper.start() creates a plain pthread, as a third-party library would,
 * and registers it with eg_thread_adopt(): exitguard's phase 1 calls
 * request_stop() and then join() with the GIL released, so the thread ends
 * before the interpreter joins its own.  dropper.feed(obj) hands one strong
 * reference to the thread, which drops it with eg_decref() -- never
 * Py_DECREF: the thread has no thread state.  exitguard applies those decrefs
 * on an attached thread (a pending call, the next entry point, or phase 2 at
 * the latest), so every object fed is freed by exit.  dropper.stats()
 * reports the counters.  One dropper per process; the module refuses
 * subinterpreters (unattached eg_decref goes to the main interpreter).
 *
 * The queue is this file's own: a singly linked list under `lock`, never the
 * GIL (the module declares it does not need it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <exitguard.h>

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

typedef struct node {
    PyObject *obj;              /* a strong reference the thread owns */
    struct node *next;
} node;

static struct {
    pthread_mutex_t lock;       /* guards everything below but the thread id */
    pthread_cond_t wake;        /* an object arrived, or stop */
    pthread_cond_t ended;       /* the thread is about to return */
    node *head, *tail;
    int started, stop, running, reaped;
    long fed, dropped;
    eg_thread *registration;
    pthread_t tid;
} D = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER,
       .ended = PTHREAD_COND_INITIALIZER};

/*
 * CAUTION: dropper_main, request_stop and join_thread run without a thread
 * state: libc, pthreads and the eg_* calls documented for any thread only
 * (eg_decref, never Py_DECREF).
 */

static void *
dropper_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&D.lock);
    for (;;) {
        while (D.head == NULL && !D.stop) {
            pthread_cond_wait(&D.wake, &D.lock);
        }
        node *n = D.head;
        if (n == NULL) {
            break;              /* stopping, and nothing left */
        }
        D.head = n->next;
        if (D.head == NULL) {
            D.tail = NULL;
        }
        D.dropped++;
        pthread_mutex_unlock(&D.lock);
        eg_decref(n->obj);      /* no GIL: queued without a lock */
        free(n);
        pthread_mutex_lock(&D.lock);
    }
    D.running = 0;
    pthread_cond_broadcast(&D.ended);
    pthread_mutex_unlock(&D.lock);
    return NULL;
}

/* Phase 1 (or eg_thread_join), no GIL, must not block: the thread drains
 * what is queued, then ends. */
static void
request_stop(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&D.lock);
    D.stop = 1;
    pthread_cond_signal(&D.wake);
    pthread_mutex_unlock(&D.lock);
}

/* No GIL: 0 once the thread has ended (then reaped), -ETIMEDOUT if it is
 * still running after timeout_s seconds (< 0: forever). */
static int
join_thread(void *arg, double timeout_s)
{
    (void)arg;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    if (timeout_s >= 0) {
        until.tv_sec += (time_t)timeout_s;
        until.tv_nsec += (long)((timeout_s - (double)(time_t)timeout_s) * 1e9);
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
    }
    pthread_mutex_lock(&D.lock);
    while (D.running) {
        int rc = timeout_s < 0 ? pthread_cond_wait(&D.ended, &D.lock)
                               : pthread_cond_timedwait(&D.ended, &D.lock, &until);
        if (rc == ETIMEDOUT && D.running) {
            pthread_mutex_unlock(&D.lock);
            return -ETIMEDOUT;
        }
    }
    int reap = !D.reaped;       /* phase 1 and eg_thread_join may both ask */
    D.reaped = 1;
    pthread_mutex_unlock(&D.lock);
    if (reap) {
        pthread_join(D.tid, NULL);  /* returns at once: the thread is ending */
    }
    return 0;
}

/* Attached. */
static PyObject *
dropper_start(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    pthread_mutex_lock(&D.lock);
    if (D.started) {
        pthread_mutex_unlock(&D.lock);
        PyErr_SetString(PyExc_RuntimeError, "the dropper is already started");
        return NULL;
    }
    D.started = D.running = 1;
    pthread_mutex_unlock(&D.lock);
    int rc = pthread_create(&D.tid, NULL, dropper_main, NULL);
    if (rc != 0) {
        D.running = 0;
        errno = rc;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    rc = eg_thread_adopt(&D.registration, "dropper", request_stop, join_thread, NULL);
    if (rc != 0) {
        request_stop(NULL);
        Py_BEGIN_ALLOW_THREADS
        join_thread(NULL, -1.0);
        Py_END_ALLOW_THREADS
        PyErr_Format(PyExc_RuntimeError, "dropper: cannot register the thread: %s",
                     eg_strerror(rc));
        return NULL;
    }
    Py_RETURN_NONE;
}

/* Attached: hand one new reference to obj over to the thread. */
static PyObject *
dropper_feed(PyObject *module, PyObject *obj)
{
    (void)module;
    node *n = malloc(sizeof *n);
    if (n == NULL) {
        return PyErr_NoMemory();
    }
    Py_INCREF(obj);
    n->obj = obj;
    n->next = NULL;
    pthread_mutex_lock(&D.lock);
    if (!D.running || D.stop) {
        pthread_mutex_unlock(&D.lock);
        Py_DECREF(n->obj);
        free(n);
        PyErr_SetString(PyExc_RuntimeError, "the dropper is not running");
        return NULL;
    }
    if (D.tail == NULL) {
        D.head = n;
    }
    else {
        D.tail->next = n;
    }
    D.tail = n;
    D.fed++;
    pthread_cond_signal(&D.wake);
    pthread_mutex_unlock(&D.lock);
    Py_RETURN_NONE;
}

static PyObject *
dropper_stats(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    pthread_mutex_lock(&D.lock);
    long fed = D.fed, dropped = D.dropped;
    int running = D.running;
    pthread_mutex_unlock(&D.lock);
    return Py_BuildValue("{sl,sl,sO}", "fed", fed, "dropped", dropped,
                         "running", running ? Py_True : Py_False);
}

static int
dropper_exec(PyObject *module)
{
    (void)module;
    return eg_import();         /* ImportError naming both versions on an ABI mismatch */
}

static PyMethodDef dropper_methods[] = {
    {"start", dropper_start, METH_NOARGS, "start(): start the dropping thread."},
    {"feed", dropper_feed, METH_O, "feed(obj): the thread drops a reference to obj without the GIL."},
    {"stats", dropper_stats, METH_NOARGS, "stats() -> {'fed': n, 'dropped': n, 'running': bool}"},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot dropper_slots[] = {
    {Py_mod_exec, dropper_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},      /* `lock`, never the GIL */
#endif
    {0, NULL},
};

static struct PyModuleDef dropper_module = {
    PyModuleDef_HEAD_INIT, "dropper", "A registered foreign thread dropping references, built with meson.",
    0, dropper_methods, dropper_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit_dropper(void)
{
    return PyModuleDef_Init(&dropper_module);
}
