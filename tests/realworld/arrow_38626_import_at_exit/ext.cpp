// arrow_38626_import_at_exit -- apache/arrow#38626 "Segmentation fault when pyarrow is
// imported in exit handler" (fixed by apache/arrow PR #38637; the same crash through
// pandas, pandas-dev/pandas#55866).
//
// The report: `atexit.register(lambda: import pyarrow)` -- an exit handler that
// imports the extension for the first time -- segfaults.  The extension caches
// Python objects in C++ statics (OwnedRefNoGIL) and normally releases them from an
// atexit handler it registers at import; registered from inside an exit handler,
// that cleanup never runs, and the statics' destructors run in exit(), after
// Py_FinalizeEx: PyGILState_Ensure -> new_threadstate(interp=NULL) -> SIGSEGV.
// ("Some C++ destructors may be called after the Python interpreter has ceased to
// exist.")
//
// Here: two namespace-scope statics cache objects at import (a Token and a
// namespace object holding one), with arrow's OwnedRefNoGIL destructor: attach,
// decref; the module registers an atexit cleanup that resets them.
//
// The port (docs/porting.md section 4): the statics are exitguard::ref, whose
// release is safe at any time -- after exitguard's phase 2 it frees memory only --
// and the atexit cleanup is gone: exitguard releases what is still registered.
#include "rw.h"

#if !defined(RW_NAIVE)
#  include <exitguard.hpp>
#endif

namespace {

#ifdef RW_NAIVE
// arrow::py::OwnedRefNoGIL, reduced: a strong reference whose destructor attaches.
class OwnedRefNoGIL {
public:
    OwnedRefNoGIL() = default;
    ~OwnedRefNoGIL() { reset(); }
    void reset(PyObject *o = nullptr)
    {
        if (obj_ != nullptr) {
            PyGILState_STATE g = PyGILState_Ensure();
            Py_DECREF(obj_);
            PyGILState_Release(g);
        }
        obj_ = o;
    }
    PyObject *get() const { return obj_; }

private:
    PyObject *obj_ = nullptr;
};
OwnedRefNoGIL cached_token, cached_namespace;
#else
exitguard::ref cached_token, cached_namespace;
#endif

#ifdef RW_NAIVE
PyObject *cleanup(PyObject *, PyObject *)       // the atexit handler, attached
{
    cached_token.reset();
    cached_namespace.reset();
    Py_RETURN_NONE;
}
PyMethodDef cleanup_def = {"_cleanup", cleanup, METH_NOARGS, nullptr};
#endif

int exec_module(PyObject *m)
{
    if (rw_exec(m) < 0) {
        return -1;
    }
    PyObject *token = rw_token_new();
    PyObject *types = token ? PyImport_ImportModule("types") : nullptr;
    PyObject *ns = types ? PyObject_CallMethod(types, "SimpleNamespace", nullptr) : nullptr;
    PyObject *inner = ns ? rw_token_new() : nullptr;
    int rc = inner ? PyObject_SetAttrString(ns, "token", inner) : -1;
    Py_XDECREF(inner);
    Py_XDECREF(types);
    if (rc < 0) {
        Py_XDECREF(token);
        Py_XDECREF(ns);
        return -1;
    }
#ifdef RW_NAIVE
    cached_token.reset(token);
    cached_namespace.reset(ns);
    PyObject *fn = PyCFunction_New(&cleanup_def, nullptr);
    PyObject *atexit = fn ? PyImport_ImportModule("atexit") : nullptr;
    PyObject *r = atexit ? PyObject_CallMethod(atexit, "register", "O", fn) : nullptr;
    Py_XDECREF(atexit);
    Py_XDECREF(fn);
    if (r == nullptr) {
        return -1;
    }
    Py_DECREF(r);
#else
    cached_token = exitguard::ref::make(token);
    cached_namespace = exitguard::ref::make(ns);
    Py_DECREF(token);
    Py_DECREF(ns);
    if (!cached_token || !cached_namespace) {
        return -1;
    }
#endif
    return 0;
}

PyMethodDef methods[] = {
    RW_COMMON_METHODS
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)exec_module},
    RW_SLOT_GIL
    {0, nullptr},
};

PyModuleDef def = {
    PyModuleDef_HEAD_INIT, RW_MODNAME, nullptr, 0, methods, slots,
    nullptr, nullptr, nullptr,
};

}  // namespace

PyMODINIT_FUNC RW_INITFUNC(void)
{
    return PyModuleDef_Init(&def);
}
