/* shmctl_ctl.c - the commands that change things or ask the broker, through its control socket
 * (docs/protocol.md): `shmctl delete SID`, `reload`, `restore FILE`, `ping` (is a broker serving
 * this name: exit 0, else 3) and `stop` (a clean stop, as on SIGTERM, then wait until the broker
 * process has exited).
 *
 * stop learns the broker's pid from the socket (SO_PEERCRED: the process that listens) and opens
 * a pidfd on it before asking, so the wait follows that process and no other, even if the pid is
 * reused afterwards; without pidfd_open (Linux < 5.3) it polls kill(pid, 0) with a deadline. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "ctl.h"
#include "shmb.h"
#include "sid.h"
#include "shmctl.h"

/* How long `shmctl stop` waits for the broker to exit after it accepted (a clean stop takes
 * milliseconds: closing sockets, marking the header). */
#define SHMCTL_STOP_WAIT_MS 30000

/* Connects to o->name's broker. Returns the fd, or prints why (as verb) and returns -1. */
static int connect_broker(const struct shmctl_opts *o, const char *verb)
{
	char path[128] = "?";
	ctl_socket_path(o->name, path, sizeof path);
	char refusal[512];
	int fd = ctl_connect(o->name, refusal, sizeof refusal);
	if (fd == SHMB_EACCES) {
		shmctl_fail(verb, "refusing to talk to broker '%s': %s", o->name, refusal);
		return -1;
	}
	if (fd < 0) {
		shmctl_fail(verb, "broker '%s' is not running (nothing listens on %s)", o->name,
			    path);
		return -1;
	}
	return fd;
}

/* One request {"op": op} on a fresh connection; *reply as ctl_call's. */
static int call_op(int fd, const char *op, cJSON **reply)
{
	cJSON *req = cJSON_CreateObject();
	if (!req || !cJSON_AddStringToObject(req, "op", op)) {
		cJSON_Delete(req);
		return SHMB_ENOMEM;
	}
	int rc = ctl_call(fd, req, reply, NULL, 0, NULL);
	cJSON_Delete(req);
	return rc;
}

static double reply_num(const cJSON *reply, const char *key)
{
	const cJSON *j = reply ? cJSON_GetObjectItemCaseSensitive(reply, key) : NULL;
	return cJSON_IsNumber(j) ? j->valuedouble : 0;
}

int shmctl_cmd_ping(const struct shmctl_opts *o)
{
	int fd = connect_broker(o, "ping");
	if (fd < 0)
		return SHMCTL_UNAVAIL;
	int64_t t0 = shmb_mono_ms();
	cJSON *reply = NULL;
	int rc = call_op(fd, "ping", &reply);
	int64_t ms = shmb_mono_ms() - t0;
	close(fd);
	int status = SHMCTL_OK;
	if (rc != 0) {
		shmctl_fail("ping", "broker '%s' did not answer: %s (%s)", o->name,
			    shmb_strerror(rc), shmb_err_name(rc));
		status = SHMCTL_UNAVAIL;
	} else if (o->json) {
		cJSON *doc = cJSON_CreateObject();
		shmctl_json_u64(doc, "schema_version", SHMCTL_SCHEMA_VERSION);
		cJSON_AddStringToObject(doc, "name", o->name);
		cJSON_AddTrueToObject(doc, "alive");
		shmctl_json_i64(doc, "pid", (int64_t)reply_num(reply, "pid"));
		shmctl_json_u64(doc, "generation", (uint64_t)reply_num(reply, "generation"));
		shmctl_json_i64(doc, "rtt_ms", ms);
		status = shmctl_json_print(doc, "ping");
	} else {
		printf("broker '%s' is alive (pid %.0f, generation %.0f, answered in %lld ms)\n",
		       o->name, reply_num(reply, "pid"), reply_num(reply, "generation"),
		       (long long)ms);
	}
	cJSON_Delete(reply);
	return status;
}

/* Waits until process pid (pidfd, or -1) has exited, up to timeout_ms. Returns 1 once it has. */
static int wait_exit(pid_t pid, int pidfd, int timeout_ms)
{
	int64_t deadline = shmb_mono_ms() + timeout_ms;
	for (;;) {
		int64_t left = deadline - shmb_mono_ms();
		if (pidfd >= 0) {
			struct pollfd p = { .fd = pidfd, .events = POLLIN };
			int n = poll(&p, 1, left > 0 ? (int)left : 0);
			if (n > 0)
				return 1;
			if (n < 0 && errno == EINTR)
				continue;
			if (n == 0)
				return 0;
			pidfd = -1; /* poll failed: fall back to kill(pid, 0) */
			continue;
		}
		/* No event to wait on: re-check every 10 ms until the deadline. */
		if (kill(pid, 0) < 0 && errno == ESRCH)
			return 1;
		if (left <= 0)
			return 0;
		struct timespec ts = { .tv_nsec = 10 * 1000000 };
		nanosleep(&ts, NULL);
	}
}

int shmctl_cmd_stop(const struct shmctl_opts *o)
{
	int fd = connect_broker(o, "stop");
	if (fd < 0)
		return SHMCTL_UNAVAIL;
	struct ucred cred;
	socklen_t clen = sizeof cred;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0 || cred.pid <= 0) {
		shmctl_fail("stop", "cannot tell the broker's pid: %s", strerror(errno));
		close(fd);
		return SHMCTL_UNAVAIL;
	}
	int pidfd = (int)syscall(SYS_pidfd_open, cred.pid, 0);
	cJSON *reply = NULL;
	int rc = call_op(fd, "stop", &reply);
	close(fd);
	int status = SHMCTL_OK;
	if (rc != 0) {
		const cJSON *msg =
			reply ? cJSON_GetObjectItemCaseSensitive(reply, "message") : NULL;
		shmctl_fail("stop", "broker '%s' refused: %s (%s)", o->name,
			    cJSON_IsString(msg) ? msg->valuestring : shmb_strerror(rc),
			    shmb_err_name(rc));
		status = SHMCTL_UNAVAIL;
	} else if (!wait_exit(cred.pid, pidfd, SHMCTL_STOP_WAIT_MS)) {
		shmctl_fail("stop", "broker '%s' (pid %d) accepted but has not exited after %d s",
			    o->name, (int)cred.pid, SHMCTL_STOP_WAIT_MS / 1000);
		status = SHMCTL_UNAVAIL;
	} else if (o->json) {
		cJSON *doc = cJSON_CreateObject();
		shmctl_json_u64(doc, "schema_version", SHMCTL_SCHEMA_VERSION);
		cJSON_AddStringToObject(doc, "name", o->name);
		shmctl_json_i64(doc, "stopped_pid", cred.pid);
		status = shmctl_json_print(doc, "stop");
	} else {
		printf("broker '%s' (pid %d) stopped\n", o->name, (int)cred.pid);
	}
	if (pidfd >= 0)
		close(pidfd);
	cJSON_Delete(reply);
	return status;
}

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
	int fd = connect_broker(o, "delete");
	if (fd < 0)
		return SHMCTL_UNAVAIL;

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
	*reply = NULL;
	int fd = connect_broker(o, verb);
	if (fd < 0)
		return -SHMCTL_UNAVAIL;
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
