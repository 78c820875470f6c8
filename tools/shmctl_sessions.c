/* shmctl_sessions.c - `shmctl sessions` and `shmctl show SID`, from a read-only mapping.
 *
 * Both list only what a client could open: LIVE records that have not expired (an expired
 * record is invisible to lookups at once, before the sweeper retires it). Each record is copied
 * with shmctl_rec_snapshot(); a record that kept changing while copied is skipped (sessions) or
 * reported as busy (show). */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "index.h"
#include "evring.h"
#include "seg.h"
#include "shmb.h"
#include "sid.h"
#include "shmctl.h"

struct row {
	uint32_t idx;
	struct shmb_session_rec rec;
};

/* Text fields of a record copy. */
struct rec_text {
	char sid[2 * SHMB_SID_BYTES + 1];
	char tenant[4 * SHMB_TENANT_CAP + 1];
	char principal[4 * SHMB_PRINCIPAL_CAP + 1];
};

static void rec_text(const struct shmb_session_rec *r, struct rec_text *t)
{
	sid_format(r->sid, t->sid);
	shmctl_text(t->tenant, sizeof t->tenant, r->tenant, r->tenant_len, SHMB_TENANT_CAP);
	if (r->has_principal)
		shmctl_text(t->principal, sizeof t->principal, r->principal, r->principal_len,
			    SHMB_PRINCIPAL_CAP);
	else
		t->principal[0] = '\0';
}

/* Oldest event id still retained, 0 when none is (as shmb_session_stat reports it). */
static uint64_t oldest_id(const struct shmb_seg *seg, uint32_t idx,
			  const struct shmb_session_rec *r)
{
	uint64_t oldest = evr_oldest(seg, idx, r);
	return oldest > r->next_id ? 0 : oldest;
}

/* Payload bytes of the retained, committed events of session idx: the head descriptors from the
 * oldest retained id to the last claimed one (at most ring_events of them) whose commit word
 * holds their id. A figure for people; racing publishers make it approximate. */
static uint64_t bytes_used(const struct shmb_seg *seg, uint32_t idx,
			   const struct shmb_session_rec *r)
{
	uint64_t last = r->next_id, first = oldest_id(seg, idx, r), sum = 0;
	if (first == 0)
		return 0;
	for (uint64_t id = first, n = 0; id <= last && n < seg->cfg.ring_events; id++, n++) {
		const struct shmb_event_desc *d = seg_desc(seg, idx, id);
		if (!d || uatomic_read(&d->seq) != id)
			continue; /* pending, or already reused by a newer lap */
		uint16_t flags = uatomic_read(&d->flags);
		if (!(flags & SHMB_DESC_CONT) && !(flags & SHMB_EV_GAP))
			sum += uatomic_read(&d->len);
	}
	return sum < seg->cfg.ring_bytes ? sum : seg->cfg.ring_bytes;
}

/* The keys every session object has (sessions array and show). */
static cJSON *session_json(const struct shmb_seg *seg, uint32_t idx,
			   const struct shmb_session_rec *r)
{
	struct rec_text t;
	rec_text(r, &t);
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "id", t.sid);
	cJSON_AddStringToObject(j, "tenant", t.tenant);
	if (r->has_principal)
		cJSON_AddStringToObject(j, "principal", t.principal);
	else
		cJSON_AddNullToObject(j, "principal");
	shmctl_json_i64(j, "created_at_ms", r->created_at_ms);
	shmctl_json_i64(j, "last_accessed_at_ms", r->last_accessed_at_ms);
	shmctl_json_u64(j, "last_event_id", r->next_id);
	shmctl_json_u64(j, "oldest_event_id", oldest_id(seg, idx, r));
	shmctl_json_u64(j, "subscribers", shmctl_subscriber_count(r));
	shmctl_json_u64(j, "inactivity_ttl_ms", r->inactivity_ttl_ms);
	shmctl_json_u64(j, "absolute_ttl_ms", r->absolute_ttl_ms);
	int64_t exp = shmctl_expires_at(r);
	if (exp)
		shmctl_json_i64(j, "expires_at_ms", exp);
	else
		cJSON_AddNullToObject(j, "expires_at_ms");
	return j;
}

/* "30m/4h": the session's inactivity and absolute TTLs, "none" for either that is 0. */
static void ttl_text(char *out, size_t len, const struct shmb_session_rec *r)
{
	char a[24] = "none", b[24] = "none";
	if (r->inactivity_ttl_ms)
		shmctl_duration(a, sizeof a, r->inactivity_ttl_ms);
	if (r->absolute_ttl_ms)
		shmctl_duration(b, sizeof b, r->absolute_ttl_ms);
	snprintf(out, len, "%s/%s", a, b);
}

static int row_cmp(const void *a, const void *b)
{
	const struct row *x = a, *y = b;
	if (x->rec.created_at_ms != y->rec.created_at_ms)
		return x->rec.created_at_ms < y->rec.created_at_ms ? -1 : 1;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static int tenant_matches(const struct shmb_session_rec *r, const char *tenant)
{
	size_t n = strlen(tenant);
	return r->tenant_len == n && n <= SHMB_TENANT_CAP && memcmp(r->tenant, tenant, n) == 0;
}

int shmctl_cmd_sessions(const struct shmctl_opts *o)
{
	struct shmb_seg seg;
	int rc = shmctl_open(o, "sessions", &seg, NULL, NULL, 0);
	if (rc)
		return rc;
	int64_t now = shmb_now_ms();
	struct row *rows = NULL;
	size_t n = 0, cap = 0;
	for (uint32_t i = 0; i < seg.cfg.max_sessions; i++) {
		if (uatomic_read(&seg_rec(&seg, i)->state) != SHMB_REC_LIVE)
			continue;
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			struct row *nr = realloc(rows, cap * sizeof *rows);
			if (!nr) {
				free(rows);
				seg_unmap(&seg);
				shmctl_fail("sessions", "out of memory");
				return SHMCTL_UNAVAIL;
			}
			rows = nr;
		}
		struct row *r = &rows[n];
		if (shmctl_rec_snapshot(&seg, i, &r->rec) < 0 || r->rec.state != SHMB_REC_LIVE)
			continue; /* changed while copied: it is being deleted or recycled */
		if (shmctl_rec_expired(&r->rec, now))
			continue;
		if (o->tenant && !tenant_matches(&r->rec, o->tenant))
			continue;
		r->idx = i;
		n++;
	}
	if (n > 1)
		qsort(rows, n, sizeof *rows, row_cmp);

	if (o->json) {
		cJSON *arr = cJSON_CreateArray();
		for (size_t i = 0; i < n; i++)
			cJSON_AddItemToArray(arr, session_json(&seg, rows[i].idx, &rows[i].rec));
		free(rows);
		seg_unmap(&seg);
		return shmctl_json_print(arr, "sessions");
	}

	static const char *const head[] = {
		"ID",      "TENANT", "PRINCIPAL", "CREATED", "LAST ACCESS",
		"LAST ID", "OLDEST", "SUBS",      "TTL",
	};
	struct shmctl_table t;
	shmctl_table_init(&t, 9, head, "lllllrrrl");
	for (size_t i = 0; i < n && rc == SHMCTL_OK; i++) {
		const struct shmb_session_rec *r = &rows[i].rec;
		struct rec_text tx;
		rec_text(r, &tx);
		char created[48], access[48], last[24], oldest[24], subs[16], ttl[48];
		shmctl_age(created, sizeof created, r->created_at_ms, now);
		shmctl_age(access, sizeof access, r->last_accessed_at_ms, now);
		snprintf(last, sizeof last, "%" PRIu64, (uint64_t)r->next_id);
		snprintf(oldest, sizeof oldest, "%" PRIu64, oldest_id(&seg, rows[i].idx, r));
		snprintf(subs, sizeof subs, "%u", shmctl_subscriber_count(r));
		ttl_text(ttl, sizeof ttl, r);
		const char *principal = r->has_principal ? tx.principal : "-";
		const char *cells[] = { tx.sid, tx.tenant, principal, created, access,
					last,   oldest,    subs,      ttl };
		if (shmctl_table_add(&t, cells) < 0) {
			shmctl_fail("sessions", "out of memory");
			rc = SHMCTL_UNAVAIL;
		}
	}
	if (rc == SHMCTL_OK) {
		if (n)
			shmctl_table_print(&t, stdout);
		else if (o->tenant)
			printf("no live sessions of tenant '%s'\n", o->tenant);
		else
			printf("no live sessions\n");
	}
	shmctl_table_fini(&t);
	free(rows);
	seg_unmap(&seg);
	return rc;
}

/* ---- show ---- */

/* Index of the LIVE record holding sid: through its bucket chain as a client would, or, when
 * that chain is damaged, by scanning every record. -1 when there is none. */
static int64_t find_record(const struct shmb_seg *seg, const uint8_t sid[SHMB_SID_BYTES],
			   int *damaged)
{
	int64_t idx = idx_find(seg, sid);
	*damaged = idx == -2;
	if (idx != -2)
		return idx;
	for (uint32_t i = 0; i < seg->cfg.max_sessions; i++) {
		const struct shmb_session_rec *r = seg_rec(seg, i);
		if (uatomic_read(&r->state) == SHMB_REC_LIVE && sid_equal(r->sid, sid))
			return i;
	}
	return -1;
}

static void show_human(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r,
		       int64_t now)
{
	const struct shmctl_kv kv = { .width = 15 };
	struct rec_text t;
	rec_text(r, &t);
	char a[48], b[48];
	shmctl_kv(&kv, "id", "%s", t.sid);
	if (seg->cfg.node_id)
		shmctl_kv(&kv, "node", "%u (this broker's node_id: %u)", sid_node(r->sid),
			  seg->cfg.node_id);
	else
		shmctl_kv(&kv, "node", "%u (this broker has no node_id: its ids are untagged)",
			  sid_node(r->sid));
	shmctl_kv(&kv, "tenant", "%s", t.tenant);
	shmctl_kv(&kv, "principal", "%s", r->has_principal ? t.principal : "(none)");
	shmctl_kv(&kv, "index", "%u", idx);
	shmctl_kv(&kv, "gen", "%u", r->gen);
	shmctl_kv(&kv, "state", "live");
	shmctl_localtime(a, sizeof a, r->created_at_ms);
	shmctl_age(b, sizeof b, r->created_at_ms, now);
	shmctl_kv(&kv, "created", "%s (%s)", a, b);
	shmctl_localtime(a, sizeof a, r->last_accessed_at_ms);
	shmctl_age(b, sizeof b, r->last_accessed_at_ms, now);
	shmctl_kv(&kv, "last access", "%s (%s)", a, b);
	shmctl_duration(a, sizeof a, r->inactivity_ttl_ms);
	shmctl_kv(&kv, "inactivity ttl", "%s", r->inactivity_ttl_ms ? a : "none");
	shmctl_duration(a, sizeof a, r->absolute_ttl_ms);
	shmctl_kv(&kv, "absolute ttl", "%s", r->absolute_ttl_ms ? a : "none");
	int64_t exp = shmctl_expires_at(r);
	if (exp) {
		shmctl_localtime(a, sizeof a, exp);
		shmctl_age(b, sizeof b, exp, now);
		shmctl_kv(&kv, "expires", "%s (%s)%s", a, b,
			  shmctl_subscriber_count(r) && r->inactivity_ttl_ms
				  ? ", no inactivity expiry while subscribed"
				  : "");
	} else {
		shmctl_kv(&kv, "expires", "never");
	}
	shmctl_kv(&kv, "last event id", "%" PRIu64, (uint64_t)r->next_id);
	shmctl_kv(&kv, "oldest event id", "%" PRIu64, oldest_id(seg, idx, r));
	uint64_t used = bytes_used(seg, idx, r);
	shmctl_bytes(a, sizeof a, seg->cfg.ring_bytes);
	shmctl_kv(&kv, "ring", "%u events, %s, %" PRIu64 " bytes used", seg->cfg.ring_events, a,
		  used);

	char slots[256] = "";
	size_t n = 0;
	for (uint32_t w = 0; w < SHMB_SUB_WORDS * 64 && n < sizeof slots - 8; w++)
		if (r->subscribers[w / 64] >> (w % 64) & 1)
			n += (size_t)snprintf(slots + n, sizeof slots - n, "%s%u", n ? ", " : "",
					      w);
	uint32_t subs = shmctl_subscriber_count(r);
	if (subs)
		shmctl_kv(&kv, "subscribers", "%u (worker slots %s)", subs, slots);
	else
		shmctl_kv(&kv, "subscribers", "0");
	shmctl_attrs_human(seg, idx, r->gen, kv.width);
}

static cJSON *show_json(const struct shmb_seg *seg, uint32_t idx, const struct shmb_session_rec *r)
{
	cJSON *j = session_json(seg, idx, r);
	shmctl_json_u64(j, "schema_version", SHMCTL_SCHEMA_VERSION);
	shmctl_json_u64(j, "index", idx);
	shmctl_json_u64(j, "gen", r->gen);
	cJSON_AddStringToObject(j, "state", "live");
	shmctl_json_u64(j, "node", sid_node(r->sid));
	shmctl_json_u64(j, "node_id", seg->cfg.node_id);
	cJSON *ring = cJSON_AddObjectToObject(j, "ring");
	shmctl_json_u64(ring, "events", seg->cfg.ring_events);
	shmctl_json_u64(ring, "bytes", seg->cfg.ring_bytes);
	shmctl_json_u64(ring, "last_id", r->next_id);
	shmctl_json_u64(ring, "oldest_id", oldest_id(seg, idx, r));
	shmctl_json_u64(ring, "bytes_used", bytes_used(seg, idx, r));
	cJSON *slots = cJSON_AddArrayToObject(j, "subscriber_slots");
	for (uint32_t w = 0; w < SHMB_SUB_WORDS * 64; w++)
		if (r->subscribers[w / 64] >> (w % 64) & 1)
			cJSON_AddItemToArray(slots, shmctl_json_u64_item(w));
	shmctl_attrs_json(seg, idx, r->gen, j);
	return j;
}

int shmctl_cmd_show(const struct shmctl_opts *o)
{
	const char *text = o->args[0];
	uint8_t sid[SHMB_SID_BYTES];
	if (sid_parse(text, sid) < 0)
		return shmctl_usage_error(
			"show: invalid session id '%s' (expected %d hex characters)", text,
			2 * SHMB_SID_BYTES);
	struct shmb_seg seg;
	int rc = shmctl_open(o, "show", &seg, NULL, NULL, 0);
	if (rc)
		return rc;
	int64_t now = shmb_now_ms();
	char canon[2 * SHMB_SID_BYTES + 1];
	sid_format(sid, canon);

	int damaged;
	int64_t idx = find_record(&seg, sid, &damaged);
	if (damaged)
		fprintf(stderr,
			"shmctl: show: warning: the bucket chain of %s is damaged (run shmctl "
			"verify); searched every record\n",
			canon);
	struct shmb_session_rec r;
	if (idx < 0) {
		shmctl_fail("show", "no session %s", canon);
		rc = SHMCTL_NOTFOUND;
	} else if (shmctl_rec_snapshot(&seg, (uint32_t)idx, &r) < 0) {
		shmctl_fail("show", "session %s kept changing while it was read; try again", canon);
		rc = SHMCTL_UNAVAIL;
	} else if (r.state != SHMB_REC_LIVE || !sid_equal(r.sid, sid)) {
		shmctl_fail("show", "no session %s", canon); /* deleted or recycled meanwhile */
		rc = SHMCTL_NOTFOUND;
	} else if (shmctl_rec_expired(&r, now)) {
		shmctl_fail("show", "no session %s (it expired; the sweeper has yet to remove it)",
			    canon);
		rc = SHMCTL_NOTFOUND;
	} else if (o->json) {
		rc = shmctl_json_print(show_json(&seg, (uint32_t)idx, &r), "show");
	} else {
		show_human(&seg, (uint32_t)idx, &r, now);
	}
	seg_unmap(&seg);
	return rc;
}
