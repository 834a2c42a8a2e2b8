/*
 * log.c -- logging from native threads into Python's logging, without
 * ever blocking the native thread or taking the GIL on its behalf: the
 * public entry points (eg_log, eg_vlog, eg_log_enabled,
 * eg_log_site_enabled), the producer side of the ring, the level cache,
 * process setup, fork and the counters.  The consumer -- the forwarder
 * thread, delivery into Python's logging, the drain at exit -- is
 * log_forwarder.c, which this file calls and which never calls back.
 *
 * CAUTION: eg_log/eg_vlog and everything they call run on any thread with
 * no thread state.  Only libc, atomics and raw malloc (once per logger
 * name) there.  eg__log_levels_changed runs attached.
 *
 * DESIGN
 *
 * One log system per process, delivering to the main interpreter's logging
 * (the interpreter whose configuration a process's operator controls).
 *
 * - Level cache: an open-addressing table keyed by the logger name's
 *   *content* -- a name built at run time in a reused buffer ("stream.%d"),
 *   the UTF-8 of a Python str, or a buffer freed afterwards is a different
 *   logger from any other name that happened to live at that address -- so
 *   the disabled-level test is a hash of the name, a compare with the copy
 *   the entry keeps, and one relaxed load; no lock.  Each entry holds the
 *   threshold below which nothing is formatted; 0 means "not known yet:
 *   format and let the forwarder decide".  The thresholds
 *   are recomputed whenever logging's own caches are cleared (every
 *   setLevel, logging.disable, dictConfig calls Manager._clear_cache, which
 *   exitguard._logging wraps), and for new names on delivery.
 * - Ring: a bounded multi-producer, single-consumer ring of fixed-size
 *   slots in the shape of Vyukov's bounded queue: a producer claims a
 *   position with one CAS, formats straight into the slot, and publishes it
 *   with a release store of the slot's sequence number.  Full: the message
 *   is dropped and counted (a counter, not spead2's flag), and after the
 *   next delivered batch one warning on the "exitguard" logger says how
 *   many were dropped.
 * - Forwarder: a native thread, started by the first message, sleeps on an
 *   eventfd that producers write only when it is asleep (a Dekker pair on
 *   `sleeping`; seq_cst fences on both sides: the fence is a few ns of a
 *   ~100 ns formatted message).  It attaches once per batch (eg_gil_ensure:
 *   never after the gate closed) and hands the batch to
 *   exitguard._logging.deliver, which builds LogRecords whose threadName,
 *   thread and created are the native thread's.
 * - Exit: phase 2 of the main interpreter stops and joins the forwarder
 *   (GIL released), delivers what is left itself, attached, before the
 *   gate closes -- nothing queued is lost -- and from then on eg_log writes
 *   straight to stderr.
 *
 *   operation          | runs on                 | concurrent with
 *   -------------------+-------------------------+---------------------------
 *   eg_vlog (produce)  | any thread, no GIL      | producers, the consumer
 *   level lookup/insert| any thread              | itself (CAS on the key)
 *   consume            | forwarder, or phase 2   | producers (never two
 *                      | after the join          | consumers at once)
 *   levels_changed     | attached (main)         | lookups (relaxed stores)
 */
#include "core/log.h"
#include "base/door.h"
#include "base/platform.h"
#include "base/thread_exit.h"
#include "core/record.h"
#include "core/log_state.h"
#include "core/log_forwarder.h"

#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define EG__LOG_TRUNC "...[truncated]"

/* Entry keys: the name's hash with bit 1 set, so that 0 (free) and 1 (being
 * filled) never collide with one. */
#define EG__LOGKEY_FREE    0ull
#define EG__LOGKEY_FILLING 1ull

/* The log system's state (eg__log, eg__logstate in log_state.h) is
 * defined in log_forwarder.c, so that references between the two files
 * point one way only: from here down to it. */

/* Bumped (release) after every change of a threshold: EG_LOG's call sites
 * compare their copy's generation with it (through the capsule's table).
 * Starts at 1, so a zeroed site never matches. */
_Atomic unsigned int eg__log_generation = 1;

/* One thread's count of filtered messages: heap memory, listed while the
 * thread lives (its TLS goes away before the list could be read). */
typedef struct eg__logctr {
    _Atomic uint64_t filtered;       /* the owner writes */
    struct eg__logctr *prev, *next;  /* under counters_lock */
} eg__logctr;

static _Thread_local struct {
    int named;
    char name[16];
    unsigned long tid;
    eg__logctr *ctr;
} eg__log_self EG__TLS_IE;

/* Thread exit (thread_exit.c), no thread state: fold the count in. */
static void
eg__logctr_at_exit(void)
{
    eg__logctr *c = eg__log_self.ctr;
    if (c == NULL) {
        return;
    }
    eg__mutex_lock(&eg__log.counters_lock);
    eg__log.filtered_retired += atomic_load_explicit(&c->filtered,
                                                     memory_order_relaxed);
    if (c->prev != NULL) {
        c->prev->next = c->next;
    }
    else {
        eg__log.counters = c->next;
    }
    if (c->next != NULL) {
        c->next->prev = c->prev;
    }
    eg__mutex_unlock(&eg__log.counters_lock);
    eg__log_self.ctr = NULL;
    free(c);
}

/* Count one filtered message for the calling thread. */
static inline void
eg__log_count_filtered(void)
{
    eg__logctr *c = eg__log_self.ctr;
    if (EG__UNLIKELY(c == NULL)) {
        c = calloc(1, sizeof(*c));
        if (c == NULL
                || eg__thread_exit_arm(EG__EXIT_LOG_COUNTS,
                                       eg__logctr_at_exit) != 0) {
            free(c);
            return;                  /* out of memory: one count lost */
        }
        eg__mutex_lock(&eg__log.counters_lock);
        c->next = eg__log.counters;
        if (c->next != NULL) {
            c->next->prev = c;
        }
        eg__log.counters = c;
        eg__mutex_unlock(&eg__log.counters_lock);
        eg__log_self.ctr = c;
    }
    atomic_store_explicit(&c->filtered,
                          atomic_load_explicit(&c->filtered,
                                               memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

/* ---- Process setup --------------------------------------------------------- */

void
eg__log_process_init(void)
{
    uint64_t size = 1024;
    const char *v = getenv("EXITGUARD_LOG_RING");
    if (v != NULL && *v) {
        char *end;
        unsigned long long n = strtoull(v, &end, 10);
        if (*end == '\0' && n >= 16 && n <= (1ull << 24) && !(n & (n - 1))) {
            size = n;
        }
        else {
            fprintf(stderr, "exitguard: invalid EXITGUARD_LOG_RING '%s' "
                    "(expected a power of two, 16 to 16777216); using "
                    "1024\n", v);
        }
    }
    eg__log.slots = calloc(size, sizeof(eg__logslot));
    if (eg__log.slots == NULL) {
        abort();
    }
    for (uint64_t i = 0; i < size; i++) {
        atomic_init(&eg__log.slots[i].seq, i);
    }
    eg__log.mask = size - 1;
    eg__door_init(&eg__log.door, 0);
    eg__log.efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (eg__log.efd < 0) {
        abort();
    }
}

uint64_t
eg__log_ring_size(void)
{
    return eg__log.mask + 1;
}

/* ---- Level cache ---------------------------------------------------------- */

/* FNV-1a over the name's bytes, and its length.  Byte by byte: a logger
 * name is short, and reading past its NUL could cross into an unmapped
 * page. */
static inline uint64_t
eg__name_hash(const char *name, uint32_t *len)
{
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *p = (const unsigned char *)name;
    while (*p) {
        h = (h ^ *p++) * 0x100000001b3ull;
    }
    *len = (uint32_t)(p - (const unsigned char *)name);
    return h | 2;
}

/* The cache entry for `name`, inserting it.  NULL when the table is full
 * or out of memory (the message is then formatted and delivered by name). */
static eg__loglevel *
eg__level_entry(const char *name)
{
    uint32_t len;
    uint64_t h = eg__name_hash(name, &len);
    for (uint32_t i = 0; i < EG__LOG_LEVELS; i++) {
        eg__loglevel *e = &eg__log.levels[(h + i) & (EG__LOG_LEVELS - 1)];
        /* Acquire pairs with the release that published the key: len and
         * name are then the entry's for good. */
        uint64_t k = atomic_load_explicit(&e->key, memory_order_acquire);
        if (EG__LIKELY(k == h) && e->len == len
                && memcmp(e->name, name, len) == 0) {
            return e;
        }
        if (k != EG__LOGKEY_FREE) {
            continue;             /* another name, or one being filled */
        }
        /* Claim with a copy of the name in place: losers free theirs. */
        char *copy = malloc((size_t)len + 1);
        if (copy == NULL) {
            return NULL;
        }
        memcpy(copy, name, (size_t)len + 1);
        uint64_t expected = EG__LOGKEY_FREE;
        if (atomic_compare_exchange_strong_explicit(
                &e->key, &expected, EG__LOGKEY_FILLING,
                memory_order_acq_rel, memory_order_acquire)) {
            /* We own the slot: fill it, then publish the real key.
             * Release pairs with the acquire load above. */
            e->name = copy;
            e->len = len;
            atomic_store_explicit(&e->threshold, 0, memory_order_relaxed);
            atomic_store_explicit(&e->key, h, memory_order_release);
            return e;
        }
        free(copy);
        /* Someone claimed it first -- for this name or another, or is
         * filling it: probe on.  A concurrent insert of the same name may
         * land in a second entry; both stay correct, each with its own
         * threshold (the configuration hook recomputes both). */
    }
    return NULL;
}

int
eg_log_site_enabled(eg_log_site *site, int level, const char *logger)
{
    /* Acquire, before the threshold: a generation that matches the one we
     * store was published after the threshold we read (see generation). */
    unsigned int gen = atomic_load_explicit(&eg__log_generation,
                                            memory_order_acquire);
    eg__loglevel *e = eg__level_entry(logger ? logger : "");
    int threshold = e != NULL ? atomic_load_explicit(&e->threshold,
                                                     memory_order_relaxed)
                              : 0;
    if (threshold < 0) {
        threshold = 0;
    }
    /* Relaxed: any thread's pair is a true one; the last store wins. */
    __atomic_store_n(&site->eg__private,
                     ((unsigned long long)gen << 32) | (unsigned int)threshold,
                     __ATOMIC_RELAXED);
    return level >= threshold;
}

int
eg_log_enabled(int level, const char *logger)
{
    const char *key = logger ? logger : "";
    eg__loglevel *e = eg__level_entry(key);
    return e == NULL
        || level >= atomic_load_explicit(&e->threshold, memory_order_relaxed);
}

/* ---- Producer ------------------------------------------------------------------ */

static void
eg__log_thread_identity(void)
{
    if (!eg__log_self.named) {
#if defined(__linux__)
        if (pthread_getname_np(pthread_self(), eg__log_self.name,
                               sizeof(eg__log_self.name)) != 0) {
            strcpy(eg__log_self.name, "native");
        }
        eg__log_self.tid = (unsigned long)syscall(SYS_gettid);
#else
        strcpy(eg__log_self.name, "native");
#endif
        eg__log_self.named = 1;
    }
}

static const char *
eg__level_name(int level)
{
    switch (level) {
    case EG_LOG_DEBUG:    return "DEBUG";
    case EG_LOG_INFO:     return "INFO";
    case EG_LOG_WARNING:  return "WARNING";
    case EG_LOG_ERROR:    return "ERROR";
    case EG_LOG_CRITICAL: return "CRITICAL";
    default:              return "Level";
    }
}

/* After phase 2: logging is gone for us; write one line to stderr with a
 * single write(2), as logging's last-resort handler would format it. */
static void
eg__log_to_stderr(int level, const char *logger, const char *fmt, va_list ap)
{
    char line[EG__LOG_SLOT_MSG + 128];
    int n = snprintf(line, sizeof(line), "%s:%s:", eg__level_name(level),
                     logger && *logger ? logger : "root");
    if (n < 0 || (size_t)n >= sizeof(line)) {
        return;
    }
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2) {
        len = sizeof(line) - 2;
    }
    line[len++] = '\n';
    ssize_t w = write(2, line, len);
    (void)w;
}

void
eg_vlog(int level, const char *logger, const char *fmt, va_list ap)
{
    const char *key = logger ? logger : "";
    eg__loglevel *e = eg__level_entry(key);
    /* The disabled case: one hash and one relaxed load.  A stale threshold
     * only makes us format one message too many or too few right after a
     * configuration change, never corrupt anything. */
    if (e != NULL && level < atomic_load_explicit(&e->threshold,
                                                  memory_order_relaxed)) {
        eg__log_count_filtered();
        return;
    }
    /* In through the door, or to stderr once phase 2 closed it: either
     * phase 2 counts us and waits until we have published, or we see it
     * closing -- no message can land in the ring after its last drain
     * (found by the torture suite: one line in 5000 went unaccounted). */
    if (EG__UNLIKELY(eg__door_enter_mp(&eg__log.door) < 0)) {
        atomic_fetch_add_explicit(&eg__log.to_stderr, 1, memory_order_relaxed);
        eg__log_to_stderr(level, logger, fmt, ap);
        return;
    }

    /* Claim a slot (Vyukov): its sequence equals our position when free. */
    uint64_t pos = atomic_load_explicit(&eg__log.enqueue_pos,
                                        memory_order_relaxed);
    eg__logslot *s;
    for (;;) {
        s = &eg__log.slots[pos & eg__log.mask];
        /* Acquire pairs with the consumer's release of this slot. */
        uint64_t seq = atomic_load_explicit(&s->seq, memory_order_acquire);
        int64_t dif = (int64_t)(seq - pos);
        if (dif == 0) {
            if (atomic_compare_exchange_weak_explicit(
                    &eg__log.enqueue_pos, &pos, pos + 1,
                    memory_order_relaxed, memory_order_relaxed)) {
                break;
            }
        }
        else if (dif < 0) {
            /* Full: drop and count, never wait. */
            atomic_fetch_add_explicit(&eg__log.dropped, 1,
                                      memory_order_relaxed);
            atomic_fetch_add_explicit(&eg__log.dropped_unreported, 1,
                                      memory_order_relaxed);
            eg__door_leave_mp(&eg__log.door);
            return;
        }
        else {
            pos = atomic_load_explicit(&eg__log.enqueue_pos,
                                       memory_order_relaxed);
        }
    }

    eg__log_thread_identity();
    s->level = level;
    s->logger = e;
    if (e == NULL) {
        /* The caller's buffer may be reused or freed before delivery. */
        snprintf(s->logger_name, sizeof(s->logger_name), "%s", key);
    }
    s->tid = eg__log_self.tid;
    memcpy(s->thread, eg__log_self.name, sizeof(s->thread));
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    s->created = (double)now.tv_sec + (double)now.tv_nsec / 1e9;
    int n = vsnprintf(s->msg, sizeof(s->msg), fmt, ap);
    if (n < 0) {
        n = 0;
        s->msg[0] = '\0';
    }
    else if ((size_t)n >= sizeof(s->msg)) {
        size_t keep = sizeof(s->msg) - sizeof(EG__LOG_TRUNC);
        memcpy(s->msg + keep, EG__LOG_TRUNC, sizeof(EG__LOG_TRUNC));
        n = (int)(keep + sizeof(EG__LOG_TRUNC) - 1);
    }
    s->len = (uint32_t)n;
    atomic_fetch_add_explicit(&eg__log.formatted, 1, memory_order_relaxed);
    /* Release: the consumer that acquires seq == pos + 1 sees the slot. */
    atomic_store_explicit(&s->seq, pos + 1, memory_order_release);
    eg__door_leave_mp(&eg__log.door);

    if (EG__UNLIKELY(!atomic_load_explicit(&eg__log.started,
                                          memory_order_relaxed))) {
        eg__log_start_forwarder();
    }
    /* Dekker with the forwarder's "sleeping = 1; fence; check ring". */
    eg__full_fence();
    if (atomic_load_explicit(&eg__log.sleeping, memory_order_relaxed)
            && atomic_exchange_explicit(&eg__log.sleeping, 0,
                                        memory_order_relaxed)) {
        uint64_t one = 1;
        ssize_t w = write(eg__log.efd, &one, sizeof(one));
        (void)w;      /* EAGAIN: the counter is saturated, a wake is due */
    }
}

void
eg_log(int level, const char *logger, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    eg_vlog(level, logger, fmt, ap);
    va_end(ap);
}

/* ---- Configuration, counters, fork ----------------------------------------- */

/* Attached (main): logging's configuration changed (or, only_unknown,
 * new names were seen); recompute the cached thresholds with
 * threshold_fn(name) -> int. */
int
eg__log_levels_changed(PyObject *threshold_fn, int only_unknown)
{
    for (uint32_t i = 0; i < EG__LOG_LEVELS; i++) {
        eg__loglevel *e = &eg__log.levels[i];
        uint64_t k = atomic_load_explicit(&e->key, memory_order_acquire);
        int known = atomic_load_explicit(&e->threshold,
                                         memory_order_seq_cst) != 0;
        if (k == EG__LOGKEY_FREE || k == EG__LOGKEY_FILLING
                || (only_unknown && known)) {
            continue;
        }
        /* Decoded as on delivery ("replace"): the level is that of the
         * logger the messages go to. */
        PyObject *name = PyUnicode_DecodeUTF8(e->name, (Py_ssize_t)e->len,
                                              "replace");
        PyObject *r = name ? PyObject_CallOneArg(threshold_fn, name) : NULL;
        Py_XDECREF(name);
        if (r == NULL) {
            return -1;
        }
        long t = PyLong_AsLong(r);
        Py_DECREF(r);
        if (t == -1 && PyErr_Occurred()) {
            return -1;
        }
        atomic_store_explicit(&e->threshold, (int)t, memory_order_relaxed);
    }
    /* Release: an EG_LOG site that reads this generation reads these
     * thresholds too (eg_log_site_enabled). */
    atomic_fetch_add_explicit(&eg__log_generation, 1, memory_order_release);
    return 0;
}

void
eg__log_stats(uint64_t *delivered, uint64_t *dropped, uint64_t *formatted,
              uint64_t *filtered, uint64_t *to_stderr)
{
    *to_stderr = atomic_load_explicit(&eg__log.to_stderr,
                                      memory_order_seq_cst);
    *delivered = atomic_load_explicit(&eg__log.delivered,
                                      memory_order_seq_cst);
    *dropped = atomic_load_explicit(&eg__log.dropped, memory_order_seq_cst);
    *formatted = atomic_load_explicit(&eg__log.formatted,
                                      memory_order_seq_cst);
    eg__mutex_lock(&eg__log.counters_lock);
    uint64_t f = eg__log.filtered_retired;
    for (eg__logctr *c = eg__log.counters; c != NULL; c = c->next) {
        f += atomic_load_explicit(&c->filtered, memory_order_relaxed);
    }
    eg__mutex_unlock(&eg__log.counters_lock);
    *filtered = f;
}

/* pthread_atfork child: the forwarder is gone.  A slot a producer had
 * claimed but not published at fork time never will be: publish it empty
 * so the consumer is not stuck behind it. */
void
eg__log_after_fork_child(void)
{
    if (pthread_mutex_init(&eg__log.start_lock, NULL) != 0
            || pthread_mutex_init(&eg__log.counters_lock, NULL) != 0) {
        abort();
    }
    /* The counters of threads that did not survive stay listed (and
     * counted): their memory is the child's, never freed. */
    atomic_store_explicit(&eg__log.started, 0, memory_order_seq_cst);
    atomic_store_explicit(&eg__log.sleeping, 0, memory_order_seq_cst);
    atomic_store_explicit(&eg__log.stop, 0, memory_order_seq_cst);
    /* Those producers are gone; the door stays open or closed. */
    eg__door_init(&eg__log.door, 0);
    eg__reopen_eventfd(eg__log.efd);
    uint64_t end = atomic_load_explicit(&eg__log.enqueue_pos,
                                        memory_order_seq_cst);
    for (uint64_t p = eg__log.dequeue_pos; p != end; p++) {
        eg__logslot *s = &eg__log.slots[p & eg__log.mask];
        if (atomic_load_explicit(&s->seq, memory_order_seq_cst) != p + 1) {
            s->len = 0;
            s->msg[0] = '\0';
            s->logger = NULL;
            snprintf(s->logger_name, sizeof(s->logger_name), "exitguard");
            s->level = EG_LOG_DEBUG;
            atomic_store_explicit(&s->seq, p + 1, memory_order_seq_cst);
        }
    }
}
