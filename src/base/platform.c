/*
 * platform.c -- the operating-system helpers every layer uses: fatal errors,
 * monotonic deadlines, fresh eventfds for a forked child, and the names of
 * the public API's negative errno values (eg_strerror).
 *
 * Bottom layer: nothing here knows an interpreter or calls up into
 * exitguard.  Everything here is libc only and may run without a thread
 * state.
 */
#include "base/platform.h"

#include <errno.h>
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

/* ---- Errors ---------------------------------------------------------------- */

const char *
eg_strerror(int err)
{
    switch (err) {
    case 0:
        return "success";
    case -EINVAL:
        return "invalid argument";
    case -ENOMEM:
        return "out of memory";
    case -ESHUTDOWN:
        return "exitguard is stopping or has stopped in this interpreter";
    case -ETIMEDOUT:
        return "timed out";
    case -EDEADLK:
        return "the ordering would form a cycle";
    case -EALREADY:
        return "already running or done";
    case -EAGAIN:
        return "resource temporarily unavailable";
    case -EBUSY:
        return "busy";
    case -ENOSYS:
        return "exitguard is not imported here (call eg_import() first)";
    case -EINTR:
        return "interrupted: a Python signal handler raised (its exception "
               "is set)";
    default:
        return "unknown exitguard error";
    }
}
