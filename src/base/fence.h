/*
 * fence.h -- asymmetric fences: in a store-then-load handshake between a
 * frequent side and a rare side, the frequent side pays a compiler barrier
 * and the rare side a membarrier(2) system call.
 *
 * Private to exitguard.  CAUTION: no thread state is assumed or used here;
 * atomics and one system call only.
 *
 * The handshake (Dekker's): each side stores, then loads what the other
 * stores, and at least one of them must see the other.  That needs a full
 * fence between the store and the load on both sides.  When the rare side
 * calls membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED), the kernel runs a
 * full barrier on every CPU running a thread of this process before the
 * call returns (and a context switch is one for the rest), which is as good
 * as a fence at whatever point of the frequent side's program the barrier
 * lands -- so a compiler barrier, which keeps the store and the load in
 * program order, is all the frequent side needs.  This is the "memb"
 * flavour of liburcu and folly's asymmetric fence.  Where membarrier is
 * missing (old kernels, seccomp, valgrind) or invisible to the tool
 * (ThreadSanitizer: EG_TSAN builds), both sides use full fences.
 *
 *   operation         | runs on                   | concurrent with
 *   ------------------+---------------------------+-----------------------
 *   eg__fence_light   | any thread (hot paths)    | everything
 *   eg__fence_heavy   | any thread (rare paths)   | everything
 *   process_init      | process init, fork child  | nothing exitguard runs
 */
#ifndef EG__FENCE_H
#define EG__FENCE_H

#ifndef EG_BUILDING
#  error "fence.h is private to exitguard"
#endif

#include <stdatomic.h>

/* A full (seq_cst) fence.  ThreadSanitizer does not model fences (gcc
 * refuses them with -fsanitize=thread), so TSan builds use a seq_cst
 * read-modify-write on a private atomic instead: the same barrier on the
 * hardware, and an operation TSan understands. */
static inline void
eg__full_fence(void)
{
#ifdef EG_TSAN
    static _Atomic int eg__tsan_fence;
    atomic_fetch_add_explicit(&eg__tsan_fence, 0, memory_order_seq_cst);
#else
    atomic_thread_fence(memory_order_seq_cst);
#endif
}

/* 1 while the heavy side uses membarrier.  Set by eg__fence_process_init
 * before any handshake can run in the process; cleared for good if
 * membarrier ever fails (eg__fence_heavy). */
extern _Atomic int eg__fence_asym;

/* Process init, and a forked child's (registration is per address space):
 * register for the expedited private command if the kernel has it. */
void eg__fence_process_init(void);

/* The frequent side, between its store and its load. */
static inline void
eg__fence_light(void)
{
    if (__builtin_expect(atomic_load_explicit(&eg__fence_asym,
                                              memory_order_relaxed), 1)) {
        atomic_signal_fence(memory_order_seq_cst);
    }
    else {
        eg__full_fence();
    }
}

/* The rare side, between its store and its loads.  Returns 0, or -1 when
 * membarrier failed: from then on every light fence is a full one, but
 * frequent-side operations that ran their compiler barrier just before the
 * switch were not ordered by this call -- the caller must look again once
 * they are done (their stores are not lost, only not yet seen). */
int eg__fence_heavy(void);

#endif /* EG__FENCE_H */
