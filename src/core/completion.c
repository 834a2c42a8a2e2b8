/*
 * completion.c -- completion queues: native threads post callbacks without
 * the GIL; the thread that owns the queue (an asyncio loop, through an
 * eventfd reader) runs them attached.
 *
 * CAUTION: eg_cq_post/eg_cq_post_future run on any thread with no thread
 * state: the door (base/door.h), one malloc, one CAS and maybe one write(2).
 * Everything that touches Python (running, cancelling) runs attached.
 *
 * DESIGN
 *
 * A queue is a lock-free LIFO of nodes (push-only for producers, take-all
 * for the consumer, so there is no ABA) plus an eventfd.  Only the push
 * that finds the queue empty writes the eventfd: a burst of a million posts
 * costs one wake-up, as libuv's uv_async_send and spead2 coalesce them.
 * The consumer reads the eventfd *before* taking the list, so a post that
 * lands after the take finds the list empty and writes again: no lost
 * wake-up, at worst a spurious one.  The taken list is reversed to run in
 * posting order.
 *
 * Posts pass through a door (base/door.h: count in, then check closed, in
 * one read-modify-write).  Closing (CompletionQueue.close(), its
 * deallocation, or phase 2 of its interpreter) closes the door, waits --
 * GIL released -- for the posts inside, and calls every pending
 * callback with cancelled = 1 so native resources are freed; pending
 * futures are cancelled -- unless their loop is closed already, where
 * cancelling would schedule callbacks on a dead loop ("Event loop is
 * closed").  Every accepted callback is called exactly once.
 *
 *   operation     | runs on              | concurrent with
 *   --------------+----------------------+-------------------------------
 *   post          | any thread, no GIL   | posts, run, close
 *   run           | owner, attached      | posts (never another run or
 *                 |                      | close: the object's lock)
 *   close/cancel  | attached             | posts (the door's wait)
 */
#include "core/completion.h"
#include "base/door.h"
#include "base/platform.h"
#include "core/record.h"
#include "core/registry.h"

#include <errno.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

typedef struct eg__cqnode {
    struct eg__cqnode *next;
    void (*fn)(void *arg, int cancelled);
    PyObject *(*build)(void *arg, int cancelled, int *is_exception);
    eg_ref *future;
    void *arg;
} eg__cqnode;

struct eg_cq {
    _Atomic(eg__cqnode *) head;
    eg__door door;                  /* posts pass through it; close shuts it */
    int efd;
    eg__record *interp;
    PyObject *owner;                /* the CompletionQueue (borrowed) */
    _Atomic uint64_t posted, ran, cancelled, wakeups;
    struct eg_cq *prev, *next;      /* the interpreter's list, cq_lock */
};

eg_cq *
eg__cq_new(eg__record *in, PyObject *owner)
{
    eg_cq *q = calloc(1, sizeof(*q));
    if (q == NULL) {
        return NULL;
    }
    q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (q->efd < 0) {
        free(q);
        return NULL;
    }
    eg__door_init(&q->door, 0);      /* calloc'd: open, nobody inside */
    q->interp = in;
    q->owner = owner;
    eg__mutex_lock(&in->cq_lock);
    q->next = in->cqs;
    if (in->cqs) {
        in->cqs->prev = q;
    }
    in->cqs = q;
    eg__mutex_unlock(&in->cq_lock);
    return q;
}

int
eg__cq_fileno(eg_cq *q)
{
    return q->efd;
}

void
eg__cq_counts(eg_cq *q, uint64_t out[4])
{
    out[0] = atomic_load_explicit(&q->posted, memory_order_seq_cst);
    out[1] = atomic_load_explicit(&q->ran, memory_order_seq_cst);
    out[2] = atomic_load_explicit(&q->cancelled, memory_order_seq_cst);
    out[3] = atomic_load_explicit(&q->wakeups, memory_order_seq_cst);
}

int
eg__cq_closed(eg_cq *q)
{
    return eg__door_state(&q->door) != EG__DOOR_OPEN;
}

static int
eg__cq_push(eg_cq *q, eg__cqnode *n)
{
    /* In through the door, or refused once close began: either close
     * counts us and waits, or we see it closing and back out. */
    if (eg__door_enter_mp(&q->door) < 0) {
        return -ESHUTDOWN;
    }
    eg__cqnode *head = atomic_load_explicit(&q->head, memory_order_relaxed);
    do {
        n->next = head;
        /* Release: the node's fields are visible to the taker. */
    } while (!atomic_compare_exchange_weak_explicit(
                 &q->head, &head, n,
                 memory_order_release, memory_order_relaxed));
    atomic_fetch_add_explicit(&q->posted, 1, memory_order_relaxed);
    if (head == NULL) {
        /* Empty to non-empty: the one write of this burst. */
        uint64_t one = 1;
        ssize_t w = write(q->efd, &one, sizeof(one));
        (void)w;
        atomic_fetch_add_explicit(&q->wakeups, 1, memory_order_relaxed);
    }
    eg__door_leave_mp(&q->door);
    return 0;
}

int
eg_cq_post(eg_cq *q, void (*fn)(void *arg, int cancelled), void *arg)
{
    if (q == NULL || fn == NULL) {
        return -EINVAL;
    }
    eg__cqnode *n = malloc(sizeof(*n));
    if (n == NULL) {
        return -ENOMEM;
    }
    n->fn = fn;
    n->build = NULL;
    n->future = NULL;
    n->arg = arg;
    int rc = eg__cq_push(q, n);
    if (rc < 0) {
        free(n);
    }
    return rc;
}

int
eg_cq_post_future(eg_cq *q, eg_ref *future,
                  PyObject *(*build)(void *arg, int cancelled,
                                     int *is_exception),
                  void *arg)
{
    if (q == NULL || future == NULL || build == NULL) {
        return -EINVAL;
    }
    eg__cqnode *n = malloc(sizeof(*n));
    if (n == NULL) {
        return -ENOMEM;
    }
    n->fn = NULL;
    n->build = build;
    n->future = future;
    n->arg = arg;
    int rc = eg__cq_push(q, n);
    if (rc < 0) {
        free(n);
    }
    return rc;
}

/* ---- Consumer side (attached) ---------------------------------------------- */

static eg__cqnode *
eg__cq_take(eg_cq *q)
{
    uint64_t v;
    ssize_t r = read(q->efd, &v, sizeof(v));    /* first: see file comment */
    (void)r;
    /* Acquire pairs with the pushers' release. */
    eg__cqnode *list = atomic_exchange_explicit(&q->head, NULL,
                                                memory_order_acquire);
    eg__cqnode *rev = NULL;
    while (list != NULL) {
        eg__cqnode *next = list->next;
        list->next = rev;
        rev = list;
        list = next;
    }
    return rev;
}

/* Does the future's loop still run callbacks?  (get_loop().is_closed()) */
static int
eg__future_loop_open(PyObject *fut)
{
    PyObject *loop = PyObject_CallMethod(fut, "get_loop", NULL);
    if (loop == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *closed = PyObject_CallMethod(loop, "is_closed", NULL);
    Py_DECREF(loop);
    int open = closed != NULL && !PyObject_IsTrue(closed);
    Py_XDECREF(closed);
    PyErr_Clear();
    return open;
}

static int
eg__future_done(PyObject *fut)
{
    PyObject *d = PyObject_CallMethod(fut, "done", NULL);
    int done = d == NULL || PyObject_IsTrue(d);
    Py_XDECREF(d);
    PyErr_Clear();
    return done;
}

/* Run (cancelled == 0) or cancel one node, and free it.  Attached.  Errors
 * from callbacks go to sys.unraisablehook; the queue goes on. */
static void
eg__cq_node_finish(eg_cq *q, eg__cqnode *n, int cancelled)
{
    if (n->fn != NULL) {
        n->fn(n->arg, cancelled);
        if (PyErr_Occurred()) {
            PyErr_WriteUnraisable(NULL);
        }
    }
    else {
        PyObject *fut = eg_ref_get(n->future);
        if (fut != NULL) {
            Py_INCREF(fut);
        }
        if (!cancelled && fut != NULL && !eg__future_done(fut)) {
            int is_exc = 0;
            PyObject *v = n->build(n->arg, 0, &is_exc);
            PyObject *r;
            if (v == NULL) {
                PyObject *type, *value, *tb;
                PyErr_Fetch(&type, &value, &tb);
                PyErr_NormalizeException(&type, &value, &tb);
                if (tb != NULL && value != NULL) {
                    PyException_SetTraceback(value, tb);
                }
                r = value ? PyObject_CallMethod(fut, "set_exception", "O",
                                                value)
                          : NULL;
                Py_XDECREF(type);
                Py_XDECREF(value);
                Py_XDECREF(tb);
            }
            else {
                r = PyObject_CallMethod(fut, is_exc ? "set_exception"
                                                    : "set_result",
                                        "O", v);
                Py_DECREF(v);
            }
            if (r == NULL) {
                PyErr_WriteUnraisable(fut);
            }
            Py_XDECREF(r);
        }
        else {
            /* Not run: let the builder free its argument. */
            PyObject *ignored = n->build(n->arg, 1, NULL);
            Py_XDECREF(ignored);
            PyErr_Clear();
            if (cancelled && fut != NULL && !eg__future_done(fut)
                    && eg__future_loop_open(fut)) {
                PyObject *r = PyObject_CallMethod(fut, "cancel", NULL);
                if (r == NULL) {
                    PyErr_WriteUnraisable(fut);
                }
                Py_XDECREF(r);
            }
        }
        Py_XDECREF(fut);
        eg_ref_release(n->future);
    }
    atomic_fetch_add_explicit(cancelled ? &q->cancelled : &q->ran, 1,
                              memory_order_relaxed);
    free(n);
}

Py_ssize_t
eg__cq_run(eg_cq *q)
{
    Py_ssize_t n = 0;
    eg__cqnode *list = eg__cq_take(q);
    while (list != NULL) {
        eg__cqnode *next = list->next;
        eg__cq_node_finish(q, list, 0);
        list = next;
        n++;
    }
    return n;
}

/* Close: refuse new posts, wait for racing ones, cancel what is pending.
 * Attached.  Idempotent. */
void
eg__cq_close(eg_cq *q)
{
    if (eg__cq_closed(q)) {
        return;
    }
    if (eg__door_begin_close(&q->door) > 0) {
        /* Posts inside take a few instructions and never block: no
         * deadline is needed, but the wait releases the GIL all the same. */
        struct timespec forever = eg__deadline(-1);
        EG__BEGIN_WAIT
        (void)eg__door_wait_empty(&q->door, &forever);
        EG__END_WAIT
    }
    eg__door_finish_close(&q->door);
    eg__cqnode *list = eg__cq_take(q);
    while (list != NULL) {
        eg__cqnode *next = list->next;
        eg__cq_node_finish(q, list, 1);
        list = next;
    }
}

/* Attached: close and free (the Python object is going away). */
void
eg__cq_free(eg_cq *q)
{
    eg__cq_close(q);
    eg__record *in = q->interp;
    eg__mutex_lock(&in->cq_lock);
    if (q->prev) {
        q->prev->next = q->next;
    }
    else {
        in->cqs = q->next;
    }
    if (q->next) {
        q->next->prev = q->prev;
    }
    eg__mutex_unlock(&in->cq_lock);
    close(q->efd);
    eg__door_destroy(&q->door);
    free(q);
}

/* pthread_atfork child, no Python API: a poster that was inside
 * eg__cq_push at fork time does not exist in the child, so its count in
 * the door would make close() wait for ever (found by the torture suite).
 * Its node is in the list or it is not -- the CAS decided before the fork. */
void
eg__cq_after_fork_child(eg__record *in)
{
    if (pthread_mutex_init(&in->cq_lock, NULL) != 0) {
        abort();
    }
    for (eg_cq *q = in->cqs; q != NULL; q = q->next) {
        eg__door_init(&q->door, 0);      /* keeps open or closed */
        eg__reopen_eventfd(q->efd);
        if (atomic_load_explicit(&q->head, memory_order_relaxed) != NULL) {
            uint64_t one = 1;        /* still pending: keep the fd readable */
            ssize_t w = write(q->efd, &one, sizeof(one));
            (void)w;
        }
    }
}

/* Phase 2, attached: close every queue of the interpreter.  The queues stay
 * allocated (their Python objects still own them); they are only closed. */
void
eg__cq_close_all(eg__record *in)
{
    for (;;) {
        eg_cq *q = NULL;
        PyObject *owner = NULL;
        eg__mutex_lock(&in->cq_lock);
        for (eg_cq *c = in->cqs; c != NULL; c = c->next) {
            if (!eg__cq_closed(c) && Py_REFCNT(c->owner) > 0) {
                q = c;
                /* Keep the object -- and so q -- alive while cancellation
                 * callbacks run (one of them may drop the last reference). */
                owner = Py_NewRef(c->owner);
                break;
            }
        }
        eg__mutex_unlock(&in->cq_lock);
        if (q == NULL) {
            return;
        }
        eg__cq_close(q);
        Py_DECREF(owner);
    }
}
