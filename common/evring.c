/* evring.c - claim/commit and validated reads of a session's event ring (see evring.h and
 * docs/events.md for the protocol and why it is safe). */
#include "evring.h"

#include <sched.h>
#include <string.h>
#include <time.h>

#include <urcu/uatomic.h>

#include "clock.h"
#include "fault.h"
#include "shmb.h"

/* Copies len bytes starting at ring position pos out of a ring of size rb (power of two). */
static void ring_copy_out(const uint8_t *ring, uint64_t rb, uint64_t pos, void *dst, size_t len)
{
	uint64_t off = pos & (rb - 1);
	size_t first = (size_t)(rb - off) < len ? (size_t)(rb - off) : len;
	memcpy(dst, ring + off, first);
	memcpy((uint8_t *)dst + first, ring, len - first);
}

static void ring_copy_in(uint8_t *ring, uint64_t rb, uint64_t pos, const void *src, size_t len)
{
	uint64_t off = pos & (rb - 1);
	size_t first = (size_t)(rb - off) < len ? (size_t)(rb - off) : len;
	memcpy(ring + off, src, first);
	memcpy(ring, (const uint8_t *)src + first, len - first);
}

/* Asks for the cache line at p in exclusive state (to be written soon), without waiting for it.
 * x86: PREFETCHW (AMD since K8, Intel since Broadwell; a NOP on older Intel); elsewhere the
 * compiler's write prefetch. Never faults. */
static inline void prefetch_for_write(const void *p)
{
#if defined(__x86_64__)
	__asm__ volatile("prefetchw %0" : : "m"(*(const char *)p));
#else
	__builtin_prefetch(p, 1, 3);
#endif
}

/* The wait for an older lap (desc_take): a bounded spin, a few yields, then sleeps doubling
 * from EVR_WAIT_SLEEP_MIN_NS to EVR_WAIT_SLEEP_MAX_NS, for at most EVR_WAIT_MS in all. Sleeping
 * rather than a futex on seq: a futex needs a wake (a system call, or a waiter flag checked)
 * on every commit, the hot path, for a wait that happens only when the ring wrapped during
 * another publisher's copy; sleeping costs the rare waiter at most ~1 ms of latency and no core
 * (docs/events.md, step 4). */
#define EVR_WAIT_SPINS 64
#define EVR_WAIT_YIELDS 16
#define EVR_WAIT_SLEEP_MIN_NS 2000L
#define EVR_WAIT_SLEEP_MAX_NS 1000000L

enum { TAKE_NEWER = 0, TAKE_OWNED = 1, TAKE_BLOCKED = -1 };

/* Takes ownership of descriptor d for id: CAS seq from an older committed value to id|BUSY.
 * Returns TAKE_OWNED, TAKE_NEWER when a newer lap already holds it (the event is evicted
 * unwritten), or TAKE_BLOCKED when an older lap still holds it busy and it did not commit
 * within the wait: at once when wait_ms is 0, else after up to wait_ms ms of backing off (that
 * publisher is stopped, or the descriptor is wedged with no owner: docs/events.md). */
static int desc_take(struct shmb_event_desc *d, uint64_t id, int64_t wait_ms)
{
	uint64_t old = uatomic_read(&d->seq);
	int64_t deadline = 0;
	long sleep_ns = EVR_WAIT_SLEEP_MIN_NS;
	for (unsigned turn = 0;; turn++) {
		uint64_t v = old & ~SHMB_DESC_BUSY;
		if (v >= id)
			return TAKE_NEWER;
		if (old & SHMB_DESC_BUSY) {
			/* An older lap mid-write: the ring wrapped during one publisher's copy. */
			if (wait_ms <= 0)
				return TAKE_BLOCKED;
			if (turn < EVR_WAIT_SPINS) {
				caa_cpu_relax();
			} else if (turn < EVR_WAIT_SPINS + EVR_WAIT_YIELDS) {
				sched_yield();
			} else {
				int64_t now = shmb_mono_ms();
				if (deadline == 0)
					deadline = now + wait_ms;
				else if (now >= deadline)
					return TAKE_BLOCKED;
				struct timespec ts = { .tv_nsec = sleep_ns };
				nanosleep(&ts, NULL);
				if (sleep_ns < EVR_WAIT_SLEEP_MAX_NS)
					sleep_ns *= 2;
			}
			old = uatomic_read(&d->seq);
			continue;
		}
		uint64_t prev = uatomic_cmpxchg(&d->seq, old, id | SHMB_DESC_BUSY);
		if (prev == old)
			return TAKE_OWNED;
		old = prev;
	}
}

/* Writes the fields of a descriptor this publisher owns (seq = id|BUSY). A reader of an older lap
 * may be loading them at the same time and drops what it read when seq changed (evr_read): the
 * stores are single-copy atomic (uatomic_set: plain stores here, visible as atomics to TSan). */
static void desc_fill(struct shmb_event_desc *d, int64_t ts_ms, uint32_t len, uint32_t stream,
		      uint16_t kind, uint16_t flags, uint32_t nslots)
{
	uatomic_set(&d->ts_ms, ts_ms);
	uatomic_set(&d->len, len);
	uatomic_set(&d->stream, stream);
	uatomic_set(&d->kind, kind);
	uatomic_set(&d->flags, flags);
	uatomic_set(&d->nslots, nslots);
}

static void desc_commit_gap(struct shmb_event_desc *d, uint64_t id, int64_t ts_ms)
{
	desc_fill(d, ts_ms, 0, 0, 0, SHMB_EV_GAP, 1);
	/* A commit like any other: release for evr_read's acquire of seq, and a full barrier
	 * before the caller reads subscriber and armed flags (the wakeup protocol). */
	uatomic_xchg(&d->seq, id);
}

uint64_t evr_publish(const struct shmb_seg *seg, uint32_t idx, struct shmb_session_rec *r,
		     uint32_t stream, uint16_t kind, const void *data, uint32_t len, int64_t ts_ms,
		     void (*on_claim)(void *ctx, uint64_t id), void *ctx, int *evicted)
{
	uint32_t k = evr_slots_for(seg, len);
	if (evicted)
		*evicted = EVR_PUB_OK;
	/* The claim: one fetch-and-add, a full barrier (pairs with other claimers). */
	uint64_t id = uatomic_add_return(&r->next_id, k) - k + 1;
	if (on_claim)
		on_claim(ctx, id);
	uint32_t taken = 0;
	int st = TAKE_OWNED;
	while (taken < k && (st = desc_take(seg_desc(seg, idx, id + taken), id + taken,
					    EVR_WAIT_MS)) == TAKE_OWNED)
		taken++;
	if (taken < k) {
		/* TAKE_NEWER: a newer lap already owns slot `taken`: the event was evicted before it
		 * could be written. TAKE_BLOCKED: an older lap has held slot `taken` busy for
		 * EVR_WAIT_MS (stopped, or wedged with no owner): give up rather than wait without
		 * bound. Either way hand back the slots we took as gaps, and take and gap the ones
		 * after it that are free now, without waiting: nobody waits on those ids of ours. An
		 * id left behind (its slot held by an older lap) is claimed and in no ledger once the
		 * caller releases its entry: the broker writes its gap when the older lap is settled
		 * (broker/gaps.c, ownerless ids; docs/events.md). */
		/* Stamped now, not at the start of the publish: after a wait of up to EVR_WAIT_MS,
		 * a gap's ts_ms says when it was written, as the broker's gaps do. */
		int64_t now = st == TAKE_BLOCKED ? shmb_now_coarse_ms() : ts_ms;
		for (uint32_t j = 0; j < k; j++) {
			struct shmb_event_desc *g = seg_desc(seg, idx, id + j);
			if (j < taken || (j > taken && desc_take(g, id + j, 0) == TAKE_OWNED))
				desc_commit_gap(g, id + j, now);
		}
		if (evicted)
			*evicted = st == TAKE_NEWER ? EVR_PUB_EVICTED : EVR_PUB_ABANDONED;
		return id;
	}
	uint32_t sb = evr_slot_bytes(seg);
	uint64_t rb = seg->cfg.ring_bytes;
	if (len)
		ring_copy_in(seg_data(seg, idx), rb, (id & (seg->cfg.ring_events - 1)) * sb, data,
			     len);
	SHMB_FAULT("publish.write"); /* slots owned and written, not committed */
	for (uint32_t j = 1; j < k; j++) {
		struct shmb_event_desc *c = seg_desc(seg, idx, id + j);
		desc_fill(c, ts_ms, 0, stream, kind, SHMB_DESC_CONT, 1);
		cmm_smp_wmb();
		uatomic_set(&c->seq, id + j);
	}
	struct shmb_event_desc *d = seg_desc(seg, idx, id);
	desc_fill(d, ts_ms, len, stream, kind, 0, k);
	/* The commit: an exchange, i.e. a release store that is also a full barrier, so the
	 * publisher's following loads of subscriber and armed flags are ordered after it (the
	 * wakeup protocol, docs/events.md). Pairs with evr_read's acquire of seq. */
	uatomic_xchg(&d->seq, id);
	/* The next event's descriptor and payload lines: a reader that keeps up holds them shared
	 * (it read them one lap ago, and it polls the descriptor), and the next claim's CAS on the
	 * descriptor would stall on taking the line back. Asking for them now overlaps that
	 * transfer with the rest of this publish and the caller's work until the next one. Only a
	 * hint: another publisher may get that id, and a reader may take the line back first. */
	uint64_t nx = id + k;
	prefetch_for_write(seg_desc(seg, idx, nx));
	uint8_t *next_bytes = seg_data(seg, idx) + (nx & (seg->cfg.ring_events - 1)) * sb;
	for (uint32_t off = 0; off < sb && off < 256; off += 64)
		prefetch_for_write(next_bytes + off);
	return id;
}

int evr_write_gap(const struct shmb_seg *seg, uint32_t idx, uint64_t id, int64_t ts_ms)
{
	struct shmb_event_desc *d = seg_desc(seg, idx, id);
	if (!d || id == 0)
		return 0;
	uint64_t old = uatomic_read(&d->seq);
	for (;;) {
		uint64_t v = old & ~SHMB_DESC_BUSY;
		if (v > id || old == id)
			return 0; /* overwritten by a newer lap, or committed after all */
		if (old == (id | SHMB_DESC_BUSY))
			break; /* the dead publisher owned it: finish it as a gap */
		if (old & SHMB_DESC_BUSY)
			return -1; /* an older lap still mid-write: settle that one first */
		uint64_t prev = uatomic_cmpxchg(&d->seq, old, id | SHMB_DESC_BUSY);
		if (prev == old)
			break;
		old = prev;
	}
	desc_commit_gap(d, id, ts_ms);
	return 1;
}

int evr_settled(const struct shmb_seg *seg, uint32_t idx, uint64_t id)
{
	const struct shmb_event_desc *d = seg_desc(seg, idx, id);
	if (!d)
		return 1;
	uint64_t s = uatomic_read(&d->seq);
	uint64_t v = s & ~SHMB_DESC_BUSY;
	return v > id || s == id;
}

/* Re-validation after a copy: the head and its continuations still hold their ids. */
static int still_holds(const struct shmb_seg *seg, uint32_t idx, uint64_t id, uint32_t k)
{
	cmm_smp_rmb(); /* the copy's loads before these re-checks */
	for (uint32_t j = 0; j < k; j++)
		if (uatomic_read(&seg_desc(seg, idx, id + j)->seq) != id + j)
			return 0;
	return 1;
}

int evr_read(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r,
	     uint64_t id, struct shmb_event_desc *out, void *buf, size_t buflen)
{
	(void)r;
	const struct shmb_event_desc *d = seg_desc(seg, idx, id);
	if (!d)
		return EVR_CORRUPT;
	uint64_t s1 = uatomic_read(&d->seq);
	cmm_smp_rmb(); /* acquire: pairs with the publisher's release of seq */
	uint64_t v = s1 & ~SHMB_DESC_BUSY;
	if (v > id)
		return EVR_EVICTED;
	if (v < id || (s1 & SHMB_DESC_BUSY))
		return EVR_NOTYET;
	out->seq = id;
	out->ts_ms = uatomic_read(&d->ts_ms);
	out->len = uatomic_read(&d->len);
	out->stream = uatomic_read(&d->stream);
	out->kind = uatomic_read(&d->kind);
	out->flags = uatomic_read(&d->flags);
	out->nslots = uatomic_read(&d->nslots);
	uint32_t n = seg->cfg.ring_events;
	uint32_t sb = evr_slot_bytes(seg);
	int rc = EVR_OK;
	if (out->flags & SHMB_DESC_CONT)
		rc = EVR_CONT;
	else if (out->nslots < 1 || out->nslots > n || out->len > (uint64_t)out->nslots * sb)
		rc = EVR_CORRUPT;
	else if (out->flags & SHMB_EV_GAP)
		out->len = 0;
	else if (out->len > buflen)
		rc = EVR_TOOSMALL;
	else if (out->len)
		ring_copy_out(seg_data(seg, idx), seg->cfg.ring_bytes, (id & (n - 1)) * sb, buf,
			      out->len);
	uint32_t k = rc == EVR_OK || rc == EVR_TOOSMALL ? out->nslots : 1;
	if (!still_holds(seg, idx, id, k))
		return EVR_EVICTED;
	return rc;
}

uint64_t evr_oldest(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r)
{
	uint64_t head = uatomic_read(&r->next_id);
	if (head == 0)
		return 0;
	uint64_t n = seg->cfg.ring_events;
	uint64_t start = head >= n ? head - n + 1 : 1;
	for (uint64_t id = start; id <= head; id++) {
		const struct shmb_event_desc *d = seg_desc(seg, idx, id);
		uint64_t s = uatomic_read(&d->seq);
		uint64_t v = s & ~SHMB_DESC_BUSY;
		if (v < id || (s & SHMB_DESC_BUSY))
			return id; /* pending: still to come, so retained */
		if (v > id)
			continue; /* descriptor reused by a newer lap */
		cmm_smp_rmb();
		if (uatomic_read(&d->flags) & SHMB_DESC_CONT)
			continue; /* the rest of an event whose head is gone */
		return id;
	}
	return head + 1;
}

uint64_t evr_frontier(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r,
		      uint64_t from)
{
	uint64_t head = uatomic_read(&r->next_id);
	uint64_t id = from + 1;
	/* Ids older than the ring's window have left it (their slots are claimed by a newer lap):
	 * start at the window, else a far-behind `from` advances only ring_events per call and a
	 * subscriber is told "news" again and again (test_wakeup.c, old_news_in_a_long_session). */
	if (head >= seg->cfg.ring_events && id < head - seg->cfg.ring_events + 1)
		id = head - seg->cfg.ring_events + 1;
	for (uint64_t steps = 0; id <= head && steps < seg->cfg.ring_events; steps++, id++)
		if (!evr_settled(seg, idx, id))
			break;
	return id;
}
