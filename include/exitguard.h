/*
 * exitguard.h -- the public C API of exitguard.
 *
 * exitguard keeps native code that holds Python references, or runs threads
 * that call into Python, safe around the GIL and interpreter shutdown.  This
 * header is everything an extension needs: it compiles as C11 and as C++
 * (C++11 or newer), and it reaches the implementation through a versioned
 * capsule, so an extension never links against exitguard.
 *
 * Using it from an extension module:
 *
 *     #include <exitguard.h>          // include dir: exitguard.get_include()
 *
 *     static int mymod_exec(PyObject *m) {
 *         if (eg_import() < 0)        // once per module exec, attached
 *             return -1;
 *         ...
 *     }
 *
 * An extension made of several C files defines EG_CAPI_SHARED in every file
 * that includes this header and EG_CAPI_DEFINE in exactly one of them; the
 * default is a private table pointer per translation unit, so each file that
 * calls eg_* functions must then call eg_import() itself.  A call made before
 * eg_import() never crashes: the first one of a file says so on stderr,
 * naming the file, and each fails as its contract fails -- -ENOSYS for those
 * returning int, NULL (with RuntimeError for the attached constructors),
 * nothing done for eg_decref and the other void calls.
 *
 * Words used in the contracts below:
 *   attached   the calling thread holds the GIL -- has an attached thread
 *              state -- for the interpreter the call concerns;
 *   any thread any OS thread, attached or not, including threads Python
 *              never saw and threads running after Py_FinalizeEx();
 *   phase 1    exitguard's first stop phase, run from threading._shutdown()
 *              before non-daemon Python threads are joined -- before every
 *              threading._register_atexit callback too: the exit stoppers
 *              run;
 *   phase 2    the second, run from atexit while the interpreter is still
 *              whole (or, when exitguard was first imported by an exit
 *              handler, from its module's teardown): queued decrefs are
 *              applied and every registered reference is released.
 * The stop phases and the states an interpreter passes through are drawn in
 * docs/design.md.
 *
 * Errors, one rule for every function below:
 *   - a constructor that runs attached (eg_ref_new, eg_stopper_add,
 *     eg_interp_current, eg_cq_from_object) returns NULL with a Python
 *     exception set, as the C API does;
 *   - every other function returning int returns 0 (or a count) on success
 *     and a negative errno on failure (-EINVAL, -ENOMEM, -ESHUTDOWN, ...),
 *     never with an exception set -- except EG_WAIT_INTERRUPTED, which
 *     carries the signal handler's exception; eg_strerror() names every
 *     value these contracts mention;
 *   - a constructor that may run on any thread (eg_event_new,
 *     eg_interp_main) returns NULL and sets nothing;
 *   - predicates (eg_event_is_set, eg_thread_stop_requested,
 *     eg_log_enabled) return 1 or 0, and void functions cannot fail (a NULL
 *     argument is a no-op).
 */
#ifndef EXITGUARD_H
#define EXITGUARD_H

#include <Python.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>

#include "exitguard/version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A strong reference owned by native code and registered with the
 * interpreter it was created in.  Opaque. */
typedef struct eg_ref eg_ref;

/* A registered exit stopper.  Opaque. */
typedef struct eg_stopper eg_stopper;

/* A handle on an interpreter that imported exitguard.  Opaque; it stays
 * valid after its interpreter is gone (calls then report -ESHUTDOWN). */
typedef struct eg_interp eg_interp;

/* A native thread registered with exitguard.  Opaque. */
typedef struct eg_thread eg_thread;

/* An event native threads and signal handlers can set.  Opaque. */
typedef struct eg_event eg_event;

/* A completion queue: native threads post callbacks that run on the
 * thread that owns it (an asyncio loop).  Opaque; owned by an
 * exitguard.CompletionQueue object. */
typedef struct eg_cq eg_cq;

/* One EG_LOG call site's copy of its logger's level (see EG_LOG).  Private;
 * a static variable that EG_LOG defines. */
typedef struct eg_log_site {
    unsigned long long eg__private;
} eg_log_site;

/* The state of one eg_gil_ensure() call, to pass to eg_gil_release().  The
 * caller provides the storage (usually on its stack); the fields are
 * private. */
typedef struct eg_gil {
    void *eg__private[4];
} eg_gil;

/*
 * The function table behind the "exitguard._C_API" capsule.  The first two
 * fields never move; slots are only ever appended, and a retired slot stays
 * in place.  Extensions do not use this struct directly: the eg_* functions
 * below go through it.
 */
typedef struct eg_capi {
    uint32_t abi_version;   /* EG_ABI_VERSION of the exporting exitguard */
    uint32_t size;          /* sizeof(eg_capi) of the exporting exitguard */
    uint32_t version_hex;   /* EG_VERSION_HEX of the exporting exitguard */
    uint32_t reserved;      /* zero */
    eg_ref *(*ref_new)(PyObject *obj);
    PyObject *(*ref_get)(const eg_ref *ref);
    void (*ref_release)(eg_ref *ref);
    void (*decref)(PyObject *obj);
    Py_ssize_t (*flush)(void);
    eg_stopper *(*stopper_add)(void (*stop)(void *arg), void *arg);
    int (*stopper_after)(eg_stopper *first, eg_stopper *then);
    void (*stopper_remove)(eg_stopper *s);
    const char *(*strerror)(int err);
    /* ABI 1, added in 0.1.0 with the attach gate: */
    eg_interp *(*interp_current)(void);
    eg_interp *(*interp_main)(void);
    void (*interp_close)(eg_interp *h);
    int (*gil_ensure)(eg_interp *h, eg_gil *st);
    void (*gil_release)(eg_gil *st);
    int (*thread_start)(eg_thread **out, const char *name,
                        void (*run)(void *arg), void (*request_stop)(void *arg),
                        void *arg);
    int (*thread_join)(eg_thread *t, double timeout_s);
    int (*thread_stop_requested)(void);
    int (*thread_adopt)(eg_thread **out, const char *name,
                        void (*request_stop)(void *arg),
                        int (*join)(void *arg, double timeout_s), void *arg);
    /* ABI 1, runtime services: */
    void (*vlog)(int level, const char *logger, const char *fmt,
                 va_list ap);
    int (*log_enabled)(int level, const char *logger);
    eg_event *(*event_new)(void);
    void (*event_free)(eg_event *ev);
    int (*event_set)(eg_event *ev);
    int (*event_clear)(eg_event *ev);
    int (*event_is_set)(const eg_event *ev);
    int (*event_wait)(eg_event *ev, double timeout_s);
    int (*event_fileno)(const eg_event *ev);
    eg_cq *(*cq_from_object)(PyObject *obj);
    int (*cq_post)(eg_cq *q, void (*fn)(void *arg, int cancelled),
                   void *arg);
    int (*cq_post_future)(eg_cq *q, eg_ref *future,
                          PyObject *(*build)(void *arg, int cancelled,
                                             int *is_exception),
                          void *arg);
    /* ABI 1, appended in 0.2.0: EG_LOG's per-call-site level cache. */
    int (*log_site_enabled)(eg_log_site *site, int level, const char *logger);
    const unsigned int *log_generation;   /* read with __atomic_load_n */
} eg_capi;

#if defined(EG_BUILDING)
#  define EG_FUNC extern
#else
#  define EG_FUNC static inline
#endif

/* ------------------------------------------------------------------------
 * Importing the API
 */

/* eg_import: import exitguard and fetch its function table.
 * Thread: attached; call it from the extension's module exec (or init),
 *   once per interpreter that imports the extension.
 * Returns 0, or -1 with ImportError set -- also when the installed exitguard
 *   has another ABI version or an older, smaller table than this header; the
 *   message names both versions.
 * Not async-signal-safe.  Defined at the end of this header. */
#if !defined(EG_BUILDING)
static inline int eg_import(void);
#endif

/* ------------------------------------------------------------------------
 * Native references
 */

/* eg_ref_new: take a new strong reference to obj and register it in the
 *   current interpreter.
 * Thread: attached.  Not async-signal-safe.
 * Returns the reference, or NULL with an exception set: MemoryError, or
 *   RuntimeError once the interpreter's phase 2 has begun (references are
 *   closed to late registrations: nothing would release them).
 * Pair: eg_ref_release(), from any thread.  Until then phase 2 releases the
 *   object for you, and eg_ref_get() returns NULL from then on; the leak
 *   report (EXITGUARD_LEAKS) counts the reference only if its handle is
 *   never released, up to the very end of the process.  The call site is
 *   recorded: the report says which code created a reference it names. */
EG_FUNC eg_ref *eg_ref_new(PyObject *obj);

/* eg_ref_get: the object behind ref.
 * Thread: attached, to the interpreter the reference belongs to.
 * Returns a borrowed reference, or NULL (no exception) once phase 2 has
 *   released it.  Never fails otherwise. */
EG_FUNC PyObject *eg_ref_get(const eg_ref *ref);

/* eg_ref_release: drop the reference and free ref.
 * Thread: any thread, any time, including after Py_FinalizeEx().  Never
 *   blocks; not async-signal-safe (it may allocate when the queue spills).
 * Attached to the reference's interpreter, the object is decref'd now;
 *   otherwise the decref is queued to that interpreter (see eg_decref).
 *   After phase 2 only native memory is freed: the object was already
 *   released.  ref must not be used again; NULL is a no-op.  Releasing a
 *   reference twice is undefined; debug builds (EG_DEBUG=1) abort with a
 *   message naming it. */
EG_FUNC void eg_ref_release(eg_ref *ref);

/* ------------------------------------------------------------------------
 * Deferred decrefs
 */

/* eg_decref: drop one strong reference the caller owns on obj.
 * Thread: any thread.  Never blocks, never waits for the GIL; not
 *   async-signal-safe.
 * Attached, it is Py_DECREF(obj) now (obj must belong to that interpreter).
 *   Otherwise it is queued to the main interpreter without taking a lock,
 *   and applied there by a thread attached to it: at the next exitguard entry
 *   point, by exitguard's kicker thread (woken when the queue becomes
 *   non-empty; it attaches within about 10 ms, whatever the main thread is
 *   doing), by eg_flush(), or at phase 2.  A decref queued after phase 2 is never
 *   applied: it is counted (stats()["decref_dropped"]) and the object
 *   leaks.  NULL is a no-op. */
EG_FUNC void eg_decref(PyObject *obj);

/* eg_flush: apply the current interpreter's queued decrefs now.
 * Thread: attached.  May run arbitrary Python code (finalizers).
 * Returns how many decrefs were applied; 0 when another thread, or an
 *   enclosing flush on this thread, is draining the queue already (that
 *   drain applies them).  Never fails. */
EG_FUNC Py_ssize_t eg_flush(void);

/* ------------------------------------------------------------------------
 * Exit stoppers
 */

/* eg_stopper_add: register stop(arg) to run in phase 1 of the current
 *   interpreter -- before non-daemon Python threads are joined.
 * Thread: attached.
 * stop is called attached, on the thread running the phase (normally the
 *   main thread), at most once: release the GIL (Py_BEGIN_ALLOW_THREADS)
 *   around any join or wait inside it.  Stoppers run newest first, except
 *   that eg_stopper_after() edges are always honoured.  A stopper added while
 *   phase 1 runs still runs in that phase.
 * Returns the stopper, or NULL with an exception set: TypeError for a NULL
 *   stop, MemoryError, or RuntimeError once phase 1 has finished.
 * Pair: eg_stopper_remove(), which frees it; the handle stays valid (and
 *   inert, once it has run) until then. */
EG_FUNC eg_stopper *eg_stopper_add(void (*stop)(void *arg), void *arg);

/* eg_stopper_after: make `then` stop only after `first` has stopped.
 * Thread: any thread; both stoppers must belong to the same interpreter.
 * Returns 0; -EINVAL for NULL, identical or foreign stoppers; -EDEADLK when
 *   the edge would close a cycle; -EALREADY when `then` has already run or
 *   is running.  An edge to a removed stopper is dropped with it. */
EG_FUNC int eg_stopper_after(eg_stopper *first, eg_stopper *then);

/* eg_stopper_remove: unregister s and free it.
 * Thread: any thread, at any time, also from inside s's own stop callback.
 * If s's callback is running on another thread, this waits for it to
 *   return (releasing the GIL while it waits, when attached), so arg may be
 *   freed once this returns.  NULL is a no-op. */
EG_FUNC void eg_stopper_remove(eg_stopper *s);

/* ------------------------------------------------------------------------
 * Interpreters and the attach gate
 *
 * Each interpreter that imports exitguard has a gate: OPEN until its phase
 * 2 begins, then CLOSING (no new attach; phase 2 waits, GIL released, for
 * the threads inside to leave) and CLOSED.  eg_gil_ensure() enters the gate
 * before it touches CPython and eg_gil_release() leaves it, so a native
 * thread never reaches PyEval_RestoreThread() once finalization can have
 * begun: no pthread_exit (3.9-3.13.7), no thread parked forever (3.13.8+,
 * 3.14), no crash after Py_FinalizeEx() -- it gets -ESHUTDOWN instead.  On
 * CPython 3.15 the gate also holds a PEP 788 PyInterpreterGuard for each
 * thread inside, so CPython itself cannot begin finalizing under it.
 * Around os.fork() the gates pause: attaches wait (detached) and the fork
 * waits, GIL released, at most EXITGUARD_FORK_TIMEOUT seconds (default 2)
 * until no thread is inside CPython.
 */

/* eg_interp_current: a new handle on the calling thread's interpreter.
 * Thread: attached.
 * Returns the handle, or NULL with an exception set (MemoryError, or
 *   RuntimeError when exitguard is not imported in this interpreter).
 * Pair: eg_interp_close(). */
EG_FUNC eg_interp *eg_interp_current(void);

/* eg_interp_main: a new handle on the main interpreter.
 * Thread: any thread; no exception is ever set.
 * Returns the handle, or NULL when out of memory, when exitguard was never
 *   imported in the main interpreter, or (3.15) once it is gone.
 * Pair: eg_interp_close(). */
EG_FUNC eg_interp *eg_interp_main(void);

/* eg_interp_close: free a handle.  Thread: any thread, any time, also after
 *   the interpreter is gone.  NULL is a no-op. */
EG_FUNC void eg_interp_close(eg_interp *h);

/* eg_gil_ensure: attach the calling thread to h's interpreter (NULL: the
 *   main interpreter), through its gate.
 * Thread: any thread.  Not async-signal-safe.
 * Returns 0: attached to exactly that interpreter (the GIL held), until
 *   eg_gil_release(st).  -ESHUTDOWN: the interpreter is stopping or gone,
 *   or this thread was abandoned at exit: do not touch Python.  -ENOMEM: no
 *   thread state could be created.  It never hangs on a dead interpreter,
 *   never exits the thread, never crashes.
 * Nests: a thread already attached to that interpreter gets 0 at once; a
 *   thread attached to another interpreter is detached from it (before
 *   anything can wait) and re-attached by the matching release.  Thread
 *   states: the main interpreter's is made by a thread's first attach and
 *   kept; a subinterpreter's lives from the outermost attach to its
 *   release.  A thread that ends never needs the GIL for it (its joiner may
 *   hold the GIL): the next thread attached to that interpreter deletes the
 *   state.  Drains the interpreter's decref queue.  On free-threaded builds
 *   it also runs one no-op Python function so that the thread merges the
 *   reference counts of objects it owns (see docs/api.md).
 * Pair: eg_gil_release(st) on the same thread, in LIFO order. */
EG_FUNC int eg_gil_ensure(eg_interp *h, eg_gil *st);

/* eg_gil_release: undo a successful eg_gil_ensure(st).
 * Thread: the thread that called eg_gil_ensure(st).  Must not be called
 *   after a failed eg_gil_ensure. */
EG_FUNC void eg_gil_release(eg_gil *st);

/* ------------------------------------------------------------------------
 * Native threads
 */

/* eg_thread_start: start a native thread running run(arg), registered in
 *   the current interpreter.
 * Thread: attached.  The OS thread is named `name` (the OS keeps the first
 *   15 bytes; exitguard's messages print it whole).
 * run(arg) runs without the GIL; it attaches with eg_gil_ensure() when it
 *   needs Python, and checks eg_thread_stop_requested() in its loop.  In
 *   phase 1 exitguard calls request_stop(arg) (may be NULL; called without
 *   the GIL, from the thread running the phase: it must not block or touch
 *   Python), then joins the thread with the GIL released, waiting at most
 *   EXITGUARD_JOIN_TIMEOUT seconds (default 10); a thread still running
 *   then is named on stderr, is never allowed to attach again, and exit
 *   goes on without it.
 * Returns 0 and *out; -EINVAL (NULL out or run), -ESHUTDOWN (phase 1 has
 *   begun -- also from inside a running stopper), -ENOMEM, -EAGAIN (the OS
 *   refused a thread).
 * Pair: eg_thread_join(), which frees the handle once the thread ended. */
EG_FUNC int eg_thread_start(eg_thread **out, const char *name,
                            void (*run)(void *arg),
                            void (*request_stop)(void *arg), void *arg);

/* eg_thread_join: wait for a registered thread to end and free its handle.
 * Thread: any thread but t itself; releases the GIL while it waits when the
 *   caller is attached.  timeout_s < 0 waits forever.
 * Returns 0 (the thread ended -- also when phase 1 joined it already; t is
 *   freed), -ETIMEDOUT (t is still valid), -ESHUTDOWN (phase 1 abandoned the
 *   thread at exit: returned at once, also to a join already waiting; t is
 *   given up -- not freed, since the thread may still use it -- and must not
 *   be used again), -EINVAL (NULL t, NaN timeout, t is the calling thread,
 *   or t was already joined or given up: debug builds, EG_DEBUG=1, abort
 *   with a message instead).  For an adopted thread, calls its join
 *   callback. */
EG_FUNC int eg_thread_join(eg_thread *t, double timeout_s);

/* eg_thread_stop_requested: 1 once exitguard (phase 1) asked the calling
 *   registered thread to stop, else 0 (also for unregistered threads).
 * Thread: any thread; async-signal-safe (one atomic load). */
EG_FUNC int eg_thread_stop_requested(void);

/* eg_thread_adopt: register a thread that third-party code created and
 *   owns, so that phase 1 stops and joins it like one of ours.
 * Thread: attached.
 * In phase 1 exitguard calls request_stop(arg) then join(arg, timeout_s)
 *   (GIL released; join returns 0 once the thread has ended, or
 *   -ETIMEDOUT); a thread that does not end in time is named on stderr.
 * Returns 0 and *out; -EINVAL (NULL out or join), -ESHUTDOWN, -ENOMEM.
 * Pair: eg_thread_join(), which calls join(arg, ...) and, on success,
 *   unregisters and frees the handle. */
EG_FUNC int eg_thread_adopt(eg_thread **out, const char *name,
                            void (*request_stop)(void *arg),
                            int (*join)(void *arg, double timeout_s),
                            void *arg);

/* ------------------------------------------------------------------------
 * Logging into Python's logging, from any thread
 *
 * Messages go into a bounded ring of fixed-size slots and a forwarder
 * thread delivers them in batches, one attach per batch, to
 * logging.getLogger(logger) of the main interpreter, as records whose
 * threadName is the native thread's name.  Levels are Python's numbers.
 */
#define EG_LOG_DEBUG    10
#define EG_LOG_INFO     20
#define EG_LOG_WARNING  30
#define EG_LOG_ERROR    40
#define EG_LOG_CRITICAL 50

/* eg_log / eg_vlog: log a printf-style message to Python logger `logger`
 *   (NULL: the root logger).
 * Thread: any thread; never blocks, takes no GIL and no lock, allocates
 *   nothing once the logger name has been seen.  Not async-signal-safe
 *   (vsnprintf).
 * `logger` is only read during the call: names built at run time (in a
 *   reused buffer, from a Python str) are fine.  Its content keys a cache of
 *   the logger's effective level, kept in step with the logging
 *   configuration, so a message below the level costs a hash of the name
 *   and one load and is never formatted.  Text that is not valid UTF-8 is
 *   delivered with replacement characters.  Messages longer than
 *   a slot are cut with a visible "...[truncated]" marker.  When the ring
 *   is full the message is dropped and counted; a later warning on the
 *   "exitguard" logger says how many.  At exit everything queued is
 *   delivered before the attach gate closes; after that, messages go to
 *   stderr. */
EG_FUNC void eg_vlog(int level, const char *logger, const char *fmt,
                     va_list ap);
#if !defined(EG_BUILDING)
static inline void eg_log(int level, const char *logger, const char *fmt,
                          ...)
#  if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#  endif
    ;
#else
void eg_log(int level, const char *logger, const char *fmt, ...);
#endif

/* EG_LOG: eg_log for a logger name that is a string literal (checked at
 *   compile time), with the level kept at the call site: a message below
 *   the level costs two loads and a compare -- no hash of the name, no
 *   call -- and its arguments are not evaluated.  The copy follows every
 *   change of logging's configuration (a generation number the site
 *   compares with).  Thread: any thread, as eg_log.  Unlike eg_log's, the
 *   messages it skips are not counted in stats()["log_filtered"]: counting
 *   them would cost more than the check.  A statement, not an expression. */
#define EG_LOG(level, logger, ...)                                          \
    do {                                                                    \
        static eg_log_site eg__log_site_;                                   \
        if (eg__log_site_on(&eg__log_site_, (level), "" logger ""))          \
            eg_log((level), logger, __VA_ARGS__);                            \
    } while (0)

/* eg_log_enabled: 1 when a message of `level` to `logger` would be
 *   formatted (the cached level allows it, or is not known yet), else 0.
 *   Thread: any thread; one load on the fast path. */
EG_FUNC int eg_log_enabled(int level, const char *logger);

/* ------------------------------------------------------------------------
 * Events: waits that release the GIL and still honour Ctrl-C
 */

/* eg_event_new: a new, clear event.  Thread: any thread.
 * Returns NULL when out of memory (or out of file descriptors); no
 *   exception is set.  Pair: eg_event_free(). */
EG_FUNC eg_event *eg_event_new(void);

/* eg_event_free: free an event no thread is waiting on.  Thread: any.
 *   NULL is a no-op. */
EG_FUNC void eg_event_free(eg_event *ev);

/* eg_event_set: set the event, waking every waiter.  Thread: any thread,
 *   also a signal handler: async-signal-safe (an atomic exchange and, on
 *   the clear-to-set transition, one write(2) to an eventfd).
 * Returns 0, or -EINVAL for NULL. */
EG_FUNC int eg_event_set(eg_event *ev);

/* eg_event_clear: clear the event.  Thread: any thread; async-signal-safe.
 * Returns 0, or -EINVAL for NULL. */
EG_FUNC int eg_event_clear(eg_event *ev);

/* eg_event_is_set: 1 when set, 0 when clear (or NULL).  Thread: any;
 *   async-signal-safe. */
EG_FUNC int eg_event_is_set(const eg_event *ev);

/* The wait saw exitguard stopping in the calling thread's interpreter. */
#define EG_WAIT_STOPPING (-ESHUTDOWN)
/* A Python signal handler raised during the wait (KeyboardInterrupt): its
 * exception is set.  Return it to Python (NULL / -1). */
#define EG_WAIT_INTERRUPTED (-EINTR)

/* eg_event_wait: wait until the event is set.
 * Thread: attached (a Python thread, or a native one inside
 *   eg_gil_ensure).  Releases the GIL while blocked, in the shape of
 *   CPython's acquire_timed: on the main thread a signal wakes it, the
 *   Python signal handlers run with the GIL held, and an exception they
 *   raise (KeyboardInterrupt) ends the wait.  timeout_s < 0 waits forever;
 *   the remaining time is computed from an absolute deadline.
 * Returns 0 (set), -ETIMEDOUT, EG_WAIT_STOPPING (exitguard's phase 1 began
 *   in this interpreter: stop waiting, so exit is never blocked), -EINVAL
 *   (NULL event or NaN timeout), or EG_WAIT_INTERRUPTED with the signal
 *   handler's exception set -- the only return with an exception. */
EG_FUNC int eg_event_wait(eg_event *ev, double timeout_s);

/* eg_event_fileno: a file descriptor that is readable while the event is
 *   set (for select/poll/asyncio).  Thread: any.  -EINVAL for NULL. */
EG_FUNC int eg_event_fileno(const eg_event *ev);

/* ------------------------------------------------------------------------
 * Completion queues: callbacks from native threads into asyncio
 */

/* eg_cq_from_object: the queue behind an exitguard.CompletionQueue.
 * Thread: attached.  Returns a borrowed pointer, valid while the object
 *   lives (keep a reference, e.g. an eg_ref), or NULL with TypeError. */
EG_FUNC eg_cq *eg_cq_from_object(PyObject *obj);

/* eg_cq_post: queue fn(arg, cancelled) to run on the queue's owner.
 * Thread: any thread; no GIL, no lock (one CAS and one malloc); only the
 *   empty-to-non-empty transition writes the eventfd, so a burst costs one
 *   wake-up.
 * fn runs attached, on the thread that calls CompletionQueue.run() (the
 *   loop's, through attach()), with cancelled == 0 -- or with
 *   cancelled == 1 when the queue is closed or exitguard stops before it
 *   ran: free your native resources and do not touch the loop then.  Every
 *   accepted fn is called exactly once.
 * Returns 0 (fn now belongs to the queue), -ESHUTDOWN (the queue is closed:
 *   fn will not be called, arg is still yours), -EINVAL, -ENOMEM. */
EG_FUNC int eg_cq_post(eg_cq *q, void (*fn)(void *arg, int cancelled),
                       void *arg);

/* eg_cq_post_future: resolve an asyncio.Future held as `future` on the
 *   queue's owner.
 * Thread: any thread; as eg_cq_post.
 * On the owner, attached: build(arg, 0, &is_exception) returns a new
 *   reference -- the result, or with *is_exception = 1 an exception
 *   instance -- (NULL with an exception set: that exception is used), and
 *   the future gets set_result/set_exception unless it is already done.
 *   When cancelled (queue closed, exitguard stopping), build(arg, 1, NULL)
 *   is called to free arg (its return value is ignored) and the future is
 *   cancelled if its loop is still open.  The queue releases `future`
 *   (eg_ref_release) in every case.
 * Returns 0; -ESHUTDOWN (closed: nothing was taken over), -EINVAL,
 *   -ENOMEM. */
EG_FUNC int eg_cq_post_future(eg_cq *q, eg_ref *future,
                              PyObject *(*build)(void *arg, int cancelled,
                                                 int *is_exception),
                              void *arg);

/* ------------------------------------------------------------------------
 * Errors
 */

/* eg_strerror: a static, human-readable message for a negative errno
 *   returned by an eg_* function.  Thread: any thread; async-signal-safe. */
EG_FUNC const char *eg_strerror(int err);

/* ------------------------------------------------------------------------
 * Implementation for extensions: everything below forwards to the table.
 */
#if !defined(EG_BUILDING)

#if defined(EG_CAPI_SHARED) && !defined(EG_CAPI_DEFINE)
extern const eg_capi *eg__capi_table;
#elif defined(EG_CAPI_SHARED)
const eg_capi *eg__capi_table = NULL;
#else
static const eg_capi *eg__capi_table = NULL;
#endif

static inline int
eg_import(void)
{
    const eg_capi *t =
        (const eg_capi *)PyCapsule_Import("exitguard._C_API", 0);
    if (t == NULL) {
        return -1;
    }
    if (t->abi_version != EG_ABI_VERSION
            || t->size < (uint32_t)sizeof(eg_capi)) {
        PyErr_Format(PyExc_ImportError,
                     "exitguard C API mismatch: this extension was compiled "
                     "against exitguard " EG_VERSION_STRING " (ABI %d, table "
                     "of %d bytes), but the installed exitguard %d.%d.%d "
                     "provides ABI %d (table of %d bytes); rebuild the "
                     "extension against the installed exitguard",
                     (int)EG_ABI_VERSION, (int)sizeof(eg_capi),
                     (int)((t->version_hex >> 16) & 0xff),
                     (int)((t->version_hex >> 8) & 0xff),
                     (int)(t->version_hex & 0xff),
                     (int)t->abi_version, (int)t->size);
        return -1;
    }
    eg__capi_table = t;
    return 0;
}

/* A call made before eg_import() in this translation unit (a C file that
 * forgot it; a C++ object at namespace scope built when the library loads):
 * never a NULL dereference.  The first such call of the file says so on
 * stderr, naming eg_import() and the file; then the call fails the way its
 * contract fails -- an error code (-ENOSYS), NULL (with RuntimeError when
 * the caller is attached by contract), or nothing done for the void ones
 * (eg_decref/eg_ref_release: the reference is kept, not dropped wrongly). */
/* EG__SITE_INLINE: a wrapper whose caller exitguard records (eg_ref_new's
 * creation site, for the leak report) is inlined even at -O0/-Og, so that
 * the recorded return address lies in the caller, not in this header. */
#if defined(__GNUC__)
#  define EG__NOT_IMPORTED_ATTR __attribute__((cold, noinline, unused))
#  define EG__IMPORTED() __builtin_expect(eg__capi_table != NULL, 1)
#  define EG__SITE_INLINE inline __attribute__((always_inline))
#else
#  define EG__NOT_IMPORTED_ATTR
#  define EG__IMPORTED() (eg__capi_table != NULL)
#  define EG__SITE_INLINE inline
#endif
#if defined(__BASE_FILE__)
#  define EG__THIS_FILE __BASE_FILE__
#else
#  define EG__THIS_FILE "this extension"
#endif

static EG__NOT_IMPORTED_ATTR void
eg__not_imported(const char *fn)
{
    static int said;
    if (!said) {
        said = 1;
        fprintf(stderr, "exitguard: %s() called before eg_import() in %s: "
                "call eg_import() in the module's exec function, attached "
                "(each C file that calls eg_* functions needs it, or define "
                "EG_CAPI_SHARED everywhere and EG_CAPI_DEFINE in one)\n",
                fn, EG__THIS_FILE);
    }
}

/* The same, for functions that require an attached caller: also raise. */
static EG__NOT_IMPORTED_ATTR void
eg__not_imported_raise(const char *fn)
{
    eg__not_imported(fn);
    PyErr_Format(PyExc_RuntimeError, "%s() called before eg_import() in %s",
                 fn, EG__THIS_FILE);
}

static EG__SITE_INLINE eg_ref *eg_ref_new(PyObject *obj)
{
    if (!EG__IMPORTED()) { eg__not_imported_raise("eg_ref_new"); return NULL; }
    return eg__capi_table->ref_new(obj);
}
static inline PyObject *eg_ref_get(const eg_ref *ref)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_ref_get"); return NULL; }
    return eg__capi_table->ref_get(ref);
}
static inline void eg_ref_release(eg_ref *ref)
{
    if (!EG__IMPORTED()) { if (ref) eg__not_imported("eg_ref_release"); return; }
    eg__capi_table->ref_release(ref);
}
static inline void eg_decref(PyObject *obj)
{
    if (!EG__IMPORTED()) { if (obj) eg__not_imported("eg_decref"); return; }
    eg__capi_table->decref(obj);
}
static inline Py_ssize_t eg_flush(void)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_flush"); return 0; }
    return eg__capi_table->flush();
}
static inline eg_stopper *eg_stopper_add(void (*stop)(void *arg), void *arg)
{
    if (!EG__IMPORTED()) { eg__not_imported_raise("eg_stopper_add"); return NULL; }
    return eg__capi_table->stopper_add(stop, arg);
}
static inline int eg_stopper_after(eg_stopper *first, eg_stopper *then)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_stopper_after"); return -ENOSYS; }
    return eg__capi_table->stopper_after(first, then);
}
static inline void eg_stopper_remove(eg_stopper *s)
{
    if (!EG__IMPORTED()) { if (s) eg__not_imported("eg_stopper_remove"); return; }
    eg__capi_table->stopper_remove(s);
}
static inline const char *eg_strerror(int err)
{
    if (!EG__IMPORTED()) {
        return err == -ENOSYS ? "exitguard is not imported here (eg_import)"
                              : "unknown error (exitguard is not imported here)";
    }
    return eg__capi_table->strerror(err);
}
static inline eg_interp *eg_interp_current(void)
{
    if (!EG__IMPORTED()) { eg__not_imported_raise("eg_interp_current"); return NULL; }
    return eg__capi_table->interp_current();
}
static inline eg_interp *eg_interp_main(void)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_interp_main"); return NULL; }
    return eg__capi_table->interp_main();
}
static inline void eg_interp_close(eg_interp *h)
{
    if (!EG__IMPORTED()) { if (h) eg__not_imported("eg_interp_close"); return; }
    eg__capi_table->interp_close(h);
}
static inline int eg_gil_ensure(eg_interp *h, eg_gil *st)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_gil_ensure"); return -ENOSYS; }
    return eg__capi_table->gil_ensure(h, st);
}
static inline void eg_gil_release(eg_gil *st)
{
    if (!EG__IMPORTED()) { return; }   /* no eg_gil_ensure can have succeeded */
    eg__capi_table->gil_release(st);
}
static inline int eg_thread_start(eg_thread **out, const char *name,
                                  void (*run)(void *arg),
                                  void (*request_stop)(void *arg), void *arg)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_thread_start"); return -ENOSYS; }
    return eg__capi_table->thread_start(out, name, run, request_stop, arg);
}
static inline int eg_thread_join(eg_thread *t, double timeout_s)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_thread_join"); return -ENOSYS; }
    return eg__capi_table->thread_join(t, timeout_s);
}
static inline int eg_thread_stop_requested(void)
{
    /* Async-signal-safe: nothing to say from here. */
    return EG__IMPORTED() ? eg__capi_table->thread_stop_requested() : 0;
}
/* EG_LOG's check: 1 to go on to eg_log (enabled, level not known yet, or
 * exitguard not imported -- eg_log says so). */
static inline int eg__log_site_on(eg_log_site *site, int level,
                                  const char *logger)
{
    const eg_capi *t = eg__capi_table;
    if (t == NULL) {
        return 1;
    }
    unsigned long long v = __atomic_load_n(&site->eg__private,
                                           __ATOMIC_RELAXED);
    unsigned int gen = __atomic_load_n(t->log_generation, __ATOMIC_ACQUIRE);
    if ((unsigned int)(v >> 32) == gen) {
        return level >= (int)(unsigned int)v;
    }
    return t->log_site_enabled(site, level, logger);
}
static inline void eg_vlog(int level, const char *logger, const char *fmt,
                           va_list ap)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_log"); return; }
    eg__capi_table->vlog(level, logger, fmt, ap);
}
static inline void eg_log(int level, const char *logger, const char *fmt,
                          ...)
{
    va_list ap;
    va_start(ap, fmt);
    eg_vlog(level, logger, fmt, ap);
    va_end(ap);
}
static inline int eg_log_enabled(int level, const char *logger)
{
    return EG__IMPORTED() ? eg__capi_table->log_enabled(level, logger) : 0;
}
static inline eg_event *eg_event_new(void)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_event_new"); return NULL; }
    return eg__capi_table->event_new();
}
static inline void eg_event_free(eg_event *ev)
{
    if (!EG__IMPORTED()) { if (ev) eg__not_imported("eg_event_free"); return; }
    eg__capi_table->event_free(ev);
}
/* The event calls below are async-signal-safe: they fail silently. */
static inline int eg_event_set(eg_event *ev)
{ return EG__IMPORTED() ? eg__capi_table->event_set(ev) : -ENOSYS; }
static inline int eg_event_clear(eg_event *ev)
{ return EG__IMPORTED() ? eg__capi_table->event_clear(ev) : -ENOSYS; }
static inline int eg_event_is_set(const eg_event *ev)
{ return EG__IMPORTED() ? eg__capi_table->event_is_set(ev) : 0; }
static inline int eg_event_wait(eg_event *ev, double timeout_s)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_event_wait"); return -ENOSYS; }
    return eg__capi_table->event_wait(ev, timeout_s);
}
static inline int eg_event_fileno(const eg_event *ev)
{ return EG__IMPORTED() ? eg__capi_table->event_fileno(ev) : -ENOSYS; }
static inline eg_cq *eg_cq_from_object(PyObject *obj)
{
    if (!EG__IMPORTED()) { eg__not_imported_raise("eg_cq_from_object"); return NULL; }
    return eg__capi_table->cq_from_object(obj);
}
static inline int eg_cq_post(eg_cq *q, void (*fn)(void *arg, int cancelled),
                             void *arg)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_cq_post"); return -ENOSYS; }
    return eg__capi_table->cq_post(q, fn, arg);
}
static inline int eg_cq_post_future(eg_cq *q, eg_ref *future,
                                    PyObject *(*build)(void *arg,
                                                       int cancelled,
                                                       int *is_exception),
                                    void *arg)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_cq_post_future"); return -ENOSYS; }
    return eg__capi_table->cq_post_future(q, future, build, arg);
}
static inline int eg_thread_adopt(eg_thread **out, const char *name,
                                  void (*request_stop)(void *arg),
                                  int (*join)(void *arg, double timeout_s),
                                  void *arg)
{
    if (!EG__IMPORTED()) { eg__not_imported("eg_thread_adopt"); return -ENOSYS; }
    return eg__capi_table->thread_adopt(out, name, request_stop, join, arg);
}

#endif /* !EG_BUILDING */

#ifdef __cplusplus
}
#endif

#endif /* EXITGUARD_H */
