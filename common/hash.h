/* hash.h - the keyed 64-bit hash of shared memory (SipHash-1-3): binding hashes of session
 * records and attribute keys. The key is the segment header's hash_key, random per segment, so
 * nobody outside the host can pick inputs that collide (docs/security.md, "Binding hash").
 *
 * SipHash-1-3 (Aumasson and Bernstein; one compression and three finalisation rounds, as in
 * Rust's std HashMap): a PRF on short inputs at a few ns per 8 bytes. */
#ifndef SHMB_HASH_H
#define SHMB_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "layout.h"

#define SHMB_HASH_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SHMB_HASH_ROUND(v0, v1, v2, v3)      \
	do {                                 \
		v0 += v1;                    \
		v1 = SHMB_HASH_ROTL(v1, 13); \
		v1 ^= v0;                    \
		v0 = SHMB_HASH_ROTL(v0, 32); \
		v2 += v3;                    \
		v3 = SHMB_HASH_ROTL(v3, 16); \
		v3 ^= v2;                    \
		v0 += v3;                    \
		v3 = SHMB_HASH_ROTL(v3, 21); \
		v3 ^= v0;                    \
		v2 += v1;                    \
		v1 = SHMB_HASH_ROTL(v1, 17); \
		v1 ^= v2;                    \
		v2 = SHMB_HASH_ROTL(v2, 32); \
	} while (0)

/* Streaming state, so that a hash over several pieces needs no concatenation buffer. */
struct shmb_hash {
	uint64_t v0, v1, v2, v3;
	uint64_t tail; /* pending bytes, little-endian */
	size_t ntail;  /* 0..7 */
	uint64_t total;
};

static inline void shmb_hash_init(struct shmb_hash *h, const uint64_t key[2])
{
	h->v0 = key[0] ^ UINT64_C(0x736f6d6570736575);
	h->v1 = key[1] ^ UINT64_C(0x646f72616e646f6d);
	h->v2 = key[0] ^ UINT64_C(0x6c7967656e657261);
	h->v3 = key[1] ^ UINT64_C(0x7465646279746573);
	h->tail = 0;
	h->ntail = 0;
	h->total = 0;
}

static inline void shmb_hash_word(struct shmb_hash *h, uint64_t m)
{
	h->v3 ^= m;
	SHMB_HASH_ROUND(h->v0, h->v1, h->v2, h->v3);
	h->v0 ^= m;
}

static inline void shmb_hash_update(struct shmb_hash *h, const void *data, size_t len)
{
	const uint8_t *p = data;
	h->total += len;
	while (len && h->ntail) {
		h->tail |= (uint64_t)*p++ << (8 * h->ntail);
		len--;
		if (++h->ntail == 8) {
			shmb_hash_word(h, h->tail);
			h->tail = 0;
			h->ntail = 0;
		}
	}
	while (len >= 8) {
		uint64_t m = 0;
		for (int i = 0; i < 8; i++)
			m |= (uint64_t)p[i] << (8 * i); /* little-endian on every host */
		shmb_hash_word(h, m);
		p += 8;
		len -= 8;
	}
	while (len--)
		h->tail |= (uint64_t)*p++ << (8 * h->ntail++);
}

static inline uint64_t shmb_hash_final(struct shmb_hash *h)
{
	uint64_t b = (h->total & 0xff) << 56 | h->tail;
	shmb_hash_word(h, b);
	h->v2 ^= 0xff;
	for (int i = 0; i < 3; i++)
		SHMB_HASH_ROUND(h->v0, h->v1, h->v2, h->v3);
	return h->v0 ^ h->v1 ^ h->v2 ^ h->v3;
}

static inline uint64_t shmb_hash64(const uint64_t key[2], const void *data, size_t len)
{
	struct shmb_hash h;
	shmb_hash_init(&h, key);
	shmb_hash_update(&h, data, len);
	return shmb_hash_final(&h);
}

/* A record's binding hash: tenant and, when present, principal, each length-prefixed so that no
 * two bindings share an input ("ab"+"c" vs "a"+"bc"; no principal vs an empty one). */
static inline uint64_t shmb_binding_hash(const uint64_t key[2], const char *tenant, size_t tlen,
					 const char *principal, size_t plen)
{
	if (tlen > SHMB_TENANT_CAP || plen > SHMB_PRINCIPAL_CAP) { /* never a stored binding */
		struct shmb_hash h;
		shmb_hash_init(&h, key);
		shmb_hash_update(&h, tenant, tlen);
		shmb_hash_update(&h, principal, principal ? plen : 0);
		return ~shmb_hash_final(&h);
	}
	/* One flat input (faster than three streamed pieces): tlen (2 bytes LE), has_principal,
	 * 0, the tenant, and with a principal plen (2 bytes LE) and the principal. */
	uint8_t buf[4 + SHMB_TENANT_CAP + 2 + SHMB_PRINCIPAL_CAP];
	size_t n = 0;
	buf[n++] = (uint8_t)tlen;
	buf[n++] = (uint8_t)(tlen >> 8);
	buf[n++] = principal ? 1 : 0;
	buf[n++] = 0;
	memcpy(buf + n, tenant, tlen);
	n += tlen;
	if (principal) {
		buf[n++] = (uint8_t)plen;
		buf[n++] = (uint8_t)(plen >> 8);
		memcpy(buf + n, principal, plen);
		n += plen;
	}
	return shmb_hash64(key, buf, n);
}

#endif /* SHMB_HASH_H */
