/*
 * core/record.h -- the per-interpreter record, eg__record, and the data of
 * every concept it holds; finding records (record.c).
 *
 * One record for each interpreter that imports exitguard, holding that
 * interpreter's deferred-decref queue (decref.c), reference registry
 * (registry.c), exit stoppers (stopper.c), attach gate (gate.c), native
 * threads (thread.c), completion queues (completion.c) and stop state
 * machine (shutdown.c).  The concepts' data layouts live here, below all of
 * them, so that the record can embed them and any concept can reach the
 * parts of the record it uses without a header circle (CPython's
 * pycore_interp_structs.h does the same since 3.14); each concept declares
 * its functions in its own header, which includes this one.
 *
 * Records are never freed.  A native thread may call eg_ref_release() or
 * eg_decref() at any time -- long after the interpreter is gone -- and must
 * find valid memory behind the pointers it holds; a record costs a few
 * hundred bytes plus what its interpreter used, and records are reused
 * (lifecycle/interp.c).  When an interpreter ends its record is marked dead
 * and is never matched again.
 *
 * Locking: every structure here is protected by exitguard's own mutexes and
 * atomics, never by the GIL (per-interpreter GILs and free-threaded builds
 * exist).  Which lock protects which field is said next to the field.
 */
#ifndef EG__RECORD_H
#define EG__RECORD_H

#include "base/platform.h"
#include "base/door.h"

/* ---- Per-interpreter state machine -----------------------------------------
 * Drawn and explained in shutdown.c. */
typedef enum {
    EG__RUNNING = 0,
    EG__STOPPING = 1,    /* phase 1 has begun: exit stoppers run */
    EG__RELEASING = 2,   /* phase 2 has begun: queue drained, refs released */
    EG__STOPPED = 3,     /* phase 2 is done: Python is never touched again */
} eg__state;

typedef struct eg__record eg__record;

#define EG__SEG_SIZE 1022u     /* slots per segment: a segment is 8 KiB */

/* A block of queued decrefs.  Filled by one producer, emptied by the
 * drainer; `head` counts the filled slots. */
typedef struct eg__seg {
    _Atomic uint32_t head;
    _Atomic(struct eg__seg *) next;   /* set by the producer when full */
    PyObject *slots[EG__SEG_SIZE];
} eg__seg;

/* One producer thread's lane into one interpreter's queue: an unbounded
 * single-producer, single-consumer list of segments. */
typedef struct eg__lane {
    /* Producer's cache line: written by the owning thread only. */
    alignas(EG__CACHELINE) eg__seg *wseg;   /* segment being filled */
    uint32_t widx;                         /* == wseg->head */
    _Atomic uint64_t pushed;               /* total pushed, for stats */
    struct eg__lane *tls_next;             /* owning thread's lanes */
    eg__record *owner;

    /* Consumer's cache line: written by the drainer only. */
    alignas(EG__CACHELINE) eg__seg *rseg;   /* segment being emptied */
    uint32_t ridx;
    _Atomic uint64_t popped;               /* total applied, for stats */
    struct eg__lane *next;                 /* interpreter's lane list */
    _Atomic int orphaned;                  /* the producer has exited */
    _Atomic(eg__seg *) spare;              /* one recycled segment */
} eg__lane;

typedef struct {
    _Atomic(eg__lane *) lanes;      /* lock-free push-only list head */
    /* 1 while the queue may hold undrained decrefs and a drain has been
     * requested; see the protocol in decref.c. */
    alignas(EG__CACHELINE) _Atomic int requested;
    _Atomic int draining;           /* single-consumer claim */
    _Atomic int kick_listed;        /* on the kicker's list (kick_next) */
    struct eg__record *kick_next;

    /* Held by the drainer while it unlinks and frees a lane, and by the
     * readers that walk the list without being the drainer (statistics,
     * record reuse): a lane is never freed under a walker's feet. */
    pthread_mutex_t lanes_lock;

    /* Out-of-memory fallback when a lane or segment cannot be allocated. */
    pthread_mutex_t spill_lock;     /* protects spill, spill_len, spill_cap */
    PyObject **spill;
    size_t spill_len, spill_cap;

    _Atomic uint64_t applied;       /* queued decrefs applied */
    _Atomic uint64_t dropped;       /* decrefs counted as leaked */
    _Atomic uint64_t spilled;       /* pushes that took the spill path */
    _Atomic uint64_t kicks;         /* the kicker's attaches to apply it */
} eg__decref_queue;

/* Slots live in chunks that double in size: chunk k holds
 * EG__REF_CHUNK0 << k slots, so 24 chunk pointers cover 2^34 references and
 * a slot's index maps to (chunk, offset) with one count-leading-zeros. */
#define EG__REF_CHUNK0_LOG2 10u
#define EG__REF_CHUNK0 (1u << EG__REF_CHUNK0_LOG2)
#define EG__REF_MAX_CHUNKS 22u             /* indexes fit in 32 bits */
/* next_free values that are never a link (indexes stay below 2^32 - 1024). */
#define EG__REF_HANDED_OUT UINT32_MAX          /* owned by native code */
#define EG__REF_RELEASING (UINT32_MAX - 1)     /* its owner is releasing it */
#define EG__REF_CACHED    (UINT32_MAX - 2)     /* free, in a thread's cache */

struct eg_ref {
    /* The object; NULL once released.  When phase 2 releases it for an
     * owner that did not, and the leak report is on, it holds the report's
     * entry tagged with bit 0 (eg__leak | 1) until the owner releases the
     * handle -- so only references that stay unreleased are reported. */
    _Atomic(PyObject *) obj;
    eg__record *interp;
    void *site;                   /* return address of the eg_ref_new call */
    /* Free list link (index + 1, 0 = end) while on the free list;
     * EG__REF_HANDED_OUT from eg_ref_new until its release begins,
     * EG__REF_RELEASING during it, EG__REF_CACHED while free in a thread's
     * cache (registry.c). */
    _Atomic uint32_t next_free;
    uint32_t index;
#ifdef EG_DEBUG
    _Atomic uint32_t live;        /* 1 between eg_ref_new and release */
#endif
};

/* The leak report's entry for references of one type created at one call
 * site that phase 2 released for their owner (report.c).  Raw memory,
 * never freed; at least 2-aligned, so that a tagged pointer can hold it. */
typedef struct eg__leak {
    struct eg__leak *next;        /* the registry's list, built by the sweep */
    const void *type;             /* PyTypeObject *, compared by the sweep only */
    void *site;
    _Atomic uint64_t outstanding; /* swept, and the owner has not released */
    char *type_name;              /* strdup'd; NULL when out of memory */
    char *where;                  /* the resolved site, or NULL */
} eg__leak;

typedef struct {
    /* Free list head: (ABA tag << 32) | (index + 1); 0 in the low half is
     * "empty". */
    _Atomic uint64_t free_head;
    pthread_mutex_t grow_lock;                     /* serialises growth */
    _Atomic uint32_t nchunks;                      /* published chunks */
    _Atomic(struct eg_ref *) chunks[EG__REF_MAX_CHUNKS];
    _Atomic uint64_t swept;      /* refs phase 2 released for their owner */
    /* The leak report's entries (report.c), published by the sweep with a
     * release store; swept_pid is the process that ran the sweep (0: none),
     * the only one that reports this record once it stopped. */
    _Atomic(eg__leak *) leaks;
    _Atomic int swept_pid;
    eg__leak leak_oom;           /* the entry used when no other fits */
} eg__registry;

typedef struct {
    pthread_mutex_t lock;        /* protects everything below */
    pthread_cond_t done_cond;    /* a running stopper finished */
    pthread_cond_t watch_cond;   /* the watchdog's (CLOCK_MONOTONIC) */
    struct eg_stopper *first;    /* registration order, oldest first */
    uint64_t next_seq;
    size_t count;                /* registered and not yet run */
    int phase1_done;             /* late registrations are refused */
    struct eg_stopper *current;  /* running now, for the watchdog */
    struct timespec current_deadline;
    int watching, watch_stop;    /* the watchdog thread's life */
    uint64_t errors;             /* stoppers that raised (C or Python) */
} eg__stoppers;

typedef struct eg__tsentry eg__tsentry;

typedef struct {
    eg__door door;                 /* who is inside; closes in phase 2 */
    /* Counts of attaches through entries that left the list (entries count
     * their own: eg__gate_attaches), and of nested attaches. */
    _Atomic uint64_t attach_ok;
    _Atomic uint64_t attach_refused;
    _Atomic uint64_t guards;       /* PEP 788 guards taken (3.15 only), same */
    _Atomic uint64_t reaped;       /* exited threads' states deleted */
    _Atomic uint32_t ndead;        /* entries of exited threads to reap */
    pthread_mutex_t ts_lock;       /* protects the entry lists */
    eg__tsentry *entries;          /* cached thread states, all threads */
    eg__tsentry *fork_orphans;     /* child: guards of vanished threads */
} eg__gate;

/* The thread-state cache (tstates.c): one entry per (OS thread,
 * interpreter), linked from its thread and, while it holds a state, from
 * the interpreter's gate.  gate.c's attach and release use its fields
 * directly; calls go from gate.c to tstates.c only. */
struct eg__tsentry {
    eg__record *rec;
    PyThreadState *ts;          /* under rec->gate.ts_lock; NULL: none */
    /* The thread's seat in the gate's door: `seat.inside` is the number of
     * attaches through this entry now (owner writes; others read it under
     * ts_lock, for messages and stuck guards only). */
    eg__door_seat seat;
    _Atomic uint64_t attaches;  /* successful attaches; owner writes */
    _Atomic uint64_t guards;    /* PEP 788 guards taken; owner writes */
    int dead;                   /* under ts_lock: the owner has exited */
    _Atomic(eg__pyguard *) guard;   /* held while seat.inside > 0 */
    struct eg__tsentry *tls_next;             /* the owning thread's */
    struct eg__tsentry *rec_prev, *rec_next;  /* under ts_lock, with ts */
};

typedef struct {
    pthread_mutex_t lock;          /* protects everything below */
    pthread_cond_t cond;           /* a thread finished or was reaped */
    struct eg_thread *first;
    size_t live;                   /* registered and not yet ended */
    int closed;                    /* phase 1 began: no new threads */
} eg__threads;

struct eg__record {
    eg__decref_queue queue;
    _Atomic int state;              /* eg__state */
    /* The record's life: 1 for its first interpreter, one more each time a
     * later interpreter reuses it (interp.c).  Handles remember theirs. */
    _Atomic uint64_t generation;
    /* The interpreter, compared by address only; NULL once it is dead. */
    _Atomic(PyInterpreterState *) pyinterp;
    int64_t id;
    int is_main;
    int nmodules;                   /* under eg__records_lock */
    struct eg__record *next_record; /* under eg__records_lock */
    eg__stoppers stoppers;
    eg__gate gate;
    eg__threads threads;
    int stop_efd;                   /* readable once phase 1 has begun */
    _Atomic(unsigned long) phase_thread;  /* running the phases (or 0) */
    PyObject *noop;                 /* free-threaded: see eg_compat.h */
    eg__pyview *view;               /* PEP 788 view (3.15); never closed */
    PyThreadState *anchor;          /* 3.13.0 subinterpreters: eg_compat.h */
    pthread_mutex_t cq_lock;        /* protects cqs */
    struct eg_cq *cqs;
    /* Native threads exit went on without (shutdown.c): phase 1 join
     * timeouts, and threads still inside the gate when phase 2 closed it. */
    _Atomic uint64_t threads_abandoned;
    _Atomic uint64_t gate_abandoned;
    eg__registry refs;              /* large: keep last */
};

/* The main interpreter's record, or NULL: the target of eg_decref() from
 * threads that are not attached. */
extern _Atomic(eg__record *) eg__main_record;
/* The records list (record.c): newest first, linked through next_record;
 * eg__records and eg__nrecords (records ever allocated) are protected by
 * eg__records_lock, which interp.c holds to link a record in. */
extern pthread_mutex_t eg__records_lock;
extern eg__record *eg__records;
extern _Atomic uint64_t eg__nrecords;

/* Attached: the record of the calling thread's interpreter, or NULL when
 * exitguard was never imported in it (no exception set). */
eg__record *eg__record_current(void);

/* Any thread, no GIL: the newest record (follow next_record to the
 * oldest; records are never freed and their links never change). */
eg__record *eg__records_first(void);

/* How many per-interpreter records this process ever allocated (statistics:
 * reuse keeps it small however many interpreters come and go). */
uint64_t eg__records_allocated(void);

/* Any thread: `in`'s state (eg__state).  Sequentially consistent, as every
 * read and write of the state is: the phases order it against the gate's
 * close and the refusals that follow (shutdown.c). */
static inline int
eg__state_of(eg__record *in)
{
    return atomic_load_explicit(&in->state, memory_order_seq_cst);
}

/* Does the calling thread's attached interpreter own `in`? */
static inline int
eg__attached_to(eg__record *in)
{
    PyThreadState *ts = eg__tstate_attached();
    return ts != NULL && PyThreadState_GetInterpreter(ts)
        == atomic_load_explicit(&in->pyinterp, memory_order_relaxed);
}

/* Is the caller the main thread (where CPython runs signal handlers)? */
int eg__on_main_thread(void);

/* Is the caller the thread running `in`'s stop phases? */
int eg__is_phase_thread(eg__record *in);

/* Module exec of the main interpreter: remember its main thread. */
void eg__set_main_thread(unsigned long ident);

const char *eg__state_name(int state);

#endif /* EG__RECORD_H */
