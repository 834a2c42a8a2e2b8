// exitguard.hpp -- header-only C++17 RAII over the exitguard C API.
//
// Everything here is a thin owner of one C handle; the contracts are those
// of the C functions in exitguard.h (thread, GIL, pairing), restated where
// they differ.  No exception ever leaves a destructor or a callback that C
// code calls: refusal during shutdown is a value the caller checks
// (`ok()`, `error()`), and a C++ exception thrown by your callable inside a
// native callback is caught and logged through eg_log.
//
// Call exitguard's eg_import() (from your module's exec) before using any
// of these, as with the C API.
//
//     exitguard::ref cb = exitguard::ref::make(callable);   // attached
//     exitguard::thread t = exitguard::thread::start("worker",
//         [&] { while (!exitguard::thread::stop_requested()) {
//                   exitguard::gil g;                       // any thread
//                   if (!g) break;                          // shutting down
//                   PyObject_CallNoArgs(cb.get());
//               } },
//         [&] { wake_worker(); });
//     exitguard::stopper s(exitguard::without_gil,            // phase 1,
//                          [&] { pool.stop_and_join(); });    // GIL released
#ifndef EXITGUARD_HPP
#define EXITGUARD_HPP

#if __cplusplus < 201703L
#  error "exitguard.hpp needs C++17"
#endif

#include "exitguard.h"

#include <exception>
#include <memory>
#include <new>
#include <utility>

namespace exitguard {

namespace detail {
// Report an exception that reached a C callback; never throws.
inline void report(const char *where) noexcept
{
    try {
        throw;
    }
    catch (const std::exception &e) {
        eg_log(EG_LOG_ERROR, "exitguard", "C++ exception in %s: %s", where,
               e.what());
    }
    catch (...) {
        eg_log(EG_LOG_ERROR, "exitguard", "C++ exception in %s", where);
    }
}
}  // namespace detail

// A move-only owning reference: an eg_ref.  make() needs the GIL; the
// destructor and reset() work from any thread at any time (the decref is
// queued when not attached, and is only memory after exitguard stopped).
class ref {
public:
    ref() noexcept = default;
    ~ref() { reset(); }
    ref(const ref &) = delete;
    ref &operator=(const ref &) = delete;
    ref(ref &&other) noexcept : r_(std::exchange(other.r_, nullptr)) {}
    ref &operator=(ref &&other) noexcept
    {
        if (this != &other) {
            reset();
            r_ = std::exchange(other.r_, nullptr);
        }
        return *this;
    }

    // Attached.  An empty ref on failure, with the Python exception set
    // (MemoryError, or RuntimeError once phase 2 has begun).
    // Inlined even unoptimized: the leak report names make()'s caller.
    static EG__SITE_INLINE ref make(PyObject *obj) noexcept
    {
        ref r;
        r.r_ = eg_ref_new(obj);
        return r;
    }

    // Attached: the object (borrowed), or nullptr once exitguard released
    // it at exit, or when empty.
    PyObject *get() const noexcept { return r_ ? eg_ref_get(r_) : nullptr; }
    explicit operator bool() const noexcept { return r_ != nullptr; }

    // Any thread: drop the reference now.
    void reset() noexcept
    {
        if (r_ != nullptr) {
            eg_ref_release(std::exchange(r_, nullptr));
        }
    }

    // Give up ownership of the C handle (pair with eg_ref_release).
    eg_ref *release() noexcept { return std::exchange(r_, nullptr); }

private:
    eg_ref *r_ = nullptr;
};

// A scoped attach: eg_gil_ensure in the constructor, eg_gil_release in the
// destructor.  Any thread.  Check it: a refused attach (-ESHUTDOWN: the
// interpreter is stopping or gone) means "do not touch Python".
class gil {
public:
    explicit gil(eg_interp *interp = nullptr) noexcept
        : rc_(eg_gil_ensure(interp, &st_))
    {
    }
    ~gil()
    {
        if (rc_ == 0) {
            eg_gil_release(&st_);
        }
    }
    gil(const gil &) = delete;
    gil &operator=(const gil &) = delete;

    bool ok() const noexcept { return rc_ == 0; }
    explicit operator bool() const noexcept { return ok(); }
    int error() const noexcept { return rc_; }   // 0 or a negative errno

private:
    eg_gil st_;
    int rc_;
};

// A native thread registered with exitguard: phase 1 asks it to stop (the
// `stop` callable, without the GIL) and joins it.  start() is attached.
// The destructor joins (releasing the GIL while it waits) if nobody did.
class thread {
public:
    thread() noexcept = default;
    ~thread() { (void)join(); }
    thread(const thread &) = delete;
    thread &operator=(const thread &) = delete;
    thread(thread &&other) noexcept
        : t_(std::exchange(other.t_, nullptr)),
          body_(std::move(other.body_)), rc_(other.rc_)
    {
    }
    thread &operator=(thread &&other) noexcept
    {
        if (this != &other) {
            (void)join();
            t_ = std::exchange(other.t_, nullptr);
            body_ = std::move(other.body_);
            rc_ = other.rc_;
        }
        return *this;
    }

    template <class Run, class Stop>
    static thread start(const char *name, Run run, Stop stop) noexcept
    {
        thread t;
        auto *b = new (std::nothrow) body<Run, Stop>{std::move(run),
                                                     std::move(stop)};
        if (b == nullptr) {
            t.rc_ = -ENOMEM;
            return t;
        }
        t.body_.reset(b);
        t.rc_ = eg_thread_start(&t.t_, name, &body<Run, Stop>::run_cb,
                                &body<Run, Stop>::stop_cb, b);
        if (t.rc_ != 0) {
            t.body_.reset();
        }
        return t;
    }

    template <class Run>
    static thread start(const char *name, Run run) noexcept
    {
        return start(name, std::move(run), [] {});
    }

    bool ok() const noexcept { return rc_ == 0 && t_ != nullptr; }
    explicit operator bool() const noexcept { return ok(); }
    int error() const noexcept { return rc_; }

    // Any thread but this one: 0 once ended (also when phase 1 joined it),
    // -ETIMEDOUT (still running; try again later), -ESHUTDOWN (phase 1
    // abandoned it at exit: the handle is given up at once, the body kept
    // alive for the thread).  timeout_s < 0: forever.
    int join(double timeout_s = -1.0) noexcept
    {
        if (t_ == nullptr) {
            return 0;
        }
        int rc = eg_thread_join(t_, timeout_s);
        if (rc == 0) {
            t_ = nullptr;
            body_.reset();
        }
        else if (rc == -ESHUTDOWN) {
            // Abandoned at exit and maybe still running its body: give the
            // handle up and leave the body alive for it -- never block.
            t_ = nullptr;
            (void)body_.release();
        }
        return rc;
    }

    // Inside the thread: has phase 1 asked it to stop?
    static bool stop_requested() noexcept
    {
        return eg_thread_stop_requested() != 0;
    }

private:
    struct base {
        virtual ~base() = default;
    };
    template <class Run, class Stop>
    struct body : base {
        Run run;
        Stop stop;
        body(Run r, Stop s) : run(std::move(r)), stop(std::move(s)) {}
        static void run_cb(void *p) noexcept
        {
            try {
                static_cast<body *>(p)->run();
            }
            catch (...) {
                detail::report("exitguard::thread body");
            }
        }
        static void stop_cb(void *p) noexcept
        {
            try {
                static_cast<body *>(p)->stop();
            }
            catch (...) {
                detail::report("exitguard::thread stop request");
            }
        }
    };

    eg_thread *t_ = nullptr;
    std::unique_ptr<base> body_;
    int rc_ = -EINVAL;
};

// Tag for stopper(without_gil, fn): phase 1 calls fn with the GIL released,
// so that fn may join threads that need the GIL to finish -- the shape of a
// C++ thread pool's stop-and-join.  fn must not touch Python.
struct without_gil_t {
    explicit without_gil_t() = default;
};
inline constexpr without_gil_t without_gil{};

namespace detail {
// Releases the GIL for the lifetime of the object (PyEval_SaveThread), and
// takes it back on every way out, an exception included.
class gil_released {
public:
    gil_released() noexcept : ts_(PyEval_SaveThread()) {}
    ~gil_released() { PyEval_RestoreThread(ts_); }
    gil_released(const gil_released &) = delete;
    gil_released &operator=(const gil_released &) = delete;

private:
    PyThreadState *ts_;
};
}  // namespace detail

// A scoped exit stopper: runs `fn` in phase 1 (attached, at most once)
// unless the stopper is destroyed first.  Construct attached.  The
// destructor unregisters it, waiting if phase 1 is running it elsewhere.
// stopper(without_gil, fn) runs fn with the GIL released instead.
class stopper {
public:
    template <class F>
    stopper(without_gil_t, F fn) noexcept
        : stopper([f = std::move(fn)]() mutable {
              detail::gil_released unlocked;
              f();
          })
    {
    }

    template <class F>
    explicit stopper(F fn) noexcept
    {
        auto *b = new (std::nothrow) body<F>{std::move(fn)};
        if (b == nullptr) {
            return;
        }
        s_ = eg_stopper_add(&body<F>::cb, b);     // NULL: Python error set
        if (s_ != nullptr) {
            body_.reset(b);
        }
        else {
            delete b;
        }
    }
    ~stopper()
    {
        eg_stopper_remove(s_);      // first: the callback cannot start now
        body_.reset();
    }
    stopper(const stopper &) = delete;
    stopper &operator=(const stopper &) = delete;

    bool ok() const noexcept { return s_ != nullptr; }
    explicit operator bool() const noexcept { return ok(); }
    eg_stopper *handle() const noexcept { return s_; }

    // This stopper runs only after `first` has (eg_stopper_after).
    int after(const stopper &first) noexcept
    {
        return eg_stopper_after(first.s_, s_);
    }

private:
    struct base {
        virtual ~base() = default;
    };
    template <class F>
    struct body : base {
        F fn;
        explicit body(F f) : fn(std::move(f)) {}
        static void cb(void *p) noexcept
        {
            try {
                static_cast<body *>(p)->fn();
            }
            catch (...) {
                detail::report("exitguard::stopper");
            }
        }
    };

    eg_stopper *s_ = nullptr;
    std::unique_ptr<base> body_;
};

}  // namespace exitguard

#endif  // EXITGUARD_HPP
