/*
 * fence.c -- the heavy side of the asymmetric fences (see fence.h).
 *
 * CAUTION: no thread state is assumed anywhere in this file, and none is
 * used: atomics and syscall(2) only.
 */
/* No Python.h here: syscall(2) needs the GNU extensions under -std=c11. */
#if !defined(_GNU_SOURCE)
#  define _GNU_SOURCE
#endif

#include "base/fence.h"

#include <unistd.h>
#if defined(__linux__)
#  include <linux/membarrier.h>
#  include <sys/syscall.h>
#endif

_Atomic int eg__fence_asym;

/* <linux/membarrier.h> names its commands in an enum, so only the syscall
 * number can be tested for; the expedited private command needs headers
 * from Linux 4.14 (2017) or later.  EG_NO_MEMBARRIER forces full fences on
 * both sides (tests/stress/c/stress_door.c runs both ways). */
#if defined(__linux__) && defined(__NR_membarrier) && !defined(EG_TSAN) \
    && !defined(EG_NO_MEMBARRIER)
#  define EG__HAVE_MEMBARRIER 1

static int
eg__membarrier(int cmd)
{
    return (int)syscall(__NR_membarrier, cmd, 0, 0);
}
#endif

void
eg__fence_process_init(void)
{
    int ok = 0;
#ifdef EG__HAVE_MEMBARRIER
    /* QUERY tells whether the kernel knows the command; REGISTER must
     * precede any PRIVATE_EXPEDITED call from this process; one call
     * proves it works here (some sandboxes filter the syscall). */
    int cmds = eg__membarrier(MEMBARRIER_CMD_QUERY);
    ok = cmds >= 0 && (cmds & MEMBARRIER_CMD_PRIVATE_EXPEDITED)
         && eg__membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED) == 0
         && eg__membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0;
#endif
    /* seq_cst: published before any handshake of the process can run. */
    atomic_store_explicit(&eg__fence_asym, ok, memory_order_seq_cst);
}

int
eg__fence_heavy(void)
{
#ifdef EG__HAVE_MEMBARRIER
    if (atomic_load_explicit(&eg__fence_asym, memory_order_relaxed)) {
        if (eg__membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0) {
            return 0;
        }
        /* Only an unregistered process gets an error here, and a forked
         * child registers again; if it still fails, switch every light
         * fence to a full one, for good. */
        atomic_store_explicit(&eg__fence_asym, 0, memory_order_seq_cst);
        eg__full_fence();
        return -1;
    }
#endif
    eg__full_fence();
    return 0;
}
