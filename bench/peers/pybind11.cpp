// pybind11.cpp -- the pybind11 3.1 peer of exitguard's benchmarks
// (module _egb_pybind11, built by bench/build.py against pybind11 from PyPI).
//
// What pybind11 users write in a native thread, measured from a native
// pthread (bench/peers/harness.h), beside exitguard's pybind11 adapter
// (include/exitguard/pybind11.h) doing the same job:
//
//   attach/kept      py::gil_scoped_acquire around each callback, on a thread
//                    that keeps its thread state: an outer gil_scoped_acquire
//                    plus gil_scoped_release for the thread's life, so the
//                    inner acquire finds pybind11's cached state and only
//                    attaches (the idiom pybind11's docs give for threads that
//                    call into Python often)
//   attach/default   the same acquire on a thread with nothing kept: each
//                    creates a thread state and its destructor deletes it
//   attach/adapter   exitguard::py::gil_scoped_acquire (eg_gil_ensure)
//   drop/kept        dropping a held py::object: acquire, then the object's
//                    destructor decrefs; thread state kept as above
//   drop/default     the same with a new thread state each time
//   drop/adapter     dropping an exitguard::py::object with no GIL at all
//                    (eg_ref_release queues the decref)
//
// run(variant, n) returns nanoseconds per operation.  Our code is built
// with -Wall -Wextra -Werror; pybind11 is header-only.
#include <pybind11/pybind11.h>

#include <exitguard/pybind11.h>

#include "harness.h"

#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

// ---- Timed loops (callgrind toggles on egb_loop_*) ----------------------

extern "C" EGB_NOINLINE void
egb_loop_pb11_attach(egb_job *j)
{
    for (long i = 0; i < j->n; i++) {
        py::gil_scoped_acquire gil;
        egb_touch(j->obj);
    }
}

extern "C" EGB_NOINLINE void
egb_loop_pb11_adapter_attach(egb_job *j)
{
    for (long i = 0; i < j->n; i++) {
        exitguard::py::gil_scoped_acquire gil;
        if (!gil) {
            j->failed++;
            continue;
        }
        egb_touch(j->obj);
    }
}

extern "C" EGB_NOINLINE void
egb_loop_pb11_drop(egb_job *j)
{
    auto &items = *static_cast<std::vector<py::object> *>(j->items);
    for (long i = 0; i < j->n; i++) {
        py::gil_scoped_acquire gil;
        items[(size_t)i] = py::object();     // the old value's decref
    }
}

extern "C" EGB_NOINLINE void
egb_loop_pb11_adapter_drop(egb_job *j)
{
    auto &items = *static_cast<std::vector<exitguard::py::object> *>(j->items);
    for (long i = 0; i < j->n; i++) {
        items[(size_t)i].reset();            // no GIL: queued
    }
}

// ---- Bodies (on the native thread) ---------------------------------------

// Keeps this thread's pybind11 thread state for the whole body: the outer
// acquire creates it, the release detaches it, and the inner acquires of
// the loop reuse it.  The destructors undo both once the loop is timed.
void
kept(egb_job *j, void (*loop)(egb_job *))
{
    py::gil_scoped_acquire outer;
    py::gil_scoped_release unlocked;
    egb_time(j, loop);
}

void body_attach_kept(egb_job *j) { kept(j, egb_loop_pb11_attach); }
void body_attach_default(egb_job *j) { egb_time(j, egb_loop_pb11_attach); }
void body_drop_kept(egb_job *j) { kept(j, egb_loop_pb11_drop); }
void body_drop_default(egb_job *j) { egb_time(j, egb_loop_pb11_drop); }

// The adapter's first attach creates the thread state exitguard caches;
// it is outside the timed loop, as pybind11's kept state is.
void
body_attach_adapter(egb_job *j)
{
    {
        exitguard::py::gil_scoped_acquire first;
    }
    egb_time(j, egb_loop_pb11_adapter_attach);
}

void body_drop_adapter(egb_job *j) { egb_time(j, egb_loop_pb11_adapter_drop); }

enum class items_kind { none, py_objects, eg_objects };

struct variant {
    const char *name;
    void (*body)(egb_job *);
    items_kind items;
};

const variant variants[] = {
    {"attach/kept", body_attach_kept, items_kind::none},
    {"attach/default", body_attach_default, items_kind::none},
    {"attach/adapter", body_attach_adapter, items_kind::none},
    {"drop/kept", body_drop_kept, items_kind::py_objects},
    {"drop/default", body_drop_default, items_kind::py_objects},
    {"drop/adapter", body_drop_adapter, items_kind::eg_objects},
};

// Attached.  One measurement of `name` over n operations: (CPU ns, wall ns)
// per operation.
std::pair<double, double>
run(const std::string &name, long n)
{
    const variant *v = nullptr;
    for (const variant &c : variants) {
        if (name == c.name) {
            v = &c;
        }
    }
    if (v == nullptr || n < 1) {
        throw py::value_error("unknown variant or n < 1: " + name);
    }
    py::list target;                         // the object every operation uses
    egb_job j{};
    j.body = v->body;
    j.obj = target.ptr();
    j.n = n;
    std::vector<py::object> py_items;
    std::vector<exitguard::py::object> eg_items;
    if (v->items == items_kind::py_objects) {
        py_items.assign((size_t)n, target);
        j.items = &py_items;
    }
    else if (v->items == items_kind::eg_objects) {
        eg_items.reserve((size_t)n);
        for (long i = 0; i < n; i++) {
            eg_items.emplace_back(target);    // eg_ref_new, attached
        }
        j.items = &eg_items;
    }
    Py_ssize_t before = Py_REFCNT(target.ptr());
    if (egb_run_native(&j) < 0) {
        throw py::error_already_set();
    }
    while (eg_flush() > 0) {                 // the adapter's queued decrefs
    }
    Py_ssize_t expected = before - (v->items == items_kind::none ? 0 : n);
    if (EGB_EXACT_REFCNT && Py_REFCNT(target.ptr()) != expected) {
        throw std::runtime_error("reference count off after " + name);
    }
    return {j.ns, j.wall_ns};
}

}  // namespace

PYBIND11_MODULE(_egb_pybind11, m, py::mod_gil_not_used())
{
    exitguard::py::import();
    m.doc() = "pybind11 idioms beside exitguard's pybind11 adapter (bench/run.py)";
    py::list names;
    for (const variant &v : variants) {
        names.append(v.name);
    }
    m.attr("VARIANTS") = names;
    m.attr("VERSION") = py::str("{}.{}.{}").format(
        PYBIND11_VERSION_MAJOR, PYBIND11_VERSION_MINOR, PYBIND11_VERSION_PATCH);
    m.def("run", &run, py::arg("variant"), py::arg("n"));
}
