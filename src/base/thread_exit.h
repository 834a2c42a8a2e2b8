/*
 * base/thread_exit.h -- the one thread-exit hook (thread_exit.c).
 */
#ifndef EG__THREAD_EXIT_H
#define EG__THREAD_EXIT_H

#include "base/platform.h"

/* ---- The thread-exit hook (thread_exit.c) ----------------------------------
 * What exitguard keeps per thread, handed back at the thread's exit by one
 * pthread key's destructor, in this order.  None of the parts depends on
 * another; a part that comes to depend on one says so here. */
typedef enum {
    EG__EXIT_LOG_COUNTS,       /* log.c: the filtered-message counter */
    EG__EXIT_REF_CACHE,        /* registry.c: the reference slot cache */
    EG__EXIT_DECREF_LANES,     /* decref.c: the lanes, to their drainers */
    EG__EXIT_TSTATES,          /* tstates.c: thread states, to their interpreters */
    EG__EXIT_NPARTS
} eg__exit_part;

typedef void (*eg__exit_fn)(void);

/* Any thread, no thread state: run fn (the same one at every arm of
 * `part`) when the calling thread exits, after the parts before it.  Once
 * per thread until the exit runs it (a part used again afterwards, from a
 * later destructor, arms again).  Cheap when armed: one thread-local load.
 * Returns 0, or -ENOMEM when pthread_setspecific fails (the part is then
 * not run at this thread's exit).  Aborts if no pthread key is left. */
int eg__thread_exit_arm(eg__exit_part part, eg__exit_fn fn);

#endif /* EG__THREAD_EXIT_H */
