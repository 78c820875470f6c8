/* attrs.c - session attributes from a worker's side: set, set-if, delete, get and list, all in
 * the calling process, lock-free, without the broker (docs/attributes.md).
 *
 * Every operation runs inside a read-side section pinned to the session's record, after
 * re-checking the handle (generation, LIVE, unexpired): the broker recycles the record, and
 * zeroes its attribute area, only after every such section has ended.
 *
 * A change is: (1) the thread's crash ledger names the session and the candidate cells;
 * (2) a CAS on one bitmap word allocates them; (3) after a release fence, the block (header, key,
 * value) is written into them; (4) the entry word is read, the ledger gets the old block's cells
 * too, and a CAS replaces the word (version + 1, new range): the commit point; (5) a CAS on the
 * old block's bitmap word frees it; (6) the ledger is cleared. A process killed anywhere leaves
 * the old or the new value and at most the cells its ledger names allocated: the broker frees
 * those (broker/attrs.c). A delete is the same without (2) and (3). Readers copy optimistically
 * and validate against the entry word (common/attr.c). */
#include <string.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "attr.h"
#include "clock.h"
#include "fault.h"
#include "internal.h"

/* Allocation attempts before a set gives up with SHMB_EQUOTA: each failed CAS is another
 * writer's progress, so this bounds only a pathological storm. */
#define ATTR_ALLOC_TRIES 100000

enum { OP_SET, OP_SET_IF, OP_DELETE };

/* A bitmap word with `mask` set (alloc) or cleared (free) and its tag bumped. */
static uint64_t bitmap_next(uint64_t b, uint64_t mask, int alloc)
{
	uint64_t tag = (b >> 32) + 1;
	uint64_t bits = alloc ? (b | mask) : (b & ~mask);
	return (tag << 32) | (bits & UINT64_C(0xffffffff));
}

/* First run of n free cells in bitmap word b of word index wi: the range, or 0. */
static uint64_t first_fit(const struct attr_area *a, uint32_t wi, uint64_t b, uint32_t n)
{
	uint32_t have = a->ncells - wi * SHMB_ATTR_CELLS_PER_WORD;
	if (have > SHMB_ATTR_CELLS_PER_WORD)
		have = SHMB_ATTR_CELLS_PER_WORD;
	uint64_t m = n >= 32 ? UINT64_C(0xffffffff) : (UINT64_C(1) << n) - 1;
	for (uint32_t s = 0; s + n <= have; s++)
		if (((b >> s) & m) == 0)
			return SHMB_ATTR_RANGE(wi * SHMB_ATTR_CELLS_PER_WORD + s, n);
	return 0;
}

/* Frees a block's cells: clears its bits, bumps the tag. The cells are ours (we allocated them,
 * or we replaced the word that named them), so nobody else clears them. */
static void cells_free(const struct attr_area *a, uint64_t range)
{
	uint64_t *bw = &a->bitmap[ATTR_START(range) / SHMB_ATTR_CELLS_PER_WORD];
	uint64_t mask = attr_range_mask(range);
	uint64_t b = uatomic_read(bw);
	for (;;) {
		/* A release (full barrier): our word CAS, which unreferenced the block, comes
		 * before; pairs with the next allocator's acquiring CAS (docs/attributes.md). */
		uint64_t seen = uatomic_cmpxchg(bw, b, bitmap_next(b, mask, 0));
		if (seen == b)
			return;
		b = seen;
	}
}

/* Allocates n cells, naming each candidate in the ledger (id) before its CAS. Returns the range,
 * or 0 when none fits. */
static uint64_t cells_alloc(const struct attr_area *a, struct shmb_ledger_entry *le, uint32_t idx,
			    uint32_t n)
{
	for (uint32_t tries = 0, wi = 0, scanned = 0; tries < ATTR_ALLOC_TRIES;) {
		if (scanned == a->nwords)
			return 0; /* one full pass without a fit */
		uint64_t *bw = &a->bitmap[wi];
		uint64_t b = uatomic_read(bw);
		uint64_t range = first_fit(a, wi, b, n);
		if (!range) {
			wi = (wi + 1) % a->nwords;
			scanned++;
			continue;
		}
		/* The ledger before the CAS (a full barrier): the broker, reading this word and
		 * then the ledgers, sees the candidate (broker/attrs.c). */
		uatomic_set(&le->id, ATTR_LEDGER_ID(idx, range, 0));
		/* An acquire (full barrier): reads the freer's release of these cells (cells_free)
		 * or a later value; the caller's release fence follows before its block stores. */
		uint64_t seen = uatomic_cmpxchg(bw, b, bitmap_next(b, attr_range_mask(range), 1));
		if (seen == b)
			return range;
		tries++;
		scanned = 0; /* the word changed: cells may have been freed anywhere */
	}
	return 0;
}

static int version_matches(uint64_t w, uint64_t version)
{
	uint32_t count = ATTR_COUNT(w);
	return version == 0 ? count == 0 : count > 0 && ATTR_VERSION(w) == version;
}

static uint64_t version_next(uint64_t w)
{
	uint64_t v = ATTR_VERSION(w);
	return v >= ATTR_VERSION_MAX ? 1 : v + 1;
}

/* The block named by w holds key (1), another key with the same hash (0), or is damaged (<0). */
static int same_key(const struct attr_area *a, const struct shmb_attr_entry *e, uint64_t w,
		    const char *key, size_t klen)
{
	if (ATTR_COUNT(w) == 0)
		return 1;
	struct attr_value v;
	int rc = attr_read(a, e, key, klen, 0, NULL, 0, &v);
	if (v.word != w && rc != SHMB_ECORRUPT)
		return 1; /* changed meanwhile: judged again at the next CAS attempt */
	if (rc == SHMB_ENOENT)
		return 0;
	return rc < 0 ? rc : 1;
}

static void ledger_clear(struct shmb_ledger_entry *le)
{
	/* After our last CAS (a full barrier): a broker that reads the cleared id sees the
	 * commit and the free before it. */
	uatomic_set(&le->id, 0);
	cmm_smp_wmb();
	uatomic_set(&le->kind, SHMB_LEDGER_FREE);
}

static int attr_change(shmb_session *s, const char *key, const void *val, size_t len, int op,
		       uint64_t version)
{
	if (!s || !shmbi_client_ok(s->c))
		return shmbi_client_err(s ? s->c : NULL);
	long kl = attr_key_len(key);
	if (kl < 0 || (op != OP_DELETE && ((!val && len) || len > SHMB_ATTR_MAX)))
		return SHMB_EINVAL;
	shmb_client *c = s->c;
	struct attr_area a;
	if (attr_area_of(&c->seg, s->idx, &a) < 0)
		return op == OP_DELETE ? SHMB_ENOENT : SHMB_EQUOTA; /* attributes disabled */
	uint32_t need = op == OP_DELETE ? 0 : attr_cells_for((size_t)kl, len);
	if (need > SHMB_ATTR_CELLS_PER_WORD) /* cannot happen: 8 + 64 + SHMB_ATTR_MAX = 2048 */
		return SHMB_EINVAL;
	if (need > a.ncells)
		return SHMB_EQUOTA;
	uint64_t h = attr_hash(&c->seg, key, (size_t)kl);
	int rc;
	struct shmbi_reader_tls *t = shmbi_read_lock_pinned(c, s->idx + 1, &rc);
	if (!t)
		return rc;
	if (!shmbi_session_rec(s, shmb_now_coarse_ms())) {
		shmbi_read_unlock(c);
		return SHMB_ENOENT;
	}
	struct shmb_attr_entry *e = attr_find(&a, h, op != OP_DELETE);
	if (!e) {
		shmbi_read_unlock(c);
		return op == OP_DELETE ? SHMB_ENOENT : SHMB_EQUOTA; /* attr_keys used up */
	}
	/* A plain load: only compared here, and the expected value of the commit CAS later. */
	uint64_t w = uatomic_read(&e->word);
	/* Fail fast, before allocating anything; judged again against the word we replace. */
	if ((op == OP_SET_IF && !version_matches(w, version)) ||
	    (op == OP_DELETE && ATTR_COUNT(w) == 0)) {
		shmbi_read_unlock(c);
		return op == OP_DELETE ? SHMB_ENOENT : SHMB_ECONFLICT;
	}

	/* (1) The ledger: which session, then (id) which cells. Complete before it is marked
	 * taken: the broker reads kind, then (rmb) the fields. */
	struct shmb_ledger_entry *le = shmbi_ledger(t);
	uatomic_set(&le->session_idx, s->idx);
	uatomic_set(&le->session_gen, s->gen);
	uatomic_set(&le->nslots, 0);
	uatomic_set(&le->id, ATTR_LEDGER_ID(s->idx, 0, 0));
	cmm_smp_wmb();
	uatomic_set(&le->kind, SHMB_LEDGER_ATTR);
	SHMB_FAULT("attr.ledger");

	uint64_t nr = 0;
	if (need) {
		/* (2) Allocate. */
		nr = cells_alloc(&a, le, s->idx, need);
		if (!nr) {
			ledger_clear(le);
			shmbi_read_unlock(c);
			return SHMB_EQUOTA; /* the session's attr_bytes are used up */
		}
		SHMB_FAULT("attr.alloc");
		/* (3) The block. The release fence orders our allocation CAS (which read the
		 * freer's release) before these stores: a reader that copies them and then
		 * fences sees the word that named the cells' previous block replaced. */
		cmm_smp_wmb();
		uint8_t *p = a.cells + (size_t)ATTR_START(nr) * SHMB_ATTR_CELL;
		struct shmb_attr_block hdr = { .key_len = (uint16_t)kl, .val_len = (uint32_t)len };
		attr_copy_in(p, &hdr, sizeof hdr);
		attr_copy_in(p + sizeof hdr, key, (size_t)kl);
		if (len)
			attr_copy_in(p + sizeof hdr + kl, val, len);
		SHMB_FAULT("attr.write");
	}

	/* (4) Commit: replace the word (version + 1, new range). */
	uint64_t checked = UINT64_MAX; /* the word whose block was found to hold our key */
	for (;;) {
		w = uatomic_read(&e->word);
		uint64_t old = ATTR_COUNT(w) ? (w & ATTR_RANGE_MASK) : 0;
		if (old && !attr_range_ok(&a, old))
			rc = SHMB_ECORRUPT;
		else if (op == OP_SET_IF && !version_matches(w, version))
			rc = SHMB_ECONFLICT;
		else if (op == OP_DELETE && !old)
			rc = SHMB_ENOENT; /* deleted meanwhile */
		else if (w != checked && (rc = same_key(&a, e, w, key, (size_t)kl)) <= 0)
			/* Another key with this hash holds the entry (docs/attributes.md). */
			rc = rc < 0 ? rc : op == OP_DELETE ? SHMB_ENOENT : SHMB_EQUOTA;
		else
			rc = 0;
		if (rc < 0) {
			if (nr)
				cells_free(&a, nr);
			ledger_clear(le);
			shmbi_read_unlock(c);
			return rc;
		}
		checked = w;
		/* The old block's cells before the CAS (a full barrier): after the CAS nobody
		 * else names them (docs/attributes.md, "Settling"). */
		uatomic_set(&le->id, ATTR_LEDGER_ID(s->idx, nr, old));
		SHMB_FAULT("attr.old");
		/* Release: the block stores above come before (the reader's acquire load of the
		 * word pairs with it). */
		if (uatomic_cmpxchg(&e->word, w, ATTR_WORD(version_next(w), nr)) == w)
			break;
	}
	SHMB_FAULT("attr.commit");
	/* (5) Free the old block. */
	uint64_t old = ATTR_COUNT(w) ? (w & ATTR_RANGE_MASK) : 0;
	if (old) {
		cells_free(&a, old);
		SHMB_FAULT("attr.free");
	}
	/* (6) Done. */
	ledger_clear(le);
	shmbi_read_unlock(c);
	return 0;
}

int shmb_attr_set(shmb_session *s, const char *key, const void *val, size_t len)
{
	return attr_change(s, key, val, len, OP_SET, 0);
}

int shmb_attr_set_if(shmb_session *s, const char *key, const void *val, size_t len,
		     uint64_t version)
{
	return attr_change(s, key, val, len, OP_SET_IF, version);
}

int shmb_attr_delete(shmb_session *s, const char *key)
{
	return attr_change(s, key, NULL, 0, OP_DELETE, 0);
}

int shmb_attr_get(shmb_session *s, const char *key, void *buf, size_t buflen, uint64_t *version)
{
	if (!s || !shmbi_client_ok(s->c) || (!buf && buflen))
		return shmbi_client_err(s ? s->c : NULL);
	long kl = attr_key_len(key);
	if (kl < 0)
		return SHMB_EINVAL;
	shmb_client *c = s->c;
	struct attr_area a;
	if (attr_area_of(&c->seg, s->idx, &a) < 0)
		return SHMB_ENOENT; /* attributes disabled: nothing is set */
	uint64_t h = attr_hash(&c->seg, key, (size_t)kl);
	int rc;
	struct shmbi_reader_tls *t = shmbi_read_lock_pinned(c, s->idx + 1, &rc);
	if (!t)
		return rc;
	if (!shmbi_session_rec(s, shmb_now_coarse_ms())) {
		shmbi_read_unlock(c);
		return SHMB_ENOENT;
	}
	const struct shmb_attr_entry *e = attr_find(&a, h, 0);
	char none;
	struct attr_value v;
	rc = e ? attr_read(&a, e, key, (size_t)kl, 0, buf ? buf : &none, buflen, &v) : SHMB_ENOENT;
	shmbi_read_unlock(c);
	if (rc >= 0 && version)
		*version = ATTR_VERSION(v.word);
	return rc;
}

int shmb_attr_list(shmb_session *s, shmb_attr_visit_fn fn, void *arg)
{
	if (!s || !fn || !shmbi_client_ok(s->c))
		return shmbi_client_err(s ? s->c : NULL);
	shmb_client *c = s->c;
	struct attr_area a;
	if (attr_area_of(&c->seg, s->idx, &a) < 0)
		return 0;
	/* On the stack, not per thread: a visitor may list another session (or this one) and
	 * then still read the value it was handed. */
	uint8_t val[SHMB_ATTR_MAX];
	int n = 0;
	/* One section per entry, so fn runs outside any (it may call anything, and block). */
	for (uint32_t i = 0; i < a.nkeys; i++) {
		int rc;
		struct shmbi_reader_tls *t = shmbi_read_lock_pinned(c, s->idx + 1, &rc);
		if (!t)
			return rc;
		if (!shmbi_session_rec(s, shmb_now_coarse_ms())) {
			shmbi_read_unlock(c);
			return SHMB_ENOENT;
		}
		const struct shmb_attr_entry *e = &a.entries[i];
		struct attr_value v;
		rc = uatomic_read(&e->tag) ? attr_read(&a, e, NULL, 0, 1, val, sizeof val, &v)
					   : SHMB_ENOENT;
		shmbi_read_unlock(c);
		if (rc == SHMB_ENOENT)
			continue;
		if (rc < 0)
			return rc;
		n++;
		if (fn(arg, v.key, val, (size_t)rc, ATTR_VERSION(v.word)) != 0)
			break;
	}
	return n;
}
