// spead2_logging -- ska-sa/spead2 tests/shutdown.py test_logging_shutdown ("spam the log
// with lots of messages, then terminate: the logging thread needs to be gracefully
// cleaned up"), and the design it caught: spead2's asynchronous logging thread
// before commit 95421333 ("Redesign logging thread to not use gil_scoped_release
// ... fixes the crash on shutdown in Python 3"; see also 010ddef4, 3e70a90a).
//
// The shape: C++ code logs into a bounded ring (full: drop and count); one consumer
// thread forwards each message to Python's logging.  That thread starts by
// acquiring the GIL, and releases it with a scoped guard while it waits for the
// next message -- so the guard's destructor re-acquires it for every message.
// The test logs 20,000 messages (more than the ring holds, at a level logging
// discards) and lets the interpreter exit while the consumer is still busy.
//
// The port: log_info is eg_log -- no thread of ours, no GIL, never blocks.
// exitguard's forwarder delivers in batches, drains what is queued in phase 2 and
// counts every message it filtered or dropped.
#include "rw.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <string>
#include <thread>

namespace {

#ifdef RW_NAIVE
struct gil_scoped_acquire {
    PyGILState_STATE g;
    gil_scoped_acquire() : g(PyGILState_Ensure()) {}
    ~gil_scoped_acquire() { PyGILState_Release(g); }
};
struct gil_scoped_release {
    PyThreadState *ts;
    gil_scoped_release() : ts(PyEval_SaveThread()) {}
    ~gil_scoped_release() { PyEval_RestoreThread(ts); }
};

constexpr size_t ring_capacity = 1024;   // spead2's default

struct log_ring {
    std::mutex lock;
    std::condition_variable ready;
    std::deque<std::string> q;
} ring;

PyObject *logger_info;                    // logging.getLogger("spead2").info

void consumer()
{
    rw_bump(RW_STARTED);
    gil_scoped_acquire gil;               // start by acquiring the GIL...
    for (;;) {
        std::string msg;
        {
            gil_scoped_release nogil;     // ...release it while blocking
            std::unique_lock<std::mutex> g(ring.lock);
            ring.ready.wait(g, [] { return !ring.q.empty(); });
            msg = std::move(ring.q.front());
            ring.q.pop_front();
        }                                 // re-acquire: the shutdown crash site
        PyObject *r = PyObject_CallFunction(logger_info, "s", msg.c_str());
        if (r == nullptr) {
            PyErr_Clear();                // "modules needed for logging unloaded"
        }
        Py_XDECREF(r);
        rw_bump(RW_DELIVERED);
    }
}
#endif

PyObject *py_log_info(PyObject *, PyObject *arg)
{
    const char *s = PyUnicode_AsUTF8(arg);
    if (s == nullptr) {
        return nullptr;
    }
    rw_bump(RW_EMITTED);
#ifdef RW_NAIVE
    bool pushed = false;
    {
        std::lock_guard<std::mutex> g(ring.lock);
        if (ring.q.size() < ring_capacity) {
            ring.q.emplace_back(s);
            pushed = true;
        }
    }
    if (pushed) {
        ring.ready.notify_one();
    }
    else {
        rw_bump(RW_DROPPED);              // ring full: drop rather than block
    }
#else
    eg_log(EG_LOG_INFO, "spead2", "%s", s);
#endif
    Py_RETURN_NONE;
}

int exec_module(PyObject *m)
{
    if (rw_exec(m) < 0) {
        return -1;
    }
#ifdef RW_NAIVE
    if (logger_info == nullptr) {         // register_logging(), at import
        PyObject *logging = PyImport_ImportModule("logging");
        PyObject *logger = logging ? PyObject_CallMethod(logging, "getLogger", "s", "spead2")
                                   : nullptr;
        logger_info = logger ? PyObject_GetAttrString(logger, "info") : nullptr;
        Py_XDECREF(logger);
        Py_XDECREF(logging);
        if (logger_info == nullptr) {
            return -1;
        }
        std::thread(consumer).detach();
    }
#endif
    return 0;
}

PyMethodDef methods[] = {
    RW_COMMON_METHODS
    {"log_info", py_log_info, METH_O, "Log a message at INFO from C++."},
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
