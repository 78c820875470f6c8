/* tsan_uatomic.h - liburcu's atomics and fences as ThreadSanitizer must see them: with the
 * orderings the sources ask liburcu for, no stronger.
 *
 * Force-included (-include) into every C file of a -DSHMB_SANITIZE=thread build (CMakeLists.txt),
 * never into any other build. On x86-64 liburcu 0.13 implements uatomic_read/set as volatile
 * accesses (relaxed: the compiler may move plain accesses across them), the read-modify-writes
 * as locked instructions, and cmm_smp_rmb/wmb as compiler barriers, cmm_smp_mb as mfence: inline
 * assembly and volatile, none of which TSan sees. The sources order their plain accesses with
 * explicit fences, as liburcu's API requires (uatomic_read/set and the void read-modify-writes
 * imply no ordering; uatomic_xchg/cmpxchg/add_return are full barriers). This header gives TSan
 * exactly that contract:
 *   uatomic_read                      relaxed load
 *   uatomic_set                       relaxed store
 *   uatomic_add/inc/dec/or/and        relaxed read-modify-writes
 *   uatomic_xchg/cmpxchg/add_return   SEQ_CST read-modify-writes
 *   cmm_smp_rmb                       acquire fence
 *   cmm_smp_wmb                       release fence
 *   cmm_smp_mb, cmm_smp_mb__before/after_uatomic_*   SEQ_CST fence
 * so a missing fence shows up as a data race on the plain data it should have ordered
 * (tests/tsan_fences.c proves it for each kind of pairing the sources use).
 *
 * TSan does not model stand-alone fences: neither GCC 12's libtsan nor clang 14's compiler-rt
 * (their __tsan_atomic_thread_fence only issues the hardware fence, google/sanitizers#1415), and
 * GCC 12 refuses __atomic_thread_fence under -fsanitize=thread with -Werror (-Wtsan). So the
 * fences are modelled here, with TSan's public annotations (__tsan_acquire/__tsan_release on an
 * address), by the rules of C11 7.17.4:
 *   - a release fence releases the thread's clock into a fresh key (a snapshot: later writes of
 *     the thread are not in it) and becomes the thread's "last release fence";
 *   - an atomic store or read-modify-write notes, in a table indexed by its address, the last
 *     release fence of the storing thread (fence -> atomic store);
 *   - an atomic load or read-modify-write remembers its address and the fence noted there;
 *   - an acquire fence acquires, for every load remembered since the previous acquire fence,
 *     both the address itself (atomic release -> load -> acquire fence: TSan keeps the clock of a
 *     SEQ_CST read-modify-write at its address) and the noted fence (release fence -> store ->
 *     load -> acquire fence); a SEQ_CST read-modify-write acquires the noted fence at once
 *     (release fence -> store -> acquire operation).
 * The real fences still run (liburcu's own macros, captured below before they are replaced): the
 * program under TSan is ordered as shipped. The model is coarser than C11 in these cases only,
 * each rare in practice ("can hide": a missing fence may go unreported there):
 *   - TSan acquires the clock of the LATEST release at an address, not of the store the load read
 *     (TSan's own rule for acquire loads too: can hide);
 *   - a relaxed read-modify-write after a release fence replaces the fence noted at its address
 *     (it should extend the release sequence of the earlier one: this can report, not hide);
 *   - a thread's fence keys are reused after TSAN_FENCE_KEYS release fences (and shared by
 *     threads beyond TSAN_FENCE_THREADS): a stale note then acquires a later clock (can hide);
 *   - the notes of two addresses may share a table cell: the later one wins and the earlier
 *     address reads as unnoted (can report, not hide), unless two writers tear one cell;
 *   - a thread remembers at most TSAN_FENCE_LOADS distinct loads between acquire fences (the
 *     oldest are forgotten: can report, not hide).
 * What no happens-before checker can see is a store-buffer (Dekker) pairing of two SEQ_CST fences
 * (the wakeup protocol, the read-side section's entry): no data is handed over, so TSan has
 * nothing to report either way; docs/events.md and docs/rcu.md argue those. */
#ifndef SHMB_TSAN_UATOMIC_H
#define SHMB_TSAN_UATOMIC_H

#include <stdint.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

void __tsan_acquire(void *addr);
void __tsan_release(void *addr);

/* The hardware fences, as liburcu ships them (expanded here, before the macros are replaced). */
static inline void tsan_hw_mb(void)
{
	cmm_smp_mb();
}
static inline void tsan_hw_rmb(void)
{
	cmm_smp_rmb();
}
static inline void tsan_hw_wmb(void)
{
	cmm_smp_wmb();
}

#define TSAN_FENCE_KEYS 256    /* release fences per thread before its keys are reused */
#define TSAN_FENCE_THREADS 512 /* threads with distinct keys (more share them: coarser) */
#define TSAN_FENCE_CELLS 65536 /* notes of the last release fence per stored address */
#define TSAN_FENCE_LOADS 128   /* loads a thread remembers until its next acquire fence */

/* Weak definitions: one copy per program however many files include this header. */
__attribute__((weak)) uint64_t tsan_fence_keys[TSAN_FENCE_THREADS][TSAN_FENCE_KEYS];
__attribute__((weak)) uint32_t tsan_fence_threads;
__attribute__((weak)) struct tsan_fence_note {
	uintptr_t addr, key;
} tsan_fence_notes[TSAN_FENCE_CELLS];

struct tsan_fence_thread {
	uint64_t *keys;  /* this thread's row of tsan_fence_keys, NULL until its first fence */
	uintptr_t last;  /* key of the last release fence, 0 before the first */
	uint32_t next;   /* next key to use */
	uint32_t n, pos; /* remembered loads: n used, pos the next to overwrite when full */
	struct tsan_fence_note loads[TSAN_FENCE_LOADS];
};
__attribute__((weak)) __thread struct tsan_fence_thread tsan_fence_self;

static inline struct tsan_fence_note *tsan_fence_cell(const volatile void *p)
{
	return &tsan_fence_notes[((uintptr_t)p >> 3) * UINT64_C(0x9E3779B97F4A7C15) >> 48];
}

/* The last release fence noted for p by its latest storer (0: none, or the cell is another's). */
static inline uintptr_t tsan_fence_noted(const volatile void *p)
{
	struct tsan_fence_note *c = tsan_fence_cell(p);
	uintptr_t key = __atomic_load_n(&c->key, __ATOMIC_RELAXED);
	return __atomic_load_n(&c->addr, __ATOMIC_RELAXED) == (uintptr_t)p ? key : 0;
}

/* A store to p: note this thread's last release fence for p (always for a plain store; for a
 * read-modify-write only if there is one, so the release sequence of an earlier note stays). */
static inline void tsan_fence_on_store(const volatile void *p, int rmw)
{
	uintptr_t key = tsan_fence_self.last;
	if (rmw && !key)
		return;
	struct tsan_fence_note *c = tsan_fence_cell(p);
	__atomic_store_n(&c->addr, (uintptr_t)p, __ATOMIC_RELAXED);
	__atomic_store_n(&c->key, key, __ATOMIC_RELAXED);
}

/* A load of p: remembered for the next acquire fence. */
static inline void tsan_fence_on_load(const volatile void *p)
{
	struct tsan_fence_thread *t = &tsan_fence_self;
	uintptr_t key = tsan_fence_noted(p);
	for (uint32_t i = 0; i < t->n; i++)
		if (t->loads[i].addr == (uintptr_t)p) {
			t->loads[i].key = key;
			return;
		}
	uint32_t i = t->n < TSAN_FENCE_LOADS ? t->n++ : t->pos++ % TSAN_FENCE_LOADS;
	t->loads[i] = (struct tsan_fence_note){ .addr = (uintptr_t)p, .key = key };
}

static inline void tsan_fence_acquire(void)
{
	struct tsan_fence_thread *t = &tsan_fence_self;
	for (uint32_t i = 0; i < t->n; i++) {
		__tsan_acquire((void *)t->loads[i].addr);
		if (t->loads[i].key)
			__tsan_acquire((void *)t->loads[i].key);
	}
	t->n = t->pos = 0;
}

static inline void tsan_fence_release(void)
{
	struct tsan_fence_thread *t = &tsan_fence_self;
	if (!t->keys)
		t->keys = tsan_fence_keys[__atomic_fetch_add(&tsan_fence_threads, 1,
							     __ATOMIC_RELAXED) %
					  TSAN_FENCE_THREADS];
	uint64_t *key = &t->keys[t->next++ % TSAN_FENCE_KEYS];
	__tsan_release(key);
	t->last = (uintptr_t)key;
}

#undef cmm_smp_mb
#undef cmm_smp_rmb
#undef cmm_smp_wmb
#define cmm_smp_rmb() (tsan_hw_rmb(), tsan_fence_acquire())
#define cmm_smp_wmb() (tsan_fence_release(), tsan_hw_wmb())
#define cmm_smp_mb() (tsan_fence_acquire(), tsan_fence_release(), tsan_hw_mb())

#undef cmm_smp_mb__before_uatomic_and
#undef cmm_smp_mb__after_uatomic_and
#undef cmm_smp_mb__before_uatomic_or
#undef cmm_smp_mb__after_uatomic_or
#undef cmm_smp_mb__before_uatomic_add
#undef cmm_smp_mb__after_uatomic_add
#undef cmm_smp_mb__before_uatomic_inc
#undef cmm_smp_mb__after_uatomic_inc
#undef cmm_smp_mb__before_uatomic_dec
#undef cmm_smp_mb__after_uatomic_dec
#define cmm_smp_mb__before_uatomic_and() cmm_smp_mb()
#define cmm_smp_mb__after_uatomic_and() cmm_smp_mb()
#define cmm_smp_mb__before_uatomic_or() cmm_smp_mb()
#define cmm_smp_mb__after_uatomic_or() cmm_smp_mb()
#define cmm_smp_mb__before_uatomic_add() cmm_smp_mb()
#define cmm_smp_mb__after_uatomic_add() cmm_smp_mb()
#define cmm_smp_mb__before_uatomic_inc() cmm_smp_mb()
#define cmm_smp_mb__after_uatomic_inc() cmm_smp_mb()
#define cmm_smp_mb__before_uatomic_dec() cmm_smp_mb()
#define cmm_smp_mb__after_uatomic_dec() cmm_smp_mb()

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

/* Each takes p once (a temporary), as liburcu's do. */
#define uatomic_read(p)                                     \
	__extension__({                                     \
		__typeof__(p) tsan_p_ = (p);                \
		tsan_fence_on_load(tsan_p_);                \
		__atomic_load_n(tsan_p_, __ATOMIC_RELAXED); \
	})
/* v first: it may hold a uatomic_read (uatomic_set(p, uatomic_read(p) + 1)). */
#define uatomic_set(p, v)                                             \
	__extension__({                                               \
		__typeof__(*(p)) tsan_v_ = (v);                       \
		__typeof__(p) tsan_p_ = (p);                          \
		tsan_fence_on_store(tsan_p_, 0);                      \
		__atomic_store_n(tsan_p_, tsan_v_, __ATOMIC_RELAXED); \
	})

/* The full-barrier read-modify-writes: TSan's own SEQ_CST model, plus the release fence noted at
 * the address (release fence -> store -> acquire operation). */
#define TSAN_FENCE_SC_BEGIN(p)       \
	__typeof__(p) tsan_p_ = (p); \
	uintptr_t tsan_key_ = tsan_fence_noted(tsan_p_)
#define TSAN_FENCE_SC_END(r)                       \
	if (tsan_key_)                             \
		__tsan_acquire((void *)tsan_key_); \
	r
#define uatomic_xchg(p, v)                                                   \
	__extension__({                                                      \
		TSAN_FENCE_SC_BEGIN(p);                                      \
		__typeof__(*tsan_p_) tsan_r_ =                               \
			__atomic_exchange_n(tsan_p_, (v), __ATOMIC_SEQ_CST); \
		TSAN_FENCE_SC_END(tsan_r_);                                  \
	})
#define uatomic_cmpxchg(p, old, new)                                                       \
	__extension__({                                                                    \
		TSAN_FENCE_SC_BEGIN(p);                                                    \
		__typeof__(*tsan_p_) tsan_r_ = (old);                                      \
		__atomic_compare_exchange_n(tsan_p_, &tsan_r_, (new), 0, __ATOMIC_SEQ_CST, \
					    __ATOMIC_SEQ_CST);                             \
		TSAN_FENCE_SC_END(tsan_r_);                                                \
	})
#define uatomic_add_return(p, v)                                                                   \
	__extension__({                                                                            \
		TSAN_FENCE_SC_BEGIN(p);                                                            \
		__typeof__(*tsan_p_) tsan_r_ = __atomic_add_fetch(tsan_p_, (v), __ATOMIC_SEQ_CST); \
		TSAN_FENCE_SC_END(tsan_r_);                                                        \
	})

/* The void read-modify-writes: relaxed (liburcu: "no memory barrier"; the sources put
 * cmm_smp_mb__before/after_uatomic_* where they need one). A read for the next acquire fence, a
 * store noting this thread's last release fence. */
#define TSAN_FENCE_RMW_RELAXED(p, fn, v)                  \
	__extension__({                                   \
		__typeof__(p) tsan_p_ = (p);              \
		tsan_fence_on_load(tsan_p_);              \
		tsan_fence_on_store(tsan_p_, 1);          \
		(void)fn(tsan_p_, (v), __ATOMIC_RELAXED); \
	})
#define uatomic_add(p, v) TSAN_FENCE_RMW_RELAXED((p), __atomic_add_fetch, (v))
#define uatomic_inc(p) uatomic_add((p), 1)
#define uatomic_dec(p) TSAN_FENCE_RMW_RELAXED((p), __atomic_sub_fetch, 1)
#define uatomic_or(p, v) TSAN_FENCE_RMW_RELAXED((p), __atomic_or_fetch, (v))
#define uatomic_and(p, v) TSAN_FENCE_RMW_RELAXED((p), __atomic_and_fetch, (v))

#endif
