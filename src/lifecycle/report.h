/*
 * lifecycle/report.h -- the exit report (report.c).
 */
#ifndef EG__REPORT_H
#define EG__REPORT_H

#include "core/record.h"

/* EXITGUARD_LEAKS: 0 off, 1 warn, 2 abort.  Read once per process. */
extern int eg__leak_mode;

/* Once per process: read EXITGUARD_LEAKS and EXITGUARD_EXIT_STATS. */
void eg__report_process_init(void);

/* Should phase 2 keep the leak report's entries?  (EXITGUARD_LEAKS is on,
 * or the final counters are to be written.) */
int eg__report_tracking(void);

#endif /* EG__REPORT_H */
