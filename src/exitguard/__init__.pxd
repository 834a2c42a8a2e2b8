# exitguard's C API for Cython: `cimport exitguard` (or `from exitguard cimport ...`).
#
# The declarations of include/exitguard.h, with Cython's markers set from each
# function's contract (docs/api.md):
#
#   nogil         callable from any thread, with or without the GIL -- also in a
#                 `nogil` function running on a thread Python never saw;
#   no nogil      attached only: the call needs the GIL;
#   except NULL / except -1 / except? -1
#                 the function reports failure with a Python exception set;
#   noexcept      it never sets one: failures are negative errno values
#                 (-ESHUTDOWN, -ENOMEM, ...) that you check, eg_strerror() names.
#
# Build: the C compiler needs exitguard's include folder,
#   Extension(..., include_dirs=[exitguard.get_include()])
# and the module must call eg_import() once at import, before any other eg_*
# function (it raises ImportError on an ABI mismatch, naming both versions):
#
#   cimport exitguard
#   exitguard.eg_import()
#
# Callbacks that exitguard calls from its own threads are declared
# `noexcept nogil`: they run without the GIL and must not raise.  A `with gil:`
# block is still plain PyGILState_Ensure and has no shutdown protection: in a
# native thread attach with eg_gil_ensure() first, and use `with gil:` only
# inside that attach, where it nests and costs nothing.

from cpython.ref cimport PyObject

cdef extern from "exitguard.h":
    # The release and the capsule ABI of these headers (exitguard/version.h).
    enum:
        EG_VERSION_MAJOR
        EG_VERSION_MINOR
        EG_VERSION_PATCH
        EG_VERSION_HEX
        EG_ABI_VERSION
    const char *EG_VERSION_STRING

    # Opaque handles.
    ctypedef struct eg_ref:
        pass
    ctypedef struct eg_stopper:
        pass
    ctypedef struct eg_interp:
        pass
    ctypedef struct eg_thread:
        pass
    ctypedef struct eg_event:
        pass
    ctypedef struct eg_cq:
        pass

    # The state of one eg_gil_ensure(); the caller provides it (a local).
    ctypedef struct eg_gil:
        pass

    # Importing the API: attached, once per module (per interpreter).
    int eg_import() except -1

    # Native references.
    eg_ref *eg_ref_new(object obj) except NULL                  # attached
    PyObject *eg_ref_get(const eg_ref *ref) noexcept            # attached; borrowed, NULL once released at exit
    void eg_ref_release(eg_ref *ref) noexcept nogil             # any thread, any time

    # Deferred decrefs.
    void eg_decref(PyObject *obj) noexcept nogil                # any thread; queued when not attached
    Py_ssize_t eg_flush() noexcept                              # attached; may run finalizers

    # Exit stoppers: stop(arg) runs attached in phase 1 (release the GIL to join).
    eg_stopper *eg_stopper_add(void (*stop)(void *arg) noexcept, void *arg) except NULL   # attached
    int eg_stopper_after(eg_stopper *first, eg_stopper *then) noexcept nogil
    void eg_stopper_remove(eg_stopper *s) noexcept nogil

    # Interpreters and the attach gate.
    eg_interp *eg_interp_current() except NULL                  # attached
    eg_interp *eg_interp_main() noexcept nogil                  # NULL, no exception
    void eg_interp_close(eg_interp *h) noexcept nogil
    int eg_gil_ensure(eg_interp *h, eg_gil *st) noexcept nogil  # 0, or -ESHUTDOWN / -ENOMEM
    void eg_gil_release(eg_gil *st) noexcept nogil

    # Native threads: run(arg) runs without the GIL; request_stop(arg) is called
    # without the GIL in phase 1 and must not block.
    int eg_thread_start(eg_thread **out, const char *name,
                        void (*run)(void *arg) noexcept nogil,
                        void (*request_stop)(void *arg) noexcept nogil,
                        void *arg) noexcept                     # attached
    int eg_thread_join(eg_thread *t, double timeout_s) noexcept nogil
    int eg_thread_stop_requested() noexcept nogil
    int eg_thread_adopt(eg_thread **out, const char *name,
                        void (*request_stop)(void *arg) noexcept nogil,
                        int (*join)(void *arg, double timeout_s) noexcept nogil,
                        void *arg) noexcept                     # attached

    # Logging into Python's logging from any thread; `logger` must be a string
    # literal (its address keys a level cache).
    enum:
        EG_LOG_DEBUG
        EG_LOG_INFO
        EG_LOG_WARNING
        EG_LOG_ERROR
        EG_LOG_CRITICAL
    void eg_log(int level, const char *logger, const char *fmt, ...) noexcept nogil
    int eg_log_enabled(int level, const char *logger) noexcept nogil

    # Events: set/clear from any thread (also a signal handler); wait attached.
    enum:
        EG_WAIT_STOPPING
    eg_event *eg_event_new() noexcept nogil
    void eg_event_free(eg_event *ev) noexcept nogil
    int eg_event_set(eg_event *ev) noexcept nogil
    int eg_event_clear(eg_event *ev) noexcept nogil
    int eg_event_is_set(const eg_event *ev) noexcept nogil
    int eg_event_wait(eg_event *ev, double timeout_s) except? -1   # attached; -1: the exception
    int eg_event_fileno(const eg_event *ev) noexcept nogil

    # Completion queues (exitguard.CompletionQueue): post from any thread; the
    # callbacks run attached on the queue's owner.
    eg_cq *eg_cq_from_object(object obj) except NULL            # attached
    int eg_cq_post(eg_cq *q, void (*fn)(void *arg, int cancelled) noexcept,
                   void *arg) noexcept nogil
    int eg_cq_post_future(eg_cq *q, eg_ref *future,
                          PyObject *(*build)(void *arg, int cancelled, int *is_exception) noexcept,
                          void *arg) noexcept nogil

    # Errors.
    const char *eg_strerror(int err) noexcept nogil
