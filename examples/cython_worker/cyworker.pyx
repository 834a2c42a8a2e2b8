# cython: language_level=3, freethreading_compatible=True
"""cyworker: a native worker thread written in Cython on exitguard's C API.

``Worker(callback, every=100)`` starts one native thread (eg_thread_start) that
takes Python objects handed over with ``feed(obj)`` -- each held as an eg_ref --
and drops them without the GIL (eg_ref_release).  Every ``every`` objects it
attaches with eg_gil_ensure() and calls ``callback(dropped)``; a refused attach
(-ESHUTDOWN: the interpreter is stopping) is counted and the call skipped, never
waited for.  At exit, exitguard's phase 1 asks the thread to stop and joins it
(GIL released); the thread drops whatever is still queued, and the callback,
before it ends, so every object fed is freed by exit and no reference is left
for exitguard's phase 2 to release.

Shared state lives in a C struct guarded by its own pthread mutex, never by
the GIL; the thread touches Python only inside eg_gil_ensure/eg_gil_release.

Which thread runs what: Worker methods -- the Python caller, attached;
_run -- the worker thread, without the GIL except inside the attach;
_request_stop -- exitguard's phase 1, without the GIL (must not block).
"""

cimport exitguard
from cpython.ref cimport PyObject
from libc.stdlib cimport calloc, free

exitguard.eg_import()            # ImportError on an exitguard ABI mismatch

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, const void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_signal(pthread_cond_t *c)


# One queued object: a singly linked list, oldest first.
cdef struct node:
    exitguard.eg_ref *ref
    node *next


# Everything the thread shares with Python, guarded by `lock`.
cdef struct shared:
    pthread_mutex_t lock
    pthread_cond_t wake
    node *head
    node *tail
    bint stop
    long fed, dropped, calls, refused
    long every
    exitguard.eg_ref *callback
    exitguard.eg_thread *thread


# CAUTION: _request_stop, _run and the part of _call_back before its attach run
# without a thread state: libc, pthreads and the exitguard functions declared
# nogil only -- no Python objects, no Py_DECREF (eg_ref_release queues it).

cdef void _request_stop(void *arg) noexcept nogil:
    cdef shared *s = <shared *>arg
    pthread_mutex_lock(&s.lock)
    s.stop = True
    pthread_cond_signal(&s.wake)
    pthread_mutex_unlock(&s.lock)


cdef void _invoke(object cb, long dropped) noexcept:
    # Attached.  An exception from the callback is reported on
    # sys.unraisablehook (Cython does that for a noexcept function) and the
    # worker goes on.
    cb(dropped)


cdef void _call_back(shared *s, long dropped) noexcept nogil:
    cdef exitguard.eg_gil st
    cdef PyObject *cb
    if exitguard.eg_gil_ensure(NULL, &st) != 0:
        pthread_mutex_lock(&s.lock)
        s.refused += 1                 # shutting down: skip the call
        pthread_mutex_unlock(&s.lock)
        return
    with gil:                          # attached already: this only nests
        cb = exitguard.eg_ref_get(s.callback)   # only this thread clears it
        if cb != NULL:
            _invoke(<object>cb, dropped)
    pthread_mutex_lock(&s.lock)
    s.calls += 1
    pthread_mutex_unlock(&s.lock)
    exitguard.eg_gil_release(&st)


cdef void _run(void *arg) noexcept nogil:
    cdef shared *s = <shared *>arg
    cdef node *n
    cdef exitguard.eg_ref *cb
    cdef long dropped
    while True:
        pthread_mutex_lock(&s.lock)
        while s.head == NULL and not s.stop:
            pthread_cond_wait(&s.wake, &s.lock)
        n = s.head
        if n == NULL:                  # stopping, and nothing left
            cb = s.callback            # nobody calls it any more: drop it
            s.callback = NULL          # now, in phase 1, not at exit
            pthread_mutex_unlock(&s.lock)
            exitguard.eg_ref_release(cb)
            return
        s.head = n.next
        if s.head == NULL:
            s.tail = NULL
        s.dropped += 1
        dropped = s.dropped
        pthread_mutex_unlock(&s.lock)
        exitguard.eg_ref_release(n.ref)   # no GIL: the decref is queued
        free(n)
        if dropped % s.every == 0 and not exitguard.eg_thread_stop_requested():
            _call_back(s, dropped)


cdef class Worker:
    cdef shared *s

    def __cinit__(self, callback, long every=100):
        if not callable(callback):
            raise TypeError("callback must be callable")
        if every < 1:
            raise ValueError("every must be >= 1")
        self.s = <shared *>calloc(1, sizeof(shared))
        if self.s == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.s.lock, NULL)
        pthread_cond_init(&self.s.wake, NULL)
        self.s.every = every
        self.s.callback = exitguard.eg_ref_new(callback)
        rc = exitguard.eg_thread_start(&self.s.thread, b"cyworker", _run, _request_stop, self.s)
        if rc != 0:
            raise RuntimeError("cyworker: cannot start the thread: %s"
                               % exitguard.eg_strerror(rc).decode())

    def feed(self, obj):
        """Hand obj over to the worker, which drops it without the GIL."""
        cdef exitguard.eg_ref *ref = exitguard.eg_ref_new(obj)   # raises in phase 2
        cdef node *n = <node *>calloc(1, sizeof(node))
        if n == NULL:
            exitguard.eg_ref_release(ref)
            raise MemoryError()
        n.ref = ref
        pthread_mutex_lock(&self.s.lock)
        if self.s.stop:
            pthread_mutex_unlock(&self.s.lock)
            exitguard.eg_ref_release(n.ref)
            free(n)
            raise RuntimeError("cyworker: the worker has stopped")
        if self.s.tail == NULL:
            self.s.head = n
        else:
            self.s.tail.next = n
        self.s.tail = n
        self.s.fed += 1
        pthread_cond_signal(&self.s.wake)
        pthread_mutex_unlock(&self.s.lock)

    def stats(self):
        pthread_mutex_lock(&self.s.lock)
        d = dict(fed=self.s.fed, dropped=self.s.dropped, calls=self.s.calls,
                 refused=self.s.refused, stopped=bool(self.s.stop))
        pthread_mutex_unlock(&self.s.lock)
        return d

    def __dealloc__(self):
        if self.s == NULL:
            return
        if self.s.thread != NULL:
            _request_stop(self.s)
            exitguard.eg_thread_join(self.s.thread, -1.0)   # releases the GIL while it waits
        exitguard.eg_ref_release(self.s.callback)
        pthread_cond_destroy(&self.s.wake)
        pthread_mutex_destroy(&self.s.lock)
        free(self.s)
