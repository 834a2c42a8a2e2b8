/*
 * decref_drain.c -- the consumer's side of the deferred-decref queue: a
 * thread attached to the owning interpreter applies what the producers
 * pushed (eg__decref_drain_sc, the single consumer; eg__decref_drain_all,
 * phase 2).  A drain walks the interpreter's lanes, recycles emptied
 * segments as the lanes' spares, frees the lanes of exited threads and
 * takes the spill array whole.
 *
 * The design -- lanes, the Dekker pair with the pushers and its asymmetric
 * fences, the synchronization table -- is at the top of decref.c.
 *
 * A drain runs attached and calls Py_DECREF, so finalizers run inside it;
 * they may push (to any lane, the one being drained included) or try to
 * drain (the single-consumer claim then fails).  This file calls nothing in
 * decref.c, and decref.c nothing here: the producers ask for a drain through
 * the kicker's list, never by calling one.
 */
#include "core/decref_drain.h"
#include "base/fence.h"
#include "core/record.h"

#include <sched.h>

/* ---- Fences ---------------------------------------------------------------- */

/* Set when the drainer's membarrier failed (fence.h); the drain that saw it
 * leaves `requested` set so that one more drain runs. */
static _Atomic int eg__fence_failed;

/* F_D: orders the drainer's `requested = 0` before its loads of the heads,
 * and pairs with F_P (eg__fence_light) in every running producer.  If the
 * membarrier failed, producers that ran a bare compiler barrier just before
 * are caught by one more drain. */
static void
eg__fence_drainer(void)
{
    if (eg__fence_heavy() < 0) {
        atomic_store_explicit(&eg__fence_failed, 1, memory_order_relaxed);
    }
}

/* ---- Drain ------------------------------------------------------------------ */

static void
eg__lane_free(eg__lane *l)
{
    eg__seg *seg = l->rseg;
    while (seg != NULL) {
        eg__seg *next = atomic_load_explicit(&seg->next, memory_order_acquire);
        free(seg);
        seg = next;
    }
    free(atomic_load_explicit(&l->spare, memory_order_relaxed));
    free(l);
}

/* Unlink `dead` from the lane list and free it.  Drainer only.  Pushers of
 * new lanes CAS the list head concurrently, so the head is unlinked with a
 * CAS and, if that loses, by walking from the new head. */
static void
eg__lane_unlink(eg__decref_queue *q, eg__lane *prev, eg__lane *dead)
{
    if (prev != NULL) {
        prev->next = dead->next;
    }
    else {
        eg__lane *expected = dead;
        if (!atomic_compare_exchange_strong_explicit(
                &q->lanes, &expected, dead->next,
                memory_order_acq_rel, memory_order_acquire)) {
            /* New lanes were pushed in front of it: dead is now further
             * down, and only we change `next` of published lanes. */
            eg__lane *p = expected;
            while (p->next != dead) {
                p = p->next;
            }
            p->next = dead->next;
        }
    }
    eg__lane_free(dead);
}

/* Apply everything published in one lane.  Returns how many. */
static Py_ssize_t
eg__lane_drain(eg__lane *l)
{
    Py_ssize_t n = 0;
    for (;;) {
        eg__seg *seg = l->rseg;
        /* Acquire pairs with the producer's release store of head. */
        uint32_t h = atomic_load_explicit(&seg->head, memory_order_acquire);
        while (l->ridx < h) {
            PyObject *obj = seg->slots[l->ridx++];
            atomic_store_explicit(&l->popped,
                                  atomic_load_explicit(&l->popped,
                                                       memory_order_relaxed)
                                  + 1, memory_order_relaxed);
            /* May run finalizers, which may push (to any lane, this one
             * included) or try to drain (the claim fails). */
            Py_DECREF(obj);
            n++;
        }
        if (l->ridx < EG__SEG_SIZE) {
            return n;          /* the producer is still filling it */
        }
        eg__seg *next = atomic_load_explicit(&seg->next, memory_order_acquire);
        if (next == NULL) {
            return n;          /* full, but the next one is not linked yet */
        }
        l->rseg = next;
        l->ridx = 0;
        /* Recycle the emptied segment as the lane's spare, or free it.
         * Release: our reads of its slots happen before the producer
         * reuses it (it takes the spare with acquire). */
        eg__seg *none = NULL;
        if (!atomic_compare_exchange_strong_explicit(
                &l->spare, &none, seg,
                memory_order_release, memory_order_relaxed)) {
            free(seg);
        }
    }
}

/* The drain proper; the caller holds the `draining` claim. */
static Py_ssize_t
eg__drain_claimed(eg__record *in)
{
    eg__decref_queue *q = &in->queue;
    atomic_store_explicit(&q->requested, 0, memory_order_relaxed);
    eg__fence_drainer();

    Py_ssize_t n = 0;
    eg__lane *prev = NULL;
    eg__lane *l = atomic_load_explicit(&q->lanes, memory_order_acquire);
    while (l != NULL) {
        eg__lane *next = l->next;
        /* Read orphaned first: if the thread has exited, everything it
         * published is visible to the drain below (acquire/release on
         * orphaned), so a drained orphaned lane is empty for good. */
        int orphaned = atomic_load_explicit(&l->orphaned,
                                            memory_order_acquire);
        n += eg__lane_drain(l);
        if (orphaned
                && atomic_load_explicit(&l->popped, memory_order_relaxed)
                   == atomic_load_explicit(&l->pushed, memory_order_relaxed)) {
            /* Readers other than us (stats() on a free-threaded build, where
             * no GIL orders them with this drain) walk under the lock. */
            eg__mutex_lock(&q->lanes_lock);
            eg__lane_unlink(q, prev, l);
            eg__mutex_unlock(&q->lanes_lock);
        }
        else {
            prev = l;
        }
        l = next;
    }

    /* The spill array: take it whole under the lock, apply it outside. */
    eg__mutex_lock(&q->spill_lock);
    PyObject **spill = q->spill;
    size_t len = q->spill_len;
    q->spill = NULL;
    q->spill_len = q->spill_cap = 0;
    eg__mutex_unlock(&q->spill_lock);
    for (size_t i = 0; i < len; i++) {
        Py_DECREF(spill[i]);
    }
    free(spill);
    n += (Py_ssize_t)len;

    if (EG__UNLIKELY(atomic_exchange_explicit(&eg__fence_failed, 0,
                                             memory_order_relaxed))) {
        atomic_store_explicit(&q->requested, 1, memory_order_relaxed);
    }
    atomic_fetch_add_explicit(&q->applied, (uint64_t)n, memory_order_relaxed);
    return n;
}

/* Claim the single-consumer role.  Acquire: this drain sees what the
 * previous drainer wrote (read positions, lane links) before it released the claim. */
static int
eg__drain_claim(eg__decref_queue *q)
{
    int expected = 0;
    return atomic_compare_exchange_strong_explicit(
        &q->draining, &expected, 1,
        memory_order_acquire, memory_order_relaxed);
}

static void
eg__drain_unclaim(eg__decref_queue *q)
{
    atomic_store_explicit(&q->draining, 0, memory_order_release);
}

Py_ssize_t
eg__decref_drain_sc(eg__record *in)
{
    if (!eg__drain_claim(&in->queue)) {
        return 0;
    }
    Py_ssize_t n = 0;
    if (atomic_load_explicit(&in->state, memory_order_acquire)
            != EG__STOPPED) {
        n = eg__drain_claimed(in);
    }
    eg__drain_unclaim(&in->queue);
    return n;
}

Py_ssize_t
eg__decref_drain_all(eg__record *in)
{
    eg__decref_queue *q = &in->queue;
    if (!eg__drain_claim(q)) {
        /* Another thread is draining (free-threaded builds, or a thread
         * whose finalizer runs long).  Wait for it without the GIL: it may
         * need the GIL to finish. */
        EG__BEGIN_WAIT
        while (!eg__drain_claim(q)) {
            sched_yield();
        }
        EG__END_WAIT
    }
    Py_ssize_t n = eg__drain_claimed(in);
    eg__drain_unclaim(q);
    return n;
}

