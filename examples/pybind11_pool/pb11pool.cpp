// pb11pool.cpp -- a C++ thread pool that runs Python callables, written with
// pybind11 twice: `pb11pool.naive` the way pybind11 code is written today,
// `pb11pool.guarded` with exitguard's pybind11 adapter.  The two differ only
// in the three lines exitguard replaces (the task type, the attach, and the
// stop registration); the test suite runs both through an exit with work
// still queued.
//
// DESIGN
//
// Each flavour is a process-wide pool, a function-local static as libraries
// keep their default executor: start(n) starts n std::threads, submit(fn)
// queues a callable, and each worker pops one, attaches, calls it, and drops
// it.  State the workers share is guarded by the pool's own mutex, never by
// the GIL (the module declares that it does not need the GIL).
//
// What goes wrong with the naive pool at exit, and which line prevents it:
//
//   - nobody stops the workers before finalization: each one asking for the
//     GIL then is killed by pthread_exit (CPython 3.9-3.13.7) or parked
//     forever (3.13.8+, 3.14+); the static's destructor, run by exit() after
//     Py_Finalize, joins a parked thread and hangs.
//       -> exitguard::py::pool_stopper runs stop_and_join() in phase 1, with
//          the GIL released, while the interpreter is whole.
//   - the same destructor frees the queued py::objects after Py_Finalize:
//     the last reference to each is dropped with no interpreter left, and
//     its deallocation crashes.
//       -> exitguard::py::object is released from any thread at any time;
//          after exitguard's phase 2 only native memory is freed.
//   - a thread that attaches after shutdown has begun (here: attach_probe,
//     a thread nobody registered) cannot be told "no".
//       -> exitguard::py::gil_scoped_acquire reports the refusal as a value.
//
// Which thread runs what: start/submit/stats/attach_probe -- the Python
// caller, attached; work() -- the pool's threads, attached only inside the
// attach scope; stop_and_join() -- phase 1 (guarded, GIL released) or the
// static's destructor (both flavours).
#include <pybind11/pybind11.h>
#include <exitguard/pybind11.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace py = pybind11;

namespace {

// CAUTION: work() outside its attach scope and stop_and_join() run without a
// thread state: the pool's mutex, std::thread, and Task moves (no refcount
// change) only.  The guarded flavour drops Tasks there too -- an
// exitguard::py::object queues its decref; the naive flavour's py::object
// destructor is one of the bugs it demonstrates.
//
// The pool both flavours share; Task is what a queue slot holds, Attach the
// scoped attach a worker takes around each call.
template <class Task, class Attach>
struct pool_core {
    std::mutex lock;                   // guards queue, threads and stopping
    std::condition_variable wake;
    std::deque<Task> queue;
    std::vector<std::thread> threads;
    bool stopping = false;
    std::atomic<long> submitted{0}, ran{0}, refused{0}, dropped{0};

    void start(int n)
    {
        std::lock_guard<std::mutex> g(lock);
        if (!threads.empty()) {
            throw py::value_error("the pool is already started");
        }
        for (int i = 0; i < n; i++) {
            threads.emplace_back([this] { work(); });
        }
    }

    void submit(Task task)
    {
        {
            std::lock_guard<std::mutex> g(lock);
            if (stopping) {
                throw py::value_error("the pool is stopped");
            }
            queue.push_back(std::move(task));
        }
        submitted++;
        wake.notify_one();
    }

    void work()
    {
        for (;;) {
            Task task;
            {
                std::unique_lock<std::mutex> g(lock);
                wake.wait(g, [&] { return stopping || !queue.empty(); });
                if (stopping) {
                    return;            // stop_and_join drops what is left
                }
                task = std::move(queue.front());
                queue.pop_front();
            }
            Attach gil;
            if (!attached(gil)) {
                refused++;             // shutting down: the task is dropped
                continue;              // without the GIL (guarded only)
            }
            try {
                call(task);
            }
            catch (py::error_already_set &e) {
                e.discard_as_unraisable("pb11pool task");
            }
            ran++;
            task = Task();             // drop the reference with the GIL held
        }
    }

    // Ask the workers to stop, join them, and drop the queued tasks.
    // Idempotent.  Never called attached (see the two callers).
    void stop_and_join()
    {
        std::vector<std::thread> joining;
        std::deque<Task> left;
        {
            std::lock_guard<std::mutex> g(lock);
            stopping = true;
            joining.swap(threads);
            left.swap(queue);
        }
        wake.notify_all();
        for (auto &t : joining) {
            t.join();
        }
        dropped += static_cast<long>(left.size());
        // `left` is destroyed here, without the GIL.
    }

    py::dict stats() const
    {
        py::dict d;
        d["submitted"] = submitted.load();
        d["ran"] = ran.load();
        d["refused"] = refused.load();
        d["dropped"] = dropped.load();
        return d;
    }

    static bool attached(const py::gil_scoped_acquire &) { return true; }
    static bool attached(const exitguard::py::gil_scoped_acquire &g)
    {
        return static_cast<bool>(g);
    }
    static void call(const py::object &fn) { fn(); }
    static void call(const exitguard::py::object &fn) { fn.get()(); }
};

// ---- naive: pybind11 as written today ---------------------------------------

struct naive_pool : pool_core<py::object, py::gil_scoped_acquire> {
    // Runs from exit(), after Py_Finalize: see the DESIGN notes.
    ~naive_pool() { stop_and_join(); }
};

naive_pool &naive()
{
    static naive_pool pool;
    return pool;
}

// ---- guarded: the same pool with exitguard's pybind11 adapter ---------------

struct guarded_pool
    : pool_core<exitguard::py::object, exitguard::py::gil_scoped_acquire> {
    // Declared last among the members that matter (the base holds the
    // rest), so it is unregistered before anything it uses is destroyed.
    std::optional<exitguard::py::pool_stopper> stopper;

    void start_guarded(int n)
    {
        start(n);
        stopper.emplace([this] { stop_and_join(); });
    }

    ~guarded_pool()
    {
        stopper.reset();
        stop_and_join();       // already done in phase 1: nothing left
    }
};

guarded_pool &guarded()
{
    static guarded_pool pool;
    return pool;
}

// A thread nobody registered attaches once and calls fn: returns 0 when it
// ran fn, or the refusal (-ESHUTDOWN) -- e.g. when called after exitguard's
// phase 2, from an atexit handler.  Joined with the GIL released.
int attach_probe(const py::object &fn)
{
    int rc = 0;
    std::thread t([&] {
        exitguard::py::gil_scoped_acquire gil;
        if (!gil) {
            rc = gil.error();          // never touch Python then
            return;
        }
        try {
            fn();
        }
        catch (py::error_already_set &e) {
            e.discard_as_unraisable("pb11pool.attach_probe");
        }
    });
    {
        py::gil_scoped_release unlocked;
        t.join();
    }
    return rc;
}

void check_threads(int n)
{
    if (n < 1 || n > 64) {
        throw py::value_error("nthreads must be 1..64");
    }
}

}  // namespace

PYBIND11_MODULE(pb11pool, m, py::mod_gil_not_used())
{
    exitguard::py::import();

    py::module_ n = m.def_submodule("naive", "the pool as pybind11 code writes it today");
    n.def("start", [](int k) { check_threads(k); naive().start(k); }, py::arg("nthreads") = 2);
    n.def("submit", [](py::object fn) { naive().submit(std::move(fn)); });
    n.def("stats", [] { return naive().stats(); });

    py::module_ g = m.def_submodule("guarded", "the same pool with exitguard's adapter");
    g.def("start", [](int k) { check_threads(k); guarded().start_guarded(k); },
          py::arg("nthreads") = 2);
    g.def("submit", [](exitguard::py::object fn) { guarded().submit(std::move(fn)); });
    g.def("stats", [] { return guarded().stats(); });
    g.def("attach_probe", &attach_probe);
}
