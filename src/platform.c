/*
 * platform.c -- the operating-system helpers every layer uses: fatal errors,
 * monotonic deadlines, and fresh eventfds for a forked child.
 *
 * Bottom layer: nothing here knows an interpreter or calls up into
 * exitguard.  Everything here is libc only and may run without a thread
 * state.
 */
#include "eg_internal.h"

#include <fcntl.h>
#include <math.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

void
eg__fatal(const char *msg)
{
    fprintf(stderr, "exitguard: fatal: %s\n", msg);
    fflush(stderr);
    abort();
}

void
eg__reopen_eventfd(int fd)
{
    if (fd < 0) {
        return;
    }
    int fresh = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fresh >= 0) {
        if (fresh != fd) {
            (void)dup3(fresh, fd, O_CLOEXEC);
            close(fresh);
        }
    }
}

struct timespec
eg__deadline(double seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    if (seconds < 0 || seconds > 1e9) {
        seconds = 1e9;      /* "forever": thirty years */
    }
    double whole = floor(seconds);
    ts.tv_sec += (time_t)whole;
    ts.tv_nsec += (long)((seconds - whole) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}
