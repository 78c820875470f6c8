/* requests.c - the control messages of docs/protocol.md: hello, create, delete, ping,
 * eventfds, detach.
 *
 * Every field is checked for presence, type, range and length before anything changes; a bad
 * message gets {"ok":false,"code":N,"error":"SHMB_...","message":"field 'x' ..."} and the
 * connection stays open. Unknown extra fields are ignored (room for compatible additions).
 * The binding check of delete compares the session id in constant time (sid_equal, inside
 * idx_find) and the tenant and principal over their whole buffers, so timing reveals neither. */
#include <stdio.h>
#include <string.h>

#include <urcu/uatomic.h>

#include "binding.h"
#include "broker.h"
#include "clock.h"
#include "fault.h"
#include "index.h"
#include "shmb.h"
#include "sid.h"

#define JSON_MAX_INT 9007199254740992.0 /* 2^53 */

/* Field getters: 0 present and valid, 1 absent (or null where allowed), -1 after an error
 * reply was sent. */

static int get_uint(struct brk *b, uint32_t conn, const cJSON *req, const char *key, int required,
		    uint64_t max, uint64_t *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, key);
	if (!v || (!required && cJSON_IsNull(v))) {
		if (!required)
			return 1;
		brk_control_error(b, conn, SHMB_EINVAL, "field '%s' is missing", key);
		return -1;
	}
	double d = cJSON_IsNumber(v) ? v->valuedouble : -1;
	/* NaN fails both comparisons; the cast is done only on an in-range value. */
	if (!cJSON_IsNumber(v) || !(d >= 0 && d <= JSON_MAX_INT) || (double)(uint64_t)d != d ||
	    (uint64_t)d > max) {
		brk_control_error(b, conn, SHMB_EINVAL, "field '%s' must be an integer in 0..%llu",
				  key, (unsigned long long)max);
		return -1;
	}
	*out = (uint64_t)d;
	return 0;
}

static int get_string(struct brk *b, uint32_t conn, const cJSON *req, const char *key, int required,
		      size_t maxlen, const char **out, size_t *len)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, key);
	if (!v || (!required && cJSON_IsNull(v))) {
		if (!required)
			return 1;
		brk_control_error(b, conn, SHMB_EINVAL, "field '%s' is missing", key);
		return -1;
	}
	if (!cJSON_IsString(v) || !v->valuestring) {
		brk_control_error(b, conn, SHMB_EINVAL, "field '%s' must be a string", key);
		return -1;
	}
	size_t n = strlen(v->valuestring);
	if (n < 1 || n > maxlen) {
		brk_control_error(b, conn, SHMB_EINVAL, "field '%s' must be 1..%zu bytes, not %zu",
				  key, maxlen, n);
		return -1;
	}
	*out = v->valuestring;
	*len = n;
	return 0;
}

/* Constant-time equality of a stored binding (buffer of cap bytes, stored_len used) and a given
 * string: the time depends on cap only. The comparison is common/binding.h's, which also defines
 * the whole check (binding_matches_ct, the same answer as the client's open). */
static int binding_equal(const char *stored, uint32_t stored_len, size_t cap, const char *given,
			 size_t given_len)
{
	return binding_str_equal_ct(stored, stored_len, cap, given, given_len);
}

/* {"ok": true}, to which a handler adds its fields; NULL when out of memory. */
static cJSON *reply_new(void)
{
	cJSON *r = cJSON_CreateObject();
	if (r && !cJSON_AddTrueToObject(r, "ok")) {
		cJSON_Delete(r);
		r = NULL;
	}
	return r;
}

static void reply_ok(struct brk *b, uint32_t conn, cJSON *r, const int *fds, int nfds)
{
	if (!r) {
		brk_control_error(b, conn, SHMB_ENOMEM, "out of memory building the reply");
		return;
	}
	brk_control_reply(b, conn, r, fds, nfds);
	cJSON_Delete(r);
}

static void op_hello(struct brk *b, uint32_t conn, const cJSON *req)
{
	struct brk_conn *c = &b->conns[conn];
	if (c->worker >= 0) {
		brk_control_error(b, conn, SHMB_EINVAL,
				  "this connection already said hello (worker slot %d)", c->worker);
		return;
	}
	uint64_t pid, major, minor, fp;
	if (get_uint(b, conn, req, "pid", 1, INT32_MAX, &pid) < 0 ||
	    get_uint(b, conn, req, "layout_major", 1, UINT16_MAX, &major) < 0 ||
	    get_uint(b, conn, req, "layout_minor", 0, UINT16_MAX, &minor) < 0 ||
	    get_uint(b, conn, req, "fingerprint", 1, UINT32_MAX, &fp) < 0)
		return;
	int has_resume = 0;
	uint64_t rslot = 0, rgen = 0;
	const cJSON *resume = cJSON_GetObjectItemCaseSensitive(req, "resume");
	if (resume && !cJSON_IsNull(resume)) {
		if (!cJSON_IsObject(resume)) {
			brk_control_error(
				b, conn, SHMB_EINVAL,
				"field 'resume' must be an object {\"slot\", \"gen\"} or null");
			return;
		}
		if (get_uint(b, conn, resume, "slot", 1, UINT32_MAX, &rslot) < 0 ||
		    get_uint(b, conn, resume, "gen", 1, UINT32_MAX, &rgen) < 0)
			return;
		has_resume = 1;
	}
	if ((pid_t)pid != c->pid) {
		brk_control_error(b, conn, SHMB_EINVAL,
				  "field 'pid' is %llu but the connecting process is pid %d",
				  (unsigned long long)pid, (int)c->pid);
		return;
	}
	if (major != SHMB_LAYOUT_MAJOR || fp != shmb_layout_fingerprint()) {
		brk_control_error(
			b, conn, SHMB_EVERSION,
			"layout %llu.%llu with fingerprint 0x%08llx requested; the segment "
			"is %d.%d with fingerprint 0x%08x",
			(unsigned long long)major, (unsigned long long)minor,
			(unsigned long long)fp, SHMB_LAYOUT_MAJOR, SHMB_LAYOUT_MINOR,
			shmb_layout_fingerprint());
		return;
	}
	char why[160];
	int resumed = 0;
	int w = brk_worker_admit(b, (int)conn, has_resume, (uint32_t)rslot, (uint32_t)rgen,
				 &resumed, why, sizeof why);
	if (w < 0) {
		brk_control_error(b, conn, w, "%s", why);
		return;
	}
	SHMB_FAULT("broker.hello"); /* slot assigned, reply not sent */
	cJSON *r = reply_new();
	if (r) {
		cJSON_AddNumberToObject(r, "slot", w);
		cJSON_AddNumberToObject(r, "gen",
					uatomic_read(&seg_worker(&b->seg, (uint32_t)w)->gen));
		cJSON_AddNumberToObject(r, "broker_generation",
					(double)uatomic_read(&seg_hdr(&b->seg)->broker_generation));
		cJSON_AddNumberToObject(r, "segment_bytes", (double)b->seg.size);
		cJSON_AddNumberToObject(r, "eventfds", b->seg.cfg.max_workers);
		cJSON_AddNumberToObject(r, "evfd_gen",
					(double)uatomic_read(&seg_hdr(&b->seg)->evfd_gen));
		cJSON_AddBoolToObject(r, "resumed", resumed);
	}
	int fds[1 + SHMB_MAX_WORKERS_LIMIT];
	int nfds = 0;
	fds[nfds++] = b->seg_fd;
	for (uint32_t i = 0; i < b->seg.cfg.max_workers; i++)
		fds[nfds++] = b->evfds[i];
	if (!r) {
		brk_control_error(b, conn, SHMB_ENOMEM, "out of memory building the reply");
	} else if (brk_control_reply(b, conn, r, fds, nfds) == 0) {
		/* Sent: the worker may use its slot now (it waits for LIVE). */
		brk_worker_admitted(b, (uint32_t)w);
		cJSON_Delete(r);
		return;
	}
	cJSON_Delete(r);
	/* Not sent: a new slot the worker never learnt of is released (a resumed one is kept:
	 * its process still uses it, and may reconnect). */
	struct brk_wslot *ws = &b->wslots[w];
	if (!resumed && ws->pid &&
	    uatomic_read(&seg_worker(&b->seg, (uint32_t)w)->state) != SHMB_WORKER_LIVE)
		brk_worker_settle(b, (uint32_t)w, 0);
}

static void op_create(struct brk *b, uint32_t conn, const cJSON *req)
{
	const struct shmb_seg_config *cfg = &b->seg.cfg;
	const char *tenant = NULL, *principal = NULL;
	size_t tlen = 0, plen = 0;
	uint64_t ittl = cfg->inactivity_ttl_ms, attl = cfg->absolute_ttl_ms;
	int rc;
	if (get_string(b, conn, req, "tenant", 1, cfg->max_tenant_len, &tenant, &tlen) < 0)
		return;
	rc = get_string(b, conn, req, "principal", 0, cfg->max_principal_len, &principal, &plen);
	if (rc < 0)
		return;
	int has_principal = rc == 0;
	if (get_uint(b, conn, req, "inactivity_ttl_ms", 0, (uint64_t)JSON_MAX_INT, &ittl) < 0 ||
	    get_uint(b, conn, req, "absolute_ttl_ms", 0, (uint64_t)JSON_MAX_INT, &attl) < 0)
		return;
	uint8_t sid[SHMB_SID_BYTES];
	uint32_t idx;
	rc = brk_index_create(b, tenant, tlen, principal, plen, has_principal, ittl, attl, sid,
			      &idx);
	if (rc == SHMB_EFULL) {
		/* Expired sessions keep their records until a sweep retires them (every
		 * sweep_interval_ms): sweep now and, if that retired any, try once more.
		 * brk_index_create runs the reclaimer (brk_reclaim_run(b, 1)) itself when no
		 * record is free; a retired record is free only once every reader has passed it
		 * (its grace period), so with a reader still inside a section it stays EFULL.
		 * The sweep walks every live record: at most one such sweep per BRK_TICK_SLOW_MS,
		 * so a client hammering a full broker with creates costs no more than the timer. */
		int64_t now = shmb_mono_ms();
		if (now - b->full_sweep_mono >= BRK_TICK_SLOW_MS) {
			b->full_sweep_mono = now;
			uint32_t pending = b->n_pending;
			brk_sweep_run(b);
			if (b->n_pending > pending)
				rc = brk_index_create(b, tenant, tlen, principal, plen,
						      has_principal, ittl, attl, sid, &idx);
		}
	}
	if (rc == SHMB_EFULL) {
		if (b->n_pending)
			brk_control_error(b, conn, rc,
					  "all %u session records are in use (%u expired or "
					  "deleted, awaiting reclamation once readers pass them)",
					  cfg->max_sessions, b->n_pending);
		else
			brk_control_error(b, conn, rc, "all %u session records are in use",
					  cfg->max_sessions);
		return;
	}
	if (rc < 0) {
		brk_control_error(b, conn, rc, "cannot create the session: %s", shmb_strerror(rc));
		return;
	}
	SHMB_FAULT("broker.create.reply");
	char text[2 * SHMB_SID_BYTES + 1];
	sid_format(sid, text);
	cJSON *r = reply_new();
	if (r) {
		cJSON_AddStringToObject(r, "sid", text);
		cJSON_AddNumberToObject(r, "index", idx);
		cJSON_AddNumberToObject(r, "gen", uatomic_read(&seg_rec(&b->seg, idx)->gen));
	}
	reply_ok(b, conn, r, NULL, 0);
}

static void op_delete(struct brk *b, uint32_t conn, const cJSON *req)
{
	const struct shmb_seg_config *cfg = &b->seg.cfg;
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(req, "sid");
	uint8_t sid[SHMB_SID_BYTES];
	if (!v) {
		brk_control_error(b, conn, SHMB_EINVAL, "field 'sid' is missing");
		return;
	}
	if (!cJSON_IsString(v) || sid_parse(v->valuestring, sid) < 0) {
		brk_control_error(b, conn, SHMB_EINVAL,
				  "field 'sid' must be a string of 32 hex characters");
		return;
	}
	int force = 0;
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(req, "force");
	if (f && !cJSON_IsNull(f)) {
		if (!cJSON_IsBool(f)) {
			brk_control_error(b, conn, SHMB_EINVAL, "field 'force' must be a boolean");
			return;
		}
		force = cJSON_IsTrue(f);
	}
	const char *tenant = NULL, *principal = NULL;
	size_t tlen = 0, plen = 0;
	int has_principal = 0;
	if (!force) {
		if (get_string(b, conn, req, "tenant", 1, cfg->max_tenant_len, &tenant, &tlen) < 0)
			return;
		int rc = get_string(b, conn, req, "principal", 0, cfg->max_principal_len,
				    &principal, &plen);
		if (rc < 0)
			return;
		has_principal = rc == 0;
	}
	/* The broker is the only writer of the index and this thread is it: the record cannot
	 * change under us, so no read-side section is needed. */
	int64_t found = idx_find(&b->seg, sid);
	if (found == -2) {
		brk_control_error(b, conn, SHMB_ECORRUPT, "the session's bucket chain is damaged");
		return;
	}
	if (found < 0) {
		brk_control_error(b, conn, SHMB_ENOENT, "no such session");
		return;
	}
	uint32_t idx = (uint32_t)found;
	struct shmb_session_rec *r = seg_rec(&b->seg, idx);
	if (idx_rec_expired(r, shmb_now_ms())) {
		/* Gone for everyone already; the sweeper retires it on its next pass. */
		brk_control_error(b, conn, SHMB_ENOENT, "no such session (it expired)");
		return;
	}
	if (!force) {
		int ok = binding_equal(r->tenant, r->tenant_len, SHMB_TENANT_CAP, tenant, tlen);
		int pok = binding_equal(r->principal, r->has_principal ? r->principal_len : 0,
					SHMB_PRINCIPAL_CAP, principal ? principal : "", plen);
		ok &= pok & ((r->has_principal != 0) == (has_principal != 0));
		if (!ok) {
			brk_control_error(b, conn, SHMB_EPERM,
					  "tenant or principal does not match the session");
			return;
		}
	}
	brk_index_retire(b, idx, SHMB_RETIRE_DELETED);
	reply_ok(b, conn, reply_new(), NULL, 0);
}

static void op_ping(struct brk *b, uint32_t conn, const cJSON *req)
{
	(void)req;
	cJSON *r = reply_new();
	if (r) {
		cJSON_AddNumberToObject(r, "pid", b->pid);
		cJSON_AddNumberToObject(r, "generation",
					(double)uatomic_read(&seg_hdr(&b->seg)->broker_generation));
		cJSON_AddStringToObject(r, "name", b->cfg.name);
	}
	reply_ok(b, conn, r, NULL, 0);
}

/* The current eventfd set, for a process whose set is older than the header's evfd_gen. */
static void op_eventfds(struct brk *b, uint32_t conn, const cJSON *req)
{
	(void)req;
	cJSON *r = reply_new();
	if (r) {
		cJSON_AddNumberToObject(r, "eventfds", b->seg.cfg.max_workers);
		cJSON_AddNumberToObject(r, "evfd_gen",
					(double)uatomic_read(&seg_hdr(&b->seg)->evfd_gen));
	}
	reply_ok(b, conn, r, b->evfds, (int)b->seg.cfg.max_workers);
}

/* The worker is detaching: the EOF that follows is a release, not a death, even when the
 * process exits before the broker reads the EOF (then proc_exiting() alone would say died).
 * Replied to like every message, though the client closes without reading the reply (a reply
 * that finds the peer gone settles the slot as the EOF would). */
static void op_detach(struct brk *b, uint32_t conn, const cJSON *req)
{
	(void)req;
	b->conns[conn].detaching = 1;
	reply_ok(b, conn, reply_new(), NULL, 0);
}

static const struct {
	const char *op;
	void (*fn)(struct brk *, uint32_t, const cJSON *);
} ops[] = {
	{ "hello", op_hello }, { "create", op_create },     { "delete", op_delete },
	{ "ping", op_ping },   { "eventfds", op_eventfds }, { "detach", op_detach },
};

void brk_request(struct brk *b, uint32_t conn, const char *msg, size_t len)
{
	/* One JSON text and nothing else: cJSON would stop at an embedded NUL, and without
	 * require_null_terminated it would ignore trailing bytes. msg[len] is the NUL ctl_recv
	 * added, so len + 1 bytes are readable. */
	if (memchr(msg, '\0', len)) {
		brk_control_error(b, conn, SHMB_EINVAL, "message contains a NUL byte");
		return;
	}
	const char *end = NULL;
	cJSON *req = cJSON_ParseWithLengthOpts(msg, len + 1, &end, 1);
	if (!req) {
		brk_control_error(b, conn, SHMB_EINVAL,
				  "message is not one valid JSON text (error at byte %zu)",
				  end && end >= msg && end <= msg + len ? (size_t)(end - msg)
									: len);
		return;
	}
	const cJSON *op = cJSON_GetObjectItemCaseSensitive(req, "op");
	if (!cJSON_IsObject(req))
		brk_control_error(b, conn, SHMB_EINVAL, "message must be a JSON object");
	else if (!op)
		brk_control_error(b, conn, SHMB_EINVAL, "field 'op' is missing");
	else if (!cJSON_IsString(op) || !op->valuestring)
		brk_control_error(b, conn, SHMB_EINVAL, "field 'op' must be a string");
	else {
		size_t i;
		for (i = 0; i < sizeof ops / sizeof ops[0]; i++)
			if (strcmp(ops[i].op, op->valuestring) == 0)
				break;
		if (i < sizeof ops / sizeof ops[0])
			ops[i].fn(b, conn, req);
		else
			brk_control_error(b, conn, SHMB_EINVAL, "unknown op '%.40s'",
					  op->valuestring);
	}
	cJSON_Delete(req);
}
