/*
 * thread.c -- the registry of native threads: threads exitguard starts
 * (eg_thread_start) and threads third-party code started and we adopt
 * (eg_thread_adopt).  Phase 1 asks all of them to stop and joins them with
 * the GIL released, before CPython joins non-daemon Python threads.
 *
 * CAUTION: the thread entry point and eg_thread_stop_requested run without
 * a thread state; the joins run with the GIL released.  Only libc and
 * pthreads here, except where a function says it is attached.
 *
 * DESIGN
 *
 * A thread's life, under the interpreter's threads.lock:
 *
 *     running --run() returns--> ended --pthread_join--> reaped
 *        |
 *        +-- phase 1: stop requested, join deadline passed --> abandoned
 *            (named on stderr; eg_gil_ensure refuses it from then on)
 *
 * A handle is reference-counted: the registry holds one until the thread is
 * reaped, the owner one until eg_thread_join() succeeds, and phase 1 one
 * while it works on it, so neither the owner nor phase 1 can free it under
 * the other.  Exactly one party runs pthread_join (`reap_claimed`); the
 * other waits for `reaped`.
 *
 * No peer (pybind11, nanobind, PyO3, Cython) joins native threads at exit
 * (docs/porting.md shows what each does instead); spead2 joins its pools from atexit, which is too
 * late for a Python thread that waits on them.
 */
#include "core/thread.h"
#include "base/platform.h"
#include "core/record.h"
#include "core/gate.h"
#include "core/tstates.h"

#include <errno.h>
#include <math.h>
#include <string.h>
#include <time.h>

double eg__join_timeout = 10.0;

/* A handle's magic: live until freed.  A join of a freed handle is told
 * apart while the memory is not reused; debug and ASan builds never reuse
 * it (EG__QUARANTINE). */
#define EG__THREAD_LIVE 0x7468726561646567ull   /* "egdaerht" */
#define EG__THREAD_DEAD 0x646165646164656cull

struct eg_thread {
    uint64_t magic;
    eg__record *interp;
    char *name;                  /* whole, as given (the OS name keeps 15) */
    void (*run)(void *arg);
    void (*request_stop)(void *arg);
    int (*join_cb)(void *arg, double timeout_s);   /* adopted threads */
    void *arg;
    pthread_t tid;
    _Atomic int stop_requested;
    _Atomic int abandoned;
    /* Under interp->threads.lock: */
    int refs;
    int registered;
    int ended;
    int reap_claimed;
    int reaped;
    int owner_gone;              /* eg_thread_join gave the handle up */
    struct eg_thread *prev, *next;
};

static _Thread_local struct eg_thread *eg__self EG__TLS_IE;

void
eg__threads_init(eg__threads *th)
{
    memset(th, 0, sizeof(*th));
    pthread_condattr_t attr;
    if (pthread_mutex_init(&th->lock, NULL) != 0
            || pthread_condattr_init(&attr) != 0
            || pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0
            || pthread_cond_init(&th->cond, &attr) != 0) {
        abort();
    }
    pthread_condattr_destroy(&attr);
}

/* pthread_atfork child: every registered thread is gone with the parent's
 * address space; mark them ended and reaped so nothing waits for them. */
void
eg__threads_after_fork_child(eg__threads *th)
{
    struct eg_thread *keep_first = th->first;
    int closed = th->closed;
    size_t live = 0;
    eg__threads_init(th);
    th->first = keep_first;
    th->closed = closed;
    for (struct eg_thread *t = th->first; t != NULL; t = t->next) {
        if (t == eg__self) {
            live++;                  /* forked from inside a registered thread */
            continue;
        }
        t->ended = t->reaped = t->reap_claimed = 1;
    }
    th->live = live;
}

/* Under the lock. */
static void
eg__unregister(eg__threads *th, struct eg_thread *t)
{
    if (!t->registered) {
        return;
    }
    t->registered = 0;
    if (t->prev) {
        t->prev->next = t->next;
    }
    else {
        th->first = t->next;
    }
    if (t->next) {
        t->next->prev = t->prev;
    }
    t->prev = t->next = NULL;
    t->refs--;
}

/* Under the lock; returns 1 when the caller must free t (outside it). */
static int
eg__unref(struct eg_thread *t)
{
    return --t->refs == 0;
}

static void *
eg__thread_main(void *p)
{
    struct eg_thread *t = p;
    eg__threads *th = &t->interp->threads;
    eg__self = t;
    eg__gate_bind_abandoned(&t->abandoned);
    t->run(t->arg);
    eg__tstates_release_self();   /* hands its states over; never attaches */
    eg__gate_bind_abandoned(NULL);
    eg__self = NULL;        /* t may be freed once `ended` is set */
    eg__mutex_lock(&th->lock);
    t->ended = 1;
    th->live--;
    pthread_cond_broadcast(&th->cond);
    eg__mutex_unlock(&th->lock);
    return NULL;
}

static struct eg_thread *
eg__thread_alloc(eg__record *in, const char *name, void *arg)
{
    struct eg_thread *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        return NULL;
    }
    t->magic = EG__THREAD_LIVE;
    t->interp = in;
    t->arg = arg;
    t->name = strdup(name != NULL ? name : "eg-thread");
    if (t->name == NULL) {
        free(t);
        return NULL;
    }
    return t;
}

static void
eg__thread_free(struct eg_thread *t)
{
    t->magic = EG__THREAD_DEAD;
    free(t->name);
    t->name = NULL;
#ifndef EG__QUARANTINE
    free(t);
#endif
    /* EG__QUARANTINE (base/platform.h): kept, so that a second join is
     * always caught. */
}

/* Under the lock: add to the registry (it and the owner hold refs). */
static void
eg__register(eg__threads *th, struct eg_thread *t)
{
    t->refs = 2;
    t->registered = 1;
    t->next = th->first;
    if (th->first) {
        th->first->prev = t;
    }
    th->first = t;
    th->live++;
}

/* Attached: allocate a handle for the current interpreter and register it,
 * then run `started` (may be NULL) under the registry lock -- so phase 1
 * never sees a registered thread half set up.  Returns 0 with *out, or a
 * negative errno (the handle freed). */
static int
eg__thread_register_new(eg_thread **out, const char *name, void *arg,
                        void (*run)(void *), void (*request_stop)(void *),
                        int (*join)(void *, double))
{
    *out = NULL;
    eg__record *in = eg__record_current();
    if (in == NULL) {
        return -ESHUTDOWN;
    }
    struct eg_thread *t = eg__thread_alloc(in, name, arg);
    if (t == NULL) {
        return -ENOMEM;
    }
    t->run = run;
    t->request_stop = request_stop;
    t->join_cb = join;
    eg__threads *th = &in->threads;
    int rc = 0;
    eg__mutex_lock(&th->lock);
    if (th->closed) {
        rc = -ESHUTDOWN;
        goto done;
    }
    eg__register(th, t);
    if (run != NULL) {
        /* The new thread only takes the lock when run() ends. */
        int err = pthread_create(&t->tid, NULL, eg__thread_main, t);
        if (err != 0) {
            eg__unregister(th, t);
            th->live--;
            rc = err == EAGAIN ? -EAGAIN : -ENOMEM;
            goto done;
        }
#if defined(__linux__)
        /* The OS keeps 15 bytes; messages use the whole name. */
        char os_name[16];
        snprintf(os_name, sizeof(os_name), "%s", t->name);
        (void)pthread_setname_np(t->tid, os_name);
#endif
    }
done:
    eg__mutex_unlock(&th->lock);
    if (rc < 0) {
        eg__thread_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int
eg_thread_start(eg_thread **out, const char *name, void (*run)(void *arg),
                void (*request_stop)(void *arg), void *arg)
{
    if (out == NULL || run == NULL) {
        return -EINVAL;
    }
    return eg__thread_register_new(out, name, arg, run, request_stop, NULL);
}

int
eg_thread_adopt(eg_thread **out, const char *name,
                void (*request_stop)(void *arg),
                int (*join)(void *arg, double timeout_s), void *arg)
{
    if (out == NULL || join == NULL) {
        return -EINVAL;
    }
    return eg__thread_register_new(out, name, arg, NULL, request_stop, join);
}

int
eg_thread_stop_requested(void)
{
    struct eg_thread *t = eg__self;
    return t != NULL && atomic_load_explicit(&t->stop_requested,
                                             memory_order_relaxed);
}

/* Wait until t ended and was reaped, or the deadline.  Lock held on entry
 * and exit; no GIL.  Returns 0, -ETIMEDOUT, or (owner's joins, `owner`)
 * -ESHUTDOWN as soon as phase 1 abandoned the thread: nothing waits for an
 * abandoned thread, ever. */
static int
eg__wait_reaped(eg__threads *th, struct eg_thread *t,
                const struct timespec *deadline, int owner)
{
    while (!t->ended) {
        if (owner && atomic_load_explicit(&t->abandoned,
                                          memory_order_relaxed)) {
            return -ESHUTDOWN;
        }
        if (pthread_cond_timedwait(&th->cond, &th->lock, deadline)
                == ETIMEDOUT && !t->ended) {
            return owner && atomic_load_explicit(&t->abandoned,
                                                 memory_order_relaxed)
                ? -ESHUTDOWN : -ETIMEDOUT;
        }
    }
    if (!t->reap_claimed) {
        t->reap_claimed = 1;
        eg__mutex_unlock(&th->lock);
        /* It has returned from run(); what is left is its key destructors,
         * which never need the GIL. */
        pthread_join(t->tid, NULL);
        eg__mutex_lock(&th->lock);
        t->reaped = 1;
        pthread_cond_broadcast(&th->cond);
    }
    while (!t->reaped) {
        if (pthread_cond_timedwait(&th->cond, &th->lock, deadline)
                == ETIMEDOUT && !t->reaped) {
            return -ETIMEDOUT;
        }
    }
    return 0;
}

int
eg_thread_join(eg_thread *t, double timeout_s)
{
    if (t == NULL || isnan(timeout_s) || t == eg__self) {
        return -EINVAL;
    }
    if (t->magic != EG__THREAD_LIVE) {
#ifdef EG_DEBUG
        eg__fatal("eg_thread_join() called on a handle that was already "
                  "joined, or given up after its thread was abandoned at "
                  "exit, or that is not an eg_thread");
#endif
        return -EINVAL;
    }
    eg__threads *th = &t->interp->threads;
    PyThreadState *save = eg__tstate_attached() ? eg__wait_begin() : NULL;
    int rc;
    if (atomic_load_explicit(&t->abandoned, memory_order_relaxed)) {
        eg__mutex_lock(&th->lock);
        rc = -ESHUTDOWN;                 /* given up below, without waiting */
    }
    else if (t->join_cb != NULL) {
        rc = t->join_cb(t->arg, timeout_s);
        eg__mutex_lock(&th->lock);
        if (rc == 0 && !t->ended) {
            t->ended = t->reaped = t->reap_claimed = 1;
            th->live--;
        }
    }
    else {
        struct timespec deadline = eg__deadline(timeout_s);
        eg__mutex_lock(&th->lock);
        rc = eg__wait_reaped(th, t, &deadline, 1);
    }
    int free_it = 0;
    if (rc == 0) {
        eg__unregister(th, t);
        free_it = eg__unref(t);          /* the owner's reference */
    }
    else if (rc == -ESHUTDOWN && !t->owner_gone) {
        /* Abandoned at exit and maybe still running: the owner gives the
         * handle up (the thread may still read it, so it is never freed)
         * and nothing blocks -- a C++ ~thread(), a close() -- on it. */
        t->owner_gone = 1;
        t->magic = EG__THREAD_DEAD;
        (void)eg__unref(t);              /* the registry keeps its own */
    }
    eg__mutex_unlock(&th->lock);
    if (free_it) {
        eg__thread_free(t);
    }
    eg__wait_end(save);
    return rc < 0 ? rc : 0;
}

void
eg__threads_close(eg__threads *th)
{
    eg__mutex_lock(&th->lock);
    th->closed = 1;
    eg__mutex_unlock(&th->lock);
}

size_t
eg__threads_stop_all(eg__record *in, double timeout_s)
{
    eg__threads *th = &in->threads;
    eg__mutex_lock(&th->lock);
    th->closed = 1;
    size_t n = 0;
    for (struct eg_thread *t = th->first; t != NULL; t = t->next) {
        n++;
    }
    struct eg_thread **todo = n ? calloc(n, sizeof(*todo)) : NULL;
    if (n && todo == NULL) {
        eg__mutex_unlock(&th->lock);
        fprintf(stderr, "exitguard: out of memory; native threads of "
                "interpreter %lld were not joined\n", (long long)in->id);
        return n;
    }
    size_t i = 0;
    for (struct eg_thread *t = th->first; t != NULL; t = t->next) {
        t->refs++;                       /* phase 1's reference */
        atomic_store_explicit(&t->stop_requested, 1, memory_order_seq_cst);
        todo[i++] = t;
    }
    eg__mutex_unlock(&th->lock);
    if (n == 0) {
        return 0;
    }
    size_t abandoned = 0;

    /* Everything below waits: never with the GIL (rule: a thread we join
     * may need it to finish). */
    EG__BEGIN_WAIT
    for (i = 0; i < n; i++) {
        if (todo[i]->request_stop != NULL) {
            todo[i]->request_stop(todo[i]->arg);
        }
    }
    struct timespec deadline = eg__deadline(timeout_s);
    for (i = 0; i < n; i++) {
        struct eg_thread *t = todo[i];
        int rc;
        if (t->join_cb != NULL) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            double left = (double)(deadline.tv_sec - now.tv_sec)
                        + (double)(deadline.tv_nsec - now.tv_nsec) / 1e9;
            rc = t->join_cb(t->arg, left > 0 ? left : 0);
            eg__mutex_lock(&th->lock);
            if (rc == 0 && !t->ended) {
                t->ended = t->reaped = t->reap_claimed = 1;
                th->live--;
            }
        }
        else {
            eg__mutex_lock(&th->lock);
            rc = eg__wait_reaped(th, t, &deadline, 0);
        }
        if (rc < 0) {
            atomic_store_explicit(&t->abandoned, 1, memory_order_seq_cst);
            /* An owner waiting in eg_thread_join gives up at once. */
            pthread_cond_broadcast(&th->cond);
            abandoned++;
            fprintf(stderr, "exitguard: native thread '%s' did not stop "
                    "within %.1f s (EXITGUARD_JOIN_TIMEOUT); exit continues "
                    "without it, and it can no longer attach\n",
                    t->name, timeout_s);
        }
        else {
            eg__unregister(th, t);
        }
        int free_it = eg__unref(t);
        eg__mutex_unlock(&th->lock);
        if (free_it) {
            eg__thread_free(t);
        }
    }
    EG__END_WAIT
    free(todo);
    return abandoned;
}

int
eg__threads_reusable(eg__threads *th)
{
    eg__mutex_lock(&th->lock);
    int empty = th->first == NULL && th->live == 0;
    eg__mutex_unlock(&th->lock);
    return empty;
}

void
eg__threads_reset(eg__threads *th)
{
    eg__mutex_lock(&th->lock);
    th->closed = 0;
    eg__mutex_unlock(&th->lock);
}

size_t
eg__threads_live(eg__record *in)
{
    eg__mutex_lock(&in->threads.lock);
    size_t n = in->threads.live;
    eg__mutex_unlock(&in->threads.lock);
    return n;
}
