/* requests.c - the control messages of docs/protocol.md: hello, create, delete, ping,
 * eventfds, detach, stop, reload; restore is in restore.c.
 *
 * Every field is checked for presence, type, range and length before anything changes; a bad
 * message gets {"ok":false,"code":N,"error":"SHMB_...","message":"field 'x' ..."} and the
 * connection stays open. Unknown extra fields are ignored (room for compatible additions).
 * The binding check of delete compares the session id in constant time (sid_equal, inside
 * idx_find) and the tenant and principal over their whole buffers, so timing reveals neither.
 *
 * Request ids (create, delete): a worker's request may carry "req" (an id its client chose) and
 * "deadline_mono_ms" (CLOCK_MONOTONIC, which every process of the host shares). The outcome of a
 * worker's last mutating request is recorded in its worker slot (line 3, written before the reply,
 * so it survives a broker restart); the same request again (same op, id and arguments: a retry
 * after a timeout) is answered from that record instead of being applied twice. A request read
 * after its deadline -- the client has given up on it -- is refused (SHMB_EBROKER, "request
 * expired") and changes nothing. So a request the client gave up on is applied at most once, and
 * a retry of it returns the first outcome (docs/protocol.md, "Request ids"). A request id on a
 * connection without a worker slot is refused: nothing would record its outcome. */
#include <stdio.h>
#include <string.h>

#include <urcu/arch.h>
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

/* A process that published through a stale eventfd set (a restart) asks, with "wake_all": true
 * on its refresh request (eventfds, or a resuming hello), that every worker be woken once: its
 * wakeups to workers whose eventfd changed went nowhere (client/attach.c, ask_wake_all). */
static void wake_all_if_asked(struct brk *b, const cJSON *req)
{
	/* Done once at the end of the loop's batch (loop.c): after this request was read, which is
	 * all the argument needs, and once for every such request of the batch (after a restart,
	 * every process asks). */
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(req, "wake_all")))
		b->wake_all_pending = 1;
}

static void reply_create(struct brk *b, uint32_t conn, const uint8_t sid[SHMB_SID_BYTES],
			 uint32_t idx, uint32_t gen, int replayed)
{
	char text[2 * SHMB_SID_BYTES + 1];
	sid_format(sid, text);
	cJSON *r = reply_new();
	if (r) {
		cJSON_AddStringToObject(r, "sid", text);
		cJSON_AddNumberToObject(r, "index", idx);
		cJSON_AddNumberToObject(r, "gen", gen);
		if (replayed)
			cJSON_AddTrueToObject(r, "replayed");
	}
	reply_ok(b, conn, r, NULL, 0);
}

/* A refused resume's error reply carries our segment's fd: a client whose segment was replaced
 * while no broker ran (removed, rebuilt) sees that it is not the one it maps and fails with
 * SHMB_ESTALE instead of retrying forever. The peer is admitted (access.c): a fresh hello would
 * hand it the same fd. */
static void resume_refused(struct brk *b, uint32_t conn, int code, const char *why)
{
	cJSON *r = cJSON_CreateObject();
	if (!r || !cJSON_AddFalseToObject(r, "ok") || !cJSON_AddNumberToObject(r, "code", code) ||
	    !cJSON_AddStringToObject(r, "error", shmb_err_name(code)) ||
	    !cJSON_AddStringToObject(r, "message", why)) {
		cJSON_Delete(r);
		brk_control_error(b, conn, code, "%s", why);
		return;
	}
	brk_ctr_add(b, SHMB_CTR_CTL_ERRORS, 1);
	(void)brk_control_reply(b, conn, r, &b->seg_fd, 1);
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
	uint64_t pid, major, minor = 0, fp;
	int has_minor;
	if (get_uint(b, conn, req, "pid", 1, INT32_MAX, &pid) < 0 ||
	    get_uint(b, conn, req, "layout_major", 1, UINT16_MAX, &major) < 0 ||
	    (has_minor = get_uint(b, conn, req, "layout_minor", 0, UINT16_MAX, &minor)) < 0 ||
	    get_uint(b, conn, req, "fingerprint", 1, UINT32_MAX, &fp) < 0)
		return;
	char minor_text[24] = "?"; /* layout_minor is optional: say so rather than invent it */
	if (has_minor == 0)
		snprintf(minor_text, sizeof minor_text, "%llu", (unsigned long long)minor);
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
		brk_control_error(b, conn, SHMB_EVERSION,
				  "layout %llu.%s with fingerprint 0x%08llx requested; the segment "
				  "is %d.%d with fingerprint 0x%08x",
				  (unsigned long long)major, minor_text, (unsigned long long)fp,
				  SHMB_LAYOUT_MAJOR, SHMB_LAYOUT_MINOR, shmb_layout_fingerprint());
		return;
	}
	char why[160];
	int resumed = 0;
	int w = brk_worker_admit(b, (int)conn, has_resume, (uint32_t)rslot, (uint32_t)rgen,
				 &resumed, why, sizeof why);
	if (w < 0) {
		if (has_resume)
			resume_refused(b, conn, w, why);
		else
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
		if (resumed)
			wake_all_if_asked(b, req);
		return;
	}
	cJSON_Delete(r);
	/* Not sent: a new slot the worker never learnt of is released (a resumed one is kept:
	 * its process still uses it, and may reconnect). */
	if (resumed)
		brk_worker_resume_failed(b, (uint32_t)w);
	struct brk_wslot *ws = &b->wslots[w];
	if (!resumed && ws->pid &&
	    uatomic_read(&seg_worker(&b->seg, (uint32_t)w)->state) != SHMB_WORKER_LIVE)
		brk_worker_settle(b, (uint32_t)w, 0);
}

/* FNV-1a over a request's arguments, so a replay needs the same ones (an id reused for another
 * request is applied as new). */
static uint32_t fnv(uint32_t h, const void *p, size_t n)
{
	const uint8_t *s = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ s[i]) * 16777619u;
	return h;
}

static uint32_t args_hash(uint32_t op, const char *tenant, size_t tlen, const char *principal,
			  size_t plen, int has_principal, uint64_t a, uint64_t c)
{
	uint32_t h = fnv(2166136261u, &op, sizeof op);
	h = fnv(h, &tlen, sizeof tlen);
	h = fnv(h, tenant ? tenant : "", tlen);
	h = fnv(h, &has_principal, sizeof has_principal);
	h = fnv(h, &plen, sizeof plen);
	h = fnv(h, principal ? principal : "", plen);
	h = fnv(h, &a, sizeof a);
	return fnv(h, &c, sizeof c);
}

/* A mutating request's id and deadline. Returns the worker slot whose line 3 records it (NULL
 * without an id: nothing is recorded) with *id set; (void *)-1 after an error reply was sent,
 * which includes an id on a connection that holds no worker slot. */
#define REQ_FAILED ((struct shmb_worker *)-1)
static struct shmb_worker *req_meta(struct brk *b, uint32_t conn, const cJSON *req, uint64_t *id,
				    uint64_t *deadline)
{
	*id = 0;
	*deadline = 0;
	if (get_uint(b, conn, req, "req", 0, (uint64_t)JSON_MAX_INT, id) < 0 ||
	    get_uint(b, conn, req, "deadline_mono_ms", 0, (uint64_t)JSON_MAX_INT, deadline) < 0)
		return REQ_FAILED;
	int32_t w = b->conns[conn].worker;
	if (*id && w < 0) {
		/* Only a worker slot records an outcome for a retry: a request id on a connection
		 * without one (its resume was refused, or it never said hello) would be applied
		 * with no record, so a retry could apply it twice. Refused; nothing is done. */
		brk_control_error(b, conn, SHMB_EBROKER,
				  "field 'req' on a connection without a worker slot (say hello "
				  "first); nothing was done");
		return REQ_FAILED;
	}
	if (!*id)
		return NULL;
	return seg_worker(&b->seg, (uint32_t)w);
}

/* 1 when wk recorded request (id, op, hash): the caller replays it. */
static int req_recorded(const struct shmb_worker *wk, uint64_t id, uint32_t op, uint32_t hash)
{
	return wk && uatomic_read(&wk->req_id) == id && uatomic_read(&wk->req_op) == op &&
	       uatomic_read(&wk->req_hash) == hash;
}

/* The deadline check, after a replay was ruled out: 1 (and an error reply sent) when it passed. */
static int req_expired(struct brk *b, uint32_t conn, uint64_t deadline)
{
	int64_t now = shmb_mono_ms();
	/* At the deadline the client gives up (it waits from after computing it): refuse. */
	if (!deadline || now < (int64_t)deadline)
		return 0;
	brk_control_error(b, conn, SHMB_EBROKER,
			  "request expired: read %lld ms past its deadline; nothing was done",
			  (long long)(now - (int64_t)deadline));
	return 1;
}

/* Records request id, applied, in wk's line 3, before the reply. Only applied requests are
 * recorded: one that failed changed nothing, so its retry is simply tried again. The id goes
 * last, so a broker killed midway leaves a record no retry matches (the retry is then applied as
 * new; see docs/protocol.md for that window). */
static void req_record(struct shmb_worker *wk, uint64_t id, uint32_t op, uint32_t hash, int rc,
		       const uint8_t sid[SHMB_SID_BYTES], uint32_t idx, uint32_t gen)
{
	if (!wk)
		return;
	uatomic_set(&wk->req_id, 0);
	cmm_smp_wmb(); /* the old id gone before the fields change (a later broker reads them) */
	uatomic_set(&wk->req_op, op);
	uatomic_set(&wk->req_rc, rc);
	uatomic_set(&wk->req_idx, idx);
	uatomic_set(&wk->req_gen, gen);
	uatomic_set(&wk->req_hash, hash);
	memcpy(wk->req_sid, sid, SHMB_SID_BYTES);
	cmm_smp_wmb(); /* the fields before the id that makes them count */
	uatomic_set(&wk->req_id, id);
}

/* A TTL of create: absent keeps *out (the configured default, which config.c keeps within the
 * maximum); present, it must be within max (the broker's max_*_ttl_ms; 0: no limit). Under a
 * maximum, 0 ("no such expiry") is refused too: it outlasts every limit. */
static int get_ttl(struct brk *b, uint32_t conn, const cJSON *req, const char *key,
		   const char *max_name, uint64_t max, uint64_t *out)
{
	uint64_t v;
	int rc = get_uint(b, conn, req, key, 0, (uint64_t)JSON_MAX_INT, &v);
	if (rc != 0)
		return rc;
	if (max && (v == 0 || v > max)) {
		brk_control_error(b, conn, SHMB_EINVAL,
				  "field '%s' is %llu%s, above this broker's %s (%llu ms); nothing "
				  "was created",
				  key, (unsigned long long)v, v ? "" : " (no expiry)", max_name,
				  (unsigned long long)max);
		return -1;
	}
	*out = v;
	return 0;
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
	if (get_ttl(b, conn, req, "inactivity_ttl_ms", "max_inactivity_ttl_ms",
		    cfg->max_inactivity_ttl_ms, &ittl) < 0 ||
	    get_ttl(b, conn, req, "absolute_ttl_ms", "max_absolute_ttl_ms",
		    cfg->max_absolute_ttl_ms, &attl) < 0)
		return;
	uint64_t id, deadline;
	struct shmb_worker *wk = req_meta(b, conn, req, &id, &deadline);
	if (wk == REQ_FAILED)
		return;
	uint32_t hash = args_hash(SHMB_REQ_OP_CREATE, tenant, tlen, principal, plen, has_principal,
				  ittl, attl);
	uint8_t sid[SHMB_SID_BYTES];
	uint32_t idx;
	if (req_recorded(wk, id, SHMB_REQ_OP_CREATE, hash)) {
		/* A retry of a create we applied: the first outcome, not a second session. */
		rc = uatomic_read(&wk->req_rc);
		if (rc < 0) {
			brk_control_error(b, conn, rc, "%s (the outcome of request %llu)",
					  shmb_strerror(rc), (unsigned long long)id);
			return;
		}
		memcpy(sid, wk->req_sid, sizeof sid);
		reply_create(b, conn, sid, uatomic_read(&wk->req_idx), uatomic_read(&wk->req_gen),
			     1);
		return;
	}
	if (req_expired(b, conn, deadline))
		return;
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
	uint32_t gen = uatomic_read(&seg_rec(&b->seg, idx)->gen);
	req_record(wk, id, SHMB_REQ_OP_CREATE, hash, 0, sid, idx, gen);
	SHMB_FAULT("broker.create.reply");
	reply_create(b, conn, sid, idx, gen, 0);
}

/* Delete's binding check and retirement. Returns 0, SHMB_ECORRUPT, SHMB_ENOENT, SHMB_EPERM. */
static int delete_apply(struct brk *b, uint32_t conn, const uint8_t sid[SHMB_SID_BYTES], int force,
			const char *tenant, size_t tlen, const char *principal, size_t plen,
			int has_principal)
{
	(void)conn;
	/* The broker is the only writer of the index and this thread is it: the record cannot
	 * change under us, so no read-side section is needed. */
	int64_t found = idx_find(&b->seg, sid);
	if (found == -2)
		return SHMB_ECORRUPT;
	if (found < 0)
		return SHMB_ENOENT;
	uint32_t idx = (uint32_t)found;
	struct shmb_session_rec *r = seg_rec(&b->seg, idx);
	if (idx_rec_expired(r, shmb_now_ms()))
		return SHMB_ENOENT; /* gone for everyone already; the sweeper retires it */
	if (!force) {
		/* The client's open check, in constant time (common/binding.h). */
		if (!binding_matches_ct(r, tenant, tlen, has_principal ? principal : NULL, plen))
			return SHMB_EPERM;
	}
	brk_index_retire(b, idx, SHMB_RETIRE_DELETED);
	return 0;
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
	uint64_t id, deadline;
	struct shmb_worker *wk = req_meta(b, conn, req, &id, &deadline);
	if (wk == REQ_FAILED)
		return;
	uint32_t hash = args_hash(SHMB_REQ_OP_DELETE, tenant, tlen, principal, plen, has_principal,
				  (uint64_t)force, 0);
	hash = fnv(hash, sid, sizeof sid);
	if (req_recorded(wk, id, SHMB_REQ_OP_DELETE, hash) &&
	    memcmp(wk->req_sid, sid, sizeof sid) == 0) {
		/* A retry of a delete we applied: its first outcome (0 rather than ENOENT). */
		int rc = uatomic_read(&wk->req_rc);
		if (rc < 0)
			brk_control_error(b, conn, rc, "%s (the outcome of request %llu)",
					  shmb_strerror(rc), (unsigned long long)id);
		else
			reply_ok(b, conn, reply_new(), NULL, 0);
		return;
	}
	if (req_expired(b, conn, deadline))
		return;
	int rc = delete_apply(b, conn, sid, force, tenant, tlen, principal, plen, has_principal);
	if (rc == 0)
		req_record(wk, id, SHMB_REQ_OP_DELETE, hash, rc, sid, 0, 0);
	if (rc == 0)
		SHMB_FAULT("broker.delete.reply"); /* applied and recorded, reply not sent */
	if (rc == 0)
		reply_ok(b, conn, reply_new(), NULL, 0);
	else if (rc == SHMB_ECORRUPT)
		brk_control_error(b, conn, rc, "the session's bucket chain is damaged");
	else if (rc == SHMB_EPERM)
		brk_control_error(b, conn, rc, "tenant or principal does not match the session");
	else
		brk_control_error(b, conn, rc, "no such session (unknown, expired or deleted)");
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

/* `shmctl stop`: a clean stop, as on SIGTERM, asked by the broker's own uid or root only (a
 * worker of an allowed group may attach, not stop the instance). Replied to first; the loop
 * then ends after this batch (loop.c) and main.c stops as it does on a signal. */
static void op_stop(struct brk *b, uint32_t conn, const cJSON *req)
{
	(void)req;
	const struct brk_conn *c = &b->conns[conn];
	if (c->uid != b->euid && c->uid != 0) {
		brk_control_error(
			b, conn, SHMB_EPERM,
			"only uid %u (the broker's) or root may stop the broker, not uid %u",
			(unsigned)b->euid, (unsigned)c->uid);
		return;
	}
	brk_log("stopping on request (shmctl stop) from pid %d uid %u", (int)c->pid,
		(unsigned)c->uid);
	cJSON *r = reply_new();
	if (r)
		cJSON_AddNumberToObject(r, "pid", b->pid);
	reply_ok(b, conn, r, NULL, 0);
	b->stop = 1;
}

/* Administration (reload) is for the broker's own uid and root: a worker admitted through
 * allowed_gids may use sessions, not reconfigure the broker (restore, which a worker may ask
 * once attached, checks its own way: restore.c). Returns 0, or -1 after an error reply. */
static int admin_only(struct brk *b, uint32_t conn, const char *op)
{
	uid_t uid = b->conns[conn].uid;
	if (uid == b->euid || uid == 0)
		return 0;
	brk_control_error(b, conn, SHMB_EACCES, "%s is for uid %u (the broker's) or root, not %u",
			  op, (unsigned)b->euid, (unsigned)uid);
	return -1;
}

/* Reads the configuration again (reload.c); the answer lists what was applied and what not. */
static void op_reload(struct brk *b, uint32_t conn, const cJSON *req)
{
	(void)req;
	if (admin_only(b, conn, "reload") < 0)
		return;
	brk_log("reload asked by pid %d", (int)b->conns[conn].pid);
	cJSON *r = reply_new();
	char why[512];
	if (brk_reload(b, r, why, sizeof why) < 0) {
		cJSON_Delete(r);
		brk_control_error(b, conn, SHMB_EINVAL,
				  "configuration refused, nothing changed: %s", why);
		return;
	}
	reply_ok(b, conn, r, NULL, 0);
}

/* The current eventfd set, for a process whose set is older than the header's evfd_gen. */
static void op_eventfds(struct brk *b, uint32_t conn, const cJSON *req)
{
	cJSON *r = reply_new();
	if (r) {
		cJSON_AddNumberToObject(r, "eventfds", b->seg.cfg.max_workers);
		cJSON_AddNumberToObject(r, "evfd_gen",
					(double)uatomic_read(&seg_hdr(&b->seg)->evfd_gen));
	}
	reply_ok(b, conn, r, b->evfds, (int)b->seg.cfg.max_workers);
	wake_all_if_asked(b, req);
}

/* The worker is detaching: the EOF that follows is a release, not a death, even when the
 * process exits before the broker reads the EOF (then proc_exiting() alone would say died).
 * Replied to like every message, though the client closes without reading the reply (a reply
 * that finds the peer gone settles the slot as the EOF would). */
static void op_detach(struct brk *b, uint32_t conn, const cJSON *req)
{
	uint64_t slot = 0, gen = 0;
	int has_slot = get_uint(b, conn, req, "slot", 0, UINT32_MAX, &slot);
	if (has_slot < 0 ||
	    (has_slot == 0 && get_uint(b, conn, req, "gen", 1, UINT32_MAX, &gen) < 0))
		return;
	int released = 0;
	if (b->conns[conn].worker >= 0) {
		b->conns[conn].detaching = 1;
	} else if (has_slot == 0) {
		/* Sent on a fresh connection by a client whose own connection was gone (a broker
		 * restart): it names its slot, which its process must hold. */
		released = brk_worker_detach_by_id(b, conn, (uint32_t)slot, (uint32_t)gen);
	}
	cJSON *r = reply_new();
	if (r && has_slot == 0)
		cJSON_AddBoolToObject(r, "released", released);
	reply_ok(b, conn, r, NULL, 0);
}

static const struct {
	const char *op;
	void (*fn)(struct brk *, uint32_t, const cJSON *);
} ops[] = {
	{ "hello", op_hello }, { "create", op_create },     { "delete", op_delete },
	{ "ping", op_ping },   { "eventfds", op_eventfds }, { "detach", op_detach },
	{ "stop", op_stop },   { "reload", op_reload },     { "restore", brk_restore_request },
};

/* 1 when the JSON text holds the escape \u0000 (in any case of hex digits) inside a string: every
 * backslash escape is skipped whole, so an escaped backslash followed by "u0000" is not one. */
static int escaped_nul(const char *msg, size_t len)
{
	for (size_t i = 0; i + 1 < len; i++) {
		if (msg[i] != '\\')
			continue;
		if (msg[i + 1] == 'u' && i + 5 < len && msg[i + 2] == '0' && msg[i + 3] == '0' &&
		    msg[i + 4] == '0' && msg[i + 5] == '0')
			return 1;
		i++; /* the escaped character */
	}
	return 0;
}

void brk_request(struct brk *b, uint32_t conn, const char *msg, size_t len)
{
	/* One JSON text and nothing else: cJSON would stop at an embedded NUL, and without
	 * require_null_terminated it would ignore trailing bytes. msg[len] is the NUL ctl_recv
	 * added, so len + 1 bytes are readable. */
	if (memchr(msg, '\0', len)) {
		brk_control_error(b, conn, SHMB_EINVAL, "message contains a NUL byte");
		return;
	}
	if (escaped_nul(msg, len)) {
		/* cJSON would decode it into a NUL that ends its C string: the string would be
		 * silently truncated (a tenant "a\u0000b" taken as "a"). */
		brk_control_error(
			b, conn, SHMB_EINVAL,
			"a string contains an escaped NUL (\\u0000), which no field allows");
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
		if (i < sizeof ops / sizeof ops[0]) {
			brk_debug("request '%s' from pid %d", ops[i].op, (int)b->conns[conn].pid);
			ops[i].fn(b, conn, req);
		} else
			brk_control_error(b, conn, SHMB_EINVAL, "unknown op '%.40s'",
					  op->valuestring);
	}
	cJSON_Delete(req);
}
