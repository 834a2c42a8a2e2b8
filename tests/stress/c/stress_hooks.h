/* stress_hooks.h -- force-included into decref.c for the stress test
 * with STRESS_FAIL_ALLOC: every FAIL_EVERY-th allocation fails, so pushes take
 * the spill path.  Not part of exitguard. */
#ifdef STRESS_FAIL_ALLOC
#define PY_SSIZE_T_CLEAN
#include <Python.h>            /* first, as everywhere: it sets the feature macros */
#include <stdatomic.h>
#include <stdlib.h>
#define FAIL_EVERY 7
static _Atomic unsigned long stress_allocs;
static inline void *stress_malloc(size_t n)
{ return atomic_fetch_add(&stress_allocs, 1) % FAIL_EVERY == 3 ? NULL : malloc(n); }
static inline void *stress_aligned_alloc(size_t a, size_t n)
{ return atomic_fetch_add(&stress_allocs, 1) % FAIL_EVERY == 3 ? NULL : aligned_alloc(a, n); }
#define malloc stress_malloc
#define aligned_alloc stress_aligned_alloc
#endif
