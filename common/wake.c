/* wake.c - the waker's walk of the wakeup protocol (wake.h has the pairing; docs/events.md the
 * argument). Used by the client after each commit and by the broker after a gap or a session's
 * end: one walk, one place for the waker's barrier. */
#include "wake.h"

#include <errno.h>
#include <unistd.h>

struct wake_stats wake_after_commit(const struct shmb_seg *seg, const struct shmb_session_rec *r,
				    const int *evfds, uint32_t n_evfds, uint64_t *sent)
{
	struct wake_stats st = { 0 };
	/* The caller's commit exchange is the full barrier: the loads below are ordered after it
	 * (pairs with wake_arm's fence). */
	for (uint32_t word = 0; word < SHMB_SUB_WORDS; word++) {
		uint64_t bits = uatomic_read(&r->subscribers[word]);
		while (bits) {
			uint32_t w = word * 64 + (uint32_t)__builtin_ctzll(bits);
			bits &= bits - 1;
			struct shmb_worker *wk = seg_worker(seg, w);
			if (!wk || w >= n_evfds || evfds[w] < 0)
				continue; /* left armed for a waker that knows its eventfd */
			/* A plain load first: no cache-line write while the worker is busy. The
			 * exchange lets one waker per sleep write (no storms). */
			if (!uatomic_read(&wk->armed) || uatomic_xchg(&wk->armed, 0) != 1)
				continue;
			uint64_t one = 1;
			/* Nonblocking eventfd: a full counter (EAGAIN) is already a wakeup. */
			if (write(evfds[w], &one, sizeof one) == (ssize_t)sizeof one) {
				st.written++;
				if (sent)
					uatomic_inc(sent);
			} else if (errno != EAGAIN && st.failed++ == 0) {
				st.failed_worker = w;
				st.failed_errno = errno;
			}
		}
	}
	return st;
}

struct wake_stats wake_after_store(const struct shmb_seg *seg, const struct shmb_session_rec *r,
				   const int *evfds, uint32_t n_evfds, uint64_t *sent)
{
	/* The news was stored plainly: this full fence orders it before the walk's loads of the
	 * subscriber bits and armed (pairs with wake_arm's fence). */
	cmm_smp_mb();
	return wake_after_commit(seg, r, evfds, n_evfds, sent);
}
