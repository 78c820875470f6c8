/* binding.h - the binding check: is a session record bound to (tenant, principal)? The one
 * definition of what matches, for the broker's delete (broker/requests.c) and, through the keyed
 * hash the broker stores from the same bytes, for the worker's open (client/session.c).
 *
 * A record stores its tenant in tenant[0..tenant_len) and, when has_principal == 1, its principal
 * in principal[0..principal_len); both buffers are zero past the length (brk_index_create). A
 * caller matches when its tenant has the same length and bytes, and either it gives no principal
 * (NULL) and the record has none (has_principal == 0), or it gives one and the record's
 * (has_principal == 1) has the same length and bytes. Any other has_principal (a damaged record)
 * matches nobody.
 *
 * Two comparisons, one meaning: the broker's is constant-time in the stored bytes (the time
 * depends on the buffers' capacity and the caller's own lengths only), so a peer cannot learn a
 * stored binding byte by byte from reply times; binding_matches is memcmp, for tools and tests.
 * The worker's open (layout 2.0) compares neither: it compares the record's binding word, the
 * keyed hash of these same bytes (common/hash.h, shmb_binding_hash), which lies on the record's
 * line 0 beside the id, so a lookup reads no tenant or principal line (docs/security.md,
 * "Binding hash", says what that trades). The fields are written only while the record is not
 * LIVE (layout.h, "Who writes what"), so plain loads suffice. */
#ifndef SHMB_BINDING_H
#define SHMB_BINDING_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "layout.h"

/* 1 when stored[0..stored_len) (a buffer of cap bytes) equals given[0..given_len), in time that
 * depends on cap and given_len only. */
static inline int binding_str_equal_ct(const char *stored, uint32_t stored_len, size_t cap,
				       const char *given, size_t given_len)
{
	uint8_t d = (uint8_t)(stored_len != given_len);
	for (size_t i = 0; i < cap; i++) {
		uint8_t a = i < stored_len ? (uint8_t)stored[i] : 0;
		uint8_t c = i < given_len ? (uint8_t)given[i] : 0;
		d |= (uint8_t)(a ^ c);
	}
	return d == 0;
}

/* The same answer, as fast as memcmp. */
static inline int binding_str_equal_fast(const char *stored, uint32_t stored_len, size_t cap,
					 const char *given, size_t given_len)
{
	return stored_len == given_len && given_len <= cap && memcmp(stored, given, given_len) == 0;
}

static inline int binding_check(const struct shmb_session_rec *r, const char *tenant, size_t tlen,
				const char *principal, size_t plen, int ct)
{
	int (*eq)(const char *, uint32_t, size_t, const char *, size_t) =
		ct ? binding_str_equal_ct : binding_str_equal_fast;
	int ok = eq(r->tenant, r->tenant_len, SHMB_TENANT_CAP, tenant, tlen);
	if (principal)
		ok &= (r->has_principal == 1) &
		      eq(r->principal, r->principal_len, SHMB_PRINCIPAL_CAP, principal, plen);
	else
		ok &= r->has_principal == 0;
	return ok;
}

/* 1 when r is bound to (tenant, principal); principal NULL: none. */
static inline int binding_matches(const struct shmb_session_rec *r, const char *tenant, size_t tlen,
				  const char *principal, size_t plen)
{
	return binding_check(r, tenant, tlen, principal, plen, 0);
}

/* The broker's delete: the same answer in constant time (see above). */
static inline int binding_matches_ct(const struct shmb_session_rec *r, const char *tenant,
				     size_t tlen, const char *principal, size_t plen)
{
	return binding_check(r, tenant, tlen, principal, plen, 1);
}

#endif
