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
#include "eg_internal.h"

#include <errno.h>
#include <string.h>

enum { EG_STOPPER_PENDING, EG_STOPPER_RUNNING, EG_STOPPER_DONE };

struct eg_stopper {
    eg__interp *interp;
    void (*stop)(void *arg);
    void *arg;
    void (*dtor)(void *arg);     /* internal: runs attached when freed */
    uint64_t seq;                /* registration order */
    int state;                   /* EG_STOPPER_*, under the list lock */
    int removed;                 /* remove() asked from its own callback */
    int waiters;                 /* remove() calls waiting for DONE */
    int auto_free;
    pthread_t runner;            /* valid while RUNNING */
    struct eg_stopper *prev, *next;
    struct eg_stopper **preds;   /* must be DONE (or gone) before this runs */
    size_t npreds, cap_preds;
};

void
eg__stoppers_init(eg__stoppers *st)
{
    memset(st, 0, sizeof(*st));
    if (pthread_mutex_init(&st->lock, NULL) != 0
            || pthread_cond_init(&st->done_cond, NULL) != 0) {
        abort();
    }
}

void
eg__stoppers_after_fork_child(eg__stoppers *st)
{
    /* A stopper RUNNING at fork time ran on another thread: in the child
     * it simply never finishes, so treat it as done. */
    if (pthread_mutex_init(&st->lock, NULL) != 0
            || pthread_cond_init(&st->done_cond, NULL) != 0) {
        abort();
    }
    for (struct eg_stopper *s = st->first; s != NULL; s = s->next) {
        if (s->state == EG_STOPPER_RUNNING) {
            s->state = EG_STOPPER_DONE;
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
    if (s->state == EG_STOPPER_PENDING) {
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
    if (s->dtor != NULL) {
        s->dtor(s->arg);
    }
    free(s->preds);
    free(s);
}

eg_stopper *
eg__stopper_add_ex(eg__interp *in, void (*stop)(void *), void *arg,
                   void (*dtor)(void *), int auto_free, int *err)
{
    eg__stoppers *st = &in->stoppers;
    struct eg_stopper *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        *err = -ENOMEM;
        return NULL;
    }
    s->interp = in;
    s->stop = stop;
    s->arg = arg;
    s->dtor = dtor;
    s->auto_free = auto_free;
    s->state = EG_STOPPER_PENDING;

    eg__mutex_lock(&st->lock);
    if (st->phase1_done) {
        eg__mutex_unlock(&st->lock);
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
    eg__interp *in = eg__interp_current();
    if (in == NULL) {
        PyErr_SetString(PyExc_RuntimeError,
                        "eg_stopper_add: exitguard is not imported in this "
                        "interpreter (call eg_import() in module exec)");
        return NULL;
    }
    eg__decref_maybe_drain(in);
    int err;
    eg_stopper *s = eg__stopper_add_ex(in, stop, arg, NULL, 0, &err);
    if (s == NULL) {
        if (err == -ENOMEM) {
            PyErr_NoMemory();
        }
        else {
            PyErr_Format(PyExc_RuntimeError,
                         "eg_stopper_add: phase 1 has already run in this "
                         "interpreter (exitguard is %s)",
                         eg__state_name(atomic_load(&in->state)));
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
            || first->interp != then->interp) {
        return -EINVAL;
    }
    eg__stoppers *st = &then->interp->stoppers;
    int rc = 0;
    eg__mutex_lock(&st->lock);
    if (then->state != EG_STOPPER_PENDING) {
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
    if (s == NULL) {
        return;
    }
    eg__stoppers *st = &s->interp->stoppers;
    eg__mutex_lock(&st->lock);
    if (s->state == EG_STOPPER_RUNNING) {
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
            saved = PyEval_SaveThread();
            eg__mutex_lock(&st->lock);
        }
        s->waiters++;      /* the runner leaves the freeing to us */
        while (s->state == EG_STOPPER_RUNNING) {
            pthread_cond_wait(&st->done_cond, &st->lock);
        }
        if (saved != NULL) {
            eg__mutex_unlock(&st->lock);
            PyEval_RestoreThread(saved);
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
        if (s->state != EG_STOPPER_PENDING
                || (best != NULL && s->seq < best->seq)) {
            continue;
        }
        int ready = 1;
        for (size_t i = 0; i < s->npreds && ready; i++) {
            ready = s->preds[i]->state == EG_STOPPER_DONE;
        }
        if (ready) {
            best = s;
        }
    }
    return best;
}

void
eg__stoppers_run(eg__interp *in)
{
    eg__stoppers *st = &in->stoppers;
    eg__mutex_lock(&st->lock);
    for (;;) {
        struct eg_stopper *s = eg__pick(st);
        if (s == NULL) {
            break;
        }
        s->state = EG_STOPPER_RUNNING;
        s->runner = pthread_self();
        st->count--;
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
        s->state = EG_STOPPER_DONE;
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
    eg__mutex_unlock(&st->lock);
}

void
eg__stoppers_note_error(eg__interp *in)
{
    eg__mutex_lock(&in->stoppers.lock);
    in->stoppers.errors++;
    eg__mutex_unlock(&in->stoppers.lock);
}

uint64_t
eg__stoppers_errors(eg__interp *in)
{
    eg__mutex_lock(&in->stoppers.lock);
    uint64_t n = in->stoppers.errors;
    eg__mutex_unlock(&in->stoppers.lock);
    return n;
}

size_t
eg__stoppers_count(eg__interp *in)
{
    eg__mutex_lock(&in->stoppers.lock);
    size_t n = in->stoppers.count;
    eg__mutex_unlock(&in->stoppers.lock);
    return n;
}
