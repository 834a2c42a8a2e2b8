/*
 * core/log.h -- logging from native threads: the producers, the level cache,
 * process init, counters and fork (log.c).  The forwarder that delivers
 * into Python's logging is core/log_forwarder.h.
 */
#ifndef EG__LOG_H
#define EG__LOG_H

#include "core/record.h"

void eg__log_process_init(void);
void eg__log_after_fork_child(void);
int eg__log_levels_changed(PyObject *threshold_fn, int only_unknown);
/* EG_LOG's slow path and the generation its sites compare with (table). */
int eg_log_site_enabled(eg_log_site *site, int level, const char *logger);
extern _Atomic unsigned int eg__log_generation;
void eg__log_stats(uint64_t *delivered, uint64_t *dropped,
                   uint64_t *formatted, uint64_t *filtered,
                   uint64_t *to_stderr);
uint64_t eg__log_ring_size(void);

#endif /* EG__LOG_H */
