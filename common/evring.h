/* evring.h - the per-session event ring: claim/commit on the write side, validated copies on
 * the read side. Shared by the client (publish, cursors, wakeup re-checks), the broker (gap
 * records for dead publishers) and shmctl (events, show) — docs/events.md is the full story.
 *
 * Write side, lock-free and multi-producer (Disruptor / Aeron claim-and-commit):
 *   1. id  = fetch-and-add(next_id, 1) + 1          (the claim; ids are dense from 1)
 *   2. desc[id % ring_events].seq: CAS from an older value to id|BUSY (a slower publisher of an
 *      older lap never overwrites a newer id: if seq already holds a newer id, the event was
 *      evicted before it was written and is skipped)
 *   3. pos = fetch-and-add(byte_head, len); payload copied to data[pos % ring_bytes], wrapping
 *   4. descriptor fields, then seq = id with release (the commit)
 * Read side: a record is read only if seq == id before and after copying it and its payload
 * bytes were not claimed again (byte_head <= pos + ring_bytes after the copy): a record
 * overwritten while being read is detected, never returned. */
#ifndef SHMB_EVRING_H
#define SHMB_EVRING_H

#include <stddef.h>
#include <stdint.h>

#include "seg.h"

enum {
	EVR_OK = 1,        /* copied */
	EVR_NOTYET = 0,    /* claimed (or not even claimed) but not committed yet */
	EVR_EVICTED = -1,  /* the descriptor or the payload bytes were reused */
	EVR_TOOSMALL = -2, /* *len_out says how many bytes buf needs; nothing consumed */
	EVR_CORRUPT = -3,  /* descriptor fields out of range */
};

/* Reads event id of session idx (record r) into *out (fields) and buf (payload, buflen bytes).
 * Gap records come back as EVR_OK with SHMB_EV_GAP in out->flags and no payload. */
int evr_read(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r,
	     uint64_t id, struct shmb_event_desc *out, void *buf, size_t buflen);

/* Oldest event id still retained (committed or pending, not evicted), or next_id + 1 when
 * nothing is retained, 0 when nothing was ever published. Bounded by ring_events steps. */
uint64_t evr_oldest(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r);

/* Payload bytes currently retained (for shmctl show): min(byte_head, ring_bytes). */
static inline uint64_t evr_bytes_used(const struct shmb_seg *seg, const struct shmb_session_rec *r)
{
	uint64_t h = r->byte_head;
	return h < seg->cfg.ring_bytes ? h : seg->cfg.ring_bytes;
}

/* Publishes one event (steps 1-4 above) with flags; returns the id. Caller has validated len
 * (<= max_event_bytes) and holds the record stable (read-side section or broker).
 * before_commit, if non-NULL, runs between claim and commit (ledger updates, fault points). */
uint64_t evr_publish(const struct shmb_seg *seg, uint32_t idx, struct shmb_session_rec *r,
		     uint32_t stream, uint16_t kind, const void *data, uint32_t len, int64_t ts_ms,
		     void (*on_claim)(void *ctx, uint64_t id), void *ctx);

/* Turns the uncommitted event id into a committed gap record (the broker, for a publisher
 * proven dead). Returns 1 if written, 0 if the id was committed or overwritten meanwhile. */
int evr_write_gap(const struct shmb_seg *seg, uint32_t idx, struct shmb_session_rec *r,
		  uint64_t id, int64_t ts_ms);

/* Frontier: the first id after `from` that is not committed (scans at most ring_events ids). */
uint64_t evr_frontier(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r,
		      uint64_t from);

#endif
