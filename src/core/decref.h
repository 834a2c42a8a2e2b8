/*
 * core/decref.h -- the deferred-decref queue's producers (decref.c): the
 * push, the accounting, init, reuse and fork, the kicked list.  The drain
 * is core/decref_drain.h.  Design: decref.c.
 */
#ifndef EG__DECREF_H
#define EG__DECREF_H

#include "core/record.h"

/* Any thread, no GIL: queue one decref of obj to `in`.  Never blocks on the
 * GIL; allocates once per EG__SEG_SIZE pushes at most, and takes a mutex
 * only when memory runs out (the spill path). */
void eg__decref_push_mp(eg__record *in, PyObject *obj);

/* Decrefs queued now and not yet applied (approximate while producers run). */
uint64_t eg__decref_pending_count(eg__record *in);

void eg__decref_queue_init(eg__decref_queue *q);
/* Record reuse: nothing queued, nobody draining it; reset the
 * counters (the lanes stay: threads may push into them in the next life). */
int eg__decref_reusable(eg__record *in);
void eg__decref_reset(eg__record *in);
void eg__decref_after_fork_child(eg__record *in);
void eg__decref_process_init(void);   /* once per process, and in a fork child */
/* The kicker's side (kicker.c): its eventfd, written when a queue needs a
 * drain; taking the list of those queues, and popping one (any thread; the
 * kicker). */
int eg__decref_kick_fd(void);
eg__record *eg__decref_take_kicked(void);
eg__record *eg__decref_kicked_pop(eg__record **list);

#endif /* EG__DECREF_H */
