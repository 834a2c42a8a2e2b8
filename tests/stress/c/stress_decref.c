/*
 * stress_decref.c -- C-level stress test of the deferred-decref queue, without
 * a running interpreter.
 *
 * N producer threads push M decrefs each (and come and go in waves, so lanes
 * are orphaned and reclaimed) while one consumer drains -- and a statistics
 * reader walks the lanes it frees -- concurrently with the real
 * eg__decref_drain_sc -- the real Dekker/membarrier protocol, the real
 * segment recycling.  The "objects" are plain PyObject structs with a large
 * reference count: Py_DECREF only decrements them, so at the end every object
 * must have lost exactly one reference per push: nothing lost, nothing applied
 * twice.  With STRESS_FAIL_ALLOC, one allocation in FAIL_EVERY fails (the
 * allocator is interposed in decref.c through stress_hooks.h), which
 * drives pushes through the spill path.
 *
 * The consumer drains attached, as the core requires: the process initialises
 * an interpreter and the consumer thread holds a thread state while it drains.
 * On a release build Py_DECREF would not look at it, but a debug build (Py_DEBUG:
 * python3.14-dbg) counts every decref in the thread state's interpreter and
 * crashes without one -- an honest reminder that drains run attached.
 *
 * Built and run by tests/stress/c/Makefile (make test), also under
 * ThreadSanitizer and AddressSanitizer.
 */
#include "core/decref.h"
#include "core/decref_drain.h"

#include <stdio.h>
#include <string.h>

#ifndef PRODUCERS
#  define PRODUCERS 4
#endif
#ifndef ITEMS
#  define ITEMS 200000
#endif
#define WAVES 3
#define BASE_REFCNT (1 << 24)

static PyObject *objs;             /* PRODUCERS * ITEMS fake objects */
static _Atomic int producers_done;
static eg__record *in;

typedef struct { int index, wave; } prod_t;

static void *
producer(void *arg)
{
    prod_t *p = arg;
    size_t per_wave = ITEMS / WAVES;
    size_t first = (size_t)p->index * ITEMS + (size_t)p->wave * per_wave;
    size_t n = p->wave == WAVES - 1 ? ITEMS - (size_t)p->wave * per_wave : per_wave;
    for (size_t i = 0; i < n; i++) {
        eg__decref_push_mp(in, &objs[first + i]);
    }
    return NULL;        /* thread exit orphans this wave's lane */
}

/* The statistics reader: walks the lanes (eg__decref_pending_count) while
 * the consumer unlinks and frees orphaned ones -- what stats() does on a
 * free-threaded build, with no GIL between them.  Under ASan a lane freed
 * beneath the walk is a use-after-free report. */
static void *
counter(void *arg)
{
    (void)arg;
    uint64_t walks = 0;
    while (!atomic_load(&producers_done)) {
        (void)eg__decref_pending_count(in);
        walks++;
    }
    return (void *)(uintptr_t)walks;
}

static void *
consumer(void *arg)
{
    (void)arg;
    PyGILState_STATE g = PyGILState_Ensure();
    while (!atomic_load(&producers_done)) {
        (void)eg__decref_drain_sc(in);
    }
    PyGILState_Release(g);
    return NULL;
}

/* The core calls these only attached or for the main interpreter; the
 * record here is neither, so they must never run. */
int eg__stress_unreachable(void);

int
main(void)
{
    Py_InitializeEx(0);
    PyThreadState *main_ts = PyEval_SaveThread();   /* the consumer attaches */
    eg__decref_process_init();
    in = calloc(1, sizeof(*in));
    objs = calloc((size_t)PRODUCERS * ITEMS, sizeof(PyObject));
    if (in == NULL || objs == NULL) {
        return 2;
    }
    eg__decref_queue_init(&in->queue);
    atomic_init(&in->state, EG__RUNNING);
    in->is_main = 0;                    /* no Py_AddPendingCall */
    for (size_t i = 0; i < (size_t)PRODUCERS * ITEMS; i++) {
        Py_SET_REFCNT(&objs[i], BASE_REFCNT);
    }

    pthread_t cons, cnt;
    pthread_create(&cons, NULL, consumer, NULL);
    pthread_create(&cnt, NULL, counter, NULL);
    for (int w = 0; w < WAVES; w++) {
        pthread_t prods[PRODUCERS];
        prod_t args[PRODUCERS];
        for (int p = 0; p < PRODUCERS; p++) {
            args[p] = (prod_t){p, w};
            pthread_create(&prods[p], NULL, producer, &args[p]);
        }
        for (int p = 0; p < PRODUCERS; p++) {
            pthread_join(prods[p], NULL);
        }
    }
    atomic_store(&producers_done, 1);
    pthread_join(cons, NULL);
    pthread_join(cnt, NULL);
    PyEval_RestoreThread(main_ts);
    Py_ssize_t last = eg__decref_drain_sc(in);      /* what the race left */

    long bad = 0;
    for (size_t i = 0; i < (size_t)PRODUCERS * ITEMS; i++) {
        if (Py_REFCNT(&objs[i]) != BASE_REFCNT - 1) {
            if (bad++ < 5) {
                fprintf(stderr, "object %zu: refcount %zd, expected %d\n", i,
                        (Py_ssize_t)Py_REFCNT(&objs[i]), BASE_REFCNT - 1);
            }
        }
    }
    uint64_t applied = atomic_load(&in->queue.applied);
    uint64_t spilled = atomic_load(&in->queue.spilled);
    uint64_t dropped = atomic_load(&in->queue.dropped);
    printf("stress_decref: %d producers x %d items in %d waves: applied %llu "
           "(last drain %zd), spilled %llu, dropped %llu, wrong %ld\n",
           PRODUCERS, ITEMS, WAVES, (unsigned long long)applied, last,
           (unsigned long long)spilled, (unsigned long long)dropped, bad);
    int ok = bad == 0 && dropped == 0
             && applied == (uint64_t)PRODUCERS * ITEMS
             && eg__decref_pending_count(in) == 0;
#ifdef STRESS_FAIL_ALLOC
    ok = ok && spilled > 0;              /* the spill path was exercised */
#endif
    printf("%s\n", ok ? "1 passed, 0 failed" : "0 passed, 1 failed");
    return ok ? 0 : 1;
}
