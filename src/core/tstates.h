/*
 * core/tstates.h -- the thread-state cache (tstates.c): one entry per (OS
 * thread, interpreter).  gate.c's attach and release use the entries'
 * fields (core/record.h) directly; calls go from gate.c to tstates.c only.
 */
#ifndef EG__TSTATES_H
#define EG__TSTATES_H

#include "core/record.h"

/* The calling thread, not attached, is about to exit: hand its cached
 * thread states to their interpreters, whose next attached thread deletes
 * them.  Never attaches, never blocks on the GIL.  For threads exitguard
 * starts, called before they return; other threads get it from the
 * thread-exit hook (thread_exit.c). */
void eg__tstates_release_self(void);

/* Attached to `in`: delete the thread states of threads that have exited
 * (one relaxed load when there are none). */
void eg__tstates_reap(eg__record *in);

/* The calling thread's entries, newest first (tstates.c). */
extern _Thread_local eg__tsentry *eg__tls_entries EG__TLS_IE;

/* eg__tstates_entry's slow path: create the calling thread's entry for
 * `in`.  NULL when out of memory. */
EG__NOINLINE eg__tsentry *eg__tstates_entry_new(eg__record *in);

/* The calling thread, not attached, no thread state needed (raw malloc
 * only): its entry for `in`, created on first use with no thread state yet
 * and its seat in the gate's door.  NULL when out of memory.  Inline: the
 * lookup is on every outermost attach. */
static inline eg__tsentry *
eg__tstates_entry(eg__record *in)
{
    for (eg__tsentry *e = eg__tls_entries; e != NULL; e = e->tls_next) {
        if (e->rec == in) {
            return e;
        }
    }
    return eg__tstates_entry_new(in);
}

/* e's owning thread, inside the gate with its guard held, not attached (no
 * GIL needed): give e a new thread state of `in` and list it in the gate.
 * Returns 0 or -ENOMEM. */
int eg__tstates_new_tstate(eg__record *in, eg__tsentry *e);

/* Any thread, caller holds g->ts_lock: take e out of the gate's list, its
 * counts into the gate's. */
void eg__tstates_unlink(eg__gate *g, eg__tsentry *e);

/* Forked child (pthread_atfork), no Python API, after
 * eg__gate_after_fork_child re-made the gate's lock and door: forget the
 * cached states but the one this thread is attached through, set aside the
 * entries of vanished threads that held PEP 788 guards (fork_orphans), and
 * put this thread's seats back in the door. */
void eg__tstates_after_fork_child(eg__record *in);

#endif /* EG__TSTATES_H */
