// arrow_50482_pool -- apache/arrow#50482 "Interpreter hangs at exit after
// pq.read_table(python_file_object) - thread pool teardown deadlock".
//
// The report: reading through a Python file object leaves cleanup work running
// on Arrow's process-wide CPU thread pool after read_table() returns (arrow#33975:
// "some read_table cleanup work is still happening after the method returns").
// The pool is a C++ static: its destructor runs in exit(), after Py_FinalizeEx,
// and joins its workers.  The worker that drops the last reference to the Python
// file does so with PyGILState_Ensure -- after finalization.  On 3.14 that parks
// the worker forever and the destructor's join never returns: "done, exiting..."
// is printed, then the process hangs until SIGKILL.  (On older versions the same
// attach crashes.)
//
// Here: a static ThreadPool (function-local static, created at first use) with
// four workers; read_table(f) wraps f in a PyReadableFile, reads it on the pool
// and returns a Table that keeps the reader alive.  Destroying the Table hands
// the reader's release to the pool -- so when the Table is a module global,
// collected during finalization, the file's last reference is dropped on a
// worker, attached, while the interpreter finalizes.
//
// The port: the pool's workers are adopted by exitguard (eg_thread_adopt), so
// phase 1 stops and joins them before finalization; the file is an
// exitguard::ref (its release is safe anywhere), reads attach with exitguard::gil.
// The destructor in exit() then finds the workers joined.
#include "rw.h"

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if !defined(RW_NAIVE)
#  include <exitguard.hpp>
#endif

namespace {

class ThreadPool {
public:
    explicit ThreadPool(int n)
    {
        for (int i = 0; i < n; i++) {
            workers_.emplace_back([this] { work(); });
        }
    }
    ~ThreadPool() { shutdown(); }      // arrow::internal::ThreadPool::~ThreadPool

    void submit(std::function<void()> fn)
    {
        {
            std::lock_guard<std::mutex> g(lock_);
            tasks_.push_back(std::move(fn));
        }
        wake_.notify_one();
    }

    // Finish the queued tasks, then join (Shutdown(wait=true)).
    void shutdown()
    {
        request_stop();
        for (auto &t : workers_) {
            if (t.joinable()) {
                t.join();
            }
        }
    }

    void request_stop()
    {
        {
            std::lock_guard<std::mutex> g(lock_);
            stopping_ = true;
        }
        wake_.notify_all();
    }

    // Wait until every worker has returned, at most timeout_s (< 0: forever).
    bool wait_ended(double timeout_s)
    {
        std::unique_lock<std::mutex> g(lock_);
        auto ended = [&] { return alive_ == 0; };
        if (timeout_s < 0) {
            ended_.wait(g, ended);
            return true;
        }
        return ended_.wait_for(g, std::chrono::duration<double>(timeout_s), ended);
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
                    break;              // stopping, and nothing left to run
                }
                fn = std::move(tasks_.front());
                tasks_.pop_front();
            }
            fn();
        }
        rw_bump(RW_ENDED);
        std::lock_guard<std::mutex> g(lock_);
        if (--alive_ == 0) {
            ended_.notify_all();
        }
    }

    std::mutex lock_;                   // guards tasks_, stopping_, alive_
    std::condition_variable wake_, ended_;
    std::deque<std::function<void()>> tasks_;
    bool stopping_ = false;
    int alive_ = 4;
    std::vector<std::thread> workers_;
};

#if !defined(RW_NAIVE)
void pool_request_stop(void *p) { static_cast<ThreadPool *>(p)->request_stop(); }
int pool_join(void *p, double timeout_s)
{
    return static_cast<ThreadPool *>(p)->wait_ended(timeout_s) ? 0 : -ETIMEDOUT;
}
#endif

// arrow::internal::GetCpuThreadPool(): a process-lifetime static.
ThreadPool &cpu_pool()
{
    static ThreadPool pool(4);
#if !defined(RW_NAIVE)
    static eg_thread *adopted = [] {
        eg_thread *t = nullptr;
        (void)eg_thread_adopt(&t, "arrow-cpu-pool", pool_request_stop, pool_join, &pool);
        return t;
    }();
    (void)adopted;
#endif
    return pool;
}

// arrow::py::PyReadableFile: a Python file object behind a C++ interface.
class PyReadableFile {
public:
#ifdef RW_NAIVE
    explicit PyReadableFile(PyObject *f) : file_(Py_NewRef(f)) {}
    ~PyReadableFile()
    {
        PyGILState_STATE g = PyGILState_Ensure();   // the hang (3.14) / crash site
        Py_DECREF(file_);
        PyGILState_Release(g);
    }
    long read(long n)
    {
        PyGILState_STATE g = PyGILState_Ensure();
        long got = call_read(file_, n);
        PyGILState_Release(g);
        return got;
    }
#else
    explicit PyReadableFile(PyObject *f) : file_(exitguard::ref::make(f)) {}
    long read(long n)
    {
        exitguard::gil gil;
        if (!gil) {
            rw_bump(RW_REFUSED);
            return -1;
        }
        return call_read(file_.get(), n);
    }
#endif
    bool ok() const { return static_cast<bool>(file_); }

private:
    static long call_read(PyObject *file, long n)
    {
        rw_bump(RW_CALLS);
        PyObject *b = PyObject_CallMethod(file, "read", "l", n);
        long got = b && PyBytes_Check(b) ? (long)PyBytes_GET_SIZE(b) : -1;
        if (b == nullptr) {
            PyErr_Clear();
        }
        Py_XDECREF(b);
        return got;
    }
#ifdef RW_NAIVE
    PyObject *file_;
#else
    exitguard::ref file_;
#endif
};

// A Table keeps its reader -- and so the Python file -- alive (zero-copy buffers).
// Destroying it hands the reader's release to the pool: Arrow's readers close
// asynchronously, so the last reference to the file goes away on a worker.
struct TableObject {
    PyObject_HEAD
    std::shared_ptr<PyReadableFile> *reader;
    long rows;
};

PyTypeObject *Table_Type;

void Table_dealloc(PyObject *op)
{
    auto *self = reinterpret_cast<TableObject *>(op);
    PyTypeObject *tp = Py_TYPE(op);
    if (self->reader != nullptr) {
        std::shared_ptr<PyReadableFile> reader = std::move(*self->reader);
        delete self->reader;
        cpu_pool().submit([reader = std::move(reader)]() mutable { reader.reset(); });
    }
    tp->tp_free(op);
    Py_DECREF(tp);
}

PyObject *Table_num_rows(PyObject *op, void *)
{
    return PyLong_FromLong(reinterpret_cast<TableObject *>(op)->rows);
}

PyGetSetDef Table_getset[] = {
    {"num_rows", Table_num_rows, nullptr, nullptr, nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyType_Slot Table_slots[] = {
    {Py_tp_dealloc, (void *)Table_dealloc},
    {Py_tp_getset, Table_getset},
    {0, nullptr},
};

PyType_Spec Table_spec = {
    RW_MODNAME ".Table", sizeof(TableObject), 0, Py_TPFLAGS_DEFAULT, Table_slots,
};

PyObject *py_read_table(PyObject *, PyObject *file)
{
    auto src = std::make_shared<PyReadableFile>(file);
    if (!src->ok()) {
        return nullptr;
    }
    ThreadPool &pool = cpu_pool();
    struct shared {
        std::mutex lock;
        std::condition_variable done;
        int left = 4;
        long bytes = 0;
    };
    auto st = std::make_shared<shared>();
    for (int i = 0; i < 4; i++) {
        pool.submit([src, st] {
            long got = src->read(4096);
            std::lock_guard<std::mutex> g(st->lock);
            st->bytes += got > 0 ? got : 0;
            if (--st->left == 0) {
                st->done.notify_all();
            }
        });
    }
    long bytes;
    Py_BEGIN_ALLOW_THREADS
    {
        std::unique_lock<std::mutex> g(st->lock);
        st->done.wait(g, [&] { return st->left == 0; });
        bytes = st->bytes;
    }
    Py_END_ALLOW_THREADS
    auto *t = PyObject_New(TableObject, Table_Type);
    if (t == nullptr) {
        return nullptr;
    }
    t->reader = new std::shared_ptr<PyReadableFile>(std::move(src));
    t->rows = bytes / 16;
    return reinterpret_cast<PyObject *>(t);
}

int exec_module(PyObject *m)
{
    if (rw_exec(m) < 0) {
        return -1;
    }
    Table_Type = reinterpret_cast<PyTypeObject *>(PyType_FromSpec(&Table_spec));
    return Table_Type == nullptr ? -1 : 0;
}

PyMethodDef methods[] = {
    RW_COMMON_METHODS
    {"read_table", py_read_table, METH_O, "Read a table through a Python file object."},
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
