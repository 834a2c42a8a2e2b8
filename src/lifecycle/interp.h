/*
 * lifecycle/interp.h -- the composition root (interp.c): creating and
 * reusing records, process init, fork.
 */
#ifndef EG__INTERP_H
#define EG__INTERP_H

#include "core/record.h"

/* Attached, module exec: find or create this interpreter's record and
 * count one more module using it.  NULL with an exception on failure. */
eg__record *eg__record_acquire(void);

/* Attached, module free: one module fewer; the last marks it dead. */
void eg__record_release(eg__record *in);

/* Attached: the number of exitguard modules alive in `in`'s interpreter. */
int eg__record_modules(eg__record *in);

void eg__records_process_init(void);

/* os.register_at_fork hooks, attached: before the fork, pause every gate
 * and wait (GIL released, bounded) until no native thread is inside
 * CPython; in the parent afterwards, resume them.  The child resets its
 * gates in the pthread_atfork child handler. */
void eg__fork_prepare(void);

void eg__fork_parent(void);

/* The main interpreter's phase 2, attached, before its own: shut the gate of
 * every other interpreter that is still alive (GIL released, bounded).  Once
 * the runtime is finalizing, CPython kills (3.9-3.13.7) or parks (3.13.8+)
 * any thread attaching to any interpreter, and subinterpreters are ended
 * only later (3.12+) or never (3.9-3.11, where an ending takes whatever
 * thread state heads the list). */
void eg__shut_other_gates(eg__record *main_rec, double timeout_s);

#endif /* EG__INTERP_H */
