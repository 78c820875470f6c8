/* tsan_uatomic.h - liburcu's atomics re-expressed as compiler atomics, for ThreadSanitizer only.
 *
 * Force-included (-include) into every C file of a -DSHMB_SANITIZE=thread build (CMakeLists.txt),
 * never into any other build. On x86 liburcu 0.13 implements uatomic_xchg/cmpxchg/add/... with
 * inline assembly and uatomic_read/set as volatile accesses, none of which TSan can see: every
 * hand-off through the segment (claim/commit, record states, reader slots, subscriber bits)
 * would be reported as a race. This header includes liburcu's headers first (their include
 * guards make the sources' own includes no-ops) and redefines the operations the sources use:
 *   uatomic_read  -> __atomic_load_n(ACQUIRE)   (the sources pair it with cmm_smp_rmb)
 *   uatomic_set   -> __atomic_store_n(RELEASE)  (the sources precede it with cmm_smp_wmb)
 *   the read-modify-writes -> their __atomic builtins, SEQ_CST (liburcu's are full barriers)
 * Acquire/release is what the fence pairs in the sources provide, stated so TSan can follow it;
 * the code under test is otherwise unchanged. What TSan still reports on shared memory is a real
 * race or one of the intended ones listed in tests/tsan.supp. */
#ifndef SHMB_TSAN_UATOMIC_H
#define SHMB_TSAN_UATOMIC_H

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#undef uatomic_read
#undef uatomic_set
#undef uatomic_xchg
#undef uatomic_cmpxchg
#undef uatomic_add_return
#undef uatomic_add
#undef uatomic_inc
#undef uatomic_dec
#undef uatomic_or
#undef uatomic_and

#define uatomic_read(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define uatomic_set(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define uatomic_xchg(p, v) __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
#define uatomic_cmpxchg(p, old, new)                                                     \
	__extension__({                                                                  \
		__typeof__(*(p)) tsan_old_ = (old);                                      \
		__atomic_compare_exchange_n((p), &tsan_old_, (new), 0, __ATOMIC_SEQ_CST, \
					    __ATOMIC_SEQ_CST);                           \
		tsan_old_;                                                               \
	})
#define uatomic_add_return(p, v) __atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST)
#define uatomic_add(p, v) ((void)__atomic_add_fetch((p), (v), __ATOMIC_SEQ_CST))
#define uatomic_inc(p) uatomic_add((p), 1)
#define uatomic_dec(p) ((void)__atomic_sub_fetch((p), 1, __ATOMIC_SEQ_CST))
#define uatomic_or(p, v) ((void)__atomic_or_fetch((p), (v), __ATOMIC_SEQ_CST))
#define uatomic_and(p, v) ((void)__atomic_and_fetch((p), (v), __ATOMIC_SEQ_CST))

#endif
