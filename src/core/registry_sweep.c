/*
 * registry_sweep.c -- phase 2's sweep of the reference registry: release,
 * while the interpreter is still whole, every object native code still
 * holds through an eg_ref, and, when the leak report is on, leave the
 * report's mark in each slot it swept so that only references whose owner
 * never lets go are reported.
 *
 * The design -- the slots, the exchange that decides between a sweep and
 * eg_ref_release(), the mark -- is at the top of registry.c.
 *
 * Runs once per interpreter, attached, in state RELEASING, concurrently
 * with releases on any thread and with a racing eg_ref_new (the
 * synchronization table in registry.c).  It calls below itself only: the
 * leak report's entries (leak.c) and the fences (fence.h); never into
 * registry.c.
 */
#include "core/registry.h"
#include "base/fence.h"
#include "core/record.h"
#include "core/leak.h"

#include <time.h>
#include <unistd.h>

/* Phase 2, attached: take slot s's object for the sweep, or NULL when its
 * owner released it first.  With `track`, leave the leak report's mark. */
static PyObject *
eg__sweep_take(eg__registry *reg, eg_ref *s, int track, void **cache)
{
    /* A slot whose owner is releasing it (or that is free) is the owner's:
     * after the sweep's heavy fence, an owner that said so before it saw
     * the state below RELEASING and takes the object without an RMW. */
    if (atomic_load_explicit(&s->next_free, memory_order_relaxed)
            != EG__REF_HANDED_OUT) {
        return NULL;
    }
    PyObject *obj = atomic_load_explicit(&s->obj, memory_order_relaxed);
    if (obj == NULL || eg__is_mark(obj)) {
        return NULL;
    }
    if (!track) {
        return atomic_exchange_explicit(&s->obj, NULL, memory_order_acq_rel);
    }
    /* Take the object with a bare mark first, so that it is ours while its
     * type is looked at.  A CAS on the object seen, never an exchange: a
     * slot its owner freed in between must stay NULL.  A failed CAS reloads
     * obj: NULL (released), or an object a racing eg_ref_new registered. */
    while (!atomic_compare_exchange_weak_explicit(
               &s->obj, &obj, EG__MARK_BARE,
               memory_order_acq_rel, memory_order_relaxed)) {
        if (obj == NULL || eg__is_mark(obj)) {
            return NULL;
        }
    }
    /* Count it, then publish the entry.  If the owner released the handle
     * in between (it took the bare mark), the CAS fails: uncount it. */
    eg__leak *l = eg__leak_entry(reg, cache, obj, s->site);
    atomic_fetch_add_explicit(&l->outstanding, 1, memory_order_relaxed);
    PyObject *bare = EG__MARK_BARE;
    if (!atomic_compare_exchange_strong_explicit(
            &s->obj, &bare, eg__mark(l),
            memory_order_acq_rel, memory_order_relaxed)) {
        eg__leak_forget(l);
    }
    return obj;
}

int
eg__registry_sweep(eg__record *in, int track)
{
    eg__registry *reg = &in->refs;
    void *cache = NULL;
    atomic_store_explicit(&reg->swept_pid, (int)getpid(),
                          memory_order_seq_cst);
    /* The state reads RELEASING (shutdown.c): order that before every load
     * of a slot, in every thread's view (the heavy side of eg_ref_new's and
     * eg_ref_release's pairs).  If membarrier let us down, light fences that
     * ran just before were full ones for nobody: give their stores the time
     * they need to land (nanoseconds; a millisecond here) before looking. */
    if (eg__fence_heavy() < 0) {
        struct timespec ms = {0, 1000000L};
        EG__BEGIN_WAIT
        nanosleep(&ms, NULL);
        EG__END_WAIT
        eg__full_fence();
    }
    uint32_t nchunks = atomic_load_explicit(&reg->nchunks,
                                            memory_order_acquire);
    for (uint32_t k = 0; k < nchunks; k++) {
        eg_ref *chunk = atomic_load_explicit(&reg->chunks[k],
                                             memory_order_acquire);
        for (uint32_t i = 0; i < (EG__REF_CHUNK0 << k); i++) {
            PyObject *obj = eg__sweep_take(reg, &chunk[i], track, &cache);
            if (obj != NULL) {
                atomic_fetch_add_explicit(&reg->swept, 1,
                                          memory_order_relaxed);
                Py_DECREF(obj);
            }
        }
    }
    eg__leak_cache_free(cache);
    return 0;
}
