/*
 * core/thread.h -- native threads (thread.c).
 */
#ifndef EG__THREAD_H
#define EG__THREAD_H

#include "core/record.h"

void eg__threads_init(eg__threads *th);
void eg__threads_after_fork_child(eg__threads *th);
/* Phase 1 begins: refuse new threads (-ESHUTDOWN), also from stoppers. */
void eg__threads_close(eg__threads *th);
/* Phase 1, attached: ask every registered thread to stop and join them,
 * GIL released, within timeout_s in all; name the ones that did not end.
 * Returns how many were abandoned (did not end in time). */
size_t eg__threads_stop_all(eg__record *in, double timeout_s);
size_t eg__threads_live(eg__record *in);
/* Record reuse: no thread registered (none abandoned either); reopen. */
int eg__threads_reusable(eg__threads *th);
void eg__threads_reset(eg__threads *th);

/* EXITGUARD_JOIN_TIMEOUT in seconds (default 10), read once per process. */
extern double eg__join_timeout;

#endif /* EG__THREAD_H */
