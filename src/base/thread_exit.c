/*
 * thread_exit.c -- the one thread-exit hook: what exitguard keeps per thread
 * is handed back, in a fixed order, when the thread ends.
 *
 * Four concepts keep thread-local state that must outlive nothing: the log
 * producer's filtered-message counter (log.c), the reference slot cache
 * (registry.c), the decref lanes (decref.c) and the cached thread states
 * (tstates.c).  Each arms its part the first time a thread uses it; one
 * pthread key's destructor then runs the armed parts in the order of
 * eg__exit_part (thread_exit.h) -- one order, written in one place, instead
 * of four keys whose destructors glibc runs in no promised order.
 *
 * CAUTION: no thread state is assumed anywhere in this file.  The
 * destructor runs after the thread's last Python call (CPython's own TLS,
 * the gilstate slot among it, may already be gone); the parts use atomics,
 * pthreads and raw malloc only.  A part armed again during the destructor
 * (a later destructor of another library calling into exitguard) makes
 * glibc run the destructor once more (up to PTHREAD_DESTRUCTOR_ITERATIONS).
 */
#include "base/thread_exit.h"
#include "base/platform.h"

#include <errno.h>

static pthread_key_t eg__exit_key;
static pthread_once_t eg__exit_once = PTHREAD_ONCE_INIT;

/* The parts' functions, set by the first arm of each (every arm of a part
 * passes the same function).  Release/acquire: the destructor that sees a
 * part armed calls a published pointer. */
static _Atomic(eg__exit_fn) eg__exit_fns[EG__EXIT_NPARTS];

/* The calling thread's armed parts, one bit each. */
static _Thread_local unsigned eg__exit_armed EG__TLS_IE;

/* The key's destructor: the armed parts, in eg__exit_part order. */
static void
eg__exit_destructor(void *unused)
{
    (void)unused;
    unsigned armed = eg__exit_armed;
    eg__exit_armed = 0;          /* a part used again re-arms itself */
    for (int part = 0; part < EG__EXIT_NPARTS; part++) {
        if (armed & (1u << part)) {
            eg__exit_fn fn = atomic_load_explicit(&eg__exit_fns[part],
                                                  memory_order_acquire);
            fn();
        }
    }
}

/* No key means no thread's exit would ever be seen: abort, once, at the
 * first arm (PTHREAD_KEYS_MAX keys are taken). */
static void
eg__exit_key_create(void)
{
    if (pthread_key_create(&eg__exit_key, eg__exit_destructor) != 0) {
        eg__fatal("thread_exit: no pthread key left (PTHREAD_KEYS_MAX)");
    }
}

int
eg__thread_exit_arm(eg__exit_part part, eg__exit_fn fn)
{
    unsigned bit = 1u << part;
    if (EG__LIKELY(eg__exit_armed & bit)) {
        return 0;
    }
    pthread_once(&eg__exit_once, eg__exit_key_create);
    /* Release: pairs with the destructor's acquire (any thread's). */
    atomic_store_explicit(&eg__exit_fns[part], fn, memory_order_release);
    /* Any non-NULL value runs the destructor; setting it again is cheap and
     * needed once the destructor has run (the value is NULL then). */
    if (pthread_setspecific(eg__exit_key, (void *)1) != 0) {
        return -ENOMEM;
    }
    eg__exit_armed |= bit;
    return 0;
}
