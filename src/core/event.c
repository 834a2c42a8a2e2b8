/*
 * event.c -- eg_event: an event native threads and signal handlers set, and
 * that Python code waits on with the GIL released and Ctrl-C honoured.
 *
 * CAUTION: eg_event_set/clear/is_set run on any thread and inside signal
 * handlers: one atomic and at most one read(2)/write(2), nothing else.
 *
 * DESIGN
 *
 * An event is a flag plus an eventfd that is readable exactly while the
 * flag is set (the set that turns it on writes 1, the clear that turns it
 * off reads the counter back), so it also works with select/poll/asyncio.
 *
 * eg_event_wait has the shape of CPython's acquire_timed: check without
 * blocking; release the GIL around the blocking call only; when that call
 * returns early, run the Python signal handlers with the GIL held and let
 * their exception (KeyboardInterrupt) end the wait; recompute the time left
 * from an absolute deadline.  On the main thread of the main interpreter --
 * the only place CPython runs signal handlers -- a signal that interrupts
 * poll(2) wakes the wait at once (EINTR).  But a process-directed signal
 * may be delivered to any thread that does not block it, often a native
 * one, and then nothing interrupts our poll; so the main thread polls in
 * slices of EG__SIGNAL_SLICE_MS and checks for tripped signals between
 * them.  (Blocking signals and using ppoll would close the EINTR race but
 * steer every Ctrl-C to some other thread.)  Other threads wait in one
 * piece: signal handlers never run there.
 *
 * The wait also watches the interpreter's stop eventfd (written when phase
 * 1 begins) and returns EG_WAIT_STOPPING then, so that no wait blocks
 * exit -- except on the thread running the phases, whose stoppers may need
 * to wait for real.
 */
#include "core/record.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define EG__SIGNAL_SLICE_MS 20

struct eg_event {
    _Atomic int set;
    int efd;
};

eg_event *
eg_event_new(void)
{
    eg_event *ev = malloc(sizeof(*ev));
    if (ev == NULL) {
        return NULL;
    }
    atomic_init(&ev->set, 0);
    ev->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ev->efd < 0) {
        free(ev);
        return NULL;
    }
    return ev;
}

void
eg_event_free(eg_event *ev)
{
    if (ev != NULL) {
        close(ev->efd);
        free(ev);
    }
}

int
eg_event_set(eg_event *ev)
{
    if (ev == NULL) {
        return -EINVAL;
    }
    /* Only the clear-to-set transition writes: the fd stays readable with a
     * counter of 1 for as long as the flag is set.  seq_cst pairs with the
     * waiter's check-then-poll (the poll sees the write either way). */
    if (!atomic_exchange_explicit(&ev->set, 1, memory_order_seq_cst)) {
        uint64_t one = 1;
        ssize_t w = write(ev->efd, &one, sizeof(one));
        (void)w;
    }
    return 0;
}

int
eg_event_clear(eg_event *ev)
{
    if (ev == NULL) {
        return -EINVAL;
    }
    if (atomic_exchange_explicit(&ev->set, 0, memory_order_seq_cst)) {
        uint64_t v;
        ssize_t r = read(ev->efd, &v, sizeof(v));
        (void)r;
    }
    return 0;
}

int
eg_event_is_set(const eg_event *ev)
{
    return ev != NULL
        && atomic_load_explicit(&((eg_event *)ev)->set, memory_order_acquire);
}

int
eg_event_fileno(const eg_event *ev)
{
    return ev ? ev->efd : -EINVAL;
}

static double
eg__now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int
eg_event_wait(eg_event *ev, double timeout_s)
{
    if (ev == NULL || isnan(timeout_s)) {
        return -EINVAL;
    }
    eg__record *in = eg__record_current();
    int on_main = eg__on_main_thread();
    int exempt = in != NULL && eg__is_phase_thread(in);
    double deadline = timeout_s < 0 ? -1.0 : eg__now() + timeout_s;

    for (;;) {
        /* 1. Without blocking. */
        if (atomic_load_explicit(&ev->set, memory_order_acquire)) {
            return 0;
        }
        if (in != NULL && !exempt
                && atomic_load_explicit(&in->state,
                                        memory_order_seq_cst) >= EG__STOPPING) {
            return EG_WAIT_STOPPING;
        }
        if (PyErr_CheckSignals() < 0) {
            return EG_WAIT_INTERRUPTED;     /* the handler's exception is set */
        }
        int ms = -1;
        if (deadline >= 0) {
            double left = deadline - eg__now();
            if (left <= 0) {
                return -ETIMEDOUT;
            }
            ms = left * 1000.0 > 1e9 ? 1000000000 : (int)ceil(left * 1000.0);
        }
        if (on_main && (ms < 0 || ms > EG__SIGNAL_SLICE_MS)) {
            ms = EG__SIGNAL_SLICE_MS;
        }

        /* 2. Block, GIL released, on the event and the stop fd. */
        struct pollfd fds[2] = {
            {.fd = ev->efd, .events = POLLIN},
            {.fd = (in != NULL && !exempt) ? in->stop_efd : -1,
             .events = POLLIN},
        };
        EG__BEGIN_WAIT
        (void)poll(fds, 2, ms);
        EG__END_WAIT
        /* 3. Loop: re-check, run signal handlers, recompute the time left
         * from the deadline (EINTR, timeouts and wake-ups alike). */
    }
}
