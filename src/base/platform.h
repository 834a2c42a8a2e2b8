/*
 * base/platform.h -- the bottom layer: what every file of src/ may use.
 *
 * Private to exitguard (src/ only).  CPython's headers come first, as
 * CPython asks; then the public header, the compat layer, and the helpers
 * of platform.c: locks that cannot fail, fatal errors, deadlines, fresh
 * eventfds, and the compiler's hints.  Nothing here knows an interpreter.
 */
#ifndef EG__PLATFORM_H
#define EG__PLATFORM_H

#ifndef EG_BUILDING
#  error "src/ headers are private to exitguard"
#endif

#define PY_SSIZE_T_CLEAN      /* "#" formats take Py_ssize_t (default in 3.13) */
#include <Python.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "exitguard.h"
#include "base/compat.h"

#define EG__CACHELINE 64

#if defined(__GNUC__)
#  define EG__LIKELY(x)   __builtin_expect(!!(x), 1)
#  define EG__UNLIKELY(x) __builtin_expect(!!(x), 0)
#  define EG__NOINLINE    __attribute__((noinline))
#  define EG__COLD        __attribute__((cold))
#else
#  define EG__LIKELY(x)   (x)
#  define EG__UNLIKELY(x) (x)
#  define EG__NOINLINE
#  define EG__COLD
#endif

/* ---- Thread-locals ------------------------------------------------------
 * On hot paths: initial-exec TLS, one load from %fs instead of
 * a __tls_get_addr call (general-dynamic, the default for a shared object).
 * dlopen'ed modules take this from glibc's static TLS surplus; exitguard's
 * come to about 110 bytes.  EG_NO_INITIAL_EXEC_TLS turns it off for a libc
 * or loader that has no surplus. */
#if defined(__GNUC__) && !defined(EG_NO_INITIAL_EXEC_TLS)
#  define EG__TLS_IE __attribute__((tls_model("initial-exec")))
#else
#  define EG__TLS_IE
#endif

/* ---- Handle quarantine ---------------------------------------------------
 * eg_stopper and eg_thread handles carry a magic, so that a second remove or
 * join of one is told apart.  EG__QUARANTINE: freed handles are never given
 * back to malloc, so that check always reads memory that is still ours --
 * in EG_DEBUG builds (which then abort naming the misuse) and under
 * AddressSanitizer (which would call the check itself a use after free). */
#if defined(__SANITIZE_ADDRESS__)
#  define EG__ASAN 1
#elif defined(__has_feature)
#  if __has_feature(address_sanitizer)
#    define EG__ASAN 1
#  endif
#endif
#if defined(EG_DEBUG) || defined(EG__ASAN)
#  define EG__QUARANTINE 1
#endif

/* ---- Locks that cannot fail -----------------------------------------------
 * A failing pthread_mutex_lock() means a corrupted mutex; there is nothing to
 * recover, so these abort (libuv's uv_mutex_lock does the same). */
static inline void
eg__mutex_lock(pthread_mutex_t *m)
{
    if (pthread_mutex_lock(m) != 0) {
        abort();
    }
}

static inline void
eg__mutex_unlock(pthread_mutex_t *m)
{
    if (pthread_mutex_unlock(m) != 0) {
        abort();
    }
}

/* pthread_atfork child: give `fd`, an eventfd, a fresh file description
 * under the same number.  After fork parent and child share each eventfd,
 * so one process would read -- and lose -- the other's wake-ups (found by
 * the fork test: a child's phase 2 waited for ever for its kicker, whose
 * wake-up the parent's kicker had taken).  Keeping the number keeps any
 * reader registration valid.  Async-signal-safe. */
void eg__reopen_eventfd(int fd);

/* Print "exitguard: fatal: <msg>" and abort.  For broken invariants only
 * (double release in debug builds); GIL-free, async-signal-unsafe. */
EG__COLD void eg__fatal(const char *msg);

/* Absolute CLOCK_MONOTONIC deadline `seconds` from now (< 0: none). */
struct timespec eg__deadline(double seconds);

#endif /* EG__PLATFORM_H */
