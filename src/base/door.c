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
 * Seats.  A thread that passes a door thousands of times a second (the
 * gate: every eg_gil_ensure) pays for each read-modify-write of the shared
 * word -- 5-8 ns uncontended, more when threads share the line.  A seat is
 * such a thread's own counter, listed in the door: entering stores
 * inside + 1 into it and then loads the word; leaving stores inside - 1
 * and loads the word again.  The owner, after its RMW of the word
 * (begin_close, pause), forces a full memory barrier on every running
 * thread of the process -- membarrier(2), MEMBARRIER_CMD_PRIVATE_EXPEDITED,
 * the asymmetric fence of liburcu's "memb" flavour and folly -- and only
 * then reads the seats, under the lock.  Why nobody slips in: the barrier
 * the kernel runs for the entrant's CPU falls somewhere in the entrant's
 * program.  Before its store, and its load, which comes later, reads the
 * owner's RMW (made before the membarrier call): it backs out.  After its
 * store, and the store is visible before membarrier returns, so the
 * owner's count, taken after, includes it.  The compiler barrier keeps the
 * store and the load in that program order; what the kernel's barrier
 * rules out is the CPU letting the load pass the store (store buffering),
 * the one reordering x86 does.  A leave is the same pair the other way:
 * either the owner's scan sees the smaller count, or the leaver's load sees
 * the door closing or paused and it broadcasts under the lock, which the
 * owner holds from its scan until it sleeps -- no lost wake-up.  Where
 * membarrier is missing (old kernels, some sandboxes, valgrind), both
 * fences are full ones (fence.h): Dekker's handshake, correct with no help
 * from the kernel, and as costly as the RMW it replaces.
 *
 *   operation         | runs on          | concurrent with
 *   ------------------+------------------+--------------------------------
 *   enter / leave     | any thread       | each other, every owner op
 *   begin/finish_close| the owner        | enter (fails), leave, pause
 *   pause / resume    | any (nests)      | enter (waits), leave, close
 *   wait_empty        | the owner        | leave (wakes it)
 *   seat enter/leave  | the seat's thread| every owner op, seat add/remove
 *   seat add / remove | under the lock   | wait_empty's scan
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

#include "base/door.h"
#include "base/fence.h"

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
    /* A forked child's seats of vanished threads are forgotten (their
     * memory with them); the caller puts back the surviving thread's. */
    d->seats = NULL;
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

void
eg__door_destroy(eg__door *d)
{
    pthread_cond_destroy(&d->changed);
    pthread_mutex_destroy(&d->lock);
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

/* Under the lock, after a remote fence: the threads inside, counted and
 * seated.  Acquire: pairs with the release of every leave, so the owner
 * sees every write a departed thread made inside. */
static uint64_t
eg__door_count_locked(eg__door *d)
{
    uint64_t n = atomic_load_explicit(&d->word, memory_order_acquire)
                 & EG__DOOR_COUNT;
    for (eg__door_seat *s = d->seats; s != NULL; s = s->next) {
        n += atomic_load_explicit(&s->inside, memory_order_seq_cst);
    }
    return n;
}

uint64_t
eg__door_wait_empty(eg__door *d, const struct timespec *deadline)
{
    uint64_t inside;
    eg__door_lock(d);
    for (;;) {
        /* Every seat's store before this point is visible to the count,
         * and every seat's load after it sees our earlier RMW (DESIGN,
         * Seats).  If the kernel let us down, seats that entered with a
         * bare compiler barrier just before may not be counted yet: count
         * again a little later (their stores are in flight, not lost). */
        int unsure = eg__fence_heavy() < 0;
        inside = eg__door_count_locked(d);
        if (inside == 0 && !unsure) {
            break;
        }
        struct timespec until = *deadline;
        if (unsure) {
            struct timespec soon;
            clock_gettime(CLOCK_MONOTONIC, &soon);
            soon.tv_nsec += 1000000L;
            if (soon.tv_nsec >= 1000000000L) {
                soon.tv_sec++;
                soon.tv_nsec -= 1000000000L;
            }
            if (soon.tv_sec < until.tv_sec || (soon.tv_sec == until.tv_sec
                                               && soon.tv_nsec < until.tv_nsec)) {
                until = soon;
            }
        }
        int rc = pthread_cond_timedwait(&d->changed, &d->lock, &until);
        if (rc == ETIMEDOUT && !unsure) {
            (void)eg__fence_heavy();
            inside = eg__door_count_locked(d);
            break;
        }
        if (rc != 0 && rc != ETIMEDOUT) {
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
eg__door_inside(eg__door *d)
{
    /* A snapshot for statistics, messages and the owner's reuse check. */
    eg__door_lock(d);
    uint64_t n = eg__door_count_locked(d);
    eg__door_unlock(d);
    return n;
}

/* ---- Seats ----------------------------------------------------------------- */

void
eg__door_seat_add(eg__door *d, eg__door_seat *s)
{
    eg__door_lock(d);
    s->prev = NULL;
    s->next = d->seats;
    if (d->seats != NULL) {
        d->seats->prev = s;
    }
    d->seats = s;
    eg__door_unlock(d);
}

void
eg__door_seat_remove(eg__door *d, eg__door_seat *s)
{
    eg__door_lock(d);
    if (s->prev != NULL) {
        s->prev->next = s->next;
    }
    else if (d->seats == s) {
        d->seats = s->next;
    }
    if (s->next != NULL) {
        s->next->prev = s->prev;
    }
    s->prev = s->next = NULL;
    uint32_t left = atomic_load_explicit(&s->inside, memory_order_relaxed);
    if (left != 0) {
        /* Its thread exited inside: it stays counted, on the word.  The
         * lock orders this against the owner's scans. */
        atomic_fetch_add_explicit(&d->word, left, memory_order_relaxed);
        atomic_store_explicit(&s->inside, 0, memory_order_relaxed);
    }
    eg__door_unlock(d);
}

/* The enter's load found the door closing, closed or paused: take the
 * count back (waking an owner that may be waiting for exactly this seat),
 * then give up or wait out the pause and try again. */
int
eg__door_enter_seated_slow(eg__door *d, eg__door_seat *s)
{
    /* A pause holds back new entrants only: a thread already inside
     * through this seat (a nested enter) goes on, or the pauser would wait
     * for a thread that waits for it. */
    uint64_t w0 = atomic_load_explicit(&d->word, memory_order_acquire);
    if ((w0 >> EG__DOOR_SHIFT) == EG__DOOR_OPEN
            && atomic_load_explicit(&s->inside, memory_order_relaxed) > 1) {
        return 0;
    }
    for (;;) {
        uint32_t n = atomic_load_explicit(&s->inside, memory_order_relaxed);
        atomic_store_explicit(&s->inside, n - 1, memory_order_seq_cst);
        eg__door_leave_seated_slow(d);
        uint64_t w = atomic_load_explicit(&d->word, memory_order_relaxed);
        if ((w >> EG__DOOR_SHIFT) != EG__DOOR_OPEN) {
            return -ESHUTDOWN;
        }
        eg__door_wait_resumed(d);
        /* The same store-load pair as the fast path; seq_cst here, this is
         * the slow path. */
        atomic_store_explicit(&s->inside, n, memory_order_seq_cst);
        w = atomic_load_explicit(&d->word, memory_order_seq_cst);
        if ((w >> EG__DOOR_SHIFT) == EG__DOOR_OPEN
                && !(w & EG__DOOR_PAUSED)) {
            return 0;
        }
    }
}

/* A leave (or a backed-out enter) saw the door closing or paused: the owner
 * may be waiting for this seat.  It re-counts under the lock before it
 * sleeps, so broadcasting under the lock cannot be missed. */
void
eg__door_leave_seated_slow(eg__door *d)
{
    eg__door_lock(d);
    pthread_cond_broadcast(&d->changed);
    eg__door_unlock(d);
}
