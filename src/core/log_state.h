/*
 * log_state.h -- the state exitguard's logging shares between its two
 * files: the producers, the level cache and the public entry points in
 * log.c, and the consumer in log_forwarder.c.  The slot and level-entry
 * layouts and the one state of the process, eg__log; log.c's DESIGN
 * comment says how they are used and in which order.
 *
 * Private to exitguard: only log.c and log_forwarder.c include it (its
 * functions are declared in core/log.h).
 */
#ifndef EG__LOG_STATE_H
#define EG__LOG_STATE_H

#include "base/door.h"
#include "core/record.h"

#define EG__LOG_SLOT_MSG 432          /* bytes of message text per slot */
#define EG__LOG_LEVELS 1024           /* level-cache entries (2^n) */

typedef struct {
    _Atomic uint64_t key;            /* hash | 2; or FREE, FILLING */
    _Atomic int threshold;           /* 0: unknown */
    uint32_t len;                    /* set before key publishes */
    char *name;                      /* our copy, set before key publishes */
} eg__loglevel;

typedef struct {
    _Atomic uint64_t seq;
    int level;
    uint32_t len;
    eg__loglevel *logger;            /* NULL: the cache was full */
    char logger_name[48];            /* then a copy of the name (cut) */
    unsigned long tid;
    double created;
    char thread[16];
    char msg[EG__LOG_SLOT_MSG];
} eg__logslot;

/* The log system's one state: the level cache, the ring, the forwarder's
 * lifecycle and the counters.  Defined in log_forwarder.c, the lower of the
 * two files, so that references between them go one way (log.c -> it). */
typedef struct eg__logstate {
    eg__loglevel levels[EG__LOG_LEVELS];
    eg__logslot *slots;
    uint64_t mask;
    alignas(EG__CACHELINE) _Atomic uint64_t enqueue_pos;
    alignas(EG__CACHELINE) uint64_t dequeue_pos;       /* consumer only */
    alignas(EG__CACHELINE) _Atomic int sleeping;       /* forwarder idle */
    int efd;
    _Atomic int started;             /* forwarder thread created */
    _Atomic int stop;                /* forwarder must exit */
    /* Producers pass through it; phase 2 closes it, waits for the ones
     * inside, and from then on eg_log writes to stderr. */
    eg__door door;
    pthread_t forwarder;
    pthread_mutex_t start_lock;
    PyObject *deliver;               /* exitguard._logging.deliver (main) */
    _Atomic uint64_t delivered, dropped, dropped_unreported;
    _Atomic uint64_t formatted, to_stderr;
    /* Messages below their level: per thread (a store, not an RMW, on the
     * fastest path there is), summed by eg__log_stats. */
    pthread_mutex_t counters_lock;   /* protects counters, retired */
    struct eg__logctr *counters;
    uint64_t filtered_retired;       /* of threads that have exited */
} eg__logstate;
extern eg__logstate eg__log;

#endif /* EG__LOG_STATE_H */
