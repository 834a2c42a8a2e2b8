/*
 * door.h -- a door that threads pass through: the "count in, then check
 * closed" protocol, written once.
 *
 * Private to exitguard.  CAUTION: everything here runs on any thread with
 * or without a thread state; it uses atomics and pthreads only and never
 * touches CPython.  A caller that waits (close, pause) while attached must
 * release the GIL around the wait itself: a thread inside may need it to
 * come out.
 *
 * A door is one 64-bit word -- a state, a pause bit and the number of
 * threads inside -- plus a mutex and a condition variable for the rare
 * waits.  Threads enter (counted in) while it is OPEN and not paused, and
 * leave.  Whoever owns the door can
 *   - close it for good: OPEN -> CLOSING, wait (bounded) until nobody is
 *     inside, then CLOSING -> CLOSED;
 *   - pause it around an event that no thread may be inside for (fork):
 *     entering waits while paused, the pauser waits (bounded) until nobody
 *     is inside, then resumes it.
 * Every transition is one atomic read-modify-write of the word, so the
 * door never reads OPEN once closing began (issue 11: a clear-then-set pair
 * used to open the gate for an instant).
 */
#ifndef EG__DOOR_H
#define EG__DOOR_H

#ifndef EG_BUILDING
#  error "door.h is private to exitguard"
#endif

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "base/fence.h"

/* The word: bits 62-63 the state, bit 61 paused, bits 0-60 the count. */
#define EG__DOOR_OPEN     0ull
#define EG__DOOR_CLOSING  1ull
#define EG__DOOR_CLOSED   2ull
#define EG__DOOR_SHIFT    62
#define EG__DOOR_PAUSED   (1ull << 61)
#define EG__DOOR_COUNT    (EG__DOOR_PAUSED - 1)

/* A seat: one thread's own way through a door, for threads that pass it
 * often (the gate's cached thread states).  Its owner counts itself in and
 * out by plain stores to `inside` -- no read-modify-write of the shared
 * word -- and the door's owner reads every seat after forcing a memory
 * barrier on every thread of the process (fence.h; door.c, DESIGN).
 * A seat is listed in its door from eg__door_seat_add to
 * eg__door_seat_remove. */
typedef struct eg__door_seat {
    _Atomic uint32_t inside;       /* its thread's nested enters; owner writes */
    struct eg__door_seat *prev, *next;      /* under the door's lock */
} eg__door_seat;

typedef struct {
    _Atomic uint64_t word;
    pthread_mutex_t lock;          /* with `changed`; protects pause_depth, seats */
    pthread_cond_t changed;        /* emptied while closing/paused; resumed */
    int pause_depth;               /* nested pauses (concurrent forks) */
    eg__door_seat *seats;          /* every listed seat */
} eg__door;

/* Make a door: zeroed memory makes an OPEN, empty one.  Also in a forked
 * child (pthread_atfork child handler) with `inside` = the forking thread's
 * own entries: the others vanished with their threads, a pause in progress
 * is over, and the state (open, closing, closed) is kept. */
void eg__door_init(eg__door *d, uint64_t inside);
/* Free the door's lock and condition.  Nobody may be inside, waiting, or
 * use it again (a door that is freed with its owner: completion queues). */
void eg__door_destroy(eg__door *d);

/* Any thread: count the caller in.  Returns 0, or -ESHUTDOWN once the door
 * is closing or closed.  While the door is paused it waits, without any
 * GIL (the caller must not be attached), until it is resumed. */
int eg__door_enter_mp(eg__door *d);

/* Any thread that entered: count it out; wakes a closer or pauser waiting
 * for the door to empty. */
void eg__door_leave_mp(eg__door *d);

/* The owner: OPEN -> CLOSING (idempotent).  From here every enter fails.
 * Returns the number of threads inside at that instant. */
uint64_t eg__door_begin_close(eg__door *d);

/* The owner, after begin_close or pause: wait until nobody is inside or
 * `deadline` (CLOCK_MONOTONIC) passes.  Blocks: release the GIL around it.
 * Returns the number still inside (0 unless the deadline passed). */
uint64_t eg__door_wait_empty(eg__door *d, const struct timespec *deadline);

/* The owner, after begin_close: CLOSING -> CLOSED.  Threads still inside
 * (past a deadline) stay counted; the door never reads OPEN again. */
void eg__door_finish_close(eg__door *d);

/* Any thread: pause (nests).  New enters wait; threads inside go on.
 * Pair: eg__door_resume(). */
void eg__door_pause(eg__door *d);
void eg__door_resume(eg__door *d);

/* The owner, for a door that is CLOSED, empty and not paused: OPEN again,
 * for a new life of what it protects.  Whatever tells entrants of the old
 * life apart must be changed before (the release store here publishes it). */
void eg__door_reopen(eg__door *d);
/* Not paused, nobody waiting out a pause (a snapshot, under the lock). */
int eg__door_idle(eg__door *d);

/* Any thread: the state (EG__DOOR_OPEN, _CLOSING, _CLOSED) and the count;
 * racy snapshots, for decisions the owner makes and for statistics.  The
 * count is the counted enters' plus every seat's. */
uint64_t eg__door_state(const eg__door *d);
uint64_t eg__door_inside(eg__door *d);

/* ---- Seats ---------------------------------------------------------------- */

/* The seat's thread: list s in d (s->inside as it is: a forked child puts
 * back the seats of the thread that survived). */
void eg__door_seat_add(eg__door *d, eg__door_seat *s);
/* Any thread, for a seat whose thread is not entering nor leaving it now
 * (it has exited, or is the caller): take s out of d.  A seat still inside
 * (its thread exited between enter and leave) leaves its count on the
 * door's word, for good: the door's owner waits for it to its deadline, as
 * for any thread inside. */
void eg__door_seat_remove(eg__door *d, eg__door_seat *s);

int eg__door_enter_seated_slow(eg__door *d, eg__door_seat *s);
void eg__door_leave_seated_slow(eg__door *d);

/* The seat's thread, not attached: count itself in through its seat.
 * Returns 0, or -ESHUTDOWN once the door is closing or closed; waits while
 * paused, unless already inside through s.  Nests.  No read-modify-write on the way in or out: a store, a
 * compiler barrier and a load each (door.c, DESIGN, "Seats"). */
static inline int
eg__door_enter_seated_sc(eg__door *d, eg__door_seat *s)
{
    uint32_t n = atomic_load_explicit(&s->inside, memory_order_relaxed);
    /* Relaxed store: the light fence and the owner's heavy one order it
     * before the load (fence.h).  Acquire load: pairs with
     * eg__door_reopen's release (what the owner set up for a new life). */
    atomic_store_explicit(&s->inside, n + 1, memory_order_relaxed);
    eg__fence_light();
    uint64_t w = atomic_load_explicit(&d->word, memory_order_acquire);
    if (__builtin_expect(w >> EG__DOOR_SHIFT == EG__DOOR_OPEN
                         && !(w & EG__DOOR_PAUSED), 1)) {
        return 0;
    }
    return eg__door_enter_seated_slow(d, s);
}

/* The seat's thread, inside through s: count itself out; wakes an owner
 * waiting for the door to empty. */
static inline void
eg__door_leave_seated_sc(eg__door *d, eg__door_seat *s)
{
    uint32_t n = atomic_load_explicit(&s->inside, memory_order_relaxed);
    /* Release: everything done inside happens before the owner's acquire
     * load that reads the smaller count.  Then the same store-load pair as
     * in enter: either the owner's scan sees this store, or this load sees
     * the owner's RMW and wakes it. */
    atomic_store_explicit(&s->inside, n - 1, memory_order_release);
    eg__fence_light();
    uint64_t w = atomic_load_explicit(&d->word, memory_order_relaxed);
    if (__builtin_expect(w >> EG__DOOR_SHIFT != EG__DOOR_OPEN
                         || (w & EG__DOOR_PAUSED), 0)) {
        eg__door_leave_seated_slow(d);
    }
}

#endif /* EG__DOOR_H */
