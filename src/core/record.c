/*
 * record.c -- finding per-interpreter records: the calling thread's, the
 * main interpreter's, and the process-wide list of them; the names of a
 * record's states.
 *
 * The list is built by interp.c (the composition root, which creates and
 * reuses records); everyone else only looks records up, through here.
 * Records are prepended and never freed, so a walk from eg__records_first()
 * needs no lock once it has the head.  eg__records and eg__nrecords are
 * protected by eg__records_lock, which interp.c also holds while it links a
 * record in or counts its modules.
 */
#include "core/record.h"

_Atomic(eg__record *) eg__main_record;

/* pthread_self() of the main interpreter's main thread, or 0. */
static _Atomic(unsigned long) eg__main_ident;

void
eg__set_main_thread(unsigned long ident)
{
    atomic_store_explicit(&eg__main_ident, ident, memory_order_seq_cst);
}

int
eg__on_main_thread(void)
{
    unsigned long main = atomic_load_explicit(&eg__main_ident,
                                              memory_order_seq_cst);
    return main == (unsigned long)pthread_self();
}

int
eg__is_phase_thread(eg__record *in)
{
    unsigned long phases = atomic_load_explicit(&in->phase_thread,
                                                memory_order_seq_cst);
    return phases == (unsigned long)pthread_self();
}

pthread_mutex_t eg__records_lock = PTHREAD_MUTEX_INITIALIZER;

eg__record *eg__records;     /* under eg__records_lock */

_Atomic uint64_t eg__nrecords;   /* records ever allocated */

uint64_t
eg__records_allocated(void)
{
    return atomic_load_explicit(&eg__nrecords, memory_order_relaxed);
}

/* Attached thread's cache: the record of the interpreter it last asked
 * about.  Never dangling (records are immortal). */
static _Thread_local eg__record *eg__cached_record EG__TLS_IE;

eg__record *
eg__record_current(void)
{
    PyInterpreterState *pyinterp = PyInterpreterState_Get();
    eg__record *in = eg__cached_record;
    if (EG__LIKELY(in != NULL
                  && atomic_load_explicit(&in->pyinterp,
                                          memory_order_acquire) == pyinterp)) {
        return in;
    }
    int64_t id = PyInterpreterState_GetID(pyinterp);
    eg__mutex_lock(&eg__records_lock);
    for (in = eg__records; in != NULL; in = in->next_record) {
        if (atomic_load_explicit(&in->pyinterp, memory_order_relaxed)
                == pyinterp && in->id == id) {
            break;
        }
    }
    eg__mutex_unlock(&eg__records_lock);
    if (in != NULL) {
        eg__cached_record = in;
    }
    return in;
}

eg__record *
eg__records_first(void)
{
    eg__mutex_lock(&eg__records_lock);
    eg__record *in = eg__records;
    eg__mutex_unlock(&eg__records_lock);
    return in;
}

const char *
eg__state_name(int state)
{
    switch (state) {
    case EG__RUNNING:   return "running";
    case EG__STOPPING:  return "stopping";
    case EG__RELEASING: return "releasing";
    case EG__STOPPED:   return "stopped";
    default:           return "invalid";
    }
}
