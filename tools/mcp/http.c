/* http.c - libmicrohttpd glue: the daemon, body collection, header checks, routing, replies.
 *
 * Each worker runs one MHD daemon in external epoll mode (no threads of its own) on the
 * listening socket the master opened for it (main.c: one per worker, SO_REUSEPORT), with
 * suspend/resume for the streams of stream.c and for requests waiting on a broker call (ctl.c);
 * conn.c keeps the connections' deadlines. A request is checked in this order: path (404), Host
 * and Origin (403, DNS rebinding), bearer token (401), MCP-Protocol-Version (400), method (405);
 * OPTIONS (a CORS preflight) is answered after the Host and Origin check, before the token's;
 * an --allowed-origin's responses carry CORS headers; tokens are compared in constant time;
 * POST bodies are capped at MCP_MAX_BODY (413) and must be JSON (415). Then rpc.c (POST),
 * stream.c (GET) or the session delete here (DELETE) takes over. Every response carries
 * X-Shmb-Worker: <pid>. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "mcp.h"

struct req {
	char *body;
	size_t len, cap;
	int too_big;
	struct ctl_call *call; /* ctl.c: a broker call this request waits for */
	int qslot;             /* rpc.c: a session quota slot reserved across that call, + 1 */
};

static char worker_pid[16];
/* The Origin of the request being handled when it is an --allowed-origin, else NULL: its
 * responses carry the CORS headers. The worker is single-threaded and every response is made
 * while handle() runs, so a static is the request's. */
static const char *cors_origin;

#define CORS_REQUEST_HEADERS                                                          \
	"Content-Type, Accept, Authorization, Mcp-Session-Id, Mcp-Protocol-Version, " \
	"Last-Event-ID, Mcp-Method"
#define CORS_EXPOSED_HEADERS \
	"Mcp-Session-Id, Mcp-Protocol-Version, WWW-Authenticate, Retry-After, X-Shmb-Worker"

void http_add_common(struct MHD_Response *resp)
{
	MHD_add_response_header(resp, "X-Shmb-Worker", worker_pid);
	MHD_add_response_header(resp, "Cache-Control", "no-cache");
	if (cors_origin) {
		MHD_add_response_header(resp, "Access-Control-Allow-Origin", cors_origin);
		MHD_add_response_header(resp, "Access-Control-Expose-Headers",
					CORS_EXPOSED_HEADERS);
		MHD_add_response_header(resp, "Vary", "Origin");
	}
}

/* An exact (case-insensitive) --allowed-origin: browsers there may read the responses. The
 * loopback origins origin_ok() accepts by default get no CORS headers: any local page would
 * otherwise read them. Returns the request's own spelling: a browser compares
 * Access-Control-Allow-Origin with its (lower-case) serialized origin byte for byte, so the
 * option's spelling (`--allowed-origin https://App.Example`) made every response unreadable
 * while the origin was accepted. */
static const char *cors_allowed(const char *origin)
{
	for (int i = 0; origin && i < mcp_cfg.n_origins; i++)
		if (!strcasecmp(mcp_cfg.origins[i], origin))
			return origin;
	return NULL;
}

/* OPTIONS: a CORS preflight. Answered before the token check (a browser sends no credentials
 * in a preflight); 204 with the CORS headers for an --allowed-origin, a bare 204 otherwise (the
 * browser then refuses the request). */
static enum MHD_Result preflight(struct MHD_Connection *conn)
{
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
	if (!resp)
		return MHD_NO;
	http_add_common(resp);
	MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, POST, DELETE, OPTIONS");
	if (cors_origin) {
		char allow[256];
		snprintf(allow, sizeof allow, "%s%s%s", CORS_REQUEST_HEADERS,
			 mcp_cfg.tenant_header ? ", " : "",
			 mcp_cfg.tenant_header ? mcp_cfg.tenant_header : "");
		MHD_add_response_header(resp, "Access-Control-Allow-Methods",
					"GET, POST, DELETE, OPTIONS");
		MHD_add_response_header(resp, "Access-Control-Allow-Headers", allow);
		MHD_add_response_header(resp, "Access-Control-Max-Age", "600");
	}
	enum MHD_Result r = MHD_queue_response(conn, MHD_HTTP_NO_CONTENT, resp);
	MHD_destroy_response(resp);
	return r;
}

/* Equal without a timing that depends on where they differ or on the configured token's
 * length: the time depends on the presented token's length only. */
static int token_equal(const char *given, size_t glen, const char *token)
{
	size_t tlen = strlen(token);
	volatile unsigned char d = glen != tlen;
	for (size_t i = 0; i < glen; i++)
		d |= (unsigned char)(given[i] ^ token[i % tlen]);
	return d == 0;
}

enum MHD_Result http_reply(struct MHD_Connection *conn, unsigned status, const char *ctype,
			   const char *body, const char *sid)
{
	size_t len = body ? strlen(body) : 0;
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, (void *)(body ? body : ""),
								    MHD_RESPMEM_MUST_COPY);
	if (!resp)
		return MHD_NO;
	http_add_common(resp);
	if (ctype && len)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	if (sid)
		MHD_add_response_header(resp, "Mcp-Session-Id", sid);
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, "GET, POST, DELETE, OPTIONS");
	if (status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
	if (status == MHD_HTTP_SERVICE_UNAVAILABLE)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, "1");
	enum MHD_Result r = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return r;
}

enum MHD_Result http_reply_error(struct MHD_Connection *conn, unsigned status, const char *id,
				 int code, const char *message)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "jsonrpc", "2.0");
	cJSON_AddItemToObject(o, "id", cJSON_CreateRaw(id ? id : "null"));
	cJSON *e = cJSON_AddObjectToObject(o, "error");
	cJSON_AddNumberToObject(e, "code", code);
	cJSON_AddStringToObject(e, "message", message);
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	enum MHD_Result r = http_reply(conn, status, "application/json", s, NULL);
	free(s);
	return r;
}

/* A failed libshmb call on a session: unknown 404 (-32001), other tenant or principal 403,
 * a full table, the broker away or a replaced segment 503, anything else 500. */
enum MHD_Result http_reply_shmb(struct MHD_Connection *conn, const char *id, int64_t rc)
{
	if (rc == SHMB_ENOENT || rc == SHMB_EINVAL)
		return http_reply_error(conn, MHD_HTTP_NOT_FOUND, id, -32001, "Session not found");
	if (rc == SHMB_EPERM)
		return http_reply_error(conn, MHD_HTTP_FORBIDDEN, id, -32000,
					"Forbidden: the session belongs to another tenant "
					"or principal");
	if (rc == SHMB_ESTALE)
		worker_segment_replaced(); /* this worker restarts on the new segment */
	int busy =
		rc == SHMB_EBROKER || rc == SHMB_EFULL || rc == SHMB_ESTALE || rc == SHMB_ENOREADER;
	return http_reply_error(conn,
				busy ? MHD_HTTP_SERVICE_UNAVAILABLE
				     : MHD_HTTP_INTERNAL_SERVER_ERROR,
				id, -32603, shmb_strerror((int)rc));
}

/* "host[:port]" or "[v6]:port" -> the host part, lower-cased, in out. */
static int host_part(const char *v, char *out, size_t len)
{
	size_t n;
	if (v[0] == '[') {
		const char *e = strchr(v, ']');
		if (!e)
			return -1;
		n = (size_t)(e - v) + 1;
		if (e[1] && e[1] != ':')
			return -1;
	} else {
		const char *c = strchr(v, ':');
		n = c ? (size_t)(c - v) : strlen(v);
	}
	if (n == 0 || n >= len)
		return -1;
	for (size_t i = 0; i < n; i++)
		out[i] = (char)tolower((unsigned char)v[i]);
	out[n] = '\0';
	return 0;
}

static int loopback_name(const char *h)
{
	return !strcmp(h, "localhost") || !strcmp(h, "127.0.0.1") || !strcmp(h, "[::1]");
}

static int host_ok(const char *host)
{
	if (!host)
		return 1; /* HTTP/1.0 without Host (MHD refuses HTTP/1.1 without it) */
	char h[256];
	if (host_part(host, h, sizeof h) < 0)
		return 0;
	for (int i = 0; i < mcp_cfg.n_hosts; i++)
		if (!strcasecmp(mcp_cfg.hosts[i], host) || !strcasecmp(mcp_cfg.hosts[i], h))
			return 1;
	if (mcp_cfg.loopback)
		return loopback_name(h);
	return mcp_cfg.n_hosts == 0;
}

static int origin_ok(const char *origin)
{
	if (!origin)
		return 1;
	for (int i = 0; i < mcp_cfg.n_origins; i++)
		if (!strcasecmp(mcp_cfg.origins[i], origin))
			return 1;
	const char *rest;
	if (!strncasecmp(origin, "http://", 7))
		rest = origin + 7;
	else if (!strncasecmp(origin, "https://", 8))
		rest = origin + 8;
	else
		return 0;
	char h[256];
	if (strchr(rest, '/') || host_part(rest, h, sizeof h) < 0)
		return 0;
	return loopback_name(h);
}

/* Returns the principal of the presented token, "" when no token is configured, NULL when
 * the request is not authorized. */
static const char *auth_principal(struct MHD_Connection *conn)
{
	if (mcp_cfg.n_auth == 0)
		return "";
	const char *a =
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
	if (!a || strncasecmp(a, "Bearer ", 7) != 0)
		return NULL;
	a += 7;
	while (*a == ' ')
		a++;
	size_t n = strlen(a);
	const char *principal = NULL;
	for (int i = 0; i < mcp_cfg.n_auth; i++) /* every token, whichever matched */
		if (token_equal(a, n, mcp_cfg.auth[i].token) && !principal)
			principal = mcp_cfg.auth[i].principal;
	return principal;
}

static enum mcp_proto parse_proto(const char *v)
{
	if (!v)
		return MCP_PROTO_2025_03_26; /* the spec's assumption when the header is absent */
	static const char *names[] = { "2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25",
				       "2026-07-28" };
	for (int i = 0; i < 5; i++)
		if (!strcmp(v, names[i]))
			return (enum mcp_proto)i;
	return MCP_PROTO_BAD;
}

static int tenant_ok(const char *t)
{
	size_t n = strlen(t);
	if (n == 0 || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)t[i] < 0x21 || (unsigned char)t[i] > 0x7e)
			return 0;
	return 1;
}

static int accepts(const char *accept, const char *type)
{
	if (!accept)
		return 1;
	return strstr(accept, type) || strstr(accept, "*/*");
}

/* "application/json", optionally followed by parameters ("; charset=utf-8"); a mere prefix
 * ("application/jsonx", "application/json-seq") is another type. */
static int json_type(const char *ct)
{
	if (!ct || strncasecmp(ct, "application/json", 16) != 0)
		return 0;
	ct += 16;
	while (*ct == ' ' || *ct == '\t')
		ct++;
	return *ct == '\0' || *ct == ';';
}

static enum MHD_Result delete_session(struct mcp_ctx *cx)
{
	if (cx->proto == MCP_PROTO_2026_07_28)
		return http_reply_error(cx->conn, MHD_HTTP_METHOD_NOT_ALLOWED, NULL, -32600,
					"2026-07-28 has no sessions to delete");
	if (!cx->sid)
		return http_reply_error(cx->conn, MHD_HTTP_BAD_REQUEST, NULL, -32000,
					"Bad Request: Mcp-Session-Id header is required");
	if (mcp_fo.redis && (!*cx->call || ctl_failover_pending(cx))) {
		/* Multi-host: a session of another node is fetched (and a stale copy replaced)
		 * first, so the delete ends the session where it lives now (failover.c). */
		shmb_session *s;
		enum MHD_Result r = rpc_open_session(cx, NULL, &s);
		if (!s)
			return r;
		shmb_session_close(s);
	}
	int rc = ctl_request(cx, 0, NULL); /* off the loop: ctl.c */
	if (rc == MCP_CTL_PENDING)
		return MHD_YES;
	if (rc == MCP_CTL_BUSY)
		return http_reply_error(cx->conn, MHD_HTTP_SERVICE_UNAVAILABLE, NULL, -32603,
					"broker unavailable");
	if (rc == 0) {
		jobs_cancel(cx->sid, NULL, NULL); /* its jobs stop now, on every worker */
		quota_session_forget(cx->sid);
		return http_reply(cx->conn, MHD_HTTP_NO_CONTENT, NULL, NULL, NULL);
	}
	return http_reply_shmb(cx->conn, NULL, rc);
}

static enum MHD_Result handle_request(struct MHD_Connection *conn, const char *url,
				      const char *method, struct req *rq);

/* GET /health: a load balancer's check (docs/multi-host.md). 200 "ok" while this worker can
 * serve sessions (attached, the broker's heartbeat fresh), else 503. No authentication and
 * nothing about sessions in it: it says only whether this node is worth sending requests to.
 * Not ctl_busy(): a slow Redis keeps the broker thread in a failover call, which says nothing
 * about this node, and a node marked down for it would push its sessions onto the others. */
static enum MHD_Result health(struct MHD_Connection *conn)
{
	int ok = mcp_w.client && watch_heartbeat_age_ms() <= (int64_t)mcp_ops.broker_wait_ms;
	return http_reply(conn, ok ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE, "text/plain",
			  ok ? "ok\n" : "unavailable\n", NULL);
}

static enum MHD_Result handle(struct MHD_Connection *conn, const char *url, const char *method,
			      struct req *rq)
{
	cors_origin = cors_allowed(
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ORIGIN));
	enum MHD_Result r = handle_request(conn, url, method, rq);
	cors_origin = NULL;
	return r;
}

static enum MHD_Result handle_request(struct MHD_Connection *conn, const char *url,
				      const char *method, struct req *rq)
{
	if (!strcmp(url, MCP_HEALTH_PATH) && (!strcmp(method, "GET") || !strcmp(method, "HEAD")))
		return health(conn);
	if (strcmp(url, MCP_PATH) != 0)
		return http_reply_error(conn, MHD_HTTP_NOT_FOUND, NULL, -32601, "Not Found");
	const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_HOST);
	const char *origin =
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ORIGIN);
	if (!host_ok(host) || !origin_ok(origin))
		return http_reply_error(conn, MHD_HTTP_FORBIDDEN, NULL, -32000,
					"Forbidden: Host or Origin not allowed");
	if (!strcmp(method, "OPTIONS"))
		return preflight(conn);
	const char *principal = auth_principal(conn);
	if (!principal)
		return http_reply_error(conn, MHD_HTTP_UNAUTHORIZED, NULL, -32000,
					"Unauthorized: a valid bearer token is required");
	struct mcp_ctx cx = { .conn = conn,
			      .principal = *principal ? principal : NULL,
			      .tenant = mcp_cfg.tenant,
			      .call = &rq->call,
			      .qslot = &rq->qslot };
	const char *pv = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "MCP-Protocol-Version");
	cx.proto = parse_proto(pv);
	cx.proto_given = pv != NULL;
	if (cx.proto == MCP_PROTO_BAD)
		return http_reply_error(conn, MHD_HTTP_BAD_REQUEST, NULL, -32000,
					"Bad Request: unsupported MCP-Protocol-Version");
	if (mcp_cfg.tenant_header) {
		const char *t =
			MHD_lookup_connection_value(conn, MHD_HEADER_KIND, mcp_cfg.tenant_header);
		if (t && !tenant_ok(t))
			return http_reply_error(conn, MHD_HTTP_BAD_REQUEST, NULL, -32000,
						"Bad Request: bad tenant header");
		if (t)
			cx.tenant = t;
	}
	cx.sid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Mcp-Session-Id");
	if (cx.sid && !*cx.sid)
		cx.sid = NULL;
	const char *accept =
		MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
	cx.accept_sse = accept && (strstr(accept, "text/event-stream") != NULL);
	cx.accept_json = accepts(accept, "application/json");

	if (!strcmp(method, "POST")) {
		if (rq->too_big)
			return http_reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, NULL, -32600,
						"Request body too large");
		const char *ct = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							     MHD_HTTP_HEADER_CONTENT_TYPE);
		if (!json_type(ct))
			return http_reply_error(conn, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE, NULL, -32000,
						"Unsupported Media Type: use application/json");
		if (!cx.accept_json && !cx.accept_sse)
			return http_reply_error(conn, MHD_HTTP_NOT_ACCEPTABLE, NULL, -32000,
						"Not Acceptable: accept application/json or "
						"text/event-stream");
		return rpc_post(&cx, rq->body ? rq->body : "", rq->len);
	}
	if (!strcmp(method, "GET"))
		return stream_get(&cx);
	if (!strcmp(method, "DELETE"))
		return delete_session(&cx);
	return http_reply_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, NULL, -32000,
				"Method Not Allowed");
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload,
				  size_t *upload_size, void **con_cls)
{
	(void)cls;
	(void)version;
	struct req *rq = *con_cls;
	if (!rq) {
		rq = calloc(1, sizeof *rq);
		if (!rq)
			return MHD_NO;
		*con_cls = rq;
		conn_head_done(conn); /* conn.c: the head's deadline is met, the body's starts */
		const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							     MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (cl && strtoull(cl, NULL, 10) > MCP_MAX_BODY)
			rq->too_big = 1;
		return MHD_YES;
	}
	if (*upload_size) {
		size_t n = *upload_size;
		*upload_size = 0;
		if (rq->too_big || rq->len + n > MCP_MAX_BODY) {
			rq->too_big = 1;
			return MHD_YES; /* keep reading, discard: the reply is 413 */
		}
		if (rq->len + n + 1 > rq->cap) {
			size_t cap = rq->cap ? rq->cap : 4096;
			while (cap < rq->len + n + 1)
				cap *= 2;
			char *b = realloc(rq->body, cap);
			if (!b)
				return MHD_NO;
			rq->body = b;
			rq->cap = cap;
		}
		memcpy(rq->body + rq->len, upload, n);
		rq->len += n;
		rq->body[rq->len] = '\0';
		return MHD_YES;
	}
	conn_body_done(conn); /* conn.c: the response phase, which no deadline of ours cuts */
	return handle(conn, url, method, rq);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)toe;
	conn_request_done(conn); /* conn.c: kept alive, it waits for the next head */
	struct req *rq = *con_cls;
	if (rq) {
		ctl_request_gone(rq->call);
		if (rq->qslot) /* ended before its create's outcome: free the slot */
			quota_session_commit(rq->qslot - 1, NULL);
		free(rq->body);
		free(rq);
		*con_cls = NULL;
	}
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char line[512];
	vsnprintf(line, sizeof line, fmt, ap);
	size_t n = strlen(line);
	while (n && line[n - 1] == '\n')
		line[--n] = '\0';
	mcp_log("worker %d: libmicrohttpd: %s", mcp_w.index, line);
}

struct MHD_Daemon *http_start(int listen_fd)
{
	snprintf(worker_pid, sizeof worker_pid, "%d", (int)getpid());
	struct MHD_Daemon *d =
		MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG, 0,
				 NULL, NULL, on_request, NULL, MHD_OPTION_EXTERNAL_LOGGER,
				 on_mhd_log, NULL, MHD_OPTION_LISTEN_SOCKET, listen_fd,
				 MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
				 MHD_OPTION_NOTIFY_CONNECTION, conn_notify, NULL,
				 MHD_OPTION_CONNECTION_LIMIT, mcp_ops.max_connections,
				 MHD_OPTION_PER_IP_CONNECTION_LIMIT, mcp_ops.max_per_ip,
				 MHD_OPTION_CONNECTION_TIMEOUT, mcp_ops_keepalive_s(),
				 MHD_OPTION_END);
	if (!d)
		mcp_log("worker %d: MHD_start_daemon failed", mcp_w.index);
	return d;
}
