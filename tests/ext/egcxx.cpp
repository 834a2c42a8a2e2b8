// egcxx.cpp -- a small C++ client extension: references held by C++ statics
// and released by their destructors at process exit (docs/porting.md, section 4),
// after exitguard's phase 2 released the objects.  The leak report must not
// count them; a reference whose handle is dropped without a release must be.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <exitguard.hpp>

namespace {

// A namespace-scope static: constructed when the library is loaded (before
// exitguard is imported), destroyed by exit() after Py_FinalizeEx returned.
exitguard::ref global_ref;

PyObject *hold_global(PyObject *, PyObject *obj)
{
    global_ref = exitguard::ref::make(obj);
    if (!global_ref) {
        return nullptr;
    }
    Py_RETURN_NONE;
}

// A function-local static: constructed at the first call, destroyed by exit().
PyObject *hold_local(PyObject *, PyObject *obj)
{
    static exitguard::ref local_ref = exitguard::ref::make(obj);
    if (!local_ref) {
        return nullptr;
    }
    Py_RETURN_NONE;
}

// A real leak: the handle is given up and never released.
PyObject *leak(PyObject *, PyObject *obj)
{
    exitguard::ref r = exitguard::ref::make(obj);
    if (!r) {
        return nullptr;
    }
    (void)r.release();
    Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"hold_global", hold_global, METH_O, nullptr},
    {"hold_local", hold_local, METH_O, nullptr},
    {"leak", leak, METH_O, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

int egcxx_exec(PyObject *)
{
    return eg_import();
}

PyModuleDef_Slot slots[] = {
    {Py_mod_exec, reinterpret_cast<void *>(egcxx_exec)},
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, nullptr},
};

PyModuleDef def = {
    PyModuleDef_HEAD_INIT, "egcxx", nullptr, 0, methods, slots, nullptr, nullptr, nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit_egcxx(void)
{
    return PyModuleDef_Init(&def);
}
