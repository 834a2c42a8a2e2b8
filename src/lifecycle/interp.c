/*
 * interp.c -- per-interpreter records: creating them, finding the calling
 * thread's, and resetting them in a forked child.
 *
 * DESIGN
 *
 * Every interpreter that imports exitguard gets one eg__record record,
 * shared by all exitguard module objects of that interpreter and found
 * again through a process-wide list keyed by the interpreter (address and
 * ID; an address can be reused once an interpreter is freed, an ID cannot).
 * Records are never freed (core/record.h): a native thread may hold a
 * pointer into one forever.  But once an interpreter is gone and nothing of
 * it is left in its record -- no reference, queued decref, thread, stopper,
 * completion queue or thread state -- the next interpreter that imports
 * exitguard reuses the record (and its reference chunks and queue lanes),
 * under a new generation that stale handles fail; so a process that creates
 * and ends subinterpreters all day uses a bounded number of records.  The list and each record's `nmodules` are
 * protected by eg__records_lock; a record's other fields by their own locks
 * and atomics.
 *
 * Attached callers find their record through a one-entry thread-local cache
 * checked against the record's live interpreter pointer: a dead record has
 * pyinterp == NULL, so a stale cache entry never matches even when a new
 * interpreter reuses the old address.
 *
 * fork: os.fork() first runs the before-hook (eg__fork_prepare): every gate
 * is paused and, GIL released, the fork waits (at most
 * EXITGUARD_FORK_TIMEOUT seconds) until no native thread is inside CPython
 * -- a thread inside at fork time would leave the child a lock it held (the
 * free-threaded stop-the-world mutex, issue 12) or, on 3.15, a PEP 788 guard
 * its finalization waits for for ever.  Threads that try to attach meanwhile
 * wait, detached, until the parent's after-hook (eg__fork_parent) or the
 * child's reset resumes the gates.  pthread_atfork's child handler runs
 * before CPython's own PyOS_AfterFork_Child() and may only touch raw memory: it re-creates every
 * exitguard mutex (another thread may have held one at fork time, and that
 * thread is gone), marks subinterpreter records dead (CPython deletes every
 * subinterpreter in the child) and orphans the rings of the vanished
 * threads.  Python-level work for the child happens in the module's
 * os.register_at_fork(after_in_child=...) hook.
 */
#include "lifecycle/interp.h"
#include "base/platform.h"
#include "base/fence.h"
#include "core/record.h"
#include "core/decref.h"
#include "core/registry.h"
#include "core/gate.h"
#include "core/thread.h"
#include "core/stopper.h"
#include "core/completion.h"
#include "core/log.h"
#include "core/kicker.h"
#include "lifecycle/shutdown.h"

#include <fcntl.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#if EG__SUBINTERP_ANCHOR
typedef struct {
    PyInterpreterState *pyinterp;
    PyThreadState *ts;
} eg__anchor_job;

static void *
eg__anchor_main(void *arg)
{
    /* No GIL needed: PyThreadState_New takes the runtime's own lock. */
    eg__anchor_job *job = arg;
    job->ts = PyThreadState_New(job->pyinterp);
    return NULL;
}

/* Attached, a subinterpreter's module exec: its anchor thread state (see
 * base/compat.h).  Made on a thread that ends at once, so that it is nobody's
 * gilstate state: PyThreadState_New binds a new state to the gilstate slot
 * of a creating thread that has none, and deleting a state bound to the
 * deleting thread's own slot is fatal ("is still current").  NULL when it
 * cannot be made (the interpreter then simply has no anchor). */
static PyThreadState *
eg__new_anchor(PyInterpreterState *pyinterp)
{
    eg__anchor_job job = {pyinterp, NULL};
    pthread_t tid;
    if (pthread_create(&tid, NULL, eg__anchor_main, &job) != 0) {
        return NULL;
    }
    pthread_join(tid, NULL);     /* it takes no lock we hold, nor the GIL */
    if (job.ts != NULL) {
        eg__tstate_forget_gilstate(job.ts);   /* its maker has ended */
    }
    return job.ts;
}
#endif

/* Under eg__records_lock: may `in` serve a new interpreter?  Its own
 * interpreter is gone and fully stopped, and nothing of that life is left
 * that a thread could still reach it through: no reference slot handed out,
 * nothing queued or being drained, no stopper, thread or completion queue
 * registered, its gate closed with nobody inside and no thread state of
 * anyone.  (Stale handles are told apart by the generation.) */
static int
eg__record_reusable(eg__record *in)
{
    if (in->is_main
            || atomic_load_explicit(&in->pyinterp, memory_order_acquire)
               != NULL
            || atomic_load_explicit(&in->state, memory_order_acquire)
               != EG__STOPPED
            || in->anchor != NULL) {
        return 0;
    }
    eg__mutex_lock(&in->cq_lock);
    int no_cqs = in->cqs == NULL;
    eg__mutex_unlock(&in->cq_lock);
    return no_cqs && eg__registry_reusable(&in->refs)
        && eg__decref_reusable(in) && eg__stoppers_reusable(&in->stoppers)
        && eg__threads_reusable(&in->threads)
        && eg__gate_reusable(&in->gate);
}

/* Under eg__records_lock, attached to the new interpreter: give a reusable
 * record its next life.  The generation moves first and the gate reopens
 * last (a release store), so a thread that gets in sees the new life whole
 * and a handle of the old one fails its generation check. */
static void
eg__record_renew(eg__record *in, PyInterpreterState *pyinterp, int64_t id,
                 eg__pyview *view)
{
    atomic_fetch_add_explicit(&in->generation, 1, memory_order_seq_cst);
    eg__registry_reset(&in->refs);
    eg__decref_reset(in);
    eg__stoppers_reset(&in->stoppers);
    eg__threads_reset(&in->threads);
    uint64_t drained;
    while (read(in->stop_efd, &drained, sizeof(drained)) > 0) {
        /* phase 1 of the old life left the stop fd readable */
    }
    atomic_store_explicit(&in->phase_thread, 0, memory_order_relaxed);
    /* Nobody can read the old view now: the gate is closed and empty, and
     * internal attaches read the record's view only inside it. */
    eg__view_close(in->view);
    in->view = view;
    in->noop = NULL;      /* the old one belonged to the dead interpreter */
    in->id = id;
    in->nmodules = 1;
#if EG__SUBINTERP_ANCHOR
    in->anchor = eg__new_anchor(pyinterp);
#endif
    atomic_store_explicit(&in->state, EG__RUNNING, memory_order_relaxed);
    atomic_store_explicit(&in->pyinterp, pyinterp, memory_order_release);
    eg__gate_reopen(&in->gate);
}

eg__record *
eg__record_acquire(void)
{
    PyInterpreterState *pyinterp = PyInterpreterState_Get();
    int64_t id = PyInterpreterState_GetID(pyinterp);
    eg__record *in;
    /* Made before the lock (CPython is not called under our mutexes); a
     * second module of the same interpreter closes it again. */
    eg__pyview *view = eg__view_current();
    if (view == NULL) {
        return NULL;
    }

    eg__mutex_lock(&eg__records_lock);
    for (in = eg__records; in != NULL; in = in->next_record) {
        if (atomic_load_explicit(&in->pyinterp, memory_order_relaxed)
                == pyinterp && in->id == id) {
            in->nmodules++;
            eg__mutex_unlock(&eg__records_lock);
            eg__view_close(view);
            return in;
        }
    }
    for (in = eg__records; in != NULL; in = in->next_record) {
        if (eg__record_reusable(in)) {
            eg__record_renew(in, pyinterp, id, view);
            eg__mutex_unlock(&eg__records_lock);
            return in;
        }
    }
    in = aligned_alloc(EG__CACHELINE,
                       (sizeof(eg__record) + EG__CACHELINE - 1)
                       / EG__CACHELINE * EG__CACHELINE);
    if (in == NULL) {
        eg__mutex_unlock(&eg__records_lock);
        eg__view_close(view);
        PyErr_NoMemory();
        return NULL;
    }
    memset(in, 0, sizeof(*in));
    in->view = view;
    eg__decref_queue_init(&in->queue);
    eg__registry_init(&in->refs);
    eg__stoppers_init(&in->stoppers);
    eg__gate_init(&in->gate);
    eg__threads_init(&in->threads);
    in->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (in->stop_efd < 0 || pthread_mutex_init(&in->cq_lock, NULL) != 0) {
        abort();
    }
    atomic_init(&in->state, EG__RUNNING);
    atomic_init(&in->generation, 1);
    atomic_init(&in->pyinterp, pyinterp);
    in->id = id;
    in->is_main = (pyinterp == PyInterpreterState_Main());
#if EG__SUBINTERP_ANCHOR
    if (!in->is_main) {
        in->anchor = eg__new_anchor(pyinterp);
    }
#endif
    in->nmodules = 1;
    in->next_record = eg__records;
    eg__records = in;
    atomic_fetch_add_explicit(&eg__nrecords, 1, memory_order_relaxed);
    if (in->is_main) {
        /* Release: a native thread that loads the pointer (acquire) sees an
         * initialised record. */
        atomic_store_explicit(&eg__main_record, in, memory_order_release);
    }
    eg__mutex_unlock(&eg__records_lock);
    return in;
}

/* Attached: how many exitguard modules of `in`'s interpreter are alive. */
int
eg__record_modules(eg__record *in)
{
    eg__mutex_lock(&eg__records_lock);
    int n = in->nmodules;
    eg__mutex_unlock(&eg__records_lock);
    return n;
}

void
eg__record_release(eg__record *in)
{
    eg__mutex_lock(&eg__records_lock);
    if (--in->nmodules == 0) {
        /* The interpreter is going away (module free runs in its
         * teardown): this record never matches a lookup again.  Native
         * threads keep using it safely; after STOPPED they only count.
         * Once nothing of this life is left, a later interpreter may reuse
         * it (eg__record_reusable). */
        in->noop = NULL;          /* its interpreter frees it */
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

/* EXITGUARD_FORK_TIMEOUT: how long os.fork() waits for native threads to
 * leave CPython (seconds, default 2). */
static double eg__fork_timeout = 2.0;

/* The records list's head.  Records are only ever prepended and never
 * freed, and next_record never changes once linked, so the list can be
 * walked from a snapshot without the lock (and with the GIL released). */
static eg__record *
eg__records_snapshot(void)
{
    eg__mutex_lock(&eg__records_lock);
    eg__record *head = eg__records;
    eg__mutex_unlock(&eg__records_lock);
    return head;
}

void
eg__fork_prepare(void)
{
    eg__record *head = eg__records_snapshot();
    for (eg__record *in = head; in != NULL; in = in->next_record) {
        eg__gate_pause(&in->gate);
    }
    struct timespec deadline = eg__deadline(eg__fork_timeout);
    uint64_t inside = 0;
    Py_BEGIN_ALLOW_THREADS
    for (eg__record *in = head; in != NULL; in = in->next_record) {
        inside += eg__gate_wait_empty(&in->gate, &deadline);
    }
    Py_END_ALLOW_THREADS
    if (inside != 0) {
        fprintf(stderr, "exitguard: %llu native thread(s) still inside "
                "CPython after %.1f s (EXITGUARD_FORK_TIMEOUT); forking "
                "anyway\n", (unsigned long long)inside, eg__fork_timeout);
    }
}

void
eg__fork_parent(void)
{
    for (eg__record *in = eg__records_snapshot(); in != NULL;
         in = in->next_record) {
        eg__gate_resume(&in->gate);
    }
}

void
eg__shut_other_gates(eg__record *main_rec, double timeout_s)
{
    struct timespec deadline = eg__deadline(timeout_s);
    eg__record *head = eg__records_snapshot();
    Py_BEGIN_ALLOW_THREADS
    for (eg__record *in = head; in != NULL; in = in->next_record) {
        if (in != main_rec
                && atomic_load_explicit(&in->pyinterp,
                                        memory_order_acquire) != NULL) {
            (void)eg__gate_shut(in, &deadline);
        }
    }
    Py_END_ALLOW_THREADS
}

static void
eg__atfork_child(void)
{
    /* No Python API here: PyOS_AfterFork_Child() has not run yet. */
    if (pthread_mutex_init(&eg__records_lock, NULL) != 0) {
        abort();
    }
    eg__fence_process_init();     /* membarrier registration is per mm */
    eg__decref_process_init();
    eg__log_after_fork_child();
    eg__kicker_after_fork_child();
    /* The forking thread is the child's main thread now (CPython makes it
     * so in PyOS_AfterFork_Child). */
    eg__set_main_thread((unsigned long)pthread_self());
    for (eg__record *in = eg__records; in != NULL; in = in->next_record) {
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
            atomic_store_explicit(&in->state, EG__STOPPED,
                                  memory_order_relaxed);
            atomic_store_explicit(&in->pyinterp, NULL, memory_order_relaxed);
        }
    }
}

static void
eg__process_init_once(void)
{
    const char *t = getenv("EXITGUARD_FORK_TIMEOUT");
    if (t != NULL && *t) {
        char *end;
        double d = strtod(t, &end);
        if (*end == '\0' && d >= 0 && d <= 1e6) {
            eg__fork_timeout = d;
        }
        else {
            fprintf(stderr, "exitguard: invalid EXITGUARD_FORK_TIMEOUT '%s' "
                    "(expected seconds, 0 to 1e6); using %.1f\n", t,
                    eg__fork_timeout);
        }
    }
    eg__fence_process_init();     /* before any door or queue is used */
    eg__decref_process_init();
    eg__log_process_init();
    eg__shutdown_process_init();
    if (pthread_atfork(NULL, NULL, eg__atfork_child) != 0) {
        abort();
    }
}

void
eg__records_process_init(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, eg__process_init_once);
}
