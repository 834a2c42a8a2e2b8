/*
 * core/decref_drain.h -- the deferred-decref queue's single consumer
 * (decref_drain.c): applying what the producers queued.  Design: decref.c.
 */
#ifndef EG__DECREF_DRAIN_H
#define EG__DECREF_DRAIN_H

#include "core/record.h"

/* Attached to `in`: apply every queued decref.  Returns how many; 0 when
 * another drain holds the single-consumer claim. */
Py_ssize_t eg__decref_drain_sc(eg__record *in);

/* Attached to `in`, phase 2: wait (GIL released) for the claim, then apply
 * every queued decref, also in state RELEASING.  Returns how many. */
Py_ssize_t eg__decref_drain_all(eg__record *in);

/* Attached to `in`: drain if a drain has been requested (one relaxed load
 * when the queue is empty).  For exitguard's entry points. */
static inline void
eg__decref_maybe_drain(eg__record *in)
{
    /* Relaxed: a stale 0 only delays this opportunistic drain; the pending
     * call or a later entry point applies the queue. */
    if (atomic_load_explicit(&in->queue.requested, memory_order_relaxed)) {
        (void)eg__decref_drain_sc(in);
    }
}

#endif /* EG__DECREF_DRAIN_H */
