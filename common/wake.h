/* wake.h - the wakeup protocol on shared memory: the one definition of both halves, called by the
 * client (a waiter arming itself; a publisher after its commit) and by the broker (after a gap
 * record, after a session's end). docs/events.md, "Wakeups without lost wakeups or storms", argues
 * it; this is the code it cites.
 *
 * Shared state: the session record's subscriber bits (bit w: worker slot w subscribed;
 * wake_sub_set, wake_sub_clear), each worker slot's `armed` flag, and one eventfd per worker slot
 * (every attached process and the broker hold them all).
 *
 * The pairing (store-buffer, Dekker): the waiter stores armed = 1, full fence, then loads the news
 * (wake_arm, then its re-check); the waker stores the news, full barrier, then loads the
 * subscriber bits and armed (wake_after_commit, wake_after_store). In every interleaving one of
 * them sees the other's store: the waiter finds the news and does not sleep, or the waker finds
 * it armed, wins the exchange of armed from 1 to 0 and writes its eventfd, once per sleep.
 * The waker's full barrier sits in one place in every caller: between the news store and the
 * first load of the walk. Which instruction provides it depends only on how the news was stored,
 * so there are two entry points and the choice is the caller's store:
 *   - wake_after_commit: the news is a commit, an exchange of the descriptor's seq (evr_publish,
 *     evr_write_gap's desc_commit_gap): liburcu's uatomic_xchg is a full barrier, so no fence is
 *     added (an mfence after the exchange costs more than the rest of a publish);
 *   - wake_after_store: the news is plain stores (a record leaving LIVE): a full fence first.
 *
 * Layout 2.0 adds two more things the same walk does after the same barrier, so that every
 * waker (a publisher, the broker writing a gap or ending a session) does them in one place:
 *   - per-thread waits (shmb_cursor_wait): the record's `waiters` is loaded; when non-zero,
 *     `wake_seq` is bumped and FUTEX_WAKE wakes every thread sleeping on it (wake_futex_*). A
 *     waiter increments `waiters` with an atomic RMW (a full barrier) before its re-check, so the
 *     same store-buffer argument holds: the waiter sees the news, or the waker sees the count.
 *     With no waiter this is one load of the record's ring line (which the claim just wrote):
 *     no fence and no syscall is added to a publish;
 *   - "which session has news" (shmb_ready): for every subscribed worker, the record's bit in
 *     that worker's ready bitmaps (wake_ready_mark), before its armed flag is looked at, so a
 *     worker woken through its eventfd finds the bit. */
#ifndef SHMB_WAKE_H
#define SHMB_WAKE_H

#include <stdint.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "seg.h"

/* What a walk did: eventfds written, and the first write that failed (other than EAGAIN, which
 * is a full counter: already a wakeup). */
struct wake_stats {
	uint32_t written;
	uint32_t failed;        /* writes that failed */
	uint32_t failed_worker; /* the first of them: its worker slot and errno */
	int failed_errno;
};

/* Eventfds of the worker set. Every write or read of one, in the client and the broker, goes
 * through these (wake.c says why): none of them blocks, whatever another process did to the
 * description's O_NONBLOCK, except for the write's deliberate race (wake.c; docs/security.md).
 *
 * wake_fd_write: adds 1 to fd's counter. Returns 0 written, 1 the counter is full (EAGAIN:
 * a wakeup is already pending), or -errno.
 * wake_fd_read: takes fd's counter into *v. Returns 1 read, 0 it was zero, or -errno.
 * wake_fd_nonblock: sets O_NONBLOCK on fd's description if it is clear. Returns 0 it was set, 1
 * it was clear and is set again (counted, and reported: the hook, else one line on stderr per
 * process), or -errno.
 * wake_fd_restores: how many times this process found a description blocking.
 * wake_fd_set_warn: the hook told each time (fd, running count), instead of stderr; call before
 * any other thread uses the functions above (the broker: at start-up). */
int wake_fd_write(int fd);
int wake_fd_read(int fd, uint64_t *v);
int wake_fd_nonblock(int fd);
uint64_t wake_fd_restores(void);
void wake_fd_set_warn(void (*warn)(int fd, uint64_t count));

/* Subscribing: set worker w's bit in r's subscriber set, then a full fence, so a waker that
 * commits later sees it (pairs with the waker's barrier after its news; the subscriber then reads
 * everything committed so far itself). Atomic: other workers set and clear their own bits in
 * the same word. */
static inline void wake_sub_set(struct shmb_session_rec *r, uint32_t w)
{
	uatomic_or(&r->subscribers[w / 64], UINT64_C(1) << (w % 64));
	cmm_smp_mb();
}

/* Ending a subscription, after the caller touched the record (a subscription is activity while
 * it lasts): a full barrier, then worker w's bit cleared, so whoever sees the bit gone also sees
 * the touch (common/index.h, idx_rec_expired). The client's shmb_unsubscribe and the broker's
 * settling of a dead or detached worker both end a subscription this way. */
static inline void wake_sub_clear(struct shmb_session_rec *r, uint32_t w)
{
	cmm_smp_mb__before_uatomic_and();
	uatomic_and(&r->subscribers[w / 64], ~(UINT64_C(1) << (w % 64)));
}

/* Waiter, before its re-check: armed = 1, then a full fence (pairs with the waker's barrier
 * between its news store and its load of armed). The caller then re-checks its subscriptions
 * and, finding news, disarms (wake_disarm) instead of sleeping. */
static inline void wake_arm(struct shmb_worker *self)
{
	uatomic_set(&self->armed, 1);
	cmm_smp_mb();
}

/* Waiter, not sleeping (news found, woken, timed out): armed = 0. A plain load first: no
 * cache-line write when a waker already took it. No fence: a waker that still sees armed = 1
 * only writes one spurious eventfd count, which the next wakeup consumes. */
static inline void wake_disarm(struct shmb_worker *self)
{
	if (uatomic_read(&self->armed))
		uatomic_set(&self->armed, 0);
}

/* ---- Per-thread waits (2.0): the record's futex word wake_seq and its count waiters ----
 * The futex is shared (no FUTEX_PRIVATE_FLAG): the word is in a mapping of several processes.
 *
 * wake_futex_wait: sleeps while *word == expected, for at most timeout_ns (< 0: no limit; the
 * kernel measures a relative FUTEX_WAIT timeout on CLOCK_MONOTONIC). Returns 0 when woken or the
 * word differed (EAGAIN), -EINTR on a signal, -ETIMEDOUT, or another -errno. The caller
 * re-checks and recomputes the time left in every case.
 * wake_futex_wake: wakes every thread of any process sleeping on word. */
int wake_futex_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);
void wake_futex_wake(uint32_t *word);

/* wake_all_waiters: every thread asleep in shmb_cursor_wait on any record of the segment is woken
 * (wake_seq bumped, FUTEX_WAKE, for each record with waiters); each re-checks its cursor and
 * sleeps again if it has nothing. Two uses. (1) The header was just marked retired (the broker
 * stopping with unlink_on_exit, or retiring an earlier run's segment): nobody publishes there any
 * more, so without this a waiter would sleep until its timeout (forever with -1); woken, it
 * finds the mark and returns SHMB_ESTALE. A full fence first: the mark before the loads of
 * waiters, paired with the waiter's increment of waiters (a full barrier) before its re-check
 * of the mark (client/waits.c, step 3). (2) A broker adopting a segment: its predecessor may
 * have died between a commit of its own (a gap record) and that commit's wake, which nobody
 * would make good (brk_workers_wake_all covers the eventfds only). O(max_sessions) loads. */
void wake_all_waiters(const struct shmb_seg *seg);

/* wake_mark_all_subscribed: every record with subscribers is marked in each subscribed worker's
 * ready bitmaps (wake_ready_mark), as if it had news. For a broker adopting a segment, before it
 * writes every eventfd (brk_workers_wake_all): its predecessor may have died between a commit of
 * its own (a gap record) and that commit's marks, and a process using shmb_ready would then be
 * woken with nothing to report and read that session only at its next event. A report is
 * "look", never "there is an event" (shmb.h), so the extra marks cost one look each.
 * O(max_sessions x SHMB_SUB_WORDS) loads. */
void wake_mark_all_subscribed(const struct shmb_seg *seg);

/* Ends one count in r->waiters without ever taking it below 0 (a compare-and-swap loop, full
 * barrier): the broker may have reset the count (a recycle) or settled a dead waiter's, and an
 * underflow would make every later publish on the record issue a FUTEX_WAKE. Bounded: each
 * failed try means another thread changed the word. */
static inline void wake_waiters_dec(struct shmb_session_rec *r)
{
	uint32_t v = uatomic_read(&r->waiters);
	for (int tries = 0; v != 0 && tries < 1000; tries++) {
		uint32_t prev = uatomic_cmpxchg(&r->waiters, v, v - 1);
		if (prev == v)
			return;
		v = prev;
	}
}

/* ---- Ready bitmaps (2.0, shmb_ready) ----
 * wake_ready_mark: record idx has news for worker w: its bit in w's l0 word, then the l1 bit of
 * that word, then the l2 bit of that l1 word. Each level is loaded first and set (fetch-or,
 * sequentially consistent) only when clear, so a busy session costs three loads and no write
 * while its bits stay set; every level is looked at even when a lower one was already set, so
 * a waker that died between two levels is made good by the next one. The reader (shmb_ready)
 * takes l2, then l1, then l0 words with exchange: docs/events.md, "Which session has news",
 * argues why no mark is lost. Out-of-range w or idx: nothing. */
static inline void wake_ready_mark(const struct shmb_seg *seg, uint32_t w, uint32_t idx)
{
	uint64_t *rb = seg_ready(seg, w);
	uint32_t ms = seg->cfg.max_sessions;
	if (!rb || idx >= ms)
		return;
	uint64_t i0 = idx / 64, i1 = i0 / 64, i2 = i1 / 64;
	uint64_t *l0 = rb, *l1 = rb + shmb_ready_l0_words(ms);
	uint64_t *l2 = l1 + shmb_ready_l1_words(ms);
	uint64_t b0 = UINT64_C(1) << (idx % 64), b1 = UINT64_C(1) << (i0 % 64);
	uint64_t b2 = UINT64_C(1) << (i1 % 64);
	/* uatomic_or is no barrier by itself (liburcu): the explicit ones make each set a full
	 * barrier, so the l0 set is ordered before the l1 load, and so on (the reader takes them
	 * in the opposite order). On x86 they compile to nothing (lock or is one). */
	if (!(uatomic_read(&l0[i0]) & b0)) {
		cmm_smp_mb__before_uatomic_or();
		uatomic_or(&l0[i0], b0);
		cmm_smp_mb__after_uatomic_or();
	}
	if (!(uatomic_read(&l1[i1]) & b1)) {
		cmm_smp_mb__before_uatomic_or();
		uatomic_or(&l1[i1], b1);
		cmm_smp_mb__after_uatomic_or();
	}
	if (!(uatomic_read(&l2[i2]) & b2)) {
		cmm_smp_mb__before_uatomic_or();
		uatomic_or(&l2[i2], b2);
		cmm_smp_mb__after_uatomic_or();
	}
}

/* Zeroes worker w's ready bitmaps (the broker, admitting a new process into slot w or
 * releasing it: no thread of w runs). A waker that read w's subscriber bit before it was cleared
 * may still mark afterwards: the new owner then finds a bit for a record it holds no handle of,
 * which shmb_ready drops. */
static inline void wake_ready_clear(const struct shmb_seg *seg, uint32_t w)
{
	uint64_t *rb = seg_ready(seg, w);
	if (!rb)
		return;
	uint64_t n = shmb_ready_stride(seg->cfg.max_sessions) / sizeof(uint64_t);
	for (uint64_t i = 0; i < n; i++)
		uatomic_set(&rb[i], 0);
}

/* Waker, right after storing a commit with an exchange (a full barrier): wakes r's per-thread
 * waiters if it has any (futex), marks r in the ready bitmaps of every subscribed worker, and
 * for each worker subscribed to r that is armed and whose eventfd is known (w < n_evfds, evfds[w] >= 0), swap its
 * armed flag from 1 to 0 and, if this call won it, write 1 to its eventfd. A slot without a known
 * eventfd is left armed, for a waker that can reach it. sent (may be NULL): a shared counter
 * incremented per eventfd written. Call inside a read-side section (or as the broker), with r the
 * record the news was stored in. */
struct wake_stats wake_after_commit(const struct shmb_seg *seg, struct shmb_session_rec *r,
				    const int *evfds, uint32_t n_evfds, uint64_t *sent);

/* Waker, after storing the news with plain stores (the record's state): a full fence (pairs with
 * wake_arm's), then wake_after_commit. */
struct wake_stats wake_after_store(const struct shmb_seg *seg, struct shmb_session_rec *r,
				   const int *evfds, uint32_t n_evfds, uint64_t *sent);

#endif
