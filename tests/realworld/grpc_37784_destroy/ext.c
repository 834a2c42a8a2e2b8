/*
 * grpc_37784_destroy -- grpc/grpc PR #37784 (retry of #37762) "Don't grab GIL from
 * C-Core during shutdown".
 *
 * The report: a metadata plugin (a Python callable) is handed to the C core
 * together with a destroy callback that takes the GIL and drops the reference.
 * The core calls it whenever it destroys the credentials -- on its own threads,
 * and at the latest from grpc_shutdown(), which grpc registers with Py_AtExit
 * (grpc PR #6941): after the interpreter is gone.  Taking the GIL there races the
 * GIL's destruction.  The fix marks "Python is exiting" from an exit handler and,
 * under a C mutex, stops the callback from taking the GIL afterwards.
 *
 * Here a small "core": Credentials hold the plugin, a Channel holds credentials
 * and has an executor thread that asks the plugin for metadata for every call
 * (attached, one call per millisecond while calls are queued).  Channels live in
 * the core until core_shutdown(), a Py_AtExit hook registered at import, which
 * tells the executor to destroy them and waits for it -- the executor runs each
 * credential's destroy callback.
 *
 * Naive: PyGILState_Ensure in both callbacks.  Port: exactly the fix, as
 * exitguard provides it -- the plugin is an eg_ref whose release is safe from any
 * thread at any time, and the metadata callback attaches through eg_gil_ensure,
 * which refuses once shutdown began.
 */
#include "rw.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>

/* ---- the core -------------------------------------------------------------- */

typedef struct creds {
    atomic_int refs;
#ifdef RW_NAIVE
    PyObject *plugin;
#else
    eg_ref *plugin;
#endif
} creds;

/* The destroy callback grpc's Cython layer hands to the core. */
static void
plugin_destroy(creds *c)
{
#ifdef RW_NAIVE
    PyGILState_STATE g = PyGILState_Ensure();       /* "with gil" */
    Py_DECREF(c->plugin);
    PyGILState_Release(g);
#else
    eg_ref_release(c->plugin);
#endif
}

static void
creds_unref(creds *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1) {
        plugin_destroy(c);
        free(c);
    }
}

/* The metadata callback: ask the plugin for this call's metadata. */
static void
plugin_get_metadata(creds *c)
{
#ifdef RW_NAIVE
    PyGILState_STATE g = PyGILState_Ensure();
    PyObject *r = PyObject_CallNoArgs(c->plugin);
    rw_bump(RW_CALLS);
    Py_XDECREF(r);
    PyGILState_Release(g);
#else
    eg_gil st;
    if (eg_gil_ensure(NULL, &st) != 0) {
        rw_bump(RW_REFUSED);            /* exiting: fail the call, not the process */
        return;
    }
    PyObject *plugin = eg_ref_get(c->plugin);
    PyObject *r = plugin ? PyObject_CallNoArgs(plugin) : NULL;
    rw_bump(RW_CALLS);
    if (r == NULL && PyErr_Occurred()) {
        PyErr_Clear();
    }
    Py_XDECREF(r);
    eg_gil_release(&st);
#endif
}

#define CORE_MAX_CHANNELS 8

static struct {
    pthread_mutex_t lock;           /* guards everything below */
    pthread_cond_t wake;
    creds *channels[CORE_MAX_CHANNELS];   /* a channel is its credentials here */
    long queued_calls;
    int nchannels, shutdown, running;
    pthread_t executor;
} core = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, {NULL}, 0, 0, 0, 0, 0};

static void *
executor_main(void *arg)
{
    (void)arg;
    rw_bump(RW_STARTED);
    pthread_mutex_lock(&core.lock);
    for (;;) {
        if (core.shutdown) {
            break;
        }
        if (core.queued_calls == 0 || core.nchannels == 0) {
            pthread_cond_wait(&core.wake, &core.lock);
            continue;
        }
        core.queued_calls--;
        creds *c = core.channels[core.queued_calls % core.nchannels];
        atomic_fetch_add(&c->refs, 1);
        pthread_mutex_unlock(&core.lock);
        plugin_get_metadata(c);
        creds_unref(c);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
        pthread_mutex_lock(&core.lock);
    }
    /* Shutdown: destroy every channel still alive in the core. */
    int n = core.nchannels;
    creds *drop[CORE_MAX_CHANNELS];
    for (int i = 0; i < n; i++) {
        drop[i] = core.channels[i];
    }
    core.nchannels = 0;
    pthread_mutex_unlock(&core.lock);
    for (int i = 0; i < n; i++) {
        creds_unref(drop[i]);
    }
    rw_bump(RW_ENDED);
    return NULL;
}

/* CAUTION: Py_AtExit hook -- the interpreter is already freed.  libc only;
 * the executor it waits for runs the destroy callbacks. */
static void
core_shutdown(void)
{
    pthread_mutex_lock(&core.lock);
    int running = core.running;
    core.shutdown = 1;
    pthread_cond_broadcast(&core.wake);
    pthread_mutex_unlock(&core.lock);
    if (running) {
        pthread_join(core.executor, NULL);      /* grpc_shutdown_blocking */
    }
}

/* ---- Python surface -------------------------------------------------------- */

static PyObject *
py_secure_channel(PyObject *m, PyObject *plugin)
{
    (void)m;
    creds *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return PyErr_NoMemory();
    }
#ifdef RW_NAIVE
    c->plugin = Py_NewRef(plugin);
#else
    c->plugin = eg_ref_new(plugin);
    if (c->plugin == NULL) {
        free(c);
        return NULL;
    }
#endif
    atomic_init(&c->refs, 1);                   /* the core's */
    pthread_mutex_lock(&core.lock);
    int ok = !core.shutdown && core.nchannels < CORE_MAX_CHANNELS;
    if (ok) {
        core.channels[core.nchannels++] = c;
    }
    int start = ok && !core.running;
    core.running = core.running || start;
    pthread_mutex_unlock(&core.lock);
    if (!ok) {
        creds_unref(c);
        return PyErr_Format(PyExc_RuntimeError, "core is shut down");
    }
    if (start && pthread_create(&core.executor, NULL, executor_main, NULL) != 0) {
        return PyErr_Format(PyExc_OSError, "cannot start the executor");
    }
    Py_RETURN_NONE;
}

static PyObject *
py_call(PyObject *m, PyObject *n)
{
    (void)m;
    long k = PyLong_AsLong(n);
    if (k < 0 && PyErr_Occurred()) {
        return NULL;
    }
    pthread_mutex_lock(&core.lock);
    core.queued_calls += k;
    pthread_cond_broadcast(&core.wake);
    pthread_mutex_unlock(&core.lock);
    Py_RETURN_NONE;
}

static int
exec_module(PyObject *m)
{
    if (rw_exec(m) < 0) {
        return -1;
    }
    if (Py_AtExit(core_shutdown) < 0) {         /* grpc PR #6941 */
        PyErr_SetString(PyExc_RuntimeError, "Py_AtExit is full");
        return -1;
    }
    return 0;
}

static PyMethodDef methods[] = {
    RW_COMMON_METHODS
    {"secure_channel", py_secure_channel, METH_O,
     "A channel whose credentials hold the metadata plugin."},
    {"call", py_call, METH_O, "Queue n calls (each asks the plugin for metadata)."},
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
