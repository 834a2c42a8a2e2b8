/*
 * cassandra_1287_reactor -- apache/cassandra-python-driver PR #1287 "Prevent crashes at
 * exit" (the crash seen by datahub-project/datahub PR #18933/#18934; scylladb
 * python-driver#524).
 *
 * The report: the driver runs every connection on one process-global libev reactor
 * whose loop runs on a Python daemon thread ("event_loop"), in native code with the
 * GIL released; libev's callbacks call into Python with PyGILState_Ensure.  Its
 * cleanup was registered at import as atexit.register(partial(_cleanup,
 * _global_loop)) while _global_loop was still None: partial() bound the None, the
 * cleanup did nothing, and the reactor kept running native callbacks into
 * finalization -- SIGSEGV in new_threadstate <- PyGILState_Ensure <-
 * ev_invoke_pending, 15-25 s after every test had passed.
 *
 * Here: a Loop type whose start() is the reactor (a timer firing every
 * millisecond runs each registered watcher's Python callback, attached), the
 * driver's Python half -- module code with the report's atexit line, verbatim in
 * spirit: the partial binds None -- and initialize_reactor(), which starts the
 * loop lazily on a daemon thread.
 *
 * The port: the loop's callbacks attach through eg_gil_ensure, and the Python half
 * registers the loop's cleanup with exitguard.exit_stopper when the loop is
 * created -- found through exitguard's registry, whatever the buggy atexit line
 * captured (which stays, unchanged).  The cleanup stops the loop and joins its
 * thread in phase 1.
 */
#include "rw.h"

#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#define MAX_WATCHERS 16

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;               /* guards the fields below */
    pthread_cond_t cond;
    int stop, running;
#ifdef RW_NAIVE
    PyObject *watchers[MAX_WATCHERS];   /* strong references: callbacks */
#else
    eg_ref *watchers[MAX_WATCHERS];
#endif
    int nwatchers;
} Loop;

static void
loop_killed(void *arg)                  /* a pthread cleanup handler */
{
    (void)arg;
    rw_bump(RW_KILLED);                 /* pthread_exit unwound the reactor */
}

/* One pass over the watchers: ev_invoke_pending. */
static void
invoke_pending(Loop *self)
{
    pthread_mutex_lock(&self->lock);
    int n = self->nwatchers;
    pthread_mutex_unlock(&self->lock);
    for (int i = 0; i < n; i++) {
#ifdef RW_NAIVE
        PyGILState_STATE g = PyGILState_Ensure();
        PyObject *r = PyObject_CallNoArgs(self->watchers[i]);
        rw_bump(RW_CALLS);
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
        PyGILState_Release(g);
#else
        eg_gil st;
        if (eg_gil_ensure(NULL, &st) != 0) {
            rw_bump(RW_REFUSED);
            return;
        }
        PyObject *cb = eg_ref_get(self->watchers[i]);
        PyObject *r = cb ? PyObject_CallNoArgs(cb) : NULL;
        rw_bump(RW_CALLS);
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
        eg_gil_release(&st);
#endif
    }
}

/* Loop.start(): ev_run, until _cleanup() stops it.  Called on the loop thread. */
static PyObject *
Loop_start(PyObject *op, PyObject *unused)
{
    (void)unused;
    Loop *self = (Loop *)op;
    rw_bump(RW_STARTED);
    Py_BEGIN_ALLOW_THREADS
    pthread_cleanup_push(loop_killed, NULL);
    pthread_mutex_lock(&self->lock);
    self->running = 1;
    while (!self->stop) {
        pthread_mutex_unlock(&self->lock);
        invoke_pending(self);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);           /* the timer */
        pthread_mutex_lock(&self->lock);
    }
    self->running = 0;
    pthread_cond_broadcast(&self->cond);
    pthread_mutex_unlock(&self->lock);
    pthread_cleanup_pop(0);
    Py_END_ALLOW_THREADS
    rw_bump(RW_ENDED);
    Py_RETURN_NONE;
}

/* Loop._stop(): ask the loop to return, wait until it has (GIL released). */
static PyObject *
Loop_stop(PyObject *op, PyObject *unused)
{
    (void)unused;
    Loop *self = (Loop *)op;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->lock);
    self->stop = 1;
    while (self->running) {
        pthread_cond_wait(&self->cond, &self->lock);
    }
    pthread_mutex_unlock(&self->lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *
Loop_add_watcher(PyObject *op, PyObject *cb)
{
    Loop *self = (Loop *)op;
#ifdef RW_NAIVE
    PyObject *w = Py_NewRef(cb);
#else
    eg_ref *w = eg_ref_new(cb);
    if (w == NULL) {
        return NULL;
    }
#endif
    pthread_mutex_lock(&self->lock);
    int ok = self->nwatchers < MAX_WATCHERS;
    if (ok) {
        self->watchers[self->nwatchers++] = w;
    }
    pthread_mutex_unlock(&self->lock);
    if (!ok) {
#ifdef RW_NAIVE
        Py_DECREF(w);
#else
        eg_ref_release(w);
#endif
        return PyErr_Format(PyExc_RuntimeError, "too many watchers");
    }
    Py_RETURN_NONE;
}

/* Loop._release_watchers(): after _stop(), drop the callbacks (attached). */
static PyObject *
Loop_release_watchers(PyObject *op, PyObject *unused)
{
    (void)unused;
    Loop *self = (Loop *)op;
    pthread_mutex_lock(&self->lock);
    int n = self->running ? 0 : self->nwatchers;
    if (n) {
        self->nwatchers = 0;
    }
    pthread_mutex_unlock(&self->lock);
    for (int i = 0; i < n; i++) {
#ifdef RW_NAIVE
        Py_DECREF(self->watchers[i]);
#else
        eg_ref_release(self->watchers[i]);
#endif
    }
    Py_RETURN_NONE;
}

static PyObject *
Loop_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    (void)args;
    (void)kw;
    Loop *self = (Loop *)tp->tp_alloc(tp, 0);
    if (self != NULL) {
        pthread_mutex_init(&self->lock, NULL);
        pthread_cond_init(&self->cond, NULL);
    }
    return (PyObject *)self;
}

static PyMethodDef Loop_methods[] = {
    {"start", Loop_start, METH_NOARGS, "Run the reactor until stopped."},
    {"_stop", Loop_stop, METH_NOARGS, "Stop the reactor and wait for it."},
    {"add_watcher", Loop_add_watcher, METH_O, "Call cb() on every timer tick."},
    {"_release_watchers", Loop_release_watchers, METH_NOARGS, "Drop the callbacks."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Loop_slots[] = {
    {Py_tp_new, (void *)Loop_new},
    {Py_tp_methods, Loop_methods},
    {0, NULL},
};

static PyType_Spec Loop_spec = {
    RW_MODNAME ".Loop", sizeof(Loop), 0, Py_TPFLAGS_DEFAULT, Loop_slots,
};

/* The driver's Python half (libevreactor.py), the same in both builds except
 * for the exit_stopper line the port adds. */
static const char driver_py[] =
    "import atexit, threading\n"
    "from functools import partial\n"
    "\n"
    "class LibevLoop:\n"
    "    def __init__(self):\n"
    "        self._loop = Loop()\n"
    "        self._thread = None\n"
    "        if EXITGUARD:\n"
    "            import exitguard\n"
    "            exitguard.exit_stopper(self._cleanup)   # the port\n"
    "    def maybe_start(self):\n"
    "        if self._thread is None:\n"
    "            self._thread = threading.Thread(target=self._loop.start,\n"
    "                                            name='event_loop', daemon=True)\n"
    "            self._thread.start()\n"
    "    def _cleanup(self):\n"
    "        self._loop._stop()\n"
    "        if self._thread is not None:\n"
    "            self._thread.join(timeout=1.0)\n"
    "        self._loop._release_watchers()\n"
    "\n"
    "def _cleanup(loop):\n"
    "    if loop:\n"
    "        loop._cleanup()\n"
    "\n"
    "_global_loop = None\n"
    "atexit.register(partial(_cleanup, _global_loop))   # binds None: the bug\n"
    "\n"
    "def initialize_reactor():\n"
    "    global _global_loop\n"
    "    if _global_loop is None:\n"
    "        _global_loop = LibevLoop()\n"
    "    return _global_loop\n"
    "\n"
    "class Connection:\n"
    "    def __init__(self, token):\n"
    "        self.token = token\n"
    "        self.heartbeats = 0\n"
    "        loop = initialize_reactor()\n"
    "        loop._loop.add_watcher(self.handle_heartbeat)\n"
    "        loop.maybe_start()\n"
    "    def handle_heartbeat(self):\n"
    "        self.heartbeats += 1\n";

static int
exec_module(PyObject *m)
{
    if (rw_exec(m) < 0) {
        return -1;
    }
    PyObject *loop_type = PyType_FromSpec(&Loop_spec);
    if (loop_type == NULL || PyModule_AddObjectRef(m, "Loop", loop_type) < 0) {
        Py_XDECREF(loop_type);
        return -1;
    }
    Py_DECREF(loop_type);
#ifdef RW_NAIVE
    PyObject *flag = Py_False;
#else
    PyObject *flag = Py_True;
#endif
    if (PyModule_AddObjectRef(m, "EXITGUARD", flag) < 0) {
        return -1;
    }
    PyObject *d = PyModule_GetDict(m);  /* borrowed */
    if (PyDict_GetItemString(d, "__builtins__") == NULL
        && PyDict_SetItemString(d, "__builtins__", PyEval_GetBuiltins()) < 0) {
        return -1;
    }
    PyObject *r = PyRun_String(driver_py, Py_file_input, d, d);
    if (r == NULL) {
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

static PyMethodDef methods[] = {
    RW_COMMON_METHODS
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
