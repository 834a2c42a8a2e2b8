/*
 * core/completion.h -- completion queues (completion.c).
 */
#ifndef EG__COMPLETION_H
#define EG__COMPLETION_H

#include "core/record.h"

eg_cq *eg__cq_new(eg__record *in, PyObject *owner);
int eg__cq_fileno(eg_cq *q);
int eg__cq_closed(eg_cq *q);
void eg__cq_counts(eg_cq *q, uint64_t out[4]);   /* posted ran cancelled wakeups */
Py_ssize_t eg__cq_run(eg_cq *q);
void eg__cq_close(eg_cq *q);
void eg__cq_free(eg_cq *q);
void eg__cq_close_all(eg__record *in);
void eg__cq_after_fork_child(eg__record *in);

#endif /* EG__COMPLETION_H */
