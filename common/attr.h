/* attr.h - session attributes in shared memory: the area of one record, key rules, lookup of a
 * key's entry, and the optimistic (seqlock-style) read of one value. Shared by the library
 * (client/attrs.c writes and reads), the broker (broker/attrs.c settles dead writers and clears
 * recycled areas), shmctl show and verify (read-only). docs/attributes.md argues the protocol.
 *
 * Everything read from the area is bounds-checked: a damaged area gives SHMB_ECORRUPT (or
 * SHMB_ENOENT for an entry that names nothing), never an access outside the area or a loop
 * without bound. */
#ifndef SHMB_ATTR_H
#define SHMB_ATTR_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"
#include "seg.h"

/* Fields of an entry word and of a cell range (layout.h: word = version << 16 | range). */
#define ATTR_RANGE_MASK UINT64_C(0xffff)
#define ATTR_START(range) ((uint32_t)((range)&0x3ff))
#define ATTR_COUNT(range) ((uint32_t)(((range) >> 10) & 0x3f))
#define ATTR_VERSION(word) ((word) >> 16)
#define ATTR_VERSION_MAX ((UINT64_C(1) << 48) - 1)
#define ATTR_WORD(version, range) (((uint64_t)(version) << 16) | ((range)&ATTR_RANGE_MASK))
/* A ledger id: SHMB_LEDGER_ATTR_ID | idx | new << 24 | old << 40 (layout.h). */
#define ATTR_LEDGER_ID(idx, nw, old) \
	(SHMB_LEDGER_ATTR_ID | (uint64_t)(idx) | ((uint64_t)(nw) << 24) | ((uint64_t)(old) << 40))
#define ATTR_LEDGER_IDX(id) ((uint32_t)((id)&0xffffff))
#define ATTR_LEDGER_NEW(id) (((id) >> 24) & ATTR_RANGE_MASK)
#define ATTR_LEDGER_OLD(id) (((id) >> 40) & ATTR_RANGE_MASK)
#define ATTR_IS_LEDGER_ID(id) (((id) & (UINT64_C(3) << 62)) == SHMB_LEDGER_ATTR_ID)

/* One record's attribute area, resolved from the segment's private configuration. */
struct attr_area {
	struct shmb_attr_entry *entries; /* [nkeys] */
	uint64_t *bitmap;                /* [nwords] */
	uint8_t *cells;                  /* [ncells * SHMB_ATTR_CELL] */
	uint32_t nkeys, nwords, ncells;
};

/* The area of record idx: 0, or -1 when the segment has no attributes (attr_bytes or attr_keys
 * 0) or idx is out of range. */
int attr_area_of(const struct shmb_seg *seg, uint32_t idx, struct attr_area *a);

/* Length of key if it is 1..SHMB_ATTR_KEY_MAX bytes of 0x21..0x7e, else -1. */
long attr_key_len(const char *key);

/* Cells a block of this key and value takes. */
static inline uint32_t attr_cells_for(size_t klen, size_t vlen)
{
	return (uint32_t)((sizeof(struct shmb_attr_block) + klen + vlen + SHMB_ATTR_CELL - 1) /
			  SHMB_ATTR_CELL);
}

/* The keyed hash of a key, never 0 (0 marks a free entry). */
uint64_t attr_hash(const struct shmb_seg *seg, const char *key, size_t klen);

/* 1 when range (start, count) lies inside the area and inside one bitmap word. */
static inline int attr_range_ok(const struct attr_area *a, uint64_t range)
{
	uint32_t s = ATTR_START(range), n = ATTR_COUNT(range);
	return n >= 1 && n <= SHMB_ATTR_CELLS_PER_WORD && s + n <= a->ncells &&
	       s / SHMB_ATTR_CELLS_PER_WORD == (s + n - 1) / SHMB_ATTR_CELLS_PER_WORD;
}

/* Bits of a range within its bitmap word (the range must be attr_range_ok). */
static inline uint64_t attr_range_mask(uint64_t range)
{
	uint32_t s = ATTR_START(range) % SHMB_ATTR_CELLS_PER_WORD, n = ATTR_COUNT(range);
	return (n >= 32 ? UINT64_C(0xffffffff) : ((UINT64_C(1) << n) - 1)) << s;
}

/* The entry bound to hash h. With claim, a free entry is bound to h (CAS 0 -> h). Returns the
 * entry, or NULL: not found (no claim), or every entry is bound to another key (claim). */
struct shmb_attr_entry *attr_find(const struct attr_area *a, uint64_t h, int claim);

/* What attr_read copies out. */
struct attr_value {
	uint64_t word;    /* the entry word the copy is consistent with */
	uint32_t val_len; /* the value's length (also when it did not fit) */
	uint32_t key_len;
	char key[SHMB_ATTR_KEY_CAP + 1]; /* NUL-terminated (when copy_key) */
};

/* Optimistic read of entry e: the value into buf[0..buflen) (NULL: length only), its key (when
 * copy_key, else it must equal key[0..klen)). Returns the value's length, SHMB_ENOENT (unset, or
 * the block holds another key), SHMB_ETOOBIG (out->val_len set, nothing copied), or SHMB_ECORRUPT
 * (an entry or block inconsistent while the entry word stayed the same). */
int attr_read(const struct attr_area *a, const struct shmb_attr_entry *e, const char *key,
	      size_t klen, int copy_key, void *buf, size_t buflen, struct attr_value *out);

/* Copies out of the area that may race with a writer (the validated copy of attr_read); named
 * so that the TSan suppressions of tsan_client can say which races are by design. */
void attr_copy_out(void *dst, const uint8_t *src, size_t len);
void attr_copy_in(uint8_t *dst, const void *src, size_t len);

#endif
