/* session.c - an MCP session's own state, kept as shmbroker session attributes so that every
 * worker sees it: the protocol version negotiated by initialize, the client's capabilities and
 * info, and the log level of logging/setLevel.
 *
 * initialize (on whichever worker) stores them right after creating the session; every later
 * request of the session, on any worker, reads them from the segment with shmb_attr_get -- no
 * process keeps a copy, so a worker that never saw the session before (or one restarted after a
 * crash) serves it the same way. Reads and writes are the library's lock-free attribute calls
 * (docs/attributes.md): a value is never torn, and two setLevel calls racing on different
 * workers leave one of the two levels. What uses them:
 *
 * - the negotiated version (MCP_ATTR_PROTO): a request without an MCP-Protocol-Version header is
 *   served as that version (the spec's fallback is 2025-03-26 only when the server has no other
 *   way to know); a header naming another supported version still wins (rpc_open_session);
 * - the log level (MCP_ATTR_LEVEL): a notifications/message below it is not sent (notify, the
 *   logging job tools); absent, every level is sent;
 * - the client's capabilities: a tool that sends the client a request (sampling, elicitation,
 *   roots: jobs.c) does so only when the client declared that capability, else it answers a
 *   tool error (mcp_session_client_has);
 * - the client's capabilities and info: reported by the session_info tool. Both can be
 *   up to SHMB_ATTR_MAX each and so fill the session's attribute budget: a setLevel that finds
 *   no room deletes the info, then the capabilities, and stores the level (it is acted on, they
 *   are not); session_info then reports null for what was dropped.
 *
 * A session created by an older shmb-mcpd has none of them and is served as before. A broker
 * configured without attribute space (attr_bytes 0) makes the stores fail: initialize still
 * succeeds (logged once per worker), and logging/setLevel then fails with -32603. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mcp.h"

static const char *const level_names[MCP_LEVELS] = {
	"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency",
};

const char *mcp_level_name(int level)
{
	return level >= 0 && level < MCP_LEVELS ? level_names[level] : "?";
}

int mcp_level_parse(const char *name)
{
	for (int i = 0; name && i < MCP_LEVELS; i++)
		if (!strcmp(name, level_names[i]))
			return i;
	return -1;
}

/* A value of at most len - 1 bytes as a NUL-terminated string in buf; -1 when unset, too long,
 * or not readable (the error is in *rc when rc is given). */
static int attr_string(shmb_session *s, const char *key, char *buf, size_t len, int *rc)
{
	int n = shmb_attr_get(s, key, buf, len - 1, NULL);
	if (rc)
		*rc = n;
	if (n < 0)
		return -1;
	buf[n] = '\0';
	return n;
}

int mcp_session_level(shmb_session *s)
{
	char v[16];
	if (attr_string(s, MCP_ATTR_LEVEL, v, sizeof v, NULL) < 0)
		return -1;
	return mcp_level_parse(v);
}

int mcp_session_allows(shmb_session *s, int level)
{
	int min = mcp_session_level(s);
	return min < 0 || level >= min;
}

int mcp_session_set_level(shmb_session *s, int level)
{
	const char *v = mcp_level_name(level);
	int rc = shmb_attr_set(s, MCP_ATTR_LEVEL, v, strlen(v));
	/* The client's info and capabilities, each up to SHMB_ATTR_MAX, can fill the session's
	 * budget (4 KiB by default) so that no cell is left for the level. They are only
	 * reported, the level is acted on: drop them (info first) to make room. */
	static const char *const droppable[] = { MCP_ATTR_INFO, MCP_ATTR_CAPS };
	for (size_t i = 0; rc == SHMB_EQUOTA && i < sizeof droppable / sizeof droppable[0]; i++) {
		if (shmb_attr_delete(s, droppable[i]) != 0)
			continue;
		mcp_log("worker %d: session attributes full: client %s dropped to keep the log "
			"level",
			mcp_w.index, i == 0 ? "info" : "capabilities");
		rc = shmb_attr_set(s, MCP_ATTR_LEVEL, v, strlen(v));
	}
	return rc;
}

enum mcp_proto mcp_session_proto(shmb_session *s)
{
	char v[16];
	if (attr_string(s, MCP_ATTR_PROTO, v, sizeof v, NULL) < 0)
		return MCP_PROTO_BAD;
	for (int p = MCP_PROTO_2024_11_05; p <= MCP_PROTO_2025_11_25; p++)
		if (!strcmp(v, proto_name((enum mcp_proto)p)))
			return (enum mcp_proto)p;
	return MCP_PROTO_BAD;
}

/* Stores key = the JSON text of v (NULL: absent, nothing stored). */
static int store_json(shmb_session *s, const char *key, const cJSON *v)
{
	if (!v)
		return 0;
	char *text = cJSON_PrintUnformatted(v);
	if (!text)
		return SHMB_ENOMEM;
	size_t n = strlen(text);
	/* Longer than one attribute holds: not kept (session_info then says null). */
	int rc = n > SHMB_ATTR_MAX ? SHMB_ETOOBIG : shmb_attr_set(s, key, text, n);
	cJSON_free(text);
	return rc;
}

int mcp_session_store_init(const char *sid, const struct mcp_ctx *cx, enum mcp_proto proto,
			   const cJSON *params)
{
	static int told; /* one log line per worker for a broker without attribute space */
	shmb_session *s = NULL;
	int rc = shmb_session_open(mcp_w.client, sid, cx->tenant, cx->principal, &s);
	if (rc == 0) {
		const char *v = proto_name(proto);
		rc = shmb_attr_set(s, MCP_ATTR_PROTO, v, strlen(v));
	}
	int caps = 0, info = 0;
	if (rc == 0) {
		caps = store_json(s, MCP_ATTR_CAPS,
				  cJSON_GetObjectItemCaseSensitive(params, "capabilities"));
		info = store_json(s, MCP_ATTR_INFO,
				  cJSON_GetObjectItemCaseSensitive(params, "clientInfo"));
	}
	shmb_session_close(s);
	if (rc < 0 && !told) {
		told = 1;
		mcp_log("worker %d: cannot keep the session's MCP state as attributes: %s (sessions "
			"work, but without a negotiated version for requests without the header, "
			"and logging/setLevel fails)",
			mcp_w.index, shmb_strerror(rc));
	}
	if (caps < 0 || info < 0)
		mcp_log("worker %d: session %.8s...: client %s not kept: %s", mcp_w.index, sid,
			caps < 0 ? "capabilities" : "info", shmb_strerror(caps < 0 ? caps : info));
	return rc;
}

int mcp_session_client_has(shmb_session *s, const char *capability)
{
	char buf[SHMB_ATTR_MAX + 1];
	cJSON *caps =
		attr_string(s, MCP_ATTR_CAPS, buf, sizeof buf, NULL) < 0 ? NULL : cJSON_Parse(buf);
	int has = cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(caps, capability));
	cJSON_Delete(caps);
	return has;
}

/* key's value as JSON into o under name (null when unset or not JSON). */
static void add_json(cJSON *o, const char *name, shmb_session *s, const char *key)
{
	char buf[SHMB_ATTR_MAX + 1];
	cJSON *v = attr_string(s, key, buf, sizeof buf, NULL) < 0 ? NULL : cJSON_Parse(buf);
	cJSON_AddItemToObject(o, name, v ? v : cJSON_CreateNull());
}

cJSON *mcp_session_describe(shmb_session *s)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "pid", (double)getpid());
	cJSON_AddNumberToObject(o, "worker", mcp_w.index);
	enum mcp_proto p = mcp_session_proto(s);
	if (p == MCP_PROTO_BAD)
		cJSON_AddNullToObject(o, "protocolVersion");
	else
		cJSON_AddStringToObject(o, "protocolVersion", proto_name(p));
	add_json(o, "clientCapabilities", s, MCP_ATTR_CAPS);
	add_json(o, "clientInfo", s, MCP_ATTR_INFO);
	int level = mcp_session_level(s);
	if (level < 0)
		cJSON_AddNullToObject(o, "logLevel");
	else
		cJSON_AddStringToObject(o, "logLevel", mcp_level_name(level));
	return o;
}
