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

void rcu_writer_barrier(const struct shmb_seg *seg)
{
	cmm_smp_mb();
	if (seg->flags & SHMB_SEG_F_MEMBARRIER) {
		/* Every registered reader executes a full barrier before this returns. A failure
		 * here would break the read side's assumption: fall back to the slow but safe path
		 * of a global (RCU-based) kernel barrier. */
		if (membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED, 0) != 0)
			membarrier(MEMBARRIER_CMD_GLOBAL, 0);
	}
	cmm_smp_mb();
}

uint64_t rcu_retire_mark(const struct shmb_seg *seg)
{
	struct shmb_seg_header *h = seg_hdr(seg);
	/* The unlink store is ordered before the new counter value: a reader that reads the new
	 * value cannot then find the unlinked record. */
	cmm_smp_mb();
	uint64_t gp = uatomic_read(&h->rcu_gp) + 1;
	uatomic_set(&h->rcu_gp, gp);
	cmm_smp_mb();
	return gp;
}

int rcu_readers_past(const struct shmb_seg *seg, uint64_t gp)
{
	rcu_writer_barrier(seg);
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++) {
		for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
			uint64_t v = uatomic_read(&seg_reader(seg, w, k)->ctr);
			if (v != 0 && v < gp)
				return 0;
		}
	}
	rcu_writer_barrier(seg);
	return 1;
}
