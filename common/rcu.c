/* rcu.c - the write side of the cross-process RCU (see rcu.h), used by the broker alone. */
#include "rcu.h"

#include <linux/membarrier.h>
#include <sys/syscall.h>
#include <unistd.h>

static int membarrier(int cmd, unsigned int flags)
{
	return (int)syscall(__NR_membarrier, cmd, flags, 0);
}

int rcu_membarrier_available(void)
{
	int mask = membarrier(MEMBARRIER_CMD_QUERY, 0);
	return mask > 0 && (mask & MEMBARRIER_CMD_GLOBAL_EXPEDITED) &&
	       (mask & MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED);
}

int rcu_membarrier_register(void)
{
	return membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED, 0) == 0;
}

int rcu_writer_barrier(const struct shmb_seg *seg)
{
	cmm_smp_mb();
	if (seg->flags & SHMB_SEG_F_MEMBARRIER) {
		/* Every registered reader executes a full barrier before this returns. If the
		 * expedited command fails, the slower global one (an RCU grace period of the
		 * kernel) gives the same guarantee; if both fail, readers have had no barrier and
		 * the caller must not rely on one. */
		if (membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0) != 0 &&
		    membarrier(MEMBARRIER_CMD_GLOBAL, 0) != 0)
			return -1;
	}
	cmm_smp_mb();
	return 0;
}

uint64_t rcu_retire_mark(const struct shmb_seg *seg)
{
	struct shmb_seg_header *h = seg_hdr(seg);
	/* The unlink (and the record's state) must be visible to every reader before the new
	 * counter value is: a reader that reads the new value then finds neither the record on a
	 * chain nor the record LIVE. Readers run with only a compiler barrier between their load
	 * of rcu_gp and their loads of the index (membarrier mode), so a fence here alone is not
	 * enough on weakly ordered CPUs: the membarrier orders the readers' side too (as
	 * liburcu's memb flavor does with smp_mb_master() before flipping its phase). A failed
	 * barrier is harmless here: rcu_readers_past() refuses to report a grace period until a
	 * barrier succeeds. */
	(void)rcu_writer_barrier(seg);
	uint64_t gp = uatomic_read(&h->rcu_gp) + 1;
	uatomic_set(&h->rcu_gp, gp);
	cmm_smp_mb();
	return gp;
}

int rcu_readers_past(const struct shmb_seg *seg, uint64_t gp)
{
	if (rcu_writer_barrier(seg) < 0)
		return 0;
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++) {
		for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
			uint64_t v = uatomic_read(&seg_reader(seg, w, k)->ctr);
			if (v != 0 && v < gp)
				return 0;
		}
	}
	return rcu_writer_barrier(seg) == 0;
}
