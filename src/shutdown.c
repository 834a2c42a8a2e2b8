/*
 * shutdown.c -- the two-phase stop of one interpreter, and the leak report.
 *
 * Each interpreter that imports exitguard stops in two phases, hooked where
 * CPython still guarantees a whole interpreter (cpython.md sections 2 and 5):
 *
 *   phase 1  threading._register_atexit callback: runs in
 *            threading._shutdown() BEFORE non-daemon Python threads are
 *            joined, so a Python thread waiting for native work can be
 *            released by a stopper.  (bpo-39812, 3.9+.)
 *   phase 2  atexit callback: runs after that join and after the pending
 *            calls were flushed, while Py_IsFinalizing() is still false and,
 *            for a subinterpreter, before Py_EndInterpreter's "not the last
 *            thread" check.  Applies the queue and releases every
 *            registered reference.
 *
 * The state machine (eg__interp.state), every transition idempotent:
 *
 *     RUNNING --phase 1--> STOPPING --phase 2--> RELEASING ----> STOPPED
 *        |                                ^
 *        +-- phase 2 without phase 1 -----+   (runs phase 1 first: threading
 *                                              was imported too late, or
 *                                              _register_atexit refused us)
 *
 *   RUNNING    everything works.
 *   STOPPING   exit stoppers run / have run, then registered native threads
 *              are asked to stop and joined (GIL released); references,
 *              decrefs and attaches still work, and stoppers added by
 *              stoppers still run.
 *   RELEASING  the attach gate closes (gate.c): new attaches fail, and the
 *              threads inside are waited for; new references are refused
 *              (RuntimeError); Py_AddPendingCall is no longer requested;
 *              the queue is applied and every registered object released.
 *   STOPPED    exitguard never touches this interpreter's objects again: a
 *              decref queued now is counted as dropped and leaked, exactly
 *              what CPython does itself for a thread that starts after
 *              finalization began (gh-108987).
 *
 * atexit callbacks registered BEFORE exitguard was imported run after phase
 * 2 (atexit is LIFO).  What they see is defined: eg_ref_get() returns NULL,
 * eg_ref_new() raises RuntimeError, eg_decref() from an attached thread
 * still decrefs at once, and from other threads is counted and leaked.
 */
#include "eg_internal.h"

#include <sched.h>
#include <string.h>
#include <unistd.h>

int eg__leak_mode;

/* Process-wide: did any interpreter report a leak?  Read by the Py_AtExit
 * hook, which turns it into the exit status in abort mode. */
static _Atomic int eg__leaks_seen;

/* Exit status used by EXITGUARD_LEAKS=abort (EX_SOFTWARE). */
#define EG_LEAK_EXIT_STATUS 70

const char *
eg__state_name(int state)
{
    switch (state) {
    case EG_RUNNING:   return "running";
    case EG_STOPPING:  return "stopping";
    case EG_RELEASING: return "releasing";
    case EG_STOPPED:   return "stopped";
    default:           return "invalid";
    }
}

void
eg__phase1(eg__interp *in)
{
    int expected = EG_RUNNING;
    if (!atomic_compare_exchange_strong_explicit(
            &in->state, &expected, EG_STOPPING,
            memory_order_seq_cst, memory_order_relaxed)) {
        return;                 /* already stopping or stopped */
    }
    atomic_store(&in->phase_thread, (unsigned long)pthread_self());
    /* Wake every eg_event_wait of this interpreter: it returns
     * EG_WAIT_STOPPING rather than block exit (the fd stays readable). */
    uint64_t one = 1;
    ssize_t w = write(in->stop_efd, &one, sizeof(one));
    (void)w;
    eg__stoppers_run(in);
    /* Then the registered native threads, after the stoppers: a stopper
     * may be what unblocks them.  They may still attach while finishing:
     * the gate stays open until phase 2. */
    size_t abandoned = eg__threads_stop_all(in, eg__join_timeout);
    atomic_fetch_add(&in->threads_abandoned, abandoned);
}

static void
eg__report(eg__interp *in, PyObject *tally)
{
    uint64_t swept = atomic_load(&in->refs.swept);
    uint64_t dropped = atomic_load(&in->queue.dropped);
    if (swept == 0 && dropped == 0) {
        return;
    }
    atomic_store(&eg__leaks_seen, 1);
    PySys_FormatStderr("exitguard: leaks in interpreter %lld at exit:\n",
                       (long long)in->id);
    PySys_FormatStderr("exitguard:   %llu reference(s) never released by "
                       "native code (exitguard released them):\n",
                       (unsigned long long)swept);
    PyObject *keys = tally ? PyDict_Keys(tally) : NULL;
    if (keys != NULL && PyList_Sort(keys) == 0) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(keys); i++) {
            PyObject *k = PyList_GET_ITEM(keys, i);
            PyObject *v = PyDict_GetItem(tally, k);
            PySys_FormatStderr("exitguard:     %6S %U\n", v, k);
        }
    }
    Py_XDECREF(keys);
    PyErr_Clear();
    PySys_FormatStderr("exitguard:   %llu deferred decref(s) dropped after "
                       "stop\n", (unsigned long long)dropped);
}

void
eg__phase2(eg__interp *in)
{
    if (atomic_load(&in->state) == EG_RUNNING) {
        eg__phase1(in);
    }
    int expected = EG_STOPPING;
    /* seq_cst: pairs with eg_ref_new's store-then-check and with the
     * pending-call requester's count-then-check (decref_queue.c). */
    if (!atomic_compare_exchange_strong_explicit(
            &in->state, &expected, EG_RELEASING,
            memory_order_seq_cst, memory_order_relaxed)) {
        return;
    }

    /* No Py_AddPendingCall may still be under way when we return: after
     * phase 2 CPython may free the interpreter.  The window is a few
     * instructions; wait for it without holding the GIL. */
    if (atomic_load_explicit(&in->queue.pc_inflight, memory_order_seq_cst)) {
        Py_BEGIN_ALLOW_THREADS
        while (atomic_load_explicit(&in->queue.pc_inflight,
                                    memory_order_seq_cst)) {
            sched_yield();
        }
        Py_END_ALLOW_THREADS
    }

    atomic_store(&in->phase_thread, (unsigned long)pthread_self());
    /* Native log messages still queued are delivered while the gate is
     * open (the main interpreter owns the process's log system). */
    if (in->is_main) {
        eg__log_stop_and_drain();
        eg__decref_stop_kicker();
    }
    /* Close the gate before releasing anything: from here no native thread
     * can attach, and the ones inside have left (or were named). */
    uint64_t inside = eg__gate_close(in, eg__join_timeout);
    atomic_fetch_add(&in->gate_abandoned, inside);
    /* Completions nobody will run now: call them cancelled, cancel their
     * futures (unless the loop is closed), release what they held. */
    eg__cq_close_all(in);

    PyObject *tally = eg__leak_mode ? PyDict_New() : NULL;
    PyErr_Clear();
    (void)eg__decref_drain_all(in);
    (void)eg__registry_sweep(in, tally);
    /* Finalizers run by the sweep may have queued more. */
    (void)eg__decref_drain_all(in);
    atomic_store_explicit(&in->state, EG_STOPPED, memory_order_seq_cst);

    if (eg__leak_mode) {
        eg__report(in, tally);
    }
    Py_XDECREF(tally);
}

/* ---- Process-wide exit hook ----------------------------------------------- */

/* Py_AtExit: runs after Py_FinalizeEx() has freed the main interpreter.
 * CAUTION: no Python API at all here, only libc.  Reports the decrefs that
 * arrived after phase 2 (they could not be in phase 2's report) and, in
 * abort mode, turns any leak into a non-zero exit status. */
static void
eg__atexit_ll(void)
{
    eg__interp *m = atomic_load(&eg__main_record);
    if (m != NULL && eg__leak_mode) {
        uint64_t late = atomic_load(&m->queue.dropped)
                      + eg__decref_pending_count(m);
        if (late > 0) {
            atomic_store(&eg__leaks_seen, 1);
            fprintf(stderr, "exitguard: %llu deferred decref(s) arrived "
                    "after phase 2 and were leaked\n",
                    (unsigned long long)late);
        }
    }
    if (eg__leak_mode == 2 && atomic_load(&eg__leaks_seen)) {
        fprintf(stderr, "exitguard: EXITGUARD_LEAKS=abort: exiting with "
                "status %d\n", EG_LEAK_EXIT_STATUS);
        fflush(NULL);
        _exit(EG_LEAK_EXIT_STATUS);
    }
}

void
eg__shutdown_process_init(void)
{
    const char *t = getenv("EXITGUARD_JOIN_TIMEOUT");
    if (t != NULL && *t) {
        char *end;
        double d = strtod(t, &end);
        if (*end == '\0' && d >= 0 && d <= 1e6) {
            eg__join_timeout = d;
        }
        else {
            fprintf(stderr, "exitguard: invalid EXITGUARD_JOIN_TIMEOUT '%s' "
                    "(expected seconds, 0 to 1e6); using %.1f\n", t,
                    eg__join_timeout);
        }
    }
    const char *v = getenv("EXITGUARD_LEAKS");
    if (v == NULL || !*v || !strcmp(v, "0") || !strcmp(v, "off")) {
        eg__leak_mode = 0;
    }
    else if (!strcmp(v, "warn") || !strcmp(v, "1")) {
        eg__leak_mode = 1;
    }
    else if (!strcmp(v, "abort")) {
        eg__leak_mode = 2;
    }
    else {
        fprintf(stderr, "exitguard: unknown EXITGUARD_LEAKS value '%s' "
                "(expected off, warn or abort); using warn\n", v);
        eg__leak_mode = 1;
    }
}

int
eg__register_atexit_ll(void)
{
    static _Atomic int done;
    if (atomic_exchange(&done, 1)) {
        return 0;
    }
    return Py_AtExit(eg__atexit_ll);
}
