/*
 * tstates.c -- the thread-state cache: the thread states the attach gate
 * (gate.c) restores, kept per (OS thread, interpreter) in entries, so that
 * an attach does not create one each time (that costs 4-8x the attach).
 *
 * CAUTION: all of this but eg__tstates_reap may run on a thread with no
 * thread state -- a thread about to attach, a thread exiting (from the
 * thread-exit hook too, base/thread_exit.c), the fork child -- and uses
 * atomics, pthreads and raw malloc only; PyThreadState_New needs no GIL.  eg__tstates_reap
 * runs attached to the states' interpreter, as PyThreadState_Clear
 * requires.
 *
 * An entry is linked from its thread (a thread-local list, handed to the
 * interpreters at thread exit) and, while it holds a state, from its
 * interpreter's gate (g->entries, under g->ts_lock); an exited thread's
 * entry stays there, dead, until a thread attached to that interpreter
 * reaps it.  The gate's attach, release and phase 2 read and write an
 * entry's seat, state, counts and guard themselves; calls go from gate.c
 * to this file only, never back.  The entry's life and which operations
 * run concurrently: gate.c, DESIGN.
 */
#include "core/tstates.h"
#include "base/door.h"
#include "base/thread_exit.h"
#include "core/record.h"

#include <errno.h>

/* ---- Entries --------------------------------------------------------------- */

_Thread_local eg__tsentry *eg__tls_entries EG__TLS_IE;

/* Under ts_lock: move e's counts into the gate's (statistics sum the
 * listed entries' counts and the gate's). */
static void
eg__retire_counts(eg__gate *g, eg__tsentry *e)
{
    /* Relaxed: statistics; e's owner is the caller, or gone. */
    atomic_fetch_add_explicit(&g->attach_ok,
                              atomic_load_explicit(&e->attaches,
                                                   memory_order_relaxed),
                              memory_order_relaxed);
    atomic_fetch_add_explicit(&g->guards,
                              atomic_load_explicit(&e->guards,
                                                   memory_order_relaxed),
                              memory_order_relaxed);
    atomic_store_explicit(&e->attaches, 0, memory_order_relaxed);
    atomic_store_explicit(&e->guards, 0, memory_order_relaxed);
}

/* Under ts_lock: take e out of the gate's list, its counts into the
 * gate's. */
void
eg__tstates_unlink(eg__gate *g, eg__tsentry *e)
{
    eg__retire_counts(g, e);
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

/* Under ts_lock: put e at the head of the gate's list. */
static void
eg__link_entry(eg__gate *g, eg__tsentry *e)
{
    e->rec_prev = NULL;
    e->rec_next = g->entries;
    if (g->entries) {
        g->entries->rec_prev = e;
    }
    g->entries = e;
}

/* Thread exit: hand this thread's cached thread states to their
 * interpreters.  CAUTION: no thread state, and none is taken -- a thread
 * that ends must not need the GIL (an extension's close() often joins its
 * threads while holding it), and by the time key destructors run, other
 * keys' values, CPython's gilstate slot among them, may already be gone
 * (3.14 debug builds assert on exactly that).  The states are deleted later
 * by whoever is attached to their interpreter (eg__tstates_reap). */
void
eg__tstates_release_self(void)
{
    eg__tsentry *e = eg__tls_entries;
    eg__tls_entries = NULL;
    while (e != NULL) {
        eg__tsentry *next = e->tls_next;
        eg__gate *g = &e->rec->gate;
        int free_it = 1, still_inside = 0;
        eg__mutex_lock(&g->ts_lock);
        if (e->ts != NULL) {
            if (atomic_load_explicit(&e->seat.inside,
                                     memory_order_relaxed) > 0) {
                /* Exited between eg_gil_ensure and eg_gil_release: the
                 * state may still be active; it is never touched again. */
                eg__tstates_unlink(g, e);
                still_inside = 1;
            }
            else {
                e->dead = 1;
                free_it = 0;
                /* Relaxed: the entry itself is handed over under ts_lock;
                 * the count only tells attached threads to look. */
                atomic_fetch_add_explicit(&g->ndead, 1, memory_order_relaxed);
            }
        }
        eg__mutex_unlock(&g->ts_lock);
        if (still_inside) {
            fprintf(stderr, "exitguard: a thread exited between "
                    "eg_gil_ensure() and eg_gil_release() (interpreter "
                    "%lld); its thread state is leaked\n",
                    (long long)e->rec->id);
        }
        if (free_it) {
            /* Still inside: its count stays on the door (door.h). */
            eg__door_seat_remove(&g->door, &e->seat);
            free(e);
        }
        e = next;
    }
}

void
eg__tstates_reap(eg__record *in)
{
    eg__gate *g = &in->gate;
    /* Relaxed: a stale 0 only leaves the work to the next attach. */
    if (EG__LIKELY(atomic_load_explicit(&g->ndead, memory_order_relaxed)
                  == 0)) {
        return;
    }
    for (;;) {
        eg__tsentry *e;
        eg__mutex_lock(&g->ts_lock);
        for (e = g->entries; e != NULL; e = e->rec_next) {
            if (e->dead) {
                eg__tstates_unlink(g, e);
                atomic_fetch_sub_explicit(&g->ndead, 1, memory_order_relaxed);
                break;
            }
        }
        eg__mutex_unlock(&g->ts_lock);
        if (e == NULL) {
            return;
        }
        /* The owner has exited: its gilstate slot is gone with it (see
         * base/compat.h), and we are attached to the state's interpreter, as
         * PyThreadState_Clear requires.  Clearing may run finalizers. */
        eg__tstate_forget_gilstate(e->ts);
        PyThreadState_Clear(e->ts);
        PyThreadState_Delete(e->ts);
        eg__door_seat_remove(&g->door, &e->seat);
        free(e);
        atomic_fetch_add_explicit(&g->reaped, 1, memory_order_relaxed);
    }
}


/* eg__tstates_entry's slow path: this thread's entry for `in`, made with
 * no thread state yet and its seat in the gate's door (an entry of a
 * closed gate is harmless: records live for ever, and a reused one takes it
 * up again).  NULL when out of memory. */
EG__NOINLINE eg__tsentry *
eg__tstates_entry_new(eg__record *in)
{
    eg__tsentry *e = calloc(1, sizeof(*e));
    if (e == NULL) {
        return NULL;
    }
    e->rec = in;
    /* Threads exitguard starts hand their states over before they return;
     * every other thread at its exit (thread_exit.c).  Armed once per
     * thread; should pthread_setspecific fail, this thread's states are
     * deleted with their interpreter instead (as before). */
    (void)eg__thread_exit_arm(EG__EXIT_TSTATES, eg__tstates_release_self);
    e->tls_next = eg__tls_entries;
    eg__tls_entries = e;
    eg__door_seat_add(&in->gate.door, &e->seat);
    return e;
}

/* Inside the gate, guard held, not attached: give e a new thread state of
 * its interpreter and list it in the gate.  Returns 0 or -ENOMEM. */
int
eg__tstates_new_tstate(eg__record *in, eg__tsentry *e)
{
    /* No GIL needed (PyThreadState_New takes the runtime's own lock); the
     * gate and the guard keep the interpreter alive. */
    PyInterpreterState *pyinterp =
        atomic_load_explicit(&in->pyinterp, memory_order_acquire);
    eg__gate *g = &in->gate;
    PyThreadState *ts = pyinterp ? PyThreadState_New(pyinterp) : NULL;
    if (ts == NULL) {
        return -ENOMEM;
    }
    eg__mutex_lock(&g->ts_lock);
    e->ts = ts;
    eg__link_entry(g, e);
    eg__mutex_unlock(&g->ts_lock);
    return 0;
}

/* ---- fork ---------------------------------------------------------------------- */

/* pthread_atfork child, no Python API.  Only the forking thread survives.
 * CPython deleted every other thread state (and kept the forking thread's
 * current one), so every cached state is forgotten, not deleted -- except
 * one this thread is attached through right now, which CPython kept.
 * Entries of exited threads are forgotten with the rest. */
static int
eg__entry_is_mine(eg__tsentry *e)
{
    for (eg__tsentry *m = eg__tls_entries; m != NULL; m = m->tls_next) {
        if (m == e) {
            return 1;
        }
    }
    return 0;
}

/* The entries' part of eg__gate_after_fork_child, which has re-made the
 * gate's lock and door: see above. */
void
eg__tstates_after_fork_child(eg__record *in)
{
    eg__gate *g = &in->gate;
    /* Threads that were inside at fork time are gone, but on 3.15 the
     * guards they held were copied into the child with the interpreter's
     * guard count, and CPython's finalization of the child would wait for
     * them for ever (seen with CPython 3.15.2: any guard held across fork,
     * even by the forking thread, hangs the child's exit).  Keep those
     * entries aside; the Python-level after-fork hook closes their guards
     * (eg__gate_close_fork_orphans), the guards being ours to close. */
    g->fork_orphans = NULL;
    for (eg__tsentry *e = g->entries, *next; e != NULL; e = next) {
        next = e->rec_next;
        eg__retire_counts(g, e);
        if (!eg__entry_is_mine(e)
                && atomic_load_explicit(&e->guard, memory_order_relaxed)) {
            e->rec_next = g->fork_orphans;
            g->fork_orphans = e;
        }
    }
    g->entries = NULL;
    atomic_store_explicit(&g->ndead, 0, memory_order_relaxed);
    for (eg__tsentry *e = eg__tls_entries; e != NULL; e = e->tls_next) {
        if (e->rec != in) {
            continue;
        }
        /* Its seat keeps its count: this thread may be inside. */
        eg__door_seat_add(&g->door, &e->seat);
        if (atomic_load_explicit(&e->seat.inside, memory_order_relaxed) > 0
                && e->ts != NULL) {
            eg__link_entry(g, e);
        }
        else {
            e->ts = NULL;
        }
    }
}
