/*
 * stats.c -- exitguard._core.stats(): one dict of this interpreter's
 * counters, read from every concept of the core (state, gate, registry,
 * decref queue, stoppers, threads, records, log ring).
 *
 * Runs attached, on any thread of the interpreter.  The counters are read
 * one at a time while other threads may be changing them, so the dict is
 * not a snapshot: while threads work, values read at slightly different
 * moments need not add up.  The one adjustment made here: once the
 * interpreter is stopped, decrefs still queued are never applied, so they
 * are reported as dropped (leaked), not queued.  Which keys exist and what
 * each means is docs/api.md's.
 */
#include "py/py.h"
#include "core/record.h"
#include "core/decref.h"
#include "core/leak.h"
#include "core/registry.h"
#include "core/gate.h"
#include "core/thread.h"
#include "core/stopper.h"
#include "core/log.h"

static int
eg__set_u64(PyObject *d, const char *key, uint64_t v)
{
    PyObject *o = PyLong_FromUnsignedLongLong((unsigned long long)v);
    if (o == NULL) {
        return -1;
    }
    int rc = PyDict_SetItemString(d, key, o);
    Py_DECREF(o);
    return rc;
}

const char eg__py_stats_doc[] = PyDoc_STR(
"stats() -> dict\n\n"
"Counters of this interpreter's exitguard (see docs/api.md for each key).");

/* A counter, for statistics: relaxed (a count may be a moment stale; nothing
 * is ordered by reading it). */
static uint64_t
eg__count(_Atomic uint64_t *c)
{
    return atomic_load_explicit(c, memory_order_relaxed);
}

PyObject *
eg__py_stats(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    eg__record *in = eg__get_state(module)->rec;
    eg__decref_queue *q = &in->queue;
    int state = eg__state_of(in);
    uint64_t pending = eg__decref_pending_count(in);
    uint64_t dropped = eg__count(&q->dropped);
    if (state == EG__STOPPED) {
        dropped += pending;     /* never applied now: leaked, counted */
        pending = 0;
    }
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    PyObject *name = PyUnicode_FromString(eg__state_name(state));
    if (name == NULL || PyDict_SetItemString(d, "state", name) < 0) {
        Py_XDECREF(name);
        goto fail;
    }
    Py_DECREF(name);
    name = PyUnicode_FromString(eg__gate_state_name(&in->gate));
    if (name == NULL || PyDict_SetItemString(d, "gate", name) < 0) {
        Py_XDECREF(name);
        goto fail;
    }
    Py_DECREF(name);
    uint64_t attach_guards;
    uint64_t attach_ok = eg__gate_attaches(&in->gate, &attach_guards);
    if (eg__set_u64(d, "refs_live", eg__registry_live(&in->refs)) < 0
        || eg__set_u64(d, "refs_released_at_exit",
                       eg__count(&in->refs.swept)) < 0
        || eg__set_u64(d, "refs_unreleased", eg__report_unreleased(in)) < 0
        || eg__set_u64(d, "decref_queued", pending) < 0
        || eg__set_u64(d, "decref_applied", eg__count(&q->applied)) < 0
        || eg__set_u64(d, "decref_dropped", dropped) < 0
        || eg__set_u64(d, "decref_spilled", eg__count(&q->spilled)) < 0
        || eg__set_u64(d, "kicks", eg__count(&q->kicks)) < 0
        || eg__set_u64(d, "stoppers", eg__stoppers_count(in)) < 0
        || eg__set_u64(d, "stopper_errors", eg__stoppers_errors(in)) < 0
        || eg__set_u64(d, "threads_live", eg__threads_live(in)) < 0
        || eg__set_u64(d, "threads_abandoned",
                       eg__count(&in->threads_abandoned)) < 0
        || eg__set_u64(d, "gate_abandoned",
                       eg__count(&in->gate_abandoned)) < 0
        || eg__set_u64(d, "attach_ok", attach_ok) < 0
        || eg__set_u64(d, "attach_refused",
                       eg__count(&in->gate.attach_refused)) < 0
        || eg__set_u64(d, "attach_guards", attach_guards) < 0
        || eg__set_u64(d, "tstates_reaped", eg__count(&in->gate.reaped)) < 0
        || PyDict_SetItemString(d, "pep788",
                                EG__HAVE_PEP788 ? Py_True : Py_False) < 0
        || eg__set_u64(d, "interpreter_id", (uint64_t)in->id) < 0
        || eg__set_u64(d, "record_generation",
                       eg__count(&in->generation)) < 0
        || eg__set_u64(d, "records", eg__records_allocated()) < 0) {
        goto fail;
    }
    uint64_t ld, ldr, lf, lfi, lse;
    eg__log_stats(&ld, &ldr, &lf, &lfi, &lse);
    if (eg__set_u64(d, "log_delivered", ld) < 0
        || eg__set_u64(d, "log_to_stderr", lse) < 0
        || eg__set_u64(d, "log_dropped", ldr) < 0
        || eg__set_u64(d, "log_formatted", lf) < 0
        || eg__set_u64(d, "log_filtered", lfi) < 0) {
        goto fail;
    }
    return d;
fail:
    Py_DECREF(d);
    return NULL;
}
