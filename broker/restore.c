/* restore.c - the "restore" request: one session of a `shmctl dump` brought back into this
 * segment with the same id, binding, timestamps, TTLs, last event id and retained events
 * (docs/protocol.md, docs/shmctl.md), so a client resumes with its Last-Event-ID.
 *
 * Everything is checked before anything changes: the session object's fields (types, ranges,
 * lengths against this segment's limits), every event (ascending ids, each at most the last id,
 * stream, kind, base64 payload within max_event_bytes), and that the ids fit this segment's ring
 * geometry: an event of len bytes takes evr_slots_for(len) ids here, and those must not run into
 * the next event's id (a dump from a segment with larger slots may not fit: refused). Events
 * older than this ring's window would be evicted at once: they are left out (counted in the
 * reply). A session whose id is already linked is refused (SHMB_ECONFLICT).
 *
 * Then a free record is taken and marked LINKING -- unreachable: no chain links it -- and the
 * events are written into its ring with the writers' own code (evr_publish, at the event's id:
 * next_id is set to id - 1 first, so the claim returns exactly that id; their ts_ms kept), gap
 * records for gap events and for every id of the window the dump does not hold (so no reader
 * ever waits on an id nobody will write), and finally the identity is filled and the record
 * linked and made LIVE by brk_index_link with next_id = the last id: the next publish continues
 * after it. Nobody else writes the record while it is LINKING, so the plain next_id stores are
 * safe. A broker that dies in between leaves a LINKING record, which adoption finishes or undoes
 * like an interrupted create (segment.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <urcu/uatomic.h>

#include "b64.h"
#include "broker.h"
#include "clock.h"
#include "evring.h"
#include "index.h"
#include "shmb.h"
#include "sid.h"

#define JSON_MAX_INT 9007199254740992.0 /* 2^53 */

struct rev {
	uint64_t id;
	uint32_t stream;
	uint16_t kind;
	int gap;
	int64_t ts_ms;
	uint8_t *data;
	uint32_t len;
};

/* An integer field in 0..max (required). Returns 0 or -1 with why. */
static int num(const cJSON *o, const char *key, double max, uint64_t *out, char *why, size_t wl)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	if (!cJSON_IsNumber(v) || !(v->valuedouble >= 0 && v->valuedouble <= max) ||
	    v->valuedouble != (double)(uint64_t)v->valuedouble) {
		snprintf(why, wl, "field '%s' must be an integer in 0..%.0f", key, max);
		return -1;
	}
	*out = (uint64_t)v->valuedouble;
	return 0;
}

static const char *str(const cJSON *o, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsString(v) && v->valuestring ? v->valuestring : NULL;
}

static void revs_free(struct rev *ev, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(ev[i].data);
	free(ev);
}

/* Parses and checks the events; *first_kept is the index of the first event inside this ring's
 * window. Returns 0 or an error code with why. */
static int parse_events(struct brk *b, const cJSON *arr, uint64_t last, struct rev **out,
			size_t *nout, size_t *first_kept, char *why, size_t wl)
{
	const struct shmb_seg *seg = &b->seg;
	*out = NULL;
	*nout = 0;
	*first_kept = 0;
	if (!arr)
		return 0;
	if (!cJSON_IsArray(arr)) {
		snprintf(why, wl, "field 'events' must be an array");
		return SHMB_EINVAL;
	}
	size_t n = (size_t)cJSON_GetArraySize(arr);
	if (n > seg->cfg.ring_events * 4u) {
		snprintf(why, wl, "field 'events' holds %zu events, more than a ring keeps", n);
		return SHMB_EINVAL;
	}
	struct rev *ev = calloc(n ? n : 1, sizeof *ev);
	if (!ev) {
		snprintf(why, wl, "out of memory");
		return SHMB_ENOMEM;
	}
	size_t i = 0;
	const cJSON *e;
	uint64_t prev = 0, u;
	cJSON_ArrayForEach(e, arr)
	{
		struct rev *r = &ev[i];
		char w[160] = "";
		if (!cJSON_IsObject(e))
			snprintf(w, sizeof w, "is not an object");
		else if (num(e, "id", JSON_MAX_INT, &r->id, w, sizeof w) == 0 &&
			 (r->id <= prev || r->id > last))
			snprintf(w, sizeof w,
				 "has id %llu: ids must ascend and be at most last_event_id %llu",
				 (unsigned long long)r->id, (unsigned long long)last);
		else if (!w[0] && num(e, "stream", UINT32_MAX, &u, w, sizeof w) == 0)
			r->stream = (uint32_t)u;
		if (!w[0] && num(e, "kind", UINT16_MAX, &u, w, sizeof w) == 0)
			r->kind = (uint16_t)u;
		if (!w[0] && num(e, "ts_ms", JSON_MAX_INT, &u, w, sizeof w) == 0)
			r->ts_ms = (int64_t)u;
		if (!w[0]) {
			const cJSON *g = cJSON_GetObjectItemCaseSensitive(e, "gap");
			r->gap = cJSON_IsTrue(g);
			const char *d = str(e, "data_base64");
			if (!r->gap && !d)
				snprintf(w, sizeof w, "needs 'data_base64' (a string)");
			else if (!r->gap) {
				size_t cap = seg->cfg.max_event_bytes;
				r->data = malloc(cap ? cap : 1);
				long len = r->data && strlen(d) / 4 * 3 <= cap + 3
						   ? b64_decode(d, r->data, cap)
						   : -1;
				if (len < 0)
					snprintf(w, sizeof w,
						 "has 'data_base64' that is not base64 of at most "
						 "max_event_bytes (%zu) bytes",
						 cap);
				else
					r->len = (uint32_t)len;
			}
		}
		i++;
		if (w[0]) {
			snprintf(why, wl, "events[%zu] %s", i - 1, w);
			revs_free(ev, i);
			return SHMB_EINVAL;
		}
		prev = r->id;
	}
	/* The window: ids older than last - ring_events + 1 would be evicted at once. */
	uint64_t lo = last >= seg->cfg.ring_events ? last - seg->cfg.ring_events + 1 : 1;
	size_t k = 0;
	while (k < n && ev[k].id < lo)
		k++;
	/* The geometry: each event's ids here end before the next event's id. */
	for (size_t j = k; j < n; j++) {
		uint64_t end = ev[j].id + (ev[j].gap ? 1 : evr_slots_for(seg, ev[j].len)) - 1;
		uint64_t limit = j + 1 < n ? ev[j + 1].id - 1 : last;
		if (end > limit) {
			snprintf(
				why, wl,
				"event %llu of %u bytes takes ids up to %llu in this segment's ring "
				"(%u-byte slots), past %llu: the dump comes from a ring with larger "
				"slots",
				(unsigned long long)ev[j].id, ev[j].len, (unsigned long long)end,
				evr_slot_bytes(seg), (unsigned long long)limit);
			revs_free(ev, n);
			return SHMB_EINVAL;
		}
	}
	*out = ev;
	*nout = n;
	*first_kept = k;
	return 0;
}

/* Gap records for ids from..to (claimed: next_id is raised to each first). */
static void gaps(const struct shmb_seg *seg, uint32_t idx, struct shmb_session_rec *r,
		 uint64_t from, uint64_t to, int64_t ts)
{
	for (uint64_t id = from; id <= to; id++) {
		uatomic_set(&r->next_id, id);
		evr_write_gap(seg, idx, id, ts);
	}
}

static int restore(struct brk *b, const cJSON *s, int dry_run, uint8_t sid_out[SHMB_SID_BYTES],
		   size_t *dropped, char *why, size_t wl)
{
	const struct shmb_seg *seg = &b->seg;
	uint8_t sid[SHMB_SID_BYTES];
	const char *id = str(s, "id"), *tenant = str(s, "tenant");
	const cJSON *pj = cJSON_GetObjectItemCaseSensitive(s, "principal");
	uint64_t created, accessed, ittl, attl, last;
	if (!cJSON_IsObject(s)) {
		snprintf(why, wl, "field 'session' must be an object");
		return SHMB_EINVAL;
	}
	if (!id || sid_parse(id, sid) < 0) {
		snprintf(why, wl, "field 'id' must be a session id (%d hex characters)",
			 2 * SHMB_SID_BYTES);
		return SHMB_EINVAL;
	}
	if (!tenant || !tenant[0] || strlen(tenant) > seg->cfg.max_tenant_len) {
		snprintf(why, wl, "field 'tenant' must be a string of 1..%u bytes",
			 seg->cfg.max_tenant_len);
		return SHMB_EINVAL;
	}
	int has_principal = pj && !cJSON_IsNull(pj);
	if (has_principal && (!cJSON_IsString(pj) || !pj->valuestring ||
			      strlen(pj->valuestring) > seg->cfg.max_principal_len)) {
		snprintf(why, wl, "field 'principal' must be null or a string of at most %u bytes",
			 seg->cfg.max_principal_len);
		return SHMB_EINVAL;
	}
	if (num(s, "created_at_ms", JSON_MAX_INT, &created, why, wl) ||
	    num(s, "last_accessed_at_ms", JSON_MAX_INT, &accessed, why, wl) ||
	    num(s, "inactivity_ttl_ms", JSON_MAX_INT, &ittl, why, wl) ||
	    num(s, "absolute_ttl_ms", JSON_MAX_INT, &attl, why, wl) ||
	    num(s, "last_event_id", JSON_MAX_INT, &last, why, wl))
		return SHMB_EINVAL;
	if (created == 0) {
		snprintf(why, wl, "field 'created_at_ms' must be a wall-clock time (> 0)");
		return SHMB_EINVAL;
	}
	int64_t found = idx_find(seg, sid);
	if (found == -2) {
		snprintf(why, wl, "the index chain of this id is damaged");
		return SHMB_ECORRUPT;
	}
	if (found >= 0) {
		snprintf(why, wl, "session %s already exists", id);
		return SHMB_ECONFLICT;
	}
	struct rev *ev;
	size_t n = 0, k = 0;
	int rc = parse_events(b, cJSON_GetObjectItemCaseSensitive(s, "events"), last, &ev, &n, &k,
			      why, wl);
	if (rc)
		return rc;
	if (b->n_free == 0)
		brk_reclaim_run(b, 1);
	if (b->n_free == 0) {
		revs_free(ev, n);
		snprintf(why, wl, "no free session record");
		return SHMB_EFULL;
	}
	*dropped = k;
	memcpy(sid_out, sid, SHMB_SID_BYTES);
	if (dry_run) {
		revs_free(ev, n);
		return 0;
	}

	uint32_t idx = b->free_stack[--b->n_free];
	struct shmb_session_rec *r = seg_rec(seg, idx);
	uatomic_set(&r->state, SHMB_REC_LINKING);
	int64_t now = shmb_now_ms();
	uint64_t lo = last >= seg->cfg.ring_events ? last - seg->cfg.ring_events + 1 : 1;
	uint64_t next = lo - 1; /* ids below the window: evicted, as they would be */
	for (size_t j = k; j < n; j++) {
		gaps(seg, idx, r, next + 1, ev[j].id - 1, now); /* ids the dump does not hold */
		if (ev[j].gap) {
			gaps(seg, idx, r, ev[j].id, ev[j].id, ev[j].ts_ms);
			next = ev[j].id;
			continue;
		}
		uatomic_set(&r->next_id, ev[j].id - 1);
		int evicted = 0;
		uint64_t got = evr_publish(seg, idx, r, ev[j].stream, ev[j].kind, ev[j].data,
					   ev[j].len, ev[j].ts_ms, NULL, NULL, &evicted);
		if (got != ev[j].id || evicted)
			brk_warn("restore %s: event %llu written as %llu (%d)", id,
				 (unsigned long long)ev[j].id, (unsigned long long)got, evicted);
		next = ev[j].id + evr_slots_for(seg, ev[j].len) - 1;
	}
	if (last > 0)
		gaps(seg, idx, r, next + 1, last, now);
	revs_free(ev, n);
	struct brk_new_session ns = {
		.tenant = tenant,
		.tenant_len = strlen(tenant),
		.principal = has_principal ? pj->valuestring : NULL,
		.principal_len = has_principal ? strlen(pj->valuestring) : 0,
		.has_principal = has_principal,
		.created_at_ms = (int64_t)created,
		.last_accessed_at_ms = (int64_t)accessed,
		.inactivity_ttl_ms = ittl,
		.absolute_ttl_ms = attl,
		.next_id = last,
	};
	return brk_index_link(b, idx, sid, &ns);
}

void brk_restore_request(struct brk *b, uint32_t conn, const cJSON *req)
{
	uid_t uid = b->conns[conn].uid;
	if (uid != b->euid && uid != 0) {
		brk_control_error(b, conn, SHMB_EACCES,
				  "restore is for uid %u (the broker's) or root, not %u",
				  (unsigned)b->euid, (unsigned)uid);
		return;
	}
	char why[400] = "";
	uint8_t sid[SHMB_SID_BYTES];
	size_t dropped = 0;
	int dry_run = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "dry_run"));
	int rc = restore(b, cJSON_GetObjectItemCaseSensitive(req, "session"), dry_run, sid,
			 &dropped, why, sizeof why);
	if (rc) {
		brk_control_error(b, conn, rc, "restore: %s", why[0] ? why : shmb_strerror(rc));
		return;
	}
	char text[2 * SHMB_SID_BYTES + 1];
	sid_format(sid, text);
	if (!dry_run)
		brk_log("restored session %s (%zu event%s older than the ring's window left out)",
			text, dropped, dropped == 1 ? "" : "s");
	cJSON *r = cJSON_CreateObject();
	if (r) {
		cJSON_AddTrueToObject(r, "ok");
		cJSON_AddStringToObject(r, "id", text);
		cJSON_AddNumberToObject(r, "events_left_out", (double)dropped);
		cJSON_AddBoolToObject(r, "dry_run", dry_run);
		/* Free records right now: shmctl checks that a whole dump fits before restoring
		 * any of it (each dry run alone only proves that one more session fits). */
		if (dry_run)
			cJSON_AddNumberToObject(r, "free_records", b->n_free);
	}
	if (!r) {
		brk_control_error(b, conn, SHMB_ENOMEM, "out of memory building the reply");
		return;
	}
	brk_control_reply(b, conn, r, NULL, 0);
	cJSON_Delete(r);
}
