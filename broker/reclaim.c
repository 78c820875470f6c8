/* reclaim.c - the grace-period reclaimer and the TTL sweeper.
 *
 * Reclaimer: RETIRED records wait in b->pending. On a timer tick (every 10 ms while any wait,
 * backing off while readers hold them up) it reads every reader slot once, between two writer
 * barriers, as (ctr, pin) (rcu_reader_peek): the smallest non-zero ctr of the unscoped sections,
 * and the scoped sections (pinned to one record) that are in a section at all. A record retired
 * at retire_gp has been passed by every reader that may hold it when retire_gp <= that minimum
 * and no scoped section pinned to it entered before retire_gp (rcu_reader_blocks): each reader
 * is quiescent, entered after the record's unlink was published, or works on another record
 * (docs/rcu.md, "Scoped sections"). So a thread stopped inside a publish holds up the one record
 * it publishes into, and deletions of every other session are reclaimed. This is
 * rcu_readers_past() answered for all pending records with one scan. The loop never waits: a
 * record a slow reader still holds stays queued.
 *
 * Stalls (brk_stall_run, every BRK_STALL_SCAN_MS): a reader slot seen in a section entered at
 * ctr < rcu_gp is in the same section whenever it is seen again at that ctr (a later section
 * enters at >= the rcu_gp of the first sighting, which is > ctr), so the broker notes the first
 * sighting per slot and publishes, in the worker's stall line, the oldest section open for
 * SHMB_STALL_MS or more (shmctl workers). A section entered at the current rcu_gp cannot be told
 * from a later one, so the scan then bumps rcu_gp (only the broker writes it; a bump with no
 * retirement behind it only makes later sections look newer, which no rule depends on).
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
#include <stdlib.h>
#include <string.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "broker.h"
#include "clock.h"
#include "fault.h"
#include "index.h"
#include "rcu.h"
#include "wake.h"

#define RECLAIM_MAX_BACKOFF 10 /* ticks skipped at most while a reader holds records up */

void brk_reclaim_queue(struct brk *b, uint32_t idx)
{
	if (b->n_pending < b->seg.cfg.max_sessions)
		b->pending[b->n_pending++] = idx;
	b->reclaim_skip = 0;
	b->reclaim_backoff = 0;
	brk_timer_update(b);
}

/* What one scan of the reader slots found (see the file comment). */
struct readers_view {
	uint64_t min_unscoped; /* smallest ctr of an unscoped section, UINT64_MAX none */
	uint32_t n_scoped;     /* entries of b->scoped used */
};

/* Reads every reader slot once between two writer barriers. Returns 0, or -1 when no grace
 * period can be proven (a membarrier failed): then nothing may be recycled. */
static int readers_scan(struct brk *b, struct readers_view *v)
{
	const struct shmb_seg *seg = &b->seg;
	v->min_unscoped = UINT64_MAX;
	v->n_scoped = 0;
	/* Pairs with the reader's fence after storing its ctr (rcu_reader_enter): either we see
	 * its ctr, or its section's loads see every unlink published before this barrier. */
	if (rcu_writer_barrier(seg) < 0)
		return -1;
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++)
		for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
			uint32_t pin;
			uint64_t ctr = rcu_reader_peek(seg_reader(seg, w, k), &pin);
			if (ctr == 0)
				continue;
			if (pin == 0 || pin > seg->cfg.max_sessions || !b->scoped) {
				if (ctr < v->min_unscoped)
					v->min_unscoped = ctr;
			} else {
				b->scoped[v->n_scoped].ctr = ctr;
				b->scoped[v->n_scoped].pin = pin;
				v->n_scoped++;
			}
		}
	/* Orders the slot loads above before the recycling stores that follow; pairs with the
	 * reader's fence before it stores 0 (rcu_reader_exit). */
	if (rcu_writer_barrier(seg) < 0)
		return -1;
	return 0;
}

/* 1 when some reader may still hold record idx retired at retire_gp. */
static int held(const struct brk *b, const struct readers_view *v, uint32_t idx, uint64_t rgp)
{
	if (rcu_reader_blocks(v->min_unscoped == UINT64_MAX ? 0 : v->min_unscoped, 0, idx, rgp))
		return 1;
	for (uint32_t i = 0; i < v->n_scoped; i++)
		if (rcu_reader_blocks(b->scoped[i].ctr, b->scoped[i].pin, idx, rgp))
			return 1;
	return 0;
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
	/* Deleting or expiring a session frees its attributes (broker/attrs.c). */
	brk_attr_clear(b, idx);
	SHMB_FAULT("broker.reclaim");
	r->next = SHMB_NIL;
	r->hash = 0;
	memset(r->sid, 0, sizeof r->sid);
	r->created_at_ms = 0;
	r->inactivity_ttl_ms = 0;
	r->absolute_ttl_ms = 0;
	r->expires_at_ms = 0;
	r->binding = 0;
	r->tenant_len = 0;
	r->principal_len = 0;
	r->has_principal = 0;
	uatomic_set(&r->last_accessed_at_ms, 0);
	uatomic_set(&r->next_id, 0);
	for (int i = 0; i < SHMB_SUB_WORDS; i++)
		uatomic_set(&r->subscribers[i], 0);
	/* Per-thread waiters (2.0, client/waits.c): a thread counts itself and uncounts itself
	 * only inside a section pinned to the record that saw it LIVE with its generation, and
	 * every such section has ended (the grace period): the count left is of threads still
	 * asleep or on their way out (they find the generation changed and leave the count to
	 * us) and of dead ones. Reset, and those still asleep woken (wake_seq bumped first, as a
	 * waker does): they were woken at the unlink already; this only makes sure. */
	if (uatomic_read(&r->waiters)) {
		uatomic_set(&r->waiters, 0);
		uatomic_add(&r->wake_seq, 1);
		wake_futex_wake(&r->wake_seq);
	}
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
	if (!b->scoped && b->seg.cfg.max_workers) {
		/* Without it every section counts as unscoped: slower to reclaim, still safe. */
		b->scoped = calloc((size_t)b->seg.cfg.max_workers * b->seg.cfg.readers_per_worker,
				   sizeof *b->scoped);
	}
	struct readers_view v;
	int ok = readers_scan(b, &v) == 0;
	uint32_t kept = 0, done = 0;
	for (uint32_t i = 0; i < b->n_pending; i++) {
		uint32_t idx = b->pending[i];
		struct shmb_session_rec *r = seg_rec(&b->seg, idx);
		if (r && ok && !held(b, &v, idx, uatomic_read(&r->retire_gp))) {
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

/* Publishes slot w's stall line (only stores what changed: shmctl reads it without locks). */
static void stall_publish(struct shmb_worker *wk, int64_t since, int32_t tid, uint32_t k,
			  uint32_t pin)
{
	if (uatomic_read(&wk->stalled_since_ms) == since && uatomic_read(&wk->stalled_tid) == tid)
		return;
	uatomic_set(&wk->stalled_tid, tid);
	uatomic_set(&wk->stalled_slot, k);
	uatomic_set(&wk->stalled_pin, pin);
	cmm_smp_wmb(); /* the details before the time that says they are valid */
	uatomic_set(&wk->stalled_since_ms, since);
}

void brk_stall_run(struct brk *b)
{
	const struct shmb_seg *seg = &b->seg;
	int64_t mono = shmb_mono_ms();
	if (mono < b->next_stall_mono)
		return;
	b->next_stall_mono = mono + BRK_STALL_SCAN_MS;
	uint32_t rpw = seg->cfg.readers_per_worker;
	if (!b->stall && seg->cfg.max_workers) {
		b->stall = calloc((size_t)seg->cfg.max_workers * rpw, sizeof *b->stall);
		if (!b->stall)
			return; /* no stall reports; nothing else depends on them */
	}
	struct shmb_seg_header *h = seg_hdr(seg);
	int64_t now = shmb_now_ms();
	int bump = 0;
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++) {
		struct shmb_worker *wk = seg_worker(seg, w);
		int live = uatomic_read(&wk->state) == SHMB_WORKER_LIVE;
		int64_t oldest = 0;
		int32_t tid = 0;
		uint32_t oldest_k = 0, oldest_pin = 0;
		for (uint32_t k = 0; k < rpw; k++) {
			struct brk_stall *st = &b->stall[(size_t)w * rpw + k];
			const struct shmb_reader *rd = seg_reader(seg, w, k);
			uint32_t pin;
			uint64_t ctr = rcu_reader_peek(rd, &pin);
			cmm_smp_rmb(); /* ctr before rcu_gp: a section may enter at rcu_gp meanwhile */
			uint64_t gp = uatomic_read(&h->rcu_gp);
			if (!live || ctr == 0 || ctr >= gp) {
				st->ctr = 0;
				bump |= live && ctr != 0;
				continue;
			}
			if (st->ctr != ctr) {
				/* First sighting in an older grace period: from now on this ctr can
				 * only be this section. */
				st->ctr = ctr;
				st->since_ms = now;
				continue;
			}
			if (now - st->since_ms >= SHMB_STALL_MS &&
			    (oldest == 0 || st->since_ms < oldest)) {
				oldest = st->since_ms;
				oldest_k = k;
				oldest_pin = pin;
				tid = uatomic_read(&rd->tid);
			}
		}
		if (oldest && uatomic_read(&wk->stalled_since_ms) == 0)
			brk_log("worker %u (pid %d): thread %d has been inside one read-side section "
				"for %lld ms (%s)",
				w, uatomic_read(&wk->pid), tid, (long long)(now - oldest),
				oldest_pin ? "scoped to one record"
					   : "unscoped: holds up reclamation");
		stall_publish(wk, oldest, tid, oldest_k, oldest_pin);
	}
	if (bump) {
		/* A section entered at the current rcu_gp: move it on, so the next scan can tell
		 * that section from later ones (see the file comment). */
		uatomic_set(&h->rcu_gp, uatomic_read(&h->rcu_gp) + 1);
	}
}
