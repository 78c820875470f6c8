/* failover.c - shmb-mcpd across hosts: a session of a dead node is claimed and restored from
 * Redis, and a returning node does not serve its stale copy (docs/multi-host.md).
 *
 * Off unless --redis is given; built only with hiredis. shmb-mirror (tools/mirror) copies every
 * session of a node to Redis (schema: tools/mirror/mirror_redis.h, whose library does the Redis
 * calls here too); this file reads it back:
 *
 * - A request whose session is not in the local segment: failover_run claims it (one Lua
 *   script: owner = this node, epoch + 1, only while the record is live), reads its attributes
 *   and the newest events of its stream (mr_failover), and calls shmb_session_restore. Racing
 *   workers make one session: the broker answers SHMB_ECONFLICT to every restorer but the
 *   first, which then just opens it. Ids continue after max(mirrored_id, claimed, the client's
 *   Last-Event-ID) + --failover-id-margin, so ids the dead node handed out while the mirror
 *   lagged are never reused, and the range mirrored_id+1 .. the restored last id is recorded in
 *   the session's own attribute MCP_ATTR_LOST (with the mirror's own lost ranges): stream.c
 *   tells a client that resumes before its end with the overrun notification, never silently.
 *   Whatever the node tag says: a node that lost its segment (a reboot) while its sessions
 *   moved gets them back from Redis too, instead of 404.
 * - A session that is in the segment: the first time each worker sees it, and again when its
 *   check is older than CACHE_TRUST_MS (a bounded cache in the loop: failover_checked), Redis's
 *   `owner` is compared with this node; another owner means this node came back after its
 *   sessions moved: the local copy is deleted and the session restored from Redis like any
 *   failover, so it comes back with every mirrored event.
 *
 * - Before any claim the record's tenant and principal are compared with the request's: another
 *   binding gets 403 and changes nothing. A claim whose restore fails is given back (unclaim).
 * - A worker whose loop stalled (failover_stalled: SIGSTOP, a paused VM) forgets its checks; an
 *   open stream's session is checked every MCP_OWNER_CHECK_MS (failover_disown, stream.c) and
 *   its copy dropped when another node owns it, which ends the stream.
 *
 * Where it runs: on the worker's broker thread (ctl.c), never on the event loop, so a slow
 * Redis delays only the request that needs it (and the thread's other calls queued behind it,
 * bounded by --broker-wait-ms as for a slow broker). Every Redis call is bounded by
 * --redis-timeout-ms (connect, and each reply); a failed call drops the connection, the next
 * call reconnects. Unreachable: a session that is here is served (fail open, logged once per
 * outage); one that is not gets 503 + Retry-After, not 404 -- it may well exist.
 *
 * Threads: failover_run and the Redis context are the broker thread's only; the ownership cache
 * is the loop's only. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcp.h"

struct mcp_fo_config mcp_fo = { .prefix = "shmb:", .margin = 64, .timeout_ms = 300 };

/* ---- The loop's ownership cache: sessions this worker has checked (or made, or restored) --- */

#define CACHE_SLOTS 4096 /* direct-mapped: a collision only costs one more check */
/* An entry is trusted this long, then checked again: a session that moved to another node
 * while this one kept running (a routing change among survivors) is noticed. */
#define CACHE_TRUST_MS 10000
static struct cached {
	char sid[SHMB_SID_LEN + 1];
	int64_t at; /* mcp_now_ms() of the check */
} * cache;

static struct cached *cache_slot(const char *sid)
{
	if (!cache && !(cache = calloc(CACHE_SLOTS, sizeof *cache)))
		return NULL;
	return &cache[quota_hash(sid) % CACHE_SLOTS];
}

/* Checks made before this are not trusted (failover_stalled). */
static int64_t trust_from;

int failover_checked(const char *sid)
{
	struct cached *e = cache_slot(sid);
	return e && !strcmp(e->sid, sid) && e->at > trust_from &&
	       mcp_now_ms() - e->at < CACHE_TRUST_MS;
}

void failover_stalled(int64_t gap_ms)
{
	/* The balancer may have moved every session of this node meanwhile (a SIGSTOP, a VM
	 * paused longer than its health checks): served from the cache, the stale copies would
	 * take requests and events until CACHE_TRUST_MS ran out -- events into a copy whose
	 * mirror is fenced, lost without a word when it is finally dropped. */
	if (mcp_fo.redis) {
		trust_from = mcp_now_ms();
		mcp_log("worker %d: the loop stalled for %lld ms: every session's owner is checked "
			"again",
			mcp_w.index, (long long)gap_ms);
	}
}

void failover_mark(const char *sid)
{
	struct cached *e = cache_slot(sid);
	if (e && strlen(sid) == SHMB_SID_LEN) {
		memcpy(e->sid, sid, SHMB_SID_LEN + 1);
		e->at = mcp_now_ms();
		if (e->at <= trust_from) /* marked in the stall's own millisecond */
			e->at = trust_from + 1;
	}
}

/* The lost ranges of v ("lo-hi,lo-hi", ascending): the last `max` of them into lo[], hi[]; stops
 * at anything malformed. */
static int parse_lost(const char *v, uint64_t *lo, uint64_t *hi, int max)
{
	int n = 0;
	while (*v) {
		char *end;
		uint64_t a = strtoull(v, &end, 10);
		if (*end != '-')
			break;
		uint64_t b = strtoull(end + 1, &end, 10);
		if (a == 0 || b < a || (*end && *end != ','))
			break;
		if (n == max) { /* keep the newest */
			memmove(lo, lo + 1, (size_t)(max - 1) * sizeof *lo);
			memmove(hi, hi + 1, (size_t)(max - 1) * sizeof *hi);
			n--;
		}
		lo[n] = a;
		hi[n++] = b;
		v = *end ? end + 1 : end;
	}
	return n;
}

int failover_lost(shmb_session *s, uint64_t *lo, uint64_t *hi)
{
	char v[MCP_LOST_RANGES * 42 + 1];
	int n = shmb_attr_get(s, MCP_ATTR_LOST, v, sizeof v - 1, NULL);
	if (n <= 0)
		return 0;
	v[n] = '\0';
	return parse_lost(v, lo, hi, MCP_LOST_RANGES);
}

#ifndef MCP_HAVE_HIREDIS

int failover_available(void)
{
	return 0;
}

int failover_parse_redis(const char *arg)
{
	(void)arg;
	return -1;
}

int failover_check_auth(char *why, size_t len)
{
	(void)why, (void)len;
	return 0;
}

int failover_run(shmb_client *c, const char *sid, const char *tenant, const char *principal,
		 int local, uint64_t lei)
{
	(void)c, (void)sid, (void)tenant, (void)principal, (void)local, (void)lei;
	return local ? 0 : SHMB_ENOENT;
}

int failover_disown(shmb_client *c, const char *sid, const char *tenant, const char *principal)
{
	(void)c, (void)sid, (void)tenant, (void)principal;
	return 0;
}

void failover_fini(void)
{
}

#else

#include "mirror_redis.h"

int failover_available(void)
{
	return 1;
}

int failover_parse_redis(const char *arg)
{
	struct mr_conn m; /* only parses: HOST:PORT or [V6]:PORT */
	if (mr_conn_init(&m, arg, NULL, 0, 0) < 0)
		return -1;
	mcp_fo.redis = arg;
	return 0;
}

/* Sets the credentials of m (mirror_redis.h: the password is read again on every connect). */
static int set_auth(struct mr_conn *m)
{
	if (!mcp_fo.pw_file && !mcp_fo.pw_env)
		return 0;
	return mr_conn_auth(m, mcp_fo.user, mcp_fo.pw_file, mcp_fo.pw_env);
}

int failover_check_auth(char *why, size_t len)
{
	struct mr_conn m;
	if (mr_conn_init(&m, mcp_fo.redis, NULL, 0, 0) < 0 || set_auth(&m) < 0) {
		snprintf(why, len, "%s", m.err);
		mr_conn_close(&m);
		return -1;
	}
	mr_conn_close(&m);
	return 0;
}

/* Newest stream entries read for a restore: the ring's size by default (256), with room for
 * larger rings; a bigger ring's older events are left out, which a resuming client is told
 * (SHMB_EOVERRUN, then the overrun notification), never silently. */
#define MAX_EVENTS 1024
/* A Last-Event-ID further than this past what Redis saw is not believed (a client cannot push
 * the ids of a session towards 2^64). */
#define LEI_CAP 1000000
/* Event ids a restore believes: far beyond any session's life (2^62), far enough from 2^64 that
 * the margin and LEI_CAP cannot wrap them. */
#define ID_MAX (UINT64_C(1) << 62)

static struct mr_conn rx; /* the broker thread's Redis connection (mirror_redis.h) */
static int rx_init;       /* rx initialised */
static int down_told;     /* this outage was logged */

static struct mr_conn *redis(void)
{
	if (!rx_init) {
		if (mr_conn_init(&rx, mcp_fo.redis, mcp_fo.prefix, (int)mcp_fo.timeout_ms,
				 (int)mcp_fo.timeout_ms) < 0 ||
		    set_auth(&rx) < 0) {
			mcp_log("worker %d: --redis: %s", mcp_w.index, rx.err);
			mr_conn_close(&rx);
			return NULL;
		}
		rx_init = 1;
	}
	return &rx;
}

/* A Redis call's outcome: logs the start and the end of an outage once each (Redis down, or
 * refusing our credentials: WRONGPASS, NOAUTH, NOPERM). */
static int redis_said(int rc)
{
	if ((rc == MR_EDOWN || rc == MR_EAUTH) && !down_told++)
		mcp_log("worker %d: redis %s %s: %s (sessions here are served; sessions of "
			"other nodes get 503 until it answers)",
			mcp_w.index, mcp_fo.redis,
			rc == MR_EAUTH ? "refuses our credentials" : "unavailable", rx.err);
	else if (rc != MR_EDOWN && rc != MR_EAUTH && down_told) {
		mcp_log("worker %d: redis %s answers again", mcp_w.index, mcp_fo.redis);
		down_told = 0;
	}
	if (rc == MR_EPROTO)
		mcp_log("worker %d: redis: %s", mcp_w.index, rx.err);
	return rc;
}

/* Appends the ranges of text[0..len) ("a-b,c-d", not NUL-terminated) to lo/hi, the newest
 * MCP_LOST_RANGES of them. */
static int add_ranges(const char *text, size_t len, uint64_t *lo, uint64_t *hi, int n)
{
	char *buf = malloc(len + 1);
	if (!buf)
		return n;
	memcpy(buf, text, len);
	buf[len] = '\0';
	n += parse_lost(buf, lo + n, hi + n, MCP_LOST_RANGES);
	free(buf);
	return n;
}

/* MCP_ATTR_LOST after this failover: what earlier failovers lost (old: the attribute as Redis
 * had it, may be NULL), what the mirror itself lost (f->lost) and f->lost_from..lost_to;
 * ascending, the newest MCP_LOST_RANGES. */
static void lost_value(char *out, size_t len, const shmb_image_attr *old,
		       const struct mr_failover *f)
{
	uint64_t a[2 * MCP_LOST_RANGES + 1], b[2 * MCP_LOST_RANGES + 1];
	int n = old ? add_ranges(old->val, old->len, a, b, 0) : 0;
	n = add_ranges(f->lost, strlen(f->lost), a, b, n);
	a[n] = f->lost_from;
	b[n++] = f->lost_to;
	for (int i = 1; i < n; i++) /* insertion sort by start */
		for (int j = i; j > 0 && a[j - 1] > a[j]; j--) {
			uint64_t t = a[j], u = b[j];
			a[j] = a[j - 1], b[j] = b[j - 1];
			a[j - 1] = t, b[j - 1] = u;
		}
	size_t off = 0;
	out[0] = '\0';
	for (int i = n > MCP_LOST_RANGES ? n - MCP_LOST_RANGES : 0; i < n && off < len; i++)
		off += (size_t)snprintf(out + off, len - off, "%s%" PRIu64 "-%" PRIu64,
					off ? "," : "", a[i], b[i]);
}

/* The owner and epoch a claim found (binding_check), so that a claim whose restore failed can be
 * given back (unclaim). */
struct prior {
	char owner[24], epoch[24];
};

/* Whether Redis's record of sid is bound to (tenant, principal), read before anything is claimed:
 * a request of another tenant or principal must change nothing, here or in Redis -- a claim would
 * fence the owner's mirror off and make the owner drop its live copy (events in its lag lost) for
 * a client that cannot even use the session. 0 bound to them, 1 no record, 2 another binding,
 * or an MR_E* code (which are not SHMB_E* codes). */
static int binding_check(struct mr_conn *m, const char *sid, const char *tenant,
			 const char *principal, struct prior *pr)
{
	*pr = (struct prior){ "", "" };
	char key[MR_KEY_MAX];
	if (mr_key(m, 's', sid, key, sizeof key) < 0)
		return 1;
	int ready = mr_conn_ready(m);
	if (ready < 0)
		return ready; /* MR_EDOWN, or MR_EAUTH: our credentials refused */
	redisReply *r = redisCommand(m->ctx, "HMGET %s tenant principal owner epoch", key);
	if (!r) {
		snprintf(m->err, sizeof m->err, "HMGET: %s", m->ctx->errstr);
		m->errors++;
		mr_conn_drop(m);
		return MR_EDOWN;
	}
	int rc = MR_EPROTO;
	if (r->type == REDIS_REPLY_ARRAY && r->elements == 4) {
		const redisReply *t = r->element[0], *p = r->element[1];
		const redisReply *o = r->element[2], *e = r->element[3];
		if (o->type == REDIS_REPLY_STRING && o->len < sizeof pr->owner)
			memcpy(pr->owner, o->str, o->len + 1);
		if (e->type == REDIS_REPLY_STRING && e->len < sizeof pr->epoch)
			memcpy(pr->epoch, e->str, e->len + 1);
		if (t->type == REDIS_REPLY_NIL)
			rc = 1; /* no record (or one without a tenant: not restorable) */
		else if (t->type != REDIS_REPLY_STRING ||
			 (p->type != REDIS_REPLY_STRING && p->type != REDIS_REPLY_NIL))
			snprintf(m->err, sizeof m->err, "HMGET %s: ill-typed tenant or principal",
				 key);
		else if (t->len != strlen(tenant) || memcmp(t->str, tenant, t->len) != 0 ||
			 (p->type == REDIS_REPLY_NIL) != !principal ||
			 (principal &&
			  (p->len != strlen(principal) || memcmp(p->str, principal, p->len) != 0)))
			rc = 2;
		else
			rc = 0;
	} else {
		snprintf(m->err, sizeof m->err, "HMGET %s: unexpected reply", key);
	}
	freeReplyObject(r);
	return rc;
}

/* A claim whose restore failed (a record this node cannot restore: malformed, or beyond its own
 * limits) is given back to the owner it had, if nothing claimed it since: left, it would fence a
 * live owner's mirror off and make that owner drop its copy, for a session served nowhere. */
static void unclaim(struct mr_conn *m, const char *sid, int me, const struct prior *pr)
{
	static const char script[] =
		"if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and "
		"redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then "
		"if ARGV[3] == '' then redis.call('HDEL', KEYS[1], 'owner') "
		"else redis.call('HSET', KEYS[1], 'owner', ARGV[3]) end return 1 end return 0";
	char key[MR_KEY_MAX], mes[16], epoch[24];
	char *end;
	unsigned long long e = strtoull(pr->epoch, &end, 10);
	if (*end || mr_key(m, 's', sid, key, sizeof key) < 0 || !m->ctx)
		return; /* an epoch the claim could not have bumped; or Redis gone: left claimed */
	snprintf(mes, sizeof mes, "%d", me);
	snprintf(epoch, sizeof epoch, "%llu", e + 1);
	redisReply *r =
		redisCommand(m->ctx, "EVAL %s 1 %s %s %s %s", script, key, mes, epoch, pr->owner);
	if (!r) {
		mr_conn_drop(m);
		return;
	}
	if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
		mcp_log("worker %d: session %.8s...: not restored, given back to node %s",
			mcp_w.index, sid, *pr->owner ? pr->owner : "(none)");
	freeReplyObject(r);
}

/* Claims sid in Redis and restores it into this segment. */
static int restore(shmb_client *c, struct mr_conn *m, const char *sid, uint64_t lei,
		   const struct prior *pr)
{
	int64_t t0 = mcp_now_ms();
	struct mr_failover f;
	uint64_t margin = mcp_fo.margin; /* >= 1 (main.c) */
	int rc = redis_said(mr_failover(m, sid, shmb_node_id(c), MAX_EVENTS, 0, margin, &f));
	if (rc == MR_ENOREC || rc == MR_ENOTLIVE || rc == MR_EINVAL)
		return SHMB_ENOENT;
	if (rc == MR_ENOMEM)
		return SHMB_ENOMEM;
	if (rc == MR_EPROTO) /* the claim may have been made */
		unclaim(m, sid, shmb_node_id(c), pr);
	if (rc < 0)
		return MCP_FO_UNREACHABLE; /* down, or a reply we cannot use: it may exist */
	/* Ids near 2^64 (a record not written by a mirror) would wrap to small ones after the
	 * margin: ids handed out again, the lost range empty. Refused like any malformed record. */
	uint64_t top = f.mirrored_id > f.claimed ? f.mirrored_id : f.claimed;
	if (f.img.n_events && f.img.events[f.img.n_events - 1].id > top)
		top = f.img.events[f.img.n_events - 1].id;
	if (top > ID_MAX) {
		mcp_log("worker %d: session %.8s...: redis record's event ids (%" PRIu64 ") out of "
			"range: not restored",
			mcp_w.index, sid, top);
		mr_failover_free(&f);
		unclaim(m, sid, shmb_node_id(c), pr);
		return MCP_FO_UNREACHABLE;
	}
	/* The client's Last-Event-ID proves the dead node handed out that many ids (within
	 * reason): ids continue after it too. */
	uint64_t known = f.img.last_event_id - margin;
	if (lei > known && lei - known <= LEI_CAP) {
		f.img.last_event_id = lei + margin;
		f.lost_to = f.img.last_event_id;
	}
	/* The lost ranges go into the server's own attribute (every worker reads it: stream.c),
	 * replacing the one Redis had (merged in). */
	shmb_image_attr *at = calloc(f.img.n_attrs + 1, sizeof *at);
	if (!at) {
		mr_failover_free(&f);
		return SHMB_ENOMEM;
	}
	const shmb_image_attr *old = NULL;
	size_t n_at = 0;
	for (size_t i = 0; i < f.img.n_attrs; i++)
		if (strcmp(f.img.attrs[i].key, MCP_ATTR_LOST) != 0)
			at[n_at++] = f.img.attrs[i];
		else
			old = &f.img.attrs[i];
	char lost[MCP_LOST_RANGES * 42 + 1];
	if (f.lost_to >= f.lost_from || *f.lost) {
		lost_value(lost, sizeof lost, old, &f);
		at[n_at++] =
			(shmb_image_attr){ .key = MCP_ATTR_LOST, .val = lost, .len = strlen(lost) };
	}
	f.img.attrs = at;
	f.img.n_attrs = n_at;
	rc = shmb_session_restore(c, &f.img);
	if (rc >= 0)
		mcp_log("worker %d: session %.8s... restored from redis in %lld ms (node %d had "
			"it): %zu events (%d before the ring's window), ids %" PRIu64 "..%" PRIu64
			" lost, next id %" PRIu64,
			mcp_w.index, sid, (long long)(mcp_now_ms() - t0), f.prev_owner,
			f.img.n_events, rc, f.lost_from, f.lost_to, f.img.last_event_id + 1);
	else if (rc != SHMB_ECONFLICT)
		mcp_log("worker %d: session %.8s...: restore failed: %s", mcp_w.index, sid,
			shmb_strerror(rc));
	free(at);
	mr_failover_free(&f);
	if (rc < 0 && rc != SHMB_ECONFLICT)
		unclaim(m, sid, shmb_node_id(c), pr);
	/* SHMB_ECONFLICT: another worker (or an earlier request) restored it first: it is here. */
	return rc >= 0 || rc == SHMB_ECONFLICT ? 0 : rc;
}

int failover_run(shmb_client *c, const char *sid, const char *tenant, const char *principal,
		 int local, uint64_t lei)
{
	static int told;
	struct mr_conn *m = redis();
	if (!m)
		return local ? 0 : MCP_FO_UNREACHABLE;
	if (shmb_node_id(c) < 1) {
		if (!told++)
			mcp_log("worker %d: --redis needs a broker with a node_id (shmbrokerd "
				"--node-id N): no failover",
				mcp_w.index);
		return local ? 0 : SHMB_ENOENT;
	}
	if (!local) {
		/* An earlier call of this thread (another request of the same client) may have
		 * restored it already: then there is nothing to claim. */
		shmb_session *s;
		int rc = shmb_session_open(c, sid, tenant, principal, &s);
		if (rc == 0)
			shmb_session_close(s);
		if (rc != SHMB_ENOENT)
			return rc;
	} else {
		int owner, live;
		int rc = redis_said(mr_owner(m, sid, &owner, &live));
		if (rc <= 0 || owner == 0 || owner == shmb_node_id(c))
			return 0; /* ours, unknown to Redis, or Redis away: serve it (fail open) */
		/* It moved while this node was away: this copy is stale. */
		rc = shmb_session_delete(c, sid, tenant, principal);
		if (rc < 0 && rc != SHMB_ENOENT)
			return rc;
		mcp_log("worker %d: session %.8s... is node %d's now: stale local copy dropped%s",
			mcp_w.index, sid, owner, live ? ", taking it back from redis" : "");
	}
	/* Bound to this request's tenant and principal before anything is claimed. */
	struct prior pr;
	int bound = redis_said(binding_check(m, sid, tenant, principal, &pr));
	if (bound < 0)
		return MCP_FO_UNREACHABLE;
	if (bound > 0)
		return bound == 2 ? SHMB_EPERM : SHMB_ENOENT;
	return restore(c, m, sid, lei, &pr);
}

int failover_disown(shmb_client *c, const char *sid, const char *tenant, const char *principal)
{
	struct mr_conn *m = redis();
	int owner, live;
	if (!m || shmb_node_id(c) < 1)
		return 0;
	int rc = redis_said(mr_owner(m, sid, &owner, &live));
	if (rc <= 0 || owner == 0 || owner == shmb_node_id(c))
		return 0;
	/* The mirror's write of this delete is fenced off (the record names the other owner). */
	rc = shmb_session_delete(c, sid, tenant, principal);
	if (rc == 0)
		mcp_log("worker %d: session %.8s... is node %d's now: stale local copy dropped, its "
			"streams end",
			mcp_w.index, sid, owner);
	return rc;
}

void failover_fini(void)
{
	if (rx_init)
		mr_conn_close(&rx);
	rx_init = 0;
}

#endif
