/*
 * registry.c -- native references (eg_ref): strong references that native
 * code holds, registered per interpreter so that phase 2 can release every
 * one still held while the interpreter is whole (the sweep itself is
 * registry_sweep.c).  Also the two small entry points built on the queue:
 * eg_decref() and eg_flush().
 *
 * CAUTION: eg_ref_release() and the slot free list run on any thread, with
 * no thread state, at any time -- also after Py_FinalizeEx().  That path
 * uses atomics and the queue's GIL-free push only; it calls Py_DECREF only
 * when the caller is attached to the reference's own interpreter.
 *
 * DESIGN
 *
 * An eg_ref is a slot in its interpreter's registry.  Slots live in chunks
 * that double in size (never freed, like the record: a release may come at
 * any time) and are recycled through a lock-free free list whose head
 * carries an ABA tag.  Registering is a pop plus a store; releasing is an
 * exchange of the object pointer plus a push -- three atomic operations per
 * new/release pair and no lock.  There is no list of live references: phase
 * 2 scans the chunks, taking each object with the same atomic exchange that
 * eg_ref_release() uses, so whichever comes first releases the object and
 * the other sees NULL.
 *
 *   operation            | runs on                 | concurrent with
 *   ---------------------+-------------------------+---------------------------
 *   eg_ref_new (pop)     | attached                | pops, pushes, growth
 *   eg_ref_release(push) | any thread              | everything
 *   grow                 | attached, grow_lock     | pops and pushes
 *   sweep                | phase 2, attached       | releases (exchange decides;
 *                        |                         | with marks: CAS, see below)
 *   release of a mark    | any thread              | everything (uncounts it)
 *   live count           | any                     | everything (approximate)
 *
 * A slot's next_free is read by a pop that may lose its CAS to a
 * concurrent pop of the same slot; the value it read is then discarded, and
 * the tag makes the CAS fail even if the head index came back (ABA).
 *
 * THE LEAK REPORT'S MARK
 *
 * A reference phase 2 releases is not yet a leak: its owner may still
 * release the handle later -- in its module's m_free, a C++ static
 * destructor, a libc atexit handler -- and then it was never one.  So when
 * the report is on (report.c) the sweep does not store NULL but the
 * report's entry for the object's type and creation site, tagged with bit
 * 0 (objects and entries are at least 2-aligned), and counts it there.  A
 * later eg_ref_release() takes the tag with the same exchange as ever and
 * uncounts it; eg_ref_get() and the live count treat a tag as NULL.  The
 * sweep takes an object with a compare-and-swap on the object it saw, never
 * an exchange (a slot its owner freed in between must stay NULL), leaving a
 * bare mark while it looks the entry up -- the object is its own then --
 * and then the entry's mark.  The report, at the very end of the process,
 * names what is still counted.
 *
 * eg_ref_new records its caller's return address in the slot (one store):
 * the report says which shared object -- and, resolved, which line --
 * created a reference that stayed unreleased.
 */
#include "core/registry.h"
#include "base/fence.h"
#include "base/thread_exit.h"
#include "core/record.h"
#include "core/decref.h"
#include "core/leak.h"
#include "core/decref_drain.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>

/* ---- Slot addressing ------------------------------------------------------- */

static inline uint32_t
eg__chunk_of(uint32_t index, uint32_t *offset)
{
    uint64_t j = (uint64_t)index + EG__REF_CHUNK0;
    uint32_t k = (uint32_t)(63 - __builtin_clzll(j)) - EG__REF_CHUNK0_LOG2;
    *offset = (uint32_t)(j - ((uint64_t)EG__REF_CHUNK0 << k));
    return k;
}

static inline eg_ref *
eg__slot(eg__registry *reg, uint32_t index)
{
    uint32_t off;
    uint32_t k = eg__chunk_of(index, &off);
    /* Relaxed is enough: every index we can see came through the free
     * list, whose release/acquire CAS ordered the chunk's publication. */
    return atomic_load_explicit(&reg->chunks[k], memory_order_relaxed) + off;
}

static inline uint64_t
eg__free_head(uint64_t old_head, uint32_t index_plus_1)
{
    return (((old_head >> 32) + 1) << 32) | index_plus_1;
}

/* ---- Free list ------------------------------------------------------------ */

/* Push a chain first..last (linked through next_free) onto the free list. */
static void
eg__free_push_chain(eg__registry *reg, eg_ref *first, eg_ref *last)
{
    uint64_t head = atomic_load_explicit(&reg->free_head, memory_order_relaxed);
    do {
        atomic_store_explicit(&last->next_free, (uint32_t)head,
                              memory_order_relaxed);
        /* Release: the slot's link (and, for new chunks, the chunk) is
         * visible to the pop that acquires this head. */
    } while (!atomic_compare_exchange_weak_explicit(
                 &reg->free_head, &head,
                 eg__free_head(head, first->index + 1),
                 memory_order_release, memory_order_relaxed));
}

/* Add a chunk.  Attached.  Returns 0, or -ENOMEM. */
static EG__NOINLINE int
eg__grow(eg__record *in)
{
    eg__registry *reg = &in->refs;
    int rc = 0;
    eg__mutex_lock(&reg->grow_lock);
    if ((uint32_t)atomic_load_explicit(&reg->free_head,
                                       memory_order_acquire) != 0) {
        goto done;     /* another thread grew it, or slots came back */
    }
    uint32_t k = atomic_load_explicit(&reg->nchunks, memory_order_relaxed);
    if (k >= EG__REF_MAX_CHUNKS) {
        rc = -ENOMEM;
        goto done;
    }
    uint32_t n = EG__REF_CHUNK0 << k;
    uint32_t base = (EG__REF_CHUNK0 << k) - EG__REF_CHUNK0;
    eg_ref *chunk = calloc(n, sizeof(eg_ref));
    if (chunk == NULL) {
        rc = -ENOMEM;
        goto done;
    }
    for (uint32_t i = 0; i < n; i++) {
        chunk[i].interp = in;
        chunk[i].index = base + i;
        atomic_init(&chunk[i].next_free, base + i + 2);
    }
    atomic_store_explicit(&reg->chunks[k], chunk, memory_order_release);
    atomic_store_explicit(&reg->nchunks, k + 1, memory_order_release);
    eg__free_push_chain(reg, &chunk[0], &chunk[n - 1]);
done:
    eg__mutex_unlock(&reg->grow_lock);
    return rc;
}

static eg_ref *
eg__ref_pop(eg__record *in)
{
    eg__registry *reg = &in->refs;
    uint64_t head = atomic_load_explicit(&reg->free_head, memory_order_acquire);
    for (;;) {
        uint32_t ip1 = (uint32_t)head;
        if (EG__UNLIKELY(ip1 == 0)) {
            if (eg__grow(in) < 0) {
                return NULL;
            }
            head = atomic_load_explicit(&reg->free_head, memory_order_acquire);
            continue;
        }
        eg_ref *s = eg__slot(reg, ip1 - 1);
        uint32_t next = atomic_load_explicit(&s->next_free,
                                             memory_order_relaxed);
        /* Acquire on success pairs with the push that made s the head. */
        if (atomic_compare_exchange_weak_explicit(
                &reg->free_head, &head, eg__free_head(head, next),
                memory_order_acquire, memory_order_acquire)) {
            /* The caller marks it handed out.  A pop that lost the race
             * for this slot read its link before and fails its CAS on the
             * tag, so the mark cannot mislead it. */
            return s;
        }
    }
}

/* ---- The calling thread's slot cache ------------------------------------- */

/* Free slots of one record, kept by the thread that released them for its
 * next eg_ref_new: a pop and a push of the shared free list are a CAS each,
 * and a reference made and dropped by one thread needs neither.  Slots in a
 * cache read EG__REF_CACHED (not handed out: record reuse may go ahead; the
 * cache holds slots of the same registry in its next life).  The cache goes
 * back to its record's free list when the thread switches records, fills
 * up, or exits; a forked child loses the caches of the threads that did
 * not survive (at most EG__REF_CACHE slots each, never handed out again).
 * initial-exec TLS: a load from %fs, as the decref lanes' (decref.c). */
#define EG__REF_CACHE 32u

typedef struct {
    eg__record *rec;            /* whose slots these are (NULL: none yet) */
    uint32_t n;
    eg_ref *slots[EG__REF_CACHE];
} eg__ref_cache;

static _Thread_local eg__ref_cache *eg__rcache EG__TLS_IE;

/* The first `n` slots of c back to their record's free list, as one chain. */
static void
eg__rcache_spill(eg__ref_cache *c, uint32_t n)
{
    if (n == 0) {
        return;
    }
    for (uint32_t i = 0; i + 1 < n; i++) {
        atomic_store_explicit(&c->slots[i]->next_free,
                              c->slots[i + 1]->index + 1,
                              memory_order_relaxed);
    }
    eg__free_push_chain(&c->rec->refs, c->slots[0], c->slots[n - 1]);
    memmove(c->slots, c->slots + n, (c->n - n) * sizeof(c->slots[0]));
    c->n -= n;
}

/* Thread exit (thread_exit.c): the cache goes back.  No thread state
 * needed: atomics only. */
static void
eg__rcache_at_exit(void)
{
    eg__ref_cache *c = eg__rcache;
    eg__rcache = NULL;
    if (c == NULL) {
        return;
    }
    if (c->rec != NULL) {
        eg__rcache_spill(c, c->n);
    }
    free(c);
}

/* The calling thread's cache, made on first use; NULL when out of memory
 * (the shared free list is used then). */
static eg__ref_cache *
eg__rcache_get(void)
{
    eg__ref_cache *c = eg__rcache;
    if (EG__LIKELY(c != NULL)) {
        return c;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL
            || eg__thread_exit_arm(EG__EXIT_REF_CACHE, eg__rcache_at_exit) != 0) {
        free(c);
        return NULL;
    }
    eg__rcache = c;
    return c;
}

/* Any thread (owning `in`'s interpreter or not): a free slot, handed out. */
static inline eg_ref *
eg__ref_alloc(eg__record *in)
{
    eg__ref_cache *c = eg__rcache;
    eg_ref *s;
    if (EG__LIKELY(c != NULL && c->rec == in && c->n > 0)) {
        s = c->slots[--c->n];
    }
    else if ((s = eg__ref_pop(in)) == NULL) {
        return NULL;
    }
    /* Relaxed: ordered before the registering store's fence in
     * eg_ref_new, which is what the sweep and record reuse pair with. */
    atomic_store_explicit(&s->next_free, EG__REF_HANDED_OUT,
                          memory_order_relaxed);
    return s;
}

/* Any thread: s is free again.  Into this thread's cache when it can. */
static inline void
eg__ref_free(eg__registry *reg, eg_ref *s)
{
    eg__ref_cache *c = eg__rcache_get();
    if (EG__LIKELY(c != NULL)) {
        if (EG__UNLIKELY(c->rec != s->interp)) {
            if (c->rec != NULL) {
                eg__rcache_spill(c, c->n);
            }
            c->rec = s->interp;
        }
        if (EG__UNLIKELY(c->n == EG__REF_CACHE)) {
            eg__rcache_spill(c, EG__REF_CACHE / 2);
        }
        /* Relaxed: the slot is this thread's until a spill publishes it
         * (with the push's release). */
        atomic_store_explicit(&s->next_free, EG__REF_CACHED,
                              memory_order_relaxed);
        c->slots[c->n++] = s;
        return;
    }
    /* The push overwrites the mark with the slot's link. */
    eg__free_push_chain(reg, s, s);
}

/* ---- The leak report's mark ------------------------------------------- */

/* What an exchange took out of a slot, for its taker (any thread): the
 * object to drop, or NULL -- a mark is uncounted (phase 2 dropped the
 * object already, and the owner has now let go of the handle). */
static inline PyObject *
eg__taken(PyObject *p)
{
    if (EG__UNLIKELY(p != NULL && eg__is_mark(p))) {
        eg__leak *l = eg__mark_entry(p);
        if (l != NULL) {
            eg__leak_forget(l);
        }
        return NULL;
    }
    return p;
}

/* The return address of the function that calls this macro's user: the
 * extension's call site of eg_ref_new (through the capsule's table). */
#if defined(__GNUC__)
#  define EG__CALLER() __builtin_return_address(0)
#else
#  define EG__CALLER() NULL
#endif

/* ---- Public API ---------------------------------------------------------- */

eg_ref *
eg_ref_new(PyObject *obj)
{
    if (obj == NULL) {
        PyErr_SetString(PyExc_TypeError, "eg_ref_new: obj is NULL");
        return NULL;
    }
    eg__record *in = eg__record_current();
    if (in == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "eg_ref_new: exitguard is not imported in this "
                        "interpreter (call eg_import() in module exec)");
        return NULL;
    }
    int state = atomic_load_explicit(&in->state, memory_order_acquire);
    if (state >= EG__RELEASING) {
        goto closed;
    }
    eg__decref_maybe_drain(in);

    eg_ref *s = eg__ref_alloc(in);
    if (s == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
#ifdef EG_DEBUG
    atomic_store_explicit(&s->live, 1, memory_order_relaxed);
#endif
    s->site = EG__CALLER();
    /* Store, light fence, load of the state: the asymmetric pair of phase
     * 2's "store RELEASING, heavy fence, sweep" (fence.h).  Either the
     * sweep sees this object (and the slot handed out), or we see RELEASING
     * and take it back -- or both, and the exchange lets exactly one of us
     * release it. */
    atomic_store_explicit(&s->obj, Py_NewRef(obj), memory_order_release);
    eg__fence_light();
    if (EG__UNLIKELY(atomic_load_explicit(&in->state, memory_order_acquire)
                    >= EG__RELEASING)) {
        /* A mark here means the sweep took our object (and counted it):
         * uncount it, the sweep dropped the object. */
        PyObject *back = eg__taken(atomic_exchange_explicit(
            &s->obj, NULL, memory_order_acq_rel));
        Py_XDECREF(back);
#ifdef EG_DEBUG
        atomic_store_explicit(&s->live, 0, memory_order_relaxed);
#endif
        eg__ref_free(&in->refs, s);
        goto closed;
    }
    return s;

closed:
    PyErr_Format(PyExc_RuntimeError,
                 "eg_ref_new: exitguard is %s in this interpreter; "
                 "references are closed once phase 2 has begun",
                 eg__state_name(atomic_load_explicit(&in->state,
                                                     memory_order_seq_cst)));
    return NULL;
}

PyObject *
eg_ref_get(const eg_ref *ref)
{
    if (ref == NULL) {
        return NULL;
    }
    /* Acquire pairs with the seq_cst store in eg_ref_new for a reference
     * handed to another attached thread (free-threaded builds). */
    PyObject *obj = atomic_load_explicit(&((eg_ref *)ref)->obj,
                                         memory_order_acquire);
    return EG__UNLIKELY(obj != NULL && eg__is_mark(obj)) ? NULL : obj;
}

void
eg_ref_release(eg_ref *ref)
{
    if (ref == NULL) {
        return;
    }
#ifdef EG_DEBUG
    if (atomic_exchange_explicit(&ref->live, 0, memory_order_relaxed) != 1) {
        eg__fatal("eg_ref_release() called on an eg_ref that was already "
                  "released (double release), or on a pointer that is not "
                  "an eg_ref");
    }
#endif
    eg__record *in = ref->interp;
    /* Say that we are releasing it, then look at the state: the same
     * asymmetric pair as in eg_ref_new.  Before phase 2 the sweep is then
     * bound to see the mark and leave the slot to us -- the object is ours
     * without a read-modify-write.  From phase 2 on, the exchange decides
     * between this release and the sweep; a leak report's mark (the sweep
     * came first and the report is on) is uncounted. */
    atomic_store_explicit(&ref->next_free, EG__REF_RELEASING,
                          memory_order_relaxed);
    eg__fence_light();
    PyObject *obj;
    if (EG__LIKELY(atomic_load_explicit(&in->state, memory_order_acquire)
                  < EG__RELEASING)) {
        obj = atomic_load_explicit(&ref->obj, memory_order_relaxed);
        atomic_store_explicit(&ref->obj, NULL, memory_order_relaxed);
    }
    else {
        obj = eg__taken(atomic_exchange_explicit(&ref->obj, NULL,
                                                 memory_order_acq_rel));
    }
    if (obj != NULL) {
        if (eg__attached_to(in)) {
            Py_DECREF(obj);
        }
        else {
            eg__decref_push_mp(in, obj);
        }
    }
    eg__ref_free(&in->refs, ref);
}

/* Decrefs from threads that are not attached while exitguard has never
 * been imported in the main interpreter: nowhere to apply them. */
static _Atomic uint64_t eg__orphan_decrefs;

void
eg_decref(PyObject *obj)
{
    if (obj == NULL) {
        return;
    }
    if (eg__tstate_attached() != NULL) {
        Py_DECREF(obj);
        return;
    }
    eg__record *main_rec = atomic_load_explicit(&eg__main_record,
                                                memory_order_acquire);
    if (EG__UNLIKELY(main_rec == NULL)) {
        atomic_fetch_add_explicit(&eg__orphan_decrefs, 1,
                                  memory_order_relaxed);
        return;
    }
    eg__decref_push_mp(main_rec, obj);
}

Py_ssize_t
eg_flush(void)
{
    eg__record *in = eg__record_current();
    if (in == NULL) {
        return 0;
    }
    return eg__decref_drain_sc(in);
}

/* ---- Registry maintenance ------------------------------------------------ */

void
eg__registry_init(eg__registry *reg)
{
    memset(reg, 0, sizeof(*reg));
    if (pthread_mutex_init(&reg->grow_lock, NULL) != 0) {
        abort();
    }
}

int
eg__registry_reusable(eg__registry *reg)
{
    /* A scan, done only when an ended interpreter's record is considered
     * for a new one: no slot may still be handed out (a native thread
     * could release it into the new life). */
    uint32_t nchunks = atomic_load_explicit(&reg->nchunks,
                                            memory_order_acquire);
    for (uint32_t k = 0; k < nchunks; k++) {
        eg_ref *chunk = atomic_load_explicit(&reg->chunks[k],
                                             memory_order_acquire);
        for (uint32_t i = 0; i < (EG__REF_CHUNK0 << k); i++) {
            uint32_t mark = atomic_load_explicit(&chunk[i].next_free,
                                                 memory_order_acquire);
            if (mark == EG__REF_HANDED_OUT || mark == EG__REF_RELEASING) {
                return 0;
            }
        }
    }
    return 1;
}

void
eg__registry_reset(eg__registry *reg)
{
    atomic_store_explicit(&reg->swept, 0, memory_order_relaxed);
}

void
eg__registry_after_fork_child(eg__registry *reg)
{
    if (pthread_mutex_init(&reg->grow_lock, NULL) != 0) {
        abort();
    }
}

uint64_t
eg__registry_live(eg__registry *reg)
{
    uint64_t live = 0;
    uint32_t nchunks = atomic_load_explicit(&reg->nchunks,
                                            memory_order_acquire);
    for (uint32_t k = 0; k < nchunks; k++) {
        eg_ref *chunk = atomic_load_explicit(&reg->chunks[k],
                                             memory_order_acquire);
        for (uint32_t i = 0; i < (EG__REF_CHUNK0 << k); i++) {
            PyObject *p = atomic_load_explicit(&chunk[i].obj,
                                               memory_order_relaxed);
            live += p != NULL && !eg__is_mark(p);
        }
    }
    return live;
}
