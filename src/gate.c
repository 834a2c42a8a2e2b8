/*
 * gate.c -- the attach gate: native threads attach to an interpreter only
 * through it, and it closes before the interpreter can go away.
 *
 * CAUTION: eg__gate_enter/leave and the entry bookkeeping run on threads
 * with no thread state; they use atomics, pthreads and raw malloc only.
 * CPython is touched only between a successful enter and the matching
 * leave, which is the whole point.
 *
 * DESIGN
 *
 * Each interpreter's gate is one 64-bit word: a state in the top two bits
 * and the number of threads inside below.
 *
 *     OPEN --phase 2 begins--> CLOSING --inside == 0 (or deadline)--> CLOSED
 *
 * Entering is a CAS that increments the count only while the state is OPEN,
 * so no thread can slip in once closing began; leaving decrements it and,
 * when the gate is closing and the count reaches zero, wakes phase 2.  Phase
 * 2 waits with the GIL released (the threads inside may need it to finish)
 * and at most EXITGUARD_JOIN_TIMEOUT seconds.  A Py_IsFinalizing() check
 * alone cannot do this job: checking and then attaching is a race that
 * finalization wins now and then (pytorch#117762, PEP 788's rationale); the
 * gate turns it into a count that finalization waits for.  This is the
 * guard PEP 788 gives CPython 3.15 (PyInterpreterGuard), built for 3.9+.
 * XXX: on 3.15 this could sit on PyInterpreterGuard/PyThreadState_Ensure;
 * no 3.15 interpreter is available to build and test that here yet.
 *
 * Thread states are cached per (OS thread, interpreter) -- creating one per
 * attach costs 4-8x the attach itself (bindings.md) -- in entries that are
 * linked both from the thread (thread-local list) and from the
 * interpreter's gate (under ts_lock).  An entry's thread state is deleted:
 *   - by its thread when the thread ends (pthread key destructor), through
 *     the gate: attach, PyThreadState_Clear, PyThreadState_DeleteCurrent;
 *   - by phase 2, after the gate closed, for every thread (a subinterpreter
 *     with a leftover thread state aborts Py_EndInterpreter with "not the
 *     last thread", cpython.md section 2);
 *   - never after fork: CPython already freed the other threads' states in
 *     the child, so the child forgets them.
 * Whoever takes the entry's `ts` under ts_lock deletes it; the other side
 * finds NULL.
 *
 *   operation          | runs on              | concurrent with
 *   -------------------+----------------------+------------------------------
 *   gate enter / leave | any thread           | each other, close
 *   gate close         | phase 2, attached    | enter (fails), leave
 *   entry create       | owning thread        | phase 2 walk (ts_lock)
 *   entry delete (exit)| owning thread, gated | phase 2 walk (ts_lock)
 */
#include "eg_internal.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <time.h>

struct eg__tsentry {
    eg__interp *rec;
    PyThreadState *ts;          /* under rec->gate.ts_lock; NULL: gone */
    int in_use;                 /* attached through it now (owner only) */
    struct eg__tsentry *tls_next;             /* the owning thread's */
    struct eg__tsentry *rec_prev, *rec_next;  /* under ts_lock */
};

struct eg_interp {
    eg__interp *rec;
};

/* ---- The gate word ----------------------------------------------------- */

/* (Re-)create the gate's locks; the condition variable waits on
 * CLOCK_MONOTONIC deadlines. */
static void
eg__gate_init_locks(eg__gate *g)
{
    pthread_condattr_t attr;
    if (pthread_mutex_init(&g->lock, NULL) != 0
            || pthread_mutex_init(&g->ts_lock, NULL) != 0
            || pthread_condattr_init(&attr) != 0
            || pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0
            || pthread_cond_init(&g->left, &attr) != 0) {
        abort();
    }
    pthread_condattr_destroy(&attr);
}

void
eg__gate_init(eg__gate *g)
{
    memset(g, 0, sizeof(*g));
    eg__gate_init_locks(g);
}

int
eg__gate_enter(eg__gate *g)
{
    uint64_t w = atomic_load_explicit(&g->word, memory_order_relaxed);
    do {
        if ((w >> EG_GATE_SHIFT) != EG_GATE_OPEN) {
            return -ESHUTDOWN;
        }
        /* Acquire on success: nothing this thread does inside is ordered
         * before the entry, so the closer that sees the count see us. */
    } while (!atomic_compare_exchange_weak_explicit(
                 &g->word, &w, w + 1,
                 memory_order_acquire, memory_order_relaxed));
    return 0;
}

void
eg__gate_leave(eg__gate *g)
{
    /* Release: everything done inside happens before phase 2 observes the
     * count fall (it loads the word with acquire). */
    uint64_t w = atomic_fetch_sub_explicit(&g->word, 1,
                                           memory_order_release) - 1;
    if ((w >> EG_GATE_SHIFT) != EG_GATE_OPEN && (w & EG_GATE_COUNT) == 0) {
        /* The closer checks the count under this mutex before it sleeps,
         * so taking it here cannot lose the wake-up. */
        eg__mutex_lock(&g->lock);
        pthread_cond_broadcast(&g->left);
        eg__mutex_unlock(&g->lock);
    }
}

const char *
eg__gate_state_name(eg__gate *g)
{
    switch (atomic_load(&g->word) >> EG_GATE_SHIFT) {
    case EG_GATE_OPEN:    return "open";
    case EG_GATE_CLOSING: return "closing";
    default:              return "closed";
    }
}

struct timespec
eg__deadline(double seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (seconds < 0 || seconds > 1e9) {
        seconds = 1e9;      /* "forever": thirty years */
    }
    double whole = floor(seconds);
    ts.tv_sec += (time_t)whole;
    ts.tv_nsec += (long)((seconds - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* ---- Thread-state cache ---------------------------------------------------- */

typedef struct {
    eg__tsentry *entries;
    int key_set;
} eg__tls_states;

static _Thread_local eg__tls_states eg__tls_ts;
static pthread_key_t eg__ts_key;
static pthread_once_t eg__ts_once = PTHREAD_ONCE_INIT;

static void
eg__unlink_entry(eg__gate *g, eg__tsentry *e)
{
    if (e->rec_prev) {
        e->rec_prev->rec_next = e->rec_next;
    }
    else if (g->entries == e) {
        g->entries = e->rec_next;
    }
    if (e->rec_next) {
        e->rec_next->rec_prev = e->rec_prev;
    }
    e->rec_prev = e->rec_next = NULL;
}

/* Thread exit: delete this thread's cached thread states, through the gate
 * (the interpreter may be stopping or gone: then phase 2 deleted them, or
 * they are leaked with the interpreter).  No thread state on entry. */
void
eg__tstates_release_self(void)
{
    eg__tsentry *e = eg__tls_ts.entries;
    eg__tls_ts.entries = NULL;
    while (e != NULL) {
        eg__tsentry *next = e->tls_next;
        eg__gate *g = &e->rec->gate;
        int entered = eg__gate_enter(g) == 0;
        if (entered && (Py_IsFinalizing()
                        || atomic_load(&e->rec->pyinterp) == NULL)) {
            /* An embedder finalized without atexit: leak, do not attach. */
            eg__gate_leave(g);
            entered = 0;
        }
        eg__mutex_lock(&g->ts_lock);
        PyThreadState *ts = entered ? e->ts : NULL;
        e->ts = NULL;
        eg__unlink_entry(g, e);
        eg__mutex_unlock(&g->ts_lock);
        if (ts != NULL) {
            PyEval_RestoreThread(ts);
            PyThreadState_Clear(ts);
            PyThreadState_DeleteCurrent();
        }
        if (entered) {
            eg__gate_leave(g);
        }
        free(e);
        e = next;
    }
}

/* Thread exit (pthread key destructor) of a thread exitguard did not
 * start: same as eg__tstates_release_self().  NB: by now other keys'
 * destructors may have run -- CPython's gilstate key among them -- so
 * threads exitguard owns release their states before returning instead
 * (a free-threaded debug allocator saw "called without holding the GIL"
 * here for the log forwarder). */
static void
eg__ts_destructor(void *unused)
{
    (void)unused;
    eg__tstates_release_self();
}

static void
eg__ts_key_create(void)
{
    if (pthread_key_create(&eg__ts_key, eg__ts_destructor) != 0) {
        abort();
    }
}

/* Inside the gate: this thread's entry for `in`, with a thread state.
 * NULL when out of memory. */
static eg__tsentry *
eg__entry_get(eg__interp *in)
{
    eg__tsentry *e;
    for (e = eg__tls_ts.entries; e != NULL; e = e->tls_next) {
        if (e->rec == in) {
            break;
        }
    }
    if (e == NULL) {
        e = calloc(1, sizeof(*e));
        if (e == NULL) {
            return NULL;
        }
        e->rec = in;
        if (!eg__tls_ts.key_set) {
            pthread_once(&eg__ts_once, eg__ts_key_create);
            (void)pthread_setspecific(eg__ts_key, &eg__tls_ts);
            eg__tls_ts.key_set = 1;
        }
        e->tls_next = eg__tls_ts.entries;
        eg__tls_ts.entries = e;
    }
    if (e->ts == NULL) {
        /* No GIL needed (PyThreadState_New takes the runtime's own lock);
         * the gate guarantees the interpreter is alive. */
        PyInterpreterState *pyinterp =
            atomic_load_explicit(&in->pyinterp, memory_order_acquire);
        PyThreadState *ts = pyinterp ? PyThreadState_New(pyinterp) : NULL;
        if (ts == NULL) {
            return NULL;
        }
        eg__gate *g = &in->gate;
        eg__mutex_lock(&g->ts_lock);
        e->ts = ts;
        e->rec_prev = NULL;
        e->rec_next = g->entries;
        if (g->entries) {
            g->entries->rec_prev = e;
        }
        g->entries = e;
        eg__mutex_unlock(&g->ts_lock);
    }
    return e;
}

/* ---- Attach and release ------------------------------------------------------ */

enum { EG_GIL_NESTED = 1, EG_GIL_ATTACHED = 2 };

#define ST_REC(st)   ((st)->eg__private[0])
#define ST_ENTRY(st) ((st)->eg__private[1])
#define ST_PREV(st)  ((st)->eg__private[2])
#define ST_MODE(st)  ((st)->eg__private[3])

int
eg_gil_ensure(eg_interp *h, eg_gil *st)
{
    if (st == NULL) {
        return -EINVAL;
    }
    memset(st, 0, sizeof(*st));
    eg__interp *in = h ? h->rec
        : atomic_load_explicit(&eg__main_record, memory_order_acquire);
    if (in == NULL) {
        return -ESHUTDOWN;
    }
    eg__gate *g = &in->gate;

    PyThreadState *cur = eg__tstate_attached();
    if (cur != NULL && PyThreadState_GetInterpreter(cur)
            == atomic_load_explicit(&in->pyinterp, memory_order_relaxed)) {
        /* Already attached there: nothing to do, nothing to undo. */
        ST_MODE(st) = (void *)(uintptr_t)EG_GIL_NESTED;
        atomic_fetch_add_explicit(&g->attach_ok, 1, memory_order_relaxed);
        return 0;
    }
    if (eg__thread_self_abandoned() || eg__gate_enter(g) < 0) {
        goto refused;
    }
    /* Belt and braces for embedders that finalize without running atexit
     * (so our phase 2 never closed the gate): racy on its own, but it only
     * ever turns an attach into a refusal. */
    if (Py_IsFinalizing()) {
        eg__gate_leave(g);
        goto refused;
    }
    eg__tsentry *e = eg__entry_get(in);
    if (e == NULL) {
        eg__gate_leave(g);
        return -ENOMEM;
    }
    if (cur != NULL) {
        /* Attached to another interpreter: step out of it first. */
        ST_PREV(st) = PyEval_SaveThread();
    }
    e->in_use++;
    PyEval_RestoreThread(e->ts);
    ST_REC(st) = in;
    ST_ENTRY(st) = e;
    ST_MODE(st) = (void *)(uintptr_t)EG_GIL_ATTACHED;
    atomic_fetch_add_explicit(&g->attach_ok, 1, memory_order_relaxed);
#if EG_FREE_THREADED
    if (in->noop != NULL) {
        /* Let this thread merge the objects it owns that other threads
         * released (see eg_compat.h). */
        PyObject *r = PyObject_CallNoArgs(in->noop);
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
    }
#endif
    /* An exitguard entry point: apply what is queued for this interpreter
     * (the only way a subinterpreter's queue drains between flushes). */
    eg__decref_maybe_drain(in);
    return 0;

refused:
    atomic_fetch_add_explicit(&g->attach_refused, 1, memory_order_relaxed);
    return -ESHUTDOWN;
}

void
eg_gil_release(eg_gil *st)
{
    if (st == NULL || (uintptr_t)ST_MODE(st) != EG_GIL_ATTACHED) {
        return;
    }
    eg__interp *in = ST_REC(st);
    eg__tsentry *e = ST_ENTRY(st);
    (void)PyEval_SaveThread();
    e->in_use--;
    if (ST_PREV(st) != NULL) {
        PyEval_RestoreThread((PyThreadState *)ST_PREV(st));
    }
    ST_MODE(st) = NULL;
    eg__gate_leave(&in->gate);
}

/* ---- Phase 2 ------------------------------------------------------------------ */

uint64_t
eg__gate_close(eg__interp *in, double timeout_s)
{
    eg__gate *g = &in->gate;
    /* seq_cst: every enter that has not incremented by now fails. */
    atomic_fetch_or_explicit(&g->word, EG_GATE_CLOSING << EG_GATE_SHIFT,
                             memory_order_seq_cst);
    uint64_t inside = atomic_load_explicit(&g->word, memory_order_acquire)
                      & EG_GATE_COUNT;
    if (inside != 0) {
        struct timespec deadline = eg__deadline(timeout_s);
        Py_BEGIN_ALLOW_THREADS
        eg__mutex_lock(&g->lock);
        while ((inside = atomic_load_explicit(&g->word, memory_order_acquire)
                         & EG_GATE_COUNT) != 0) {
            if (pthread_cond_timedwait(&g->left, &g->lock, &deadline)
                    == ETIMEDOUT) {
                inside = atomic_load(&g->word) & EG_GATE_COUNT;
                break;
            }
        }
        eg__mutex_unlock(&g->lock);
        Py_END_ALLOW_THREADS
    }
    atomic_fetch_and_explicit(&g->word, EG_GATE_COUNT, memory_order_relaxed);
    atomic_fetch_or_explicit(&g->word, EG_GATE_CLOSED << EG_GATE_SHIFT,
                             memory_order_release);

    /* Delete the cached thread states of a subinterpreter: Py_EndInterpreter
     * aborts with "not the last thread" while any exists.  No thread is
     * inside any more (unless a stuck one outlived the deadline: its state
     * may be in use, so it is left alone).  We are attached to this
     * interpreter, as PyThreadState_Clear needs.
     *
     * The main interpreter's are left to CPython, which deletes every other
     * thread state right after it sets the finalizing flag
     * (_PyThreadState_DeleteExcept): on 3.12 and 3.13 PyThreadState_Delete
     * of another thread's gilstate-bound state also clears the *calling*
     * thread's gilstate binding (unbind_gilstate_tstate; see gh-131012),
     * which the main thread still needs during finalization.  A
     * subinterpreter's ending re-binds the main thread's state when it
     * swaps back to it. */
    while (!in->is_main) {
        PyThreadState *ts = NULL;
        eg__mutex_lock(&g->ts_lock);
        for (eg__tsentry *e = g->entries; e != NULL; e = e->rec_next) {
            if (e->ts != NULL && (inside == 0 || e->in_use == 0)) {
                ts = e->ts;
                e->ts = NULL;
                eg__unlink_entry(g, e);
                break;
            }
        }
        eg__mutex_unlock(&g->ts_lock);
        if (ts == NULL) {
            break;
        }
        PyThreadState_Clear(ts);
        PyThreadState_Delete(ts);
    }
    if (inside != 0) {
        fprintf(stderr, "exitguard: %llu thread(s) still inside the attach "
                "gate of interpreter %lld after %.1f s; exit continues "
                "without waiting for them\n", (unsigned long long)inside,
                (long long)in->id, timeout_s);
    }
    return inside;
}

/* ---- fork ---------------------------------------------------------------------- */

/* pthread_atfork child, no Python API.  Only the forking thread survives.
 * CPython deleted every other thread state (and kept the forking thread's
 * current one), so every cached state is forgotten, not deleted -- except
 * one this thread is attached through right now, which CPython kept. */
void
eg__gate_after_fork_child(eg__interp *in)
{
    eg__gate *g = &in->gate;
    eg__gate_init_locks(g);
    uint64_t mine = 0;
    g->entries = NULL;
    for (eg__tsentry *e = eg__tls_ts.entries; e != NULL; e = e->tls_next) {
        if (e->rec != in) {
            continue;
        }
        mine += (uint64_t)e->in_use;
        if (e->in_use > 0 && e->ts != NULL) {
            e->rec_prev = NULL;
            e->rec_next = g->entries;
            if (g->entries) {
                g->entries->rec_prev = e;
            }
            g->entries = e;
        }
        else {
            e->ts = NULL;
        }
    }
    uint64_t state = atomic_load(&g->word) >> EG_GATE_SHIFT;
    atomic_store(&g->word, (state << EG_GATE_SHIFT) | mine);
}

/* ---- Interpreter handles ------------------------------------------------- */

eg_interp *
eg_interp_current(void)
{
    eg__interp *in = eg__interp_current();
    if (in == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "eg_interp_current: exitguard is not imported in "
                        "this interpreter");
        return NULL;
    }
    eg_interp *h = malloc(sizeof(*h));
    if (h == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    h->rec = in;
    return h;
}

eg_interp *
eg_interp_main(void)
{
    eg__interp *in = atomic_load_explicit(&eg__main_record,
                                          memory_order_acquire);
    if (in == NULL) {
        return NULL;
    }
    eg_interp *h = malloc(sizeof(*h));
    if (h != NULL) {
        h->rec = in;
    }
    return h;
}

void
eg_interp_close(eg_interp *h)
{
    free(h);
}
