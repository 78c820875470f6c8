/* rcu.h - cross-process RCU over the segment, modelled on liburcu's memb flavor.
 *
 * liburcu's flavors track the threads of one process; ours tracks reader slots in the segment.
 * Read side (workers): entering a section stores the current grace-period counter rcu_gp into
 * the thread's reader slot, leaving stores 0 ("quiescent"). Write side (the broker only): after
 * unlinking a record it bumps rcu_gp and notes the new value in the record (retire_gp); the record
 * may be recycled once every reader slot is 0 or >= retire_gp, i.e. every reader that could have
 * seen the record has left its section. Slots of dead workers are cleared by the broker.
 *
 * Fences. The read side needs a full fence between the slot store and the section's loads (the
 * store-buffer pattern against the writer's unlink store and slot load). As in memb, when the
 * broker can use membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED) and the reader registered for it,
 * the reader's fence is only a compiler barrier and the writer's membarrier() supplies the real
 * one on every running reader; otherwise both sides use cmm_smp_mb(). docs/rcu.md has the proof.
 * The counter is 64 bits and only grows, so there is no phase flip and no wrap-around.
 *
 * Scoped sections (layout 1.2). A section that works on one record known in advance (a handle's:
 * publish, cursor_next, session_stat) publishes that record in the slot's pin (index + 1) before
 * its ctr; pin 0 means the section may reach any record (a lookup walking chains). The reclaimer
 * lets a retired record pass a slot that is still in an older grace period but pinned to another
 * record, so a thread stopped inside a publish holds up only that one record, not every deletion
 * (docs/rcu.md, "Scoped sections", has the ordering argument). */
#ifndef SHMB_RCU_H
#define SHMB_RCU_H

#include <stdint.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "seg.h"

/* Enter a read-side section on reader slot r, scoped to record pin - 1 (pin 0: unscoped, may
 * reach any record). fenced: 1 when this process could not register for global expedited
 * membarrier (or the segment does not use it): use a full fence. */
static inline void rcu_reader_enter_pinned(const struct shmb_seg *seg, struct shmb_reader *r,
					   int fenced, uint32_t pin)
{
	/* The previous section's exit store of ctr = 0 before the new pin, and the pin before the
	 * new ctr: pairs with the read barrier between the reclaimer's load of ctr and its load of
	 * pin (rcu_reader_blocks), so a pin it reads belongs to the section whose ctr it read or
	 * to a later one (docs/rcu.md). */
	cmm_smp_wmb();
	uatomic_set(&r->pin, pin);
	cmm_smp_wmb();
	uint64_t gp = uatomic_read(&seg_hdr(seg)->rcu_gp);
	uatomic_set(&r->ctr, gp);
	/* Pairs with rcu_writer_barrier() in rcu_readers_past(): orders the slot store before
	 * the section's loads of the index. */
	if (fenced)
		cmm_smp_mb();
	else
		cmm_barrier();
}

/* Enter an unscoped read-side section (a lookup: it may reach any record). */
static inline void rcu_reader_enter(const struct shmb_seg *seg, struct shmb_reader *r, int fenced)
{
	rcu_reader_enter_pinned(seg, r, fenced, 0);
}

/* Inside a section scoped to a record: widen it to "any record" before touching another one
 * (a nested section of a different scope). The store of 0 is ordered before the loads that
 * follow like the ctr store of rcu_reader_enter (the store-buffer pattern against the
 * reclaimer's unlink and its load of pin). */
static inline void rcu_reader_widen(struct shmb_reader *r, int fenced)
{
	uatomic_set(&r->pin, 0);
	if (fenced)
		cmm_smp_mb();
	else
		cmm_barrier();
}

/* Leave the section: the section's loads are ordered before the store of 0 (pairs with the
 * writer's barrier after rcu_readers_past() and before it reuses a record). */
static inline void rcu_reader_exit(struct shmb_reader *r, int fenced)
{
	if (fenced)
		cmm_smp_mb();
	else
		cmm_barrier();
	uatomic_set(&r->ctr, 0);
}

/* Writer side (broker). */

/* Reclaimer's view of one reader slot, read between two rcu_writer_barrier() calls: ctr, then
 * (read barrier) pin. *pin is the record the section with that ctr is scoped to, + 1, or a
 * later section's pin (then the section of ctr is over); 0 for an unscoped section. */
static inline uint64_t rcu_reader_peek(const struct shmb_reader *r, uint32_t *pin)
{
	uint64_t ctr = uatomic_read(&r->ctr);
	/* Pairs with the write barrier between the reader's pin and ctr stores (enter). */
	cmm_smp_rmb();
	*pin = uatomic_read(&r->pin);
	return ctr;
}

/* 1 when a slot seen as (ctr, pin) may still hold record idx retired at retire_gp. */
static inline int rcu_reader_blocks(uint64_t ctr, uint32_t pin, uint32_t idx, uint64_t retire_gp)
{
	return ctr != 0 && ctr < retire_gp && (pin == 0 || pin == idx + 1);
}

/* Registers this process for MEMBARRIER_CMD_GLOBAL_EXPEDITED. Returns 1 when registered (the
 * reader may run unfenced if the segment has SHMB_SEG_F_MEMBARRIER), 0 otherwise. */
int rcu_membarrier_register(void);
/* 1 when the kernel offers global expedited membarrier (broker, at segment creation). */
int rcu_membarrier_available(void);
/* Full barrier on this thread and, with SHMB_SEG_F_MEMBARRIER, on every registered thread.
 * Returns 0, or -1 when the membarrier system call failed (no barrier on the readers). */
int rcu_writer_barrier(const struct shmb_seg *seg);
/* After an unlink: bumps rcu_gp and returns the value readers must pass (retire_gp). */
uint64_t rcu_retire_mark(const struct shmb_seg *seg);
/* 1 when every reader slot is quiescent or entered at >= gp (so nobody can still hold what
 * was unlinked before gp was marked), 0 otherwise. Issues the barriers itself: after it returns
 * 1 the caller may reuse the memory. */
int rcu_readers_past(const struct shmb_seg *seg, uint64_t gp);

#endif
