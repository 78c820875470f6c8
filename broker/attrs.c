/* attrs.c - the broker's side of session attributes: freeing the cells a dead writer held, and
 * zeroing a recycled record's attribute area (docs/attributes.md, "Crash model").
 *
 * A writer names in its crash ledger (id word: SHMB_LEDGER_ATTR_ID | idx | new range << 24 |
 * old range << 40) the cells it may hold: the candidate it allocates (stored before its
 * allocation CAS) and, before its publishing CAS, the block it replaces. Killed, it leaves at
 * most those cells allocated and unreferenced; gaps.c hands its entry here (brk_attr_settle).
 *
 * A cell of the named ranges is freed when, reading in this order:
 *   B   its bitmap word (the cell is set),                              then a full fence,
 *   L1  every LIVE worker's ledger id (no live writer names the cell),  then a full fence,
 *   E   every entry word of the session (none references the cell),     then a full fence,
 *   L2  the live ledger ids again (none names it),
 * with a CAS of the bitmap word from B (its tag changes with every allocation and free, so any
 * change since B fails the CAS; then all is read again). Why a live writer's cell is never taken:
 * the cell's allocation was B or before it (a later one changes the word). Its allocator named it
 * in its ledger before its CAS, so L1 sees that ledger or a later value of it; a later value is
 * stored after the allocator's publishing CAS, so E sees the word naming the cell or a later
 * one. A later word was stored by a writer that named the cell as its old block in its ledger
 * before that CAS, so L2 sees it, or a later value stored after that writer freed the cell: a
 * change of the bitmap word, and the CAS fails. (L1 alone misses a block replaced between L1
 * and E; E before L1 misses one published between E and L1: hence both reads of the ledgers.)
 * A cell a live ledger names is left for a later tick (the entry stays); cells of two dead
 * writers are judged cell by cell, so overlapping ranges leak nothing.
 *
 * Recycling (reclaim.c, after the grace period: no worker is inside a section on the record)
 * zeroes the area: entry words first, then (after a release fence) bitmap and cells, so that
 * shmctl, reading without a section, sees a word change under any copy of zeroed cells. */
#include <string.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "attr.h"
#include "broker.h"

/* Cells of bitmap word wi that LIVE workers' ledgers name for session idx. */
static uint64_t live_cover(const struct brk *b, uint32_t idx, uint32_t wi)
{
	const struct shmb_seg *seg = &b->seg;
	uint64_t cov = 0;
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++) {
		if (uatomic_read(&seg_worker(seg, w)->state) != SHMB_WORKER_LIVE)
			continue;
		for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
			uint64_t id = uatomic_read(&seg_reader(seg, w, k)->ledger.id);
			if (!ATTR_IS_LEDGER_ID(id) || ATTR_LEDGER_IDX(id) != idx)
				continue;
			uint64_t rs[2] = { ATTR_LEDGER_NEW(id), ATTR_LEDGER_OLD(id) };
			for (int i = 0; i < 2; i++)
				if (ATTR_COUNT(rs[i]) &&
				    ATTR_START(rs[i]) / SHMB_ATTR_CELLS_PER_WORD == wi)
					cov |= attr_range_mask(rs[i]);
		}
	}
	return cov;
}

/* Cells of bitmap word wi that entry words of the area reference. */
static uint64_t referenced(const struct attr_area *a, uint32_t wi)
{
	uint64_t ref = 0;
	for (uint32_t i = 0; i < a->nkeys; i++) {
		uint64_t r = uatomic_read(&a->entries[i].word) & ATTR_RANGE_MASK;
		if (ATTR_COUNT(r) && attr_range_ok(a, r) &&
		    ATTR_START(r) / SHMB_ATTR_CELLS_PER_WORD == wi)
			ref |= attr_range_mask(r);
	}
	return ref;
}

/* Frees what it can of one range; returns 1 when nothing of it is left to judge. */
static int settle_range(struct brk *b, const struct attr_area *a, uint32_t idx, uint64_t range,
			uint32_t *freed)
{
	if (!attr_range_ok(a, range))
		return 1; /* a damaged entry names nothing we can free (verify reports areas) */
	uint32_t wi = ATTR_START(range) / SHMB_ATTR_CELLS_PER_WORD;
	uint64_t *bw = &a->bitmap[wi];
	for (int tries = 0; tries < 8; tries++) {
		uint64_t bword = uatomic_read(bw);
		cmm_smp_mb(); /* B before L1 */
		uint64_t mask = attr_range_mask(range) & bword;
		if (!mask)
			return 1;
		uint64_t busy = live_cover(b, idx, wi);
		cmm_smp_mb(); /* L1 before E */
		mask &= ~referenced(a, wi);
		cmm_smp_mb(); /* E before L2 */
		busy |= live_cover(b, idx, wi);
		int later = (mask & busy) != 0;
		mask &= ~busy;
		if (!mask)
			return !later;
		uint64_t next =
			(((bword >> 32) + 1) << 32) | ((bword & ~mask) & UINT64_C(0xffffffff));
		if (uatomic_cmpxchg(bw, bword, next) == bword) {
			*freed += (uint32_t)__builtin_popcountll(mask);
			return !later;
		}
	}
	return 0; /* the word keeps changing: a later tick */
}

int brk_attr_settle(struct brk *b, uint32_t idx, uint32_t gen, uint64_t id, uint32_t *freed)
{
	const struct shmb_seg *seg = &b->seg;
	*freed = 0;
	if (!ATTR_IS_LEDGER_ID(id) || ATTR_LEDGER_IDX(id) != idx)
		return 1; /* killed before naming any cell */
	struct shmb_session_rec *r = seg_rec(seg, idx);
	struct attr_area a;
	if (!r || uatomic_read(&r->gen) != gen || uatomic_read(&r->state) == SHMB_REC_FREE ||
	    attr_area_of(seg, idx, &a) < 0)
		return 1; /* recycled since: the area was zeroed */
	int done = settle_range(b, &a, idx, ATTR_LEDGER_NEW(id), freed);
	if (ATTR_COUNT(ATTR_LEDGER_OLD(id)))
		done &= settle_range(b, &a, idx, ATTR_LEDGER_OLD(id), freed);
	return done;
}

void brk_attr_clear(struct brk *b, uint32_t idx)
{
	struct attr_area a;
	if (attr_area_of(&b->seg, idx, &a) < 0)
		return;
	for (uint32_t i = 0; i < a.nkeys; i++)
		uatomic_set(&a.entries[i].word, 0);
	cmm_smp_wmb(); /* the words before the cells (shmctl's optimistic read) */
	for (uint32_t i = 0; i < a.nkeys; i++)
		uatomic_set(&a.entries[i].tag, 0);
	memset(a.bitmap, 0, (size_t)a.nwords * sizeof(uint64_t));
	memset(a.cells, 0, (size_t)a.ncells * SHMB_ATTR_CELL);
}
