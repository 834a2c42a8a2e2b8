/*
 * stress_logring.c -- C-level stress test of the log ring, without a running
 * interpreter.
 *
 * N producer threads each log M numbered messages through the real eg_log
 * (level cache, slot claim, formatting, publication) while one consumer pops
 * them raw.  The ring is small, so producers keep finding it full: every
 * message must be either received exactly once, in order per producer, or
 * counted as dropped -- and the two must add up to N * M.  (The first
 * eg__log_pop_raw makes this thread the only consumer: no forwarder.)
 */
#include "core/log.h"
#include "core/log_forwarder.h"

#include <stdio.h>
#include <string.h>

#ifndef PRODUCERS
#  define PRODUCERS 4
#endif
#ifndef ITEMS
#  define ITEMS 100000
#endif

void eg__log_process_init(void);
void eg__log_stats(uint64_t *, uint64_t *, uint64_t *, uint64_t *, uint64_t *);

static _Atomic int producers_done;
static long received[PRODUCERS];
static long order_errors;

static void *
producer(void *arg)
{
    int id = (int)(intptr_t)arg;
    for (int i = 0; i < ITEMS; i++) {
        eg_log(EG_LOG_WARNING, "stress", "p%d %d", id, i);
    }
    return NULL;
}

static void
consume_one(const char *msg)
{
    int p, i;
    if (sscanf(msg, "p%d %d", &p, &i) != 2 || p < 0 || p >= PRODUCERS) {
        order_errors++;
        return;
    }
    static long last[PRODUCERS] = {-1, -1, -1, -1};
    if (i <= last[p]) {
        order_errors++;          /* duplicate or out of order */
    }
    last[p] = i;
    received[p]++;
}

int
main(void)
{
    setenv("EXITGUARD_LOG_RING", "64", 1);          /* keep it full */
    eg__log_process_init();
    char msg[512];
    int level;
    (void)eg__log_pop_raw(&level, msg, sizeof(msg));   /* we are the consumer */
    pthread_t prods[PRODUCERS];
    int joined[PRODUCERS] = {0};
    for (int p = 0; p < PRODUCERS; p++) {
        pthread_create(&prods[p], NULL, producer, (void *)(intptr_t)p);
    }
    for (;;) {
        int done = atomic_load(&producers_done);
        while (eg__log_pop_raw(&level, msg, sizeof(msg))) {
            consume_one(msg);
        }
        if (done) {
            break;
        }
        int all = 1;
        for (int p = 0; p < PRODUCERS; p++) {
            if (!joined[p] && pthread_tryjoin_np(prods[p], NULL) == 0) {
                joined[p] = 1;
            }
            all &= joined[p];
        }
        if (all) {
            atomic_store(&producers_done, 1);   /* one more pass, then stop */
        }
    }
    uint64_t delivered, dropped, formatted, filtered, to_stderr;
    eg__log_stats(&delivered, &dropped, &formatted, &filtered, &to_stderr);
    long total = 0;
    for (int p = 0; p < PRODUCERS; p++) {
        total += received[p];
    }
    printf("stress_logring: %d producers x %d messages, ring of 64: received %ld, "
           "dropped %llu, order errors %ld\n", PRODUCERS, ITEMS, total,
           (unsigned long long)dropped, order_errors);
    int ok = order_errors == 0 && (uint64_t)total + dropped == (uint64_t)PRODUCERS * ITEMS
             && (uint64_t)total == delivered && total > 0 && dropped > 0;
    printf("%s\n", ok ? "1 passed, 0 failed" : "0 passed, 1 failed");
    return ok ? 0 : 1;
}
