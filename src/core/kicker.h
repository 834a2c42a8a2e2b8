/*
 * core/kicker.h -- the drain kicker (kicker.c).
 */
#ifndef EG__KICKER_H
#define EG__KICKER_H

#include "core/record.h"

void eg__kicker_start(void);             /* attached, module exec; idempotent */
void eg__kicker_stop(void);              /* main interpreter, phase 2 */
void eg__kicker_after_fork_child(void);  /* pthread_atfork child */

#endif /* EG__KICKER_H */
