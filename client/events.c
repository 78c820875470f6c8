/* events.c - publishing and cursors: the worker's side of a session's event ring.
 *
 * Both run inside a read-side section, after re-checking the handle's record (generation, LIVE,
 * not expired), so they never touch a recycled record's ring. The ring protocol itself
 * (claim, commit, validated copies) is common/evring.c; docs/events.md argues it.
 *
 * Crash ledger: before claiming, the thread writes into its reader slot's ledger entry which
 * session it is publishing into and a lower bound of the id it will get; right after the
 * fetch-and-add, the exact id. If the process dies before committing, the broker finds the entry
 * and turns the uncommitted id into a gap record, so readers move on. */
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "evring.h"
#include "fault.h"
#include "internal.h"

struct claim_ctx {
	struct shmb_ledger_entry *le;
};

static void on_claim(void *p, uint64_t id)
{
	struct claim_ctx *ctx = p;
	uatomic_set(&ctx->le->id, id);
	SHMB_FAULT("client.publish.claimed"); /* between claim and commit */
}

int64_t shmb_publish(shmb_session *s, uint32_t stream, uint16_t kind, const void *data, size_t len)
{
	if (!s || (!data && len) || !shmbi_client_ok(s->c))
		return shmbi_client_err(s ? s->c : NULL);
	shmb_client *c = s->c;
	if (len > c->seg.cfg.max_event_bytes)
		return SHMB_ETOOBIG; /* refused before the claim: consumes no id */
	int rc;
	/* Scoped to this record (rcu.h): a thread stopped in here, or waiting for an older lap
	 * (evr_publish), holds up the reclamation of this one record only. */
	struct shmbi_reader_tls *t = shmbi_read_lock_pinned(c, s->idx + 1, &rc);
	if (!t)
		return rc;
	int64_t now = shmb_now_coarse_ms(); /* expiry and ts_ms: clock.h */
	struct shmb_session_rec *r = shmbi_session_rec(s, now);
	if (!r) {
		shmbi_read_unlock(c);
		return SHMB_ENOENT;
	}
	struct shmb_ledger_entry *le = shmbi_ledger(t);
	uatomic_set(&le->session_idx, s->idx);
	uatomic_set(&le->session_gen, s->gen);
	uatomic_set(&le->nslots, evr_slots_for(&c->seg, len));
	uatomic_set(&le->id, (uatomic_read(&r->next_id) + 1) | SHMB_LEDGER_LB);
	/* The entry is complete before it is marked taken: the broker reads it after our death
	 * (gaps.c) and, for ownerless claims, while we run; it must never see a half-written
	 * entry (its read of kind, then rmb, then the fields pairs with this wmb). */
	cmm_smp_wmb();
	uatomic_set(&le->kind, SHMB_LEDGER_CLAIM);
	struct claim_ctx ctx = { .le = le };
	int evicted = EVR_PUB_OK;
	uint64_t id = evr_publish(&c->seg, s->idx, r, stream, kind, data, (uint32_t)len, now,
				  on_claim, &ctx, &evicted);
	/* evr_publish committed with a release store; released the ledger entry after it. After
	 * an abandoned claim (EVR_PUB_ABANDONED) some of its ids may still be unwritten, their
	 * slots held by an older lap: releasing the entry is what hands them to the broker, which
	 * writes their gaps once that lap is settled (broker/gaps.c, docs/events.md). */
	cmm_smp_wmb();
	uatomic_set(&le->kind, SHMB_LEDGER_FREE);
	/* Publishing counts as activity. */
	shmbi_touch(r, now);
	shmbi_count(&t->slot->events_published);
	shmbi_wake_subscribers(c, r);
	shmbi_read_unlock(c);
	/* One load, unless the broker restarted. Then our wakeups may have gone through a stale
	 * eventfd set: after the commit, so the refresh it sends without waiting (and the
	 * broker's wake_all it asks for) comes after the event (client/attach.c). */
	shmbi_sync_eventfds(c);
	/* Newer events took a slot of this one before it could be written, or an older one kept
	 * a slot busy past the wait bound: it is lost (readers are already past it and get
	 * SHMB_EOVERRUN, or read its ids as gaps; no reader waits on them for longer than the
	 * older lap takes), and the publisher must know. */
	return evicted != EVR_PUB_OK ? SHMB_EOVERRUN : (int64_t)id;
}

static int cursor_open(shmb_session *s, uint64_t after_id, int filtered, uint32_t stream,
		       shmb_cursor **out)
{
	if (!out)
		return SHMB_EINVAL;
	*out = NULL;
	if (!s || !shmbi_client_ok(s->c))
		return shmbi_client_err(s ? s->c : NULL);
	shmb_client *c = s->c;
	int rc = shmbi_read_lock(c);
	if (rc < 0)
		return rc;
	struct shmb_session_rec *r = shmbi_session_rec(s, shmb_now_coarse_ms());
	/* An id past the last one claimed is no position in this session (a Last-Event-ID from
	 * the future, or from another session): a cursor there would skip every later id up to
	 * it in silence, so it is refused. next_id (the last claimed id) only grows, and an id
	 * returned by a publish, here or in a process that told us, is already in it. */
	if (r && after_id > uatomic_read(&r->next_id))
		rc = SHMB_EINVAL;
	shmbi_read_unlock(c);
	if (!r)
		return SHMB_ENOENT;
	if (rc < 0)
		return rc;
	shmb_cursor *cur = calloc(1, sizeof *cur);
	if (!cur)
		return SHMB_ENOMEM;
	*cur = (shmb_cursor){ .c = c,
			      .idx = s->idx,
			      .gen = s->gen,
			      .pos = after_id,
			      .stream = stream,
			      .filtered = filtered };
	*out = cur;
	return 0;
}

int shmb_cursor_open(shmb_session *s, uint64_t after_id, shmb_cursor **out)
{
	return cursor_open(s, after_id, 0, 0, out);
}

int shmb_cursor_open_stream(shmb_session *s, uint64_t after_id, uint32_t stream, shmb_cursor **out)
{
	return cursor_open(s, after_id, 1, stream, out);
}

uint64_t shmb_cursor_lagged(const shmb_cursor *cur)
{
	return cur ? cur->lagged : 0;
}

uint64_t shmb_cursor_position(const shmb_cursor *cur)
{
	return cur ? cur->pos : 0;
}

int shmb_cursor_next(shmb_cursor *cur, shmb_event *ev, void *buf, size_t buflen)
{
	if (!cur || !ev || (!buf && buflen) || !shmbi_client_ok(cur->c))
		return shmbi_client_err(cur ? cur->c : NULL);
	shmb_client *c = cur->c;
	int rc = 0;
	if (!shmbi_read_lock_pinned(c, cur->idx + 1, &rc)) /* this record only (rcu.h) */
		return rc;
	shmb_session h = { .c = c, .idx = cur->idx, .gen = cur->gen };
	struct shmb_session_rec *r = shmbi_session_rec(&h, shmb_now_coarse_ms());
	if (!r) {
		shmbi_read_unlock(c);
		return SHMB_ENOENT;
	}
	/* Each turn either returns or advances pos past a committed id, so the loop ends; a
	 * skipped stream costs one descriptor read per event. The descriptor of pos + 1 is probed
	 * first: next_id (the line every publisher's claim writes) is not read on the way, so a
	 * reader that keeps up does not pull that line away from the publisher for every event.
	 * An id not claimed yet reads as EVR_NOTYET like one claimed and not committed (its slot
	 * holds an older lap); next_id and the oldest retained id are read only after an
	 * eviction. */
	for (;;) {
		uint64_t id = cur->pos + 1;
		/* id 0: the position is UINT64_MAX, past every id (cursor_open accepts it only
		 * when next_id says so: a damaged segment): nothing new, not an overrun back to
		 * the oldest event. */
		if (id == 0) {
			rc = 0;
			break;
		}
		struct shmb_event_desc d;
		int st = evr_read(&c->seg, cur->idx, r, id, &d, buf, buflen);
		if (st == EVR_NOTYET) {
			rc = 0;
			break;
		}
		if (st == EVR_EVICTED) {
			uint64_t oldest = evr_oldest(&c->seg, cur->idx, r);
			uint64_t resume = oldest > id ? oldest : id + 1;
			cur->lagged = resume - id;
			cur->pos = resume - 1;
			rc = SHMB_EOVERRUN;
			break;
		}
		if (st == EVR_CONT) {
			cur->pos = id; /* the tail of an event we did not start at */
			continue;
		}
		if (st == EVR_CORRUPT) {
			rc = SHMB_ECORRUPT;
			break;
		}
		int gap = (d.flags & SHMB_EV_GAP) != 0;
		uint64_t last = id + d.nslots - 1; /* a large event takes nslots ids */
		if (cur->filtered && !gap && d.stream != cur->stream) {
			cur->pos = last;
			continue;
		}
		*ev = (shmb_event){ .id = id,
				    .stream = d.stream,
				    .kind = d.kind,
				    .flags = d.flags,
				    .ts_ms = d.ts_ms,
				    .len = d.len,
				    .data = NULL };
		if (st == EVR_TOOSMALL) {
			rc = SHMB_ETOOBIG; /* nothing consumed: call again with a bigger buffer */
			break;
		}
		ev->data = gap ? NULL : buf;
		cur->pos = last;
		rc = 1;
		break;
	}
	shmbi_read_unlock(c);
	return rc;
}

void shmb_cursor_close(shmb_cursor *cur)
{
	free(cur);
}
