/* index.c - the session index writer. The broker is the only process that writes bucket heads,
 * record links (next), states and generations (layout.h, "Who writes what"); being one thread,
 * it needs no lock, only the right order of stores for the lock-free readers of common/index.h.
 *
 * Link (create): a FREE record is set LINKING and filled while nothing can reach it, its next is
 * set to the current bucket head, then the head is release-stored to point at it, then state is
 * release-stored LIVE. A reader that reaches it through the new head sees a complete record (its
 * rmb after loading the head pairs with our wmb before storing it) and reports it only once it
 * reads LIVE (the rmb after its state load pairs with our wmb before the LIVE store).
 *
 * Unlink (delete, expiry): state UNLINKING (lookups stop returning it at once), then the one
 * link that points at it (head or the predecessor's next) is stored to the record's own next,
 * which is left intact so a reader standing on the record walks on correctly. Then the grace
 * period is marked (rcu_retire_mark: full barrier, rcu_gp + 1), the record becomes RETIRED and is
 * queued for the reclaimer, which recycles it once every reader slot has passed retire_gp.
 *
 * A broker killed between any two stores leaves a state adoption can finish (segment.c):
 * LINKING + reachable means the head store happened, so the create is completed; LINKING +
 * unreachable is undone; UNLINKING is unlinked again (idempotent) and retired. The fault points
 * broker.link, broker.link.linked, broker.unlink.marked and broker.unlink (common/fault.h) kill
 * the broker in each of these states (tests/test_crash.c, tests/test_faults.c). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "broker.h"
#include "clock.h"
#include "fault.h"
#include "hash.h"
#include "index.h"
#include "rcu.h"
#include "shmb.h"
#include "sid.h"
#include "wake.h"

#define SID_RETRIES 8

int brk_index_init(struct brk *b)
{
	uint32_t n = b->seg.cfg.max_sessions;
	b->free_stack = malloc((size_t)n * sizeof *b->free_stack);
	b->pending = malloc((size_t)n * sizeof *b->pending);
	b->live_list = malloc((size_t)n * sizeof *b->live_list);
	b->live_pos = calloc(n, sizeof *b->live_pos);
	if (!b->free_stack || !b->pending || !b->live_list || !b->live_pos)
		return -1;
	b->n_free = b->n_pending = b->live = 0;
	return 0;
}

void brk_live_add(struct brk *b, uint32_t idx)
{
	if (idx >= b->seg.cfg.max_sessions || b->live_pos[idx])
		return;
	b->live_list[b->live] = idx;
	b->live_pos[idx] = ++b->live;
	brk_ctr_set(b, SHMB_CTR_SESSIONS_LIVE, b->live);
}

void brk_live_del(struct brk *b, uint32_t idx)
{
	if (idx >= b->seg.cfg.max_sessions || !b->live_pos[idx])
		return;
	uint32_t pos = b->live_pos[idx] - 1;
	uint32_t last = b->live_list[--b->live];
	b->live_list[pos] = last;
	b->live_pos[last] = pos + 1;
	b->live_pos[idx] = 0;
	brk_ctr_set(b, SHMB_CTR_SESSIONS_LIVE, b->live);
}

void brk_index_push_free(struct brk *b, uint32_t idx)
{
	if (b->n_free < b->seg.cfg.max_sessions)
		b->free_stack[b->n_free++] = idx;
}

int brk_index_create(struct brk *b, const char *tenant, size_t tenant_len, const char *principal,
		     size_t principal_len, int has_principal, uint64_t inactivity_ttl_ms,
		     uint64_t absolute_ttl_ms, uint8_t sid_out[SHMB_SID_BYTES], uint32_t *idx_out)
{
	const struct shmb_seg *seg = &b->seg;
	if (tenant_len > SHMB_TENANT_CAP || principal_len > SHMB_PRINCIPAL_CAP)
		return SHMB_EINVAL;
	if (b->n_free == 0)
		brk_reclaim_run(b, 1); /* retired records the readers have passed already */
	if (b->n_free == 0)
		return SHMB_EFULL;
	uint8_t sid[SHMB_SID_BYTES];
	for (int tries = 0;; tries++) {
		if (sid_generate(sid) < 0) {
			brk_err("getrandom failed: %s", strerror(errno));
			return SHMB_EIO;
		}
		sid_tag(sid, seg->cfg.node_id);
		int64_t found = idx_find(seg, sid);
		if (found == -1)
			break;
		if (found == -2) {
			brk_err("the chain of bucket %u is damaged; not linking into it",
				seg_bucket_of(seg, sid_hash(sid)));
			return SHMB_ECORRUPT;
		}
		/* 112 or 128 random bits colliding 8 times: getrandom is broken */
		if (tries >= SID_RETRIES)
			return SHMB_EIO;
	}
	uint32_t idx = b->free_stack[--b->n_free];
	struct shmb_session_rec *r = seg_rec(seg, idx);
	if (!r)
		return SHMB_ECORRUPT; /* unreachable: the index is in range by construction */
	/* Nothing can reach a FREE record (no chain links it, handles carry an older generation),
	 * so it is filled with plain stores. LINKING first tells adoption a create was under way. */
	uatomic_set(&r->state, SHMB_REC_LINKING);
	int64_t now = shmb_now_ms();
	struct brk_new_session ns = { .tenant = tenant,
				      .tenant_len = tenant_len,
				      .principal = principal,
				      .principal_len = principal_len,
				      .has_principal = has_principal,
				      .created_at_ms = now,
				      .last_accessed_at_ms = now,
				      .inactivity_ttl_ms = inactivity_ttl_ms,
				      .absolute_ttl_ms = absolute_ttl_ms,
				      .next_id = 0 };
	int rc = brk_index_link(b, idx, sid, &ns);
	if (rc == 0) {
		memcpy(sid_out, sid, SHMB_SID_BYTES);
		*idx_out = idx;
	}
	return rc;
}

int brk_index_link(struct brk *b, uint32_t idx, const uint8_t sid[SHMB_SID_BYTES],
		   const struct brk_new_session *ns)
{
	const struct shmb_seg *seg = &b->seg;
	uint32_t hash = sid_hash(sid);
	uint32_t *head = seg_bucket(seg, seg_bucket_of(seg, hash));
	struct shmb_session_rec *r = seg_rec(seg, idx);
	if (!head || !r)
		return SHMB_ECORRUPT; /* unreachable: both indices are in range by construction */
	const char *tenant = ns->tenant, *principal = ns->principal;
	size_t tenant_len = ns->tenant_len, principal_len = ns->principal_len;
	int has_principal = ns->has_principal;
	uint64_t absolute_ttl_ms = ns->absolute_ttl_ms;
	int64_t now = ns->created_at_ms;
	memcpy(r->sid, sid, sizeof r->sid);
	r->hash = hash;
	memset(r->tenant, 0, sizeof r->tenant);
	memcpy(r->tenant, tenant, tenant_len);
	r->tenant_len = (uint16_t)tenant_len;
	memset(r->principal, 0, sizeof r->principal);
	if (has_principal)
		memcpy(r->principal, principal, principal_len);
	r->principal_len = has_principal ? (uint16_t)principal_len : 0;
	r->has_principal = has_principal ? 1 : 0;
	r->created_at_ms = now;
	uatomic_set(&r->last_accessed_at_ms, ns->last_accessed_at_ms);
	r->inactivity_ttl_ms = ns->inactivity_ttl_ms;
	r->absolute_ttl_ms = absolute_ttl_ms;
	int64_t expires;
	if (absolute_ttl_ms == 0 || absolute_ttl_ms > (uint64_t)INT64_MAX ||
	    __builtin_add_overflow(now, (int64_t)absolute_ttl_ms, &expires))
		expires = INT64_MAX;
	r->expires_at_ms = expires;
	r->binding = shmb_binding_hash(seg_hdr(seg)->hash_key, tenant, tenant_len,
				       has_principal ? principal : NULL, principal_len);
	/* A create: 0 (its descriptors were cleared when it was recycled); a restore: the last id,
	 * its retained events written into the ring before (restore.c). */
	uatomic_set(&r->next_id, ns->next_id);
	for (int i = 0; i < SHMB_SUB_WORDS; i++)
		uatomic_set(&r->subscribers[i], 0);
	r->retire_gp = 0;
	r->retired_at_ms = 0;
	r->retire_reason = SHMB_RETIRE_NONE;
	uatomic_set(&r->next, uatomic_read(head));
	SHMB_FAULT("broker.link"); /* LINKING, unreachable */
	/* Every store above before the head: pairs with the cmm_smp_rmb after idx_find's load of
	 * the head (and of a predecessor's next), so a reader reaching r sees it complete. */
	cmm_smp_wmb();
	uatomic_set(head, idx + 1);
	SHMB_FAULT("broker.link.linked"); /* reachable, still LINKING */
	/* The record is complete before it reads LIVE: pairs with the cmm_smp_rmb after
	 * idx_find's load of state. */
	cmm_smp_wmb();
	uatomic_set(&r->state, SHMB_REC_LIVE);
	/* Counted right at the LIVE store (adoption counts a create it completes). */
	brk_ctr_add(b, SHMB_CTR_SESSIONS_CREATED, 1);
	brk_live_add(b, idx);
	return 0;
}

int brk_index_unlink(struct brk *b, uint32_t idx)
{
	const struct shmb_seg *seg = &b->seg;
	struct shmb_session_rec *r = seg_rec(seg, idx);
	if (!r)
		return -1;
	uint32_t *head = seg_bucket(seg, seg_bucket_of(seg, r->hash));
	uint32_t target = idx + 1;
	/* r->next is left intact: a reader standing on r continues through it. Its target was
	 * published before it was linked behind r, so the stores below need no barrier for it;
	 * the cmm_smp_wmb orders the caller's UNLINKING store first (not required for safety:
	 * readers report LIVE records only). Pairs with idx_find's loads of head / next. */
	cmm_smp_wmb();
	uint32_t link = uatomic_read(head);
	if (link == target) {
		uatomic_set(head, uatomic_read(&r->next));
		return 1;
	}
	for (uint32_t steps = 0; link != SHMB_NIL; steps++) {
		struct shmb_session_rec *p = seg_link(seg, link);
		if (!p || steps >= seg->cfg.max_sessions)
			return -1;
		uint32_t nx = uatomic_read(&p->next);
		if (nx == target) {
			uatomic_set(&p->next, uatomic_read(&r->next));
			return 1;
		}
		link = nx;
	}
	return 0;
}

void brk_index_retire(struct brk *b, uint32_t idx, uint32_t reason)
{
	const struct shmb_seg *seg = &b->seg;
	struct shmb_session_rec *r = seg_rec(seg, idx);
	if (!r)
		return;
	/* The reason before UNLINKING, so that adoption finishing an interrupted unlink counts it
	 * under the right reason (a bare UNLINKING record was a delete). */
	if (reason != SHMB_RETIRE_NONE)
		uatomic_set(&r->retire_reason, reason);
	else if (uatomic_read(&r->retire_reason) == SHMB_RETIRE_NONE)
		uatomic_set(&r->retire_reason, SHMB_RETIRE_DELETED);
	/* Lookups report LIVE records only: from here on the session is gone for new lookups. */
	uatomic_set(&r->state, SHMB_REC_UNLINKING);
	SHMB_FAULT("broker.unlink.marked"); /* UNLINKING, still in its chain */
	int rc = brk_index_unlink(b, idx);
	if (rc < 0) {
		/* The chain is damaged: the record may still be reachable, so recycling it could
		 * hand a reader reused memory. Leave it UNLINKING (invisible to lookups), leaked
		 * until an operator removes the segment; shmctl verify reports the chain. */
		brk_err("the chain holding record %u is damaged; the record stays unlinked "
			"but is never reused",
			idx);
		brk_live_del(b, idx);
		return;
	}
	SHMB_FAULT("broker.unlink"); /* UNLINKING, out of its chain, not retired */
	if (reason != SHMB_RETIRE_NONE || r->retired_at_ms == 0)
		r->retired_at_ms = shmb_now_ms();
	/* rcu_retire_mark orders the unlink store above before the new rcu_gp (full barriers):
	 * a reader that enters at the new value cannot find r. */
	uint64_t gp = rcu_retire_mark(seg);
	uatomic_set(&r->retire_gp, gp);
	/* retire_gp before RETIRED: adoption trusts the retire_gp of a RETIRED record. */
	cmm_smp_wmb();
	uatomic_set(&r->state, SHMB_REC_RETIRED);
	/* Counted right at the RETIRED store, under the recorded reason: an unlink adoption
	 * finishes (reason NONE here) is counted too, as it never was before the crash. */
	if (uatomic_read(&r->retire_reason) == SHMB_RETIRE_EXPIRED)
		brk_ctr_add(b, SHMB_CTR_SESSIONS_EXPIRED, 1);
	else
		brk_ctr_add(b, SHMB_CTR_SESSIONS_DELETED, 1);
	brk_live_del(b, idx);
	brk_wake_subscribers(b, r);
	brk_reclaim_queue(b, idx);
}

void brk_wake_subscribers(struct brk *b, struct shmb_session_rec *r)
{
	/* The waker's half of the wakeup protocol (common/wake.h), with the session's end or a gap
	 * as the news. A session's end is plain stores of the record's state, so the walk that
	 * fences first: a waiter stores armed = 1, full fence, re-checks its sessions (this one is
	 * no longer LIVE, or its gap is committed); we stored the news, full fence, then read the
	 * subscriber bits and armed flags. One of us sees the other's store, so no subscriber
	 * sleeps through it. (A gap's commit is an exchange, a full barrier already: the fence is
	 * redundant there, and cheap for the broker.) */
	brk_evfd_guard(1); /* a write blocked by another process returns EINTR (loop.c) */
	struct wake_stats st = wake_after_store(&b->seg, r, b->evfds, b->seg.cfg.max_workers, NULL);
	brk_evfd_guard(0);
	if (st.failed)
		brk_warn("waking worker %u: %s (%u eventfd write%s failed)", st.failed_worker,
			 strerror(st.failed_errno), st.failed, st.failed == 1 ? "" : "s");
}
