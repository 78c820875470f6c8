/* sid.h - session ids: 128 random bits from getrandom (112 behind a 16-bit node tag when the
 * broker has a node_id), shown as 32 lowercase hex characters, hashed for the index and
 * compared in constant time. */
#ifndef SHMB_SID_H
#define SHMB_SID_H

#include <stdint.h>

#include "layout.h"

/* Fills out with 16 random bytes from getrandom(). Returns 0 or SHMB_EIO. */
int sid_generate(uint8_t out[SHMB_SID_BYTES]);
/* Puts a node tag (1..SHMB_NODE_ID_MAX) into the first 2 bytes of an id, big-endian, so its
 * text starts with the tag's 4 hex characters; node 0 leaves the id as it is (untagged). */
static inline void sid_tag(uint8_t sid[SHMB_SID_BYTES], uint32_t node)
{
	if (!node)
		return;
	sid[0] = (uint8_t)(node >> 8);
	sid[1] = (uint8_t)node;
}
/* The node tag of an id: its first 2 bytes, big-endian (random for an untagged id). */
static inline uint32_t sid_node(const uint8_t sid[SHMB_SID_BYTES])
{
	return (uint32_t)sid[0] << 8 | sid[1];
}
/* Writes 32 lowercase hex characters and a NUL. */
void sid_format(const uint8_t sid[SHMB_SID_BYTES], char out[2 * SHMB_SID_BYTES + 1]);
/* Parses exactly 32 hex characters (lowercase; uppercase accepted) followed by NUL.
 * Returns 0 or SHMB_EINVAL. */
int sid_parse(const char *text, uint8_t out[SHMB_SID_BYTES]);
/* Constant-time equality (time does not depend on where the ids differ). */
static inline int sid_equal(const uint8_t *a, const uint8_t *b)
{
	uint8_t d = 0;
	for (int i = 0; i < SHMB_SID_BYTES; i++)
		d |= (uint8_t)(a[i] ^ b[i]);
	return d == 0;
}
/* Hash for the index: ids are uniformly random, so a mix of their first 8 bytes suffices. A
 * node-tagged id (sid_tag) has 2 constant bytes there and 48 random bits, still far more than
 * any bucket mask (at most 2^25 buckets), and the finalizer below spreads them over the low bits
 * (test_node.c checks the bucket distribution). Existing segments' bucket placement depends on
 * this function: changing it is a layout major change. */
static inline uint32_t sid_hash(const uint8_t sid[SHMB_SID_BYTES])
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = (v << 8) | sid[i];
	v ^= v >> 33;
	v *= UINT64_C(0xff51afd7ed558ccd);
	v ^= v >> 33;
	return (uint32_t)v;
}

#endif
