/* sid.h - session ids: 128 random bits from getrandom, shown as 32 lowercase hex characters,
 * hashed for the index and compared in constant time. */
#ifndef SHMB_SID_H
#define SHMB_SID_H

#include <stdint.h>

#include "layout.h"

/* Fills out with 16 random bytes from getrandom(). Returns 0 or SHMB_EIO. */
int sid_generate(uint8_t out[SHMB_SID_BYTES]);
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
/* Hash for the index: ids are uniformly random, so a mix of their first 8 bytes suffices. */
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
