/*
 * core/stopper.h -- exit stoppers (stopper.c).
 */
#ifndef EG__STOPPER_H
#define EG__STOPPER_H

#include "core/record.h"

void eg__stoppers_init(eg__stoppers *st);
void eg__stoppers_after_fork_child(eg__stoppers *st);
/* Attached: run every pending stopper, newest first honouring edges. */
void eg__stoppers_run(eg__record *in);
/* Register an internal stopper: dtor(arg), called attached, runs when the
 * entry is freed; auto_free frees the entry right after it runs; `label`
 * (copied; NULL: the stop function's symbol) names it in the watchdog's
 * message. */
eg_stopper *eg__stopper_add_ex(eg__record *in, void (*stop)(void *),
                               void *arg, void (*dtor)(void *),
                               int auto_free, const char *label, int *err);
size_t eg__stoppers_count(eg__record *in);
/* Record reuse: no stopper registered; reopen for registrations. */
int eg__stoppers_reusable(eg__stoppers *st);
void eg__stoppers_reset(eg__stoppers *st);
/* Attached, phase 1: a stopper raised (or, in C, left an exception set);
 * counted for stats()["stopper_errors"]. */
void eg__stoppers_note_error(eg__record *in);
uint64_t eg__stoppers_errors(eg__record *in);

#endif /* EG__STOPPER_H */
