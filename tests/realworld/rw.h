/*
 * rw.h -- what every realworld scenario extension shares (C11 and C++17).
 *
 * Each scenario under tests/realworld/<name>/ is one small extension built
 * twice from one source (harness.py does the building):
 *
 *   <name>_naive   -DRW_NAIVE: the pattern as the upstream report shows it,
 *                  on the raw CPython API (PyGILState_Ensure, Py_DECREF,
 *                  statics, atexit);
 *   <name>_eg      the same extension ported the way docs/porting.md says,
 *                  on exitguard's public header only.
 *
 * The driver script (run.py) is the same for both builds; it gets the module
 * name as argv[1].
 *
 * This header gives both builds the same instruments, so that what a run did
 * can be read from outside the process:
 *
 *   - counters (rw_bump), tallies bumped from any thread;
 *   - a Token type: instances count their creation and their deallocation,
 *     so "every object native code held was freed" is a number, not a hope;
 *   - the report: one line "REALWORLD {json}" written to stdout by a
 *     destructor of this shared object, i.e. from exit() after every atexit
 *     handler and every C++ static destructor of the process has run, with
 *     the CPU time the process used.  It
 *     runs without the GIL, long after Py_FinalizeEx: libc only.  A process
 *     that crashes, aborts or hangs never prints it.
 *
 * Counters are relaxed atomics: each is a tally with nothing hanging off
 * it, and the report reads them after the threads that bump them have been
 * joined, parked or killed -- a count still moving then is itself a finding
 * the checks in scenarios.py look at.
 */
#ifndef RW_H
#define RW_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#if !defined(RW_NAIVE)
#  include <exitguard.h>
#endif

#ifndef RW_MODULE
#  error "build with -DRW_MODULE=<module name> (harness.py does)"
#endif

#define RW__STR2(x) #x
#define RW__STR(x) RW__STR2(x)
#define RW__CAT2(a, b) a##b
#define RW__CAT(a, b) RW__CAT2(a, b)
/* The module's name as a string, and its PyInit_ function's name. */
#define RW_MODNAME RW__STR(RW_MODULE)
#define RW_INITFUNC RW__CAT(PyInit_, RW_MODULE)

#if PY_VERSION_HEX < 0x030A0000
/* Py_NewRef arrived in 3.10 (bpo-42262). */
static inline PyObject *
rw_newref(PyObject *o)
{
    Py_INCREF(o);
    return o;
}
#  define Py_NewRef rw_newref
/* PyModule_AddObjectRef arrived in 3.10 (bpo-1635741). */
static inline int
rw_module_add_object_ref(PyObject *m, const char *name, PyObject *value)
{
    Py_INCREF(value);
    if (PyModule_AddObject(m, name, value) < 0) {
        Py_DECREF(value);
        return -1;
    }
    return 0;
}
#  define PyModule_AddObjectRef rw_module_add_object_ref
#endif

/* Py_mod_gil (3.13, PEP 703): both builds keep their state in atomics or
 * under their own locks, never under the GIL, so they can declare it. */
#ifdef Py_mod_gil
#  define RW_SLOT_GIL {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#else
#  define RW_SLOT_GIL
#endif

/* ---- Counters ------------------------------------------------------------ */

enum {
    RW_MADE,        /* Tokens created */
    RW_FREED,       /* Tokens deallocated */
    RW_CALLS,       /* calls into Python made by native threads */
    RW_REFUSED,     /* attaches exitguard refused (exitguard build) */
    RW_LATE,        /* Python touched after it must not be any more */
    RW_EMITTED,     /* messages / events produced */
    RW_DELIVERED,   /* ... and delivered to Python */
    RW_DROPPED,     /* ... and dropped on purpose (counted, not lost) */
    RW_KILLED,      /* threads force-unwound (a pthread cleanup handler ran) */
    RW_STARTED,     /* native threads started */
    RW_ENDED,       /* native threads that returned normally */
    RW_NCOUNTERS
};

static const char *const rw_counter_names[RW_NCOUNTERS] = {
    "made", "freed", "calls", "refused", "late", "emitted", "delivered",
    "dropped", "killed", "started", "ended",
};

#ifdef __cplusplus
#  include <atomic>
static std::atomic<long> rw_counters[RW_NCOUNTERS];
static inline void rw_add(int which, long n)
{
    rw_counters[which].fetch_add(n, std::memory_order_relaxed);
}
static inline long rw_get(int which)
{
    return rw_counters[which].load(std::memory_order_relaxed);
}
#else
#  include <stdatomic.h>
static _Atomic long rw_counters[RW_NCOUNTERS];
static inline void rw_add(int which, long n)
{
    atomic_fetch_add_explicit(&rw_counters[which], n, memory_order_relaxed);
}
static inline long rw_get(int which)
{
    return atomic_load_explicit(&rw_counters[which], memory_order_relaxed);
}
#endif

static inline void rw_bump(int which) { rw_add(which, 1); }

/* CAUTION: runs from exit() (a shared-object destructor, after atexit and
 * static destructors), without a thread state, after Py_FinalizeEx: libc
 * only. */
__attribute__((destructor)) static void
rw_report(void)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "REALWORLD {\"module\": \"%s\"",
                     RW_MODNAME);
    for (int i = 0; i < RW_NCOUNTERS && n > 0 && n < (int)sizeof(buf); i++) {
        n += snprintf(buf + n, sizeof(buf) - (size_t)n, ", \"%s\": %ld",
                      rw_counter_names[i], rw_get(i));
    }
    /* The CPU time the whole process used: what the harness's time bound
     * measures (wall time depends on how loaded the machine is). */
    struct rusage ru;
    if (n > 0 && n < (int)sizeof(buf) && getrusage(RUSAGE_SELF, &ru) == 0) {
        long ms = (long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000
                + (long)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
        n += snprintf(buf + n, sizeof(buf) - (size_t)n, ", \"cpu_ms\": %ld", ms);
    }
    if (n > 0 && n < (int)sizeof(buf) - 2) {
        buf[n++] = '}';
        buf[n++] = '\n';
        ssize_t w = write(STDOUT_FILENO, buf, (size_t)n);
        (void)w;
    }
}

/* ---- Token: an object whose deallocation is counted ----------------------- */

static PyTypeObject *rw_token_type;   /* set once, in rw_exec */

static void
rw_token_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    tp->tp_free(self);
    Py_DECREF(tp);
    rw_bump(RW_FREED);
}

static PyType_Slot rw_token_slots[] = {
    {Py_tp_dealloc, (void *)rw_token_dealloc},
    {0, NULL},
};

static PyType_Spec rw_token_spec = {
    RW_MODNAME ".Token", 0, 0, Py_TPFLAGS_DEFAULT, rw_token_slots,
};

/* A new Token (attached).  NULL with an exception set on failure. */
static inline PyObject *
rw_token_new(void)
{
    PyObject *t = PyType_GenericAlloc(rw_token_type, 0);
    if (t != NULL) {
        rw_bump(RW_MADE);
    }
    return t;
}

static PyObject *
rw_py_token(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return rw_token_new();
}

static PyObject *
rw_py_counters(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    PyObject *d = PyDict_New();
    for (int i = 0; d != NULL && i < RW_NCOUNTERS; i++) {
        PyObject *v = PyLong_FromLong(rw_get(i));
        if (v == NULL || PyDict_SetItemString(d, rw_counter_names[i], v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(d);
            break;
        }
        Py_DECREF(v);
    }
    return d;
}

/* Methods every scenario module has: Token() and counters(). */
#define RW_COMMON_METHODS \
    {"Token", rw_py_token, METH_NOARGS, "A new counted object."}, \
    {"counters", rw_py_counters, METH_NOARGS, "The scenario's counters."},

/* The common part of a scenario module's exec slot (attached): the Token
 * type and, in the exitguard build, eg_import().  0, or -1 with an
 * exception set. */
static int
rw_exec(PyObject *m)
{
    (void)m;
    if (rw_token_type == NULL) {
        rw_token_type = (PyTypeObject *)PyType_FromSpec(&rw_token_spec);
        if (rw_token_type == NULL) {
            return -1;
        }
    }
#if !defined(RW_NAIVE)
    if (eg_import() < 0) {
        return -1;
    }
#endif
    return 0;
}

#endif /* RW_H */
