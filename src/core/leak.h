/*
 * core/leak.h -- the leak report's entries (leak.c).
 */
#ifndef EG__LEAK_H
#define EG__LEAK_H

#include "core/record.h"

/* Phase 2 sweep, attached: the entry for obj created at site.  Lookups go
 * through `*cache`, owned by the sweep (NULL at first; pass it to
 * eg__leak_cache_free).  Never NULL: falls back to reg->leak_oom. */
eg__leak *eg__leak_entry(eg__registry *reg, void **cache, PyObject *obj,
                         void *site);

void eg__leak_cache_free(void *cache);

/* Any thread, no GIL: references phase 2 released for an owner that has
 * not released them since (approximate while threads release). */
uint64_t eg__report_unreleased(eg__record *in);

/* Any thread, any time, no GIL: the owner released a reference that phase
 * 2 had released for it. */
static inline void
eg__leak_forget(eg__leak *l)
{
    atomic_fetch_sub_explicit(&l->outstanding, 1, memory_order_relaxed);
}

#endif /* EG__LEAK_H */
