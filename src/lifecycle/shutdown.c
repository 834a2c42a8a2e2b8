/*
 * shutdown.c -- the two-phase stop of one interpreter, and the leak report.
 *
 * Each interpreter that imports exitguard stops in two phases, hooked where
 * CPython still guarantees a whole interpreter (Py_FinalizeEx and Py_EndInterpreter in
 * Python/pylifecycle.c; docs/design.md, "Why two phases"):
 *
 *   phase 1  threading._shutdown(), wrapped (py/hooks.c): runs BEFORE
 *            non-daemon Python threads are joined and before every
 *            threading._register_atexit callback, so a Python thread
 *            waiting for native work can be released by a stopper.  A
 *            _register_atexit callback (bpo-39812, 3.9+) is the fallback.
 *   phase 2  atexit callback: runs after that join and after the pending
 *            calls were flushed, while Py_IsFinalizing() is still false and,
 *            for a subinterpreter, before Py_EndInterpreter's "not the last
 *            thread" check.  Applies the queue and releases every
 *            registered reference.  Imported by an exit handler, exitguard
 *            misses atexit: the free of its last module runs phase 2.
 *
 * The state machine (eg__record.state), every transition idempotent:
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
 *              (RuntimeError); the kicker is no longer asked to drain;
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
 *
 * Phase 2 reports nothing itself: what it released may still be released
 * by its owner later (module teardown, static destructors), so the leak
 * report waits for the very end of the process (report.c).  It counts the
 * native threads exit goes on without, for that report.
 */
#include "lifecycle/shutdown.h"
#include "core/record.h"
#include "core/registry.h"
#include "core/gate.h"
#include "core/thread.h"
#include "core/stopper.h"
#include "core/completion.h"
#include "core/kicker.h"
#include "core/decref_drain.h"
#include "core/log_forwarder.h"
#include "lifecycle/report.h"

#include <string.h>
#include <unistd.h>

void
eg__phase1(eg__record *in)
{
    int expected = EG__RUNNING;
    if (!atomic_compare_exchange_strong_explicit(
            &in->state, &expected, EG__STOPPING,
            memory_order_seq_cst, memory_order_relaxed)) {
        return;                 /* already stopping or stopped */
    }
    atomic_store_explicit(&in->phase_thread, (unsigned long)pthread_self(),
                          memory_order_seq_cst);
    /* Wake every eg_event_wait of this interpreter: it returns
     * EG_WAIT_STOPPING rather than block exit (the fd stays readable). */
    uint64_t one = 1;
    ssize_t w = write(in->stop_efd, &one, sizeof(one));
    (void)w;
    /* No new native thread from here, stoppers included: phase 1 would not
     * join it (issue 11: a stopper's eg_thread_start returned 0). */
    eg__threads_close(&in->threads);
    eg__stoppers_run(in);
    /* Then the registered native threads, after the stoppers: a stopper
     * may be what unblocks them.  They may still attach while finishing:
     * the gate stays open until phase 2. */
    size_t abandoned = eg__threads_stop_all(in, eg__join_timeout);
    atomic_fetch_add_explicit(&in->threads_abandoned, abandoned,
                              memory_order_seq_cst);
}

void
eg__phase2(eg__record *in)
{
    if (atomic_load_explicit(&in->state, memory_order_seq_cst) == EG__RUNNING) {
        eg__phase1(in);
    }
    int expected = EG__STOPPING;
    /* seq_cst: pairs with eg_ref_new's store-then-check (registry.c). */
    if (!atomic_compare_exchange_strong_explicit(
            &in->state, &expected, EG__RELEASING,
            memory_order_seq_cst, memory_order_relaxed)) {
        return;
    }

    atomic_store_explicit(&in->phase_thread, (unsigned long)pthread_self(),
                          memory_order_seq_cst);
    /* Native log messages still queued are delivered while the gate is
     * open (the main interpreter owns the process's log system). */
    if (in->is_main) {
        eg__log_stop_and_drain();
        eg__kicker_stop();
    }
    /* Close the gate before releasing anything: from here no native thread
     * can attach, and the ones inside have left (or were named). */
    uint64_t inside = eg__gate_close(in, eg__join_timeout);
    atomic_fetch_add_explicit(&in->gate_abandoned, inside,
                              memory_order_seq_cst);
    /* 3.13.0's anchor (base/compat.h) goes now: no native thread can make a
     * state any more, and Py_EndInterpreter wants to be the last -- unless
     * CPython's own ending already deleted it (finalize_subinterpreters
     * deletes the state heading the list) or ends the interpreter on it. */
    if (in->anchor != NULL) {
        PyThreadState *anchor = in->anchor;
        in->anchor = NULL;
        if (anchor != PyThreadState_Get()
                && eg__tstate_listed(PyInterpreterState_Get(), anchor)) {
            PyThreadState_Clear(anchor);
            PyThreadState_Delete(anchor);
        }
    }
    /* Completions nobody will run now: call them cancelled, cancel their
     * futures (unless the loop is closed), release what they held. */
    eg__cq_close_all(in);

    (void)eg__decref_drain_all(in);
    (void)eg__registry_sweep(in, eg__report_tracking());
    /* Finalizers run by the sweep may have queued more. */
    (void)eg__decref_drain_all(in);
    atomic_store_explicit(&in->state, EG__STOPPED, memory_order_seq_cst);
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
    eg__report_process_init();
}
