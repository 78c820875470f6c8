/* test_protocol.c - the control socket spoken raw (docs/protocol.md): malformed messages each get
 * {"ok": false, "code": <SHMB_E*>, "error": <its name>, "message": ...}, change nothing, keep the
 * connection open, and the broker goes on serving normal requests. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctl.h"
#include "harness.h"
#include "layout.h"

TestSuite(protocol, .init = h_setup, .fini = h_teardown, .timeout = 60);

static int conn(const struct h_broker *b)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	cr_assert_lt(strlen(b->sock_path), sizeof sa.sun_path, "socket path too long");
	memcpy(sa.sun_path, b->sock_path, strlen(b->sock_path) + 1);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "connect %s: %s",
		     b->sock_path, strerror(errno));
	return fd;
}

/* Sends len bytes as one datagram and returns the parsed reply (closing any fds that came with
 * it; *nfds gets their number). Fails the test on no reply within 5 s or a reply that is not a
 * JSON object. */
static cJSON *call_n(int fd, const void *msg, size_t len, int *nfds)
{
	ssize_t n = send(fd, msg, len, MSG_NOSIGNAL);
	cr_assert_eq(n, (ssize_t)len, "send %zu bytes: %s", len, strerror(errno));
	struct pollfd p = { .fd = fd, .events = POLLIN };
	cr_assert_eq(poll(&p, 1, 5000), 1, "no reply within 5 s to: %.80s", (const char *)msg);
	static char buf[SHMB_CTL_MAX_MSG + 1];
	union {
		char b[CMSG_SPACE(sizeof(int) * 256)];
		struct cmsghdr align;
	} cbuf;
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof buf - 1 };
	struct msghdr mh = { .msg_iov = &iov,
			     .msg_iovlen = 1,
			     .msg_control = cbuf.b,
			     .msg_controllen = sizeof cbuf.b };
	n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	cr_assert_gt(n, 0, "connection closed instead of a reply to: %.80s", (const char *)msg);
	buf[n] = '\0';
	int got = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			int *fds = (int *)CMSG_DATA(c);
			for (int i = 0; i < k; i++)
				close(fds[i]);
			got += k;
		}
	if (nfds)
		*nfds = got;
	cJSON *j = cJSON_Parse(buf);
	cr_assert(cJSON_IsObject(j), "reply is not a JSON object: %s", buf);
	return j;
}

static cJSON *call(int fd, const char *msg)
{
	return call_n(fd, msg, strlen(msg), NULL);
}

/* Asserts the reply is an error with code want (its name in "error", a message string) and,
 * when field is set, that the message names it. Frees r. */
static void expect_error(cJSON *r, int want, const char *field, const char *what)
{
	char *txt = cJSON_PrintUnformatted(r);
	const cJSON *ok = cJSON_GetObjectItemCaseSensitive(r, "ok");
	cr_expect(cJSON_IsFalse(ok), "%s: want \"ok\": false, got %s", what, txt);
	const cJSON *code = cJSON_GetObjectItemCaseSensitive(r, "code");
	cr_expect(cJSON_IsNumber(code) && code->valueint == want, "%s: want code %d (%s), got %s",
		  what, want, shmb_err_name(want), txt);
	const cJSON *err = cJSON_GetObjectItemCaseSensitive(r, "error");
	cr_expect(cJSON_IsString(err) && !strcmp(err->valuestring, shmb_err_name(want)),
		  "%s: want \"error\": \"%s\", got %s", what, shmb_err_name(want), txt);
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(r, "message");
	cr_expect(cJSON_IsString(m) && m->valuestring[0], "%s: no message in %s", what, txt);
	if (field && cJSON_IsString(m))
		cr_expect(h_contains(m->valuestring, field), "%s: message does not name '%s': %s",
			  what, field, txt);
	free(txt);
	cJSON_Delete(r);
}

/* A normal create on fd works and returns a well-formed sid. */
static void expect_create_ok(int fd, char sid[SHMB_SID_LEN + 1])
{
	cJSON *r = call(fd, "{\"op\":\"create\",\"tenant\":\"acme\",\"principal\":null}");
	char *txt = cJSON_PrintUnformatted(r);
	cr_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok")), "create failed: %s",
		  txt);
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(r, "sid");
	cr_assert(cJSON_IsString(s) && h_sid_wellformed(s->valuestring), "create reply: %s", txt);
	memcpy(sid, s->valuestring, SHMB_SID_LEN + 1);
	free(txt);
	cJSON_Delete(r);
}

static double live(const struct h_broker *b)
{
	cJSON *st = h_shmctl_json(b->name, "status", NULL);
	double v = h_json_num(st, "sessions.live");
	cJSON_Delete(st);
	return v;
}

H_TEST(protocol, malformed_messages_get_errors)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	int fd = conn(b);
	char sid[SHMB_SID_LEN + 1];
	uint64_t errors0 = h_counter(b->name, SHMB_CTR_CTL_ERRORS);

	expect_error(call(fd, "{\"op\":\"create\",\"tenant\":\"ac"), SHMB_EINVAL, NULL,
		     "truncated");
	expect_error(call(fd, "{\"op\":"), SHMB_EINVAL, NULL, "truncated after a key");
	expect_error(call(fd, "not json at all"), SHMB_EINVAL, NULL, "not JSON");
	expect_error(call(fd, "[\"op\",\"create\"]"), SHMB_EINVAL, NULL, "array");
	expect_error(call(fd, "42"), SHMB_EINVAL, NULL, "number");
	expect_error(call(fd, "\"create\""), SHMB_EINVAL, NULL, "string");
	expect_error(call(fd, "null"), SHMB_EINVAL, NULL, "null");
	expect_error(call(fd, "{}"), SHMB_EINVAL, "op", "missing op");
	expect_error(call(fd, "{\"tenant\":\"acme\"}"), SHMB_EINVAL, "op", "missing op 2");
	expect_error(call(fd, "{\"op\":\"frobnicate\"}"), SHMB_EINVAL, "op", "unknown op");
	expect_error(call(fd, "{\"op\":42}"), SHMB_EINVAL, "op", "op not a string");
	expect_error(call(fd, "{\"op\":\"\"}"), SHMB_EINVAL, "op", "empty op");
	expect_error(call(fd, "{\"op\":\"create\"}"), SHMB_EINVAL, "tenant",
		     "create without tenant");
	expect_error(call(fd, "{\"op\":\"create\",\"tenant\":42}"), SHMB_EINVAL, "tenant",
		     "tenant a number");
	expect_error(call(fd, "{\"op\":\"create\",\"tenant\":[\"a\"]}"), SHMB_EINVAL, "tenant",
		     "tenant an array");
	expect_error(call(fd, "{\"op\":\"create\",\"tenant\":\"\"}"), SHMB_EINVAL, "tenant",
		     "empty tenant");
	expect_error(call(fd, "{\"op\":\"create\",\"tenant\":\"acme\",\"principal\":7}"),
		     SHMB_EINVAL, "principal", "principal a number");
	expect_error(call(fd, "{\"op\":\"create\",\"tenant\":\"acme\",\"principal\":\"\"}"),
		     SHMB_EINVAL, "principal", "empty principal");
	expect_error(call(fd,
			  "{\"op\":\"create\",\"tenant\":\"acme\",\"inactivity_ttl_ms\":\"x\"}"),
		     SHMB_EINVAL, "inactivity_ttl_ms", "ttl a string");
	expect_error(call(fd, "{\"op\":\"create\",\"tenant\":\"acme\",\"absolute_ttl_ms\":-5}"),
		     SHMB_EINVAL, "absolute_ttl_ms", "negative ttl");
	expect_error(call(fd, "{\"op\":\"create\",\"tenant\":\"acme\",\"absolute_ttl_ms\":1.5}"),
		     SHMB_EINVAL, "absolute_ttl_ms", "fractional ttl");
	char longt[200] = "{\"op\":\"create\",\"tenant\":\"";
	memset(longt + strlen(longt), 't', 65);
	strcat(longt, "\"}");
	expect_error(call(fd, longt), SHMB_EINVAL, "tenant", "tenant too long");

	expect_error(call(fd, "{\"op\":\"delete\"}"), SHMB_EINVAL, "sid", "delete without sid");
	expect_error(call(fd, "{\"op\":\"delete\",\"sid\":\"xyz\",\"tenant\":\"acme\"}"),
		     SHMB_EINVAL, "sid", "bad sid");
	expect_error(call(fd, "{\"op\":\"delete\",\"sid\":12,\"tenant\":\"acme\"}"), SHMB_EINVAL,
		     "sid", "sid a number");
	expect_error(call(fd, "{\"op\":\"delete\",\"sid\":\"0123456789abcdef0123456789abcdeg\","
			      "\"tenant\":\"acme\"}"),
		     SHMB_EINVAL, "sid", "non-hex sid");
	expect_error(call(fd, "{\"op\":\"delete\",\"sid\":\"0123456789abcdef0123456789abcdef\","
			      "\"force\":\"yes\"}"),
		     SHMB_EINVAL, "force", "force not a boolean");
	expect_error(call(fd, "{\"op\":\"hello\",\"pid\":\"me\"}"), SHMB_EINVAL, NULL,
		     "hello with a bad pid");

	/* One datagram is one JSON document: bytes after it make it malformed. */
	static const char nul[] = "{\"op\":\"ping\"}\0{\"op\":\"ping\"}";
	expect_error(call_n(fd, nul, sizeof nul - 1, NULL), SHMB_EINVAL, NULL, "embedded NUL");
	expect_error(call(fd, "{\"op\":\"ping\"} trailing"), SHMB_EINVAL, NULL, "trailing garbage");

	cr_expect_eq(live(b), 0, "a malformed request created a session");

	/* The same connection still serves. */
	cJSON *r = call(fd, "{\"op\":\"ping\"}");
	cr_expect(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok")));
	cr_expect_eq(h_json_num(r, "pid"), b->pid);
	cJSON_Delete(r);
	expect_create_ok(fd, sid);
	cr_expect_eq(live(b), 1);
	close(fd);

	/* And so does the library. */
	shmb_client *c = h_attach(b->name);
	shmb_session *s = NULL;
	H_OK(shmb_session_open(c, sid, "acme", NULL, &s));
	shmb_session_close(s);
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	h_detach(c);
	cr_expect_geq(h_counter(b->name, SHMB_CTR_CTL_ERRORS), errors0 + 20,
		      "the ctl_errors counter did not count the bad requests");
}

H_TEST(protocol, huge_message)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	int fd = conn(b);
	/* 100 KiB: a valid-looking create whose tenant is enormous, beyond the 64 KiB limit. */
	size_t n = 100 * 1024;
	char *msg = malloc(n + 1);
	strcpy(msg, "{\"op\":\"create\",\"tenant\":\"");
	size_t off = strlen(msg);
	memset(msg + off, 'x', n - off - 2);
	memcpy(msg + n - 2, "\"}", 2);
	msg[n] = '\0';
	expect_error(call_n(fd, msg, n, NULL), SHMB_ETOOBIG, NULL, "100 KiB message");
	/* Exactly one byte over the limit. */
	expect_error(call_n(fd, msg, SHMB_CTL_MAX_MSG + 1, NULL), SHMB_ETOOBIG, NULL,
		     "64 KiB + 1 message");
	free(msg);
	char sid[SHMB_SID_LEN + 1];
	expect_create_ok(fd, sid);
	close(fd);
	cr_expect_eq(live(b), 1);
}

static void hello_json(char *buf, size_t len, long pid, int major, uint32_t fingerprint)
{
	snprintf(buf, len,
		 "{\"op\":\"hello\",\"pid\":%ld,\"layout_major\":%d,\"layout_minor\":%d,"
		 "\"fingerprint\":%u}",
		 pid, major, SHMB_LAYOUT_MINOR, fingerprint);
}

H_TEST(protocol, hello_then_errors_then_create)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	int fd = conn(b);
	char hello[256];
	hello_json(hello, sizeof hello, (long)getpid(), SHMB_LAYOUT_MAJOR,
		   shmb_layout_fingerprint());
	int nfds = 0;
	cJSON *r = call_n(fd, hello, strlen(hello), &nfds);
	char *txt = cJSON_PrintUnformatted(r);
	cr_assert(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok")), "hello: %s", txt);
	cr_expect_eq(nfds, 1 + (int)h_json_num(r, "eventfds"), "hello sent %d fds for %s", nfds,
		     txt);
	free(txt);
	cJSON_Delete(r);
	/* A second hello on the same connection is refused. */
	expect_error(call(fd, hello), SHMB_EINVAL, NULL, "second hello");
	expect_error(call(fd, "{\"op\":\"create\",\"tenant\":{}}"), SHMB_EINVAL, "tenant",
		     "tenant an object");
	char sid[SHMB_SID_LEN + 1];
	expect_create_ok(fd, sid);

	/* A hello with a foreign layout or a pid that is not the peer's is refused (each on its
	 * own connection: the broker may close after refusing a hello). */
	int fd2 = conn(b);
	hello_json(hello, sizeof hello, (long)getpid(), SHMB_LAYOUT_MAJOR + 1,
		   shmb_layout_fingerprint());
	expect_error(call(fd2, hello), SHMB_EVERSION, NULL, "foreign layout");
	close(fd2);
	fd2 = conn(b);
	hello_json(hello, sizeof hello, (long)getpid(), SHMB_LAYOUT_MAJOR,
		   shmb_layout_fingerprint() ^ 1u);
	expect_error(call(fd2, hello), SHMB_EVERSION, NULL, "foreign fingerprint");
	close(fd2);
	fd2 = conn(b);
	hello_json(hello, sizeof hello, (long)getppid(), SHMB_LAYOUT_MAJOR,
		   shmb_layout_fingerprint());
	r = call(fd2, hello);
	txt = cJSON_PrintUnformatted(r);
	const cJSON *code = cJSON_GetObjectItemCaseSensitive(r, "code");
	cr_expect(cJSON_IsFalse(cJSON_GetObjectItemCaseSensitive(r, "ok")) &&
			  cJSON_IsNumber(code) &&
			  (code->valueint == SHMB_EINVAL || code->valueint == SHMB_EACCES),
		  "hello claiming another process's pid: %s", txt);
	free(txt);
	cJSON_Delete(r);
	close(fd2);
	cJSON *w = h_shmctl_json(b->name, "workers", NULL);
	cr_expect(!h_json_has_number(w, "pid", (double)getppid()),
		  "a hello with a forged pid was admitted");
	cJSON_Delete(w);
	close(fd);
	cr_expect_eq(live(b), 1);
}

H_TEST(protocol, delete_binding_and_force)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	int fd = conn(b);
	char sid[SHMB_SID_LEN + 1], req[256];
	expect_create_ok(fd, sid);
	snprintf(req, sizeof req, "{\"op\":\"delete\",\"sid\":\"%s\",\"tenant\":\"globex\"}", sid);
	expect_error(call(fd, req), SHMB_EPERM, NULL, "delete with the wrong tenant");
	snprintf(req, sizeof req,
		 "{\"op\":\"delete\",\"sid\":\"%s\",\"tenant\":\"acme\",\"principal\":\"alice\"}",
		 sid);
	expect_error(call(fd, req), SHMB_EPERM, NULL, "delete with the wrong principal");
	cr_expect_eq(live(b), 1);
	snprintf(req, sizeof req, "{\"op\":\"delete\",\"sid\":\"%s\",\"force\":true}", sid);
	cJSON *r = call(fd, req);
	cr_expect(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok")));
	cJSON_Delete(r);
	expect_error(call(fd, req), SHMB_ENOENT, NULL, "delete twice");
	close(fd);
	cr_expect_eq(live(b), 0);
}

H_TEST(protocol, peer_vanishing_mid_conversation)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	/* Connections that send half a conversation and vanish must not disturb the broker. */
	static const char req[] = "{\"op\":\"create\",\"tenant\":\"acme\"}";
	for (int i = 0; i < 50; i++) {
		int fd = conn(b);
		if (i % 2)
			send(fd, req, sizeof req - 1, MSG_NOSIGNAL);
		close(fd);
	}
	int fd = conn(b);
	char sid[SHMB_SID_LEN + 1];
	expect_create_ok(fd, sid);
	close(fd);
	/* Sessions created by vanished peers are fine (sessions do not belong to connections). */
	shmb_client *c = h_attach(b->name);
	shmb_session *s = NULL;
	H_OK(shmb_session_open(c, sid, "acme", NULL, &s));
	shmb_session_close(s);
	h_detach(c);
}
