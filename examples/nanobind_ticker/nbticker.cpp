// nbticker.cpp -- C++ threads that call a Python callback, bound with
// nanobind twice: `nbticker.naive` as nanobind code is written today,
// `nbticker.guarded` with exitguard's nanobind adapter.  The flavours differ
// in the three things exitguard replaces: the type that holds the callback,
// the attach, and who stops the threads.
//
// DESIGN
//
// Each flavour is one process-wide ticker, a function-local static as
// libraries keep their event sources: start(callback, nthreads, period_ms)
// starts std::threads that, every period, attach and call callback(n) with
// a running count, until stopped.  The ticker's own mutex guards what the
// threads share; the module declares it does not need the GIL.
//
// What goes wrong with the naive ticker at exit, and what prevents it:
//
//   - nobody stops the threads before finalization: a thread attaching then
//     is killed by pthread_exit (CPython 3.9-3.13.7), parked forever
//     (3.13.8+, 3.14), or -- nanobind's gil_scoped_acquire on 3.15, through
//     PEP 788 -- refused, which this naive code does not check.  The
//     static's destructor, run by exit() after Py_Finalize, joins a parked
//     thread and hangs.
//       -> exitguard::nb::pool_stopper stops and joins the threads in
//          phase 1, GIL released, while the interpreter is whole.
//   - the same destructor drops the callback, an nb::object, after
//     Py_Finalize: its deallocation crashes.
//       -> exitguard::nb::object: after exitguard's phase 2 (which released
//          the callback), dropping it frees native memory only.
//   - a thread nobody registered (attach_probe) must be told "no" once
//     shutdown has begun, on every CPython version.
//       -> exitguard::nb::gil_scoped_acquire reports the refusal.
//
// Which thread runs what: start/stats/attach_probe -- the Python caller,
// attached; tick_loop() -- the ticker's threads, attached only inside the
// attach scope; stop_and_join() -- phase 1 (guarded, GIL released) or the
// static's destructor (both flavours), never attached.
#include <nanobind/nanobind.h>
#include <exitguard/nanobind.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace nb = nanobind;

namespace {

// CAUTION: tick_loop() outside its attach scope, stop_and_join() and
// drop_callback() run without a thread state: the ticker's mutex, std::thread
// and the holder's reset only (exitguard::nb::object queues its decref; the
// naive nb::object is dropped only by the static's destructor -- the bug).
//
// Holder: what keeps the callback; Attach: the scoped attach around a call.
template <class Holder, class Attach>
class ticker {
public:
    void start(nb::handle callback, int nthreads, int period_ms)
    {
        if (nthreads < 1 || nthreads > 64 || period_ms < 0) {
            throw nb::value_error("need 1 <= nthreads <= 64 and period_ms >= 0");
        }
        std::lock_guard<std::mutex> g(lock_);
        if (!threads_.empty() || stopping_) {
            throw nb::value_error("the ticker is already started");
        }
        callback_ = Holder(nb::borrow(callback));
        period_ = std::chrono::milliseconds(period_ms);
        for (int i = 0; i < nthreads; i++) {
            threads_.emplace_back([this] { tick_loop(); });
        }
    }

    // Idempotent; never called attached.
    void stop_and_join()
    {
        std::vector<std::thread> joining;
        {
            std::lock_guard<std::mutex> g(lock_);
            stopping_ = true;
            joining.swap(threads_);
        }
        wake_.notify_all();
        for (auto &t : joining) {
            t.join();
        }
    }

    // Any thread, after stop_and_join(): drop the callback (guarded only:
    // an nb::object must not be dropped without the GIL).
    void drop_callback() noexcept { callback_ = Holder(); }

    nb::dict stats() const
    {
        nb::dict d;
        d["ticks"] = ticks_.load();
        d["refused"] = refused_.load();
        return d;
    }

    ~ticker() { stop_and_join(); }   // runs from exit(), after Py_Finalize

private:
    void tick_loop()
    {
        for (;;) {
            {
                std::unique_lock<std::mutex> g(lock_);
                if (wake_.wait_for(g, period_, [&] { return stopping_; })) {
                    return;
                }
            }
            Attach gil;
            if (!attached(gil)) {
                refused_++;            // shutting down: never touch Python
                return;
            }
            long n = ++ticks_;
            try {
                call(callback_, n);
            }
            catch (nb::python_error &e) {
                e.discard_as_unraisable("nbticker callback");
            }
        }
    }

    static bool attached(const nb::gil_scoped_acquire &) { return true; }
    static bool attached(const exitguard::nb::gil_scoped_acquire &g)
    {
        return static_cast<bool>(g);
    }
    static void call(const nb::object &fn, long n) { fn(n); }
    static void call(const exitguard::nb::object &fn, long n)
    {
        nb::object f = fn.get();
        if (f.is_valid()) {
            f(n);
        }
    }

    std::mutex lock_;                  // guards threads_ and stopping_
    std::condition_variable wake_;
    std::vector<std::thread> threads_;
    bool stopping_ = false;
    std::chrono::milliseconds period_{1};
    Holder callback_;                  // written in start(), before the threads
    std::atomic<long> ticks_{0}, refused_{0};
};

// ---- naive: nanobind as written today ---------------------------------------

using naive_ticker = ticker<nb::object, nb::gil_scoped_acquire>;

naive_ticker &naive()
{
    static naive_ticker t;
    return t;
}

// ---- guarded: the same ticker with exitguard's nanobind adapter -------------

struct guarded_ticker {
    ticker<exitguard::nb::object, exitguard::nb::gil_scoped_acquire> core;
    // Declared last: unregistered before `core` is destroyed.
    std::optional<exitguard::nb::pool_stopper> stopper;

    void start(nb::handle callback, int nthreads, int period_ms)
    {
        core.start(callback, nthreads, period_ms);
        // Phase 1, GIL released: stop and join the threads, then drop the
        // callback (queued, applied by phase 2) so nothing is left for
        // exitguard to release on our behalf.
        stopper.emplace([this] {
            core.stop_and_join();
            core.drop_callback();
        });
    }
};

guarded_ticker &guarded()
{
    static guarded_ticker t;
    return t;
}

// A thread nobody registered attaches once and calls fn(): returns 0 when it
// ran fn, or the refusal (-ESHUTDOWN) -- e.g. when called after exitguard's
// phase 2, from an atexit handler.  Joined with the GIL released.
int attach_probe(nb::handle fn)
{
    int rc = 0;
    std::thread t([&] {
        exitguard::nb::gil_scoped_acquire gil;
        if (!gil) {
            rc = gil.error();
            return;
        }
        try {
            fn();
        }
        catch (nb::python_error &e) {
            e.discard_as_unraisable("nbticker.attach_probe");
        }
    });
    {
        nb::gil_scoped_release unlocked;
        t.join();
    }
    return rc;
}

}  // namespace

NB_MODULE(nbticker, m)
{
    exitguard::nb::import();

    nb::module_ n = m.def_submodule("naive", "the ticker as nanobind code writes it today");
    n.def("start", [](nb::handle cb, int k, int ms) { naive().start(cb, k, ms); },
          nb::arg("callback"), nb::arg("nthreads") = 2, nb::arg("period_ms") = 1);
    n.def("stats", [] { return naive().stats(); });

    nb::module_ g = m.def_submodule("guarded", "the same ticker with exitguard's adapter");
    g.def("start", [](nb::handle cb, int k, int ms) { guarded().start(cb, k, ms); },
          nb::arg("callback"), nb::arg("nthreads") = 2, nb::arg("period_ms") = 1);
    g.def("stats", [] { return guarded().core.stats(); });
    g.def("attach_probe", &attach_probe);
}
