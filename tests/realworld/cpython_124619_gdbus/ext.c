/*
 * cpython_124619_gdbus -- python/cpython#124619, the PyGObject + GDBus crash report
 * (powerprofilesctl on 3.14.7, comment of 2026-09-01).
 *
 * The report: a short-lived script asks a D-Bus service for one value, prints it
 * and exits.  The bus library's worker thread ("gdbus") still holds a reference on
 * the proxy; it drops it after the main thread has entered exit(), and the
 * proxy's Python-side data is freed from there: PyGILState_Ensure + Py_DECREF on
 * an interpreter that no longer exists.  SIGSEGV in PyEval_RestoreThread <-
 * PyGILState_Ensure.
 *
 * Here, a tiny "bus" of our own plays GLib's part:
 *   - bus_connect() starts the worker thread;
 *   - a Proxy has a native reference count (a GObject's); the Python wrapper
 *     holds one, the bus holds one for as long as the connection is open;
 *   - Proxy.get(name) is answered by the worker, which attaches to build the
 *     reply (what every GDBus reply into PyGObject does);
 *   - the bus closes its connection from a C atexit() handler, as libraries
 *     that own process-wide connections do, and waits for the worker to finish
 *     closing; closing drops the bus's proxy references -- the last ones.
 *
 * Naive: the proxy's user data is a PyObject * freed with PyGILState_Ensure +
 * Py_DECREF when the native count reaches zero, on whatever thread that is.
 * Port (docs/porting.md sections 1 and 4): the user data is an eg_ref (released
 * from any thread at any time; after exitguard's phase 2 that only frees memory,
 * the object having been released while the interpreter was whole), and the
 * worker attaches through eg_gil_ensure.
 */
#include "rw.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

/* ---- the "bus": one worker thread, a request queue, a connection --------- */

typedef struct proxy proxy;

typedef struct request {
    struct request *next;
    proxy *target;          /* NULL: close the connection */
    const char *name;
    PyObject *reply;        /* set by the worker; NULL on failure */
    int done;
    pthread_cond_t done_cv;
} request;

#define BUS_MAX_PROXIES 8

static struct {
    pthread_mutex_t lock;       /* guards everything below */
    pthread_cond_t wake;
    request *head, *tail;
    proxy *registered[BUS_MAX_PROXIES];   /* one bus reference each */
    int nregistered;
    int connected, closed;
    pthread_t worker;
} bus = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, NULL,
         {NULL}, 0, 0, 0, 0};

struct proxy {
    atomic_int refs;        /* the GObject-style native reference count */
#ifdef RW_NAIVE
    PyObject *user_data;    /* strong reference */
#else
    eg_ref *user_data;
#endif
};

/* Drop one native reference; the last one frees the user data, on whatever
 * thread that happens (the bug's trigger when it is the worker, late). */
static void
proxy_unref(proxy *p)
{
    if (atomic_fetch_sub_explicit(&p->refs, 1, memory_order_acq_rel) != 1) {
        return;
    }
#ifdef RW_NAIVE
    /* PyGObject's data-free: attach "to be safe", decref. */
    PyGILState_STATE g = PyGILState_Ensure();
    Py_DECREF(p->user_data);
    PyGILState_Release(g);
#else
    eg_ref_release(p->user_data);       /* any thread, any time */
#endif
    free(p);
}

/* The worker answers a request: attached, builds a Python reply. */
static void
answer(request *r)
{
#ifdef RW_NAIVE
    PyGILState_STATE g = PyGILState_Ensure();
    r->reply = PyUnicode_FromFormat("%s=balanced", r->name);
    rw_bump(RW_CALLS);
    PyGILState_Release(g);
#else
    eg_gil st;
    if (eg_gil_ensure(NULL, &st) != 0) {
        rw_bump(RW_REFUSED);
        return;                         /* r->reply stays NULL */
    }
    r->reply = PyUnicode_FromFormat("%s=balanced", r->name);
    rw_bump(RW_CALLS);
    eg_gil_release(&st);
#endif
}

static void *
bus_worker(void *arg)
{
    (void)arg;
    rw_bump(RW_STARTED);
    pthread_mutex_lock(&bus.lock);
    for (;;) {
        while (bus.head == NULL) {
            pthread_cond_wait(&bus.wake, &bus.lock);
        }
        request *r = bus.head;
        bus.head = r->next;
        if (bus.head == NULL) {
            bus.tail = NULL;
        }
        if (r->target == NULL) {
            /* Close: drop the connection's proxy references, outside the lock. */
            int n = bus.nregistered;
            proxy *drop[BUS_MAX_PROXIES];
            for (int i = 0; i < n; i++) {
                drop[i] = bus.registered[i];
            }
            bus.nregistered = 0;
            bus.closed = 1;
            pthread_mutex_unlock(&bus.lock);
            for (int i = 0; i < n; i++) {
                proxy_unref(drop[i]);
            }
            pthread_mutex_lock(&bus.lock);
            r->done = 1;
            pthread_cond_broadcast(&r->done_cv);
            break;
        }
        pthread_mutex_unlock(&bus.lock);
        answer(r);
        pthread_mutex_lock(&bus.lock);
        r->done = 1;
        pthread_cond_broadcast(&r->done_cv);
    }
    pthread_mutex_unlock(&bus.lock);
    rw_bump(RW_ENDED);
    return NULL;
}

/* Queue r and wait until the worker is done with it.  Called without the GIL. */
static void
bus_roundtrip(request *r)
{
    pthread_cond_init(&r->done_cv, NULL);
    pthread_mutex_lock(&bus.lock);
    r->next = NULL;
    if (bus.tail) {
        bus.tail->next = r;
    }
    else {
        bus.head = r;
    }
    bus.tail = r;
    pthread_cond_signal(&bus.wake);
    while (!r->done) {
        pthread_cond_wait(&r->done_cv, &bus.lock);
    }
    pthread_mutex_unlock(&bus.lock);
    pthread_cond_destroy(&r->done_cv);
}

/* CAUTION: a C atexit() handler -- runs in exit(), after Py_FinalizeEx.  No
 * Python API here; the worker it waits for may call into Python (naive). */
static void
bus_atexit_close(void)
{
    pthread_mutex_lock(&bus.lock);
    int open = bus.connected && !bus.closed;
    pthread_mutex_unlock(&bus.lock);
    if (open) {
        request r = {0};
        bus_roundtrip(&r);              /* like g_dbus_connection_close_sync */
        pthread_join(bus.worker, NULL);
    }
}

/* ---- Python surface -------------------------------------------------------- */

static PyObject *
py_connect(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    pthread_mutex_lock(&bus.lock);
    int first = !bus.connected;
    bus.connected = 1;
    pthread_mutex_unlock(&bus.lock);
    if (first) {
        if (pthread_create(&bus.worker, NULL, bus_worker, NULL) != 0) {
            return PyErr_Format(PyExc_OSError, "cannot start the bus worker");
        }
        atexit(bus_atexit_close);
    }
    Py_RETURN_NONE;
}

typedef struct {
    PyObject_HEAD
    proxy *p;
} ProxyObject;

static PyTypeObject *Proxy_Type;

static PyObject *
Proxy_new(PyTypeObject *tp, PyObject *args, PyObject *kw)
{
    PyObject *data;
    if (kw != NULL || !PyArg_ParseTuple(args, "O", &data)) {
        return PyErr_Format(PyExc_TypeError, "Proxy(user_data)");
    }
    proxy *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        return PyErr_NoMemory();
    }
#ifdef RW_NAIVE
    p->user_data = Py_NewRef(data);
#else
    p->user_data = eg_ref_new(data);
    if (p->user_data == NULL) {
        free(p);
        return NULL;
    }
#endif
    atomic_init(&p->refs, 2);           /* the wrapper's and the bus's */
    pthread_mutex_lock(&bus.lock);
    int ok = bus.connected && !bus.closed && bus.nregistered < BUS_MAX_PROXIES;
    if (ok) {
        bus.registered[bus.nregistered++] = p;
    }
    pthread_mutex_unlock(&bus.lock);
    if (!ok) {
        atomic_store(&p->refs, 1);
        proxy_unref(p);
        return PyErr_Format(PyExc_RuntimeError, "not connected");
    }
    ProxyObject *self = (ProxyObject *)tp->tp_alloc(tp, 0);
    if (self == NULL) {
        proxy_unref(p);
        return NULL;
    }
    self->p = p;
    return (PyObject *)self;
}

static void
Proxy_dealloc(PyObject *op)
{
    ProxyObject *self = (ProxyObject *)op;
    PyTypeObject *tp = Py_TYPE(op);
    if (self->p != NULL) {
        proxy_unref(self->p);
    }
    tp->tp_free(op);
    Py_DECREF(tp);
}

static PyObject *
Proxy_get(PyObject *op, PyObject *name)
{
    ProxyObject *self = (ProxyObject *)op;
    const char *s = PyUnicode_AsUTF8(name);
    if (s == NULL) {
        return NULL;
    }
    request r = {0};
    r.target = self->p;
    r.name = s;
    Py_BEGIN_ALLOW_THREADS
    bus_roundtrip(&r);
    Py_END_ALLOW_THREADS
    if (r.reply == NULL && !PyErr_Occurred()) {
        PyErr_SetString(PyExc_RuntimeError, "no reply");
    }
    return r.reply;
}

static PyMethodDef Proxy_methods[] = {
    {"get", Proxy_get, METH_O, "Ask the service for a property."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot Proxy_slots[] = {
    {Py_tp_new, (void *)Proxy_new},
    {Py_tp_dealloc, (void *)Proxy_dealloc},
    {Py_tp_methods, Proxy_methods},
    {0, NULL},
};

static PyType_Spec Proxy_spec = {
    RW_MODNAME ".Proxy", sizeof(ProxyObject), 0, Py_TPFLAGS_DEFAULT,
    Proxy_slots,
};

static int
exec_module(PyObject *m)
{
    if (rw_exec(m) < 0) {
        return -1;
    }
    Proxy_Type = (PyTypeObject *)PyType_FromSpec(&Proxy_spec);
    if (Proxy_Type == NULL || PyModule_AddObjectRef(m, "Proxy", (PyObject *)Proxy_Type) < 0) {
        return -1;
    }
    return 0;
}

static PyMethodDef methods[] = {
    RW_COMMON_METHODS
    {"connect", py_connect, METH_NOARGS, "Connect to the bus (starts its worker)."},
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
