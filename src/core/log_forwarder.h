/*
 * core/log_forwarder.h -- the consumer of exitguard's log ring
 * (log_forwarder.c): the forwarder thread, and phase 2's final delivery.
 */
#ifndef EG__LOG_FORWARDER_H
#define EG__LOG_FORWARDER_H

#include "core/record.h"

/* Any thread, no thread state (eg_vlog, after publishing, while `started`
 * reads 0): create the forwarder thread once, under start_lock, unless
 * phase 2 has stopped logging; if pthread_create fails `started` stays 0
 * and the next message tries again.  Returns nothing.  log_forwarder.c. */
void eg__log_start_forwarder(void);

/* Main interpreter's module exec, attached: learn logging's entry point.
 * Returns 0, or -1 with an exception set. */
int eg__log_init_main(void);

/* Main interpreter, phase 2, attached: deliver everything, then stderr. */
void eg__log_stop_and_drain(void);

/* For tests/stress/c/stress_logring.c only: pop one published message. */
int eg__log_pop_raw(int *level, char *msg, size_t cap);

#endif /* EG__LOG_FORWARDER_H */
