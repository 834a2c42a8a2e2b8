// exitguard/pybind11.h -- exitguard for pybind11 extensions (C++17).
//
// What pybind11 code writes today, and what to write instead:
//
//   py::object held by a C++ thread      exitguard::py::object: dropped from
//                                        any thread, with or without the GIL,
//                                        even after the interpreter is gone
//   py::gil_scoped_acquire in a thread   exitguard::py::gil_scoped_acquire:
//                                        a refused attach during shutdown is
//                                        a value (`if (!gil)`), never a
//                                        pthread_exit, std::terminate or a
//                                        thread parked forever
//   a pool joined by a static's          exitguard::py::pool_stopper: the
//   destructor, after Py_Finalize        pool's stop-and-join runs in phase 1,
//                                        with the GIL released, before the
//                                        interpreter joins its own threads
//
// Everything here is the C++17 layer of exitguard.hpp plus pybind11 types:
// errors that pybind11 code expects as exceptions (a failed import, a
// reference refused in phase 2) are thrown as pybind11::error_already_set
// where the call is attached; everything a thread may do without the GIL is
// noexcept.  The contracts are those of exitguard.h; docs/api.md has them.
//
//     #include <pybind11/pybind11.h>
//     #include <exitguard/pybind11.h>     // include dir: exitguard.get_include()
//
//     PYBIND11_MODULE(mymod, m) {
//         exitguard::py::import();        // once per module init: eg_import()
//         ...
//     }
//
// The namespace is exitguard::py, after the `py` alias pybind11 code uses
// for pybind11 itself; a `using namespace exitguard;` next to that alias
// would make `py::` ambiguous, so name exitguard's explicitly.
#ifndef EXITGUARD_PYBIND11_H
#define EXITGUARD_PYBIND11_H

#include <pybind11/pybind11.h>

#include "../exitguard.hpp"

#include <new>
#include <utility>

namespace exitguard {
namespace py {

// Import exitguard's C API (eg_import) for this translation unit.
// Attached: call it in PYBIND11_MODULE.  Throws pybind11::error_already_set
// with the ImportError (an ABI mismatch names both versions).
inline void import()
{
    if (eg_import() < 0) {
        throw ::pybind11::error_already_set();
    }
}

// A strong reference that any thread may drop: the replacement for a
// py::object that native code keeps (a task queue, a callback, a static).
// Move-only: copying a Python reference needs the GIL, so make a copy
// explicitly with object(other.get()) while attached.
class object {
public:
    object() noexcept = default;

    // Attached.  Takes a new reference to h and registers it with exitguard;
    // a null handle gives an empty object.  Throws error_already_set when
    // exitguard refuses (MemoryError, or RuntimeError once phase 2 has begun).
    object(::pybind11::handle h) : r_(h ? ref::make(h.ptr()) : ref())
    {
        if (h && !r_) {
            throw ::pybind11::error_already_set();
        }
    }

    // Any thread: adopt an exitguard::ref (for instance from ref::make).
    explicit object(ref &&r) noexcept : r_(std::move(r)) {}

    object(object &&) noexcept = default;
    object &operator=(object &&) noexcept = default;
    object(const object &) = delete;
    object &operator=(const object &) = delete;
    ~object() = default;    // exitguard::ref: releases from any thread

    // Attached: the object as a new py::object -- a null one when empty, or
    // once exitguard released it at exit (phase 2).
    ::pybind11::object get() const
    {
        return ::pybind11::reinterpret_borrow<::pybind11::object>(r_.get());
    }

    // Any thread, any time: drop the reference now (queued when not
    // attached; memory only after exitguard stopped).  Idempotent.
    void reset() noexcept { r_.reset(); }

    // True while it holds a reference (not reset, not moved from).
    explicit operator bool() const noexcept { return static_cast<bool>(r_); }

    // The underlying eg_ref, still owned by this object.
    const ref &handle() const noexcept { return r_; }

private:
    ref r_;
};

// A scoped attach from any thread: eg_gil_ensure() in the constructor,
// eg_gil_release() in the destructor.  Check it before touching Python:
// false means the interpreter is stopping or gone (error() == -ESHUTDOWN).
// Nested pybind11 code (py::gil_scoped_acquire inside, py::gil_scoped_release
// around a blocking call) works as usual within the scope.
class gil_scoped_acquire : public gil {
public:
    explicit gil_scoped_acquire(eg_interp *interp = nullptr) noexcept
        : gil(interp)
    {
    }
};

// Registers a C++ thread pool with exitguard's stopper: stop() -- ask the
// workers to stop, then join them -- runs once, in phase 1, with the GIL
// released (workers may still need it to finish a task), before the
// interpreter joins its own threads.  Construct attached, after the
// workers exist; declare it as the pool's last member, so that it is
// unregistered before the rest of the pool is destroyed.  Throws
// error_already_set when exitguard refuses (RuntimeError once phase 1 has
// run).  stop() must be idempotent: your destructor still calls it.
class pool_stopper {
public:
    template <class Stop>
    explicit pool_stopper(Stop stop) : s_(without_gil, std::move(stop))
    {
        if (!s_) {
            if (PyErr_Occurred()) {
                throw ::pybind11::error_already_set();
            }
            throw std::bad_alloc();
        }
    }

    // The registered eg_stopper, for ordering (eg_stopper_after).
    eg_stopper *handle() const noexcept { return s_.handle(); }

private:
    stopper s_;
};

}  // namespace py
}  // namespace exitguard

// Lets bound functions take and return exitguard::py::object directly:
//     m.def("submit", [](exitguard::py::object fn) { ... });
namespace pybind11 {
namespace detail {
template <>
struct type_caster<exitguard::py::object> {
    PYBIND11_TYPE_CASTER(exitguard::py::object, const_name("object"));

    bool load(handle src, bool)
    {
        if (!src) {
            return false;
        }
        value = exitguard::py::object(src);    // throws: the error propagates
        return true;
    }

    static handle cast(const exitguard::py::object &src, return_value_policy,
                       handle)
    {
        ::pybind11::object o = src.get();
        return o ? o.release() : none().release();
    }
};
}  // namespace detail
}  // namespace pybind11

#endif  // EXITGUARD_PYBIND11_H
