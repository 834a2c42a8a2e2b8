// cpython_132948_hammer -- python/cpython#132948 (from PyO3's 3.14 port), with the
// reproducer shape of rust-lang/rust#135929.
//
// The report: an extension spawns a thread when it is imported, and that thread
// attaches to the interpreter in a loop forever (PyO3's Python::with_gil with an
// empty body).  When the interpreter finalizes, the next attach either kills the
// thread with pthread_exit (3.9-3.13.7) -- fatal here, because the thread's frame
// must not unwind: PyO3's frames are extern "C", ours is a noexcept function, and
// a forced unwind reaching either ends in std::terminate -- or, on 3.14.0a7,
// crashed inside PyGILState_Ensure; since 3.13.8 / 3.14 it parks the thread.
//
// The port (docs/porting.md section 1): the loop attaches through eg_gil_ensure,
// which says -ESHUTDOWN once exitguard's phase 2 closes the gate, and the thread
// returns.  Nothing else changes: the thread is still raw, unregistered and
// started at import.
#include "rw.h"

#include <thread>

namespace {

// The thread body: never unwinds (noexcept), like an extern "C" Rust frame.
void hammer() noexcept
{
    rw_bump(RW_STARTED);
    for (;;) {
#ifdef RW_NAIVE
        PyGILState_STATE g = PyGILState_Ensure();
        rw_bump(RW_CALLS);
        PyGILState_Release(g);
#else
        eg_gil st;
        if (eg_gil_ensure(nullptr, &st) != 0) {
            rw_bump(RW_REFUSED);
            break;                      // shutting down: never touch Python again
        }
        rw_bump(RW_CALLS);
        eg_gil_release(&st);
#endif
    }
    rw_bump(RW_ENDED);
}

int exec_module(PyObject *m)
{
    if (rw_exec(m) < 0) {
        return -1;
    }
    std::thread(hammer).detach();       // spawned at import, never joined
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
