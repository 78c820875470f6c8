/* evring.h - the per-session event ring: claim/commit on the write side, validated copies on
 * the read side. Shared by the client (publish, cursors, wakeup re-checks), the broker (gap
 * records for dead publishers) and shmctl (events, show); docs/events.md is the full story.
 *
 * Every descriptor slot owns slot_bytes = ring_bytes / ring_events payload bytes. An event of
 * len bytes takes k = max(1, ceil(len / slot_bytes)) consecutive ids.
 * Write side, lock-free and multi-producer (Disruptor / Aeron claim-and-commit):
 *   1. id = fetch-and-add(next_id, k) + 1            (the claim: ids id .. id+k-1)
 *   2. for each of the k slots: CAS seq from an older committed value to its id|BUSY. This is
 *      ownership of the descriptor and of its payload bytes: a newer lap never takes a slot an
 *      older lap still writes (it waits for that commit, sleeping, for at most EVR_WAIT_MS, then
 *      gives up: the event is lost, its ids become gaps), and an older lap never writes a slot a
 *      newer lap took (its CAS fails and it gives up: the event was evicted before it was written)
 *   3. payload copied into the slots, continuation descriptors committed, then the head's
 *      fields and seq = id with release (the commit)
 * Read side: an event is returned only if its head and continuation descriptors hold their ids
 * before and after the copy, so a record overwritten while being read is detected, never
 * returned torn. */
#ifndef SHMB_EVRING_H
#define SHMB_EVRING_H

#include <stddef.h>
#include <stdint.h>

#include "seg.h"

enum {
	EVR_OK = 1,        /* copied */
	EVR_NOTYET = 0,    /* claimed (or not even claimed) but not committed yet */
	EVR_EVICTED = -1,  /* a descriptor of the event was reused */
	EVR_TOOSMALL = -2, /* out->len says how many bytes buf needs; nothing consumed */
	EVR_CORRUPT = -3,  /* descriptor fields out of range */
	EVR_CONT = -4,     /* id is a continuation slot of an earlier event: skip it */
};

static inline uint32_t evr_slot_bytes(const struct shmb_seg *seg)
{
	return seg->cfg.ring_bytes / seg->cfg.ring_events;
}

/* Ids an event of len bytes takes. */
static inline uint32_t evr_slots_for(const struct shmb_seg *seg, size_t len)
{
	uint32_t sb = evr_slot_bytes(seg);
	return len <= sb ? 1 : (uint32_t)((len + sb - 1) / sb);
}

/* Reads event id of session idx (record r) into *out (fields) and buf (payload, buflen bytes).
 * Gap records come back as EVR_OK with SHMB_EV_GAP in out->flags and no payload. On EVR_OK,
 * out->nslots tells how many ids the event took (the next event starts at id + nslots). */
int evr_read(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r,
	     uint64_t id, struct shmb_event_desc *out, void *buf, size_t buflen);

/* Oldest id at which an event is still retained (committed or pending, not evicted), or
 * next_id + 1 when nothing is retained, 0 when nothing was ever published. */
uint64_t evr_oldest(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r);

/* How long a publisher waits for an older lap's publisher to commit a descriptor it needs
 * before it gives up (EVR_PUB_ABANDONED): far above any preemption, below any client timeout. */
#define EVR_WAIT_MS 1000

/* Outcomes of evr_publish in *evicted. */
enum {
	EVR_PUB_OK = 0,        /* written and committed */
	EVR_PUB_EVICTED = 1,   /* newer events took a slot first: lost, behind the window */
	EVR_PUB_ABANDONED = 2, /* an older lap held a slot busy for EVR_WAIT_MS: lost, gaps */
};

/* Publishes one event; returns its id (the first of the ids it takes). The caller has checked
 * len <= max_event_bytes and holds the record stable (read-side section or broker). on_claim,
 * if non-NULL, runs right after the fetch-and-add with the id (ledger updates, fault points).
 * *evicted (if non-NULL) is set to EVR_PUB_EVICTED when newer events took the event's slots
 * before it could be written (the ring wrapped during this call), or EVR_PUB_ABANDONED when an
 * older lap's publisher kept one of its slots busy for EVR_WAIT_MS (it is stopped, or the
 * descriptor is wedged): the event is lost either way, and nothing of it was written. The
 * slots it took or could take at once are committed as gaps; the others are settled by the
 * broker once the caller has released its ledger entry (docs/events.md). Never waits longer
 * than about EVR_WAIT_MS per call (backs off to sleeping: no core is burnt). */
uint64_t evr_publish(const struct shmb_seg *seg, uint32_t idx, struct shmb_session_rec *r,
		     uint32_t stream, uint16_t kind, const void *data, uint32_t len, int64_t ts_ms,
		     void (*on_claim)(void *ctx, uint64_t id), void *ctx, int *evicted);

/* Turns the uncommitted id into a committed gap record (the broker, for a publisher proven
 * dead). Returns 1 if written, 0 if the id was committed or overwritten meanwhile, -1 if an
 * older lap still holds the slot (try again later). */
int evr_write_gap(const struct shmb_seg *seg, uint32_t idx, uint64_t id, int64_t ts_ms);

/* 1 when id is committed (or already overwritten by a newer lap), 0 when still pending. */
int evr_settled(const struct shmb_seg *seg, uint32_t idx, uint64_t id);

/* Frontier: the first id after `from` that is not committed (scans at most ring_events ids). */
uint64_t evr_frontier(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r,
		      uint64_t from);

#endif
