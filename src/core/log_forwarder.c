/*
 * log_forwarder.c -- the consumer side of exitguard's logging: the
 * forwarder thread that sleeps on the eventfd and delivers the ring's
 * messages in batches into Python's logging (exitguard._logging.deliver),
 * the main interpreter's setup of that deliver function, phase 2's stop,
 * join and final drain, and the raw consumer of tests/stress/c/stress_logring.c.
 * It also defines eg__log, the state the producers in log.c share with it,
 * so that log.c calls and references this file and this file never log.c.
 *
 * The design -- the ring, the Dekker pair on `sleeping`, the exit
 * sequence, which operations run concurrently -- is log.c's DESIGN comment.
 *
 * CAUTION: eg__log_start_forwarder runs on a producer's thread with no
 * thread state, and the forwarder thread has none until eg_gil_ensure:
 * only libc and atomics there.  The forwarder attaches through the gate
 * before it touches Python; eg__log_init_main and eg__log_stop_and_drain
 * run attached.
 */
#include "core/log_forwarder.h"
#include "base/door.h"
#include "base/platform.h"
#include "core/record.h"
#include "core/gate.h"
#include "core/tstates.h"
#include "core/log_state.h"

#include <poll.h>
#include <string.h>
#include <unistd.h>

#define EG__LOG_BATCH 256             /* messages per attach */

/* The one log state of the process (its fields: log_state.h). */
eg__logstate eg__log = {
    .efd = -1,
    .start_lock = PTHREAD_MUTEX_INITIALIZER,
    .counters_lock = PTHREAD_MUTEX_INITIALIZER,
};

/* ---- Consumer ----------------------------------------------------------------- */

static int
eg__log_ready(void)
{
    eg__logslot *s = &eg__log.slots[eg__log.dequeue_pos & eg__log.mask];
    return atomic_load_explicit(&s->seq, memory_order_acquire)
        == eg__log.dequeue_pos + 1;
}

/* Main interpreter's module exec, attached: import exitguard._logging
 * (installing its configuration hook) and keep its deliver function.
 *
 * Eagerly, on the importing thread, never from the forwarder: an import in
 * progress on another thread when the process forks leaves that module's
 * import lock held forever in the child (CPython re-creates only the
 * global import lock after fork), and the child's phase 2 would block on
 * it -- found by the torture suite. */
int
eg__log_init_main(void)
{
    if (eg__log.deliver != NULL) {
        return 0;
    }
    PyObject *mod = PyImport_ImportModule("exitguard._logging");
    if (mod == NULL) {
        return -1;
    }
    eg__log.deliver = PyObject_GetAttrString(mod, "deliver");
    Py_DECREF(mod);
    return eg__log.deliver ? 0 : -1;
}

/* Attached (main): the deliver function, or NULL (not set up). */
static PyObject *
eg__log_deliver_fn(void)
{
    return eg__log.deliver;
}

/* Attached (main): deliver up to `max` messages; returns how many. */
static Py_ssize_t
eg__log_deliver_batch(Py_ssize_t max)
{
    PyObject *batch = PyList_New(0);
    if (batch == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_ssize_t n = 0;
    while (n < max && eg__log_ready()) {
        eg__logslot *s = &eg__log.slots[eg__log.dequeue_pos & eg__log.mask];
        const char *name = s->logger ? s->logger->name : s->logger_name;
        /* Native text is not always valid UTF-8 (a C string, a cut in the
         * middle of a character): decode with "replace", which fails only
         * on memory, so no message is lost to a decoding error. */
        PyObject *pname = PyUnicode_DecodeUTF8(name, (Py_ssize_t)strlen(name),
                                               "replace");
        PyObject *pmsg = pname ? PyUnicode_DecodeUTF8(
            s->msg, (Py_ssize_t)s->len, "replace") : NULL;
        PyObject *pthread = pmsg ? PyUnicode_DecodeUTF8(
            s->thread, (Py_ssize_t)strnlen(s->thread, sizeof(s->thread)),
            "replace") : NULL;
        PyObject *item = pthread ? Py_BuildValue(
            "(OiOkdO)", pname, s->level, pmsg, s->tid, s->created, pthread)
            : NULL;
        Py_XDECREF(pname);
        Py_XDECREF(pmsg);
        Py_XDECREF(pthread);
        /* Release the slot for producers: position + size. */
        atomic_store_explicit(&s->seq, eg__log.dequeue_pos + eg__log.mask + 1,
                              memory_order_release);
        eg__log.dequeue_pos++;
        n++;
        if (item == NULL || PyList_Append(batch, item) < 0) {
            /* Out of memory: say so (this clears the error before any
             * other C API call), go on with the next one. */
            PyErr_WriteUnraisable(NULL);
        }
        Py_XDECREF(item);
    }
    PyObject *fn = n ? eg__log_deliver_fn() : NULL;
    if (fn != NULL) {
        uint64_t dropped = atomic_exchange_explicit(
            &eg__log.dropped_unreported, 0, memory_order_relaxed);
        PyObject *r = PyObject_CallFunction(fn, "OK", batch,
                                            (unsigned long long)dropped);
        if (r == NULL) {
            PyErr_WriteUnraisable(fn);
        }
        Py_XDECREF(r);
    }
    Py_DECREF(batch);
    atomic_fetch_add_explicit(&eg__log.delivered, (uint64_t)n,
                              memory_order_relaxed);
    return n;
}

/* The forwarder: has phase 2 asked it to stop?  Sequentially consistent,
 * as eg__log_stop_and_drain's store of `stop` is. */
static int
eg__log_stopping(void)
{
    return atomic_load_explicit(&eg__log.stop, memory_order_seq_cst);
}

static void *
eg__forwarder_main(void *unused)
{
    (void)unused;
    while (!atomic_load_explicit(&eg__log.stop, memory_order_seq_cst)) {
        if (!eg__log_ready()) {
            atomic_store_explicit(&eg__log.sleeping, 1, memory_order_seq_cst);
            eg__full_fence();
            if (!eg__log_ready() && !eg__log_stopping()) {
                struct pollfd p = {.fd = eg__log.efd, .events = POLLIN};
                (void)poll(&p, 1, -1);
            }
            uint64_t v;
            ssize_t r = read(eg__log.efd, &v, sizeof(v));
            (void)r;
            atomic_store_explicit(&eg__log.sleeping, 0, memory_order_seq_cst);
            continue;
        }
        eg_gil st;
        if (eg_gil_ensure(NULL, &st) != 0) {
            /* The gate is closed: phase 2 delivers what is left. */
            break;
        }
        while (eg__log_ready() && !eg__log_stopping()) {
            (void)eg__log_deliver_batch(EG__LOG_BATCH);
        }
        eg_gil_release(&st);
    }
    eg__tstates_release_self();
    return NULL;
}

/* Any thread, no thread state: the first message starts the forwarder
 * (contract in core/log.h). */
void
eg__log_start_forwarder(void)
{
    eg__mutex_lock(&eg__log.start_lock);
    if (!atomic_load_explicit(&eg__log.started, memory_order_seq_cst)
            && eg__door_state(&eg__log.door) == EG__DOOR_OPEN) {
        if (pthread_create(&eg__log.forwarder, NULL, eg__forwarder_main,
                           NULL) == 0) {
#if defined(__linux__)
            (void)pthread_setname_np(eg__log.forwarder, "eg-log");
#endif
            atomic_store_explicit(&eg__log.started, 1, memory_order_seq_cst);
        }
    }
    eg__mutex_unlock(&eg__log.start_lock);
}

/* Main interpreter, phase 2, attached, before the gate closes: stop and
 * join the forwarder (GIL released), deliver everything still queued,
 * report drops, and switch eg_log to stderr. */
void
eg__log_stop_and_drain(void)
{
    eg__mutex_lock(&eg__log.start_lock);
    int started = atomic_load_explicit(&eg__log.started, memory_order_seq_cst);
    atomic_store_explicit(&eg__log.stop, 1, memory_order_seq_cst);
    eg__mutex_unlock(&eg__log.start_lock);
    if (started) {
        uint64_t one = 1;
        ssize_t w = write(eg__log.efd, &one, sizeof(one));
        (void)w;
        Py_BEGIN_ALLOW_THREADS
        pthread_join(eg__log.forwarder, NULL);
        Py_END_ALLOW_THREADS
    }
    /* Producers racing with this keep landing in the ring until the door
     * closes; deliver until it is empty, then close it, then deliver the
     * last ones that made it in before the switch. */
    while (eg__log_deliver_batch(EG__LOG_BATCH) > 0) {
    }
    /* Producers already inside finish publishing (a few instructions
     * each: they never block); wait for them without the GIL, then
     * deliver what they published. */
    if (eg__door_begin_close(&eg__log.door) > 0) {
        struct timespec forever = eg__deadline(-1);
        Py_BEGIN_ALLOW_THREADS
        (void)eg__door_wait_empty(&eg__log.door, &forever);
        Py_END_ALLOW_THREADS
    }
    eg__door_finish_close(&eg__log.door);
    while (eg__log_deliver_batch(EG__LOG_BATCH) > 0) {
    }
    if (atomic_load_explicit(&eg__log.dropped_unreported,
                             memory_order_seq_cst) && eg__log.deliver) {
        PyObject *r = PyObject_CallFunction(
            eg__log.deliver, "[]K",
            (unsigned long long)atomic_exchange_explicit(&eg__log.dropped_unreported,
                                                0, memory_order_seq_cst));
        if (r == NULL) {
            PyErr_WriteUnraisable(NULL);
        }
        Py_XDECREF(r);
    }
    Py_CLEAR(eg__log.deliver);
}

/* For tests/stress/c/stress_logring.c only: pop one published message without
 * Python.  The caller becomes the ring's single consumer: the first call
 * marks the forwarder as started, so none is ever created.  Returns 1 and
 * fills level/msg, or 0 when the next slot is not published yet.  Not part
 * of exitguard's API. */
int
eg__log_pop_raw(int *level, char *msg, size_t cap)
{
    if (!atomic_load_explicit(&eg__log.started, memory_order_relaxed)) {
        eg__mutex_lock(&eg__log.start_lock);
        atomic_store_explicit(&eg__log.started, 1, memory_order_seq_cst);
        eg__mutex_unlock(&eg__log.start_lock);
    }
    if (!eg__log_ready()) {
        return 0;
    }
    eg__logslot *s = &eg__log.slots[eg__log.dequeue_pos & eg__log.mask];
    *level = s->level;
    size_t n = s->len < cap - 1 ? s->len : cap - 1;
    memcpy(msg, s->msg, n);
    msg[n] = '\0';
    atomic_store_explicit(&s->seq, eg__log.dequeue_pos + eg__log.mask + 1,
                          memory_order_release);
    eg__log.dequeue_pos++;
    atomic_fetch_add_explicit(&eg__log.delivered, 1, memory_order_relaxed);
    return 1;
}
