/* session.c - sessions from a worker's side: create and delete through the broker, open (lookup
 * plus binding check plus touch) and stat without it.
 *
 * Lookups run inside a read-side section of the cross-process RCU (rcu.h): a record found LIVE
 * inside the section cannot be recycled before the section ends, because the broker waits for
 * every reader slot to pass the record's retire_gp. A handle remembers (index, generation); every
 * later use re-checks, inside a section, that the record still has that generation and is LIVE
 * and unexpired, so a handle on a deleted, expired or recycled session gives SHMB_ENOENT. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "evring.h"
#include "fault.h"
#include "hash.h"
#include "index.h"
#include "internal.h"
#include "sid.h"

static int check_binding_args(const shmb_client *c, const char *tenant, const char *principal,
			      long *tlen, long *plen)
{
	*tlen = shmbi_bounded_len(tenant, c->seg.cfg.max_tenant_len);
	if (*tlen < 0)
		return SHMB_EINVAL;
	*plen = 0;
	if (principal) {
		*plen = shmbi_bounded_len(principal, c->seg.cfg.max_principal_len);
		if (*plen < 0)
			return SHMB_EINVAL;
	}
	return 0;
}

static cJSON *binding_request(const char *op, const char *tenant, const char *principal)
{
	cJSON *req = cJSON_CreateObject();
	if (!req)
		return NULL;
	cJSON_AddStringToObject(req, "op", op);
	cJSON_AddStringToObject(req, "tenant", tenant);
	if (principal)
		cJSON_AddStringToObject(req, "principal", principal);
	else
		cJSON_AddNullToObject(req, "principal");
	return req;
}

int shmb_session_create(shmb_client *c, const char *tenant, const char *principal,
			char sid_out[SHMB_SID_LEN + 1])
{
	return shmb_session_create_opts(c, tenant, principal, NULL, sid_out);
}

/* The largest TTL a request carries: JSON numbers are exact integers up to 2^53 only (the broker
 * parses them as doubles and refuses larger ones; 2^53 + 1 would arrive as 2^53). */
#define TTL_MAX (INT64_C(1) << 53)

/* Adds name = v (0..TTL_MAX) to o as the exact decimal integer: cJSON prints a number with 15
 * significant digits whenever that is within a relative DBL_EPSILON of it, so 2^53 - 1 would be
 * sent as 9007199254740990. 0, or -1 without memory. */
static int add_exact(cJSON *o, const char *name, int64_t v)
{
	char text[24];
	snprintf(text, sizeof text, "%" PRId64, v);
	return cJSON_AddRawToObject(o, name, text) ? 0 : -1;
}

int shmb_session_create_opts(shmb_client *c, const char *tenant, const char *principal,
			     const shmb_session_opts *opts, char sid_out[SHMB_SID_LEN + 1])
{
	long tlen, plen;
	if (!shmbi_client_ok(c) || !sid_out)
		return shmbi_client_err(c);
	/* A TTL of 0 is the broker's default, which the request says by leaving the field out (in
	 * the protocol, 0 would mean "no such expiry"); the maxima are the broker's to check. */
	if (opts && (opts->inactivity_ttl_ms < 0 || opts->absolute_ttl_ms < 0 ||
		     opts->inactivity_ttl_ms > TTL_MAX || opts->absolute_ttl_ms > TTL_MAX))
		return SHMB_EINVAL;
	int rc = check_binding_args(c, tenant, principal, &tlen, &plen);
	if (rc < 0)
		return rc;
	cJSON *req = binding_request("create", tenant, principal);
	if (!req)
		return SHMB_ENOMEM;
	if ((opts && opts->inactivity_ttl_ms > 0 &&
	     add_exact(req, "inactivity_ttl_ms", opts->inactivity_ttl_ms) < 0) ||
	    (opts && opts->absolute_ttl_ms > 0 &&
	     add_exact(req, "absolute_ttl_ms", opts->absolute_ttl_ms) < 0)) {
		cJSON_Delete(req);
		return SHMB_ENOMEM;
	}
	cJSON *reply = NULL;
	rc = shmbi_call_req(c, req, &reply);
	cJSON_Delete(req);
	if (rc == 0) {
		cJSON *sid = cJSON_GetObjectItemCaseSensitive(reply, "sid");
		uint8_t bin[SHMB_SID_BYTES];
		if (cJSON_IsString(sid) && sid_parse(sid->valuestring, bin) == 0)
			sid_format(bin, sid_out);
		else
			rc = SHMB_EBROKER;
	}
	cJSON_Delete(reply);
	return rc;
}

int shmb_session_delete(shmb_client *c, const char *sid, const char *tenant, const char *principal)
{
	long tlen, plen;
	uint8_t bin[SHMB_SID_BYTES];
	if (!shmbi_client_ok(c) || sid_parse(sid, bin) < 0)
		return shmbi_client_err(c);
	int rc = check_binding_args(c, tenant, principal, &tlen, &plen);
	if (rc < 0)
		return rc;
	cJSON *req = binding_request("delete", tenant, principal);
	if (!req)
		return SHMB_ENOMEM;
	char text[SHMB_SID_LEN + 1];
	sid_format(bin, text);
	cJSON_AddStringToObject(req, "sid", text);
	cJSON *reply = NULL;
	rc = shmbi_call_req(c, req, &reply);
	cJSON_Delete(req);
	cJSON_Delete(reply);
	return rc;
}

/* The binding hash of (tenant, principal), through the thread's one-entry memo. The lengths are
 * checked already (check_binding_args: at most the capacities). */
static uint64_t binding_of(struct shmbi_reader_tls *t, const uint64_t key[2], const char *tenant,
			   size_t tlen, const char *principal, size_t plen)
{
	struct shmbi_binding_memo *m = &t->memo;
	uint8_t hp = principal != NULL;
	if (m->valid && m->tlen == tlen && m->has_principal == hp &&
	    memcmp(m->tenant, tenant, tlen) == 0 &&
	    (!hp || (m->plen == plen && memcmp(m->principal, principal, plen) == 0)))
		return m->hash;
	uint64_t h = shmb_binding_hash(key, tenant, tlen, principal, plen);
	if (tlen <= sizeof m->tenant && plen <= sizeof m->principal) {
		memcpy(m->tenant, tenant, tlen);
		if (hp)
			memcpy(m->principal, principal, plen);
		m->tlen = (uint16_t)tlen;
		m->plen = hp ? (uint16_t)plen : 0;
		m->has_principal = hp;
		m->hash = h;
		m->valid = 1;
	}
	return h;
}

int shmb_session_open(shmb_client *c, const char *sid, const char *tenant, const char *principal,
		      shmb_session **out)
{
	long tlen, plen;
	uint8_t bin[SHMB_SID_BYTES];
	if (!out)
		return SHMB_EINVAL;
	*out = NULL;
	if (!shmbi_client_ok(c) || sid_parse(sid, bin) < 0)
		return shmbi_client_err(c);
	int rc = check_binding_args(c, tenant, principal, &tlen, &plen);
	if (rc < 0)
		return rc;
	shmb_session *s = malloc(sizeof *s);
	if (!s)
		return SHMB_ENOMEM;
	struct shmbi_reader_tls *t = shmbi_read_lock_tls(c, &rc);
	if (!t) {
		free(s);
		return rc;
	}
	int64_t idx = idx_find(&c->seg, bin);
	struct shmb_session_rec *r = idx >= 0 ? seg_rec(&c->seg, (uint32_t)idx) : NULL;
	int64_t now = shmb_now_coarse_ms(); /* clock.h */
	if (idx == -2)
		rc = SHMB_ECORRUPT;
	else if (!r || idx_rec_expired(r, now))
		rc = SHMB_ENOENT;
	else if (uatomic_read(&r->binding) !=
		 binding_of(t, c->seg.hash_key, tenant, (size_t)tlen, principal, (size_t)plen))
		rc = SHMB_EPERM; /* line 0 only: the keyed hash stands for the binding (hash.h) */
	else {
		*s = (shmb_session){ .c = c, .idx = (uint32_t)idx, .gen = uatomic_read(&r->gen) };
		memcpy(s->sid, bin, sizeof s->sid); /* formatted only by stat */
		shmbi_touch(r, now);
		shmbi_count(&t->slot->sessions_opened);
	}
	SHMB_FAULT("client.read_section"); /* inside the read-side section, record in hand */
	shmbi_read_unlock(c);
	if (rc < 0) {
		free(s);
		return rc;
	}
	*out = s;
	return 0;
}

void shmb_session_close(shmb_session *s)
{
	if (!s)
		return;
	/* A subscription held by this handle ends with it (the process's bit is cleared once no
	 * other handle of the process holds it), even when this thread gets no reader slot:
	 * shmb_unsubscribe then clears the bit unpinned (wakeup.c, unsubscribe_unpinned), so the
	 * process does not stay subscribed until it detaches. */
	if (s->subscribed && shmbi_client_ok(s->c))
		shmb_unsubscribe(s);
	/* Never left in shmb_ready's table or pending list once freed, whatever the unsubscribe
	 * returned (SHMB_ESTALE returns before it unfiles the handle). */
	if (shmbi_client_ok(s->c)) {
		pthread_mutex_lock(&s->c->sub_lock);
		shmbi_ready_del(s->c, s);
		pthread_mutex_unlock(&s->c->sub_lock);
	}
	free(s);
}

struct shmb_session_rec *shmbi_session_rec(shmb_session *s, int64_t now)
{
	struct shmb_session_rec *r = seg_rec(&s->c->seg, s->idx);
	if (!r)
		return NULL;
	uint32_t st = uatomic_read(&r->state);
	cmm_smp_rmb(); /* pairs with the broker's release store of state */
	if (st != SHMB_REC_LIVE || uatomic_read(&r->gen) != s->gen || idx_rec_expired(r, now))
		return NULL;
	return r;
}

static uint32_t popcount_subs(const struct shmb_session_rec *r)
{
	uint32_t n = 0;
	for (int i = 0; i < SHMB_SUB_WORDS; i++)
		n += (uint32_t)__builtin_popcountll(uatomic_read(&r->subscribers[i]));
	return n;
}

int shmb_session_stat(shmb_session *s, shmb_session_info *out)
{
	if (!s || !out || !shmbi_client_ok(s->c))
		return shmbi_client_err(s ? s->c : NULL);
	shmb_client *c = s->c;
	int rc = 0;
	if (!shmbi_read_lock_pinned(c, s->idx + 1, &rc)) /* this record only (rcu.h) */
		return rc;
	struct shmb_session_rec *r = shmbi_session_rec(s, shmb_now_coarse_ms());
	if (!r) {
		shmbi_read_unlock(c);
		return SHMB_ENOENT;
	}
	memset(out, 0, sizeof *out);
	sid_format(s->sid, out->sid);
	size_t tl = r->tenant_len < SHMB_TENANT_CAP ? r->tenant_len : SHMB_TENANT_CAP;
	memcpy(out->tenant, r->tenant, tl);
	out->has_principal = r->has_principal == 1;
	if (out->has_principal) {
		size_t pl = r->principal_len < SHMB_PRINCIPAL_CAP ? r->principal_len
								  : SHMB_PRINCIPAL_CAP;
		memcpy(out->principal, r->principal, pl);
	}
	out->created_at_ms = r->created_at_ms;
	out->last_accessed_at_ms = uatomic_read(&r->last_accessed_at_ms);
	out->inactivity_ttl_ms = r->inactivity_ttl_ms;
	out->absolute_ttl_ms = r->absolute_ttl_ms;
	out->last_event_id = uatomic_read(&r->next_id);
	uint64_t oldest = evr_oldest(&c->seg, s->idx, r);
	out->oldest_event_id = oldest > out->last_event_id ? 0 : oldest;
	out->subscribers = popcount_subs(r);
	shmbi_read_unlock(c);
	return 0;
}
