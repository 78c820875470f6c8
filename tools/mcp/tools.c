/* tools.c - the tools: their list, argument checks, and how each call is answered.
 *
 * Immediate tools (echo, notify, test_simple_text, test_error_handling) answer in JSON at once;
 * notify publishes a logging notification to the session's standalone GET stream, which any
 * worker may hold. Tools that take time (countdown, test_tool_with_progress,
 * test_tool_with_logging, test_reconnection) become durable jobs (jobs.c) writing to a fresh
 * POST stream: the reply is that stream as SSE when the client accepts it, else a JSON
 * response that waits for the job's result event. Under 2026-07-28 a job runs in a private
 * broker session that is never shown to the client and is deleted after the result. Tools that
 * ask the client something (test_sampling, test_elicitation*, list_roots) are jobs too: the
 * request goes out on the call's stream and the client's response, on whichever worker it
 * arrives, is routed back to the job through the broker (rpc.c, jobs.c). A job over
 * the session's or the client's quota of running jobs gets 429 (jobs.c counts, quota.c
 * answers). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcp.h"

struct tool_def {
	const char *name, *description, *schema;
};

static const struct tool_def tool_defs[] = {
	{ "echo", "Returns the text it is given.",
	  "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}},"
	  "\"required\":[\"text\"]}" },
	{ "countdown",
	  "Counts n steps, delay_ms apart, with a progress notification per step when the "
	  "request has a progress token; survives a client disconnect and a worker crash.",
	  "{\"type\":\"object\",\"properties\":{\"n\":{\"type\":\"integer\",\"minimum\":0,"
	  "\"maximum\":10000},\"delay_ms\":{\"type\":\"integer\",\"minimum\":0,"
	  "\"maximum\":60000,\"default\":100}},\"required\":[\"n\"]}" },
	{ "notify",
	  "Publishes a logging notification with the text to the session's standalone GET "
	  "stream, whichever worker holds it.",
	  "{\"type\":\"object\",\"properties\":{\"text\":{\"type\":\"string\"}},"
	  "\"required\":[\"text\"]}" },
	{ "log_levels",
	  "Sends one notifications/message at each level, debug to emergency, 20 ms apart, on "
	  "its own stream; those below the session's level (logging/setLevel) are not sent.",
	  "{\"type\":\"object\",\"properties\":{}}" },
	{ "session_info",
	  "Returns, as JSON text, the session's MCP state as the serving worker reads it from "
	  "shmbroker (negotiated protocol version, client capabilities and info, log level) "
	  "and that worker's pid.",
	  "{\"type\":\"object\",\"properties\":{}}" },
	{ "test_simple_text", "Conformance fixture: returns a simple text.",
	  "{\"type\":\"object\",\"properties\":{}}" },
	{ "test_error_handling", "Conformance fixture: always returns a tool error.",
	  "{\"type\":\"object\",\"properties\":{}}" },
	{ "test_tool_with_progress",
	  "Conformance fixture: progress 0, 50, 100 of 100, 50 ms apart.",
	  "{\"type\":\"object\",\"properties\":{}}" },
	{ "test_tool_with_logging",
	  "Conformance fixture: three info log notifications, 50 ms apart.",
	  "{\"type\":\"object\",\"properties\":{}}" },
	{ "test_sampling",
	  "Asks the client for an LLM completion of the prompt (sampling/createMessage) and "
	  "returns it; the client's answer may reach any worker.",
	  "{\"type\":\"object\",\"properties\":{\"prompt\":{\"type\":\"string\"},"
	  "\"timeout_ms\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":600000}},"
	  "\"required\":[\"prompt\"]}" },
	{ "test_elicitation",
	  "Asks the user for a username and an email (elicitation/create) and returns the "
	  "answer.",
	  "{\"type\":\"object\",\"properties\":{\"message\":{\"type\":\"string\"},"
	  "\"timeout_ms\":{\"type\":\"integer\",\"minimum\":1,\"maximum\":600000}},"
	  "\"required\":[\"message\"]}" },
	{ "test_elicitation_sep1034_defaults",
	  "Conformance fixture: elicitation/create with a default for every primitive type.",
	  "{\"type\":\"object\",\"properties\":{}}" },
	{ "test_elicitation_sep1330_enums",
	  "Conformance fixture: elicitation/create with the five enum schema variants.",
	  "{\"type\":\"object\",\"properties\":{}}" },
	{ "list_roots", "Asks the client for its roots (roots/list) and returns them.",
	  "{\"type\":\"object\",\"properties\":{\"timeout_ms\":{\"type\":\"integer\","
	  "\"minimum\":1,\"maximum\":600000}}}" },
	{ "test_image_content", "Conformance fixture: returns an image (a 1x1 PNG).",
	  "{\"type\":\"object\",\"properties\":{}}" },
	{ "test_audio_content", "Conformance fixture: returns audio (a short WAV).",
	  "{\"type\":\"object\",\"properties\":{}}" },
	{ "test_embedded_resource", "Conformance fixture: returns an embedded text resource.",
	  "{\"type\":\"object\",\"properties\":{}}" },
	{ "test_multiple_content_types",
	  "Conformance fixture: returns text, an image and an embedded resource.",
	  "{\"type\":\"object\",\"properties\":{}}" },
	{ "json_schema_2020_12_tool", "Tool with JSON Schema 2020-12 features",
	  "{\"$schema\":\"https://json-schema.org/draft/2020-12/schema\",\"type\":\"object\","
	  "\"$defs\":{\"address\":{\"type\":\"object\",\"properties\":{\"street\":"
	  "{\"type\":\"string\"},\"city\":{\"type\":\"string\"}}}},\"properties\":{"
	  "\"name\":{\"type\":\"string\"},\"address\":{\"$ref\":\"#/$defs/address\"}},"
	  "\"additionalProperties\":false}" },
	{ "update_resource",
	  "Says resource uri changed: sends notifications/resources/updated to the session's "
	  "GET stream when the session subscribed to it (resources/subscribe, on any worker).",
	  "{\"type\":\"object\",\"properties\":{\"uri\":{\"type\":\"string\"}},"
	  "\"required\":[\"uri\"]}" },
	{ "test_reconnection",
	  "Conformance fixture (SEP-1699): closes its SSE stream after the priming event and "
	  "publishes the result later; reconnect with Last-Event-ID to get it.",
	  "{\"type\":\"object\",\"properties\":{}}" },
};
#define N_TOOLS (sizeof tool_defs / sizeof tool_defs[0])

cJSON *tools_list(void)
{
	cJSON *a = cJSON_CreateArray();
	for (size_t i = 0; i < N_TOOLS; i++) {
		cJSON *t = cJSON_CreateObject();
		cJSON_AddStringToObject(t, "name", tool_defs[i].name);
		cJSON_AddStringToObject(t, "description", tool_defs[i].description);
		cJSON_AddItemToObject(t, "inputSchema", cJSON_Parse(tool_defs[i].schema));
		cJSON_AddItemToArray(a, t);
	}
	return a;
}

static enum MHD_Result reply_text(struct mcp_ctx *cx, const char *id, const char *text,
				  int is_error)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "jsonrpc", "2.0");
	cJSON_AddItemToObject(o, "id", cJSON_CreateRaw(id));
	cJSON *r = cJSON_AddObjectToObject(o, "result");
	cJSON *c = cJSON_AddArrayToObject(r, "content");
	cJSON *t = cJSON_CreateObject();
	cJSON_AddStringToObject(t, "type", "text");
	cJSON_AddStringToObject(t, "text", text);
	cJSON_AddItemToArray(c, t);
	if (is_error)
		cJSON_AddTrueToObject(r, "isError");
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	enum MHD_Result ret = http_reply(cx->conn, MHD_HTTP_OK, "application/json", s, NULL);
	free(s);
	return ret;
}

static enum MHD_Result bad_params(struct mcp_ctx *cx, const char *id, const char *why)
{
	char msg[160];
	snprintf(msg, sizeof msg, "Invalid params: %s", why);
	return http_reply_error(cx->conn, MHD_HTTP_OK, id, -32602, msg);
}

/* An integer argument in [lo, hi]; def when absent. Returns -1 when present and bad. */
static int int_arg(cJSON *args, const char *key, long lo, long hi, long def, uint32_t *out)
{
	cJSON *v = cJSON_GetObjectItemCaseSensitive(args, key);
	if (!v) {
		*out = (uint32_t)def;
		return 0;
	}
	if (!rpc_exact_integer(v) || v->valuedouble < lo || v->valuedouble > hi)
		return -1;
	*out = (uint32_t)v->valuedouble;
	return 0;
}

static enum MHD_Result do_notify(struct mcp_ctx *cx, shmb_session *s, const char *id,
				 const char *text)
{
	if (!s)
		return reply_text(cx, id, "notify: 2026-07-28 has no standalone stream", 1);
	if (!mcp_session_allows(s, MCP_LEVEL_INFO))
		return reply_text(cx, id, "not sent: below the session's log level", 0);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "jsonrpc", "2.0");
	cJSON_AddStringToObject(o, "method", "notifications/message");
	cJSON *p = cJSON_AddObjectToObject(o, "params");
	cJSON_AddStringToObject(p, "level", "info");
	cJSON_AddStringToObject(p, "logger", MCP_SERVER_NAME);
	cJSON_AddStringToObject(p, "data", text);
	char *msg = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	int64_t rc = msg ? shmb_publish(s, MCP_STREAM_STANDALONE, MCP_EV_MESSAGE, msg, strlen(msg))
			 : SHMB_ENOMEM;
	free(msg);
	if (rc == SHMB_ETOOBIG)
		return bad_params(cx, id, "text too long for one event");
	if (rc < 0)
		return http_reply_shmb(cx->conn, id, rc);
	return reply_text(cx, id, "notified", 0);
}

/* Starts a job and answers with its stream. */
static enum MHD_Result start_job(struct mcp_ctx *cx, const char *id, struct job_spec *spec)
{
	if (!mcp_w.client)
		return http_reply_error(cx->conn, MHD_HTTP_SERVICE_UNAVAILABLE, id, -32603,
					"broker unavailable");
	char sid[SHMB_SID_LEN + 1];
	int rc;
	spec->ephemeral = cx->proto == MCP_PROTO_2026_07_28;
	if (spec->ephemeral) {
		rc = ctl_request(cx, 1, sid); /* off the loop (ctl.c) */
		if (rc == MCP_CTL_PENDING)
			return MHD_YES;
		if (rc == MCP_CTL_BUSY)
			rc = SHMB_EBROKER;
		if (rc < 0)
			return http_reply_error(cx->conn, MHD_HTTP_SERVICE_UNAVAILABLE, id, -32603,
						shmb_strerror(rc));
	} else {
		snprintf(sid, sizeof sid, "%s", cx->sid);
	}
	shmb_session *sj = NULL, *sr = NULL;
	rc = shmb_session_open(mcp_w.client, sid, cx->tenant, cx->principal, &sj);
	if (rc == 0)
		rc = shmb_session_open(mcp_w.client, sid, cx->tenant, cx->principal, &sr);
	int64_t prime = rc < 0 ? rc : stream_publish_prime(sj, MCP_STREAM_CONTROL);
	if (prime >= MCP_STREAM_STANDALONE)
		prime = SHMB_EFULL; /* 2^32 events in one session: no stream number left */
	const char *what = NULL;
	unsigned limit = 0;
	spec->owner = quota_owner(cx);
	int slot = -1;
	if (prime >= 0) {
		int q = slot = jobs_start(spec, sj, sid, cx->tenant, cx->principal, (uint32_t)prime,
					  (uint64_t)prime, &what, &limit);
		if (q < 0)
			prime = SHMB_EFULL; /* what is set when a quota said no */
	}
	if (prime < 0) {
		shmb_session_close(sj);
		shmb_session_close(sr);
		if (spec->ephemeral)
			ctl_delete_async(sid, cx->tenant, cx->principal);
		return what ? quota_reply(cx->conn, id, what, limit)
			    : http_reply_shmb(cx->conn, id, prime);
	}
	int sse = cx->accept_sse;
	int readers = streams_count();
	enum MHD_Result r =
		stream_reply(cx, sr, (uint32_t)prime, (uint64_t)prime, sse, !spec->ephemeral, 1,
			     sse && spec->tool == JOB_RECONNECT && !spec->ephemeral, id);
	if (streams_count() == readers) {
		/* No stream for the answer (a stream quota's 429, a full worker's 503): the client
		 * was told the call failed, so the job must not run on. */
		jobs_drop(slot);
		if (spec->ephemeral)
			ctl_delete_async(sid, cx->tenant, cx->principal);
	}
	return r;
}

static const char sep1034_schema[] =
	"{\"type\":\"object\",\"properties\":{"
	"\"name\":{\"type\":\"string\",\"default\":\"John Doe\"},"
	"\"age\":{\"type\":\"integer\",\"default\":30},"
	"\"score\":{\"type\":\"number\",\"default\":95.5},"
	"\"status\":{\"type\":\"string\",\"enum\":[\"active\",\"inactive\",\"pending\"],"
	"\"default\":\"active\"},"
	"\"verified\":{\"type\":\"boolean\",\"default\":true}}}";
static const char sep1330_schema[] =
	"{\"type\":\"object\",\"properties\":{"
	"\"untitledSingle\":{\"type\":\"string\",\"enum\":[\"option1\",\"option2\",\"option3\"]},"
	"\"titledSingle\":{\"type\":\"string\",\"oneOf\":[{\"const\":\"value1\",\"title\":"
	"\"First Option\"},{\"const\":\"value2\",\"title\":\"Second Option\"},{\"const\":"
	"\"value3\",\"title\":\"Third Option\"}]},"
	"\"legacyEnum\":{\"type\":\"string\",\"enum\":[\"opt1\",\"opt2\",\"opt3\"],"
	"\"enumNames\":[\"Option One\",\"Option Two\",\"Option Three\"]},"
	"\"untitledMulti\":{\"type\":\"array\",\"items\":{\"type\":\"string\",\"enum\":"
	"[\"option1\",\"option2\",\"option3\"]}},"
	"\"titledMulti\":{\"type\":\"array\",\"items\":{\"anyOf\":[{\"const\":\"value1\","
	"\"title\":\"First Choice\"},{\"const\":\"value2\",\"title\":\"Second Choice\"},"
	"{\"const\":\"value3\",\"title\":\"Third Choice\"}]}}}}";
static const char user_schema[] =
	"{\"type\":\"object\",\"properties\":{"
	"\"username\":{\"type\":\"string\",\"description\":\"User's response\"},"
	"\"email\":{\"type\":\"string\",\"description\":\"User's email address\"}},"
	"\"required\":[\"username\",\"email\"]}";

/* A tool that sends the client a request (sampling/createMessage, elicitation/create,
 * roots/list) and returns its answer: a JOB_ASK job (jobs.c). Only when the client declared the
 * capability (else a tool error); the request goes out on the call's SSE stream, or on the
 * standalone GET stream when the call is answered in JSON. */
static enum MHD_Result ask_client(struct mcp_ctx *cx, shmb_session *s, const char *id,
				  struct job_spec *spec, const char *tool, cJSON *args)
{
	const char *cap = !strncmp(tool, "test_sampling", 13)      ? "sampling"
			  : !strncmp(tool, "test_elicitation", 16) ? "elicitation"
								   : "roots";
	spec->method = cap[0] == 's'   ? "sampling/createMessage"
		       : cap[0] == 'e' ? "elicitation/create"
				       : "roots/list";
	if (int_arg(args, "timeout_ms", 1, MCP_ASK_MAX_TIMEOUT_MS, MCP_ASK_TIMEOUT_MS,
		    &spec->timeout_ms) < 0)
		return bad_params(cx, id, "timeout_ms must be an integer in 1..600000");
	cJSON *p = cJSON_CreateObject();
	if (cap[0] == 's') {
		cJSON *prompt = cJSON_GetObjectItemCaseSensitive(args, "prompt");
		if (!cJSON_IsString(prompt)) {
			cJSON_Delete(p);
			return bad_params(cx, id, "prompt must be a string");
		}
		cJSON *m = cJSON_CreateObject();
		cJSON_AddStringToObject(m, "role", "user");
		cJSON *c = cJSON_AddObjectToObject(m, "content");
		cJSON_AddStringToObject(c, "type", "text");
		cJSON_AddStringToObject(c, "text", prompt->valuestring);
		cJSON_AddItemToArray(cJSON_AddArrayToObject(p, "messages"), m);
		cJSON_AddNumberToObject(p, "maxTokens", 100);
	} else if (cap[0] == 'e') {
		cJSON *msg = cJSON_GetObjectItemCaseSensitive(args, "message");
		const char *schema = !strcmp(tool, "test_elicitation")         ? user_schema
				     : !strcmp(tool + 16, "_sep1034_defaults") ? sep1034_schema
									       : sep1330_schema;
		if (schema == user_schema && !cJSON_IsString(msg)) {
			cJSON_Delete(p);
			return bad_params(cx, id, "message must be a string");
		}
		cJSON_AddStringToObject(p, "message",
					schema == user_schema
						? msg->valuestring
						: "Please review and update the form fields");
		cJSON_AddItemToObject(p, "requestedSchema", cJSON_Parse(schema));
	}
	char *text = cap[0] == 'r' ? NULL : cJSON_PrintUnformatted(p);
	cJSON_Delete(p);
	if (cap[0] != 'r' && (!text || strlen(text) >= MCP_ASK_PARAMS)) {
		cJSON_free(text);
		return bad_params(cx, id, "the request to the client would be too long");
	}
	enum MHD_Result r;
	char why[96];
	snprintf(why, sizeof why, "the client did not declare the %s capability", cap);
	if (!s)
		r = reply_text(cx, id, "2026-07-28 has no server-to-client requests", 1);
	else if (!mcp_session_client_has(s, cap))
		r = reply_text(cx, id, why, 1);
	else {
		spec->tool = JOB_ASK;
		spec->n = 1;
		spec->params = text;
		spec->asker = tool;
		spec->on_standalone = !cx->accept_sse;
		r = start_job(cx, id, spec);
	}
	cJSON_free(text);
	return r;
}

enum MHD_Result tools_call(struct mcp_ctx *cx, shmb_session *s, const char *id, cJSON *params)
{
	cJSON *name = cJSON_GetObjectItemCaseSensitive(params, "name");
	cJSON *args = cJSON_GetObjectItemCaseSensitive(params, "arguments");
	if (!cJSON_IsString(name))
		return bad_params(cx, id, "name must be a string");
	if (args && !cJSON_IsObject(args) && !cJSON_IsNull(args))
		return bad_params(cx, id, "arguments must be an object");
	cJSON *meta = cJSON_GetObjectItemCaseSensitive(params, "_meta");
	cJSON *tokv = cJSON_IsObject(meta) ? cJSON_GetObjectItemCaseSensitive(meta, "progressToken")
					   : NULL;
	char token[MCP_JSON_FIELD];
	if (tokv) {
		/* A number beyond 2^53 would come back as another number (see rpc_exact_integer) */
		int exact = cJSON_IsNumber(tokv) && tokv->valuedouble >= -9007199254740991.0 &&
			    tokv->valuedouble <= 9007199254740991.0;
		if ((!cJSON_IsString(tokv) && !exact) ||
		    rpc_json_text(tokv, token, sizeof token) < 0)
			return bad_params(
				cx, id,
				"progressToken must be a short string or a number below 2^53");
	}
	const char *n = name->valuestring;
	cJSON *text = cJSON_GetObjectItemCaseSensitive(args, "text");
	struct job_spec spec = { .token = tokv ? token : NULL, .id = id };

	if (!strcmp(n, "echo") || !strcmp(n, "notify")) {
		if (!cJSON_IsString(text))
			return bad_params(cx, id, "text must be a string");
		if (n[0] == 'e')
			return reply_text(cx, id, text->valuestring, 0);
		return do_notify(cx, s, id, text->valuestring);
	}
	if (!strcmp(n, "session_info")) {
		if (!s)
			return reply_text(cx, id, "session_info: 2026-07-28 has no session", 1);
		cJSON *d = mcp_session_describe(s);
		cJSON_AddStringToObject(d, "requestProtocolVersion", proto_name(cx->proto));
		char *t = d ? cJSON_PrintUnformatted(d) : NULL;
		cJSON_Delete(d);
		enum MHD_Result r =
			t ? reply_text(cx, id, t, 0)
			  : http_reply_error(cx->conn, MHD_HTTP_OK, id, -32603, "out of memory");
		cJSON_free(t);
		return r;
	}
	if (!strcmp(n, "log_levels")) {
		spec.tool = JOB_LEVELS;
		spec.n = MCP_LEVELS;
		spec.delay_ms = 20;
		return start_job(cx, id, &spec);
	}
	if (content_is_tool(n)) {
		int is_error;
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "jsonrpc", "2.0");
		cJSON_AddItemToObject(o, "id", cJSON_CreateRaw(id));
		cJSON *r = cJSON_AddObjectToObject(o, "result");
		cJSON_AddItemToObject(r, "content", content_tool(n, args, s, &is_error));
		if (is_error)
			cJSON_AddTrueToObject(r, "isError");
		char *t = cJSON_PrintUnformatted(o);
		cJSON_Delete(o);
		enum MHD_Result ret =
			t ? http_reply(cx->conn, MHD_HTTP_OK, "application/json", t, NULL)
			  : http_reply_error(cx->conn, MHD_HTTP_OK, id, -32603, "out of memory");
		cJSON_free(t);
		return ret;
	}
	if (!strcmp(n, "test_simple_text"))
		return reply_text(cx, id, "This is a simple text response for testing.", 0);
	if (!strcmp(n, "test_error_handling"))
		return reply_text(cx, id, "This tool intentionally returns an error for testing",
				  1);
	if (!strcmp(n, "countdown")) {
		if (!cJSON_GetObjectItemCaseSensitive(args, "n") ||
		    int_arg(args, "n", 0, MCP_MAX_COUNTDOWN, 0, &spec.n) < 0)
			return bad_params(cx, id, "n must be an integer in 0..10000");
		if (int_arg(args, "delay_ms", 0, MCP_MAX_DELAY_MS, 100, &spec.delay_ms) < 0)
			return bad_params(cx, id, "delay_ms must be an integer in 0..60000");
		spec.tool = JOB_COUNTDOWN;
		return start_job(cx, id, &spec);
	}
	if (!strcmp(n, "test_tool_with_progress") || !strcmp(n, "test_tool_with_logging")) {
		spec.tool = n[15] == 'p' ? JOB_PROGRESS : JOB_LOGGING;
		spec.n = 3;
		spec.delay_ms = 50;
		return start_job(cx, id, &spec);
	}
	if (!strcmp(n, "test_sampling") || !strcmp(n, "test_elicitation") ||
	    !strcmp(n, "test_elicitation_sep1034_defaults") ||
	    !strcmp(n, "test_elicitation_sep1330_enums") || !strcmp(n, "list_roots"))
		return ask_client(cx, s, id, &spec, n, args);
	if (!strcmp(n, "test_reconnection")) {
		spec.tool = JOB_RECONNECT;
		spec.final_ms = 500;
		return start_job(cx, id, &spec);
	}
	return bad_params(cx, id, "unknown tool");
}
