/* content.c - resources, prompts and completion (the MCP server features besides tools), and
 * the tools that return other content than text (image, audio, embedded resources).
 *
 * The resources and prompts are fixed (the conformance suite's fixtures, docs/mcp-server.md):
 * answering them needs no state, so any worker answers any request. Resource subscriptions are
 * state of the session and are kept where every worker sees them: one session attribute per
 * subscribed URI ("mcp.sub.<64-bit hash of the URI in hex>" = the URI, so a hash collision is
 * seen and refused), set by resources/subscribe and deleted by resources/unsubscribe on
 * whichever worker gets them. The update_resource tool, on whichever worker, publishes
 * notifications/resources/updated to the session's standalone GET stream (wherever it is held)
 * when, and only when, the session's attribute says it subscribed: a subscribe on one worker,
 * the update on a second and the GET stream on a third work together through the segment. The
 * broker holds no list of sessions, so an update reaches the calling session's subscription
 * only, not every session's (docs/mcp-server.md says so). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mcp.h"

/* A 1x1 red PNG and an 8-sample silent 8 kHz WAV, base64. */
#define PNG_1X1                                                                                    \
	"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5E" \
	"rkJggg=="
#define WAV_SILENCE "UklGRiwAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQgAAACAgICAgICAgA=="
#define MAX_URI 1024
#define TEMPLATE_PREFIX "test://template/"
#define TEMPLATE_SUFFIX "/data"

struct resource {
	const char *uri, *name, *description, *mime;
};
static const struct resource resources[] = {
	{ "test://static-text", "static-text", "A static text resource", "text/plain" },
	{ "test://static-binary", "static-binary", "A static binary resource (a 1x1 PNG)",
	  "image/png" },
	{ "test://watched-resource", "watched-resource",
	  "A resource to subscribe to; the update_resource tool says it changed", "text/plain" },
};
#define N_RESOURCES (sizeof resources / sizeof resources[0])

static cJSON *text_part(const char *type, const char *text)
{
	cJSON *t = cJSON_CreateObject();
	cJSON_AddStringToObject(t, "type", type);
	cJSON_AddStringToObject(t, "text", text);
	return t;
}

static cJSON *data_part(const char *type, const char *data, const char *mime)
{
	cJSON *t = cJSON_CreateObject();
	cJSON_AddStringToObject(t, "type", type);
	cJSON_AddStringToObject(t, "data", data);
	cJSON_AddStringToObject(t, "mimeType", mime);
	return t;
}

static cJSON *resource_part(const char *uri, const char *mime, const char *text)
{
	cJSON *t = cJSON_CreateObject();
	cJSON_AddStringToObject(t, "type", "resource");
	cJSON *r = cJSON_AddObjectToObject(t, "resource");
	cJSON_AddStringToObject(r, "uri", uri);
	cJSON_AddStringToObject(r, "mimeType", mime);
	cJSON_AddStringToObject(r, "text", text);
	return t;
}

/* The id of test://template/{id}/data in id (1..64 bytes, no '/'); -1 when uri is not one. */
static int template_id(const char *uri, char *id, size_t len)
{
	size_t pl = strlen(TEMPLATE_PREFIX), sl = strlen(TEMPLATE_SUFFIX), n = strlen(uri);
	if (n <= pl + sl || strncmp(uri, TEMPLATE_PREFIX, pl) != 0 ||
	    strcmp(uri + n - sl, TEMPLATE_SUFFIX) != 0)
		return -1;
	size_t k = n - pl - sl;
	if (k >= len || k > 64 || memchr(uri + pl, '/', k))
		return -1;
	memcpy(id, uri + pl, k);
	id[k] = '\0';
	return 0;
}

static const struct resource *find_resource(const char *uri)
{
	for (size_t i = 0; i < N_RESOURCES; i++)
		if (!strcmp(resources[i].uri, uri))
			return &resources[i];
	return NULL;
}

static enum MHD_Result reply(struct mcp_ctx *cx, const char *id, cJSON *result)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "jsonrpc", "2.0");
	cJSON_AddItemToObject(o, "id", cJSON_CreateRaw(id));
	cJSON_AddItemToObject(o, "result", result);
	char *s = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	enum MHD_Result r =
		s ? http_reply(cx->conn, MHD_HTTP_OK, "application/json", s, NULL)
		  : http_reply_error(cx->conn, MHD_HTTP_OK, id, -32603, "out of memory");
	cJSON_free(s);
	return r;
}

static enum MHD_Result not_found(struct mcp_ctx *cx, const char *id, const char *uri)
{
	char msg[MAX_URI + 64];
	snprintf(msg, sizeof msg, "Resource not found: %s", uri);
	return http_reply_error(cx->conn, MHD_HTTP_OK, id, -32002, msg);
}

/* params.uri: a string of at most MAX_URI bytes, else NULL. */
static const char *uri_param(cJSON *params)
{
	cJSON *u = cJSON_GetObjectItemCaseSensitive(params, "uri");
	return cJSON_IsString(u) && strlen(u->valuestring) <= MAX_URI ? u->valuestring : NULL;
}

static void sub_key(const char *uri, char *key, size_t len)
{
	snprintf(key, len, "mcp.sub.%016" PRIx64, quota_hash(uri));
}

/* 1 when session s subscribed to uri (its attribute holds exactly uri). */
static int subscribed(shmb_session *s, const char *uri)
{
	char key[32], v[MAX_URI + 1];
	sub_key(uri, key, sizeof key);
	int n = shmb_attr_get(s, key, v, MAX_URI, NULL);
	return n >= 0 && (size_t)n == strlen(uri) && !memcmp(v, uri, (size_t)n);
}

static enum MHD_Result resources_read(struct mcp_ctx *cx, const char *id, const char *uri)
{
	char tid[72];
	const struct resource *r = find_resource(uri);
	cJSON *c = cJSON_CreateObject();
	cJSON_AddStringToObject(c, "uri", uri);
	if (r) {
		cJSON_AddStringToObject(c, "mimeType", r->mime);
		if (!strcmp(r->name, "static-binary"))
			cJSON_AddStringToObject(c, "blob", PNG_1X1);
		else
			cJSON_AddStringToObject(c, "text",
						!strcmp(r->name, "static-text")
							? "This is the content of the static text "
							  "resource."
							: "The watched resource.");
	} else if (template_id(uri, tid, sizeof tid) == 0) {
		cJSON *d = cJSON_CreateObject();
		char data[128];
		snprintf(data, sizeof data, "Data for ID: %s", tid);
		cJSON_AddStringToObject(d, "id", tid);
		cJSON_AddTrueToObject(d, "templateTest");
		cJSON_AddStringToObject(d, "data", data);
		char *text = cJSON_PrintUnformatted(d);
		cJSON_Delete(d);
		cJSON_AddStringToObject(c, "mimeType", "application/json");
		cJSON_AddStringToObject(c, "text", text ? text : "{}");
		cJSON_free(text);
	} else {
		cJSON_Delete(c);
		return not_found(cx, id, uri);
	}
	cJSON *res = cJSON_CreateObject();
	cJSON_AddItemToArray(cJSON_AddArrayToObject(res, "contents"), c);
	return reply(cx, id, res);
}

static enum MHD_Result resources_subscribe(struct mcp_ctx *cx, const char *id, const char *uri,
					   shmb_session *s, int on)
{
	char tid[72], key[32];
	if (!find_resource(uri) && template_id(uri, tid, sizeof tid) < 0)
		return not_found(cx, id, uri);
	sub_key(uri, key, sizeof key);
	int rc;
	if (on) {
		char v[MAX_URI + 1];
		int n = shmb_attr_get(s, key, v, MAX_URI, NULL);
		if (n >= 0 && ((size_t)n != strlen(uri) || memcmp(v, uri, (size_t)n)))
			return http_reply_error(cx->conn, MHD_HTTP_OK, id, -32603,
						"cannot subscribe: another URI of this session "
						"has the same hash");
		rc = shmb_attr_set(s, key, uri, strlen(uri));
	} else {
		rc = subscribed(s, uri) ? shmb_attr_delete(s, key) : 0;
		if (rc == SHMB_ENOENT)
			rc = 0; /* unsubscribed meanwhile, by another worker */
	}
	if (rc < 0) {
		char msg[128];
		snprintf(msg, sizeof msg, "cannot keep the subscription: %s", shmb_strerror(rc));
		return http_reply_error(cx->conn, MHD_HTTP_OK, id, -32603, msg);
	}
	return reply(cx, id, cJSON_CreateObject());
}

static const char *const completions[] = { "paris", "park", "party", "test", "testing",
					   "1",     "2",    "3",     "123" };

static enum MHD_Result complete(struct mcp_ctx *cx, const char *id, cJSON *params)
{
	cJSON *ref = cJSON_GetObjectItemCaseSensitive(params, "ref");
	cJSON *type = cJSON_GetObjectItemCaseSensitive(ref, "type");
	cJSON *arg = cJSON_GetObjectItemCaseSensitive(params, "argument");
	cJSON *an = cJSON_GetObjectItemCaseSensitive(arg, "name");
	cJSON *av = cJSON_GetObjectItemCaseSensitive(arg, "value");
	if (!cJSON_IsString(type) || !cJSON_IsString(an) || !cJSON_IsString(av))
		return http_reply_error(cx->conn, MHD_HTTP_OK, id, -32602,
					"Invalid params: ref.type, argument.name and "
					"argument.value are required");
	/* Prompt arguments complete from words, the template's {id} from numbers. */
	int numbers = !strcmp(type->valuestring, "ref/resource");
	cJSON *values = cJSON_CreateArray();
	size_t n = strlen(av->valuestring);
	for (size_t i = 0; i < sizeof completions / sizeof completions[0]; i++) {
		int num = completions[i][0] >= '0' && completions[i][0] <= '9';
		if (num == numbers && !strncmp(completions[i], av->valuestring, n))
			cJSON_AddItemToArray(values, cJSON_CreateString(completions[i]));
	}
	cJSON *res = cJSON_CreateObject();
	cJSON *c = cJSON_AddObjectToObject(res, "completion");
	cJSON_AddNumberToObject(c, "total", cJSON_GetArraySize(values));
	cJSON_AddItemToObject(c, "values", values);
	cJSON_AddFalseToObject(c, "hasMore");
	return reply(cx, id, res);
}

struct prompt_def {
	const char *name, *description;
	const char *args[2]; /* required arguments */
};
static const struct prompt_def prompts[] = {
	{ "test_simple_prompt", "A simple prompt without arguments", { NULL } },
	{ "test_prompt_with_arguments",
	  "A prompt with two required arguments",
	  { "arg1", "arg2" } },
	{ "test_prompt_with_embedded_resource",
	  "A prompt embedding the resource it is given",
	  { "resourceUri" } },
	{ "test_prompt_with_image", "A prompt with an image", { NULL } },
};
#define N_PROMPTS (sizeof prompts / sizeof prompts[0])

static cJSON *message(cJSON *content)
{
	cJSON *m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "role", "user");
	cJSON_AddItemToObject(m, "content", content);
	return m;
}

static enum MHD_Result prompts_get(struct mcp_ctx *cx, const char *id, cJSON *params)
{
	cJSON *name = cJSON_GetObjectItemCaseSensitive(params, "name");
	cJSON *args = cJSON_GetObjectItemCaseSensitive(params, "arguments");
	const struct prompt_def *p = NULL;
	for (size_t i = 0; cJSON_IsString(name) && i < N_PROMPTS; i++)
		if (!strcmp(prompts[i].name, name->valuestring))
			p = &prompts[i];
	if (!p)
		return http_reply_error(cx->conn, MHD_HTTP_OK, id, -32602,
					"Invalid params: unknown prompt");
	const char *v[2] = { NULL, NULL };
	for (int i = 0; i < 2 && p->args[i]; i++) {
		cJSON *a = cJSON_GetObjectItemCaseSensitive(args, p->args[i]);
		if (!cJSON_IsString(a) || strlen(a->valuestring) > MAX_URI) {
			char msg[96];
			snprintf(msg, sizeof msg,
				 "Invalid params: argument %s is required (a string of at most "
				 "1024 bytes)",
				 p->args[i]);
			return http_reply_error(cx->conn, MHD_HTTP_OK, id, -32602, msg);
		}
		v[i] = a->valuestring;
	}
	cJSON *res = cJSON_CreateObject();
	cJSON_AddStringToObject(res, "description", p->description);
	cJSON *ms = cJSON_AddArrayToObject(res, "messages");
	if (p == &prompts[0]) {
		cJSON_AddItemToArray(ms, message(text_part("text", "This is a simple prompt for "
								   "testing.")));
	} else if (p == &prompts[1]) {
		char *t = malloc(2 * MAX_URI + 64);
		if (t)
			snprintf(t, 2 * MAX_URI + 64, "Prompt with arguments: arg1='%s', arg2='%s'",
				 v[0], v[1]);
		cJSON_AddItemToArray(ms, message(text_part("text", t ? t : "")));
		free(t);
	} else if (p == &prompts[2]) {
		cJSON_AddItemToArray(ms, message(resource_part(v[0], "text/plain",
							       "Embedded resource content for "
							       "testing.")));
		cJSON_AddItemToArray(ms, message(text_part("text", "Please process the embedded "
								   "resource above.")));
	} else {
		cJSON_AddItemToArray(ms, message(data_part("image", PNG_1X1, "image/png")));
		cJSON_AddItemToArray(ms, message(text_part("text", "Please analyze the image "
								   "above.")));
	}
	return reply(cx, id, res);
}

static cJSON *lists(const char *method)
{
	cJSON *res = cJSON_CreateObject();
	if (!strcmp(method, "resources/list")) {
		cJSON *a = cJSON_AddArrayToObject(res, "resources");
		for (size_t i = 0; i < N_RESOURCES; i++) {
			cJSON *r = cJSON_CreateObject();
			cJSON_AddStringToObject(r, "uri", resources[i].uri);
			cJSON_AddStringToObject(r, "name", resources[i].name);
			cJSON_AddStringToObject(r, "description", resources[i].description);
			cJSON_AddStringToObject(r, "mimeType", resources[i].mime);
			cJSON_AddItemToArray(a, r);
		}
	} else if (!strcmp(method, "resources/templates/list")) {
		cJSON *t = cJSON_CreateObject();
		cJSON_AddStringToObject(t, "uriTemplate", TEMPLATE_PREFIX "{id}" TEMPLATE_SUFFIX);
		cJSON_AddStringToObject(t, "name", "template");
		cJSON_AddStringToObject(t, "description", "JSON data for any id");
		cJSON_AddStringToObject(t, "mimeType", "application/json");
		cJSON_AddItemToArray(cJSON_AddArrayToObject(res, "resourceTemplates"), t);
	} else {
		cJSON *a = cJSON_AddArrayToObject(res, "prompts");
		for (size_t i = 0; i < N_PROMPTS; i++) {
			cJSON *p = cJSON_CreateObject();
			cJSON_AddStringToObject(p, "name", prompts[i].name);
			cJSON_AddStringToObject(p, "description", prompts[i].description);
			cJSON *args = cJSON_AddArrayToObject(p, "arguments");
			for (int k = 0; k < 2 && prompts[i].args[k]; k++) {
				cJSON *g = cJSON_CreateObject();
				cJSON_AddStringToObject(g, "name", prompts[i].args[k]);
				cJSON_AddTrueToObject(g, "required");
				cJSON_AddItemToArray(args, g);
			}
			cJSON_AddItemToArray(a, p);
		}
	}
	return res;
}

int content_method(const char *method)
{
	static const char *const m[] = { "resources/list",        "resources/templates/list",
					 "resources/read",        "resources/subscribe",
					 "resources/unsubscribe", "prompts/list",
					 "prompts/get",           "completion/complete" };
	for (size_t i = 0; i < sizeof m / sizeof m[0]; i++)
		if (!strcmp(method, m[i]))
			return 1;
	return 0;
}

enum MHD_Result content_call(struct mcp_ctx *cx, const char *id, const char *method, cJSON *params,
			     shmb_session *s)
{
	if (!strcmp(method, "prompts/get"))
		return prompts_get(cx, id, params);
	if (!strcmp(method, "completion/complete"))
		return complete(cx, id, params);
	if (!strncmp(method, "resources/", 10) && strstr(method, "list") == NULL) {
		const char *uri = uri_param(params);
		if (!uri)
			return http_reply_error(cx->conn, MHD_HTTP_OK, id, -32602,
						"Invalid params: uri must be a string of at most "
						"1024 bytes");
		if (!strcmp(method, "resources/read"))
			return resources_read(cx, id, uri);
		if (!s)
			return http_reply_error(cx->conn, MHD_HTTP_OK, id, -32601,
						"2026-07-28 has no subscriptions");
		return resources_subscribe(cx, id, uri, s, method[10] == 's');
	}
	return reply(cx, id, lists(method));
}

cJSON *content_tool(const char *name, cJSON *args, shmb_session *s, int *is_error)
{
	cJSON *c = cJSON_CreateArray();
	*is_error = 0;
	if (!strcmp(name, "test_image_content")) {
		cJSON_AddItemToArray(c, data_part("image", PNG_1X1, "image/png"));
	} else if (!strcmp(name, "test_audio_content")) {
		cJSON_AddItemToArray(c, data_part("audio", WAV_SILENCE, "audio/wav"));
	} else if (!strcmp(name, "test_embedded_resource")) {
		cJSON_AddItemToArray(c, resource_part("test://embedded-resource", "text/plain",
						      "This is an embedded resource content."));
	} else if (!strcmp(name, "test_multiple_content_types")) {
		cJSON_AddItemToArray(c, text_part("text", "Multiple content types test:"));
		cJSON_AddItemToArray(c, data_part("image", PNG_1X1, "image/png"));
		cJSON_AddItemToArray(c, resource_part("test://mixed-content-resource",
						      "application/json",
						      "{\"test\":\"data\",\"value\":123}"));
	} else if (!strcmp(name, "json_schema_2020_12_tool")) {
		cJSON_AddItemToArray(c, text_part("text", "json_schema_2020_12_tool called"));
	} else { /* update_resource {uri} */
		cJSON *u = cJSON_GetObjectItemCaseSensitive(args, "uri");
		const char *uri = cJSON_IsString(u) && strlen(u->valuestring) <= MAX_URI
					  ? u->valuestring
					  : NULL;
		const char *text = "not notified: the session is not subscribed to it";
		if (!uri || !s) {
			text = !uri ? "uri must be a string of at most 1024 bytes"
				    : "2026-07-28 has no subscriptions";
			*is_error = 1;
		} else if (subscribed(s, uri)) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddStringToObject(o, "jsonrpc", "2.0");
			cJSON_AddStringToObject(o, "method", "notifications/resources/updated");
			cJSON_AddStringToObject(cJSON_AddObjectToObject(o, "params"), "uri", uri);
			char *m = cJSON_PrintUnformatted(o);
			cJSON_Delete(o);
			int64_t rc = m ? shmb_publish(s, MCP_STREAM_STANDALONE, MCP_EV_MESSAGE, m,
						      strlen(m))
				       : SHMB_ENOMEM;
			cJSON_free(m);
			text = rc < 0 ? "not notified: the publish failed" : "notified";
			*is_error = rc < 0;
		}
		cJSON_AddItemToArray(c, text_part("text", text));
	}
	return c;
}

int content_is_tool(const char *name)
{
	static const char *const t[] = { "test_image_content",       "test_audio_content",
					 "test_embedded_resource",   "test_multiple_content_types",
					 "json_schema_2020_12_tool", "update_resource" };
	for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
		if (!strcmp(name, t[i]))
			return 1;
	return 0;
}
