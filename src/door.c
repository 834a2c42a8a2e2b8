/*
 * door.c -- the door: threads count themselves in and out; its owner closes
 * it, or pauses it, and waits until nobody is inside.  See door.h.
 *
 * CAUTION: no thread state is assumed anywhere in this file, and none is
 * used: atomics, pthreads and libc only.  Waits here block the calling
 * thread; a caller that is attached releases the GIL around them.
 *
 * DESIGN
 *
 * One 64-bit word carries everything a thread must see in a single load to
 * decide whether it may enter:
 *
 *     63 62 | 61     | 60 ............................. 0
 *     state | paused | count of threads inside
 *
 *     state:  OPEN --begin_close--> CLOSING --finish_close--> CLOSED
 *
 * An enter is a CAS from a word that reads OPEN and not paused to the same
 * word plus one; a leave subtracts one.  The owner's transitions are single
 * read-modify-writes that change only their own bits: begin_close ORs the
 * CLOSING state in, finish_close adds one to the state field (01 -> 10: it
 * cannot carry out, the count is below it), pause and resume OR and AND the
 * paused bit.  So the state only moves forward and no transition ever
 * passes through OPEN.
 *
 * Why a closer that has read count 0 after begin_close may tear down what
 * the door protects: every successful enter is a CAS whose expected value
 * read OPEN; begin_close's RMW and that CAS are ordered in the word's
 * modification order.  If the CAS came first, the count includes the
 * entrant until its leave (release) -- which the closer's acquire load of a
 * smaller count then follows, so everything the entrant did inside happens
 * before what the closer does next.  If begin_close came first, the CAS
 * compares against a word that no longer reads OPEN and fails.  The pause
 * bit is the same argument with "paused" for "not OPEN", except that a
 * failed entrant waits for resume instead of giving up.
 *
 * Waiting.  The owner waits on `changed` under `lock` and re-checks the
 * count under the lock; a leave that empties a closing or paused door takes
 * the lock before broadcasting.  A leave that sees the door not yet closing
 * broadcasts nothing -- but then the owner's later RMW is after the leave in
 * modification order, and the owner's load sees the smaller count, so no
 * wake-up is lost.  Entrants waiting out a pause sleep on the same
 * condition variable; resume broadcasts under the lock after clearing the
 * bit, and waiters re-check the bit under the lock before sleeping.
 *
 *   operation         | runs on          | concurrent with
 *   ------------------+------------------+--------------------------------
 *   enter / leave     | any thread       | each other, every owner op
 *   begin/finish_close| the owner        | enter (fails), leave, pause
 *   pause / resume    | any (nests)      | enter (waits), leave, close
 *   wait_empty        | the owner        | leave (wakes it)
 *   state / inside    | any              | everything (snapshots)
 *
 * What the door does not do: hand out a fairness order, wake entrants of a
 * closed door (there are none waiting: a closed door refuses at once), or
 * wait without a deadline.
 */
/* No Python.h here (nothing of CPython is used): ask for POSIX.1-2008
 * ourselves, for pthread_condattr_setclock and CLOCK_MONOTONIC under -std=c11. */
#if !defined(_POSIX_C_SOURCE) && !defined(_GNU_SOURCE)
#  define _POSIX_C_SOURCE 200809L
#endif

#include "door.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Failing pthread calls mean corrupted memory: nothing to recover. */
static void
eg__door_lock(eg__door *d)
{
    if (pthread_mutex_lock(&d->lock) != 0) {
        abort();
    }
}

static void
eg__door_unlock(eg__door *d)
{
    if (pthread_mutex_unlock(&d->lock) != 0) {
        abort();
    }
}

void
eg__door_init(eg__door *d, uint64_t inside)
{
    pthread_condattr_t attr;
    if (pthread_mutex_init(&d->lock, NULL) != 0
            || pthread_condattr_init(&attr) != 0
            || pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0
            || pthread_cond_init(&d->changed, &attr) != 0) {
        abort();
    }
    pthread_condattr_destroy(&attr);
    d->pause_depth = 0;
    /* Keep the state (a forked child of a stopping parent is stopping too);
     * clear the pause; count only the threads that still exist.  Relaxed:
     * init runs before any other thread can see the door (or, in a forked
     * child, while no other thread exists). */
    uint64_t state = atomic_load_explicit(&d->word, memory_order_relaxed)
                     >> EG__DOOR_SHIFT;
    atomic_store_explicit(&d->word,
                          (state << EG__DOOR_SHIFT) | (inside & EG__DOOR_COUNT),
                          memory_order_relaxed);
}

/* Slow path of enter: wait until the door is no longer paused. */
static void
eg__door_wait_resumed(eg__door *d)
{
    eg__door_lock(d);
    /* Relaxed under the lock: resume clears the bit before it broadcasts
     * under this same lock, so a stale "paused" here only means one more
     * trip round the loop, never a lost wake-up. */
    while ((atomic_load_explicit(&d->word, memory_order_relaxed)
            & EG__DOOR_PAUSED) != 0
           && (atomic_load_explicit(&d->word, memory_order_relaxed)
               >> EG__DOOR_SHIFT) == EG__DOOR_OPEN) {
        if (pthread_cond_wait(&d->changed, &d->lock) != 0) {
            abort();
        }
    }
    eg__door_unlock(d);
}

int
eg__door_enter_mp(eg__door *d)
{
    /* Relaxed: the CAS below revalidates the whole word. */
    uint64_t w = atomic_load_explicit(&d->word, memory_order_relaxed);
    for (;;) {
        if ((w >> EG__DOOR_SHIFT) != EG__DOOR_OPEN) {
            return -ESHUTDOWN;
        }
        if (w & EG__DOOR_PAUSED) {
            eg__door_wait_resumed(d);
            w = atomic_load_explicit(&d->word, memory_order_relaxed);
            continue;
        }
        /* Acquire on success: what the entrant does inside cannot move
         * before its count is visible.  Forbids: a closer reading count 0
         * while the entrant already touches what the door protects.  Pairs
         * with the owner's seq_cst RMW in begin_close / pause. */
        if (atomic_compare_exchange_weak_explicit(
                &d->word, &w, w + 1,
                memory_order_acquire, memory_order_relaxed)) {
            return 0;
        }
    }
}

void
eg__door_leave_mp(eg__door *d)
{
    /* Release: everything done inside happens before an owner's acquire
     * load that sees the count fall.  Pairs with wait_empty's loads. */
    uint64_t w = atomic_fetch_sub_explicit(&d->word, 1,
                                           memory_order_release) - 1;
    if ((w & EG__DOOR_COUNT) == 0
            && ((w >> EG__DOOR_SHIFT) != EG__DOOR_OPEN
                || (w & EG__DOOR_PAUSED))) {
        /* The owner re-checks the count under this lock before it sleeps:
         * taking it here cannot lose the wake-up. */
        eg__door_lock(d);
        pthread_cond_broadcast(&d->changed);
        eg__door_unlock(d);
    }
}

uint64_t
eg__door_begin_close(eg__door *d)
{
    /* seq_cst: one point in the word's order after which every enter CAS
     * fails (see DESIGN).  A CLOSED door stays CLOSED: OR-ing CLOSING into
     * 10 gives 11, so only OR it in while the state is OPEN. */
    uint64_t w = atomic_load_explicit(&d->word, memory_order_relaxed);
    while ((w >> EG__DOOR_SHIFT) == EG__DOOR_OPEN) {
        if (atomic_compare_exchange_weak_explicit(
                &d->word, &w, w | (EG__DOOR_CLOSING << EG__DOOR_SHIFT),
                memory_order_seq_cst, memory_order_relaxed)) {
            return w & EG__DOOR_COUNT;
        }
    }
    return w & EG__DOOR_COUNT;
}

uint64_t
eg__door_wait_empty(eg__door *d, const struct timespec *deadline)
{
    /* Acquire: pairs with the release in leave, so the owner sees every
     * write a departed thread made inside. */
    uint64_t inside = atomic_load_explicit(&d->word, memory_order_acquire)
                      & EG__DOOR_COUNT;
    if (inside == 0) {
        return 0;
    }
    eg__door_lock(d);
    while ((inside = atomic_load_explicit(&d->word, memory_order_acquire)
                     & EG__DOOR_COUNT) != 0) {
        int rc = pthread_cond_timedwait(&d->changed, &d->lock, deadline);
        if (rc == ETIMEDOUT) {
            inside = atomic_load_explicit(&d->word, memory_order_acquire)
                     & EG__DOOR_COUNT;
            break;
        }
        if (rc != 0) {
            abort();
        }
    }
    eg__door_unlock(d);
    return inside;
}

void
eg__door_finish_close(eg__door *d)
{
    uint64_t w = atomic_load_explicit(&d->word, memory_order_relaxed);
    if ((w >> EG__DOOR_SHIFT) != EG__DOOR_CLOSING) {
        return;                  /* not closing (yet), or closed already */
    }
    /* 01 + 1 = 10 in the state field; the count is untouched.  Release:
     * pairs with acquire loads of the state (statistics only). */
    atomic_fetch_add_explicit(&d->word,
                              (EG__DOOR_CLOSED - EG__DOOR_CLOSING)
                              << EG__DOOR_SHIFT,
                              memory_order_release);
    /* Entrants waiting out a pause must see that the door closed. */
    eg__door_lock(d);
    pthread_cond_broadcast(&d->changed);
    eg__door_unlock(d);
}

void
eg__door_pause(eg__door *d)
{
    eg__door_lock(d);
    if (d->pause_depth++ == 0) {
        /* seq_cst: after this RMW every enter waits (see DESIGN). */
        atomic_fetch_or_explicit(&d->word, EG__DOOR_PAUSED,
                                 memory_order_seq_cst);
    }
    eg__door_unlock(d);
}

void
eg__door_resume(eg__door *d)
{
    eg__door_lock(d);
    if (d->pause_depth > 0 && --d->pause_depth == 0) {
        /* Release: nothing the pauser did while paused may move after the
         * first enter that sees the bit clear.  Cleared before the
         * broadcast, under the lock the waiters re-check it under. */
        atomic_fetch_and_explicit(&d->word, ~EG__DOOR_PAUSED,
                                  memory_order_release);
        pthread_cond_broadcast(&d->changed);
    }
    eg__door_unlock(d);
}

void
eg__door_reopen(eg__door *d)
{
    /* Release: pairs with the acquire CAS of the first entrants of the new
     * life, which so see everything the owner set up before reopening (the
     * gate's generation among it). */
    atomic_store_explicit(&d->word, EG__DOOR_OPEN << EG__DOOR_SHIFT,
                          memory_order_release);
}

int
eg__door_idle(eg__door *d)
{
    eg__door_lock(d);
    int idle = d->pause_depth == 0;
    eg__door_unlock(d);
    return idle;
}

uint64_t
eg__door_state(const eg__door *d)
{
    /* Acquire: pairs with finish_close's release (statistics, names). */
    return atomic_load_explicit(&((eg__door *)d)->word, memory_order_acquire)
           >> EG__DOOR_SHIFT;
}

uint64_t
eg__door_inside(const eg__door *d)
{
    /* Relaxed: a snapshot for statistics and messages. */
    return atomic_load_explicit(&((eg__door *)d)->word, memory_order_relaxed)
           & EG__DOOR_COUNT;
}
