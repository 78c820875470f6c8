/* shmctl_ctl.c - the commands that change things, which go through the broker's control socket
 * (docs/protocol.md): `shmctl delete SID`, `reload`, `restore FILE`. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "shmb.h"
#include "sid.h"
#include "shmctl.h"

int shmctl_cmd_delete(const struct shmctl_opts *o)
{
	uint8_t sid[SHMB_SID_BYTES];
	if (sid_parse(o->args[0], sid) < 0)
		return shmctl_usage_error(
			"delete: invalid session id '%s' (expected %d hex characters)", o->args[0],
			2 * SHMB_SID_BYTES);
	char canon[2 * SHMB_SID_BYTES + 1];
	sid_format(sid, canon);

	char path[128] = "?";
	ctl_socket_path(o->name, path, sizeof path);
	char refusal[512];
	int fd = ctl_connect(o->name, refusal, sizeof refusal);
	if (fd == SHMB_EACCES) {
		shmctl_fail("delete", "refusing to talk to broker '%s': %s", o->name, refusal);
		return SHMCTL_UNAVAIL;
	}
	if (fd < 0) {
		shmctl_fail("delete", "broker '%s' is not running (nothing listens on %s)", o->name,
			    path);
		return SHMCTL_UNAVAIL;
	}

	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "op", "delete");
	cJSON_AddStringToObject(req, "sid", canon);
	cJSON_AddTrueToObject(req, "force");
	cJSON *reply = NULL;
	int rc = ctl_call(fd, req, &reply, NULL, 0, NULL);
	cJSON_Delete(req);
	close(fd);

	const cJSON *msg = reply ? cJSON_GetObjectItemCaseSensitive(reply, "message") : NULL;
	const char *why = cJSON_IsString(msg) ? msg->valuestring : shmb_strerror(rc);
	int status = SHMCTL_OK;
	if (rc == 0) {
		if (o->json) {
			cJSON *doc = cJSON_CreateObject();
			shmctl_json_u64(doc, "schema_version", SHMCTL_SCHEMA_VERSION);
			cJSON_AddStringToObject(doc, "deleted", canon);
			status = shmctl_json_print(doc, "delete");
		} else {
			printf("deleted %s\n", canon);
		}
	} else if (rc == SHMB_ENOENT) {
		shmctl_fail("delete", "no session %s", canon);
		status = SHMCTL_NOTFOUND;
	} else if (rc == SHMB_EBROKER && !reply) {
		shmctl_fail("delete", "broker '%s' did not answer (%s)", o->name, path);
		status = SHMCTL_UNAVAIL;
	} else {
		shmctl_fail("delete", "the broker refused: %s (%s)", why, shmb_err_name(rc));
		status = SHMCTL_UNAVAIL;
	}
	cJSON_Delete(reply);
	return status;
}

int shmctl_broker_call(const struct shmctl_opts *o, const char *verb, const cJSON *req,
		       cJSON **reply)
{
	char path[128] = "?";
	ctl_socket_path(o->name, path, sizeof path);
	char refusal[512];
	*reply = NULL;
	int fd = ctl_connect(o->name, refusal, sizeof refusal);
	if (fd == SHMB_EACCES) {
		shmctl_fail(verb, "refusing to talk to broker '%s': %s", o->name, refusal);
		return -SHMCTL_UNAVAIL;
	}
	if (fd < 0) {
		shmctl_fail(verb, "broker '%s' is not running (nothing listens on %s)", o->name,
			    path);
		return -SHMCTL_UNAVAIL;
	}
	int rc = ctl_call(fd, req, reply, NULL, 0, NULL);
	close(fd);
	if (rc == SHMB_EBROKER && !*reply) {
		shmctl_fail(verb, "broker '%s' did not answer (%s)", o->name, path);
		return -SHMCTL_UNAVAIL;
	}
	return rc;
}

static const char *reply_message(const cJSON *reply, int rc)
{
	const cJSON *msg = reply ? cJSON_GetObjectItemCaseSensitive(reply, "message") : NULL;
	return cJSON_IsString(msg) ? msg->valuestring : shmb_strerror(rc);
}

int shmctl_cmd_reload(const struct shmctl_opts *o)
{
	cJSON *req = cJSON_CreateObject();
	cJSON_AddStringToObject(req, "op", "reload");
	cJSON *reply;
	int rc = shmctl_broker_call(o, "reload", req, &reply);
	cJSON_Delete(req);
	if (rc == -SHMCTL_UNAVAIL)
		return SHMCTL_UNAVAIL;
	if (rc != 0) {
		shmctl_fail("reload", "the broker refused: %s (%s)", reply_message(reply, rc),
			    shmb_err_name(rc));
		cJSON_Delete(reply);
		return SHMCTL_UNAVAIL;
	}
	const cJSON *ok = cJSON_GetObjectItemCaseSensitive(reply, "applied");
	const cJSON *skipped = cJSON_GetObjectItemCaseSensitive(reply, "not_applied");
	if (o->json) {
		cJSON *doc = cJSON_CreateObject();
		shmctl_json_u64(doc, "schema_version", SHMCTL_SCHEMA_VERSION);
		cJSON_AddItemToObject(doc, "applied",
				      cJSON_IsArray(ok) ? cJSON_Duplicate(ok, 1)
							: cJSON_CreateArray());
		cJSON_AddItemToObject(doc, "not_applied",
				      cJSON_IsArray(skipped) ? cJSON_Duplicate(skipped, 1)
							     : cJSON_CreateArray());
		cJSON_Delete(reply);
		return shmctl_json_print(doc, "reload");
	}
	printf("reloaded the configuration of '%s'\n", o->name);
	const cJSON *e;
	int n = 0;
	cJSON_ArrayForEach(e, ok)
	{
		if (cJSON_IsString(e))
			printf("%s %s", n++ ? "," : "applied:", e->valuestring);
	}
	printf("%s", n ? "\n" : "applied: nothing changed\n");
	cJSON_ArrayForEach(e, skipped)
	{
		const cJSON *f = cJSON_GetObjectItemCaseSensitive(e, "field");
		const cJSON *r = cJSON_GetObjectItemCaseSensitive(e, "reason");
		if (cJSON_IsString(f))
			printf("not applied: %s: %s\n", f->valuestring,
			       cJSON_IsString(r) ? r->valuestring : "");
	}
	cJSON_Delete(reply);
	return SHMCTL_OK;
}
