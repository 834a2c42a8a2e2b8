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
#include <Python.h>
#include <exitguard.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
    }
    return NULL;
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
    {"stopper_after", t_stopper_after, METH_VARARGS, NULL},
    {"stopper_remove", t_stopper_remove, METH_O, NULL},
    {"stopper_add_null", t_stopper_add_null, METH_NOARGS, NULL},
    {"strerror", t_strerror, METH_O, NULL},
    {"flush", t_flush, METH_NOARGS, NULL},
    {"decref", t_decref, METH_O, NULL},
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
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit_egtest(void)
{
    return PyModuleDef_Init(&def);
}
