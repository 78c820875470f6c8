/* gaps.c - settling a dead publisher's uncommitted claims into gap records.
 *
 * A worker killed between its claim (fetch-and-add on next_id) and its commit leaves ids that
 * would never commit and wedge every cursor there. Its crash ledger (one entry per reader slot,
 * docs/events.md) says which session and which ids: exact ids, or only a lower bound L when it
 * died around the fetch-and-add. workers.c leaves such a worker's slot DEAD with its ledger
 * entries in place; here each taken entry of a DEAD slot is settled, now or on a later tick:
 *
 *  - exact id: each of its nslots ids still uncommitted becomes a committed gap (evr_write_gap);
 *    an id whose slot an older lap still holds busy is retried later.
 *  - lower bound L: with H = next_id read now, the dead claim (if it happened) lies in [L, H].
 *    Live publishers of the same session whose ledger still holds only a lower bound B <= H
 *    may own ids in [B, H] too. Every uncommitted id in [L, H] below the smallest such B that
 *    no live ledger claims exactly is the dead publisher's: a gap, at once; the ids from B on
 *    wait until those publishers have recorded their exact ids (or finished).
 *    Why the live entries are visible: a publisher stores its entry before its fetch-and-add (a
 *    full barrier), and we read next_id, then fence, then the ledgers.
 *
 * Durability: the segment, not this process, holds what is still to settle. An entry is cleared
 * only once its gaps are written (or nothing is left to write), and the slot turns FREE (and may
 * be handed to a new worker) only once all its entries are clear. A broker killed meanwhile
 * leaves the slot DEAD with its entries, and the next broker's adoption settles it again
 * (workers.c); every step is idempotent (a gap is written only over an id still uncommitted).
 * "Live" ledgers are those of LIVE slots: a DEAD slot's entries are the ones being settled.
 *
 * An attribute writer's entry (SHMB_LEDGER_ATTR) is settled here too, by broker/attrs.c: the
 * cells it names that nobody else holds are freed, then the entry is cleared.
 *
 * Gap records are commits, so the session's armed subscribers are woken after writing them.
 * Nothing here blocks: a claim that cannot be settled yet stays and the timer runs fast. A
 * session recycled meanwhile (another generation) needs nothing: recycling cleared its ring.
 *
 * Ownerless claims (brk_gaps_ownerless_run). A descriptor can also be left busy, or a claimed
 * id unwritten, by no dead worker: a publisher that gave up waiting for an older lap
 * (EVR_PUB_ABANDONED) released its ledger entry with ids unwritten, or a stray write set a
 * descriptor to "busy" with no owner at all. Publishers would wait on it (each gives up after
 * EVR_WAIT_MS) and cursors stop at it. Every BRK_OWNERLESS_SCAN_MS the broker reads, for a
 * budget of LIVE sessions (round robin): next_id H, then every descriptor's seq, then (after a
 * full fence) every taken ledger entry of LIVE and DEAD slots. A target is
 *   - a busy id X <= H that no entry covers (exact range, or a lower bound <= X), or
 *   - the id Y of the ring's window [H - n + 1, H] that maps to a slot holding an older,
 *     committed id, when no entry covers Y.
 * Why "no entry covers it" means no publisher will ever finish it: a publisher stores its entry
 * (a lower bound) before its fetch-and-add (a full barrier) and releases it only after its
 * commit (or its gaps). Y <= H was claimed before we read H, so its claimer's entry was stored
 * before our ledger reads; X was busy when we read seq, so its owner took it after storing its
 * entry. If we find no entry, the owner either finished (the seq changed: evr_write_gap
 * re-reads it and writes nothing over a commit) or abandoned it. A busy X > H is no claim at
 * all (garbage: verify reports it); it is left alone. A target must be seen the same way (same
 * seq) again BRK_OWNERLESS_CONFIRM_MS later (the timer ticks fast meanwhile) before its gap is
 * written: a margin, not needed by the argument. The gap
 * goes through evr_write_gap, which writes only over id|BUSY or an older committed id (CAS), and
 * waits (-1, next scan) while an older lap holds the slot. */
#include <stdlib.h>
#include <string.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "broker.h"
#include "clock.h"
#include "evring.h"
#include "fault.h"
#include "ledger.h"

/* A DEAD slot's claim, copied out of its ledger entry. */
struct claim {
	uint32_t worker; /* the dead worker's slot, for the log */
	uint32_t idx, gen, nslots;
	uint64_t id; /* first claimed id, or a lower bound | SHMB_LEDGER_LB */
};

/* 1 when worker slot w is LIVE: its ledger entries belong to a running publisher. */
static int slot_live(const struct shmb_seg *seg, uint32_t w)
{
	return uatomic_read(&seg_worker(seg, w)->state) == SHMB_WORKER_LIVE;
}

/* The smallest lower bound <= hi that a live ledger entry for the same session holds (a live
 * publisher that has not recorded its exact id yet: its id, if claimed, is >= that bound), or
 * UINT64_MAX when there is none. */
static uint64_t live_lower_bound(const struct brk *b, const struct claim *c, uint64_t hi)
{
	uint64_t min = UINT64_MAX;
	const struct shmb_seg *seg = &b->seg;
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++)
		for (uint32_t k = 0; slot_live(seg, w) && k < seg->cfg.readers_per_worker; k++) {
			const struct shmb_ledger_entry *e = &seg_reader(seg, w, k)->ledger;
			if (uatomic_read(&e->kind) != SHMB_LEDGER_CLAIM)
				continue;
			cmm_smp_rmb(); /* kind before the fields: the publisher wrote them first */
			uint64_t id = uatomic_read(&e->id);
			uint64_t lb = id & ~SHMB_LEDGER_LB;
			if (uatomic_read(&e->session_idx) == c->idx &&
			    uatomic_read(&e->session_gen) == c->gen && (id & SHMB_LEDGER_LB) &&
			    lb <= hi && lb < min)
				min = lb;
		}
	return min;
}

/* 1 when a live ledger entry for the same session claims exactly id. */
static int live_claims(const struct brk *b, const struct claim *c, uint64_t id)
{
	const struct shmb_seg *seg = &b->seg;
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++)
		for (uint32_t k = 0; slot_live(seg, w) && k < seg->cfg.readers_per_worker; k++) {
			const struct shmb_ledger_entry *e = &seg_reader(seg, w, k)->ledger;
			if (uatomic_read(&e->kind) != SHMB_LEDGER_CLAIM)
				continue;
			cmm_smp_rmb();
			uint64_t first = uatomic_read(&e->id);
			uint64_t n = uatomic_read(&e->nslots);
			if (uatomic_read(&e->session_idx) == c->idx &&
			    uatomic_read(&e->session_gen) == c->gen && !(first & SHMB_LEDGER_LB) &&
			    id >= first && id - first < (n ? n : 1))
				return 1;
		}
	return 0;
}

/* Returns 1 when the claim is settled (or needs nothing), 0 to retry on a later tick. */
static int settle_one(struct brk *b, const struct claim *c, uint32_t *written)
{
	const struct shmb_seg *seg = &b->seg;
	struct shmb_session_rec *r = seg_rec(seg, c->idx);
	if (!r || uatomic_read(&r->gen) != c->gen || uatomic_read(&r->state) == SHMB_REC_FREE)
		return 1;
	uint64_t n = seg->cfg.ring_events;
	int64_t now = shmb_now_ms();
	int again = 0;
	if (!(c->id & SHMB_LEDGER_LB)) {
		uint64_t k = c->nslots < 1 ? 1 : c->nslots > n ? n : c->nslots;
		for (uint64_t j = 0; j < k && c->id; j++) {
			int rc = evr_write_gap(seg, c->idx, c->id + j, now);
			if (rc > 0)
				(*written)++;
			else if (rc < 0)
				again = 1;
		}
		return !again;
	}
	uint64_t lo = c->id & ~SHMB_LEDGER_LB;
	uint64_t hi = uatomic_read(&r->next_id);
	/* next_id before the ledgers: pairs with the full barrier of each publisher's
	 * fetch-and-add, which follows its ledger store. */
	cmm_smp_mb();
	if (lo == 0)
		lo = 1;
	if (hi < lo)
		return 1; /* it died before its fetch-and-add: it claimed nothing */
	if (hi - lo >= n)
		lo = hi - n + 1; /* older ids left the ring: nobody can wait for them */
	/* Ids below every live lower bound belong to no live publisher: settle those now, and
	 * the rest once those publishers have recorded their exact ids (a publisher preempted
	 * between its ledger store and its fetch-and-add must not hold up ids it cannot own). */
	uint64_t lb = live_lower_bound(b, c, hi);
	uint64_t top = lb <= hi ? lb - 1 : hi;
	if (lb <= hi)
		again = 1;
	for (uint64_t id = lo; id <= top; id++) {
		if (evr_settled(seg, c->idx, id) || live_claims(b, c, id))
			continue;
		int rc = evr_write_gap(seg, c->idx, id, now);
		if (rc > 0)
			(*written)++;
		else if (rc < 0)
			again = 1;
	}
	return !again;
}

/* A dead attribute writer's entry (broker/attrs.c): 1 when settled and cleared. */
static int settle_attr(struct brk *b, uint32_t w, struct shmb_ledger_entry *e)
{
	cmm_smp_rmb(); /* kind before the entry's fields (written before it) */
	uint32_t idx = uatomic_read(&e->session_idx), freed = 0;
	if (!brk_attr_settle(b, idx, uatomic_read(&e->session_gen), uatomic_read(&e->id), &freed))
		return 0;
	if (freed)
		brk_log("worker %u died changing an attribute: %u cell%s freed in session record %u",
			w, freed, freed == 1 ? "" : "s", idx);
	/* Settled: only now may the entry go (the cells are free in the segment). */
	uatomic_set(&e->id, 0);
	cmm_smp_wmb();
	uatomic_set(&e->kind, SHMB_LEDGER_FREE);
	return 1;
}

/* Settles what it can of DEAD slot w's entries; returns how many remain. */
static uint32_t settle_slot(struct brk *b, uint32_t w)
{
	const struct shmb_seg *seg = &b->seg;
	uint32_t left = 0;
	for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
		struct shmb_ledger_entry *e = &seg_reader(seg, w, k)->ledger;
		uint32_t kind = uatomic_read(&e->kind);
		if (kind == SHMB_LEDGER_ATTR) {
			left += settle_attr(b, w, e) ? 0 : 1;
			continue;
		}
		if (kind != SHMB_LEDGER_CLAIM)
			continue;
		cmm_smp_rmb(); /* kind before the entry's fields (written before it) */
		struct claim c = {
			.worker = w,
			.idx = uatomic_read(&e->session_idx),
			.gen = uatomic_read(&e->session_gen),
			.nslots = uatomic_read(&e->nslots),
			.id = uatomic_read(&e->id),
		};
		uint32_t written = 0;
		int done = settle_one(b, &c, &written);
		if (written) {
			/* Test-only: committed, nobody woken yet (the next broker's adoption
			 * wakes every waiter: tests/test_redteam11_waits.c). */
			SHMB_FAULT("broker.gap.written");
			/* A gap is a commit: wake the session's armed subscribers, as a publisher
			 * does after its commit (brk_wake_subscribers fences first). */
			struct shmb_session_rec *r = seg_rec(seg, c.idx);
			if (r)
				brk_wake_subscribers(b, r);
			brk_ctr_add(b, SHMB_CTR_GAPS_WRITTEN, written);
			brk_log("worker %u died mid-publish: %u gap record%s written in session "
				"record %u",
				w, written, written == 1 ? "" : "s", c.idx);
		}
		if (done) {
			/* Settled: only now may the entry go (the gaps are in the segment). */
			cmm_smp_wmb();
			uatomic_set(&e->kind, SHMB_LEDGER_FREE);
		} else {
			left++;
		}
	}
	return left;
}

void brk_gaps_run(struct brk *b)
{
	const struct shmb_seg *seg = &b->seg;
	uint32_t before = b->n_claims, total = 0;
	for (uint32_t w = 0; b->n_claims && w < seg->cfg.max_workers; w++) {
		struct brk_wslot *ws = &b->wslots[w];
		if (!ws->claims)
			continue;
		uint32_t left = settle_slot(b, w);
		total += left;
		ws->claims = left;
		if (left == 0) {
			/* Every entry clear before FREE: pairs with admission's reuse of the slot
			 * and with verify (a FREE slot holds no claim). */
			cmm_smp_wmb();
			uatomic_set(&seg_worker(seg, w)->state, SHMB_WORKER_FREE);
			brk_log("worker %u: its uncommitted claims are settled; slot free", w);
		}
	}
	b->n_claims = total;
	if (before != total)
		brk_timer_update(b);
}

/* ---- ownerless claims (see the file comment) ---- */

static struct brk_ownerless *cand_find(struct brk *b, uint32_t idx, uint32_t gen, uint32_t slot)
{
	for (uint32_t i = 0; i < BRK_OWNERLESS_CANDIDATES; i++) {
		struct brk_ownerless *o = &b->ownerless[i];
		if (o->used && o->idx == idx && o->gen == gen && o->slot == slot)
			return o;
	}
	return NULL;
}

static struct brk_ownerless *cand_new(struct brk *b)
{
	for (uint32_t i = 0; i < BRK_OWNERLESS_CANDIDATES; i++)
		if (!b->ownerless[i].used)
			return &b->ownerless[i];
	return NULL; /* full: the target is seen again on a later scan */
}

/* The target of slot s of a ring whose last claimed id is h (n slots), given its seq: the id
 * to settle, or 0 when the slot holds nothing unsettled. */
static uint64_t slot_target(uint64_t seq, uint32_t s, uint64_t h, uint32_t n)
{
	uint64_t v = seq & ~SHMB_DESC_BUSY;
	if (seq & SHMB_DESC_BUSY)
		return v != 0 && v <= h ? v : 0;
	if (h == 0)
		return 0;
	uint64_t lo = h >= n ? h - n + 1 : 1;
	uint64_t y = lo + ((s - lo) & (uint64_t)(n - 1)); /* the window's id of slot s */
	return y <= h && v < y ? y : 0;
}

/* Scratch buffers, allocated on first use. Returns 0, or -1 (try again next tick). */
static int ownerless_alloc(struct brk *b, uint32_t budget)
{
	const struct shmb_seg *seg = &b->seg;
	if (b->ownerless_seq)
		return 0;
	b->ownerless_seq = malloc((size_t)budget * sizeof *b->ownerless_seq);
	b->ownerless_claims = malloc((size_t)seg->cfg.max_workers * seg->cfg.readers_per_worker *
				     sizeof *b->ownerless_claims);
	if (b->ownerless_seq && b->ownerless_claims)
		return 0;
	free(b->ownerless_seq);
	free(b->ownerless_claims);
	b->ownerless_seq = NULL;
	b->ownerless_claims = NULL;
	return -1;
}

/* Second sightings: each candidate's slot is read again (next_id, then seq), then after a full
 * fence the ledgers; one still the same and still claimed by nobody becomes a gap. */
static void ownerless_confirm(struct brk *b, int64_t mono)
{
	const struct shmb_seg *seg = &b->seg;
	const uint32_t n = seg->cfg.ring_events;
	uint64_t heads[BRK_OWNERLESS_CANDIDATES], seqs[BRK_OWNERLESS_CANDIDATES];
	for (uint32_t i = 0; i < BRK_OWNERLESS_CANDIDATES; i++) {
		struct brk_ownerless *o = &b->ownerless[i];
		if (!o->used || mono - o->seen_mono < BRK_OWNERLESS_CONFIRM_MS)
			continue;
		struct shmb_session_rec *r = seg_rec(seg, o->idx);
		if (!r || uatomic_read(&r->state) != SHMB_REC_LIVE ||
		    uatomic_read(&r->gen) != o->gen) {
			o->used = 0; /* deleted or recycled: its ring needs nothing */
			continue;
		}
		heads[i] = uatomic_read(&r->next_id);
		cmm_smp_rmb(); /* next_id before the descriptor */
		seqs[i] = uatomic_read(&seg_desc(seg, o->idx, o->slot)->seq);
	}
	/* The ledgers after a full fence: pairs with each publisher's fetch-and-add (after its
	 * ledger store) and its commit (before its ledger release). */
	cmm_smp_mb();
	uint32_t nclaims = ledger_snapshot(seg, b->ownerless_claims);
	int64_t now = shmb_now_ms();
	for (uint32_t i = 0; i < BRK_OWNERLESS_CANDIDATES; i++) {
		struct brk_ownerless *o = &b->ownerless[i];
		if (!o->used || mono - o->seen_mono < BRK_OWNERLESS_CONFIRM_MS)
			continue;
		if (seqs[i] != o->seq || slot_target(seqs[i], o->slot, heads[i], n) != o->id ||
		    ledger_any_covers(b->ownerless_claims, nclaims, o->idx, o->gen, o->id)) {
			o->used = 0; /* it moved: committed, or someone owns it */
			continue;
		}
		int rc = evr_write_gap(seg, o->idx, o->id, now);
		if (rc < 0)
			continue; /* an older lap still holds the slot: try again */
		o->used = 0;
		if (rc == 0)
			continue;
		brk_log("session record %u: event id %llu was %s, and no live publisher's crash ledger "
			"claims it: written as a gap",
			o->idx, (unsigned long long)o->id,
			(o->seq & SHMB_DESC_BUSY) ? "left busy" : "claimed but never written");
		struct shmb_session_rec *r = seg_rec(seg, o->idx);
		if (r)
			brk_wake_subscribers(b, r); /* a gap is a commit (fences first) */
		brk_ctr_add(b, SHMB_CTR_GAPS_WRITTEN, 1);
	}
}

/* First sightings: a chunk of LIVE sessions (round robin), next_id then every descriptor, then
 * after a full fence the ledgers; each target nobody claims becomes a candidate. */
static void ownerless_scan(struct brk *b, int64_t mono, uint32_t budget)
{
	const struct shmb_seg *seg = &b->seg;
	const uint32_t n = seg->cfg.ring_events;
	uint32_t recs = budget / n, nrec = 0;
	uint32_t idxs[BRK_OWNERLESS_RECS], gens[BRK_OWNERLESS_RECS];
	uint64_t heads[BRK_OWNERLESS_RECS];
	if (recs > BRK_OWNERLESS_RECS)
		recs = BRK_OWNERLESS_RECS;
	for (; nrec < recs && nrec < b->live; nrec++) {
		if (b->ownerless_pos >= b->live)
			b->ownerless_pos = 0;
		uint32_t idx = b->live_list[b->ownerless_pos++];
		struct shmb_session_rec *r = seg_rec(seg, idx);
		idxs[nrec] = idx;
		gens[nrec] = r ? uatomic_read(&r->gen) : 0;
		heads[nrec] = r ? uatomic_read(&r->next_id) : 0;
		cmm_smp_rmb(); /* next_id before the descriptors */
		for (uint32_t sl = 0; sl < n; sl++)
			b->ownerless_seq[(size_t)nrec * n + sl] =
				r ? uatomic_read(&seg_desc(seg, idx, sl)->seq) : 0;
	}
	cmm_smp_mb(); /* as in ownerless_confirm */
	uint32_t nclaims = ledger_snapshot(seg, b->ownerless_claims);
	for (uint32_t i = 0; i < nrec; i++)
		for (uint32_t sl = 0; sl < n; sl++) {
			uint64_t seq = b->ownerless_seq[(size_t)i * n + sl];
			uint64_t id = slot_target(seq, sl, heads[i], n);
			if (id == 0 ||
			    ledger_any_covers(b->ownerless_claims, nclaims, idxs[i], gens[i], id) ||
			    cand_find(b, idxs[i], gens[i], sl))
				continue;
			struct brk_ownerless *o = cand_new(b);
			if (o)
				*o = (struct brk_ownerless){ .used = 1,
							     .idx = idxs[i],
							     .gen = gens[i],
							     .slot = sl,
							     .seq = seq,
							     .id = id,
							     .seen_mono = mono };
		}
}

void brk_gaps_ownerless_run(struct brk *b)
{
	const struct shmb_seg *seg = &b->seg;
	const uint32_t n = seg->cfg.ring_events;
	uint32_t budget = BRK_OWNERLESS_BUDGET > n ? BRK_OWNERLESS_BUDGET : n;
	if (ownerless_alloc(b, budget) < 0)
		return;
	int64_t mono = shmb_mono_ms();
	uint32_t before = b->n_ownerless;
	if (before)
		ownerless_confirm(b, mono);
	if (mono >= b->next_ownerless_mono) {
		b->next_ownerless_mono = mono + BRK_OWNERLESS_SCAN_MS;
		ownerless_scan(b, mono, budget);
	}
	b->n_ownerless = 0;
	for (uint32_t i = 0; i < BRK_OWNERLESS_CANDIDATES; i++)
		b->n_ownerless += b->ownerless[i].used;
	if ((before != 0) != (b->n_ownerless != 0))
		brk_timer_update(b); /* fast ticks while a candidate awaits its confirmation */
}
