/*
 * egbase.c -- the baseline of the fork test: the same native churn as
 * egtest.churn_threads, written the way an extension without exitguard
 * does it (PyGILState_Ensure / PyGILState_Release), so that what CPython
 * does on its own under the same load can be told apart from exitguard.
 * It never includes exitguard.h.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>

static atomic_long n_churned;

static void *
churn_main(void *arg)
{
    (void)arg;
    for (;;) {
        PyGILState_STATE g = PyGILState_Ensure();
        PyObject *o = PyList_New(0);
        for (int i = 0; o != NULL && i < 50; i++) {
            PyObject *inner = PyList_New(0);
            if (inner == NULL || PyList_Append(o, inner) < 0) {
                PyErr_Clear();
            }
            Py_XDECREF(inner);
        }
        Py_XDECREF(o);
        PyGILState_Release(g);
        atomic_fetch_add(&n_churned, 1);
    }
    return NULL;
}

static PyObject *
churn_threads(PyObject *m, PyObject *arg)
{
    (void)m;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    for (long i = 0; i < n; i++) {
        pthread_t tid;
        if (pthread_create(&tid, NULL, churn_main, NULL) != 0) {
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        pthread_detach(tid);
    }
    Py_RETURN_NONE;
}

static PyObject *
churned(PyObject *m, PyObject *Py_UNUSED(ignored))
{
    (void)m;
    return PyLong_FromLong(atomic_load(&n_churned));
}

static PyMethodDef methods[] = {
    {"churn_threads", churn_threads, METH_O, NULL},
    {"churned", churned, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "egbase",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit_egbase(void)
{
    return PyModuleDef_Init(&def);
}
