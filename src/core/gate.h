/*
 * core/gate.h -- the attach gate (gate.c).
 */
#ifndef EG__GATE_H
#define EG__GATE_H

#include "core/record.h"

void eg__gate_init(eg__gate *g);
/* Record reuse: closed, nobody inside, no thread state of anyone left, not
 * paused; reopen it with fresh counters (after the generation moved on). */
int eg__gate_reusable(eg__gate *g);
void eg__gate_reopen(eg__gate *g);
void eg__gate_after_fork_child(eg__record *in);
/* Any thread: successful attaches (and, through *guards, PEP 788 guards
 * taken) so far -- the gate's retired counts plus its listed entries'. */
uint64_t eg__gate_attaches(eg__gate *g, uint64_t *guards);
/* Around os.fork() (eg__fork_prepare/parent in interp.c): pause the gate,
 * and, GIL released, wait until nobody is inside; then resume. */
void eg__gate_pause(eg__gate *g);
uint64_t eg__gate_wait_empty(eg__gate *g, const struct timespec *deadline);
void eg__gate_resume(eg__gate *g);
/* Phase 2, attached: close, wait (GIL released, bounded) for the threads
 * inside to leave, then delete the thread states of exited threads (and,
 * for a subinterpreter, every cached one no thread is using).  Returns how
 * many threads were still inside at the deadline. */
uint64_t eg__gate_close(eg__record *in, double timeout_s);
/* Any thread, no thread state needed (release the GIL around it): close
 * the gate and wait for the threads inside until `deadline`, without the
 * clean-up that needs the interpreter.  Idempotent.  Returns how many were
 * still inside.  eg__gate_close is this plus the clean-up. */
uint64_t eg__gate_shut(eg__record *in, const struct timespec *deadline);
/* eg_gil_ensure for a record: `view` and `gen` are a handle's (NULL and 0
 * for the record's current life: the kicker's way in, and the main
 * interpreter's). */
int eg__gil_ensure_record(eg__record *in, eg__pyview *view, uint64_t gen,
                          eg_gil *st);
/* Forked child, attached (the os.register_at_fork hook): close the PEP 788
 * guards that threads which vanished with the fork held (3.15). */
void eg__gate_close_fork_orphans(eg__record *in);
const char *eg__gate_state_name(eg__gate *g);
/* The calling thread: refuse its attaches once *flag is nonzero (thread.c
 * binds its eg_thread's `abandoned` flag for the threads it starts; NULL
 * unbinds).  No GIL needed. */
void eg__gate_bind_abandoned(const _Atomic int *flag);

#endif /* EG__GATE_H */
