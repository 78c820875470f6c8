/* waits.c - per-thread waits on a cursor (shmb_cursor_wait) and "which session has news"
 * (shmb_ready): what a thread-per-stream server and an event loop with many streams need
 * beyond the per-process eventfd of wakeup.c.
 *
 * Per-thread waits. Each session record's ring line holds a futex word, wake_seq, and a count,
 * waiters, of the threads (of any process) sleeping on it. A waiting thread, inside a read-side
 * section pinned to the record (so the record cannot be recycled under the count):
 *   1. looks at its cursor: something to return (an event of its stream, a gap, an overrun, the
 *      session gone)? Then 1. Events of other streams are skipped as shmb_cursor_next would skip
 *      them, so a stream cursor is not woken forever by its session's other streams;
 *   2. seq = wake_seq; waiters + 1 (an atomic RMW: a full barrier); its reader slot's crash
 *      ledger says WAIT (idx, gen);
 *   3. looks again (the cursor and the record's state); with news: undo step 2, return 1;
 *   4. leaves the section and sleeps in FUTEX_WAIT(wake_seq, seq) for the time left;
 *   5. woken, timed out or interrupted: ledger cleared, then waiters - 1 if the record is still
 *      this LIVE session (read inside a new pinned section), and back to 1.
 * A waker (common/wake.c, wake_after_commit: every publisher after its commit, the broker after
 * a gap and when a session ends) has a full barrier between its news store and its load of
 * waiters; when that is non-zero it bumps wake_seq and calls FUTEX_WAKE. Store-buffer argument
 * (docs/events.md, "Per-thread waits"): the waiter's (waiters store; news load) and the waker's
 * (news store; waiters load) are each separated by a full barrier, so the waiter sees the news
 * in step 3 or the waker sees the count; the waker's bump of wake_seq comes after the waiter's
 * read of seq, so FUTEX_WAIT returns at once if the bump came first, and FUTEX_WAKE finds the
 * waiter asleep otherwise. A publish with no waiter pays one load, no fence and no syscall.
 *
 * The count and crashes: only a thread that saw the record LIVE with its generation inside a
 * pinned section increments or decrements it, so no count of an older incarnation reaches a
 * newer one; the broker resets it when it recycles the record (a waiter woken after the end of
 * its session finds it no longer LIVE and leaves the count to that reset). A waiter killed while
 * counted leaves the count too high (each publish on that session then makes one needless
 * FUTEX_WAKE until it ends: waste, never a lost wakeup); the broker, settling the dead worker,
 * takes one off for each WAIT entry of its ledger whose record still has that generation. The
 * entry is written after the increment and cleared before the decrement, so it is never taken
 * off twice; the decrement never goes below 0 (wake_waiters_dec).
 *
 * Which session has news. Each worker slot owns a three-level bitmap in the ready region
 * (layout.h). A waker marks the record for each subscribed worker (wake_ready_mark, before its
 * eventfd is written); shmb_ready takes l2, then l1, then l0 words with exchange and maps the
 * record indices to this process's subscribed handles (ready_heads), keeping what did not fit in
 * `max` on the pending list. Cost: nothing while nobody is subscribed; for shmb_ready, the l2
 * words (max_sessions / 262144, rounded up) plus the words on the paths to the news. */
#include <errno.h>
#include <stdlib.h>

#include "clock.h"
#include "evring.h"
#include "fault.h"
#include "internal.h"
#include "wake.h"

/* 1 when the cursor has something for shmb_cursor_next to return: a committed event of its
 * stream (or any, unfiltered), a gap, an overrun, a damaged descriptor. Skips, as
 * shmb_cursor_next does, continuation slots and other streams' events, advancing the cursor's
 * position past them (nothing it must return is passed). Inside a section pinned to r. Bounded:
 * each turn passes at least one committed id, and at most ring_events of them are in the ring
 * (past that, 1: shmb_cursor_next makes the progress). */
static int cursor_has_news(shmb_cursor *cur, const struct shmb_session_rec *r)
{
	const struct shmb_seg *seg = &cur->c->seg;
	for (uint32_t steps = 0; steps <= seg->cfg.ring_events; steps++) {
		uint64_t id = cur->pos + 1;
		if (id == 0)
			return 0; /* past every id (shmb_cursor_next says the same) */
		struct shmb_event_desc d;
		int st = evr_read(seg, cur->idx, r, id, &d, NULL, 0);
		if (st == EVR_NOTYET)
			return 0;
		if (st == EVR_CONT) {
			cur->pos = id;
			continue;
		}
		if (st != EVR_OK && st != EVR_TOOSMALL)
			return 1; /* evicted (SHMB_EOVERRUN) or corrupt: cursor_next reports it */
		if (cur->filtered && !(d.flags & SHMB_EV_GAP) && d.stream != cur->stream) {
			cur->pos = id + d.nslots - 1;
			continue;
		}
		return 1;
	}
	return 1;
}

/* 1 when r is the LIVE session of generation gen (state, then rmb, then gen: pairs with the
 * broker's release of LIVE, as shmbi_session_rec). Inside a section pinned to r, a yes means
 * the record cannot be recycled before the section ends. */
static int rec_is_live(const struct shmb_session_rec *r, uint32_t gen)
{
	uint32_t st = uatomic_read(&r->state);
	cmm_smp_rmb();
	return st == SHMB_REC_LIVE && uatomic_read(&r->gen) == gen;
}

/* Step 5 (and step 3's undo): the ledger entry cleared first, then the count, if `counted_ok`
 * (the record is known to be the counted incarnation, pinned). */
static void wait_uncount(struct shmbi_reader_tls *t, struct shmb_session_rec *r, int counted_ok)
{
	struct shmb_ledger_entry *le = shmbi_ledger(t);
	uatomic_set(&le->kind, SHMB_LEDGER_FREE);
	/* The entry gone before the count: a death between the two leaves the count one too high
	 * (waste), never taken off twice (by us and by the broker's settling). */
	cmm_smp_mb();
	SHMB_FAULT("client.wait.uncounted");
	if (counted_ok)
		wake_waiters_dec(r);
}

int shmb_cursor_wait(shmb_cursor *cur, int timeout_ms)
{
	if (!cur || timeout_ms < -1 || !shmbi_client_ok(cur->c))
		return shmbi_client_err(cur ? cur->c : NULL);
	shmb_client *c = cur->c;
	int64_t deadline = timeout_ms > 0 ? shmb_mono_ns() + (int64_t)timeout_ms * 1000000 : 0;
	shmb_session h = { .c = c, .idx = cur->idx, .gen = cur->gen };
	/* Each turn sleeps once (or returns); a turn without news ends with the futex woken (a
	 * commit, possibly of another stream), a signal, or the time left gone. */
	for (;;) {
		int rc = 0;
		struct shmbi_reader_tls *t = shmbi_read_lock_pinned(c, cur->idx + 1, &rc);
		if (!t)
			return rc;
		/* Step 1. */
		struct shmb_session_rec *r = shmbi_session_rec(&h, shmb_now_coarse_ms());
		if (!r || cursor_has_news(cur, r)) {
			shmbi_read_unlock(c);
			return 1;
		}
		int64_t left = -1;
		if (timeout_ms == 0 ||
		    (timeout_ms > 0 && (left = deadline - shmb_mono_ns()) <= 0)) {
			shmbi_read_unlock(c);
			return 0;
		}
		/* Step 2: seq before the count, so a waker that sees the count bumps it after. */
		uint32_t seq = uatomic_read(&r->wake_seq);
		/* A full barrier (liburcu: add_return implies one): the count is visible before
		 * the re-check's loads; pairs with the waker's barrier after its news store. */
		(void)uatomic_add_return(&r->waiters, 1);
		struct shmb_ledger_entry *le = shmbi_ledger(t);
		uatomic_set(&le->session_idx, cur->idx);
		uatomic_set(&le->session_gen, cur->gen);
		uatomic_set(&le->nslots, 0);
		uatomic_set(&le->id, 0);
		cmm_smp_wmb(); /* the entry complete before it is marked taken (as a claim's) */
		uatomic_set(&le->kind, SHMB_LEDGER_WAIT);
		SHMB_FAULT("client.wait.counted");
		/* Step 3: the record's state too (a delete stores it, then fences, then reads
		 * waiters), and the cursor. r was LIVE with our generation in this section, so it
		 * is still the counted incarnation, whatever its state says now. */
		if (!shmbi_session_rec(&h, shmb_now_coarse_ms()) || cursor_has_news(cur, r)) {
			wait_uncount(t, r, 1);
			shmbi_read_unlock(c);
			return 1;
		}
		/* The segment's retired mark too (after the increment's barrier; pairs with the
		 * fence of wake_all_waiters between the mark and its loads of waiters): a segment
		 * retired since step 1 gets no publish that would wake us. */
		if (uatomic_read(&seg_hdr(&c->seg)->retired)) {
			wait_uncount(t, r, 1);
			shmbi_read_unlock(c);
			return SHMB_ESTALE;
		}
		shmbi_read_unlock(c);
		/* Step 4, outside any section: a sleeping thread holds up no reclamation. The word
		 * is memory of the segment for its whole life, recycled or not. */
		SHMB_FAULT("client.wait.sleep");
		int w = wake_futex_wait(&r->wake_seq, seq, left);
		/* Step 5. */
		t = shmbi_read_lock_pinned(c, cur->idx + 1, &rc);
		if (!t) {
			/* The segment was retired meanwhile (SHMB_ESTALE): the entry goes, the
			 * count is left (nobody publishes on a retired segment). */
			uatomic_set(&le->kind, SHMB_LEDGER_FREE);
			return rc;
		}
		wait_uncount(t, r, rec_is_live(r, cur->gen));
		shmbi_read_unlock(c);
		if (w < 0 && w != -EINTR && w != -ETIMEDOUT)
			return SHMB_EIO;
		/* Back to step 1: news, the session gone, or the time left recomputed. */
	}
}

/* ---- shmb_ready ---- */

int shmbi_ready_add(shmb_client *c, shmb_session *s)
{
	if (s->idx >= c->seg.cfg.max_sessions)
		return SHMB_EINVAL;
	if (!c->ready_heads) {
		/* calloc: for a large table the pages come zeroed from the kernel on first touch,
		 * so only the pages of subscribed records cost memory. */
		c->ready_heads = calloc(c->seg.cfg.max_sessions, sizeof *c->ready_heads);
		if (!c->ready_heads)
			return SHMB_ENOMEM;
	}
	s->ready_next = c->ready_heads[s->idx];
	c->ready_heads[s->idx] = s;
	s->pend = 0;
	return 0;
}

static void pend_push(shmb_client *c, shmb_session *s)
{
	s->pend = 1;
	s->pend_next = NULL;
	s->pend_prev = c->pend_tail;
	if (c->pend_tail)
		c->pend_tail->pend_next = s;
	else
		c->pend_head = s;
	c->pend_tail = s;
}

static void pend_unlink(shmb_client *c, shmb_session *s)
{
	if (!s->pend)
		return;
	if (s->pend_prev)
		s->pend_prev->pend_next = s->pend_next;
	else
		c->pend_head = s->pend_next;
	if (s->pend_next)
		s->pend_next->pend_prev = s->pend_prev;
	else
		c->pend_tail = s->pend_prev;
	s->pend = 0;
	s->pend_prev = s->pend_next = NULL;
}

void shmbi_ready_del(shmb_client *c, shmb_session *s)
{
	pend_unlink(c, s);
	if (!c->ready_heads || s->idx >= c->seg.cfg.max_sessions)
		return;
	for (shmb_session **p = &c->ready_heads[s->idx]; *p; p = &(*p)->ready_next) {
		if (*p == s) {
			*p = s->ready_next;
			break;
		}
	}
	s->ready_next = NULL;
}

/* This worker's three levels. */
struct ready_levels {
	uint64_t *l0, *l1, *l2;
	uint64_t n0, n1, n2;
};

static int ready_levels(const shmb_client *c, struct ready_levels *lv)
{
	uint64_t *rb = seg_ready(&c->seg, c->slot);
	if (!rb)
		return 0;
	uint32_t ms = c->seg.cfg.max_sessions;
	lv->n0 = shmb_ready_l0_words(ms);
	lv->n1 = shmb_ready_l1_words(ms);
	lv->n2 = shmb_ready_l2_words(ms);
	lv->l0 = rb;
	lv->l1 = rb + lv->n0;
	lv->l2 = lv->l1 + lv->n1;
	return 1;
}

/* Takes word *p (exchange with 0; a load first, so an empty word is not written). The exchange
 * is sequentially consistent (a full barrier): see harvest. */
static uint64_t take(uint64_t *p)
{
	return uatomic_read(p) ? uatomic_xchg(p, 0) : 0;
}

/* Moves every marked record's subscribed handles onto the pending list. Levels from the top:
 * l2 word, then each l1 word it points at, then each l0 word. Why no mark is lost
 * (docs/events.md): a waker sets l0, l1, l2 in that order (s0 < s1 < s2, each a full barrier);
 * we take l2, l1, l0 in the opposite order (t2 < t1 < t0). If our t0 comes after s0 we took the
 * mark. Otherwise t2 < t1 < t0 < s0 < s1 < s2: the waker's l1 and l2 bits (set by it, or found
 * set by it, then not taken before our later call) stay for the next call, which reaches the
 * l0 word. A waker that finds a level already set skips the write: the bit is then taken by an
 * exchange after its load, hence after its l0 mark, and that exchange's lower levels follow. */
static void harvest(shmb_client *c)
{
	struct ready_levels lv;
	if (!ready_levels(c, &lv))
		return;
	uint32_t ms = c->seg.cfg.max_sessions;
	for (uint64_t k = 0; k < lv.n2; k++) {
		uint64_t v2 = take(&lv.l2[k]);
		while (v2) {
			uint64_t j = k * 64 + (uint64_t)__builtin_ctzll(v2);
			v2 &= v2 - 1;
			if (j >= lv.n1)
				continue; /* beyond the level: a stray bit */
			uint64_t v1 = take(&lv.l1[j]);
			while (v1) {
				uint64_t i = j * 64 + (uint64_t)__builtin_ctzll(v1);
				v1 &= v1 - 1;
				if (i >= lv.n0)
					continue;
				uint64_t v0 = take(&lv.l0[i]);
				while (v0) {
					uint64_t idx = i * 64 + (uint64_t)__builtin_ctzll(v0);
					v0 &= v0 - 1;
					if (idx >= ms || !c->ready_heads)
						continue;
					/* Every handle of this process subscribed on the record
					 * (a handle of an older incarnation too: its session
					 * ended, which is news); none: a stale mark, dropped. */
					for (shmb_session *s = c->ready_heads[idx]; s;
					     s = s->ready_next)
						if (!s->pend)
							pend_push(c, s);
				}
			}
		}
	}
}

int shmbi_ready_news(shmb_client *c)
{
	if (!c->ready_used)
		return 0;
	if (c->pend_head)
		return 1;
	struct ready_levels lv;
	if (!ready_levels(c, &lv))
		return 0;
	for (uint64_t k = 0; k < lv.n2; k++)
		if (uatomic_read(&lv.l2[k]))
			return 1;
	return 0;
}

int shmb_ready(shmb_client *c, shmb_session **out, int max)
{
	if (!shmbi_client_ok(c) || max < 0 || (max > 0 && !out))
		return shmbi_client_err(c);
	pthread_mutex_lock(&c->sub_lock);
	c->ready_used = 1;
	harvest(c);
	int n = 0;
	while (n < max && c->pend_head) {
		shmb_session *s = c->pend_head;
		pend_unlink(c, s);
		out[n++] = s;
	}
	pthread_mutex_unlock(&c->sub_lock);
	return n;
}
