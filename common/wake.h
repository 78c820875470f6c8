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
 *   - wake_after_store: the news is plain stores (a record leaving LIVE): a full fence first. */
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

/* Waker, right after storing a commit with an exchange (a full barrier): for each worker
 * subscribed to r that is armed and whose eventfd is known (w < n_evfds, evfds[w] >= 0), swap its
 * armed flag from 1 to 0 and, if this call won it, write 1 to its eventfd. A slot without a known
 * eventfd is left armed, for a waker that can reach it. sent (may be NULL): a shared counter
 * incremented per eventfd written. Call inside a read-side section (or as the broker), with r the
 * record the news was stored in. */
struct wake_stats wake_after_commit(const struct shmb_seg *seg, const struct shmb_session_rec *r,
				    const int *evfds, uint32_t n_evfds, uint64_t *sent);

/* Waker, after storing the news with plain stores (the record's state): a full fence (pairs with
 * wake_arm's), then wake_after_commit. */
struct wake_stats wake_after_store(const struct shmb_seg *seg, const struct shmb_session_rec *r,
				   const int *evfds, uint32_t n_evfds, uint64_t *sent);

#endif
