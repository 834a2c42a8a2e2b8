// nanobind.cpp -- the nanobind 3 peer of exitguard's benchmarks (module
// _egb_nanobind, built by bench/build.py against nanobind from PyPI,
// libnanobind compiled in from its nb_combined.cpp).
//
// What nanobind users write in a native thread, measured from a native
// pthread (bench/peers/harness.h), beside exitguard's nanobind adapter
// (include/exitguard/nanobind.h) doing the same job:
//
//   attach/kept      nb::gil_scoped_acquire around each callback, on a thread
//                    that keeps its thread state (an outer gil_scoped_acquire
//                    plus gil_scoped_release for the thread's life)
//   attach/default   the same acquire on a thread with nothing kept: a new
//                    thread state each time
//   attach/adapter   exitguard::nb::gil_scoped_acquire (eg_gil_ensure)
//   drop/kept        dropping a held nb::object: acquire, then reset()
//   drop/default     the same with a new thread state each time
//   drop/adapter     dropping an exitguard::nb::object with no GIL at all
//
// Before 3.15 nanobind's acquire is PyGILState_Ensure/Release underneath;
// on 3.15 it is PEP 788's PyThreadState_EnsureFromView/Release on a view of
// the main interpreter (nanobind 3.0), and a refused attach (is_valid()
// false) is counted as a failure here.  run(variant, n) returns nanoseconds
// per operation.  Our code is built with -Wall -Wextra -Werror.
#include <nanobind/nanobind.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>

#include <exitguard/nanobind.h>

#include "harness.h"

#include <stdexcept>
#include <string>
#include <vector>

namespace nb = nanobind;

namespace {

// ---- Timed loops (callgrind toggles on egb_loop_*) ----------------------

extern "C" EGB_NOINLINE void
egb_loop_nb_attach(egb_job *j)
{
    for (long i = 0; i < j->n; i++) {
        nb::gil_scoped_acquire gil;
        if (!gil.is_valid()) {
            j->failed++;
            continue;
        }
        egb_touch(j->obj);
    }
}

extern "C" EGB_NOINLINE void
egb_loop_nb_adapter_attach(egb_job *j)
{
    for (long i = 0; i < j->n; i++) {
        exitguard::nb::gil_scoped_acquire gil;
        if (!gil) {
            j->failed++;
            continue;
        }
        egb_touch(j->obj);
    }
}

extern "C" EGB_NOINLINE void
egb_loop_nb_drop(egb_job *j)
{
    auto &items = *static_cast<std::vector<nb::object> *>(j->items);
    for (long i = 0; i < j->n; i++) {
        nb::gil_scoped_acquire gil;
        if (!gil.is_valid()) {
            j->failed++;
            continue;
        }
        items[(size_t)i].reset();            // the decref
    }
}

extern "C" EGB_NOINLINE void
egb_loop_nb_adapter_drop(egb_job *j)
{
    auto &items = *static_cast<std::vector<exitguard::nb::object> *>(j->items);
    for (long i = 0; i < j->n; i++) {
        items[(size_t)i].reset();            // no GIL: queued
    }
}

// ---- Bodies (on the native thread) ---------------------------------------

// Keeps this thread's state for the whole body: the outer acquire creates
// it, the release detaches it, the loop's acquires reuse it.
void
kept(egb_job *j, void (*loop)(egb_job *))
{
    nb::gil_scoped_acquire outer;
    if (!outer.is_valid()) {
        j->failed = j->n;
        return;
    }
    nb::gil_scoped_release unlocked;
    egb_time(j, loop);
}

void body_attach_kept(egb_job *j) { kept(j, egb_loop_nb_attach); }
void body_attach_default(egb_job *j) { egb_time(j, egb_loop_nb_attach); }
void body_drop_kept(egb_job *j) { kept(j, egb_loop_nb_drop); }
void body_drop_default(egb_job *j) { egb_time(j, egb_loop_nb_drop); }

// The adapter's first attach creates the thread state exitguard caches,
// outside the timed loop.
void
body_attach_adapter(egb_job *j)
{
    {
        exitguard::nb::gil_scoped_acquire first;
    }
    egb_time(j, egb_loop_nb_adapter_attach);
}

void body_drop_adapter(egb_job *j) { egb_time(j, egb_loop_nb_adapter_drop); }

enum class items_kind { none, nb_objects, eg_objects };

struct variant {
    const char *name;
    void (*body)(egb_job *);
    items_kind items;
};

const variant variants[] = {
    {"attach/kept", body_attach_kept, items_kind::none},
    {"attach/default", body_attach_default, items_kind::none},
    {"attach/adapter", body_attach_adapter, items_kind::none},
    {"drop/kept", body_drop_kept, items_kind::nb_objects},
    {"drop/default", body_drop_default, items_kind::nb_objects},
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
        throw nb::value_error(("unknown variant or n < 1: " + name).c_str());
    }
    nb::list target;                         // the object every operation uses
    egb_job j{};
    j.body = v->body;
    j.obj = target.ptr();
    j.n = n;
    std::vector<nb::object> nb_items;
    std::vector<exitguard::nb::object> eg_items;
    if (v->items == items_kind::nb_objects) {
        nb_items.assign((size_t)n, nb::borrow(target));
        j.items = &nb_items;
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
        throw nb::python_error();
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

NB_MODULE(_egb_nanobind, m)
{
    exitguard::nb::import();
    m.doc() = "nanobind idioms beside exitguard's nanobind adapter (bench/run.py)";
    nb::list names;
    for (const variant &v : variants) {
        names.append(v.name);
    }
    m.attr("VARIANTS") = names;
    m.attr("VERSION") = nb::str("{}.{}.{}").format(
        NB_VERSION_MAJOR, NB_VERSION_MINOR, NB_VERSION_PATCH);
    m.def("run", &run, nb::arg("variant"), nb::arg("n"));
}
