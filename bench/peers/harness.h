/*
 * harness.h -- the native-thread harness that every benchmark extension
 * shares: bench/_egbench.c (exitguard and CPython's own APIs) and the peer
 * extensions in bench/peers/ (pybind11, nanobind, Cython).
 *
 * One job is one measurement: a body that runs on a fresh native pthread
 * (one Python never saw), does its variant's per-thread set-up (for
 * instance keeping a thread state), times its own loop of n operations
 * (egb_time) and stores nanoseconds per operation in the job: the thread's
 * CPU time (CLOCK_THREAD_CPUTIME_ID), which leaves out the time other
 * processes of a shared machine run on its core, and the wall-clock time
 * beside it.  The
 * caller, attached, waits for the thread with the GIL released, so every
 * variant attaches uncontended.  The new thread inherits the caller's CPU
 * affinity, which bench/run.py pins to one core.
 *
 * Every variant does the same work while attached, egb_touch(): an incref
 * and a decref of one object that the compiler may not merge.  It proves
 * the thread really is attached and costs about a nanosecond, so the figures
 * are the cost of attaching and detaching.
 *
 * The header compiles as C11 and as C++17; everything in it is static
 * (inline, or marked unused), so a file that uses part of it has no
 * unused-function warnings.
 * Timed loops are noinline functions named egb_loop_*, which
 * bench/callgrind.py hands to callgrind's --toggle-collect.
 */
#ifndef EGB_HARNESS_H
#define EGB_HARNESS_H

#include <Python.h>

#include <pthread.h>
#include <time.h>

#if defined(__cplusplus)
extern "C" {
#endif

#define EGB_NOINLINE __attribute__((noinline))

/* Whether a reference count read right after a run is exact.  Not on a
 * free-threaded build: a decref by a thread that does not own the object
 * can leave the shared count negative and the object queued for its owner
 * to merge (biased reference counting, PEP 703), which happens at the
 * owner's next eval-breaker check, so the checks after a run are skipped. */
#if defined(Py_GIL_DISABLED)
#  define EGB_EXACT_REFCNT 0
#else
#  define EGB_EXACT_REFCNT 1
#endif

typedef struct egb_job egb_job;
struct egb_job {
    void (*body)(egb_job *j);  /* on the native thread; sets ns */
    PyObject *obj;             /* the object the operations touch or drop */
    void *items;               /* per-operation items (arrays), or NULL */
    void *ctx;                 /* whatever else the variant needs */
    long n;                    /* operations */
    long failed;               /* operations refused (must stay 0) */
    double ns;                 /* CPU nanoseconds per operation */
    double wall_ns;            /* wall-clock nanoseconds per operation */
};

static inline double
egb_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* This thread's CPU time: what the thread itself ran, kernel time (page
 * faults, futexes) included, its time preempted excluded. */
static inline double
egb_cpu_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;
}

/* Keeps the compiler from merging or dropping reference-count operations
 * on p across it. */
static inline void
egb_clobber(void *p)
{
    __asm__ volatile("" : : "r"(p) : "memory");
}

/* The work every attach variant does while attached.  Attached.  Not
 * inlined, so that every loop pays the same call; `unused` for the files
 * that have no attach loop. */
static __attribute__((noinline, unused)) void
egb_touch(PyObject *o)
{
    Py_INCREF(o);
    egb_clobber(o);
    Py_DECREF(o);
}

/* A plain Py_DECREF as a function, for Cython code.  Attached. */
static inline void
egb_decref(PyObject *o)
{
    Py_DECREF(o);
}

/* Time loop(j), which runs j->n operations: CPU and wall time per
 * operation into the job. */
static inline void
egb_time(egb_job *j, void (*loop)(egb_job *j))
{
    double w0 = egb_now_ns(), c0 = egb_cpu_ns();
    loop(j);
    double c1 = egb_cpu_ns(), w1 = egb_now_ns();
    j->ns = (c1 - c0) / (double)j->n;
    j->wall_ns = (w1 - w0) / (double)j->n;
}

/* The job's figures as a Python tuple (CPU ns, wall ns) per operation. */
static inline PyObject *
egb_result(const egb_job *j)
{
    return Py_BuildValue("(dd)", j->ns, j->wall_ns);
}

static inline void *
egb__thread_main(void *arg)
{
    egb_job *j = (egb_job *)arg;
    j->body(j);
    return NULL;
}

/* Attached: run j->body on a new native pthread and wait for it with the
 * GIL released.  Returns 0, or raises RuntimeError and returns -1 (the OS
 * refused a thread, or operations were refused). */
static inline int
egb_run_native(egb_job *j)
{
    pthread_t t;
    int rc;
    j->failed = 0;
    j->ns = -1.0;
    Py_BEGIN_ALLOW_THREADS
    rc = pthread_create(&t, NULL, egb__thread_main, j);
    if (rc == 0) {
        pthread_join(t, NULL);
    }
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_Format(PyExc_RuntimeError, "pthread_create: error %d", rc);
        return -1;
    }
    if (j->failed != 0) {
        PyErr_Format(PyExc_RuntimeError, "%ld of %ld operations refused",
                     j->failed, j->n);
        return -1;
    }
    return 0;
}

#if defined(__cplusplus)
}
#endif

#endif /* EGB_HARNESS_H */
