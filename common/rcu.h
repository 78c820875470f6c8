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
 * The counter is 64 bits and only grows, so there is no phase flip and no wrap-around. */
#ifndef SHMB_RCU_H
#define SHMB_RCU_H

#include <stdint.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "seg.h"

/* Enter a read-side section on reader slot r. fenced: 1 when this process could not register
 * for global expedited membarrier (or the segment does not use it): use a full fence. */
static inline void rcu_reader_enter(const struct shmb_seg *seg, struct shmb_reader *r, int fenced)
{
	uint64_t gp = uatomic_read(&seg_hdr(seg)->rcu_gp);
	uatomic_set(&r->ctr, gp);
	/* Pairs with rcu_writer_barrier() in rcu_readers_past(): orders the slot store before
	 * the section's loads of the index. */
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
