// pytorch_38228_release -- pytorch/pytorch#38228 "pybind11::gil_scoped_release: crash
// on exit with daemon threads" (and #38230, the same crash in autograd's device
// threads on 3.9).
//
// The report: C++ threads hold the GIL to run Python work, and release it with a
// scoped guard (pybind11::gil_scoped_release) around native computation.  The
// guard's destructor re-acquires the GIL.  If that happens once finalization has
// begun, CPython kills the thread with pthread_exit (3.9-3.13.7); glibc implements
// that as a forced unwind, and a forced unwind leaving a destructor -- implicitly
// noexcept -- calls std::terminate: "terminate called without an active
// exception", SIGABRT, after the program's work is done.
//
// Here an Engine runs Python hooks on its own std::threads ("device threads"),
// each task: attach, run the hook, release the GIL around the computation with a
// scoped guard, re-acquire in its destructor, finish.
//
// The port (docs/porting.md section 2): the threads are exitguard::thread (phase 1
// asks them to stop and joins them, GIL released, before finalization); each task
// attaches with exitguard::gil only around the Python call and gives the task up
// when the attach is refused; the computation runs unattached; the hook and the
// task's payload are exitguard::ref, released from any thread.
#include "rw.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#if !defined(RW_NAIVE)
#  include <exitguard.hpp>
#endif

namespace {

// Native work without the GIL: about a millisecond of arithmetic.
unsigned long compute(unsigned long seed)
{
    auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(1000);
    unsigned long x = seed;
    while (std::chrono::steady_clock::now() < until) {
        for (int i = 0; i < 1000; i++) {
            x = x * 6364136223846793005UL + 1442695040888963407UL;
        }
    }
    return x;
}

#ifdef RW_NAIVE
// pybind11's gil_scoped_acquire / gil_scoped_release, reduced to what matters.
struct gil_scoped_acquire {
    PyGILState_STATE g;
    gil_scoped_acquire() : g(PyGILState_Ensure()) {}
    ~gil_scoped_acquire() { PyGILState_Release(g); }
};
struct gil_scoped_release {
    PyThreadState *ts;
    gil_scoped_release() : ts(PyEval_SaveThread()) {}
    ~gil_scoped_release() { PyEval_RestoreThread(ts); }   // noexcept: the crash site
};
struct task {
    PyObject *hook;       // strong references, dropped with the GIL held
    PyObject *payload;
};
#else
struct task {
    exitguard::ref hook;
    exitguard::ref payload;
};
#endif

struct Engine {
    std::mutex lock;                  // guards queue and stopping
    std::condition_variable wake;
    std::deque<task> queue;
    bool stopping = false;
#ifdef RW_NAIVE
    std::vector<std::thread> threads;
#else
    std::vector<exitguard::thread> threads;
#endif

    bool pop(task &t)
    {
        std::unique_lock<std::mutex> g(lock);
        wake.wait(g, [&] { return stopping || !queue.empty(); });
        if (stopping) {
            return false;              // what is still queued is dropped
        }
        t = std::move(queue.front());
        queue.pop_front();
        return true;
    }

#ifdef RW_NAIVE
    void device_thread()
    {
        rw_bump(RW_STARTED);
        task t;
        while (pop(t)) {
            gil_scoped_acquire gil;
            PyObject *r = PyObject_CallNoArgs(t.hook);
            Py_XDECREF(r);
            rw_bump(RW_CALLS);
            {
                gil_scoped_release nogil;
                (void)compute(reinterpret_cast<unsigned long>(t.payload));
            }
            Py_DECREF(t.payload);
            Py_DECREF(t.hook);
        }
        rw_bump(RW_ENDED);
    }
#else
    void device_thread()
    {
        rw_bump(RW_STARTED);
        task t;
        while (pop(t)) {
            {
                exitguard::gil gil;
                if (!gil) {
                    rw_bump(RW_REFUSED);       // stopping: give the task up
                    continue;                  // (~ref queues the decrefs)
                }
                PyObject *r = PyObject_CallNoArgs(t.hook.get());
                Py_XDECREF(r);
                rw_bump(RW_CALLS);
            }
            (void)compute(reinterpret_cast<unsigned long>(&t));
            t.hook.reset();
            t.payload.reset();
        }
        rw_bump(RW_ENDED);
    }
#endif

    void request_stop()
    {
        {
            std::lock_guard<std::mutex> g(lock);
            stopping = true;
        }
        wake.notify_all();
    }
};

// Created at the first use, lives for the process (never destroyed, like the
// autograd engine); C++ makes the initialisation thread-safe.
Engine &the_engine()
{
    static Engine *e = new Engine;
    return *e;
}

PyObject *py_start(PyObject *, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n < 0 && PyErr_Occurred()) {
        return nullptr;
    }
    Engine *engine = &the_engine();
    for (long i = 0; i < n; i++) {
#ifdef RW_NAIVE
        std::thread t([engine] { engine->device_thread(); });
        t.detach();                    // the engine's threads are never joined
#else
        exitguard::thread t = exitguard::thread::start(
            "device", [engine] { engine->device_thread(); }, [engine] { engine->request_stop(); });
        if (!t) {
            return PyErr_Format(PyExc_RuntimeError, "cannot start a device thread: %s",
                                eg_strerror(t.error()));
        }
        std::lock_guard<std::mutex> g(engine->lock);
        engine->threads.push_back(std::move(t));
#endif
    }
    Py_RETURN_NONE;
}

PyObject *py_submit(PyObject *, PyObject *hook)
{
    Engine *engine = &the_engine();
    PyObject *payload = rw_token_new();
    if (payload == nullptr) {
        return nullptr;
    }
    task t;
#ifdef RW_NAIVE
    t.hook = Py_NewRef(hook);
    t.payload = payload;
#else
    t.hook = exitguard::ref::make(hook);
    t.payload = exitguard::ref::make(payload);
    Py_DECREF(payload);
    if (!t.hook || !t.payload) {
        return nullptr;
    }
#endif
    {
        std::lock_guard<std::mutex> g(engine->lock);
        engine->queue.push_back(std::move(t));
    }
    engine->wake.notify_one();
    Py_RETURN_NONE;
}

int exec_module(PyObject *m)
{
    return rw_exec(m);
}

PyMethodDef methods[] = {
    RW_COMMON_METHODS
    {"start", py_start, METH_O, "Start n device threads."},
    {"submit", py_submit, METH_O, "Queue a task that calls hook() then computes."},
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
