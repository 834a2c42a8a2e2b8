/*
 * decref_queue.c -- the deferred-decref queue: any thread drops a reference
 * without the GIL; a thread attached to the owning interpreter applies it.
 *
 * CAUTION: the producer side of this file (eg__decref_push_mp and what it
 * calls) runs on threads with no thread state, possibly after the
 * interpreter is gone.  It uses only libc and raw memory: no PyObject_*
 * call, no Py_DECREF, no PyMem_Malloc.  Only eg__decref_drain_sc and the
 * pending-call callback touch objects, and they run attached.
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
 * to 1 and, for the main interpreter, asks CPython for one pending call
 * (Py_AddPendingCall) that drains the queue on the main thread.  Every
 * later push sees 1 and does nothing more, until the drainer clears it.  So
 * a burst of a million decrefs costs one pending call.  A subinterpreter's
 * queue is not kicked that way -- pending calls only run reliably in the
 * main interpreter (see eg_compat.h) -- it is applied at the next exitguard
 * entry point in that interpreter, by eg_flush(), or in phase 2.
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
 * whole push, so the fences are asymmetric: F_P is a compiler barrier only
 * and F_D is membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), which makes every
 * running thread of the process execute a full barrier -- the rare side pays
 * (liburcu's "memb" flavour works the same way).  Where membarrier is not
 * available (old kernels, seccomp, ThreadSanitizer builds that cannot see
 * it) both fences are seq_cst fences.
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
 *   lane unlink + free        | drainer only       | pushes to other lanes
 *   segment link / recycle    | producer / drainer | each other, via next and
 *                             |                    | the lane's spare slot
 *   eg__decref_pending_count  | any                | everything (approximate)
 *
 * What this file deliberately does not do: apply a decref without a thread
 * state, apply anything after the interpreter's phase 2 (such decrefs are
 * counted in `dropped` and leaked, as CPython's own thread_run does after
 * finalization began, gh-108987), or keep decrefs in order across threads.
 */
#include "eg_internal.h"

#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__linux__)
#  include <linux/membarrier.h>
#  include <sys/syscall.h>
#endif

/* ---- Fences ---------------------------------------------------------------- */

/* 1 when the drainer's membarrier makes the pusher's compiler barrier
 * enough.  Written once per process (and again in a forked child) before
 * any producer can exist in that process. */
static _Atomic int eg__membarrier_ok;
/* Set when a membarrier call failed after registration; the drain that saw
 * it leaves `requested` set so that one more drain runs. */
static _Atomic int eg__fence_failed;

static int
eg__membarrier_register(void)
{
#if defined(__linux__) && defined(__NR_membarrier) && !defined(EG_TSAN)
    /* QUERY tells whether the kernel knows the command; REGISTER must
     * precede any PRIVATE_EXPEDITED call from this process. */
    long cmds = syscall(__NR_membarrier, MEMBARRIER_CMD_QUERY, 0, 0);
    if (cmds < 0 || !(cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED)) {
        return 0;
    }
    return syscall(__NR_membarrier,
                   MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0;
#else
    return 0;
#endif
}

void
eg__decref_process_init(void)
{
    atomic_store_explicit(&eg__membarrier_ok, eg__membarrier_register(),
                          memory_order_relaxed);
}

/* F_P: orders the pusher's publication of `head` before its load of
 * `requested`.  A compiler barrier when the drainer uses membarrier: the
 * barrier IPI turns it into a full fence exactly when it matters. */
static inline void
eg__fence_producer(void)
{
    if (EG_LIKELY(atomic_load_explicit(&eg__membarrier_ok,
                                       memory_order_relaxed))) {
        atomic_signal_fence(memory_order_seq_cst);
    }
    else {
        eg__full_fence();
    }
}

/* F_D: orders the drainer's `requested = 0` before its loads of the heads,
 * and pairs with F_P in every running producer. */
static void
eg__fence_drainer(void)
{
#if defined(__linux__) && defined(__NR_membarrier)
    if (atomic_load_explicit(&eg__membarrier_ok, memory_order_relaxed)) {
        if (syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0)
                == 0) {
            return;
        }
        /* Only an unregistered process gets an error here, and the fork
         * handler registers the child again; if it still fails, switch
         * every producer to full fences for good and make sure another
         * drain follows: producers that ran a bare compiler barrier before
         * the switch are then caught by that drain. */
        atomic_store_explicit(&eg__membarrier_ok, 0, memory_order_seq_cst);
        eg__full_fence();
        atomic_store_explicit(&eg__fence_failed, 1, memory_order_relaxed);
        return;
    }
#endif
    eg__full_fence();
}

/* ---- Per-thread lanes -------------------------------------------------- */

/* The calling thread's lanes.  initial-exec TLS: one load from %fs with no
 * __tls_get_addr call; the block is small enough for glibc's static TLS
 * surplus that dlopen'ed modules may use. */
typedef struct {
    eg__interp *last_interp;   /* one-entry cache of the last lookup */
    eg__lane *last_lane;
    eg__lane *lanes;           /* all of this thread's lanes */
    int key_set;               /* the exit destructor is armed */
} eg__tls_lanes;

#if defined(__GNUC__) && !defined(EG_NO_INITIAL_EXEC_TLS)
static _Thread_local eg__tls_lanes eg__tls
    __attribute__((tls_model("initial-exec")));
#else
static _Thread_local eg__tls_lanes eg__tls;
#endif

static pthread_key_t eg__tls_key;
static pthread_once_t eg__tls_once = PTHREAD_ONCE_INIT;

/* Thread exit (pthread key destructor): hand every lane of this thread to
 * its drainer, which frees it once empty.  No thread state, no GIL. */
static void
eg__tls_destructor(void *unused)
{
    (void)unused;
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

static void
eg__tls_key_create(void)
{
    if (pthread_key_create(&eg__tls_key, eg__tls_destructor) != 0) {
        abort();
    }
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
static EG_NOINLINE eg__lane *
eg__lane_lookup(eg__interp *in)
{
    eg__lane *l;
    for (l = eg__tls.lanes; l != NULL; l = l->tls_next) {
        if (l->owner == in) {
            goto found;
        }
    }
    l = aligned_alloc(EG_CACHELINE,
                      (sizeof(eg__lane) + EG_CACHELINE - 1)
                      / EG_CACHELINE * EG_CACHELINE);
    eg__seg *seg = eg__seg_new();
    if (l == NULL || seg == NULL) {
        free(l);
        free(seg);
        return NULL;
    }
    memset(l, 0, sizeof(*l));
    l->owner = in;
    l->wseg = l->rseg = seg;
    if (!eg__tls.key_set) {
        pthread_once(&eg__tls_once, eg__tls_key_create);
        /* Any non-NULL value arms the destructor. */
        (void)pthread_setspecific(eg__tls_key, &eg__tls);
        eg__tls.key_set = 1;
    }
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
static EG_NOINLINE EG_COLD int
eg__spill(eg__interp *in, PyObject *obj)
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
static EG_NOINLINE int
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

#if EG_PENDING_CALL_NEEDS_KICK
/* The kicker (see eg_compat.h): one thread per process, for the main
 * interpreter, started by the first request and woken through an eventfd;
 * each wake-up attaches through the gate -- an exitguard entry point, so
 * the queue is applied -- and detaches.  It exits when the gate refuses it
 * or when phase 2 stops it.  No thread state, no GIL, outside the gate. */
static struct {
    pthread_mutex_t lock;
    int efd;
    int started;                   /* under lock */
    _Atomic int stop;
    pthread_t tid;
} eg__kick = {.lock = PTHREAD_MUTEX_INITIALIZER, .efd = -1};

static void *
eg__kicker_main(void *unused)
{
    (void)unused;
    while (!atomic_load(&eg__kick.stop)) {
        struct pollfd p = {.fd = eg__kick.efd, .events = POLLIN};
        (void)poll(&p, 1, -1);
        uint64_t v;
        ssize_t r = read(eg__kick.efd, &v, sizeof(v));
        (void)r;
        if (atomic_load(&eg__kick.stop)) {
            break;
        }
        /* Let a burst accumulate: one drain per 10 ms at most, so a busy
         * producer is not interrupted by a drain (and its membarrier) per
         * push.  The latency bound (<= 100 ms) leaves room for it. */
        struct timespec pause = {0, 10 * 1000 * 1000};
        nanosleep(&pause, NULL);
        eg_gil st;
        if (eg_gil_ensure(NULL, &st) != 0) {
            break;                 /* shutting down: phase 2 drains */
        }
        eg_gil_release(&st);
    }
    eg__tstates_release_self();
    return NULL;
}

static void
eg__kick_main_thread(void)
{
    eg__mutex_lock(&eg__kick.lock);
    if (!eg__kick.started && !atomic_load(&eg__kick.stop)) {
        if (eg__kick.efd < 0) {
            eg__kick.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        }
        if (eg__kick.efd >= 0
                && pthread_create(&eg__kick.tid, NULL, eg__kicker_main,
                                  NULL) == 0) {
#if defined(__linux__)
            (void)pthread_setname_np(eg__kick.tid, "eg-kick");
#endif
            eg__kick.started = 1;
        }
    }
    int efd = eg__kick.started ? eg__kick.efd : -1;
    eg__mutex_unlock(&eg__kick.lock);
    if (efd >= 0) {
        uint64_t one = 1;
        ssize_t w = write(efd, &one, sizeof(one));
        (void)w;
    }
}
#endif

/* Main interpreter, phase 2, attached, before the gate closes: stop the
 * kicker and join it with the GIL released (it may be waiting for it). */
void
eg__decref_stop_kicker(void)
{
#if EG_PENDING_CALL_NEEDS_KICK
    eg__mutex_lock(&eg__kick.lock);
    atomic_store(&eg__kick.stop, 1);
    int started = eg__kick.started;
    eg__kick.started = 0;
    eg__mutex_unlock(&eg__kick.lock);
    if (started) {
        uint64_t one = 1;
        ssize_t w = write(eg__kick.efd, &one, sizeof(one));
        (void)w;
        Py_BEGIN_ALLOW_THREADS
        pthread_join(eg__kick.tid, NULL);
        Py_END_ALLOW_THREADS
    }
#endif
}

/* pthread_atfork child: the kicker is gone with the parent's threads. */
void
eg__decref_kicker_after_fork_child(void)
{
#if EG_PENDING_CALL_NEEDS_KICK
    if (pthread_mutex_init(&eg__kick.lock, NULL) != 0) {
        abort();
    }
    eg__kick.started = 0;
    eg__reopen_eventfd(eg__kick.efd);
#endif
}

static int eg__pending_drain(void *arg);

/* A push found `requested` == 0: claim the request and, for the main
 * interpreter, ask for a pending call.  No GIL.
 *
 * Py_AddPendingCall() must not be called once finalization has gone past
 * the point where CPython frees the interpreter (a crash on 3.9-3.12, an
 * orphaned call on 3.13+; cpython.md section 6).  Phase 2 therefore sets
 * RELEASING and then waits for `pc_inflight` to fall to 0: a pusher counts
 * itself in before it reads the state (seq_cst on both sides, a Dekker pair
 * again), so either it sees RELEASING and does not call, or phase 2 waits
 * for its call to return. */
static EG_NOINLINE void
eg__request_drain(eg__interp *in)
{
    eg__decref_queue *q = &in->queue;
    int expected = 0;
    if (!atomic_compare_exchange_strong_explicit(
            &q->requested, &expected, 1,
            memory_order_relaxed, memory_order_relaxed)) {
        return;    /* another pusher requested it first */
    }
    if (!in->is_main) {
        return;    /* entry points, eg_flush and phase 2 apply it */
    }
    atomic_fetch_add_explicit(&q->pc_inflight, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&in->state, memory_order_seq_cst)
            <= EG_STOPPING) {
        atomic_fetch_add_explicit(&q->pending_calls, 1, memory_order_relaxed);
        if (Py_AddPendingCall(eg__pending_drain, in) != 0) {
            /* All 32 slots are taken.  Let the next push try again rather
             * than spin here; entry points drain meanwhile. */
            atomic_store_explicit(&q->requested, 0, memory_order_relaxed);
        }
#if EG_PENDING_CALL_NEEDS_KICK
        else if (eg__tstate_attached() == NULL) {
            eg__kick_main_thread();
        }
#endif
    }
    atomic_fetch_sub_explicit(&q->pc_inflight, 1, memory_order_release);
}

/* ---- Push ------------------------------------------------------------------ */

void
eg__decref_push_mp(eg__interp *in, PyObject *obj)
{
    eg__decref_queue *q = &in->queue;

    /* Relaxed: a push that races with the end of phase 2 may still land in
     * a lane; it is then never applied and eg__decref_pending_count()
     * reports it as dropped.  The object leaks either way, by design. */
    if (EG_UNLIKELY(atomic_load_explicit(&in->state, memory_order_relaxed)
                    == EG_STOPPED)) {
        atomic_fetch_add_explicit(&q->dropped, 1, memory_order_relaxed);
        return;
    }

    eg__lane *l = EG_LIKELY(eg__tls.last_interp == in)
        ? eg__tls.last_lane : eg__lane_lookup(in);
    if (EG_UNLIKELY(l == NULL)
            || (EG_UNLIKELY(l->widx == EG_SEG_SIZE) && eg__lane_grow(l) < 0)) {
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
    eg__fence_producer();
    if (EG_UNLIKELY(!atomic_load_explicit(&q->requested,
                                          memory_order_relaxed))) {
        eg__request_drain(in);
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
        if (l->ridx < EG_SEG_SIZE) {
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
eg__drain_claimed(eg__interp *in)
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
            eg__lane_unlink(q, prev, l);
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

    if (EG_UNLIKELY(atomic_exchange_explicit(&eg__fence_failed, 0,
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
eg__decref_drain_sc(eg__interp *in)
{
    if (!eg__drain_claim(&in->queue)) {
        return 0;
    }
    Py_ssize_t n = 0;
    if (atomic_load_explicit(&in->state, memory_order_acquire)
            != EG_STOPPED) {
        n = eg__drain_claimed(in);
    }
    eg__drain_unclaim(&in->queue);
    return n;
}

Py_ssize_t
eg__decref_drain_all(eg__interp *in)
{
    eg__decref_queue *q = &in->queue;
    if (!eg__drain_claim(q)) {
        /* Another thread is draining (free-threaded builds, or a thread
         * whose finalizer runs long).  Wait for it without the GIL: it may
         * need the GIL to finish. */
        Py_BEGIN_ALLOW_THREADS
        while (!eg__drain_claim(q)) {
            sched_yield();
        }
        Py_END_ALLOW_THREADS
    }
    Py_ssize_t n = eg__drain_claimed(in);
    eg__drain_unclaim(q);
    return n;
}

/* The pending call.  CPython runs it on the main thread, attached -- and
 * also while the runtime is finalizing (cpython.md section 6), so it checks
 * exitguard's own state and where it runs before touching anything. */
static int
eg__pending_drain(void *arg)
{
    eg__interp *in = (eg__interp *)arg;
    if (!eg__attached_to(in)) {
        /* 3.9-3.11 may deliver it to the interpreter of the pushing
         * thread's gilstate state.  Let the next push ask again. */
        atomic_store_explicit(&in->queue.requested, 0, memory_order_relaxed);
        return 0;
    }
    (void)eg__decref_drain_sc(in);
    return 0;
}

/* ---- Accounting ---------------------------------------------------------- */

uint64_t
eg__decref_pending_count(eg__interp *in)
{
    eg__decref_queue *q = &in->queue;
    uint64_t n = 0;
    for (eg__lane *l = atomic_load_explicit(&q->lanes, memory_order_acquire);
         l != NULL; l = l->next) {
        uint64_t popped = atomic_load_explicit(&l->popped,
                                               memory_order_relaxed);
        uint64_t pushed = atomic_load_explicit(&l->pushed,
                                               memory_order_relaxed);
        n += pushed > popped ? pushed - popped : 0;
    }
    eg__mutex_lock(&q->spill_lock);
    n += q->spill_len;
    eg__mutex_unlock(&q->spill_lock);
    return n;
}

void
eg__decref_queue_init(eg__decref_queue *q)
{
    memset(q, 0, sizeof(*q));
    if (pthread_mutex_init(&q->spill_lock, NULL) != 0) {
        abort();
    }
}

/* In a forked child (pthread_atfork child handler: no Python API).  Only
 * the forking thread survives: every other thread's lanes become orphans
 * whose contents the child drains normally (they are valid objects of the
 * main interpreter, which survives fork).  A drain or spill that another
 * thread held at fork time is abandoned with its thread. */
void
eg__decref_after_fork_child(eg__interp *in)
{
    eg__decref_queue *q = &in->queue;
    if (pthread_mutex_init(&q->spill_lock, NULL) != 0) {
        abort();
    }
    atomic_store_explicit(&q->draining, 0, memory_order_relaxed);
    atomic_store_explicit(&q->pc_inflight, 0, memory_order_relaxed);
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
    /* Pending calls requested in the parent may not survive into the
     * child; make the next push or entry point ask again. */
    atomic_store_explicit(&q->requested,
                          eg__decref_pending_count(in) > 0,
                          memory_order_relaxed);
}
