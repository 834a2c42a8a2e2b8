// exitguard/nanobind.h -- exitguard for nanobind extensions (C++17).
//
// What nanobind code writes today, and what to write instead:
//
//   nb::object held by a C++ thread      exitguard::nb::object: dropped from
//                                        any thread, with or without the GIL,
//                                        even after the interpreter is gone
//   nb::gil_scoped_acquire in a thread   exitguard::nb::gil_scoped_acquire:
//                                        refuses (`if (!gil)`) once shutdown
//                                        has begun on every CPython >= 3.9;
//                                        nanobind's own can refuse only on
//                                        3.15+ (PEP 788) and parks the thread
//                                        forever or ends it before that
//   a pool joined by a static's          exitguard::nb::pool_stopper: the
//   destructor, after Py_Finalize        pool's stop-and-join runs in phase 1,
//                                        with the GIL released, before the
//                                        interpreter joins its own threads
//
// Everything here is the C++17 layer of exitguard.hpp plus nanobind types:
// errors that nanobind code expects as exceptions (a failed import, a
// reference refused in phase 2) are thrown as nanobind::python_error where
// the call is attached; everything a thread may do without the GIL is
// noexcept.  The contracts are those of exitguard.h; docs/api.md has them.
//
//     #include <nanobind/nanobind.h>
//     #include <exitguard/nanobind.h>     // CMake: exitguard::exitguard
//
//     NB_MODULE(mymod, m) {
//         exitguard::nb::import();        // once per module init: eg_import()
//         ...
//     }
//
// The namespace is exitguard::nb, after the `nb` alias nanobind code uses
// for nanobind itself; a `using namespace exitguard;` next to that alias
// would make `nb::` ambiguous, so name exitguard's explicitly.
#ifndef EXITGUARD_NANOBIND_H
#define EXITGUARD_NANOBIND_H

#include <nanobind/nanobind.h>

#include "../exitguard.hpp"

#include <new>
#include <utility>

namespace exitguard {
namespace nb {

// Import exitguard's C API (eg_import) for this translation unit.
// Attached: call it in NB_MODULE.  Throws nanobind::python_error with the
// ImportError (an ABI mismatch names both versions).
inline void import()
{
    if (eg_import() < 0) {
        throw ::nanobind::python_error();
    }
}

// A strong reference that any thread may drop: the replacement for an
// nb::object that native code keeps (a task queue, a callback, a static).
// Move-only: copying a Python reference needs the GIL, so make a copy
// explicitly with object(other.get()) while attached.
class object {
public:
    object() noexcept = default;

    // Attached.  Takes a new reference to h and registers it with exitguard;
    // a null handle gives an empty object.  Throws python_error when
    // exitguard refuses (MemoryError, or RuntimeError once phase 2 has begun).
    object(::nanobind::handle h)
        : r_(h.is_valid() ? ref::make(h.ptr()) : ref())
    {
        if (h.is_valid() && !r_) {
            throw ::nanobind::python_error();
        }
    }

    // Any thread: adopt an exitguard::ref (for instance from ref::make).
    explicit object(ref &&r) noexcept : r_(std::move(r)) {}

    object(object &&) noexcept = default;
    object &operator=(object &&) noexcept = default;
    object(const object &) = delete;
    object &operator=(const object &) = delete;
    ~object() = default;    // exitguard::ref: releases from any thread

    // Attached: the object as a new nb::object -- an invalid one when
    // empty, or once exitguard released it at exit (phase 2).
    ::nanobind::object get() const
    {
        return ::nanobind::borrow(r_.get());
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
// Nested nanobind code (nb::gil_scoped_acquire inside, nb::gil_scoped_release
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
// python_error when exitguard refuses (RuntimeError once phase 1 has run).
// stop() must be idempotent: your destructor still calls it.
class pool_stopper {
public:
    template <class Stop>
    explicit pool_stopper(Stop stop) : s_(without_gil, std::move(stop))
    {
        if (!s_) {
            if (PyErr_Occurred()) {
                throw ::nanobind::python_error();
            }
            throw std::bad_alloc();
        }
    }

    // The registered eg_stopper, for ordering (eg_stopper_after).
    eg_stopper *handle() const noexcept { return s_.handle(); }

private:
    stopper s_;
};

}  // namespace nb
}  // namespace exitguard

// Lets bound functions take and return exitguard::nb::object directly:
//     m.def("submit", [](exitguard::nb::object fn) { ... });
namespace nanobind {
namespace detail {
template <>
struct type_caster<exitguard::nb::object> {
    NB_TYPE_CASTER(exitguard::nb::object, const_name("object"))

    // nanobind's casters never raise: a refused registration (phase 2)
    // clears the error and reports "cannot convert", like any bad argument.
    bool from_python(handle src, uint8_t, cleanup_list *) noexcept
    {
        exitguard::ref r = exitguard::ref::make(src.ptr());
        if (!r) {
            PyErr_Clear();
            return false;
        }
        value = exitguard::nb::object(std::move(r));
        return true;
    }

    static handle from_cpp(const exitguard::nb::object &src, rv_policy,
                           cleanup_list *) noexcept
    {
        ::nanobind::object o = src.get();
        return o.is_valid() ? o.release() : none().release();
    }
};
}  // namespace detail
}  // namespace nanobind

#endif  // EXITGUARD_NANOBIND_H
