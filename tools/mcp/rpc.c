/* rpc.c - JSON-RPC over POST: parsing, validation, session lifecycle, method dispatch.
 *
 * A POST carries one JSON-RPC message (batches are refused with -32600). Notifications and
 * responses from the client get 202. `initialize` without Mcp-Session-Id creates a broker
 * session (shmb_session_create on the broker thread, ctl.c: the broker is involved only here
 * and in DELETE) and returns
 * its id in Mcp-Session-Id; every other request of protocol 2024-11-05..2025-11-25 must present
 * a session, which is looked up lock-free in the segment by whichever worker got the request:
 * unknown 404 (-32001), other tenant or principal 403. initialize keeps the negotiated version
 * and the client's capabilities and info as session attributes, logging/setLevel the level
 * (session.c); a request without MCP-Protocol-Version is served as the negotiated version.
 * Protocol 2026-07-28 is stateless: no
 * initialize, no session header, no ping or logging/setLevel; `server/discover` describes the
 * server (docs/mcp-server.md). initialize counts against the client's session quota (quota.c);
 * notifications/cancelled stops the named call's job (jobs_cancel). A response from the client
 * to a request a tool sent it is routed to that tool's job, on whichever worker (route_reply).
 * Resources, prompts and completion are content.c's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcp.h"

const char *proto_name(enum mcp_proto p)
{
	switch (p) {
	case MCP_PROTO_2024_11_05:
		return "2024-11-05";
	case MCP_PROTO_2025_03_26:
		return "2025-03-26";
	case MCP_PROTO_2025_06_18:
		return "2025-06-18";
	case MCP_PROTO_2025_11_25:
		return "2025-11-25";
	case MCP_PROTO_2026_07_28:
		return "2026-07-28";
	default:
		return "?";
	}
}

static enum MHD_Result reply_result(struct mcp_ctx *cx, const char *id, cJSON *result,
				    const char *sid)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "jsonrpc", "2.0");
	cJSON_AddItemToObject(o, "id", cJSON_CreateRaw(id));
	cJSON_AddItemToObject(o, "result", result);
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	enum MHD_Result r = http_reply(cx->conn, MHD_HTTP_OK, "application/json", s, sid);
	free(s);
	return r;
}

static cJSON *server_description(const char *version)
{
	cJSON *r = cJSON_CreateObject();
	cJSON_AddStringToObject(r, "protocolVersion", version);
	cJSON *caps = cJSON_AddObjectToObject(r, "capabilities");
	cJSON_AddFalseToObject(cJSON_AddObjectToObject(caps, "tools"), "listChanged");
	cJSON_AddObjectToObject(caps, "logging");
	cJSON *res = cJSON_AddObjectToObject(caps, "resources");
	cJSON_AddTrueToObject(res, "subscribe");
	cJSON_AddFalseToObject(res, "listChanged");
	cJSON_AddFalseToObject(cJSON_AddObjectToObject(caps, "prompts"), "listChanged");
	cJSON_AddObjectToObject(caps, "completions");
	cJSON *info = cJSON_AddObjectToObject(r, "serverInfo");
	cJSON_AddStringToObject(info, "name", MCP_SERVER_NAME);
	cJSON_AddStringToObject(info, "version", MCP_SERVER_VERSION);
	cJSON_AddStringToObject(r, "instructions",
				"Reference prefork MCP server on shmbroker: any worker serves any "
				"request of a session; streams resume on any worker.");
	return r;
}

/* The request's Last-Event-ID as a number, 0 when absent or not one. */
static uint64_t last_event_id(const struct mcp_ctx *cx)
{
	const char *v = MHD_lookup_connection_value(cx->conn, MHD_HEADER_KIND,
						    MHD_HTTP_HEADER_LAST_EVENT_ID);
	char *end = "";
	unsigned long long n = v && *v >= '0' && *v <= '9' ? strtoull(v, &end, 10) : 0;
	return n && !*end ? n : 0;
}

enum MHD_Result rpc_open_session(struct mcp_ctx *cx, const char *id, shmb_session **out)
{
	*out = NULL;
	if (!cx->sid)
		return http_reply_error(cx->conn, MHD_HTTP_BAD_REQUEST, id, -32000,
					"Bad Request: Mcp-Session-Id header is required");
	if (!mcp_w.client)
		return http_reply_error(cx->conn, MHD_HTTP_SERVICE_UNAVAILABLE, id, -32603,
					"broker unavailable");
	int rc = shmb_session_open(mcp_w.client, cx->sid, cx->tenant, cx->principal, out);
	if (mcp_fo.redis) {
		/* Multi-host (failover.c): a session that is not here is claimed and restored from
		 * Redis (whatever its node tag: this node may have lost its segment while its
		 * sessions moved); one that is here is checked against Redis's owner the first
		 * time this worker sees it. Both on the broker thread, off the loop. */
		int again = ctl_failover_pending(cx);
		if (again || (!*cx->call && ((rc == 0 && !failover_checked(cx->sid)) ||
					     (rc == SHMB_ENOENT && shmb_sid_node(cx->sid) >= 0)))) {
			shmb_session_close(*out);
			*out = NULL;
			int fo = ctl_failover(cx, rc == 0, last_event_id(cx));
			if (fo == MCP_CTL_PENDING)
				return MHD_YES;
			if (fo == MCP_CTL_BUSY || fo == MCP_FO_UNREACHABLE)
				return http_reply_error(cx->conn, MHD_HTTP_SERVICE_UNAVAILABLE, id,
							-32603,
							"session store unavailable: retry later");
			if (fo == 0)
				failover_mark(cx->sid);
			rc = fo < 0 ? fo
				    : shmb_session_open(mcp_w.client, cx->sid, cx->tenant,
							cx->principal, out);
		}
	}
	if (rc < 0) {
		*out = NULL;
		return http_reply_shmb(cx->conn, id, rc);
	}
	/* Without the header, the version initialize negotiated, whichever worker that was (none
	 * stored -- a session of an older shmb-mcpd, or a broker without attribute space --:
	 * 2025-03-26, the spec's assumption).
	 * A header naming another supported version is served as that version, as before: the
	 * spec says the client SHOULD send the negotiated one, and the conformance suite's
	 * server-sse-multiple-streams sends another. */
	if (!cx->proto_given) {
		enum mcp_proto p = mcp_session_proto(*out);
		if (p != MCP_PROTO_BAD)
			cx->proto = p;
	}
	return MHD_YES;
}

static enum MHD_Result do_initialize(struct mcp_ctx *cx, const char *id, cJSON *params)
{
	if (cx->sid)
		return http_reply_error(cx->conn, MHD_HTTP_BAD_REQUEST, id, -32600,
					"Invalid Request: already initialized "
					"(drop Mcp-Session-Id)");
	cJSON *pv = cJSON_GetObjectItemCaseSensitive(params, "protocolVersion");
	if (!cJSON_IsObject(params) || !cJSON_IsString(pv))
		return http_reply_error(cx->conn, MHD_HTTP_OK, id, -32602,
					"Invalid params: protocolVersion is required");
	/* A version we do not support is answered with our latest (the spec: the client then
	 * decides whether it can go on). */
	enum mcp_proto v = MCP_PROTO_2025_11_25;
	for (int p = MCP_PROTO_2024_11_05; p <= MCP_PROTO_2025_11_25; p++)
		if (!strcmp(pv->valuestring, proto_name((enum mcp_proto)p)))
			v = (enum mcp_proto)p;
	char sid[SHMB_SID_LEN + 1];
	if (!*cx->call) {
		/* First pass: the client's session slot is reserved before the broker call and
		 * kept in the request (cx->qslot, slot + 1) until its outcome commits or frees it. */
		int slot = quota_session_reserve(quota_owner(cx));
		if (slot < 0)
			return quota_reply(cx->conn, id, "sessions per client",
					   mcp_cfg.max_sessions_per_client);
		*cx->qslot = slot + 1;
	}
	int rc = ctl_request(cx, 1, sid); /* off the loop (ctl.c): pending, busy, or done */
	if (rc == MCP_CTL_PENDING)
		return MHD_YES;
	quota_session_commit(*cx->qslot - 1, rc == 0 ? sid : NULL);
	*cx->qslot = 0;
	if (rc == MCP_CTL_BUSY)
		return http_reply_error(cx->conn, MHD_HTTP_SERVICE_UNAVAILABLE, id, -32603,
					"broker unavailable");
	if (rc < 0)
		return http_reply_error(cx->conn,
					rc == SHMB_EINVAL ? MHD_HTTP_BAD_REQUEST
							  : MHD_HTTP_SERVICE_UNAVAILABLE,
					id, -32603, shmb_strerror(rc));
	/* Failing to keep them does not fail the session (session.c says what is lost). */
	mcp_session_store_init(sid, cx, v, params);
	if (mcp_fo.redis)
		failover_mark(sid); /* made here: this node owns it */
	return reply_result(cx, id, server_description(proto_name(v)), sid);
}

static enum MHD_Result dispatch(struct mcp_ctx *cx, const char *id, const char *method,
				cJSON *params, shmb_session *s)
{
	if (!strcmp(method, "tools/list")) {
		cJSON *r = cJSON_CreateObject();
		cJSON_AddItemToObject(r, "tools", tools_list());
		return reply_result(cx, id, r, NULL);
	}
	if (!strcmp(method, "tools/call"))
		return tools_call(cx, s, id, params);
	if (content_method(method))
		return content_call(cx, id, method, params, s);
	int stateless = cx->proto == MCP_PROTO_2026_07_28;
	if (!stateless && !strcmp(method, "ping"))
		return reply_result(cx, id, cJSON_CreateObject(), NULL);
	if (!stateless && !strcmp(method, "logging/setLevel")) {
		cJSON *l = cJSON_GetObjectItemCaseSensitive(params, "level");
		int level = cJSON_IsString(l) ? mcp_level_parse(l->valuestring) : -1;
		if (level < 0)
			return http_reply_error(
				cx->conn, MHD_HTTP_OK, id, -32602,
				"Invalid params: level must be a syslog level name");
		/* Kept in the session, so the worker publishing a message, whichever it is,
		 * applies it (session.c). */
		int rc = mcp_session_set_level(s, level);
		if (rc == SHMB_ENOENT)
			return http_reply_shmb(cx->conn, id, rc);
		if (rc < 0) {
			char msg[128];
			snprintf(msg, sizeof msg, "Internal error: cannot keep the log level: %s",
				 shmb_strerror(rc));
			return http_reply_error(cx->conn, MHD_HTTP_OK, id, -32603, msg);
		}
		return reply_result(cx, id, cJSON_CreateObject(), NULL);
	}
	if (stateless && !strcmp(method, "server/discover")) {
		cJSON *r = server_description("2026-07-28");
		cJSON_AddItemToObject(r, "supportedVersions",
				      cJSON_CreateStringArray((const char *[]){ "2024-11-05",
										"2025-03-26",
										"2025-06-18",
										"2025-11-25",
										"2026-07-28" },
							      5));
		return reply_result(cx, id, r, NULL);
	}
	return http_reply_error(cx->conn, MHD_HTTP_OK, id, -32601, "Method not found");
}

/* A number cJSON holds exactly, so the id we echo is the id the client sent: an integer of at
 * most 2^53 - 1 in magnitude (a double: 2^53 + 1 reads as 2^53). The range is checked before
 * the cast: casting 1e300 to long long is undefined. */
int rpc_exact_integer(const cJSON *v)
{
	double d = v->valuedouble;
	return cJSON_IsNumber(v) && d >= -9007199254740991.0 && d <= 9007199254740991.0 &&
	       d == (double)(long long)d;
}

int rpc_json_text(const cJSON *v, char *out, size_t len)
{
	if (cJSON_IsString(v))
		return cJSON_PrintPreallocated((cJSON *)v, out, (int)len - 8, 0) ? 0 : -1;
	if (!cJSON_IsNumber(v))
		return -1;
	double d = v->valuedouble;
	int n;
	if (rpc_exact_integer(v)) {
		n = snprintf(out, len, "%lld", (long long)d);
	} else {
		n = snprintf(out, len, "%.15g", d); /* the shortest text that reads back as d */
		if (n > 0 && (size_t)n < len && strtod(out, NULL) != d)
			n = snprintf(out, len, "%.17g", d);
	}
	return n > 0 && (size_t)n < len ? 0 : -1;
}

static int valid_id(const cJSON *id)
{
	return cJSON_IsString(id) || rpc_exact_integer(id);
}

/* RFC 8259 text is UTF-8: cJSON passes any byte through, so a string of invalid UTF-8 came
 * back (echo) inside a response that was no longer JSON. Rejects overlong forms, surrogates and
 * code points above U+10FFFF. */
static int utf8_valid(const unsigned char *p, size_t n)
{
	size_t i = 0;
	while (i < n) {
		unsigned c = p[i];
		size_t k;
		unsigned min, cp;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xE0) == 0xC0) {
			k = 1, min = 0x80, cp = c & 0x1F;
		} else if ((c & 0xF0) == 0xE0) {
			k = 2, min = 0x800, cp = c & 0x0F;
		} else if ((c & 0xF8) == 0xF0) {
			k = 3, min = 0x10000, cp = c & 0x07;
		} else {
			return 0;
		}
		if (n - i <= k)
			return 0;
		for (size_t j = 1; j <= k; j++) {
			if ((p[i + j] & 0xC0) != 0x80)
				return 0;
			cp = cp << 6 | (p[i + j] & 0x3F);
		}
		if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
			return 0;
		i += k + 1;
	}
	return 1;
}

/* The body as one JSON value: UTF-8, and nothing but whitespace after the value (cJSON alone
 * took '{...} garbage' and a body cut by a NUL). NULL when it is not. */
static cJSON *parse_body(const char *body, size_t len)
{
	if (!utf8_valid((const unsigned char *)body, len))
		return NULL;
	const char *end = NULL;
	cJSON *msg = cJSON_ParseWithLengthOpts(body, len, &end, 0);
	if (!msg)
		return NULL;
	while (end < body + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
		end++;
	if (end != body + len) {
		cJSON_Delete(msg);
		return NULL;
	}
	return msg;
}

/* notifications/cancelled {requestId}: stops that call's job, on whichever worker runs it (a
 * call answered at once has nothing left to stop; an unknown id is ignored, as the spec says). */
static void cancel_request(struct mcp_ctx *cx, cJSON *params, shmb_session *s)
{
	char rid[MCP_JSON_FIELD];
	cJSON *v = cJSON_GetObjectItemCaseSensitive(params, "requestId");
	if (v && valid_id(v) && rpc_json_text(v, rid, sizeof rid) == 0)
		jobs_cancel(cx->sid, rid, s);
}

/* The client's response to a request a tool sent it (id "s2c:<sid>:<stream>", jobs.c): published
 * on the call's stream as MCP_EV_REPLY, which no reader sends; the job, on whichever worker runs
 * it, is subscribed to the session and takes it at its next turn. A response naming another
 * session gets 400; one no job waits for (late, after the timeout or a cancel; or a made-up
 * stream) is accepted and dropped, as a response to a request the server no longer has. */
static enum MHD_Result route_reply(struct mcp_ctx *cx, cJSON *msg, const char *idtext,
				   shmb_session *s)
{
	const char *p = idtext + strlen(MCP_ASK_ID_PREFIX);
	size_t sl = strlen(cx->sid);
	char *end = NULL;
	unsigned long long stream = 0;
	if (strncmp(p, cx->sid, sl) != 0 || p[sl] != ':')
		return http_reply_error(cx->conn, MHD_HTTP_BAD_REQUEST, NULL, -32600,
					"Invalid Request: the response's id names another session");
	stream = strtoull(p + sl + 1, &end, 10);
	if (end && !*end && p[sl + 1] && stream < MCP_STREAM_STANDALONE &&
	    jobs_asking(cx->sid, (uint32_t)stream)) {
		char *text = cJSON_PrintUnformatted(msg);
		int64_t rc =
			text ? shmb_publish(s, (uint32_t)stream, MCP_EV_REPLY, text, strlen(text))
			     : SHMB_ENOMEM;
		cJSON_free(text);
		if (rc == SHMB_ETOOBIG)
			return http_reply_error(cx->conn, MHD_HTTP_CONTENT_TOO_LARGE, NULL, -32600,
						"the response is too large for one event");
		if (rc < 0)
			return http_reply_shmb(cx->conn, NULL, rc);
	}
	return http_reply(cx->conn, MHD_HTTP_ACCEPTED, NULL, NULL, NULL);
}

enum MHD_Result rpc_post(struct mcp_ctx *cx, const char *body, size_t len)
{
	cJSON *msg = parse_body(body, len);
	if (!msg)
		return http_reply_error(cx->conn, MHD_HTTP_BAD_REQUEST, NULL, -32700,
					"Parse error");
	enum MHD_Result r;
	cJSON *jv = cJSON_GetObjectItemCaseSensitive(msg, "jsonrpc");
	cJSON *idv = cJSON_GetObjectItemCaseSensitive(msg, "id");
	cJSON *mv = cJSON_GetObjectItemCaseSensitive(msg, "method");
	cJSON *params = cJSON_GetObjectItemCaseSensitive(msg, "params");
	char id[MCP_JSON_FIELD] = "null";
	if (idv && valid_id(idv) && rpc_json_text(idv, id, sizeof id) < 0)
		strcpy(id, "null");
	if (!cJSON_IsObject(msg)) {
		r = http_reply_error(cx->conn, MHD_HTTP_BAD_REQUEST, NULL, -32600,
				     cJSON_IsArray(msg)
					     ? "Invalid Request: batches are not supported"
					     : "Invalid Request");
		goto out;
	}
	int is_response = !mv && idv &&
			  (cJSON_GetObjectItemCaseSensitive(msg, "result") ||
			   cJSON_GetObjectItemCaseSensitive(msg, "error"));
	if (!cJSON_IsString(jv) || strcmp(jv->valuestring, "2.0") != 0 ||
	    (!is_response && !cJSON_IsString(mv)) || (idv && !valid_id(idv)) ||
	    (params && !cJSON_IsObject(params)) || (idv && !strcmp(id, "null")) ||
	    (!idv && !cJSON_IsString(mv))) {
		r = http_reply_error(cx->conn, MHD_HTTP_BAD_REQUEST, idv ? id : NULL, -32600,
				     "Invalid Request");
		goto out;
	}
	int stateless = cx->proto == MCP_PROTO_2026_07_28;
	if (!stateless && idv && !is_response && !strcmp(mv->valuestring, "initialize")) {
		r = do_initialize(cx, id, params);
		goto out;
	}
	if (stateless) {
		const char *hm =
			MHD_lookup_connection_value(cx->conn, MHD_HEADER_KIND, "Mcp-Method");
		if (hm && cJSON_IsString(mv) && strcmp(hm, mv->valuestring) != 0) {
			r = http_reply_error(cx->conn, MHD_HTTP_BAD_REQUEST, idv ? id : NULL,
					     -32001,
					     "Header mismatch: Mcp-Method differs from the body");
			goto out;
		}
		if (!idv || is_response) {
			r = http_reply(cx->conn, MHD_HTTP_ACCEPTED, NULL, NULL, NULL);
			goto out;
		}
		r = dispatch(cx, id, mv->valuestring, params, NULL);
		goto out;
	}
	shmb_session *s;
	r = rpc_open_session(cx, idv ? id : NULL, &s);
	if (!s)
		goto out;
	if (!idv && !strcmp(mv->valuestring, "notifications/cancelled"))
		cancel_request(cx, params, s);
	if (is_response && cJSON_IsString(idv) &&
	    !strncmp(idv->valuestring, MCP_ASK_ID_PREFIX, strlen(MCP_ASK_ID_PREFIX)))
		r = route_reply(cx, msg, idv->valuestring, s);
	else if (!idv || is_response) /* a notification or a response: nothing to answer */
		r = http_reply(cx->conn, MHD_HTTP_ACCEPTED, NULL, NULL, NULL);
	else
		r = dispatch(cx, id, mv->valuestring, params, s);
	shmb_session_close(s);
out:
	cJSON_Delete(msg);
	return r;
}
