/*
 * decref.c -- the deferred-decref queue: any thread drops a reference
 * without the GIL; a thread attached to the owning interpreter applies it.
 * This file is the producers' side -- per-thread lanes, the spill path,
 * eg__decref_push_mp and the drain request through the kicker's list --
 * with the queue's accounting, init and fork handling.  The consumer's
 * side, the drain, is decref_drain.c; neither file calls the other.
 *
 * CAUTION: the producer side of this file (eg__decref_push_mp and what it
 * calls) runs on threads with no thread state, possibly after the
 * interpreter is gone.  It uses only libc and raw memory: no PyObject_*
 * call, no Py_DECREF, no PyMem_Malloc.  Only the drains (decref_drain.c)
 * touch objects, and they run attached.
 *
 * DESIGN
 *
 * Each (producer thread, interpreter) pair owns a lane: an unbounded
 * single-producer, single-consumer queue made of 8 KiB segments.  A push is
 * a plain store into the thread's own segment plus a release store of the
 * segment's `head`: no lock, no read-modify-write, no cache line shared
 * with other producers.  When a segment is full the producer links a new
 * one (the lane keeps one drained segment as a spare, so a steady stream
 * allocates nothing); bursts of any size queue without blocking and without
 * falling back to a shared structure.  The lanes of an interpreter hang off
 * a lock-free, push-only list that the interpreter's drainer walks.
 * Nothing can be stranded in a per-thread buffer: every lane is visible to
 * the drainer from its first push, whatever its thread does afterwards.
 * Only when memory runs out does a push take the spill path, a
 * mutex-protected array; only when that fails too is a decref dropped
 * (counted, and the object leaks).
 *
 * Wake-ups coalesce through `requested`: the push that finds it 0 sets it
 * to 1 and puts the interpreter on the kicker's list (kicker.c: a helper
 * thread that attaches and so applies the queue; Py_AddPendingCall is
 * unreliable for this on every supported version, see there).  Every later
 * push sees 1 and does nothing more, until the drainer clears it.  So a
 * burst of a million decrefs costs one eventfd write.  Any exitguard entry
 * point of the interpreter, eg_flush() and phase 2 apply the queue too.
 *
 * The protocol between a pusher P and the drainer D is a Dekker pair:
 *
 *      P: store seg->head (publish)     D: store requested = 0
 *         -- fence F_P --                  -- fence F_D --
 *         load requested                   load every head
 *
 * With both fences, either D sees P's item, or P sees requested == 0 and
 * requests a new drain; an item is never left behind with nobody asked to
 * apply it.  F_P sits on the hot path and a full fence costs as much as the
 * whole push, so the fences are asymmetric (fence.h): F_P is a compiler
 * barrier and F_D a membarrier(2) call, which runs a full barrier on every
 * thread of the process -- the rare side pays.  Where membarrier is missing
 * both are full fences.
 *
 * Synchronization table (what may run concurrently with what):
 *
 *   operation                 | runs on            | concurrent with
 *   --------------------------+--------------------+--------------------------
 *   eg__decref_push_mp        | any thread, no GIL | every op; pushes to one
 *                             |                    | lane come from one thread
 *   eg__decref_drain_sc       | attached, claimed  | pushes; never another
 *                             | via `draining`     | drain (the claim fails)
 *   lane list push            | producer, once     | drain walking the list
 *   lane unlink + free        | drainer only, with | pushes to other lanes;
 *                             | lanes_lock         | never a counting walk
 *   segment link / recycle    | producer / drainer | each other, via next and
 *                             |                    | the lane's spare slot
 *   eg__decref_pending_count  | any, lanes_lock    | everything but a lane's
 *                             |                    | free (approximate)
 *
 * What this file deliberately does not do: apply a decref without a thread
 * state, apply anything after the interpreter's phase 2 (such decrefs are
 * counted in `dropped` and leaked, as CPython's own thread_run does after
 * finalization began, gh-108987), or keep decrefs in order across threads.
 */
#include "core/decref.h"
#include "base/platform.h"
#include "base/fence.h"
#include "base/thread_exit.h"
#include "core/record.h"

#include <errno.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


/* The kicker's eventfd and its list of interpreters whose queue waits for a
 * drain (kicker.c takes them).  The list is a lock-free stack linked
 * through queue.kick_next; queue.kick_listed keeps a record on it at most
 * once.  Created once per process, reopened in a forked child. */
static int eg__kick_efd = -1;
static _Atomic(eg__record *) eg__kicked;

void
eg__decref_process_init(void)
{
    atomic_store_explicit(&eg__kicked, NULL, memory_order_relaxed);
    if (eg__kick_efd < 0) {
        eg__kick_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    }
    else {
        eg__reopen_eventfd(eg__kick_efd);    /* a forked child's own */
    }
}

/* ---- Per-thread lanes -------------------------------------------------- */

/* The calling thread's lanes.  initial-exec TLS: one load from %fs with no
 * __tls_get_addr call; the block is small enough for glibc's static TLS
 * surplus that dlopen'ed modules may use. */
typedef struct {
    eg__record *last_interp;   /* one-entry cache of the last lookup */
    eg__lane *last_lane;
    eg__lane *lanes;           /* all of this thread's lanes */
} eg__tls_lanes;

static _Thread_local eg__tls_lanes eg__tls EG__TLS_IE;

/* Thread exit (thread_exit.c): hand every lane of this thread to its
 * drainer, which frees it once empty.  No thread state, no GIL. */
static void
eg__lanes_at_exit(void)
{
    eg__lane *next;
    for (eg__lane *l = eg__tls.lanes; l != NULL; l = next) {
        /* Read the link first: once orphaned is set the drainer may free
         * the lane at any moment (found by the TSan stress test). */
        next = l->tls_next;
        /* Release: the drainer that reads orphaned == 1 (acquire) sees
         * every segment link and head this thread ever published. */
        atomic_store_explicit(&l->orphaned, 1, memory_order_release);
    }
    memset(&eg__tls, 0, sizeof(eg__tls));
}

static eg__seg *
eg__seg_new(void)
{
    eg__seg *seg = malloc(sizeof(eg__seg));
    if (seg != NULL) {
        atomic_init(&seg->head, 0);
        atomic_init(&seg->next, NULL);
    }
    return seg;
}

/* Slow path of a push: find or create this thread's lane for `in`.
 * Returns NULL only when out of memory. */
static EG__NOINLINE eg__lane *
eg__lane_lookup(eg__record *in)
{
    eg__lane *l;
    for (l = eg__tls.lanes; l != NULL; l = l->tls_next) {
        if (l->owner == in) {
            goto found;
        }
    }
    l = aligned_alloc(EG__CACHELINE,
                      (sizeof(eg__lane) + EG__CACHELINE - 1)
                      / EG__CACHELINE * EG__CACHELINE);
    eg__seg *seg = eg__seg_new();
    if (l == NULL || seg == NULL) {
        free(l);
        free(seg);
        return NULL;
    }
    memset(l, 0, sizeof(*l));
    l->owner = in;
    l->wseg = l->rseg = seg;
    (void)eg__thread_exit_arm(EG__EXIT_DECREF_LANES, eg__lanes_at_exit);
    l->tls_next = eg__tls.lanes;
    eg__tls.lanes = l;

    /* Push onto the interpreter's list.  Release on success: a drainer that
     * loads the list head (acquire) sees l fully initialised.  Only the
     * head pointer is contended; `next` of a published lane is changed by
     * the drainer alone. */
    eg__lane *head = atomic_load_explicit(&in->queue.lanes,
                                          memory_order_relaxed);
    do {
        l->next = head;
    } while (!atomic_compare_exchange_weak_explicit(
                 &in->queue.lanes, &head, l,
                 memory_order_release, memory_order_relaxed));
found:
    eg__tls.last_interp = in;
    eg__tls.last_lane = l;
    return l;
}

/* ---- Spill path ---------------------------------------------------------- */

/* No memory for a lane or segment: append to the mutex-protected spill
 * array.  Raw malloc only.  Returns 0, or -ENOMEM when the object had to
 * be leaked (counted in `dropped`). */
static EG__NOINLINE EG__COLD int
eg__spill(eg__record *in, PyObject *obj)
{
    eg__decref_queue *q = &in->queue;
    int rc = 0;
    atomic_fetch_add_explicit(&q->spilled, 1, memory_order_relaxed);
    eg__mutex_lock(&q->spill_lock);
    if (q->spill_len == q->spill_cap) {
        size_t cap = q->spill_cap ? q->spill_cap * 2 : 64;
        PyObject **grown = realloc(q->spill, cap * sizeof(*grown));
        if (grown == NULL) {
            rc = -ENOMEM;
            goto done;
        }
        q->spill = grown;
        q->spill_cap = cap;
    }
    q->spill[q->spill_len++] = obj;
done:
    eg__mutex_unlock(&q->spill_lock);
    if (rc < 0) {
        atomic_fetch_add_explicit(&q->dropped, 1, memory_order_relaxed);
    }
    return rc;
}

/* The producer's segment is full: continue in the spare or a new one.
 * Returns 0, or -ENOMEM (the caller spills). */
static EG__NOINLINE int
eg__lane_grow(eg__lane *l)
{
    /* Acquire pairs with the drainer's release exchange that recycled the
     * spare: its reads of the old contents happened before. */
    eg__seg *seg = atomic_exchange_explicit(&l->spare, NULL,
                                            memory_order_acquire);
    if (seg != NULL) {
        atomic_store_explicit(&seg->head, 0, memory_order_relaxed);
        atomic_store_explicit(&seg->next, NULL, memory_order_relaxed);
    }
    else if ((seg = eg__seg_new()) == NULL) {
        return -ENOMEM;
    }
    /* Release: the drainer that follows this link sees the reset head and
     * next above.  We never touch the old segment again; the drainer frees
     * or recycles it once it has emptied it and seen this link. */
    atomic_store_explicit(&l->wseg->next, seg, memory_order_release);
    l->wseg = seg;
    l->widx = 0;
    return 0;
}

/* ---- Requesting a drain ------------------------------------------------- */

int
eg__decref_kick_fd(void)
{
    return eg__kick_efd;
}

/* Put `in` on the kicker's list, and wake the kicker when the list was
 * empty (one eventfd write per burst, whatever the number of queues). */
static void
eg__kick(eg__record *in)
{
    eg__decref_queue *q = &in->queue;
    int expected = 0;
    /* Relaxed: kick_listed only says "on the list"; the list itself is
     * published by the release CAS below. */
    if (!atomic_compare_exchange_strong_explicit(
            &q->kick_listed, &expected, 1,
            memory_order_relaxed, memory_order_relaxed)) {
        return;
    }
    eg__record *head = atomic_load_explicit(&eg__kicked, memory_order_relaxed);
    do {
        q->kick_next = head;
        /* Release: the kicker that takes the list (acquire) sees kick_next. */
    } while (!atomic_compare_exchange_weak_explicit(
                 &eg__kicked, &head, in,
                 memory_order_release, memory_order_relaxed));
    if (head == NULL && eg__kick_efd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(eg__kick_efd, &one, sizeof(one));
        (void)w;        /* EAGAIN: the counter is saturated, a wake is due */
    }
}

eg__record *
eg__decref_take_kicked(void)
{
    /* Acquire: pairs with the release CAS of every push onto the list. */
    return atomic_exchange_explicit(&eg__kicked, NULL, memory_order_acquire);
}

eg__record *
eg__decref_kicked_pop(eg__record **list)
{
    eg__record *in = *list;
    if (in != NULL) {
        *list = in->queue.kick_next;
        /* After reading the link and before the drain: a request that
         * arrives while the kicker drains lists the record again (and
         * wakes the kicker), so nothing it queued waits for a kick that
         * was already used up.  seq_cst: orders this store before the
         * drain's "requested = 0". */
        atomic_store_explicit(&in->queue.kick_listed, 0, memory_order_seq_cst);
    }
    return in;
}

/* A push found `requested` == 0: claim the request and hand the queue to
 * the kicker (kicker.c says why not a pending call).  No GIL; only an
 * atomic, a CAS and at most one write(2).  After phase 2 began nobody is
 * asked: phase 2 applies what is there, and what comes later is dropped. */
static EG__NOINLINE void
eg__request_drain(eg__record *in)
{
    eg__decref_queue *q = &in->queue;
    int expected = 0;
    if (!atomic_compare_exchange_strong_explicit(
            &q->requested, &expected, 1,
            memory_order_relaxed, memory_order_relaxed)) {
        return;    /* another pusher requested it first */
    }
    if (atomic_load_explicit(&in->state, memory_order_relaxed)
            <= EG__STOPPING) {
        eg__kick(in);
    }
}

/* ---- Push ------------------------------------------------------------------ */

void
eg__decref_push_mp(eg__record *in, PyObject *obj)
{
    eg__decref_queue *q = &in->queue;

    /* Relaxed: a push that races with the end of phase 2 may still land in
     * a lane; it is then never applied and eg__decref_pending_count()
     * reports it as dropped.  The object leaks either way, by design. */
    if (EG__UNLIKELY(atomic_load_explicit(&in->state, memory_order_relaxed)
                    == EG__STOPPED)) {
        atomic_fetch_add_explicit(&q->dropped, 1, memory_order_relaxed);
        return;
    }

    eg__lane *l = EG__LIKELY(eg__tls.last_interp == in)
        ? eg__tls.last_lane : eg__lane_lookup(in);
    if (EG__UNLIKELY(l == NULL)
            || (EG__UNLIKELY(l->widx == EG__SEG_SIZE) && eg__lane_grow(l) < 0)) {
        (void)eg__spill(in, obj);
        goto kick;
    }
    uint32_t w = l->widx;
    l->wseg->slots[w] = obj;
    l->widx = w + 1;
    /* Release: the slot store above is visible to a drainer that loads this
     * head with acquire. */
    atomic_store_explicit(&l->wseg->head, w + 1, memory_order_release);
    /* Only this thread writes `pushed`; relaxed, for statistics. */
    atomic_store_explicit(&l->pushed,
                          atomic_load_explicit(&l->pushed,
                                               memory_order_relaxed) + 1,
                          memory_order_relaxed);

kick:
    eg__fence_light();       /* F_P */
    if (EG__UNLIKELY(!atomic_load_explicit(&q->requested,
                                          memory_order_relaxed))) {
        eg__request_drain(in);
    }
}

/* ---- Accounting ---------------------------------------------------------- */

uint64_t
eg__decref_pending_count(eg__record *in)
{
    eg__decref_queue *q = &in->queue;
    uint64_t n = 0;
    /* Not the drainer: hold off its frees while walking (issue 11: a
     * free-threaded stats() read lanes a concurrent drain had freed). */
    eg__mutex_lock(&q->lanes_lock);
    for (eg__lane *l = atomic_load_explicit(&q->lanes, memory_order_acquire);
         l != NULL; l = l->next) {
        uint64_t popped = atomic_load_explicit(&l->popped,
                                               memory_order_relaxed);
        uint64_t pushed = atomic_load_explicit(&l->pushed,
                                               memory_order_relaxed);
        n += pushed > popped ? pushed - popped : 0;
    }
    eg__mutex_unlock(&q->lanes_lock);
    eg__mutex_lock(&q->spill_lock);
    n += q->spill_len;
    eg__mutex_unlock(&q->spill_lock);
    return n;
}

int
eg__decref_reusable(eg__record *in)
{
    eg__decref_queue *q = &in->queue;
    /* Still on the kicker's list is fine: the kicker then attaches to the
     * new life, through its gate, and finds nothing or the new life's. */
    return !atomic_load_explicit(&q->draining, memory_order_acquire)
        && eg__decref_pending_count(in) == 0;
}

void
eg__decref_reset(eg__record *in)
{
    eg__decref_queue *q = &in->queue;
    atomic_store_explicit(&q->requested, 0, memory_order_relaxed);
    atomic_store_explicit(&q->applied, 0, memory_order_relaxed);
    atomic_store_explicit(&q->dropped, 0, memory_order_relaxed);
    atomic_store_explicit(&q->spilled, 0, memory_order_relaxed);
    atomic_store_explicit(&q->kicks, 0, memory_order_relaxed);
}

void
eg__decref_queue_init(eg__decref_queue *q)
{
    memset(q, 0, sizeof(*q));
    if (pthread_mutex_init(&q->spill_lock, NULL) != 0
            || pthread_mutex_init(&q->lanes_lock, NULL) != 0) {
        abort();
    }
}

/* In a forked child (pthread_atfork child handler: no Python API).  Only
 * the forking thread survives: every other thread's lanes become orphans
 * whose contents the child drains normally (they are valid objects of the
 * main interpreter, which survives fork).  A drain or spill that another
 * thread held at fork time is abandoned with its thread. */
void
eg__decref_after_fork_child(eg__record *in)
{
    eg__decref_queue *q = &in->queue;
    if (pthread_mutex_init(&q->spill_lock, NULL) != 0
            || pthread_mutex_init(&q->lanes_lock, NULL) != 0) {
        abort();
    }
    atomic_store_explicit(&q->draining, 0, memory_order_relaxed);
    atomic_store_explicit(&q->kick_listed, 0, memory_order_relaxed);
    for (eg__lane *l = atomic_load_explicit(&q->lanes, memory_order_relaxed);
         l != NULL; l = l->next) {
        int mine = 0;
        for (eg__lane *m = eg__tls.lanes; m != NULL; m = m->tls_next) {
            mine |= (m == l);
        }
        if (!mine) {
            atomic_store_explicit(&l->orphaned, 1, memory_order_relaxed);
        }
    }
    /* The kicker's list is forgotten (eg__decref_process_init); make the
     * next push ask again.  The child's after-fork hook drains the main
     * interpreter's queue itself. */
    atomic_store_explicit(&q->requested, 0, memory_order_relaxed);
}
