/*
 * stopper.c -- exit stoppers: callbacks that stop native work in phase 1,
 * before CPython joins non-daemon Python threads.
 *
 * DESIGN
 *
 * Each interpreter keeps its stoppers in a list under its own mutex (never
 * the GIL).  Phase 1 repeatedly picks, under the mutex, the newest stopper
 * that has not run and whose predecessors (eg_stopper_after edges) have all
 * run or were removed, marks it RUNNING, and calls it with the mutex
 * released -- so a callback may add or remove stoppers, or add edges.
 * Newest first is the order object lifetimes usually need (a thing built on
 * a thread pool is registered after the pool and must stop first); the
 * edges cover the cases where it is not (spead2 PR #223, issue #251).
 *
 * A stopper's states:
 *
 *     PENDING --(phase 1 picks it)--> RUNNING --(callback returns)--> DONE
 *        |                               |                              |
 *        +------- eg_stopper_remove -----+---- (waits for DONE) --------+--> freed
 *
 * The registry pops nothing by itself that the owner still references:
 * a handle stays valid until eg_stopper_remove(), and that call waits --
 * GIL released -- while the callback runs on another thread, so the
 * owner may free `arg` as soon as it returns.  Internal (Python-level)
 * stoppers use auto_free instead: the runner frees them after they ran.
 *
 * What this file does not do: run a stopper twice, run it after phase 1,
 * or stop on an exception (a raising Python stopper is reported through
 * sys.unraisablehook and the others still run).
 */
#include "core/stopper.h"
#include "base/platform.h"
#include "core/record.h"
#include "core/thread.h"
#include "core/decref_drain.h"

#include <dlfcn.h>
#include <errno.h>
#include <string.h>
#include <time.h>

enum { EG__STOPPER_PENDING, EG__STOPPER_RUNNING, EG__STOPPER_DONE };

/* A handle's magic: live until freed.  A second eg_stopper_remove of the
 * same handle is told apart while the memory is not reused; debug and ASan
 * builds never reuse it (EG__QUARANTINE). */
#define EG__STOPPER_LIVE 0x73746f7070657267ull
#define EG__STOPPER_DEAD 0x646561647374706full

struct eg_stopper {
    uint64_t magic;
    eg__record *interp;
    void (*stop)(void *arg);
    void *arg;
    void (*dtor)(void *arg);     /* internal: runs attached when freed */
    uint64_t seq;                /* registration order */
    int state;                   /* EG_STOPPER_*, under the list lock */
    int removed;                 /* remove() asked from its own callback */
    int waiters;                 /* remove() calls waiting for DONE */
    int auto_free;
    int reported;                /* the watchdog named it already */
    char *label;                 /* what to call it (NULL: its symbol) */
    pthread_t runner;            /* valid while RUNNING */
    struct eg_stopper *prev, *next;
    struct eg_stopper **preds;   /* must be DONE (or gone) before this runs */
    size_t npreds, cap_preds;
};

static void
eg__stoppers_init_locks(eg__stoppers *st)
{
    pthread_condattr_t attr;
    if (pthread_mutex_init(&st->lock, NULL) != 0
            || pthread_cond_init(&st->done_cond, NULL) != 0
            || pthread_condattr_init(&attr) != 0
            || pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0
            || pthread_cond_init(&st->watch_cond, &attr) != 0) {
        abort();
    }
    pthread_condattr_destroy(&attr);
}

void
eg__stoppers_init(eg__stoppers *st)
{
    memset(st, 0, sizeof(*st));
    eg__stoppers_init_locks(st);
}

int
eg__stoppers_reusable(eg__stoppers *st)
{
    eg__mutex_lock(&st->lock);
    int empty = st->first == NULL && !st->watching;
    eg__mutex_unlock(&st->lock);
    return empty;
}

void
eg__stoppers_reset(eg__stoppers *st)
{
    eg__mutex_lock(&st->lock);
    st->phase1_done = 0;
    st->count = 0;
    eg__mutex_unlock(&st->lock);
}

void
eg__stoppers_after_fork_child(eg__stoppers *st)
{
    /* A stopper RUNNING at fork time ran on another thread: in the child
     * it simply never finishes, so treat it as done.  The watchdog, if any,
     * is gone with its thread. */
    eg__stoppers_init_locks(st);
    st->watching = 0;
    st->current = NULL;
    for (struct eg_stopper *s = st->first; s != NULL; s = s->next) {
        if (s->state == EG__STOPPER_RUNNING) {
            s->state = EG__STOPPER_DONE;
        }
    }
}

/* Under the lock: unlink s and drop every edge that points to it. */
static void
eg__stopper_unlink(eg__stoppers *st, struct eg_stopper *s)
{
    if (s->prev) {
        s->prev->next = s->next;
    }
    else {
        st->first = s->next;
    }
    if (s->next) {
        s->next->prev = s->prev;
    }
    if (s->state == EG__STOPPER_PENDING) {
        st->count--;
    }
    for (struct eg_stopper *o = st->first; o != NULL; o = o->next) {
        for (size_t i = 0; i < o->npreds; i++) {
            if (o->preds[i] == s) {
                o->preds[i] = o->preds[--o->npreds];
                break;
            }
        }
    }
}

/* Outside the lock: free s, running its internal destructor if any. */
static void
eg__stopper_free(struct eg_stopper *s)
{
    s->magic = EG__STOPPER_DEAD;
    if (s->dtor != NULL) {
        s->dtor(s->arg);
    }
    free(s->preds);
    free(s->label);
    s->preds = NULL;
    s->label = NULL;
#ifndef EG__QUARANTINE
    free(s);
#endif
    /* EG__QUARANTINE (base/platform.h): kept, so that a second remove is
     * always caught. */
}

/* The handle is one of ours and not freed (as far as can be told).  Debug
 * builds abort naming the misuse; release builds report 0. */
static int
eg__stopper_valid(const struct eg_stopper *s, const char *what)
{
    if (s->magic == EG__STOPPER_LIVE) {
        return 1;
    }
#ifdef EG_DEBUG
    (void)what;
    eg__fatal("eg_stopper_remove()/eg_stopper_after() called on a stopper "
              "that was already removed, or on a pointer that is not an "
              "eg_stopper");
#else
    (void)what;
#endif
    return 0;
}

eg_stopper *
eg__stopper_add_ex(eg__record *in, void (*stop)(void *), void *arg,
                   void (*dtor)(void *), int auto_free, const char *label,
                   int *err)
{
    eg__stoppers *st = &in->stoppers;
    struct eg_stopper *s = calloc(1, sizeof(*s));
    if (s == NULL || (label != NULL && (s->label = strdup(label)) == NULL)) {
        free(s);
        *err = -ENOMEM;
        return NULL;
    }
    s->magic = EG__STOPPER_LIVE;
    s->interp = in;
    s->stop = stop;
    s->arg = arg;
    s->dtor = dtor;
    s->auto_free = auto_free;
    s->state = EG__STOPPER_PENDING;

    eg__mutex_lock(&st->lock);
    if (st->phase1_done) {
        eg__mutex_unlock(&st->lock);
        free(s->label);
        free(s);
        *err = -ESHUTDOWN;
        return NULL;
    }
    s->seq = st->next_seq++;
    s->next = st->first;
    if (st->first) {
        st->first->prev = s;
    }
    st->first = s;
    st->count++;
    eg__mutex_unlock(&st->lock);
    *err = 0;
    return s;
}

eg_stopper *
eg_stopper_add(void (*stop)(void *arg), void *arg)
{
    if (stop == NULL) {
        PyErr_SetString(PyExc_TypeError, "eg_stopper_add: stop is NULL");
        return NULL;
    }
    eg__record *in = eg__record_current();
    if (in == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "eg_stopper_add: exitguard is not imported in this "
                        "interpreter (call eg_import() in module exec)");
        return NULL;
    }
    eg__decref_maybe_drain(in);
    int err;
    eg_stopper *s = eg__stopper_add_ex(in, stop, arg, NULL, 0, NULL, &err);
    if (s == NULL) {
        if (err == -ENOMEM) {
            PyErr_NoMemory();
        }
        else {
            PyErr_Format(PyExc_RuntimeError,
                         "eg_stopper_add: phase 1 has already run in this "
                         "interpreter (exitguard is %s)",
                         eg__state_name(eg__state_of(in)));
        }
    }
    return s;
}

/* Under the lock: does `from` (transitively) wait for `target`? */
static int
eg__waits_for(struct eg_stopper *from, struct eg_stopper *target, int depth)
{
    if (from == target) {
        return 1;
    }
    if (depth > 10000) {
        return 1;     /* absurdly deep: refuse rather than recurse on */
    }
    for (size_t i = 0; i < from->npreds; i++) {
        if (eg__waits_for(from->preds[i], target, depth + 1)) {
            return 1;
        }
    }
    return 0;
}

int
eg_stopper_after(eg_stopper *first, eg_stopper *then)
{
    if (first == NULL || then == NULL || first == then
            || !eg__stopper_valid(first, "after")
            || !eg__stopper_valid(then, "after")
            || first->interp != then->interp) {
        return -EINVAL;
    }
    eg__stoppers *st = &then->interp->stoppers;
    int rc = 0;
    eg__mutex_lock(&st->lock);
    if (then->state != EG__STOPPER_PENDING) {
        rc = -EALREADY;
        goto done;
    }
    for (size_t i = 0; i < then->npreds; i++) {
        if (then->preds[i] == first) {
            goto done;          /* already there */
        }
    }
    if (eg__waits_for(first, then, 0)) {
        rc = -EDEADLK;
        goto done;
    }
    if (then->npreds == then->cap_preds) {
        size_t cap = then->cap_preds ? then->cap_preds * 2 : 4;
        struct eg_stopper **p = realloc(then->preds, cap * sizeof(*p));
        if (p == NULL) {
            rc = -ENOMEM;
            goto done;
        }
        then->preds = p;
        then->cap_preds = cap;
    }
    then->preds[then->npreds++] = first;
done:
    eg__mutex_unlock(&st->lock);
    return rc;
}

void
eg_stopper_remove(eg_stopper *s)
{
    if (s == NULL || !eg__stopper_valid(s, "remove")) {
        return;
    }
    eg__stoppers *st = &s->interp->stoppers;
    eg__mutex_lock(&st->lock);
    if (s->removed) {
        /* A second remove while its own callback still runs: the first
         * one stands (the runner frees it). */
        eg__mutex_unlock(&st->lock);
        return;
    }
    if (s->state == EG__STOPPER_RUNNING) {
        if (pthread_equal(s->runner, pthread_self())) {
            /* From inside its own callback: the runner frees it. */
            s->removed = 1;
            eg__mutex_unlock(&st->lock);
            return;
        }
        /* Running on another thread: wait until it returns, with the GIL
         * released if we hold it (the callback may need it). */
        PyThreadState *ts = eg__tstate_attached();
        PyThreadState *saved = NULL;
        if (ts != NULL) {
            eg__mutex_unlock(&st->lock);
            saved = eg__wait_begin();
            eg__mutex_lock(&st->lock);
        }
        s->waiters++;      /* the runner leaves the freeing to us */
        while (s->state == EG__STOPPER_RUNNING) {
            pthread_cond_wait(&st->done_cond, &st->lock);
        }
        if (saved != NULL) {
            eg__mutex_unlock(&st->lock);
            eg__wait_end(saved);
            eg__mutex_lock(&st->lock);
        }
    }
    eg__stopper_unlink(st, s);
    eg__mutex_unlock(&st->lock);
    eg__stopper_free(s);
}

/* Under the lock: the newest runnable stopper, or NULL. */
static struct eg_stopper *
eg__pick(eg__stoppers *st)
{
    struct eg_stopper *best = NULL;
    for (struct eg_stopper *s = st->first; s != NULL; s = s->next) {
        if (s->state != EG__STOPPER_PENDING
                || (best != NULL && s->seq < best->seq)) {
            continue;
        }
        int ready = 1;
        for (size_t i = 0; i < s->npreds && ready; i++) {
            ready = s->preds[i]->state == EG__STOPPER_DONE;
        }
        if (ready) {
            best = s;
        }
    }
    return best;
}

/* ---- The watchdog ----------------------------------------------------------
 *
 * A stopper that never returns hangs exit -- exitguard cannot interrupt C
 * code -- but the hang must name its cause.  While phase 1 runs stoppers, a
 * helper thread watches the one running now; when it has run for
 * EXITGUARD_JOIN_TIMEOUT seconds it prints what it is (a Python stopper's
 * module and qualified name, a C stopper's symbol and library, resolved with
 * dladdr), once.  No GIL, libc only: the phase thread holds the GIL, in the
 * stopper. */

/* Under the lock: print what `s` is.  CAUTION: no thread state. */
static void
eg__stopper_name_it(struct eg_stopper *s, double timeout_s)
{
    char where[512];
    if (s->label != NULL) {
        snprintf(where, sizeof(where), "%s", s->label);
    }
    else {
        /* A static function has no dynamic symbol: then the library and
         * the offset in it, which addr2line turns into a file and line. */
        Dl_info info;
        memset(&info, 0, sizeof(info));
        int found = dladdr((void *)(uintptr_t)s->stop, &info) != 0;
        const char *lib = found && info.dli_fname
            ? (strrchr(info.dli_fname, '/') ? strrchr(info.dli_fname, '/') + 1
                                            : info.dli_fname)
            : "?";
        if (found && info.dli_sname != NULL) {
            snprintf(where, sizeof(where), "%s (%s)", info.dli_sname, lib);
        }
        else if (found) {
            snprintf(where, sizeof(where), "a C function at %s+0x%lx", lib,
                     (unsigned long)((uintptr_t)s->stop
                                     - (uintptr_t)info.dli_fbase));
        }
        else {
            snprintf(where, sizeof(where), "a C function at %p",
                     (void *)(uintptr_t)s->stop);
        }
    }
    fprintf(stderr, "exitguard: exit stopper %s has been running for %.1f s "
            "(EXITGUARD_JOIN_TIMEOUT) in interpreter %lld; exit waits for "
            "it\n", where, timeout_s, (long long)s->interp->id);
    fflush(stderr);
}

static void *
eg__watchdog_main(void *arg)
{
    eg__stoppers *st = arg;
    eg__mutex_lock(&st->lock);
    while (!st->watch_stop) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        struct eg_stopper *s = st->current;
        int due = s != NULL && !s->reported
            && (now.tv_sec > st->current_deadline.tv_sec
                || (now.tv_sec == st->current_deadline.tv_sec
                    && now.tv_nsec >= st->current_deadline.tv_nsec));
        if (due) {
            s->reported = 1;
            eg__stopper_name_it(s, eg__join_timeout);
            continue;
        }
        struct timespec until = (s != NULL && !s->reported)
            ? st->current_deadline : eg__deadline(-1);
        (void)pthread_cond_timedwait(&st->watch_cond, &st->lock, &until);
    }
    st->watching = 0;
    pthread_cond_broadcast(&st->watch_cond);
    eg__mutex_unlock(&st->lock);
    return NULL;
}

/* Under the lock: start the watchdog once (detached: it needs nothing to
 * be joined, and ends when told).  Without it exit still works. */
static void
eg__watchdog_start(eg__stoppers *st)
{
    if (st->watching) {
        return;
    }
    st->watch_stop = 0;
    pthread_t tid;
    pthread_attr_t attr;
    if (pthread_attr_init(&attr) == 0) {
        (void)pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&tid, &attr, eg__watchdog_main, st) == 0) {
            st->watching = 1;
#if defined(__linux__)
            (void)pthread_setname_np(tid, "eg-watchdog");
#endif
        }
        pthread_attr_destroy(&attr);
    }
}

void
eg__stoppers_run(eg__record *in)
{
    eg__stoppers *st = &in->stoppers;
    eg__mutex_lock(&st->lock);
    if (st->first != NULL) {
        eg__watchdog_start(st);
    }
    for (;;) {
        struct eg_stopper *s = eg__pick(st);
        if (s == NULL) {
            break;
        }
        s->state = EG__STOPPER_RUNNING;
        s->runner = pthread_self();
        st->count--;
        st->current = s;
        st->current_deadline = eg__deadline(eg__join_timeout);
        pthread_cond_broadcast(&st->watch_cond);
        eg__mutex_unlock(&st->lock);

        s->stop(s->arg);
        if (PyErr_Occurred()) {
            /* A C stopper must not leave an exception set; report it,
             * count it (a raising stopper is a bad exit for
             * exitguard.testing) and go on with the others. */
            PyErr_WriteUnraisable(NULL);
            eg__stoppers_note_error(in);
        }

        eg__mutex_lock(&st->lock);
        st->current = NULL;
        s->state = EG__STOPPER_DONE;
        pthread_cond_broadcast(&st->done_cond);
        if (s->removed || (s->auto_free && s->waiters == 0)) {
            eg__stopper_unlink(st, s);
            eg__mutex_unlock(&st->lock);
            eg__stopper_free(s);
            eg__mutex_lock(&st->lock);
        }
    }
    /* Every stopper has run; edges cannot block one (cycles are refused
     * and a RUNNING predecessor is impossible here).  Close the list. */
    st->phase1_done = 1;
    st->watch_stop = 1;
    pthread_cond_broadcast(&st->watch_cond);
    eg__mutex_unlock(&st->lock);
}

void
eg__stoppers_note_error(eg__record *in)
{
    eg__mutex_lock(&in->stoppers.lock);
    in->stoppers.errors++;
    eg__mutex_unlock(&in->stoppers.lock);
}

uint64_t
eg__stoppers_errors(eg__record *in)
{
    eg__mutex_lock(&in->stoppers.lock);
    uint64_t n = in->stoppers.errors;
    eg__mutex_unlock(&in->stoppers.lock);
    return n;
}

size_t
eg__stoppers_count(eg__record *in)
{
    eg__mutex_lock(&in->stoppers.lock);
    size_t n = in->stoppers.count;
    eg__mutex_unlock(&in->stoppers.lock);
    return n;
}
