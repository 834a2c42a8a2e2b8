// viztracer_687_tls -- gaogaotiantian/viztracer#687 "snaptrace_threaddestructor calls
// PyGILState_Ensure() after interpreter finalization, causing SIGSEGV" (proposed fix
// PR #688; merged fix PR #699).
//
// The report: the tracer keeps per-thread metadata (Python objects) in pthread
// thread-local storage, with a TLS destructor that attaches and frees it when the
// thread ends.  A native C++ thread pool held as a process-lifetime static -- one
// that attaches to hand results back to Python -- is joined by the static
// destructors inside exit(), after Py_RunMain() has finalized the interpreter; its
// threads end then, and every TLS destructor attaches too late.  "6 of 6 runs crash"
// with exit status 139, after the trace was saved.
//
// Here: the "tracer" half of the module records a Token per thread that runs
// Python through it (TLS, with the destructor above); the "pool" half is the
// service's static pool, whose workers attach to run a Python callable and give
// the result back.
//
// The port: the tracer's per-thread metadata is an eg_ref, and the TLS destructor
// releases it with eg_ref_release -- no attach, safe after finalization (exitguard
// released the object in phase 2, while the interpreter was whole); the pool's
// tasks attach through eg_gil_ensure.  The pool itself stays a static joined in
// exit(): that is the service's design, and it is now harmless.
#include "rw.h"

#include <pthread.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace {

// ---- the tracer: per-thread metadata in TLS ---------------------------------

pthread_key_t thread_info_key;

struct thread_info {
#ifdef RW_NAIVE
    PyObject *meta;
#else
    eg_ref *meta;
#endif
};

// CAUTION (exitguard build): may run after Py_FinalizeEx, without a thread state.
void thread_destructor(void *p)         // snaptrace_threaddestructor
{
    auto *info = static_cast<thread_info *>(p);
#ifdef RW_NAIVE
    PyGILState_STATE g = PyGILState_Ensure();
    Py_DECREF(info->meta);
    PyGILState_Release(g);
#else
    eg_ref_release(info->meta);
#endif
    delete info;
}

// Attached: the first time a thread runs Python under the tracer, record it.
int trace_thread()
{
    if (pthread_getspecific(thread_info_key) != nullptr) {
        return 0;
    }
    PyObject *meta = rw_token_new();
    if (meta == nullptr) {
        return -1;
    }
    auto *info = new thread_info;
#ifdef RW_NAIVE
    info->meta = meta;
#else
    info->meta = eg_ref_new(meta);
    Py_DECREF(meta);
    if (info->meta == nullptr) {
        delete info;
        return -1;
    }
#endif
    pthread_setspecific(thread_info_key, info);
    return 0;
}

// ---- the service's pool: a process-lifetime static, joined in exit() --------

class Pool {
public:
    explicit Pool(int n)
    {
        for (int i = 0; i < n; i++) {
            threads_.emplace_back([this] { work(); });
        }
    }
    ~Pool()
    {
        {
            std::lock_guard<std::mutex> g(lock_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (auto &t : threads_) {
            t.join();
        }
    }
    void submit(std::function<void()> fn)
    {
        {
            std::lock_guard<std::mutex> g(lock_);
            tasks_.push_back(std::move(fn));
        }
        wake_.notify_one();
    }

private:
    void work()
    {
        rw_bump(RW_STARTED);
        for (;;) {
            std::function<void()> fn;
            {
                std::unique_lock<std::mutex> g(lock_);
                wake_.wait(g, [&] { return stopping_ || !tasks_.empty(); });
                if (tasks_.empty()) {
                    break;
                }
                fn = std::move(tasks_.front());
                tasks_.pop_front();
            }
            fn();
        }
        rw_bump(RW_ENDED);
    }
    std::mutex lock_;
    std::condition_variable wake_;
    std::deque<std::function<void()>> tasks_;
    bool stopping_ = false;
    std::vector<std::thread> threads_;
};

Pool &service_pool()
{
    static Pool pool(3);
    return pool;
}

// run_in_pool(fn): call fn() on a pool thread, return its result.
PyObject *py_run_in_pool(PyObject *, PyObject *fn)
{
    struct box {
        std::mutex lock;
        std::condition_variable done;
        bool ready = false;
        PyObject *result = nullptr;
    } b;
    service_pool().submit([&b, fn] {
#ifdef RW_NAIVE
        PyGILState_STATE g = PyGILState_Ensure();   // the service hands results back
#else
        eg_gil g;
        if (eg_gil_ensure(nullptr, &g) != 0) {
            rw_bump(RW_REFUSED);
            std::lock_guard<std::mutex> l(b.lock);
            b.ready = true;                         // result stays NULL: a failure
            b.done.notify_all();
            return;
        }
#endif
        if (trace_thread() < 0) {
            PyErr_Clear();
        }
        b.result = PyObject_CallNoArgs(fn);
        rw_bump(RW_CALLS);
        if (b.result == nullptr) {
            PyErr_Clear();
        }
#ifdef RW_NAIVE
        PyGILState_Release(g);
#else
        eg_gil_release(&g);
#endif
        std::lock_guard<std::mutex> l(b.lock);
        b.ready = true;
        b.done.notify_all();
    });
    Py_BEGIN_ALLOW_THREADS
    {
        std::unique_lock<std::mutex> l(b.lock);
        b.done.wait(l, [&] { return b.ready; });
    }
    Py_END_ALLOW_THREADS
    if (b.result == nullptr) {
        return PyErr_Format(PyExc_RuntimeError, "the task failed");
    }
    return b.result;
}

PyObject *py_save(PyObject *, PyObject *)
{
    Py_RETURN_NONE;                     // the trace is "written"; nothing else matters
}

int exec_module(PyObject *m)
{
    if (rw_exec(m) < 0) {
        return -1;
    }
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    static int key_err;
    pthread_once(&once, [] { key_err = pthread_key_create(&thread_info_key, thread_destructor); });
    if (key_err != 0) {
        PyErr_SetString(PyExc_OSError, "pthread_key_create failed");
        return -1;
    }
    return trace_thread();              // the main thread is traced too
}

PyMethodDef methods[] = {
    RW_COMMON_METHODS
    {"run_in_pool", py_run_in_pool, METH_O, "Call fn() on the service's pool."},
    {"save", py_save, METH_NOARGS, "Save the trace."},
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
