/* evring.c - claim/commit and validated reads of a session's event ring (see evring.h and
 * docs/events.md for the protocol and why it is safe). */
#include "evring.h"

#include <sched.h>
#include <string.h>

#include <urcu/uatomic.h>

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

/* Takes ownership of descriptor d for id: CAS seq from an older committed value to id|BUSY.
 * Returns 1 when owned, 0 when a newer lap already holds it (the event is evicted unwritten).
 * If an older lap is still being written, waits for it: that publisher either commits or is
 * proven dead and turned into a gap by the broker, so the wait ends (docs/events.md). */
static int desc_take(struct shmb_event_desc *d, uint64_t id)
{
	uint64_t old = uatomic_read(&d->seq);
	for (unsigned spins = 0;; spins++) {
		uint64_t v = old & ~SHMB_DESC_BUSY;
		if (v >= id)
			return 0;
		if (old & SHMB_DESC_BUSY) {
			/* An older lap mid-write: the ring wrapped during one publisher's copy. */
			if (spins > 64)
				sched_yield();
			else
				caa_cpu_relax();
			old = uatomic_read(&d->seq);
			continue;
		}
		uint64_t prev = uatomic_cmpxchg(&d->seq, old, id | SHMB_DESC_BUSY);
		if (prev == old)
			return 1;
		old = prev;
	}
}

uint64_t evr_publish(const struct shmb_seg *seg, uint32_t idx, struct shmb_session_rec *r,
		     uint32_t stream, uint16_t kind, const void *data, uint32_t len, int64_t ts_ms,
		     void (*on_claim)(void *ctx, uint64_t id), void *ctx)
{
	/* The claim: one fetch-and-add; a full barrier (pairs with other claimers). */
	uint64_t id = uatomic_add_return(&r->next_id, 1);
	if (on_claim)
		on_claim(ctx, id);
	struct shmb_event_desc *d = seg_desc(seg, idx, id);
	if (!desc_take(d, id))
		return id; /* evicted by newer events before it could be written */
	uint64_t rb = seg->cfg.ring_bytes;
	uint64_t pos = len ? uatomic_add_return(&r->byte_head, len) - len : uatomic_read(&r->byte_head);
	if (len)
		ring_copy_in(seg_data(seg, idx), rb, pos, data, len);
	d->pos = pos;
	d->ts_ms = ts_ms;
	d->len = len;
	d->stream = stream;
	d->kind = kind;
	d->flags = 0;
	/* The commit: release store of the id; pairs with the acquire loads in evr_read. */
	cmm_smp_wmb();
	uatomic_set(&d->seq, id);
	return id;
}

int evr_write_gap(const struct shmb_seg *seg, uint32_t idx, struct shmb_session_rec *r,
		  uint64_t id, int64_t ts_ms)
{
	(void)r;
	struct shmb_event_desc *d = seg_desc(seg, idx, id);
	if (!d)
		return 0;
	uint64_t old = uatomic_read(&d->seq);
	for (;;) {
		uint64_t v = old & ~SHMB_DESC_BUSY;
		if (v > id || old == id)
			return 0; /* overwritten by a newer lap, or committed after all */
		if (old == (id | SHMB_DESC_BUSY))
			break; /* the dead publisher owned it: finish it as a gap */
		if (old & SHMB_DESC_BUSY)
			return 0; /* an older lap still mid-write: settle that one first */
		uint64_t prev = uatomic_cmpxchg(&d->seq, old, id | SHMB_DESC_BUSY);
		if (prev == old)
			break;
		old = prev;
	}
	d->pos = uatomic_read(&r->byte_head);
	d->ts_ms = ts_ms;
	d->len = 0;
	d->stream = 0;
	d->kind = 0;
	d->flags = SHMB_EV_GAP;
	cmm_smp_wmb(); /* pairs with evr_read's acquire of seq */
	uatomic_set(&d->seq, id);
	return 1;
}

int evr_read(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r,
	     uint64_t id, struct shmb_event_desc *out, void *buf, size_t buflen)
{
	const struct shmb_event_desc *d = seg_desc(seg, idx, id);
	if (!d)
		return EVR_CORRUPT;
	uint64_t s1 = uatomic_read(&d->seq);
	cmm_smp_rmb(); /* acquire: pairs with the publisher's release store of seq */
	uint64_t v = s1 & ~SHMB_DESC_BUSY;
	if (v > id)
		return EVR_EVICTED;
	if (v < id || (s1 & SHMB_DESC_BUSY))
		return EVR_NOTYET;
	out->seq = id;
	out->pos = uatomic_read(&d->pos);
	out->ts_ms = uatomic_read(&d->ts_ms);
	out->len = uatomic_read(&d->len);
	out->stream = uatomic_read(&d->stream);
	out->kind = uatomic_read(&d->kind);
	out->flags = uatomic_read(&d->flags);
	uint64_t rb = seg->cfg.ring_bytes;
	int rc = EVR_OK;
	if (out->len > rb)
		rc = EVR_CORRUPT;
	else if (out->len > buflen)
		rc = EVR_TOOSMALL;
	else if (out->len && !(out->flags & SHMB_EV_GAP))
		ring_copy_out(seg_data(seg, idx), rb, out->pos, buf, out->len);
	/* Validate after the copy: the descriptor still holds id and nobody claimed the payload
	 * bytes again (claims precede writes, so an unclaimed range was not written). */
	cmm_smp_rmb();
	if (uatomic_read(&d->seq) != id)
		return EVR_EVICTED;
	uint64_t head = uatomic_read(&r->byte_head);
	if (out->len && head > out->pos + rb)
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
	uint64_t bh = uatomic_read(&r->byte_head);
	for (uint64_t id = start; id <= head; id++) {
		const struct shmb_event_desc *d = seg_desc(seg, idx, id);
		uint64_t s = uatomic_read(&d->seq);
		uint64_t v = s & ~SHMB_DESC_BUSY;
		if (v < id || (s & SHMB_DESC_BUSY))
			return id; /* pending: still to come, so retained */
		if (v > id)
			continue; /* descriptor reused */
		uint64_t pos = uatomic_read(&d->pos);
		if (uatomic_read(&d->len) == 0 || bh <= pos + seg->cfg.ring_bytes)
			return id;
	}
	return head + 1;
}

uint64_t evr_frontier(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r,
		      uint64_t from)
{
	uint64_t head = uatomic_read(&r->next_id);
	uint64_t id = from + 1;
	for (uint64_t steps = 0; id <= head && steps < seg->cfg.ring_events; steps++, id++) {
		uint64_t s = uatomic_read(&seg_desc(seg, idx, id)->seq);
		uint64_t v = s & ~SHMB_DESC_BUSY;
		if (v < id || (v == id && (s & SHMB_DESC_BUSY)))
			break;
	}
	return id;
}
