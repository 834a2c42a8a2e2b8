/*
 * interp.c -- per-interpreter records: creating them, finding the calling
 * thread's, and resetting them in a forked child.
 *
 * DESIGN
 *
 * Every interpreter that imports exitguard gets one eg__interp record,
 * shared by all exitguard module objects of that interpreter and found
 * again through a process-wide list keyed by the interpreter (address and
 * ID; an address can be reused once an interpreter is freed, an ID cannot).
 * Records are never freed (see eg_internal.h): a native thread may hold a
 * pointer into one forever.  The list and each record's `nmodules` are
 * protected by eg__records_lock; a record's other fields by their own locks
 * and atomics.
 *
 * Attached callers find their record through a one-entry thread-local cache
 * checked against the record's live interpreter pointer: a dead record has
 * pyinterp == NULL, so a stale cache entry never matches even when a new
 * interpreter reuses the old address.
 *
 * fork: pthread_atfork's child handler runs before CPython's own
 * PyOS_AfterFork_Child() and may only touch raw memory: it re-creates every
 * exitguard mutex (another thread may have held one at fork time, and that
 * thread is gone), marks subinterpreter records dead (CPython deletes every
 * subinterpreter in the child) and orphans the rings of the vanished
 * threads.  Python-level work for the child happens in the module's
 * os.register_at_fork(after_in_child=...) hook.
 */
#include "eg_internal.h"

#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

_Atomic(eg__interp *) eg__main_record;

/* pthread_self() of the main interpreter's main thread, or 0. */
static _Atomic(unsigned long) eg__main_ident;

void
eg__set_main_thread(unsigned long ident)
{
    atomic_store(&eg__main_ident, ident);
}

int
eg__on_main_thread(void)
{
    return atomic_load(&eg__main_ident) == (unsigned long)pthread_self();
}

int
eg__is_phase_thread(eg__interp *in)
{
    return atomic_load(&in->phase_thread) == (unsigned long)pthread_self();
}

static pthread_mutex_t eg__records_lock = PTHREAD_MUTEX_INITIALIZER;
static eg__interp *eg__records;     /* under eg__records_lock */

/* Attached thread's cache: the record of the interpreter it last asked
 * about.  Never dangling (records are immortal). */
static _Thread_local eg__interp *eg__cached_record;

eg__interp *
eg__interp_current(void)
{
    PyInterpreterState *pyinterp = PyInterpreterState_Get();
    eg__interp *in = eg__cached_record;
    if (EG_LIKELY(in != NULL
                  && atomic_load_explicit(&in->pyinterp,
                                          memory_order_acquire) == pyinterp)) {
        return in;
    }
    int64_t id = PyInterpreterState_GetID(pyinterp);
    eg__mutex_lock(&eg__records_lock);
    for (in = eg__records; in != NULL; in = in->next_record) {
        if (atomic_load_explicit(&in->pyinterp, memory_order_relaxed)
                == pyinterp && in->id == id) {
            break;
        }
    }
    eg__mutex_unlock(&eg__records_lock);
    if (in != NULL) {
        eg__cached_record = in;
    }
    return in;
}

eg__interp *
eg__interp_acquire(void)
{
    PyInterpreterState *pyinterp = PyInterpreterState_Get();
    int64_t id = PyInterpreterState_GetID(pyinterp);
    eg__interp *in;

    eg__mutex_lock(&eg__records_lock);
    for (in = eg__records; in != NULL; in = in->next_record) {
        if (atomic_load_explicit(&in->pyinterp, memory_order_relaxed)
                == pyinterp && in->id == id) {
            in->nmodules++;
            eg__mutex_unlock(&eg__records_lock);
            return in;
        }
    }
    in = aligned_alloc(EG_CACHELINE,
                       (sizeof(eg__interp) + EG_CACHELINE - 1)
                       / EG_CACHELINE * EG_CACHELINE);
    if (in == NULL) {
        eg__mutex_unlock(&eg__records_lock);
        PyErr_NoMemory();
        return NULL;
    }
    memset(in, 0, sizeof(*in));
    eg__decref_queue_init(&in->queue);
    eg__registry_init(&in->refs);
    eg__stoppers_init(&in->stoppers);
    eg__gate_init(&in->gate);
    eg__threads_init(&in->threads);
    in->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (in->stop_efd < 0 || pthread_mutex_init(&in->cq_lock, NULL) != 0) {
        abort();
    }
    atomic_init(&in->state, EG_RUNNING);
    atomic_init(&in->pyinterp, pyinterp);
    in->id = id;
    in->is_main = (pyinterp == PyInterpreterState_Main());
    in->nmodules = 1;
    in->next_record = eg__records;
    eg__records = in;
    if (in->is_main) {
        /* Release: a native thread that loads the pointer (acquire) sees an
         * initialised record. */
        atomic_store_explicit(&eg__main_record, in, memory_order_release);
    }
    eg__mutex_unlock(&eg__records_lock);
    return in;
}

eg__interp *
eg__interps_first(void)
{
    eg__mutex_lock(&eg__records_lock);
    eg__interp *in = eg__records;
    eg__mutex_unlock(&eg__records_lock);
    return in;
}

void
eg__interp_release(eg__interp *in)
{
    eg__mutex_lock(&eg__records_lock);
    if (--in->nmodules == 0) {
        /* The interpreter is going away (module free runs in its
         * teardown): this record never matches a lookup again.  Native
         * threads keep using it safely; after STOPPED they only count. */
        atomic_store_explicit(&in->pyinterp, NULL, memory_order_release);
    }
    eg__mutex_unlock(&eg__records_lock);
}

/* ---- fork ---------------------------------------------------------------- */

/* pthread_atfork prepare/parent: exitguard takes no locks around fork.
 * Holding eg__records_lock across fork would deadlock against a thread
 * that needs the GIL the forking thread holds; the child re-creates the
 * locks instead (CPython does the same with its own, _PyRuntimeState_
 * ReInitThreads). */
void
eg__reopen_eventfd(int fd)
{
    if (fd < 0) {
        return;
    }
    int fresh = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fresh >= 0) {
        if (fresh != fd) {
            (void)dup3(fresh, fd, O_CLOEXEC);
            close(fresh);
        }
    }
}

static void
eg__atfork_child(void)
{
    /* No Python API here: PyOS_AfterFork_Child() has not run yet. */
    if (pthread_mutex_init(&eg__records_lock, NULL) != 0) {
        abort();
    }
    eg__decref_process_init();    /* membarrier registration is per mm */
    eg__log_after_fork_child();
    eg__decref_kicker_after_fork_child();
    /* The forking thread is the child's main thread now (CPython makes it
     * so in PyOS_AfterFork_Child). */
    atomic_store(&eg__main_ident, (unsigned long)pthread_self());
    for (eg__interp *in = eg__records; in != NULL; in = in->next_record) {
        eg__decref_after_fork_child(in);
        eg__registry_after_fork_child(&in->refs);
        eg__stoppers_after_fork_child(&in->stoppers);
        eg__gate_after_fork_child(in);
        eg__cq_after_fork_child(in);
        /* The stop fd is readable in a stopping parent: not ours. */
        eg__reopen_eventfd(in->stop_efd);
        eg__threads_after_fork_child(&in->threads);
        if (!in->is_main
                && atomic_load_explicit(&in->pyinterp,
                                        memory_order_relaxed) != NULL) {
            /* CPython deletes every subinterpreter in the child
             * (_PyInterpreterState_DeleteExceptMain): leak what their
             * queues and registries hold, never touch it. */
            atomic_store_explicit(&in->state, EG_STOPPED,
                                  memory_order_relaxed);
            atomic_store_explicit(&in->pyinterp, NULL, memory_order_relaxed);
        }
    }
}

static void
eg__process_init_once(void)
{
    eg__decref_process_init();
    eg__log_process_init();
    eg__shutdown_process_init();
    if (pthread_atfork(NULL, NULL, eg__atfork_child) != 0) {
        abort();
    }
}

void
eg__interps_process_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, eg__process_init_once);
}
