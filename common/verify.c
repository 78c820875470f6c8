/* verify.c - consistency check of a mapped segment (see verify.h).
 *
 * Design. Every loop is bounded by the private configuration copy in struct shmb_seg (never by a
 * count read from the segment), every index read from the segment goes through the seg.h
 * accessors, and a chain walk stops after max_sessions steps, at an out-of-range link, or at the
 * first record it has already seen. A per-record owner table (bucket + 1 of the chain that
 * reached the record first; heap, 4 bytes per record) tells a cycle (the record comes back on the
 * same chain) from two chains merging, and later whether each LIVE record is reachable at all.
 *
 * Concurrency. Nothing here writes to the segment or takes a reader slot. Words other processes
 * store concurrently (states, links, heads, reader counters) are read with uatomic_read so each
 * is one untorn load; the rest may be torn by a concurrent writer, which can at worst produce a
 * spurious report, never an out-of-bounds access. Comparisons against rcu_gp re-read rcu_gp after
 * the value compared (rcu_gp only grows and every stored counter was copied from it earlier), so
 * a reader entering a section during the walk is never flagged. */
#include "verify.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "attr.h"
#include "hash.h"
#include "ledger.h"
#include "shmb.h"
#include "sid.h"

struct vctx {
	const struct shmb_seg *seg;
	void (*report)(void *ctx, const char *problem);
	void *ctx;
	int problems;
	struct seg_verify_stats st;
	uint32_t *owner; /* per record: bucket + 1 of the chain that reached it first, 0 none */
	/* check_ring's scratch: busy descriptors of one ring, the ledger claims on its record. */
	uint32_t *busy_slot;
	uint64_t *busy_seq;
	struct ledger_claim *claims; /* [max_workers * readers_per_worker] */
};

static void problem(struct vctx *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(struct vctx *v, const char *fmt, ...)
{
	if (v->problems < INT32_MAX)
		v->problems++;
	if (!v->report)
		return;
	char buf[320];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	v->report(v->ctx, buf);
}

/* rcu_gp now; called after reading a value that was copied from rcu_gp earlier. */
static uint64_t gp_after(const struct shmb_seg *seg)
{
	cmm_smp_rmb();
	return uatomic_read(&seg_hdr(seg)->rcu_gp);
}

static const char *rec_state_name(uint32_t state)
{
	static const char *const names[] = { "FREE", "LINKING", "LIVE", "UNLINKING", "RETIRED" };
	return state < sizeof names / sizeof names[0] ? names[state] : "invalid";
}

#define ULL(x) ((unsigned long long)(x))

/* The configuration fields, to name the one that changed since the segment was mapped. */
#define VERIFY_CFG_FIELDS(X)  \
	X(max_sessions)       \
	X(n_buckets)          \
	X(max_workers)        \
	X(readers_per_worker) \
	X(ring_events)        \
	X(ring_bytes)         \
	X(max_event_bytes)    \
	X(max_tenant_len)     \
	X(max_principal_len)  \
	X(sweep_interval_ms)  \
	X(inactivity_ttl_ms)  \
	X(absolute_ttl_ms)    \
	X(attr_bytes)         \
	X(attr_keys)          \
	X(node_id)

static void check_header(struct vctx *v)
{
	const struct shmb_seg *seg = v->seg;
	const struct shmb_seg_header *h = seg_hdr(seg);

	uint64_t magic = uatomic_read(&h->magic);
	if (magic != SHMB_MAGIC)
		problem(v, "header: magic is 0x%016llx, not shmbroker's 0x%016llx", ULL(magic),
			ULL(SHMB_MAGIC));
	uint16_t major = h->layout_major, minor = h->layout_minor;
	if (major != SHMB_LAYOUT_MAJOR)
		problem(v, "header: layout version %u.%u, expected major version %d", major, minor,
			SHMB_LAYOUT_MAJOR);
	if (h->fingerprint != shmb_layout_fingerprint())
		problem(v, "header: layout fingerprint is 0x%08x, expected 0x%08x", h->fingerprint,
			shmb_layout_fingerprint());
	if (h->header_size != sizeof *h)
		problem(v, "header: header_size is %u, expected %zu", h->header_size, sizeof *h);
	if (h->segment_size != seg->size)
		problem(v, "header: segment_size is %llu, but the mapping is %llu bytes",
			ULL(h->segment_size), ULL(seg->size));

	/* The configuration and region table were validated and copied at map time; the header
	 * must still say the same (the broker never changes them after publishing the magic). */
	struct shmb_seg_config cfg = h->cfg;
#define VERIFY_CFG_CMP(f)                                                                          \
	if (cfg.f != seg->cfg.f)                                                                   \
		problem(v, "header: cfg." #f " is %llu, but was %llu when the segment was mapped", \
			ULL(cfg.f), ULL(seg->cfg.f));
	VERIFY_CFG_FIELDS(VERIFY_CFG_CMP)
#undef VERIFY_CFG_CMP
	if (cfg.reserved32 != seg->cfg.reserved32)
		problem(v, "header: cfg.reserved32 changed since the segment was mapped");
	for (int i = 0; i < SHMB_REGION_COUNT; i++) {
		struct shmb_region r = h->regions[i];
		if (r.off != seg->regions[i].off || r.size != seg->regions[i].size)
			problem(v,
				"header: region %d is at %llu+%llu, but was at %llu+%llu when the "
				"segment was mapped",
				i, ULL(r.off), ULL(r.size), ULL(seg->regions[i].off),
				ULL(seg->regions[i].size));
	}

	uint32_t flags = h->flags;
	if (minor <= SHMB_LAYOUT_MINOR && (flags & ~SHMB_SEG_F_MEMBARRIER))
		problem(v, "header: unknown flags 0x%08x", flags & ~SHMB_SEG_F_MEMBARRIER);

	uint32_t bstate = uatomic_read(&h->broker_state);
	int32_t bpid = uatomic_read(&h->broker_pid);
	if (bstate != SHMB_BROKER_STOPPED && bstate != SHMB_BROKER_RUNNING)
		problem(v, "header: broker_state %u is not a valid state", bstate);
	else if (bstate == SHMB_BROKER_RUNNING && bpid <= 0)
		problem(v, "header: broker is RUNNING with pid %d", bpid);
	if (bpid < 0)
		problem(v, "header: broker_pid is negative (%d)", bpid);

	if (uatomic_read(&h->rcu_gp) == 0)
		problem(v, "header: rcu_gp is 0 (it starts at 1 and only grows)");
}

static void check_counters(struct vctx *v)
{
	for (uint32_t i = 0; i < SHMB_COUNTER_COUNT; i++) {
		const struct shmb_counter *c = seg_counter(v->seg, i);
		v->st.counters++;
		if (!memchr(c->label, '\0', sizeof c->label))
			problem(v, "counter %u: label is not NUL-terminated", i);
	}
}

/* The crash ledger entry of reader slot k of worker w (one per thread). */
static void check_ledger(struct vctx *v, uint32_t w, uint32_t k, const struct shmb_ledger_entry *le,
			 uint32_t wstate)
{
	uint32_t kind = uatomic_read(&le->kind);
	if (kind == SHMB_LEDGER_FREE)
		return;
	v->st.ledger_in_use++;
	if (kind == SHMB_LEDGER_WAIT) /* 2.0: a thread counted in a record's waiters */
		return;
	if (kind != SHMB_LEDGER_CLAIM && kind != SHMB_LEDGER_ATTR) {
		problem(v, "worker %u, reader slot %u: ledger kind %u is not a valid kind", w, k,
			kind);
		return;
	}
	uint32_t idx = le->session_idx;
	if (idx >= v->seg->cfg.max_sessions)
		problem(v,
			"worker %u, reader slot %u: ledger names record %u, beyond the %u records",
			w, k, idx, v->seg->cfg.max_sessions);
	if (wstate == SHMB_WORKER_FREE)
		problem(v,
			"worker %u, reader slot %u: ledger holds a claim but the worker slot is "
			"free",
			w, k);
}

static void check_workers(struct vctx *v)
{
	const struct shmb_seg *seg = v->seg;
	for (uint32_t w = 0; w < seg->cfg.max_workers; w++) {
		const struct shmb_worker *wk = seg_worker(seg, w);
		uint32_t state = uatomic_read(&wk->state);
		int32_t pid = uatomic_read(&wk->pid);
		v->st.workers++;
		if (state == SHMB_WORKER_LIVE)
			v->st.workers_live++;
		else if (state == SHMB_WORKER_DEAD)
			v->st.workers_dead++;
		else if (state != SHMB_WORKER_FREE)
			problem(v, "worker %u: state %u is not a valid state", w, state);
		if (state == SHMB_WORKER_LIVE && pid <= 0)
			problem(v, "worker %u: live slot has pid %d", w, pid);

		for (uint32_t k = 0; k < seg->cfg.readers_per_worker; k++) {
			const struct shmb_reader *r = seg_reader(seg, w, k);
			uint32_t in_use = uatomic_read(&r->in_use);
			uint64_t ctr = uatomic_read(&r->ctr);
			uint64_t gp = gp_after(seg);
			v->st.readers++;
			if (in_use == 1)
				v->st.readers_in_use++;
			if (ctr != 0)
				v->st.readers_in_section++;
			if (in_use > 1)
				problem(v, "worker %u, reader slot %u: in_use is %u, not 0 or 1", w,
					k, in_use);
			if (ctr > gp)
				problem(v,
					"worker %u, reader slot %u: entered at grace period %llu, "
					"beyond "
					"rcu_gp %llu",
					w, k, ULL(ctr), ULL(gp));
			if (state == SHMB_WORKER_FREE && in_use != 0)
				problem(v,
					"worker %u, reader slot %u: in use but the worker slot is "
					"free",
					w, k);
			if (state == SHMB_WORKER_FREE && ctr != 0)
				problem(v,
					"worker %u, reader slot %u: in a read-side section (ctr "
					"%llu) but "
					"the worker slot is free",
					w, k, ULL(ctr));
			check_ledger(v, w, k, &r->ledger, state);
		}
	}
}

/* Walks the chain of bucket b: at most max_sessions records, stopping at a bad link or at a
 * record already reached (by this chain: a cycle; by another: two chains merged). */
static void walk_chain(struct vctx *v, uint32_t b)
{
	const struct shmb_seg *seg = v->seg;
	const uint32_t max = seg->cfg.max_sessions;
	uint32_t link = uatomic_read(seg_bucket(seg, b));
	if (link == SHMB_NIL)
		return;
	v->st.chains++;
	if (link > max) {
		problem(v, "bucket %u: head %u is out of range (links are 1..%u)", b, link, max);
		return;
	}
	uint32_t steps = 0, prev = 0;
	while (link != SHMB_NIL) {
		if (steps >= max) {
			problem(v, "bucket %u: chain has a cycle or exceeds %u records", b, max);
			break;
		}
		if (link > max) {
			problem(v, "bucket %u: record %u links to %u, out of range (1..%u)", b,
				prev, link, max);
			break;
		}
		uint32_t idx = link - 1;
		if (v->owner[idx] == b + 1) {
			problem(v,
				"bucket %u: chain has a cycle or exceeds %u records (record %u "
				"comes "
				"back after %u record%s)",
				b, max, idx, steps, steps == 1 ? "" : "s");
			break;
		}
		if (v->owner[idx] != 0) {
			problem(v, "bucket %u: record %u is also on the chain of bucket %u", b, idx,
				v->owner[idx] - 1);
			break;
		}
		v->owner[idx] = b + 1;
		steps++;
		v->st.chained++;

		const struct shmb_session_rec *r = seg_rec(seg, idx);
		uint32_t state = uatomic_read(&r->state);
		if (state != SHMB_REC_LINKING && state != SHMB_REC_LIVE &&
		    state != SHMB_REC_UNLINKING) {
			/* Its sid and hash mean nothing: that it is here is the problem. */
			problem(v, "bucket %u: record %u is on the chain in state %u (%s)", b, idx,
				state, rec_state_name(state));
			prev = idx;
			link = uatomic_read(&r->next);
			continue;
		}
		uint8_t sid[SHMB_SID_BYTES];
		memcpy(sid, r->sid, sizeof sid);
		uint32_t want = sid_hash(sid), hash = r->hash;
		if (hash != want)
			problem(v, "record %u: hash 0x%08x does not match its sid (0x%08x)", idx,
				hash, want);
		if (seg_bucket_of(seg, want) != b)
			problem(v,
				"record %u: on the chain of bucket %u, but its sid belongs to "
				"bucket %u",
				idx, b, seg_bucket_of(seg, want));
		prev = idx;
		link = uatomic_read(&r->next);
	}
	if (steps > v->st.longest_chain)
		v->st.longest_chain = steps;
}

/* The descriptor ring of LIVE record i: each slot holds nothing (seq 0) or an id that maps to
 * that slot and was claimed (<= next_id, read after seq: publishers claim before they take a
 * slot); a committed head descriptor spans 1..ring_events slots and its length fits them. The
 * fields are re-validated against seq after they are read, so a slot rewritten meanwhile is
 * skipped rather than misjudged. */
static void check_ring(struct vctx *v, uint32_t i, const struct shmb_session_rec *r)
{
	const struct shmb_seg *seg = v->seg;
	const uint32_t n = seg->cfg.ring_events, sb = seg->cfg.ring_bytes / n;
	uint32_t nbusy = 0;
	for (uint32_t slot = 0; slot < n; slot++) {
		const struct shmb_event_desc *d = seg_desc(seg, i, slot);
		uint64_t s = uatomic_read(&d->seq);
		uint64_t id = s & ~SHMB_DESC_BUSY;
		if (id == 0)
			continue;
		cmm_smp_rmb(); /* seq before the fields and next_id below */
		uint64_t last = uatomic_read(&r->next_id);
		if ((id & (n - 1)) != slot) {
			problem(v,
				"record %u: event slot %u holds id %llu, which belongs to slot %llu",
				i, slot, ULL(id), ULL(id & (n - 1)));
			continue;
		}
		if (id > last) {
			problem(v,
				"record %u: event slot %u holds id %llu, beyond the last claimed "
				"id "
				"%llu",
				i, slot, ULL(id), ULL(last));
			continue;
		}
		if (s & SHMB_DESC_BUSY) {
			/* Being written, if a live (or dead, being settled) publisher's ledger
			 * claims it: judged after the loop, against the ledgers read then. */
			v->busy_slot[nbusy] = slot;
			v->busy_seq[nbusy++] = s;
			continue;
		}
		uint32_t flags = uatomic_read(&d->flags), nslots = uatomic_read(&d->nslots);
		uint32_t len = uatomic_read(&d->len);
		cmm_smp_rmb();
		if (uatomic_read(&d->seq) != s)
			continue; /* rewritten while we read it */
		v->st.events++;
		if (flags & SHMB_DESC_CONT)
			continue;
		if (nslots < 1 || nslots > n)
			problem(v, "record %u: event %llu spans %u slots (1..%u)", i, ULL(id),
				nslots, n);
		else if (!(flags & SHMB_EV_GAP) && len > (uint64_t)nslots * sb)
			problem(v,
				"record %u: event %llu is %u bytes, more than its %u slot%s hold "
				"(%llu)",
				i, ULL(id), len, nslots, nslots == 1 ? "" : "s",
				ULL((uint64_t)nslots * sb));
	}
	if (nbusy == 0)
		return;
	/* A busy descriptor no live or dead worker's ledger claims will never be committed:
	 * publishers of the next lap wait on it (giving up after EVR_WAIT_MS) and cursors stop
	 * there until the broker writes it as a gap (broker/gaps.c). */
	/* Every seq above before the ledgers: a publisher stores its entry before it takes a
	 * descriptor and frees it only after committing, so a descriptor seen busy whose entry is
	 * not found afterwards was committed meanwhile (its seq changed: re-read before reporting)
	 * or has no owner at all (common/ledger.h). */
	cmm_smp_mb();
	uint32_t gen = uatomic_read(&r->gen);
	uint32_t nclaims = ledger_snapshot(v->seg, v->claims);
	cmm_smp_rmb();
	for (uint32_t b = 0; b < nbusy; b++) {
		uint64_t s = v->busy_seq[b], id = s & ~SHMB_DESC_BUSY;
		if (ledger_any_covers(v->claims, nclaims, i, gen, id) ||
		    uatomic_read(&seg_desc(seg, i, v->busy_slot[b])->seq) != s)
			continue;
		problem(v,
			"record %u: event slot %u is busy with id %llu, but no live publisher's "
			"crash ledger claims it (an ownerless busy descriptor: the broker writes it "
			"as a gap)",
			i, v->busy_slot[b], ULL(id));
	}
}

static void check_binding(struct vctx *v, uint32_t i, const struct shmb_session_rec *r)
{
	const struct shmb_seg_config *cfg = &v->seg->cfg;
	uint32_t tlen = r->tenant_len, plen = r->principal_len, hasp = r->has_principal;
	if (tlen < 1 || tlen > cfg->max_tenant_len)
		problem(v, "record %u: tenant_len %u is outside 1..%u", i, tlen,
			cfg->max_tenant_len);
	if (hasp > 1)
		problem(v, "record %u: has_principal is %u, not 0 or 1", i, hasp);
	if (plen > cfg->max_principal_len)
		problem(v, "record %u: principal_len %u exceeds %u", i, plen,
			cfg->max_principal_len);
	if (hasp == 0 && plen != 0)
		problem(v, "record %u: no principal but principal_len is %u", i, plen);
	if (hasp == 1 && plen == 0)
		problem(v, "record %u: has a principal of length 0", i);
	int64_t created = r->created_at_ms;
	if (created <= 0)
		problem(v, "record %u: created_at_ms is %lld, expected > 0", i, (long long)created);
	/* Line 0 repeats what lookups need of lines 1, 4 and 5 (layout 2.0): the keyed hash of
	 * the binding and the absolute deadline. A copy that disagrees with its source makes
	 * open accept or refuse the wrong caller, or expire the session at the wrong time. */
	uint64_t attl = r->absolute_ttl_ms;
	int64_t want_exp;
	if (attl == 0 || attl > (uint64_t)INT64_MAX ||
	    __builtin_add_overflow(created, (int64_t)attl, &want_exp))
		want_exp = INT64_MAX; /* as brk_index_create computes it */
	int64_t exp = r->expires_at_ms;
	if (exp != want_exp)
		problem(v,
			"record %u: expires_at_ms is %lld, but created_at_ms + absolute_ttl_ms is "
			"%lld",
			i, (long long)exp, (long long)want_exp);
	if (tlen <= SHMB_TENANT_CAP && plen <= SHMB_PRINCIPAL_CAP && hasp <= 1) {
		uint64_t want = shmb_binding_hash(v->seg->hash_key, r->tenant, tlen,
						  hasp ? r->principal : NULL, plen);
		if (r->binding != want)
			problem(v,
				"record %u: binding hash %016llx does not match its tenant and "
				"principal (%016llx)",
				i, ULL(r->binding), ULL(want));
	}
}

/* Record i's attribute area (docs/attributes.md): every entry word names a range inside the
 * area and inside one bitmap word, its cells are allocated and no other entry's overlap them, the
 * block there is consistent with the word (lengths fit the count, key_len 1..64) and its key
 * hashes to the entry's tag; no bit beyond the area's cells is set. Cells allocated but named by
 * no entry are normal while a writer works (and after a writer died, until the broker settles
 * it), so they are not reported. A word that changes while it is checked is skipped. */
static void check_attrs(struct vctx *v, uint32_t i)
{
	struct attr_area a;
	if (attr_area_of(v->seg, i, &a) < 0)
		return;
	uint64_t seen[SHMB_ATTR_BYTES_LIMIT / SHMB_ATTR_CELL / 64] = { 0 };
	for (uint32_t w = 0; w < a.nwords; w++) {
		uint32_t have = a.ncells - w * SHMB_ATTR_CELLS_PER_WORD;
		uint64_t bits = uatomic_read(&a.bitmap[w]) & UINT64_C(0xffffffff);
		if (have < SHMB_ATTR_CELLS_PER_WORD && (bits >> have))
			problem(v,
				"record %u: attribute bitmap word %u has bits set beyond the %u "
				"cells",
				i, w, a.ncells);
	}
	for (uint32_t e = 0; e < a.nkeys; e++) {
		const struct shmb_attr_entry *en = &a.entries[e];
		uint64_t tag = uatomic_read(&en->tag);
		uint64_t word = uatomic_read(&en->word);
		if (tag == 0) {
			if (word != 0)
				problem(v,
					"record %u: attribute entry %u is free but its word is "
					"0x%llx",
					i, e, ULL(word));
			continue;
		}
		uint64_t range = word & ATTR_RANGE_MASK;
		if (ATTR_COUNT(range) == 0)
			continue;
		if (!attr_range_ok(&a, range)) {
			problem(v,
				"record %u: attribute entry %u names cells %u..+%u, outside the "
				"%u cells or across a bitmap word",
				i, e, ATTR_START(range), ATTR_COUNT(range), a.ncells);
			continue;
		}
		uint32_t wi = ATTR_START(range) / SHMB_ATTR_CELLS_PER_WORD;
		uint64_t bits = uatomic_read(&a.bitmap[wi]);
		struct attr_value val;
		int rc = attr_read(&a, en, NULL, 0, 1, NULL, 0, &val);
		if (uatomic_read(&en->word) != word || val.word != word)
			continue; /* changed meanwhile */
		uint64_t mask = attr_range_mask(range);
		if ((bits & mask) != mask)
			problem(v,
				"record %u: attribute entry %u names cells %u..+%u, not all "
				"allocated",
				i, e, ATTR_START(range), ATTR_COUNT(range));
		for (uint32_t c = ATTR_START(range); c < ATTR_START(range) + ATTR_COUNT(range);
		     c++) {
			if (seen[c / 64] & (UINT64_C(1) << (c % 64))) {
				problem(v,
					"record %u: attribute entry %u shares cell %u with "
					"another entry",
					i, e, c);
				break;
			}
			seen[c / 64] |= UINT64_C(1) << (c % 64);
		}
		if (ATTR_VERSION(word) == 0)
			problem(v, "record %u: attribute entry %u is set with version 0", i, e);
		if (rc == SHMB_ECORRUPT)
			problem(v,
				"record %u: attribute entry %u: the block at cell %u does not "
				"match the entry (lengths or key)",
				i, e, ATTR_START(range));
		else if (attr_hash(v->seg, val.key, val.key_len) != tag)
			problem(v,
				"record %u: attribute entry %u: key \"%s\" does not hash to "
				"the entry's tag",
				i, e, val.key);
	}
}

static void check_records(struct vctx *v)
{
	const struct shmb_seg *seg = v->seg;
	const uint32_t max = seg->cfg.max_sessions;
	for (uint32_t i = 0; i < max; i++) {
		const struct shmb_session_rec *r = seg_rec(seg, i);
		uint32_t state = uatomic_read(&r->state);
		v->st.records++;
		if (state > SHMB_REC_RETIRED) {
			v->st.bad_state++;
			problem(v, "record %u: state %u is not a valid state", i, state);
			continue;
		}
		v->st.by_state[state]++;
		uint32_t next = uatomic_read(&r->next);
		if (next > max)
			problem(v, "record %u: next link %u is out of range (0 or 1..%u)", i, next,
				max);
		/* FREE records hold nothing; LINKING ones are being filled by the broker (after a
		 * broker crash, adoption finishes or undoes them), so their fields prove nothing.
		 * A FREE or RETIRED record on a chain is reported by walk_chain(). */
		if (state == SHMB_REC_FREE || state == SHMB_REC_LINKING)
			continue;
		check_binding(v, i, r);

		if (state == SHMB_REC_LIVE)
			check_ring(v, i, r);
		check_attrs(v, i);
		if (state == SHMB_REC_LIVE && v->owner[i] == 0) {
			uint8_t sid[SHMB_SID_BYTES];
			memcpy(sid, r->sid, sizeof sid);
			problem(v, "record %u: LIVE but not on any bucket chain (its bucket is %u)",
				i, seg_bucket_of(seg, sid_hash(sid)));
		}
		if (state == SHMB_REC_RETIRED) {
			uint64_t rgp = uatomic_read(&r->retire_gp);
			uint64_t gp = gp_after(seg);
			if (rgp > gp)
				problem(v, "record %u: retire_gp %llu is beyond rcu_gp %llu", i,
					ULL(rgp), ULL(gp));
			uint32_t why = r->retire_reason;
			if (why > SHMB_RETIRE_EXPIRED)
				problem(v, "record %u: retire_reason %u is not a valid reason", i,
					why);
		}
		for (uint32_t wd = 0; wd < SHMB_SUB_WORDS; wd++) {
			uint64_t bits = uatomic_read(&r->subscribers[wd]);
			for (uint32_t bit = 0; bits && bit < 64; bit++, bits >>= 1) {
				uint32_t w = wd * 64 + bit;
				if ((bits & 1) && w >= seg->cfg.max_workers) {
					problem(v,
						"record %u: subscriber bit %u is set, but there "
						"are only "
						"%u worker slots",
						i, w, seg->cfg.max_workers);
				}
			}
		}
	}
}

int seg_verify(const struct shmb_seg *seg, void (*report)(void *ctx, const char *problem),
	       void *ctx, struct seg_verify_stats *stats)
{
	struct vctx v = { .seg = seg, .report = report, .ctx = ctx };
	v.owner = calloc(seg->cfg.max_sessions, sizeof *v.owner);
	v.busy_slot = calloc(seg->cfg.ring_events, sizeof *v.busy_slot);
	v.busy_seq = calloc(seg->cfg.ring_events, sizeof *v.busy_seq);
	v.claims = calloc((size_t)seg->cfg.max_workers * seg->cfg.readers_per_worker + 1,
			  sizeof *v.claims);
	if (!v.owner || !v.busy_slot || !v.busy_seq || !v.claims) {
		free(v.owner);
		free(v.busy_slot);
		free(v.busy_seq);
		free(v.claims);
		return SHMB_ENOMEM;
	}

	check_header(&v);
	check_counters(&v);
	check_workers(&v);
	v.st.buckets = seg->cfg.n_buckets;
	for (uint32_t b = 0; b < seg->cfg.n_buckets; b++)
		walk_chain(&v, b);
	check_records(&v);
	v.st.rcu_gp = gp_after(seg);

	free(v.owner);
	free(v.busy_slot);
	free(v.busy_seq);
	free(v.claims);
	if (stats)
		*stats = v.st;
	return v.problems;
}
