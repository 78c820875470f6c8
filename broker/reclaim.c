/* reclaim.c - the grace-period reclaimer and the TTL sweeper.
 *
 * Reclaimer: RETIRED records wait in b->pending. On a timer tick (every 10 ms while any wait,
 * backing off while readers hold them up) it reads every reader slot once, between two writer
 * barriers, and takes the smallest non-zero ctr: a record retired at retire_gp <= that minimum
 * has been passed by every reader (each is quiescent or entered after the record's unlink was
 * published), so it is recycled at once; this is rcu_readers_past() answered for all pending
 * records with one scan. The loop never waits: a record a slow reader still holds stays queued.
 * A create that finds the free list empty runs one such check at once (index.c), so a burst of
 * create/delete is not refused for want of a timer tick.
 * A dead worker's reader slots are cleared by workers.c, which unblocks its records.
 *
 * Recycling bumps the generation first (a handle holding the old one is stale), clears the
 * descriptor seq words the old session used, then the record's fields, then release-stores FREE.
 * The seq reset is required by the ring protocol (common/evring.c): a descriptor still holding an
 * old id >= a new session's id would read as "evicted by a newer lap" to its publishers and as a
 * committed event to its readers. No worker touches the ring of a RETIRED record past its grace
 * period (publishers and cursors re-check gen and LIVE inside a section).
 *
 * Sweeper: every sweep_interval_ms it retires the LIVE records idx_rec_expired() reports; it
 * walks the broker's live list, so its cost follows the live sessions, not max_sessions.
 * Lookups already treat an expired record as absent, so the sweep only frees memory. */
#include <string.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "broker.h"
#include "clock.h"
#include "fault.h"
#include "index.h"
#include "rcu.h"

#define RECLAIM_MAX_BACKOFF 10 /* ticks skipped at most while a reader holds records up */

void brk_reclaim_queue(struct brk *b, uint32_t idx)
{
	if (b->n_pending < b->seg.cfg.max_sessions)
		b->pending[b->n_pending++] = idx;
	b->reclaim_skip = 0;
	b->reclaim_backoff = 0;
	brk_timer_update(b);
}

/* Smallest ctr of a reader inside a read-side section, UINT64_MAX when all are quiescent. */
static uint64_t readers_min(const struct shmb_seg *seg)
{
	/* Pairs with the reader's fence after storing its ctr (rcu_reader_enter): either we see
	 * its ctr, or its section's loads see every unlink published before this barrier.
	 * Without a barrier (membarrier failed) no grace period can be proven: report a reader
	 * at 0, older than anything pending. */
	if (rcu_writer_barrier(seg) < 0)
		return 0;
	uint64_t min = UINT64_MAX;
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++)
		for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
			uint64_t v = uatomic_read(&seg_reader(seg, w, k)->ctr);
			if (v != 0 && v < min)
				min = v;
		}
	/* Orders the slot loads above before the recycling stores that follow; pairs with the
	 * reader's fence before it stores 0 (rcu_reader_exit). */
	if (rcu_writer_barrier(seg) < 0)
		return 0;
	return min;
}

static void recycle(struct brk *b, uint32_t idx)
{
	const struct shmb_seg *seg = &b->seg;
	struct shmb_session_rec *r = seg_rec(seg, idx);
	/* A handle carrying the old generation is stale from now on (handles also require LIVE). */
	uatomic_set(&r->gen, uatomic_read(&r->gen) + 1);
	uint64_t used = uatomic_read(&r->next_id);
	uint64_t n = used >= seg->cfg.ring_events ? seg->cfg.ring_events : used + 1;
	for (uint64_t i = 0; i < n; i++)
		uatomic_set(&seg_desc(seg, idx, i)->seq, 0);
	SHMB_FAULT("broker.reclaim");
	r->next = SHMB_NIL;
	r->hash = 0;
	memset(r->sid, 0, sizeof r->sid);
	r->created_at_ms = 0;
	r->inactivity_ttl_ms = 0;
	r->absolute_ttl_ms = 0;
	r->tenant_len = 0;
	r->principal_len = 0;
	r->has_principal = 0;
	uatomic_set(&r->last_accessed_at_ms, 0);
	uatomic_set(&r->next_id, 0);
	for (int i = 0; i < SHMB_SUB_WORDS; i++)
		uatomic_set(&r->subscribers[i], 0);
	memset(r->tenant, 0, sizeof r->tenant);
	memset(r->principal, 0, sizeof r->principal);
	r->retired_at_ms = 0;
	r->retire_reason = SHMB_RETIRE_NONE;
	uatomic_set(&r->retire_gp, 0);
	/* Cleared before FREE (a crash before this store leaves RETIRED, recycled again). */
	cmm_smp_wmb();
	uatomic_set(&r->state, SHMB_REC_FREE);
	brk_index_push_free(b, idx);
}

void brk_reclaim_run(struct brk *b, int now)
{
	if (b->n_pending == 0)
		return;
	if (b->reclaim_skip > 0 && !now) {
		b->reclaim_skip--;
		return;
	}
	uint64_t min = readers_min(&b->seg);
	uint32_t kept = 0, done = 0;
	for (uint32_t i = 0; i < b->n_pending; i++) {
		uint32_t idx = b->pending[i];
		struct shmb_session_rec *r = seg_rec(&b->seg, idx);
		if (r && uatomic_read(&r->retire_gp) <= min) {
			recycle(b, idx);
			done++;
		} else if (r) {
			b->pending[kept++] = idx;
		}
	}
	b->n_pending = kept;
	if (done) {
		brk_ctr_add(b, SHMB_CTR_GRACE_PERIODS, 1);
		brk_ctr_add(b, SHMB_CTR_SESSIONS_RECLAIMED, done);
		b->reclaim_backoff = 0;
	} else {
		/* A reader holds them up: look less often (2, 4, ... ticks), at most every
		 * RECLAIM_MAX_BACKOFF + 1 ticks. */
		b->reclaim_backoff = b->reclaim_backoff ? b->reclaim_backoff * 2 : 1;
		if (b->reclaim_backoff > RECLAIM_MAX_BACKOFF)
			b->reclaim_backoff = RECLAIM_MAX_BACKOFF;
		b->reclaim_skip = b->reclaim_backoff;
	}
	if (b->n_pending == 0)
		brk_timer_update(b);
}

void brk_sweep_run(struct brk *b)
{
	const struct shmb_seg *seg = &b->seg;
	int64_t now = shmb_now_ms();
	uint32_t expired = 0;
	/* Backwards: retiring i moves the last entry (already visited) into position i. */
	for (uint32_t i = b->live; i-- > 0;) {
		uint32_t idx = b->live_list[i];
		struct shmb_session_rec *r = seg_rec(seg, idx);
		if (r && uatomic_read(&r->state) == SHMB_REC_LIVE && idx_rec_expired(r, now)) {
			brk_index_retire(b, idx, SHMB_RETIRE_EXPIRED);
			expired++;
		}
	}
	brk_ctr_add(b, SHMB_CTR_SWEEPS, 1);
	if (expired)
		brk_log("sweep: expired %u session%s", expired, expired == 1 ? "" : "s");
}
