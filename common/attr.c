/* attr.c - session attributes: the helpers every side shares (attr.h), above all the optimistic
 * read of one value. The read is a seqlock without a sequence word of its own: the entry word
 * (version << 16 | range) changes with every change of the attribute and never returns to an
 * earlier value (versions only grow), and a block is written only by the writer that allocated
 * its cells and freed only after the word that named it was replaced; so a copy taken between
 * two equal loads of the word, with an acquire fence before the second, is the block the word
 * named (docs/attributes.md, "Reading"). */
#include <string.h>

#include <urcu/arch.h>
#include <urcu/uatomic.h>

#include "attr.h"
#include "fault.h"
#include "hash.h"
#include "shmb.h"

int attr_area_of(const struct shmb_seg *seg, uint32_t idx, struct attr_area *a)
{
	uint32_t bytes = seg->cfg.attr_bytes, keys = seg->cfg.attr_keys;
	uint64_t size = shmb_attr_area_size(bytes, keys);
	if (size == 0 || idx >= seg->cfg.max_sessions)
		return -1;
	const struct shmb_region *rg = &seg->regions[SHMB_REGION_ATTRS];
	uint64_t off = (uint64_t)idx * size;
	/* The region was checked against the segment at map time (seg_map); this is belt and
	 * braces against a configuration copy that disagrees with the region table. */
	if (off + size > rg->size || rg->off + rg->size > seg->size)
		return -1;
	uint8_t *base = seg->base + rg->off + off;
	*a = (struct attr_area){
		.entries = (struct shmb_attr_entry *)base,
		.bitmap = (uint64_t *)(base + (uint64_t)keys * sizeof(struct shmb_attr_entry)),
		.cells = base + shmb_attr_cells_off(bytes, keys),
		.nkeys = keys,
		.nwords = shmb_attr_words(bytes),
		.ncells = bytes / SHMB_ATTR_CELL,
	};
	return 0;
}

long attr_key_len(const char *key)
{
	if (!key)
		return -1;
	for (long i = 0; i <= SHMB_ATTR_KEY_MAX; i++) {
		unsigned char ch = (unsigned char)key[i];
		if (ch == '\0')
			return i ? i : -1;
		if (ch < 0x21 || ch > 0x7e)
			return -1;
	}
	return -1;
}

uint64_t attr_hash(const struct shmb_seg *seg, const char *key, size_t klen)
{
	uint64_t h = shmb_hash64(seg->hash_key, key, klen);
	return h ? h : 1;
}

struct shmb_attr_entry *attr_find(const struct attr_area *a, uint64_t h, int claim)
{
	/* The first entry: h scaled into 0..nkeys-1 by a multiply and a shift (Lemire's
	 * "fastrange"), not h % nkeys: a 64-bit division would cost a tenth of a get. */
	uint32_t i = (uint32_t)(((h >> 32) * (uint64_t)a->nkeys) >> 32);
	for (uint32_t j = 0; j < a->nkeys; j++, i = i + 1 == a->nkeys ? 0 : i + 1) {
		struct shmb_attr_entry *e = &a->entries[i];
		uint64_t t = uatomic_read(&e->tag);
		if (t == h)
			return e;
		if (t != 0)
			continue;
		if (!claim)
			return NULL; /* entries are never unbound: h would be at or before this one */
		/* Bound for the record's life. A failed CAS returns the winner's hash: ours too if
		 * another thread claimed the same key first. */
		t = uatomic_cmpxchg(&e->tag, 0, h);
		if (t == 0 || t == h)
			return e;
	}
	return NULL;
}

/* Not inlined: each is a frame the TSan suppressions name, and the compiler cannot turn a copy
 * whose bound it knows (a 65-byte key buffer) into a slow-starting rep movs. */
__attribute__((noinline)) void attr_copy_out(void *dst, const uint8_t *src, size_t len)
{
	memcpy(dst, src, len);
}

__attribute__((noinline)) void attr_copy_in(uint8_t *dst, const void *src, size_t len)
{
	memcpy(dst, src, len);
}

/* The block's key (in the area, possibly being overwritten: validated by the caller's second
 * load of the word) against key[0..klen): 0 when equal. */
__attribute__((noinline)) static int attr_key_cmp(const uint8_t *p, const char *key, size_t klen)
{
	return memcmp(p, key, klen);
}

int attr_read(const struct attr_area *a, const struct shmb_attr_entry *e, const char *key,
	      size_t klen, int copy_key, void *buf, size_t buflen, struct attr_value *out)
{
	/* Each retry follows a change of the word, i.e. a writer's commit: the loop ends as soon
	 * as one copy sees no commit, and never spins on a word that stays the same. */
	uint64_t w = uatomic_read(&e->word);
	for (;;) {
		/* The word before the block: pairs with the publishing CAS of the writer (a full
		 * barrier after its block stores). */
		cmm_smp_rmb();
		if (out)
			out->word = w;
		uint64_t range = w & ATTR_RANGE_MASK;
		if (ATTR_COUNT(range) == 0)
			return SHMB_ENOENT;
		if (!attr_range_ok(a, range))
			return SHMB_ECORRUPT; /* one load: no writer ever stores such a word */
		const uint8_t *p = a->cells + (size_t)ATTR_START(range) * SHMB_ATTR_CELL;
		size_t cap = (size_t)ATTR_COUNT(range) * SHMB_ATTR_CELL;
		struct shmb_attr_block hdr;
		attr_copy_out(&hdr, p, sizeof hdr);
		int rc = 0;
		char kb[SHMB_ATTR_KEY_CAP + 1];
		if (hdr.key_len < 1 || hdr.key_len > SHMB_ATTR_KEY_CAP || hdr.flags != 0 ||
		    hdr.val_len > SHMB_ATTR_MAX ||
		    attr_cells_for(hdr.key_len, hdr.val_len) != ATTR_COUNT(range) ||
		    sizeof hdr + hdr.key_len + hdr.val_len > cap) {
			rc = SHMB_ECORRUPT;
		} else {
			if (copy_key) {
				attr_copy_out(kb, p + sizeof hdr, hdr.key_len);
				kb[hdr.key_len] = '\0';
				/* The key goes to a visitor or a terminal: a byte no set could
				 * have stored (a NUL, an escape) marks the block damaged. */
				if (attr_key_len(kb) != (long)hdr.key_len)
					rc = SHMB_ECORRUPT;
			}
			SHMB_FAULT("attr.read"); /* tests stop a reader mid-copy here */
			if (rc == 0 && !copy_key &&
			    (hdr.key_len != klen || attr_key_cmp(p + sizeof hdr, key, klen) != 0))
				rc = SHMB_ENOENT; /* another key with the same hash (docs) */
			else if (rc == 0 && buf && hdr.val_len > buflen)
				rc = SHMB_ETOOBIG;
			else if (rc == 0 && buf && hdr.val_len)
				attr_copy_out(buf, p + sizeof hdr + hdr.key_len, hdr.val_len);
		}
		/* The copy before the second load: pairs with the release fence an allocator
		 * issues between its allocation CAS and its block stores (docs/attributes.md). */
		cmm_smp_rmb();
		uint64_t w2 = uatomic_read(&e->word);
		if (w2 != w) {
			w = w2; /* a commit happened meanwhile: the copy may be torn, take it again */
			continue;
		}
		if (out) {
			out->word = w;
			out->val_len = rc == SHMB_ECORRUPT ? 0 : hdr.val_len;
			out->key_len = rc == SHMB_ECORRUPT ? 0 : hdr.key_len;
			if (copy_key && rc != SHMB_ECORRUPT)
				memcpy(out->key, kb, (size_t)hdr.key_len + 1);
		}
		return rc < 0 ? rc : (int)hdr.val_len;
	}
}
