/*
 * gate.c -- the attach gate: native threads attach to an interpreter only
 * through it, and it closes before the interpreter can go away.
 *
 * CAUTION: the seat enter/leave and the entry bookkeeping run on threads
 * with no thread state; they use atomics, pthreads and raw malloc only.
 * CPython is touched only between a successful enter and the matching
 * leave, which is the whole point.
 *
 * DESIGN
 *
 * Each interpreter's gate is a door (door.h): a word with its state, and a
 * seat per thread that attaches -- the thread's own count of attaches.
 *
 *     OPEN --phase 2 begins--> CLOSING --nobody inside (or deadline)--> CLOSED
 *
 * Entering stores seat + 1 and then loads the word, and goes on only if it
 * reads OPEN; leaving stores seat - 1.  Closing is one RMW of the word, a
 * membarrier(2) (fence.h) and a count of the seats: the entrant either
 * reads CLOSING and backs out, or is counted (door.c, DESIGN, "Seats").  So
 * an attach costs no atomic read-modify-write -- three of them used to make
 * it ~20 ns slower than a kept PyGILState pair.  Phase 2 waits with the GIL
 * released (the threads inside may need it to finish) and at most
 * EXITGUARD_JOIN_TIMEOUT seconds.  A Py_IsFinalizing() check alone cannot
 * do this job: checking and then attaching is a race that finalization
 * wins now and then (pytorch#117762, PEP 788's rationale); the gate turns
 * it into a count that finalization waits for.
 *
 * The gate's invariant: the state only ever moves forward (OPEN, CLOSING,
 * CLOSED, each transition one atomic read-modify-write of the word), and a
 * thread is inside only if its seat's store came before its load of the
 * word read OPEN.  So once phase 2 has counted zero after CLOSING, no
 * thread is inside nor can get in, and phase 2 may delete thread states and
 * release objects.
 *
 * On CPython 3.15 the gate sits on PEP 788 (base/compat.h): the outermost
 * attach of a thread also takes a PyInterpreterGuard from a view of the
 * interpreter and holds it until the matching release, so CPython itself
 * will not start finalizing under it; phase 2 closes the guards of threads
 * still stuck inside at its deadline, because CPython would wait for them
 * for ever.  The gate keeps exitguard's semantics on top: refusal from phase
 * 2 on (not only from finalization), -ESHUTDOWN, never a hang.
 *
 * Thread states are cached per (OS thread, interpreter) -- creating one per
 * attach costs 4-8x the attach itself -- in entries (tstates.c) linked from
 * the thread (a thread-local list) and, while they hold a state, from the
 * interpreter's gate (under ts_lock).  An entry's life:
 *
 *     created by the thread's first attach to the interpreter
 *       |  main interpreter: the state is made once and kept between attaches
 *       |  subinterpreter:   made by the outermost attach, deleted (attached)
 *       |                    by the matching release -- a subinterpreter never
 *       |                    holds a state of a thread outside it (3.9-3.11
 *       |                    refuse to run code beside a second state, and
 *       |                    deleting a live thread's state from elsewhere
 *       |                    leaves its gilstate slot dangling, base/compat.h)
 *     thread exits --> dead: handed to the interpreter, never attaching (a
 *       |              thread must be able to end while another thread holds
 *       |              the GIL and joins it)
 *     reaped by the next thread attached to that interpreter (an attach,
 *       phase 2): PyThreadState_Clear + PyThreadState_Delete, then freed.
 *
 * A live thread's state of the main interpreter is left to CPython at exit;
 * after fork the child forgets every state but the forking thread's current
 * one (CPython freed them).
 *
 *   operation           | runs on              | concurrent with
 *   --------------------+----------------------+------------------------------
 *   seat enter / leave  | the seat's thread    | each other, close, pause
 *   gate close          | phase 2, attached    | enter (fails), leave
 *   entry link / unlink | owning thread        | reap, phase 2 walk (ts_lock)
 *   entry counts        | owner writes         | statistics sum (ts_lock)
 *   entry dies (exit)   | owning thread, no GIL| reap, phase 2 walk (ts_lock)
 *   reap                | attached to the interp | exits, other reaps (ts_lock)
 */
#include "core/gate.h"
#include "base/platform.h"
#include "base/fence.h"
#include "base/door.h"
#include "core/record.h"
#include "core/tstates.h"
#include "core/decref_drain.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <time.h>

struct eg_interp {
    eg__record *rec;
    eg__pyview *view;           /* PEP 788 view (3.15), else a dummy */
    uint64_t gen;               /* the record's life it was made in */
};

/* ---- The gate word ----------------------------------------------------- */

/* (Re-)create the lock of the thread-state lists. */
static void
eg__gate_init_locks(eg__gate *g)
{
    if (pthread_mutex_init(&g->ts_lock, NULL) != 0) {
        abort();
    }
}

void
eg__gate_init(eg__gate *g)
{
    memset(g, 0, sizeof(*g));
    eg__door_init(&g->door, 0);
    eg__gate_init_locks(g);
}

int
eg__gate_reusable(eg__gate *g)
{
    eg__mutex_lock(&g->ts_lock);
    int clean = g->entries == NULL && g->fork_orphans == NULL
        && atomic_load_explicit(&g->ndead, memory_order_relaxed) == 0;
    eg__mutex_unlock(&g->ts_lock);
    return clean && eg__door_state(&g->door) == EG__DOOR_CLOSED
        && eg__door_inside(&g->door) == 0 && eg__door_idle(&g->door);
}

uint64_t
eg__gate_attaches(eg__gate *g, uint64_t *guards)
{
    eg__mutex_lock(&g->ts_lock);
    uint64_t n = atomic_load_explicit(&g->attach_ok, memory_order_relaxed);
    uint64_t k = atomic_load_explicit(&g->guards, memory_order_relaxed);
    for (eg__tsentry *e = g->entries; e != NULL; e = e->rec_next) {
        n += atomic_load_explicit(&e->attaches, memory_order_relaxed);
        k += atomic_load_explicit(&e->guards, memory_order_relaxed);
    }
    eg__mutex_unlock(&g->ts_lock);
    *guards = k;
    return n;
}

void
eg__gate_reopen(eg__gate *g)
{
    atomic_store_explicit(&g->attach_ok, 0, memory_order_relaxed);
    atomic_store_explicit(&g->attach_refused, 0, memory_order_relaxed);
    atomic_store_explicit(&g->guards, 0, memory_order_relaxed);
    atomic_store_explicit(&g->reaped, 0, memory_order_relaxed);
    eg__door_reopen(&g->door);
}

void
eg__gate_pause(eg__gate *g)
{
    eg__door_pause(&g->door);
}

uint64_t
eg__gate_wait_empty(eg__gate *g, const struct timespec *deadline)
{
    return eg__door_wait_empty(&g->door, deadline);
}

void
eg__gate_resume(eg__gate *g)
{
    eg__door_resume(&g->door);
}

const char *
eg__gate_state_name(eg__gate *g)
{
    switch (eg__door_state(&g->door)) {
    case EG__DOOR_OPEN:    return "open";
    case EG__DOOR_CLOSING: return "closing";
    default:              return "closed";
    }
}

/* ---- Attach and release ------------------------------------------------------ */

/* The outermost attach through e: keep its PEP 788 guard until the
 * matching release.  Before 3.15 the "guard" is a token with nothing to
 * close, and nothing is stored. */
static inline void
eg__entry_hold_guard(eg__tsentry *e, eg__pyguard *guard)
{
#if EG__HAVE_PEP788
    /* Relaxed: only phase 2 reads it (under ts_lock), and only for a
     * thread stuck past the join timeout; the count is statistics. */
    atomic_store_explicit(&e->guard, guard, memory_order_relaxed);
    atomic_store_explicit(&e->guards,
                          atomic_load_explicit(&e->guards,
                                               memory_order_relaxed) + 1,
                          memory_order_relaxed);
#else
    (void)e;
    (void)guard;
#endif
}

/* The outermost release through e: close its guard, unless phase 2 closed
 * it already for a thread stuck past its deadline (the exchange decides
 * who closes it). */
static inline void
eg__entry_drop_guard(eg__tsentry *e)
{
#if EG__HAVE_PEP788
    eg__guard_close(atomic_exchange_explicit(&e->guard, NULL,
                                             memory_order_relaxed));
#else
    (void)e;
#endif
}

enum { EG__GIL_NESTED = 1, EG__GIL_ATTACHED = 2 };

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
    if (h != NULL) {
        return eg__gil_ensure_record(h->rec, h->view, h->gen, st);
    }
    eg__record *in = atomic_load_explicit(&eg__main_record,
                                          memory_order_acquire);
    if (in == NULL) {
        memset(st, 0, sizeof(*st));
        return -ESHUTDOWN;
    }
    return eg__gil_ensure_record(in, NULL, 0, st);
}

/* The calling thread's "abandoned at exit" flag, bound by thread.c for
 * the threads exitguard starts (NULL for every other thread): once set, the
 * thread may not attach again.  Read relaxed: the flag only ever goes 0 ->
 * 1, and a stale 0 lets one more attach through the gate, which is still
 * open or refuses it by itself. */
static _Thread_local const _Atomic int *eg__self_abandoned EG__TLS_IE;

void
eg__gate_bind_abandoned(const _Atomic int *flag)
{
    eg__self_abandoned = flag;
}


int
eg__gil_ensure_record(eg__record *in, eg__pyview *view, uint64_t gen,
                      eg_gil *st)
{
    memset(st, 0, sizeof(*st));
    eg__gate *g = &in->gate;

    PyThreadState *cur = eg__tstate_attached();
    if (cur != NULL && PyThreadState_GetInterpreter(cur)
            == atomic_load_explicit(&in->pyinterp, memory_order_relaxed)) {
        /* Already attached there: nothing to do, nothing to undo. */
        ST_MODE(st) = (void *)(uintptr_t)EG__GIL_NESTED;
        atomic_fetch_add_explicit(&g->attach_ok, 1, memory_order_relaxed);
        return 0;
    }
    if (eg__self_abandoned != NULL
            && atomic_load_explicit(eg__self_abandoned, memory_order_relaxed)) {
        goto refused;
    }
    /* Attached to another interpreter: step out of it first -- entering
     * may wait (a fork pauses the gate), and never while attached. */
    PyThreadState *prev = cur != NULL ? PyEval_SaveThread() : NULL;
    eg__tsentry *e = eg__tstates_entry(in);
    if (e == NULL) {
        goto nomem_restore;
    }
    /* Only this thread writes its seat: relaxed. */
    int outermost = atomic_load_explicit(&e->seat.inside,
                                         memory_order_relaxed) == 0;
    if (eg__door_enter_seated_sc(&g->door, &e->seat) < 0) {
        goto refused_restore;
    }
    /* Inside, the record cannot be handed to a new interpreter (that needs
     * its gate closed and empty), so what it says now stays true until we
     * leave.  Acquire: pairs with the reuser's store before it reopened
     * the gate.  A handle of an earlier life is refused. */
    if (gen != 0 && atomic_load_explicit(&in->generation,
                                         memory_order_acquire) != gen) {
        eg__door_leave_seated_sc(&g->door, &e->seat);
        goto refused_restore;
    }
    if (view == NULL) {
        view = in->view;
    }
    if (outermost) {
        /* The PEP 788 guard (3.15; the old finalizing check before): held
         * until the matching release, so CPython cannot begin finalizing
         * under this thread even if our phase 2 never runs. */
        eg__pyguard *guard = eg__guard_from_view(view);
        if (guard == NULL) {
            eg__door_leave_seated_sc(&g->door, &e->seat);
            goto refused_restore;
        }
        eg__entry_hold_guard(e, guard);
    }
    if (e->ts == NULL && eg__tstates_new_tstate(in, e) < 0) {
        if (outermost) {
            eg__entry_drop_guard(e);
        }
        eg__door_leave_seated_sc(&g->door, &e->seat);
        goto nomem_restore;
    }
    ST_PREV(st) = prev;
    PyEval_RestoreThread(e->ts);
    ST_REC(st) = in;
    ST_ENTRY(st) = e;
    ST_MODE(st) = (void *)(uintptr_t)EG__GIL_ATTACHED;
    /* Owner-written, summed by statistics (eg__gate_attaches): a store, not
     * a read-modify-write, on the hottest path there is. */
    atomic_store_explicit(&e->attaches,
                          atomic_load_explicit(&e->attaches,
                                               memory_order_relaxed) + 1,
                          memory_order_relaxed);
#if EG__FREE_THREADED
    if (in->noop != NULL) {
        /* Let this thread merge the objects it owns that other threads
         * released (see base/compat.h). */
        PyObject *r = PyObject_CallNoArgs(in->noop);
        if (r == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(r);
    }
#endif
    /* An exitguard entry point: delete the states of threads that exited,
     * and apply what is queued for this interpreter (the only way a
     * subinterpreter's queue drains between flushes). */
    eg__tstates_reap(in);
    eg__decref_maybe_drain(in);
    return 0;

nomem_restore:
    if (prev != NULL) {
        PyEval_RestoreThread(prev);
    }
    return -ENOMEM;

refused_restore:
    if (prev != NULL) {
        PyEval_RestoreThread(prev);
    }
refused:
    atomic_fetch_add_explicit(&g->attach_refused, 1, memory_order_relaxed);
    return -ESHUTDOWN;
}

void
eg_gil_release(eg_gil *st)
{
    if (st == NULL || (uintptr_t)ST_MODE(st) != EG__GIL_ATTACHED) {
        return;
    }
    eg__record *in = ST_REC(st);
    eg__tsentry *e = ST_ENTRY(st);
    eg__gate *g = &in->gate;
    /* Only this thread writes its seat: relaxed. */
    uint32_t depth = atomic_load_explicit(&e->seat.inside,
                                          memory_order_relaxed);
    if (depth == 1 && !in->is_main) {
        /* A subinterpreter keeps no state of a thread that is outside it:
         * 3.9-3.11 refuse to run code in an interpreter with a second
         * thread state, and only the owning thread can delete its state
         * without leaving its gilstate slot dangling (base/compat.h).  So the
         * outermost release deletes it, attached, like PyGILState_Release. */
        PyThreadState *ts = e->ts;
        eg__mutex_lock(&g->ts_lock);
        e->ts = NULL;
        eg__tstates_unlink(g, e);
        eg__mutex_unlock(&g->ts_lock);
        PyThreadState_Clear(ts);
        PyThreadState_DeleteCurrent();      /* detaches */
    }
    else {
        (void)PyEval_SaveThread();
    }
    if (depth == 1) {
        eg__entry_drop_guard(e);
    }
    ST_MODE(st) = NULL;
    /* Out of this gate before waiting for another interpreter's GIL: a
     * phase 2 of this one must not wait for that. */
    eg__door_leave_seated_sc(&g->door, &e->seat);
    if (ST_PREV(st) != NULL) {
        PyEval_RestoreThread((PyThreadState *)ST_PREV(st));
    }
}

/* ---- Phase 2 ------------------------------------------------------------------ */

uint64_t
eg__gate_shut(eg__record *in, const struct timespec *deadline)
{
    eg__gate *g = &in->gate;
    /* From here every enter fails; then wait for the ones inside to leave,
     * and close for good -- each step one atomic transition (door.c). */
    (void)eg__door_begin_close(&g->door);
    uint64_t inside = eg__door_wait_empty(&g->door, deadline);
    eg__door_finish_close(&g->door);
    if (inside != 0) {
        /* Threads stuck inside past the deadline keep their states.  On
         * 3.15 they also hold PEP 788 guards, for which CPython's
         * finalization would wait for ever: close those for them (their own
         * release then finds NULL).  They are parked if they ever try to
         * re-attach -- never let into a finalizing interpreter. */
        eg__mutex_lock(&g->ts_lock);
        for (eg__tsentry *e = g->entries; e != NULL; e = e->rec_next) {
            if (atomic_load_explicit(&e->seat.inside,
                                     memory_order_relaxed) > 0) {
                eg__guard_close(atomic_exchange_explicit(
                    &e->guard, NULL, memory_order_relaxed));
            }
        }
        eg__mutex_unlock(&g->ts_lock);
        fprintf(stderr, "exitguard: %llu thread(s) still inside the attach "
                "gate of interpreter %lld at the deadline; exit continues "
                "without waiting for them\n", (unsigned long long)inside,
                (long long)in->id);
    }
    return inside;
}

uint64_t
eg__gate_close(eg__record *in, double timeout_s)
{
    struct timespec deadline = eg__deadline(timeout_s);
    uint64_t inside;
    /* GIL released: the threads inside may need it to come out. */
    EG__BEGIN_WAIT
    inside = eg__gate_shut(in, &deadline);
    EG__END_WAIT

    /* Threads that exited since the last attach: delete their states now,
     * attached as we are, before CPython tears the interpreter down (a
     * subinterpreter with a leftover state aborts Py_EndInterpreter with
     * "not the last thread": Py_EndInterpreter, Python/pylifecycle.c).  A live thread's state
     * of the main interpreter is left to CPython, which deletes every other
     * thread state right after it sets the finalizing flag; a
     * subinterpreter keeps none (eg_gil_release). */
    eg__tstates_reap(in);
    return inside;
}

/* ---- fork ---------------------------------------------------------------------- */

/* pthread_atfork child, no Python API: the gate's lock and door are made
 * afresh, then the entries are reset (tstates.c). */
void
eg__gate_after_fork_child(eg__record *in)
{
    eg__gate *g = &in->gate;
    eg__gate_init_locks(g);
    /* A pause in progress is over; the seats of vanished threads are
     * forgotten with their entries, this thread's are put back by
     * eg__tstates_after_fork_child. */
    eg__door_init(&g->door, 0);
    eg__tstates_after_fork_child(in);
}

void
eg__gate_close_fork_orphans(eg__record *in)
{
    eg__gate *g = &in->gate;
    eg__mutex_lock(&g->ts_lock);
    eg__tsentry *e = g->fork_orphans;
    g->fork_orphans = NULL;
    eg__mutex_unlock(&g->ts_lock);
    while (e != NULL) {
        eg__tsentry *next = e->rec_next;
        eg__guard_close(atomic_exchange_explicit(&e->guard, NULL,
                                                 memory_order_relaxed));
        free(e);        /* its thread, and so every other pointer to it, is gone */
        e = next;
    }
}

/* ---- Interpreter handles ------------------------------------------------- */

eg_interp *
eg_interp_current(void)
{
    eg__record *in = eg__record_current();
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
    h->gen = atomic_load_explicit(&in->generation, memory_order_acquire);
    h->view = eg__view_current();
    if (h->view == NULL) {
        free(h);
        return NULL;
    }
    return h;
}

eg_interp *
eg_interp_main(void)
{
    eg__record *in = atomic_load_explicit(&eg__main_record,
                                          memory_order_acquire);
    if (in == NULL) {
        return NULL;
    }
    eg_interp *h = malloc(sizeof(*h));
    if (h == NULL) {
        return NULL;
    }
    h->rec = in;
    h->gen = 0;                    /* the main interpreter's record is its own */
    h->view = eg__view_main();     /* 3.15: NULL once main is gone */
    if (h->view == NULL) {
        free(h);
        return NULL;
    }
    return h;
}

void
eg_interp_close(eg_interp *h)
{
    if (h != NULL) {
        eg__view_close(h->view);
        free(h);
    }
}
