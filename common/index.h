/* index.h - reading the session index: the bounded chain walk and the expiry rule.
 *
 * Shared by the client (under an RCU read-side section), the broker (the index's only writer)
 * and shmctl (read-only, no RCU: it validates what it reads). The broker's writer side is in
 * broker/index.c. A chain is walked at most max_sessions steps, so a damaged chain (a cycle)
 * ends the walk with an error instead of looping forever. */
#ifndef SHMB_INDEX_H
#define SHMB_INDEX_H

#include <stdint.h>

#include <urcu/uatomic.h>

#include "seg.h"
#include "sid.h"

/* now - then in ms, saturated (timestamps read from shared memory may be garbage). */
static inline uint64_t idx_age(int64_t now, int64_t then)
{
	int64_t d;
	if (__builtin_sub_overflow(now, then, &d))
		return then > now ? 0 : UINT64_MAX;
	return d < 0 ? 0 : (uint64_t)d;
}

/* 1 when a LIVE record is past one of its TTLs at time now (wall-clock ms). A record with a
 * subscriber does not expire by inactivity; the absolute TTL always holds. The common path (not
 * expired) reads record line 0 only: expires_at_ms (created_at_ms + absolute_ttl_ms, stored by
 * the broker at create), last_accessed_at_ms and inactivity_ttl_ms; the subscriber line is read
 * only once the inactivity TTL has run out. */
static inline int idx_rec_expired(const struct shmb_session_rec *r, int64_t now)
{
	if (now >= r->expires_at_ms) /* INT64_MAX: no absolute expiry */
		return 1;
	if (r->inactivity_ttl_ms &&
	    idx_age(now, uatomic_read(&r->last_accessed_at_ms)) >= r->inactivity_ttl_ms) {
		for (int i = 0; i < SHMB_SUB_WORDS; i++)
			if (uatomic_read(&r->subscribers[i]))
				return 0;
		/* No subscriber now, but the touch read above may predate one that just ended:
		 * ending a subscription stores the touch, then clears the bit (wakeup.c, the
		 * broker's clear_sub). Having seen the bit clear, a second read after a read
		 * barrier sees that touch. */
		cmm_smp_rmb();
		return idx_age(now, uatomic_read(&r->last_accessed_at_ms)) >= r->inactivity_ttl_ms;
	}
	return 0;
}

/* Walks the chain of sid's bucket. Returns the index of the record holding sid whose state is
 * LIVE (acquire: its fields are complete), -1 when there is none, -2 when the chain is damaged
 * (longer than max_sessions or an out-of-range link). The caller checks expiry and binding. */
static inline int64_t idx_find(const struct shmb_seg *seg, const uint8_t sid[SHMB_SID_BYTES])
{
	uint32_t *head = seg_bucket(seg, seg_bucket_of(seg, sid_hash(sid)));
	/* Pairs with the broker's release store of the bucket head / next link (index.c). */
	uint32_t link = uatomic_read(head);
	cmm_smp_rmb();
	for (uint32_t steps = 0; link != SHMB_NIL; steps++) {
		struct shmb_session_rec *r = seg_link(seg, link);
		if (!r || steps >= seg->cfg.max_sessions)
			return -2;
		/* Everything read here and by the caller's common path (expiry, binding hash, gen,
		 * touch) is on the record's line 0 (layout 2.0): one miss per record visited, and
		 * no prefetch of other lines (before 2.0 this asked for lines 1, 4 and 5). */
		if (sid_equal(r->sid, sid)) {
			/* Pairs with the broker's release store of state = LIVE. */
			uint32_t st = uatomic_read(&r->state);
			cmm_smp_rmb();
			if (st == SHMB_REC_LIVE)
				return (int64_t)(link - 1);
		}
		link = uatomic_read(&r->next);
		cmm_smp_rmb();
	}
	return -1;
}

#endif
