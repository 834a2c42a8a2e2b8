// pybind11_1598_static -- pybind/pybind11#1598 "static py::object in C++ function may
// cause Segfault on exit" (the same shape without pybind11: python/cpython#126508, a
// static std::unique_ptr<PyObject> with a Py_XDECREF deleter; pybind11#5270 on 3.12).
//
// The report: a bound function keeps the last object it was given in a
// function-local `static py::object`.  The static's destructor runs in exit(),
// after Py_Finalize, and decrefs an object of an interpreter that no longer
// exists -- for a list, its deallocation runs: a segfault at exit.
//
// Here `object` is py::object reduced to its ownership rules (copy increfs,
// destruction decrefs), and last(obj) is the report's function.
//
// The port (docs/porting.md section 4): the static is an exitguard::ref.  Phase 2
// releases what it still holds while the interpreter is whole; its destructor in
// exit() then frees memory only.
#include "rw.h"

#include <utility>

#if !defined(RW_NAIVE)
#  include <exitguard.hpp>
#endif

namespace {

#ifdef RW_NAIVE
class object {                          // pybind11::object's ownership, nothing more
public:
    object() = default;
    explicit object(PyObject *borrowed) : p_(Py_NewRef(borrowed)) {}
    object(const object &o) : p_(o.p_) { Py_XINCREF(p_); }
    object &operator=(object o)
    {
        std::swap(p_, o.p_);
        return *this;
    }
    ~object() { Py_XDECREF(p_); }       // at exit: after Py_Finalize
    PyObject *release() { return std::exchange(p_, nullptr); }

private:
    PyObject *p_ = nullptr;
};

PyObject *py_last(PyObject *, PyObject *obj)
{
    static object stored(obj);          // the report's line
    object ret = stored;
    stored = object(obj);
    return ret.release();
}
#else
PyObject *py_last(PyObject *, PyObject *obj)
{
    static exitguard::ref stored = exitguard::ref::make(obj);
    PyObject *ret = stored.get();
    if (ret == nullptr) {
        return PyErr_Occurred() ? nullptr : Py_NewRef(Py_None);
    }
    Py_INCREF(ret);
    exitguard::ref next = exitguard::ref::make(obj);
    if (!next) {
        Py_DECREF(ret);
        return nullptr;
    }
    stored = std::move(next);           // the old one: released (attached: now)
    return ret;
}
#endif

int exec_module(PyObject *m)
{
    return rw_exec(m);
}

PyMethodDef methods[] = {
    RW_COMMON_METHODS
    {"last", py_last, METH_O, "Return the object passed to the previous call."},
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
