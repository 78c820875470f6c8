/* quota.c - per-session and per-client limits on sessions, streams and jobs, across workers.
 *
 * A client is the principal of its bearer token, or, when the server takes no tokens, the
 * address it connects from (quota_owner). The limits (mcp_cfg.max_*, docs/mcp-server.md) hold
 * for the whole server, not per worker, so the counts live in memory every worker sees: the
 * master maps one shared table (MAP_SHARED | MAP_ANONYMOUS) before forking, next to the job
 * table, and every check-and-claim runs under a process-shared robust mutex held for a scan of
 * that memory only (no broker call, no I/O; a worker killed while holding it leaves the table
 * consistent: every entry is written by single stores, and the next locker repairs the mutex).
 *
 * - Sessions: a slot per session this server created (sid and owner). A session ends in the
 *   broker (DELETE, expiry), not here, so an entry counts only while shmb_session_open says the
 *   session exists (ENOENT: gone; EPERM: alive under another binding, which is how a lookup by
 *   sid alone is made); dead entries are reused. initialize reserves a slot before it asks the
 *   broker (so two workers racing cannot both take the last one) and fills the sid after; a
 *   reservation older than 10 s (a worker killed in between) counts no more.
 * - Streams: worker index i owns MCP_MAX_READERS slots; a reader (stream.c) claims one for its
 *   life. A restarted worker clears its index's slots first: its predecessor's readers died
 *   with it.
 * - Jobs: the job table itself (jobs.c) is counted, under the same lock as its claims.
 *
 * Why not shmbroker session attributes for the session count: an attribute lives in one
 * session, and counting a principal's sessions would need every session of the segment listed,
 * which the client API does not offer (and a scan of 1,024 sessions per initialize would cost
 * more than this table's). The table's cost: sessions made by an earlier shmb-mcpd process (the
 * master restarted, the broker kept its sessions) are not counted until they end. */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>

#include "mcp.h"

#define QUOTA_SESSIONS 4096 /* sessions tracked; beyond, a new one goes uncounted (logged) */
#define RESERVE_MS 10000    /* a reservation whose worker died counts this long at most */
#define RETRY_AFTER_SESSIONS "10"
#define RETRY_AFTER_BUSY "1"

struct qsession {
	uint64_t owner;   /* 0: free */
	int64_t reserved; /* mcp_now_ms() of the reservation while sid is empty */
	char sid[SHMB_SID_LEN + 1];
};

struct qstream {
	uint64_t owner; /* 0: free */
	uint64_t sid;   /* hash of the session id, 0: none (a stateless call's private session) */
};

struct quota_shared {
	pthread_mutex_t lock;
	struct qsession sessions[QUOTA_SESSIONS];
	struct qstream streams[]; /* workers x MCP_MAX_READERS */
};

static struct quota_shared *q;
static int workers;

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 0x100000001b3ull;
	return h;
}

uint64_t quota_hash(const char *s)
{
	uint64_t h = fnv(0xcbf29ce484222325ull, s, strlen(s));
	return h ? h : 1;
}

int quota_init(int n_workers)
{
	size_t bytes = sizeof *q + (size_t)n_workers * MCP_MAX_READERS * sizeof(struct qstream);
	void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		mcp_log("mmap quota table: %s", strerror(errno));
		return -1;
	}
	q = m;
	workers = n_workers;
	pthread_mutexattr_t a;
	pthread_mutexattr_init(&a);
	pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
	pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
	int rc = pthread_mutex_init(&q->lock, &a);
	pthread_mutexattr_destroy(&a);
	return rc ? -1 : 0;
}

void quota_lock(void)
{
	/* EOWNERDEAD: a worker died holding it; every entry is written by single stores, so the
	 * table is usable as it is. */
	if (pthread_mutex_lock(&q->lock) == EOWNERDEAD)
		pthread_mutex_consistent(&q->lock);
}

void quota_unlock(void)
{
	pthread_mutex_unlock(&q->lock);
}

void quota_worker_start(int index)
{
	quota_lock();
	memset(&q->streams[(size_t)index * MCP_MAX_READERS], 0,
	       MCP_MAX_READERS * sizeof(struct qstream));
	quota_unlock();
}

/* MHD_get_connection_values' iterator: the last value of --client-address-header into *cls. */
static enum MHD_Result last_forwarded(void *cls, enum MHD_ValueKind kind, const char *key,
				      const char *value)
{
	(void)kind;
	if (key && value && !strcasecmp(key, mcp_cfg.client_addr_header))
		*(const char **)cls = value;
	return MHD_YES;
}

uint64_t quota_owner(const struct mcp_ctx *cx)
{
	char key[160];
	if (cx->principal) {
		snprintf(key, sizeof key, "p:%s", cx->principal);
		return quota_hash(key);
	}
	uint64_t h = fnv(0xcbf29ce484222325ull, "a:", 2);
	/* Behind a balancer every connection comes from its address: all anonymous clients would
	 * be one client, its limits everyone's. The balancer appends the client's address to the
	 * header (HAProxy's `option forwardfor`); what a client wrote there itself comes before
	 * it, so only the last element is believed. */
	const char *fwd = NULL;
	if (mcp_cfg.client_addr_header) /* the last line: HAProxy adds one after the client's */
		MHD_get_connection_values(cx->conn, MHD_HEADER_KIND, last_forwarded, &fwd);
	if (fwd) {
		const char *last = strrchr(fwd, ',');
		last = last ? last + 1 : fwd;
		last += strspn(last, " \t");
		size_t n = strcspn(last, " \t");
		if (n > 0 && n <= 64) {
			h = fnv(fnv(h, "f:", 2), last, n);
			return h ? h : 1;
		}
	}
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(cx->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	const struct sockaddr *sa = ci ? ci->client_addr : NULL;
	if (sa && sa->sa_family == AF_INET)
		h = fnv(h, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
	else if (sa && sa->sa_family == AF_INET6)
		h = fnv(h, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
	return h ? h : 1;
}

enum MHD_Result quota_reply(struct MHD_Connection *conn, const char *id, const char *what,
			    unsigned limit)
{
	char msg[160], body[MCP_JSON_FIELD + 320];
	snprintf(msg, sizeof msg, "Too Many Requests: at most %u %s", limit, what);
	int n = snprintf(body, sizeof body,
			 "{\"jsonrpc\":\"2.0\",\"id\":%s,\"error\":{\"code\":-32000,\"message\":"
			 "\"%s\",\"data\":{\"limit\":%u}}}",
			 id ? id : "null", msg, limit);
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(n > 0 && (size_t)n < sizeof body ? (size_t)n : 0,
						body, MHD_RESPMEM_MUST_COPY);
	if (!resp)
		return MHD_NO;
	http_add_common(resp);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER,
				strstr(what, "sessions") ? RETRY_AFTER_SESSIONS : RETRY_AFTER_BUSY);
	enum MHD_Result r = MHD_queue_response(conn, MHD_HTTP_TOO_MANY_REQUESTS, resp);
	MHD_destroy_response(resp);
	return r;
}

/* 1 while entry e is a live session or a fresh reservation; frees it (under the lock) when
 * not. */
static int session_live(struct qsession *e, int64_t now)
{
	if (!e->owner)
		return 0;
	if (!e->sid[0]) {
		if (now - e->reserved < RESERVE_MS + (int64_t)mcp_ops.broker_wait_ms)
			return 1;
	} else if (mcp_w.client) {
		shmb_session *s = NULL;
		/* Tenant "~": one byte, valid under any max_tenant_len (a longer made-up tenant
		 * gets EINVAL from a broker configured shorter, and every session would look gone). */
		int rc = shmb_session_open(mcp_w.client, e->sid, "~", NULL, &s);
		shmb_session_close(s);
		if (rc != SHMB_ENOENT && rc != SHMB_EINVAL)
			return 1; /* 0, or EPERM: it exists under its own binding */
	} else {
		return 1; /* cannot tell without the broker: count it */
	}
	e->owner = 0;
	return 0;
}

int quota_session_reserve(uint64_t owner)
{
	int64_t now = mcp_now_ms();
	unsigned n = 0;
	int free_slot = -1;
	quota_lock();
	for (int i = 0; i < QUOTA_SESSIONS; i++) {
		struct qsession *e = &q->sessions[i];
		if (e->owner == owner && session_live(e, now))
			n++;
		else if (!e->owner && free_slot < 0)
			free_slot = i;
	}
	if (mcp_cfg.max_sessions_per_client && n >= mcp_cfg.max_sessions_per_client) {
		quota_unlock();
		return -1;
	}
	for (int i = 0; free_slot < 0 && i < QUOTA_SESSIONS; i++)
		if (!session_live(&q->sessions[i], now))
			free_slot = i; /* reclaim the dead sessions of other clients */
	if (free_slot >= 0)
		q->sessions[free_slot] =
			(struct qsession){ .owner = owner, .reserved = now, .sid = "" };
	quota_unlock();
	if (free_slot < 0) {
		static int told;
		if (!told++)
			mcp_log("worker %d: %d sessions tracked: more go uncounted by the per-client "
				"session limit",
				mcp_w.index, QUOTA_SESSIONS);
		return QUOTA_SESSIONS; /* uncounted: quota_session_commit ignores it */
	}
	return free_slot;
}

void quota_session_commit(int slot, const char *sid)
{
	if (slot < 0 || slot >= QUOTA_SESSIONS)
		return;
	quota_lock();
	if (sid)
		snprintf(q->sessions[slot].sid, sizeof q->sessions[slot].sid, "%s", sid);
	else
		q->sessions[slot].owner = 0;
	quota_unlock();
}

void quota_session_forget(const char *sid)
{
	quota_lock();
	for (int i = 0; i < QUOTA_SESSIONS; i++)
		if (q->sessions[i].owner && !strcmp(q->sessions[i].sid, sid))
			q->sessions[i].owner = 0;
	quota_unlock();
}

int quota_stream_claim(uint64_t owner, uint64_t sid, const char **what, unsigned *limit)
{
	unsigned per_session = 0, per_client = 0;
	int free_slot = -1;
	size_t mine = (size_t)mcp_w.index * MCP_MAX_READERS;
	quota_lock();
	for (size_t i = 0; i < (size_t)workers * MCP_MAX_READERS; i++) {
		const struct qstream *e = &q->streams[i];
		if (!e->owner) {
			if (free_slot < 0 && i >= mine && i < mine + MCP_MAX_READERS)
				free_slot = (int)(i - mine);
			continue;
		}
		per_client += e->owner == owner;
		per_session += sid && e->sid == sid;
	}
	*what = NULL;
	if (mcp_cfg.max_streams_per_session && per_session >= mcp_cfg.max_streams_per_session) {
		*what = "open streams per session";
		*limit = mcp_cfg.max_streams_per_session;
	} else if (mcp_cfg.max_streams_per_client && per_client >= mcp_cfg.max_streams_per_client) {
		*what = "open streams per client";
		*limit = mcp_cfg.max_streams_per_client;
	}
	if (!*what && free_slot >= 0)
		q->streams[mine + (size_t)free_slot] =
			(struct qstream){ .owner = owner, .sid = sid };
	quota_unlock();
	return *what ? -1 : free_slot; /* -1 without *what: this worker's slots are all taken */
}

void quota_stream_release(int slot)
{
	if (slot < 0)
		return;
	quota_lock();
	q->streams[(size_t)mcp_w.index * MCP_MAX_READERS + (size_t)slot].owner = 0;
	quota_unlock();
}
