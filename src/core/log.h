/*
 * core/log.h -- logging from native threads: producers and levels (log.c),
 * the forwarder (log_forwarder.c).
 */
#ifndef EG__LOG_H
#define EG__LOG_H

#include "core/record.h"

/* Any thread, no thread state (eg_vlog, after publishing, while `started`
 * reads 0): create the forwarder thread once, under start_lock, unless
 * phase 2 has stopped logging; if pthread_create fails `started` stays 0
 * and the next message tries again.  Returns nothing.  log_forwarder.c. */
void eg__log_start_forwarder(void);

void eg__log_process_init(void);
int eg__log_init_main(void);       /* main interpreter's exec, attached */
void eg__log_after_fork_child(void);
/* Main interpreter, phase 2, attached: deliver everything, then stderr. */
void eg__log_stop_and_drain(void);
int eg__log_levels_changed(PyObject *threshold_fn, int only_unknown);
/* EG_LOG's slow path and the generation its sites compare with (table). */
int eg_log_site_enabled(eg_log_site *site, int level, const char *logger);
extern _Atomic unsigned int eg__log_generation;
void eg__log_stats(uint64_t *delivered, uint64_t *dropped,
                   uint64_t *formatted, uint64_t *filtered,
                   uint64_t *to_stderr);
uint64_t eg__log_ring_size(void);
int eg__log_pop_raw(int *level, char *msg, size_t cap);   /* tests/stress/c only */

#endif /* EG__LOG_H */
