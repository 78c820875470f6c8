/* wakeup.c - subscriptions and eventfd wakeups without lost wakeups or wakeup storms.
 *
 * Every worker slot has one eventfd (created by the broker, shared with every attached process)
 * and an `armed` flag in its slot. A subscribed process that is about to sleep
 *   0. optionally spins for a bounded time (shmb_set_wait_spin), re-checking without arming:
 *      under a sustained stream the next event is well under a microsecond away, a wakeup costs
 *      several, so a reader that keeps up almost never has to sleep,
 *   1. sets armed = 1, then a full fence,
 *   2. re-checks every session it subscribed: is the first id after what it last reported
 *      committed (or the session gone)? If so it disarms and does not sleep,
 *   3. otherwise sleeps on its eventfd.
 * A publisher, after its commit (a full barrier, evr_publish), reads the subscriber bits of the
 * session and, for each subscribed worker whose armed flag it can swap from 1 to 0, writes that
 * worker's eventfd. Both halves (arming, the waker's walk) are common/wake.c's, which the broker
 * calls too after a gap or a session's end. Store-buffer argument: the waiter's (armed store; commit load) and the
 * publisher's (commit store; armed load) are each separated by a full fence, so either the
 * waiter sees the commit in step 2 or the publisher sees armed == 1 and writes the eventfd.
 * Step 0 only adds checks before step 1, so it cannot lose anything. Waking up (shmb_wait with
 * timeout 0, or after poll) never arms: it disarms, clears the eventfd and re-checks, so a
 * publisher does not write the eventfd a second time for the same sleep.
 * A busy stream costs no syscall per event: the waiter finds news in step 0 or 2 and never
 * sleeps, and a publisher writes the eventfd at most once per arming. The re-check costs one
 * descriptor load per subscription when there is no news (docs/events.md has the details). */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <unistd.h>

#include "clock.h"
#include "evring.h"
#include "internal.h"
#include "wake.h"

void shmbi_wake_subscribers(shmb_client *c, struct shmb_session_rec *r)
{
	/* The walk is common/wake.c's, shared with the broker: r's commit (the caller's exchange
	 * in evr_publish) is the full barrier it needs. */
	wake_after_commit(&c->seg, r, c->evfds, c->n_evfds > 0 ? (uint32_t)c->n_evfds : 0,
			  &seg_worker(&c->seg, c->slot)->wakeups_sent);
}

/* Finds the subscription of (idx, gen) in c->subs; caller holds c->sub_lock. */
static struct shmbi_sub *sub_find(shmb_client *c, uint32_t idx, uint32_t gen)
{
	for (uint32_t i = 0; i < c->n_subs; i++)
		if (c->subs[i].idx == idx && c->subs[i].gen == gen)
			return &c->subs[i];
	return NULL;
}

int shmb_subscribe(shmb_session *s)
{
	if (!s || !shmbi_client_ok(s->c))
		return shmbi_client_err(s ? s->c : NULL);
	if (s->subscribed)
		return 0;
	shmb_client *c = s->c;
	/* The lock before the section, never the other way: a section must not wait. */
	pthread_mutex_lock(&c->sub_lock);
	int rc = shmbi_read_lock(c);
	if (rc < 0) {
		pthread_mutex_unlock(&c->sub_lock);
		return rc;
	}
	struct shmb_session_rec *r = shmbi_session_rec(s, shmb_now_coarse_ms());
	struct shmbi_sub *sub = r ? sub_find(c, s->idx, s->gen) : NULL;
	if (!r) {
		rc = SHMB_ENOENT;
	} else if (!sub && c->n_subs == c->cap_subs) {
		uint32_t cap = c->cap_subs ? 2 * c->cap_subs : 16;
		struct shmbi_sub *n = realloc(c->subs, cap * sizeof *n);
		if (!n)
			rc = SHMB_ENOMEM;
		else {
			c->subs = n;
			c->cap_subs = cap;
		}
	}
	if (rc == 0)
		rc = shmbi_ready_add(c, s); /* shmb_ready's table (waits.c) */
	if (rc == 0) {
		if (!sub) {
			sub = &c->subs[c->n_subs++];
			/* Everything committed so far counts as reported: the caller reads its
			 * cursor after subscribing (docs/events.md, "using it"). */
			*sub = (struct shmbi_sub){ .idx = s->idx, .gen = s->gen };
			sub->seen = evr_frontier(&c->seg, s->idx, r, 0) - 1;
			/* Our bit, then a full barrier: publishers that commit later see it; pairs
			 * with the barrier of their commit (common/wake.h). */
			wake_sub_set(r, c->slot);
		}
		sub->refs++;
		s->subscribed = 1;
	}
	shmbi_read_unlock(c);
	pthread_mutex_unlock(&c->sub_lock);
	return rc;
}

/* A touch that never moves last_accessed_at_ms backwards (a compare-and-swap to a later time,
 * a bounded number of tries): for a record this thread cannot pin with a read-side section, which
 * may be recycled under it. A late store then lands on a FREE record (brk_index_create sets the
 * time at creation) or moves a newer session's time forward by as long as this thread was
 * preempted, never back. */
static void touch_forward(struct shmb_session_rec *r, int64_t coarse_now)
{
	int64_t cur = uatomic_read(&r->last_accessed_at_ms);
	if (cur >= coarse_now)
		return;
	int64_t t = shmb_now_ms();
	for (int tries = 0; tries < 8 && cur < t; tries++) {
		int64_t prev = uatomic_cmpxchg(&r->last_accessed_at_ms, cur, t);
		if (prev == cur)
			break;
		cur = prev;
	}
}

/* Ends this process's subscription to record idx at generation gen on a thread with no reader
 * slot (every one of the worker's is held by another thread), so without a read-side section:
 * the record may be deleted and recycled meanwhile. Caller holds c->sub_lock, so no thread of
 * this process subscribes to anything until it returns. Why clearing our bit is still right:
 * the broker zeroes a record's subscriber bits when it recycles and when it re-creates it, so
 * on any later incarnation our bit is set only if this process subscribed to that incarnation,
 * i.e. holds a subscription (idx, g) with g the record's current generation; then the bit is
 * that subscription's and stays. Otherwise the bit is ours (current generation gen), or a no-op
 * to clear (an incarnation we never subscribed to: our bit is 0 there, and it cannot become 1
 * while we hold the lock). The touch, as in the section's case before the clear, is made only
 * while the record reads as our LIVE session, and never moves its time backwards. */
static void unsubscribe_unpinned(shmb_client *c, uint32_t idx, uint32_t gen, int64_t now)
{
	struct shmb_session_rec *r = seg_rec(&c->seg, idx);
	if (!r)
		return;
	uint32_t st = uatomic_read(&r->state);
	cmm_smp_rmb(); /* pairs with the broker's release of state, as shmbi_session_rec */
	uint32_t cur = uatomic_read(&r->gen);
	if (cur != gen) {
		for (uint32_t i = 0; i < c->n_subs; i++)
			if (c->subs[i].idx == idx && c->subs[i].gen == cur)
				return; /* the bit is our subscription to the newer session */
	} else if (st == SHMB_REC_LIVE) {
		touch_forward(r, now);
	}
	wake_sub_clear(r, c->slot); /* after the touch: see wake.h */
}

int shmb_unsubscribe(shmb_session *s)
{
	if (!s || !shmbi_client_ok(s->c))
		return shmbi_client_err(s ? s->c : NULL);
	if (!s->subscribed)
		return 0;
	shmb_client *c = s->c;
	pthread_mutex_lock(&c->sub_lock);
	/* No reader slot for this thread (SHMB_ENOREADER) does not stop an unsubscribe: it goes on
	 * unpinned (unsubscribe_unpinned). */
	int rc = shmbi_read_lock(c);
	if (rc < 0 && rc != SHMB_ENOREADER) {
		pthread_mutex_unlock(&c->sub_lock);
		return rc;
	}
	int pinned = rc == 0;
	struct shmbi_sub *sub = sub_find(c, s->idx, s->gen);
	s->subscribed = 0;
	shmbi_ready_del(c, s); /* never reported again, also not from the pending list */
	if (sub && --sub->refs == 0) {
		/* Clear our bit only while the record is still this session's. A subscription is
		 * activity while it lasts: touch first, so the inactivity window restarts now
		 * rather than at the last open or publish (an idle SSE stream that reconnects finds
		 * its session). The touch is ordered before the bit's clearing: whoever sees the
		 * bit gone also sees the touch (common/index.h, idx_rec_expired). */
		int64_t now = shmb_now_coarse_ms();
		struct shmb_session_rec *r = pinned ? shmbi_session_rec(s, now) : NULL;
		if (r) {
			shmbi_touch(r, now);
			wake_sub_clear(r, c->slot);
		} else if (!pinned) {
			unsubscribe_unpinned(c, s->idx, s->gen, now);
		}
		*sub = c->subs[--c->n_subs];
	}
	if (pinned)
		shmbi_read_unlock(c);
	pthread_mutex_unlock(&c->sub_lock);
	return 0;
}

/* Step 2 of the protocol: 1 when a subscribed session has unreported news (and marks it
 * reported), 0 otherwise. Caller holds c->sub_lock and a read-side section. Without news this
 * costs one load of the descriptor of seen + 1 per subscription (not of next_id, the line every
 * publisher's claim writes); with news, the frontier scan marks everything committed so far as
 * reported (each id is scanned once). Only ids below the frontier count as reported: an id
 * claimed but not committed yet stays news, and its own commit wakes us. */
static int recheck(shmb_client *c)
{
	int news = 0;
	int64_t now = shmb_now_coarse_ms();
	for (uint32_t i = 0; i < c->n_subs; i++) {
		struct shmbi_sub *sub = &c->subs[i];
		if (sub->gone)
			continue;
		shmb_session h = { .c = c, .idx = sub->idx, .gen = sub->gen };
		struct shmb_session_rec *r = shmbi_session_rec(&h, now);
		if (!r) {
			sub->gone = 1; /* deleted or expired: news, once */
			news = 1;
			continue;
		}
		if (!evr_settled(&c->seg, sub->idx, sub->seen + 1))
			continue;
		sub->seen = evr_frontier(&c->seg, sub->idx, r, sub->seen) - 1;
		news = 1;
	}
	/* Once the process uses shmb_ready: news while it has handles to report, i.e. the pending
	 * list or a set l2 word (after wake_arm's fence: pairs with a waker's marks, which come
	 * before its load of armed, common/wake.c). Without this a waiter whose re-check above
	 * found a commit before its waker marked the record could arm again, after shmb_ready
	 * found nothing, and sleep through the mark (docs/events.md). */
	if (shmbi_ready_news(c))
		news = 1;
	return news;
}

/* recheck() with the lock and a section taken and released around it (steps 0 and waking). */
static int recheck_locked(shmb_client *c)
{
	pthread_mutex_lock(&c->sub_lock);
	int news = shmbi_read_lock(c);
	if (news == 0) {
		news = recheck(c);
		shmbi_read_unlock(c);
	}
	pthread_mutex_unlock(&c->sub_lock);
	return news;
}

/* Step 0: re-check for up to c->spin_ns before arming; 1 news, 0 none, < 0 error. The lock
 * is released between checks, so subscribing threads are not held up by a spinning one. */
static int spin_for_news(shmb_client *c)
{
	uint32_t spin = uatomic_read(&c->spin_ns);
	if (!spin)
		return 0;
	int64_t end = shmb_mono_ns() + spin;
	do {
		int news = recheck_locked(c);
		if (news)
			return news;
		for (int i = 0; i < 32; i++)
			caa_cpu_relax();
	} while (shmb_mono_ns() < end);
	return 0;
}

int shmb_set_wait_spin(shmb_client *c, uint32_t spin_ns)
{
	if (!shmbi_client_ok(c) || spin_ns > SHMB_WAIT_SPIN_MAX_NS)
		return shmbi_client_err(c);
	uatomic_set(&c->spin_ns, spin_ns);
	return 0;
}

int shmb_prepare_wait(shmb_client *c)
{
	if (!shmbi_client_ok(c))
		return shmbi_client_err(c);
	struct shmb_worker *self = seg_worker(&c->seg, c->slot);
	shmbi_sync_eventfds(c);
	int news = spin_for_news(c);
	if (news)
		return news;
	pthread_mutex_lock(&c->sub_lock);
	int rc = shmbi_read_lock(c);
	if (rc < 0) {
		pthread_mutex_unlock(&c->sub_lock);
		return rc;
	}
	wake_arm(self); /* armed = 1, full fence: pairs with the waker's (common/wake.h) */
	news = recheck(c);
	if (news)
		wake_disarm(self);
	shmbi_read_unlock(c);
	pthread_mutex_unlock(&c->sub_lock);
	return news;
}

/* Waking up: disarm (we are not going to sleep), clear the eventfd (nonblocking) and mark the
 * news reported. Never arms: arming again here would let a publisher that commits meanwhile
 * write the eventfd a second time for one sleep, and that stale count would end the next
 * epoll_wait at once. Returns 1 when the eventfd was signalled or there is news, 0 otherwise,
 * SHMB_EIO. */
static int consume(shmb_client *c, int fd)
{
	struct shmb_worker *self = seg_worker(&c->seg, c->slot);
	/* Disarm first: a publisher that still sees armed after our read would leave a count. */
	wake_disarm(self);
	uint64_t v;
	int woken = wake_fd_read(fd, &v); /* never blocks, whatever the description's flags */
	if (woken < 0)
		return SHMB_EIO;
	if (woken)
		uatomic_inc(&self->wakeups_received);
	int news = recheck_locked(c);
	return woken || news > 0;
}

int shmb_wait(shmb_client *c, int timeout_ms)
{
	int fd = shmb_fd(c);
	if (fd < 0)
		return fd;
	if (timeout_ms == 0)
		return consume(c, fd); /* the epoll loop's "fd readable": no arming, no poll */
	int news = shmb_prepare_wait(c);
	if (news < 0)
		return news;
	if (news) {
		uint64_t v;
		(void)wake_fd_read(fd, &v); /* drop a stale signal, if any */
		return 1;
	}
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int n;
	int64_t deadline = timeout_ms > 0 ? shmb_mono_ms() + timeout_ms : 0;
	for (;;) {
		n = poll(&p, 1, timeout_ms);
		if (n >= 0 || errno != EINTR)
			break;
		if (timeout_ms > 0) {
			int64_t left = deadline - shmb_mono_ms();
			timeout_ms = left > 0 ? (int)left : 0;
		}
	}
	if (n < 0)
		return SHMB_EIO;
	if (n == 0) {
		wake_disarm(seg_worker(&c->seg, c->slot));
		return 0;
	}
	int rc = consume(c, fd);
	return rc < 0 ? rc : 1;
}
