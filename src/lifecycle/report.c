/*
 * report.c -- exitguard's account of an exit: the leak report
 * (EXITGUARD_LEAKS=warn|abort) and the final counters
 * (EXITGUARD_EXIT_STATS), both made at the very end of the process.
 *
 * WHY AT THE VERY END
 *
 * Phase 2 releases every reference native code still holds, while the
 * interpreter is whole.  That alone proves nothing against the owner: a
 * correct extension may release its eg_ref later -- in its module's m_free
 * (module teardown, after atexit), in a C++ static destructor or a libc
 * atexit handler (after Py_FinalizeEx returned, during exit()), or in a
 * library destructor (_dl_fini, after all of those).  docs/porting.md
 * recommends exactly that for statics.  So phase 2 only marks what it
 * released (registry.c), each mark counted in an entry per (type, creation
 * site), a later eg_ref_release() uncounts it, and the report names what is
 * still counted when nothing else can run any more.  Attaches refused,
 * decrefs dropped and threads abandoned late in finalization are counted
 * by then too.
 *
 * "The very end" is this library's destructor, which _dl_fini runs after
 * every atexit handler and C++ static destructor (those are __cxa_atexit
 * entries, and _dl_fini is the first entry registered, so the last run).
 * Other libraries' destructors may still follow it in _dl_fini's order, so
 * on glibc the destructor registers the report as a new exit handler:
 * glibc runs a handler registered while handlers run once the current one
 * returns, i.e. after _dl_fini, right before it flushes stdio and _exits.
 * With no DSO handle (NULL), no __cxa_finalize runs it early.  Elsewhere
 * the report runs in the destructor itself.  CPython never unloads
 * extension modules, so the destructor runs at process exit only.
 *
 * CAUTION: the report runs with no thread state, after Py_FinalizeEx():
 * raw libc only, no Python API, no Py_DECREF.  Entries are created during
 * the phase 2 sweep (attached: type names are read then) and never freed.
 *
 * What this file does not do: report a process that ends in _exit(),
 * abort() or a signal (no handler runs), nor see a release that a thread
 * makes after the report ran, racing _exit itself.
 */
#include "lifecycle/report.h"
#include "core/record.h"
#include "core/decref.h"
#include "core/leak.h"
#include "core/registry.h"
#include "core/gate.h"
#include "core/thread.h"
#include "core/stopper.h"
#include "core/log.h"

#include <dlfcn.h>
#include <string.h>
#include <unistd.h>
#if defined(__GLIBC__)
#  include <link.h>
#endif

int eg__leak_mode;

/* EXITGUARD_EXIT_STATS: the prefix of the final counters' file, or NULL.
 * Written once by process init, read by the report. */
static char *eg__stats_prefix;

/* Exit status used by EXITGUARD_LEAKS=abort (EX_SOFTWARE). */
#define EG__LEAK_EXIT_STATUS 70

/* Once per process (process init, before any interpreter stops), any
 * thread, no GIL needed: read EXITGUARD_LEAKS and EXITGUARD_EXIT_STATS. */
void
eg__report_process_init(void)
{
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
    const char *p = getenv("EXITGUARD_EXIT_STATS");
    if (p != NULL && *p) {
        eg__stats_prefix = strdup(p);    /* NULL when out of memory: off */
    }
}

/* Any thread: is the bookkeeping on?  Fixed once process init ran. */
int
eg__report_tracking(void)
{
    return eg__leak_mode != 0 || eg__stats_prefix != NULL;
}

/* ---- The report (CAUTION: no thread state, raw libc only) ---------------- */

typedef struct {
    uint64_t unreleased;    /* released by phase 2, never by the owner */
    uint64_t still_held;    /* phase 2 never ran: nothing released them */
    uint64_t dropped;       /* decrefs never applied: objects leaked */
} eg__tally;

/* An entry's count of references its owner still has not released. */
static uint64_t
eg__outstanding(eg__leak *l)
{
    return atomic_load_explicit(&l->outstanding, memory_order_seq_cst);
}

/* Is this record this process's to report?  One whose phase 2 never ran
 * is (nothing released what it holds).  One that stopped is only for the
 * process that swept it: not for a forked child of that process, nor for
 * the child of a parent whose subinterpreter fork killed (interp.c marks
 * those stopped without a sweep). */
static int
eg__record_is_ours(eg__record *in, int pid)
{
    return atomic_load_explicit(&in->state,
                                memory_order_seq_cst) < EG__RELEASING
        || atomic_load_explicit(&in->refs.swept_pid,
                                memory_order_seq_cst) == pid;
}

/* The report's thread: what the record leaks, at the very end. */
static void
eg__tally_record(eg__record *in, eg__tally *t)
{
    int state = atomic_load_explicit(&in->state, memory_order_seq_cst);
    t->unreleased = eg__report_unreleased(in);
    t->still_held = state < EG__RELEASING ? eg__registry_live(&in->refs) : 0;
    /* At the very end nothing will apply a queued decref any more. */
    t->dropped = atomic_load_explicit(&in->queue.dropped, memory_order_seq_cst)
               + eg__decref_pending_count(in);
}

static int
eg__leak_cmp(const void *a, const void *b)
{
    const eg__leak *x = *(eg__leak *const *)a, *y = *(eg__leak *const *)b;
    uint64_t nx = atomic_load_explicit(&x->outstanding, memory_order_relaxed);
    uint64_t ny = atomic_load_explicit(&y->outstanding, memory_order_relaxed);
    if (nx != ny) {
        return nx < ny ? 1 : -1;
    }
    return strcmp(x->type_name ? x->type_name : "",
                  y->type_name ? y->type_name : "");
}

/* The record's entries still counted, most first, in a malloc'd array of
 * *n (NULL when there are none or no memory). */
static eg__leak **
eg__leaks_sorted(eg__record *in, size_t *n)
{
    eg__registry *reg = &in->refs;
    size_t cap = 1;
    for (eg__leak *l = atomic_load_explicit(&reg->leaks, memory_order_acquire);
         l != NULL; l = l->next) {
        cap++;
    }
    eg__leak **v = malloc(cap * sizeof(*v));
    *n = 0;
    if (v == NULL) {
        return NULL;
    }
    for (eg__leak *l = atomic_load_explicit(&reg->leaks, memory_order_acquire);
         l != NULL; l = l->next) {
        if (atomic_load_explicit(&l->outstanding, memory_order_relaxed)) {
            v[(*n)++] = l;
        }
    }
    if (atomic_load_explicit(&reg->leak_oom.outstanding,
                             memory_order_relaxed)) {
        v[(*n)++] = &reg->leak_oom;
    }
    qsort(v, *n, sizeof(*v), eg__leak_cmp);
    return v;
}

/* The report's thread: the record's leak report on stderr. */
static void
eg__print_record(eg__record *in, const eg__tally *t)
{
    fprintf(stderr, "exitguard: leaks in interpreter %lld at exit:\n",
            (long long)in->id);
    if (t->unreleased) {
        fprintf(stderr, "exitguard:   %llu reference(s) never released by "
                "native code (exitguard released the objects in phase 2):\n",
                (unsigned long long)t->unreleased);
        size_t n;
        eg__leak **v = eg__leaks_sorted(in, &n);
        for (size_t i = 0; v != NULL && i < n; i++) {
            fprintf(stderr, "exitguard:     %6llu %s created at %s\n",
                    (unsigned long long)eg__outstanding(v[i]),
                    v[i]->type_name ? v[i]->type_name : "(unknown type)",
                    v[i]->where ? v[i]->where : "(unknown site)");
        }
        free(v);
    }
    if (t->still_held) {
        fprintf(stderr, "exitguard:   %llu reference(s) still held: this "
                "interpreter never stopped (its phase 2 did not run)\n",
                (unsigned long long)t->still_held);
    }
    if (t->dropped) {
        fprintf(stderr, "exitguard:   %llu deferred decref(s) never applied "
                "(queued after phase 2, or phase 2 never ran): the objects "
                "leaked\n", (unsigned long long)t->dropped);
    }
}

/* JSON for a string: quotes and the escapes JSON requires. */
static void
eg__json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s != NULL && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            fprintf(f, "\\%c", c);
        }
        else if (c < 0x20) {
            fprintf(f, "\\u%04x", c);
        }
        else {
            fputc(c, f);
        }
    }
    fputc('"', f);
}

/* The report's thread: one record's counters as a JSON object. */
static void
eg__json_record(FILE *f, eg__record *in, const eg__tally *t, int first)
{
    int state = atomic_load_explicit(&in->state, memory_order_seq_cst);
    fprintf(f, "%s\n  {\"id\": %lld, \"main\": %s, \"state\": \"%s\", "
            "\"gate\": \"%s\"", first ? "" : ",", (long long)in->id,
            in->is_main ? "true" : "false", eg__state_name(state),
            eg__gate_state_name(&in->gate));
    uint64_t guards;
    uint64_t attach_ok = eg__gate_attaches(&in->gate, &guards);
    struct { const char *key; uint64_t v; } c[] = {
        {"refs_live", eg__registry_live(&in->refs)},
        {"refs_released_at_exit", atomic_load_explicit(&in->refs.swept,
                                                       memory_order_seq_cst)},
        {"refs_unreleased", t->unreleased},
        {"decref_queued", 0},
        {"decref_applied", atomic_load_explicit(&in->queue.applied,
                                                memory_order_seq_cst)},
        {"decref_dropped", t->dropped},
        {"decref_spilled", atomic_load_explicit(&in->queue.spilled,
                                                memory_order_seq_cst)},
        {"kicks", atomic_load_explicit(&in->queue.kicks,
                                       memory_order_seq_cst)},
        {"stoppers", eg__stoppers_count(in)},
        {"stopper_errors", eg__stoppers_errors(in)},
        {"threads_live", eg__threads_live(in)},
        {"threads_abandoned", atomic_load_explicit(&in->threads_abandoned,
                                                   memory_order_seq_cst)},
        {"gate_abandoned", atomic_load_explicit(&in->gate_abandoned,
                                                memory_order_seq_cst)},
        {"attach_ok", attach_ok},
        {"attach_refused", atomic_load_explicit(&in->gate.attach_refused,
                                                memory_order_seq_cst)},
        {"attach_guards", guards},
        {"tstates_reaped", atomic_load_explicit(&in->gate.reaped,
                                                memory_order_seq_cst)},
        {"interpreter_id", (uint64_t)in->id},
    };
    for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
        fprintf(f, ", \"%s\": %llu", c[i].key, (unsigned long long)c[i].v);
    }
    fprintf(f, ", \"leaks\": [");
    size_t n;
    eg__leak **v = eg__leaks_sorted(in, &n);
    for (size_t i = 0; v != NULL && i < n; i++) {
        fprintf(f, "%s{\"type\": ", i ? ", " : "");
        eg__json_str(f, v[i]->type_name ? v[i]->type_name : "(unknown type)");
        fprintf(f, ", \"count\": %llu, \"where\": ",
                (unsigned long long)eg__outstanding(v[i]));
        eg__json_str(f, v[i]->where ? v[i]->where : "");
        fputc('}', f);
    }
    free(v);
    fprintf(f, "]}");
}

/* The final counters, to PREFIX.PID.json (written to a temporary name and
 * renamed, so that a reader never sees half a file). */
static void
eg__write_stats(eg__record **recs, const eg__tally *tallies, size_t n,
                int pid)
{
    size_t len = strlen(eg__stats_prefix) + 40;
    char *path = malloc(len), *tmp = malloc(len);
    FILE *f = NULL;
    if (path == NULL || tmp == NULL) {
        goto done;
    }
    snprintf(path, len, "%s.%d.json", eg__stats_prefix, pid);
    snprintf(tmp, len, "%s.%d.tmp", eg__stats_prefix, pid);
    f = fopen(tmp, "w");
    if (f == NULL) {
        goto done;
    }
    uint64_t ld, ldr, lf, lfi, lse;
    eg__log_stats(&ld, &ldr, &lf, &lfi, &lse);
    fprintf(f, "{\"pid\": %d, \"leak_mode\": \"%s\", \"log_delivered\": %llu, "
            "\"log_dropped\": %llu, \"log_formatted\": %llu, "
            "\"log_filtered\": %llu, \"log_to_stderr\": %llu, "
            "\"interpreters\": [", pid,
            eg__leak_mode == 2 ? "abort" : eg__leak_mode ? "warn" : "off",
            (unsigned long long)ld, (unsigned long long)ldr,
            (unsigned long long)lf, (unsigned long long)lfi,
            (unsigned long long)lse);
    for (size_t i = 0; i < n; i++) {
        eg__json_record(f, recs[i], &tallies[i], i == 0);
    }
    fprintf(f, "\n]}\n");
    if (fclose(f) == 0) {
        (void)rename(tmp, path);
    }
    else {
        (void)unlink(tmp);
    }
done:
    free(path);
    free(tmp);
}

/* The report itself, once, on the thread that runs exit(), after
 * everything else (see the top of the file).  CAUTION: no thread state.
 * Prints the leak report (EXITGUARD_LEAKS), writes the final counters
 * (EXITGUARD_EXIT_STATS), and in abort mode ends the process with status
 * 70 when anything leaked; returns otherwise. */
static void
eg__report_final(void *unused)
{
    (void)unused;
    if (!eg__report_tracking()) {
        return;
    }
    int pid = (int)getpid();
    size_t n = 0;
    for (eg__record *in = eg__records_first(); in; in = in->next_record) {
        n++;
    }
    eg__record **recs = calloc(n + 1, sizeof(*recs));
    eg__tally *tallies = calloc(n + 1, sizeof(*tallies));
    if (recs == NULL || tallies == NULL) {
        fprintf(stderr, "exitguard: out of memory: no leak report\n");
        free(recs);
        free(tallies);
        return;
    }
    /* The list is newest first: report in creation order (main first). */
    size_t m = 0;
    for (eg__record *in = eg__records_first(); in; in = in->next_record) {
        if (eg__record_is_ours(in, pid)) {
            recs[m++] = in;
        }
    }
    for (size_t i = 0; i < m / 2; i++) {
        eg__record *x = recs[i];
        recs[i] = recs[m - 1 - i];
        recs[m - 1 - i] = x;
    }
    int leaked = 0;
    for (size_t i = 0; i < m; i++) {
        eg__tally_record(recs[i], &tallies[i]);
        const eg__tally *t = &tallies[i];
        if (t->unreleased || t->still_held || t->dropped) {
            leaked = 1;
            if (eg__leak_mode) {
                eg__print_record(recs[i], t);
            }
        }
    }
    if (eg__stats_prefix != NULL) {
        eg__write_stats(recs, tallies, m, pid);
    }
    free(recs);
    free(tallies);
    if (eg__leak_mode == 2 && leaked) {
        fprintf(stderr, "exitguard: EXITGUARD_LEAKS=abort: exiting with "
                "status %d\n", EG__LEAK_EXIT_STATUS);
        fflush(NULL);
        _exit(EG__LEAK_EXIT_STATUS);
    }
}

#if defined(__GLIBC__)
/* The Itanium C++ ABI's registration function, which atexit() wraps; a
 * NULL dso handle ties the entry to no library. */
extern int __cxa_atexit(void (*fn)(void *), void *arg, void *dso);
#endif

/* Runs in _dl_fini at process exit (see the top of the file). */
__attribute__((destructor)) static void
eg__report_destructor(void)
{
#if defined(__GLIBC__)
    if (__cxa_atexit(eg__report_final, NULL, NULL) == 0) {
        return;
    }
#endif
    eg__report_final(NULL);
}
