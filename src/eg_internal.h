/*
 * eg_internal.h -- exitguard's private declarations, shared by the C files in src/.
 *
 * This file is private to exitguard: nothing outside src/ may include it.
 *
 * The central object is the per-interpreter record, eg__record: one for each
 * interpreter that imports exitguard, holding that interpreter's reference
 * registry (registry.c), deferred-decref queue (decref.c), exit
 * stoppers (stopper.c) and stop state machine (shutdown.c).  interp.c finds
 * the record of the calling thread's interpreter.
 *
 * Records are never freed.  A native thread may call eg_ref_release() or
 * eg_decref() at any time -- long after the interpreter is gone -- and must
 * find valid memory behind the pointers it holds; a record costs a few
 * hundred bytes plus what its interpreter used, and a process creates few
 * interpreters.  When an interpreter ends its record is marked dead and is
 * never matched again.
 *
 * Locking: every structure here is protected by exitguard's own mutexes and
 * atomics, never by the GIL (per-interpreter GILs and free-threaded builds
 * exist).  Which lock protects which field is said next to the field.
 */
#ifndef EG__INTERNAL_H
#define EG__INTERNAL_H

#ifndef EG_BUILDING
#  error "eg_internal.h is private to exitguard"
#endif

#define PY_SSIZE_T_CLEAN      /* "#" formats take Py_ssize_t (default in 3.13) */
#include <Python.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "exitguard.h"
#include "eg_compat.h"
#include "door.h"
#include "fence.h"

#define EG__CACHELINE 64

#if defined(__GNUC__)
#  define EG__LIKELY(x)   __builtin_expect(!!(x), 1)
#  define EG__UNLIKELY(x) __builtin_expect(!!(x), 0)
#  define EG__NOINLINE    __attribute__((noinline))
#  define EG__COLD        __attribute__((cold))
#else
#  define EG__LIKELY(x)   (x)
#  define EG__UNLIKELY(x) (x)
#  define EG__NOINLINE
#  define EG__COLD
#endif

/* ---- Thread-locals ------------------------------------------------------
 * On hot paths: initial-exec TLS, one load from %fs instead of
 * a __tls_get_addr call (general-dynamic, the default for a shared object).
 * dlopen'ed modules take this from glibc's static TLS surplus; exitguard's
 * come to about 110 bytes.  EG_NO_INITIAL_EXEC_TLS turns it off for a libc
 * or loader that has no surplus. */
#if defined(__GNUC__) && !defined(EG_NO_INITIAL_EXEC_TLS)
#  define EG__TLS_IE __attribute__((tls_model("initial-exec")))
#else
#  define EG__TLS_IE
#endif

/* ---- Handle quarantine ---------------------------------------------------
 * eg_stopper and eg_thread handles carry a magic, so that a second remove or
 * join of one is told apart.  EG__QUARANTINE: freed handles are never given
 * back to malloc, so that check always reads memory that is still ours --
 * in EG_DEBUG builds (which then abort naming the misuse) and under
 * AddressSanitizer (which would call the check itself a use after free). */
#if defined(__SANITIZE_ADDRESS__)
#  define EG__ASAN 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define EG__ASAN 1
#  endif
#endif
#if defined(EG_DEBUG) || defined(EG__ASAN)
#  define EG__QUARANTINE 1
#endif

/* ---- Locks that cannot fail -----------------------------------------------
 * A failing pthread_mutex_lock() means a corrupted mutex; there is nothing to
 * recover, so these abort (libuv's uv_mutex_lock does the same). */
static inline void
eg__mutex_lock(pthread_mutex_t *m)
{
    if (pthread_mutex_lock(m) != 0) {
        abort();
    }
}

static inline void
eg__mutex_unlock(pthread_mutex_t *m)
{
    if (pthread_mutex_unlock(m) != 0) {
        abort();
    }
}

/* pthread_atfork child: give `fd`, an eventfd, a fresh file description
 * under the same number.  After fork parent and child share each eventfd,
 * so one process would read -- and lose -- the other's wake-ups (found by
 * the fork test: a child's phase 2 waited for ever for its kicker, whose
 * wake-up the parent's kicker had taken).  Keeping the number keeps any
 * reader registration valid.  Async-signal-safe. */
void eg__reopen_eventfd(int fd);

/* ---- The thread-exit hook (thread_exit.c) ----------------------------------
 * What exitguard keeps per thread, handed back at the thread's exit by one
 * pthread key's destructor, in this order.  None of the parts depends on
 * another; a part that comes to depend on one says so here. */
typedef enum {
    EG__EXIT_LOG_COUNTS,       /* log.c: the filtered-message counter */
    EG__EXIT_REF_CACHE,        /* registry.c: the reference slot cache */
    EG__EXIT_DECREF_LANES,     /* decref.c: the lanes, to their drainers */
    EG__EXIT_TSTATES,          /* tstates.c: thread states, to their interpreters */
    EG__EXIT_NPARTS
} eg__exit_part;

typedef void (*eg__exit_fn)(void);

/* Any thread, no thread state: run fn (the same one at every arm of
 * `part`) when the calling thread exits, after the parts before it.  Once
 * per thread until the exit runs it (a part used again afterwards, from a
 * later destructor, arms again).  Cheap when armed: one thread-local load.
 * Returns 0, or -ENOMEM when pthread_setspecific fails (the part is then
 * not run at this thread's exit).  Aborts if no pthread key is left. */
int eg__thread_exit_arm(eg__exit_part part, eg__exit_fn fn);

/* Print "exitguard: fatal: <msg>" and abort.  For broken invariants only
 * (double release in debug builds); GIL-free, async-signal-unsafe. */
EG__COLD void eg__fatal(const char *msg);

/* ---- Per-interpreter state machine -----------------------------------------
 * Drawn and explained in shutdown.c. */
typedef enum {
    EG__RUNNING = 0,
    EG__STOPPING = 1,    /* phase 1 has begun: exit stoppers run */
    EG__RELEASING = 2,   /* phase 2 has begun: queue drained, refs released */
    EG__STOPPED = 3,     /* phase 2 is done: Python is never touched again */
} eg__state;

/* ---- Deferred-decref queue (decref.c, decref_drain.c) -------------------- */

#define EG__SEG_SIZE 1022u     /* slots per segment: a segment is 8 KiB */

typedef struct eg__record eg__record;

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

/* Any thread, no GIL: queue one decref of obj to `in`.  Never blocks on the
 * GIL; allocates once per EG__SEG_SIZE pushes at most, and takes a mutex
 * only when memory runs out (the spill path). */
void eg__decref_push_mp(eg__record *in, PyObject *obj);

/* Attached to `in`: apply every queued decref.  Returns how many; 0 when
 * another drain holds the single-consumer claim. */
Py_ssize_t eg__decref_drain_sc(eg__record *in);

/* Attached to `in`, phase 2: wait (GIL released) for the claim, then apply
 * every queued decref, also in state RELEASING.  Returns how many. */
Py_ssize_t eg__decref_drain_all(eg__record *in);

/* Attached to `in`: drain if a drain has been requested (one relaxed load
 * when the queue is empty).  For exitguard's entry points. */
static inline void eg__decref_maybe_drain(eg__record *in);

/* Decrefs queued now and not yet applied (approximate while producers run). */
uint64_t eg__decref_pending_count(eg__record *in);

void eg__decref_queue_init(eg__decref_queue *q);
/* Record reuse: nothing queued, nobody draining it; reset the
 * counters (the lanes stay: threads may push into them in the next life). */
int eg__decref_reusable(eg__record *in);
void eg__decref_reset(eg__record *in);
void eg__decref_after_fork_child(eg__record *in);
void eg__decref_process_init(void);   /* once per process, and in a fork child */
/* The kicker's side (kicker.c): its eventfd, written when a queue needs a
 * drain; taking the list of those queues, and popping one (any thread; the
 * kicker). */
int eg__decref_kick_fd(void);
eg__record *eg__decref_take_kicked(void);
eg__record *eg__decref_kicked_pop(eg__record **list);

/* ---- The drain kicker (kicker.c) ----------------------------------------- */

void eg__kicker_start(void);             /* attached, module exec; idempotent */
void eg__kicker_stop(void);              /* main interpreter, phase 2 */
void eg__kicker_after_fork_child(void);  /* pthread_atfork child */

/* ---- Reference registry (registry.c) ------------------------------------- */

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

/* ---- Exit stoppers (stopper.c) ------------------------------------------- */

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

void eg__stoppers_init(eg__stoppers *st);
void eg__stoppers_after_fork_child(eg__stoppers *st);
/* Attached: run every pending stopper, newest first honouring edges. */
void eg__stoppers_run(eg__record *in);
/* Register an internal stopper: dtor(arg), called attached, runs when the
 * entry is freed; auto_free frees the entry right after it runs; `label`
 * (copied; NULL: the stop function's symbol) names it in the watchdog's
 * message. */
eg_stopper *eg__stopper_add_ex(eg__record *in, void (*stop)(void *),
                               void *arg, void (*dtor)(void *),
                               int auto_free, const char *label, int *err);
size_t eg__stoppers_count(eg__record *in);
/* Record reuse: no stopper registered; reopen for registrations. */
int eg__stoppers_reusable(eg__stoppers *st);
void eg__stoppers_reset(eg__stoppers *st);
/* Attached, phase 1: a stopper raised (or, in C, left an exception set);
 * counted for stats()["stopper_errors"]. */
void eg__stoppers_note_error(eg__record *in);
uint64_t eg__stoppers_errors(eg__record *in);

/* ---- Attach gate (gate.c) and thread-state cache (tstates.c) ------------ */

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

void eg__gate_init(eg__gate *g);
/* Record reuse: closed, nobody inside, no thread state of anyone left, not
 * paused; reopen it with fresh counters (after the generation moved on). */
int eg__gate_reusable(eg__gate *g);
void eg__gate_reopen(eg__gate *g);
void eg__gate_after_fork_child(eg__record *in);
/* Any thread: successful attaches (and, through *guards, PEP 788 guards
 * taken) so far -- the gate's retired counts plus its listed entries'. */
uint64_t eg__gate_attaches(eg__gate *g, uint64_t *guards);
/* Around os.fork() (eg__fork_prepare/parent in interp.c): pause the gate,
 * and, GIL released, wait until nobody is inside; then resume. */
void eg__gate_pause(eg__gate *g);
uint64_t eg__gate_wait_empty(eg__gate *g, const struct timespec *deadline);
void eg__gate_resume(eg__gate *g);
/* Phase 2, attached: close, wait (GIL released, bounded) for the threads
 * inside to leave, then delete the thread states of exited threads (and,
 * for a subinterpreter, every cached one no thread is using).  Returns how
 * many threads were still inside at the deadline. */
uint64_t eg__gate_close(eg__record *in, double timeout_s);
/* Any thread, no thread state needed (release the GIL around it): close
 * the gate and wait for the threads inside until `deadline`, without the
 * clean-up that needs the interpreter.  Idempotent.  Returns how many were
 * still inside.  eg__gate_close is this plus the clean-up. */
uint64_t eg__gate_shut(eg__record *in, const struct timespec *deadline);
/* eg_gil_ensure for a record: `view` and `gen` are a handle's (NULL and 0
 * for the record's current life: the kicker's way in, and the main
 * interpreter's). */
int eg__gil_ensure_record(eg__record *in, eg__pyview *view, uint64_t gen,
                          eg_gil *st);
/* Forked child, attached (the os.register_at_fork hook): close the PEP 788
 * guards that threads which vanished with the fork held (3.15). */
void eg__gate_close_fork_orphans(eg__record *in);
const char *eg__gate_state_name(eg__gate *g);
/* The calling thread: refuse its attaches once *flag is nonzero (thread.c
 * binds its eg_thread's `abandoned` flag for the threads it starts; NULL
 * unbinds).  No GIL needed. */
void eg__gate_bind_abandoned(const _Atomic int *flag);

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

/* The calling thread, not attached, is about to exit: hand its cached
 * thread states to their interpreters, whose next attached thread deletes
 * them.  Never attaches, never blocks on the GIL.  For threads exitguard
 * starts, called before they return; other threads get it from the
 * thread-exit hook (thread_exit.c). */
void eg__tstates_release_self(void);
/* Attached to `in`: delete the thread states of threads that have exited
 * (one relaxed load when there are none). */
void eg__tstates_reap(eg__record *in);
/* The calling thread's entries, newest first (tstates.c). */
extern _Thread_local eg__tsentry *eg__tls_entries EG__TLS_IE;
/* eg__tstates_entry's slow path: create the calling thread's entry for
 * `in`.  NULL when out of memory. */
EG__NOINLINE eg__tsentry *eg__tstates_entry_new(eg__record *in);
/* The calling thread, not attached, no thread state needed (raw malloc
 * only): its entry for `in`, created on first use with no thread state yet
 * and its seat in the gate's door.  NULL when out of memory.  Inline: the
 * lookup is on every outermost attach. */
static inline eg__tsentry *
eg__tstates_entry(eg__record *in)
{
    for (eg__tsentry *e = eg__tls_entries; e != NULL; e = e->tls_next) {
        if (e->rec == in) {
            return e;
        }
    }
    return eg__tstates_entry_new(in);
}
/* e's owning thread, inside the gate with its guard held, not attached (no
 * GIL needed): give e a new thread state of `in` and list it in the gate.
 * Returns 0 or -ENOMEM. */
int eg__tstates_new_tstate(eg__record *in, eg__tsentry *e);
/* Any thread, caller holds g->ts_lock: take e out of the gate's list, its
 * counts into the gate's. */
void eg__tstates_unlink(eg__gate *g, eg__tsentry *e);
/* Forked child (pthread_atfork), no Python API, after
 * eg__gate_after_fork_child re-made the gate's lock and door: forget the
 * cached states but the one this thread is attached through, set aside the
 * entries of vanished threads that held PEP 788 guards (fork_orphans), and
 * put this thread's seats back in the door. */
void eg__tstates_after_fork_child(eg__record *in);

/* ---- Native threads (thread.c) ------------------------------------------- */

typedef struct {
    pthread_mutex_t lock;          /* protects everything below */
    pthread_cond_t cond;           /* a thread finished or was reaped */
    struct eg_thread *first;
    size_t live;                   /* registered and not yet ended */
    int closed;                    /* phase 1 began: no new threads */
} eg__threads;

void eg__threads_init(eg__threads *th);
void eg__threads_after_fork_child(eg__threads *th);
/* Phase 1 begins: refuse new threads (-ESHUTDOWN), also from stoppers. */
void eg__threads_close(eg__threads *th);
/* Phase 1, attached: ask every registered thread to stop and join them,
 * GIL released, within timeout_s in all; name the ones that did not end.
 * Returns how many were abandoned (did not end in time). */
size_t eg__threads_stop_all(eg__record *in, double timeout_s);
size_t eg__threads_live(eg__record *in);
/* Record reuse: no thread registered (none abandoned either); reopen. */
int eg__threads_reusable(eg__threads *th);
void eg__threads_reset(eg__threads *th);

/* EXITGUARD_JOIN_TIMEOUT in seconds (default 10), read once per process. */
extern double eg__join_timeout;

/* Absolute CLOCK_MONOTONIC deadline `seconds` from now (< 0: none). */
struct timespec eg__deadline(double seconds);

/* ---- Logging (log.c, log_forwarder.c) ----------------------------------- */

/* Any thread, no thread state (eg_vlog, after publishing, while `started`
 * reads 0): create the forwarder thread once, under start_lock, unless
 * phase 2 has stopped logging; if pthread_create fails `started` stays 0
 * and the next message tries again.  Returns nothing.  log_forwarder.c. */
void eg__log_start_forwarder(void);

void eg__log_process_init(void);
int eg__log_init_main(void);       /* main interpreter's exec, attached */
void eg__log_after_fork_child(void);
/* Main interpreter, phase 2, attached: deliver everything, then stderr. */
void eg__log_stop_and_drain(void);
int eg__log_levels_changed(PyObject *threshold_fn, int only_unknown);
/* EG_LOG's slow path and the generation its sites compare with (table). */
int eg_log_site_enabled(eg_log_site *site, int level, const char *logger);
extern _Atomic unsigned int eg__log_generation;
void eg__log_stats(uint64_t *delivered, uint64_t *dropped,
                   uint64_t *formatted, uint64_t *filtered,
                   uint64_t *to_stderr);
uint64_t eg__log_ring_size(void);
int eg__log_pop_raw(int *level, char *msg, size_t cap);   /* tests/stress/c only */

/* ---- Completion queues (completion.c) ------------------------------------ */

eg_cq *eg__cq_new(eg__record *in, PyObject *owner);
int eg__cq_fileno(eg_cq *q);
int eg__cq_closed(eg_cq *q);
void eg__cq_counts(eg_cq *q, uint64_t out[4]);   /* posted ran cancelled wakeups */
Py_ssize_t eg__cq_run(eg_cq *q);
void eg__cq_close(eg_cq *q);
void eg__cq_free(eg_cq *q);
void eg__cq_close_all(eg__record *in);
void eg__cq_after_fork_child(eg__record *in);

/* ---- The per-interpreter record (interp.c) ------------------------------- */

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
/* Attached, module exec: find or create this interpreter's record and
 * count one more module using it.  NULL with an exception on failure. */
eg__record *eg__record_acquire(void);
/* Attached, module free: one module fewer; the last marks it dead. */
void eg__record_release(eg__record *in);
/* Attached: the number of exitguard modules alive in `in`'s interpreter. */
int eg__record_modules(eg__record *in);
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
void eg__records_process_init(void);
/* How many per-interpreter records this process ever allocated (statistics:
 * reuse keeps it small however many interpreters come and go). */
uint64_t eg__records_allocated(void);
/* os.register_at_fork hooks, attached: before the fork, pause every gate
 * and wait (GIL released, bounded) until no native thread is inside
 * CPython; in the parent afterwards, resume them.  The child resets its
 * gates in the pthread_atfork child handler. */
void eg__fork_prepare(void);
void eg__fork_parent(void);
/* The main interpreter's phase 2, attached, before its own: shut the gate of
 * every other interpreter that is still alive (GIL released, bounded).  Once
 * the runtime is finalizing, CPython kills (3.9-3.13.7) or parks (3.13.8+)
 * any thread attaching to any interpreter, and subinterpreters are ended
 * only later (3.12+) or never (3.9-3.11, where an ending takes whatever
 * thread state heads the list). */
void eg__shut_other_gates(eg__record *main_rec, double timeout_s);
/* Any thread, no GIL: the newest record (follow next_record to the
 * oldest; records are never freed and their links never change). */
eg__record *eg__records_first(void);
/* Is the caller the main thread (where CPython runs signal handlers)? */
int eg__on_main_thread(void);
/* Is the caller the thread running `in`'s stop phases? */
int eg__is_phase_thread(eg__record *in);
/* Module exec of the main interpreter: remember its main thread. */
void eg__set_main_thread(unsigned long ident);

/* ---- Shutdown (shutdown.c) ------------------------------------------------ */

void eg__phase1(eg__record *in);
void eg__phase2(eg__record *in);
const char *eg__state_name(int state);

void eg__shutdown_process_init(void);

/* ---- The exit report (report.c) ------------------------------------------ */

/* EXITGUARD_LEAKS: 0 off, 1 warn, 2 abort.  Read once per process. */
extern int eg__leak_mode;
/* Once per process: read EXITGUARD_LEAKS and EXITGUARD_EXIT_STATS. */
void eg__report_process_init(void);
/* Should phase 2 keep the leak report's entries?  (EXITGUARD_LEAKS is on,
 * or the final counters are to be written.) */
int eg__report_tracking(void);
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

/* ---- Implementations of the public API (registry.c, ...) ----------------- */
extern const eg_capi eg__capi;

/* ---- inline bodies ------------------------------------------------------- */

static inline void
eg__decref_maybe_drain(eg__record *in)
{
    /* Relaxed: a stale 0 only delays this opportunistic drain; the pending
     * call or a later entry point applies the queue. */
    if (atomic_load_explicit(&in->queue.requested, memory_order_relaxed)) {
        (void)eg__decref_drain_sc(in);
    }
}

#endif /* EG__INTERNAL_H */
