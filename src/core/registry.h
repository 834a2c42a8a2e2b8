/*
 * core/registry.h -- the reference registry (registry.c) and its phase 2
 * sweep (registry_sweep.c).
 */
#ifndef EG__REGISTRY_H
#define EG__REGISTRY_H

#include "core/record.h"

void eg__registry_init(eg__registry *reg);
void eg__registry_after_fork_child(eg__registry *reg);
/* Live references (approximate while other threads run). */
uint64_t eg__registry_live(eg__registry *reg);
/* Record reuse (interp.c): no slot is handed out; reset the counters. */
int eg__registry_reusable(eg__registry *reg);
void eg__registry_reset(eg__registry *reg);
/* The phase 2 sweep (registry_sweep.c).  Attached to the record's
 * interpreter, in phase 2: release every registered object.  With
 * `track`, each swept reference keeps the leak report's entry for its type
 * and creation site until its owner releases it (report.c).  Returns 0. */
int eg__registry_sweep(eg__record *in, int track);

/* The leak report's mark in a slot's obj (registry.c's DESIGN says why):
 * the report's entry tagged with bit 0, or the bare tag while the sweep
 * looks the entry up.  Shared by the registry and its sweep; pure bit
 * operations, any thread, no GIL.  eg__is_mark: whether p is a mark (an
 * entry's or the bare one) rather than an object or NULL; eg__mark: the
 * mark of entry l; eg__mark_entry: the entry of mark p (NULL for the bare
 * mark). */
static inline int
eg__is_mark(PyObject *p)
{
    return ((uintptr_t)p & 1u) != 0;
}

static inline PyObject *
eg__mark(eg__leak *l)
{
    return (PyObject *)((uintptr_t)l | 1u);
}

/* The mark of a slot the sweep has taken and not yet counted. */
#define EG__MARK_BARE ((PyObject *)(uintptr_t)1u)

static inline eg__leak *
eg__mark_entry(PyObject *p)
{
    return (eg__leak *)((uintptr_t)p & ~(uintptr_t)1u);
}

#endif /* EG__REGISTRY_H */
