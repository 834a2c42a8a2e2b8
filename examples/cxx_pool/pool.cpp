// pool.cpp -- a C++ thread pool on exitguard.hpp: the second example client.
//
// cxxpool.Pool(n) runs Python callables on n native threads.  Each task is
// held as an exitguard::ref (released from whatever thread drops it); each
// worker attaches with exitguard::gil only around the call and gives up the
// task when the attach is refused (the interpreter is stopping); an
// exitguard::stopper drops the queued tasks in phase 1, and exitguard joins
// the workers (exitguard::thread) right after.  No exception can reach C.
//
// Which thread runs what: Pool methods -- attached (called from Python);
// worker loop -- the pool's threads, attached only inside exitguard::gil;
// the stopper -- phase 1, attached; the stop request -- phase 1, no GIL.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <exitguard.hpp>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct PoolState {
    std::mutex lock;                       // protects queue and stopping
    std::condition_variable wake;
    std::deque<exitguard::ref> queue;
    bool stopping = false;
    std::atomic<long> ran{0}, refused{0}, dropped_at_stop{0};

    // Phase 1 stop request, no GIL: wake everybody.
    void request_stop()
    {
        {
            std::lock_guard<std::mutex> g(lock);
            stopping = true;
        }
        wake.notify_all();
    }

    void work()
    {
        for (;;) {
            exitguard::ref task;
            {
                std::unique_lock<std::mutex> g(lock);
                wake.wait(g, [&] { return stopping || !queue.empty(); });
                if (queue.empty()) {
                    return;                    // stopping, nothing left
                }
                task = std::move(queue.front());
                queue.pop_front();
            }
            exitguard::gil gil;
            if (!gil) {
                refused++;                     // shutting down: just drop it
                continue;                      // (~ref queues the decref)
            }
            PyObject *fn = task.get();
            PyObject *r = fn ? PyObject_CallObject(fn, nullptr) : nullptr;
            if (r == nullptr && PyErr_Occurred()) {
                PyErr_WriteUnraisable(fn);
            }
            Py_XDECREF(r);
            ran++;
            task.reset();                      // attached: decref now
        }
    }
};

struct PoolObject {
    PyObject_HEAD
    PoolState *state;
    std::vector<exitguard::thread> *threads;
    exitguard::stopper *stopper;
};

PyObject *
pool_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static const char *kwlist[] = {"nthreads", nullptr};
    int n = 2;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|i", const_cast<char **>(kwlist), &n)) {
        return nullptr;
    }
    if (n < 1 || n > 64) {
        PyErr_SetString(PyExc_ValueError, "nthreads must be 1..64");
        return nullptr;
    }
    auto *self = reinterpret_cast<PoolObject *>(type->tp_alloc(type, 0));
    if (self == nullptr) {
        return nullptr;
    }
    self->state = new (std::nothrow) PoolState();
    self->threads = new (std::nothrow) std::vector<exitguard::thread>();
    if (self->state == nullptr || self->threads == nullptr) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    PoolState *st = self->state;
    // Phase 1, attached, before exitguard joins the threads: drop what is
    // queued (attached: the decrefs happen now) and wake the workers.
    self->stopper = new (std::nothrow) exitguard::stopper([st] {
        std::deque<exitguard::ref> drop;
        {
            std::lock_guard<std::mutex> g(st->lock);
            drop.swap(st->queue);
            st->stopping = true;
        }
        st->dropped_at_stop += static_cast<long>(drop.size());
        st->wake.notify_all();
    });
    if (self->stopper == nullptr || !*self->stopper) {
        Py_DECREF(self);
        return PyErr_Occurred() ? nullptr : PyErr_NoMemory();
    }
    for (int i = 0; i < n; i++) {
        std::string name = "cxxpool-" + std::to_string(i);
        auto t = exitguard::thread::start(name.c_str(), [st] { st->work(); },
                                          [st] { st->request_stop(); });
        if (!t) {
            Py_DECREF(self);
            PyErr_Format(PyExc_RuntimeError, "exitguard::thread::start: %s",
                         eg_strerror(t.error()));
            return nullptr;
        }
        self->threads->push_back(std::move(t));
    }
    return reinterpret_cast<PyObject *>(self);
}

PyObject *
pool_submit(PyObject *op, PyObject *fn)
{
    auto *self = reinterpret_cast<PoolObject *>(op);
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "submit() needs a callable");
        return nullptr;
    }
    exitguard::ref task = exitguard::ref::make(fn);
    if (!task) {
        return nullptr;                        // the Python error is set
    }
    {
        std::lock_guard<std::mutex> g(self->state->lock);
        if (self->state->stopping) {
            PyErr_SetString(PyExc_RuntimeError, "the pool is stopping");
            return nullptr;
        }
        self->state->queue.push_back(std::move(task));
    }
    self->state->wake.notify_one();
    Py_RETURN_NONE;
}

PyObject *
pool_stats(PyObject *op, PyObject *)
{
    auto *st = reinterpret_cast<PoolObject *>(op)->state;
    return Py_BuildValue("{s:l,s:l,s:l}", "ran", st->ran.load(), "refused",
                         st->refused.load(), "dropped_at_stop",
                         st->dropped_at_stop.load());
}

void
pool_dealloc(PyObject *op)
{
    auto *self = reinterpret_cast<PoolObject *>(op);
    PyTypeObject *tp = Py_TYPE(op);
    delete self->stopper;                      // unregisters (waits if running)
    if (self->state != nullptr) {
        self->state->request_stop();
    }
    delete self->threads;                      // joins, GIL released
    delete self->state;
    tp->tp_free(op);
    Py_DECREF(tp);
}

PyMethodDef pool_methods[] = {
    {"submit", pool_submit, METH_O, "Run a callable on a pool thread."},
    {"stats", pool_stats, METH_NOARGS, "Counters."},
    {nullptr, nullptr, 0, nullptr},
};

PyType_Slot pool_slots[] = {
    {Py_tp_new, reinterpret_cast<void *>(pool_new)},
    {Py_tp_dealloc, reinterpret_cast<void *>(pool_dealloc)},
    {Py_tp_methods, pool_methods},
    {0, nullptr},
};

PyType_Spec pool_spec = {"cxxpool.Pool", sizeof(PoolObject), 0, Py_TPFLAGS_DEFAULT,
                         pool_slots};

int
cxxpool_exec(PyObject *m)
{
    if (eg_import() < 0) {
        return -1;
    }
    PyObject *type = PyType_FromSpec(&pool_spec);
    if (type == nullptr || PyModule_AddObject(m, "Pool", type) < 0) {
        Py_XDECREF(type);
        return -1;
    }
    return 0;
}

PyModuleDef_Slot cxxpool_slots[] = {
    {Py_mod_exec, reinterpret_cast<void *>(cxxpool_exec)},
#if PY_VERSION_HEX >= 0x030D0000
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},         // std::mutex and atomics, never the GIL
#endif
    {0, nullptr},
};

PyModuleDef cxxpool_module = {
    PyModuleDef_HEAD_INIT, "cxxpool", "A C++ thread pool on exitguard.hpp.", 0,
    nullptr, cxxpool_slots, nullptr, nullptr, nullptr,
};

}  // namespace

PyMODINIT_FUNC
PyInit_cxxpool(void)
{
    return PyModuleDef_Init(&cxxpool_module);
}
