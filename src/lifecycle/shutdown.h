/*
 * lifecycle/shutdown.h -- the two phases of an interpreter's exit
 * (shutdown.c).
 */
#ifndef EG__SHUTDOWN_H
#define EG__SHUTDOWN_H

#include "core/record.h"

void eg__phase1(eg__record *in);

void eg__phase2(eg__record *in);

void eg__shutdown_process_init(void);

#endif /* EG__SHUTDOWN_H */
