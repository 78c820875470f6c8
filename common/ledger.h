/* ledger.h - the crash ledger's read side, in one place: what a taken entry claims, and whether
 * a claim may own an event id.
 *
 * The writer is shmb_publish (client/events.c): it fills session_idx, session_gen, nslots and a
 * lower bound of the id (id | SHMB_LEDGER_LB), then (wmb) stores kind = CLAIM, then claims with
 * a fetch-and-add (a full barrier) and stores the exact id; it frees the entry (kind first) only
 * after its commit or its gaps (docs/events.md). The readers are the broker, settling a dead
 * worker's claims and ownerless ones (broker/gaps.c), and `shmctl verify` judging a busy
 * descriptor (common/verify.c). */
#ifndef SHMB_LEDGER_H
#define SHMB_LEDGER_H

#include <stdint.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "layout.h"
#include "seg.h"

/* A copy of one taken entry. */
struct ledger_claim {
	uint32_t idx, gen; /* the session record and its generation */
	uint32_t nslots;   /* ids the claim takes, >= 1 */
	uint64_t id;       /* first id, or a lower bound | SHMB_LEDGER_LB */
};

/* Copies the entry e into *out when it is taken (a claim): 1; 0 when free. */
static inline int ledger_read(const struct shmb_ledger_entry *e, struct ledger_claim *out)
{
	if (uatomic_read(&e->kind) != SHMB_LEDGER_CLAIM)
		return 0;
	cmm_smp_rmb(); /* kind before the fields: pairs with the publisher's wmb before kind */
	uint32_t ns = uatomic_read(&e->nslots);
	*out = (struct ledger_claim){ .idx = uatomic_read(&e->session_idx),
				      .gen = uatomic_read(&e->session_gen),
				      .nslots = ns ? ns : 1,
				      .id = uatomic_read(&e->id) };
	return 1;
}

/* 1 when claim c may own event `id` of record (idx, gen): an exact claim whose ids include it,
 * or a lower bound <= id (a publisher between its ledger store and its exact id). */
static inline int ledger_covers(const struct ledger_claim *c, uint32_t idx, uint32_t gen,
				uint64_t id)
{
	if (c->idx != idx || c->gen != gen)
		return 0;
	uint64_t first = c->id & ~SHMB_LEDGER_LB;
	if (c->id & SHMB_LEDGER_LB)
		return first <= id;
	return id >= first && id - first < c->nslots;
}

/* Copies every taken entry of LIVE and DEAD workers into out (room for max_workers *
 * readers_per_worker); returns how many. A caller judging "nobody claims it" reads the ring
 * first and fences before this (docs/events.md, "Ownerless claims"). */
static inline uint32_t ledger_snapshot(const struct shmb_seg *seg, struct ledger_claim *out)
{
	uint32_t n = 0;
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++) {
		uint32_t st = uatomic_read(&seg_worker(seg, w)->state);
		if (st != SHMB_WORKER_LIVE && st != SHMB_WORKER_DEAD)
			continue;
		for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++)
			n += (uint32_t)ledger_read(&seg_reader(seg, w, k)->ledger, &out[n]);
	}
	return n;
}

/* 1 when one of the n claims may own event `id` of record (idx, gen). */
static inline int ledger_any_covers(const struct ledger_claim *c, uint32_t n, uint32_t idx,
				    uint32_t gen, uint64_t id)
{
	for (uint32_t i = 0; i < n; i++)
		if (ledger_covers(&c[i], idx, gen, id))
			return 1;
	return 0;
}

#endif
