/*
 * kicker.c -- the drain kicker: one helper thread per process that applies
 * deferred decrefs nobody else is applying.
 *
 * CAUTION: the kicker thread runs without a thread state except between
 * eg_gil_ensure and eg_gil_release; outside them it uses only libc.
 *
 * DESIGN
 *
 * A decref queued by a thread that is not attached has to be applied by a
 * thread that is.  exitguard's entry points do it in passing (an attach, a
 * new reference, eg_flush), and phase 2 does it at exit; in between, a
 * program whose native threads only drop references would let them pile up.
 * The obvious tool, Py_AddPendingCall, is unreliable for this on every
 * version we support: before 3.12 a call added from a native thread does
 * not set the main thread's eval breaker (it waits for the next GIL
 * hand-off, for ever if none comes); from 3.12 it always targets the main
 * interpreter, so a subinterpreter's queue cannot use it; measured on 3.12.1
 * and 3.13.0 it either did not run while the main thread ran bytecode or ran
 * once per handful of decrefs; and it runs nowhere while the main thread is
 * blocked in C.  Added late it crashes (3.8-3.12) or is silently dropped
 * (3.13+: _PyEval_AddPendingCall in Python/ceval_gil.c;
 * docs/design.md, "CPython version by version").
 *
 * So the queue does something much smaller: the push that finds the queue
 * idle puts the interpreter's record on the kicker's list (a lock-free
 * stack in decref.c) and writes the kicker's eventfd.  The kicker
 * wakes, waits EG__KICK_COALESCE_MS so that a burst of pushes is applied in
 * one go (a producer is then not interrupted, with its membarrier, per
 * push), takes the whole list, and attaches to each interpreter through its
 * gate -- an exitguard entry point, so the queue is applied there, attached
 * -- and detaches.  The gate refuses it once the interpreter stops; phase 2
 * applies what is left.  One write per burst, one attach per interpreter
 * per window, and nothing above the queue is called from the queue.
 *
 * The thread is started by the first module exec of the process (and again
 * in a forked child, whose copy of it is gone), and stopped and joined by
 * the main interpreter's phase 2, GIL released.
 *
 *   operation       | runs on                 | concurrent with
 *   ----------------+-------------------------+-----------------------------
 *   start           | attached (module exec)  | start (the lock)
 *   kick (queue)    | any thread              | everything (eventfd write)
 *   kicker loop     | the kicker thread       | pushes, drains, stop
 *   stop            | main phase 2, attached  | the loop (stop flag + efd)
 */
#include "core/kicker.h"
#include "core/record.h"
#include "core/decref.h"
#include "core/gate.h"
#include "core/tstates.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define EG__KICK_COALESCE_MS 10

static struct {
    pthread_mutex_t lock;          /* protects started, tid */
    int started;
    _Atomic int stop;
    pthread_t tid;
} eg__kicker = {.lock = PTHREAD_MUTEX_INITIALIZER};

static void *
eg__kicker_main(void *unused)
{
    (void)unused;
    int efd = eg__decref_kick_fd();
    /* Relaxed: the stop flag is re-read after every wake-up; stop() writes
     * the eventfd after setting it, and the read(2) orders the two. */
    while (!atomic_load_explicit(&eg__kicker.stop, memory_order_relaxed)) {
        struct pollfd p = {.fd = efd, .events = POLLIN};
        (void)poll(&p, 1, -1);
        uint64_t v;
        ssize_t r = read(efd, &v, sizeof(v));
        (void)r;
        if (atomic_load_explicit(&eg__kicker.stop, memory_order_relaxed)) {
            break;
        }
        struct timespec pause = {0, EG__KICK_COALESCE_MS * 1000 * 1000};
        nanosleep(&pause, NULL);
            eg__record *list = eg__decref_take_kicked();
        eg__record *in;
        while ((in = eg__decref_kicked_pop(&list)) != NULL) {
            eg_gil st;
            if (eg__gil_ensure_record(in, NULL, 0, &st) == 0) {
                /* The attach applied the queue (an entry point). */
                atomic_fetch_add_explicit(&in->queue.kicks, 1,
                                          memory_order_relaxed);
                eg_gil_release(&st);
            }
        }
    }
    eg__tstates_release_self();
    return NULL;
}

void
eg__kicker_start(void)
{
    eg__mutex_lock(&eg__kicker.lock);
    if (!eg__kicker.started
            && !atomic_load_explicit(&eg__kicker.stop, memory_order_relaxed)
            && eg__decref_kick_fd() >= 0
            && pthread_create(&eg__kicker.tid, NULL, eg__kicker_main,
                              NULL) == 0) {
#if defined(__linux__)
        (void)pthread_setname_np(eg__kicker.tid, "eg-kick");
#endif
        eg__kicker.started = 1;
    }
    eg__mutex_unlock(&eg__kicker.lock);
}

void
eg__kicker_stop(void)
{
    eg__mutex_lock(&eg__kicker.lock);
    atomic_store_explicit(&eg__kicker.stop, 1, memory_order_relaxed);
    int started = eg__kicker.started;
    eg__kicker.started = 0;
    eg__mutex_unlock(&eg__kicker.lock);
    if (started) {
        uint64_t one = 1;
        ssize_t w = write(eg__decref_kick_fd(), &one, sizeof(one));
        (void)w;
        /* It may be waiting for the GIL in an attach: never join attached. */
        Py_BEGIN_ALLOW_THREADS
        pthread_join(eg__kicker.tid, NULL);
        Py_END_ALLOW_THREADS
    }
}

void
eg__kicker_after_fork_child(void)
{
    /* pthread_atfork child: the thread is gone with the parent's others;
     * the module's Python-level after-fork hook starts a new one. */
    if (pthread_mutex_init(&eg__kicker.lock, NULL) != 0) {
        abort();
    }
    eg__kicker.started = 0;
}
