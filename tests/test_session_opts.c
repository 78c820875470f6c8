/* test_session_opts.c - per-session TTLs (shmb_session_create_opts): a session's own TTL expires
 * it and not its neighbour, a TTL above the broker's maximum is SHMB_EINVAL and creates nothing
 * (the broker's message names the limit), a negative one is refused by the client without asking
 * the broker, a maximum of 0 is no limit, a default above its maximum is a configuration error
 * naming both fields, and shmctl sessions / show print each session's TTLs.
 *
 * The expiry test waits for the clock (a 300 ms TTL); it never sleeps to wait for a process. */
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "layout.h"

TestSuite(session_opts, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define NO_SWEEP "--sweep-interval-ms", "60000"

static int open_rc(shmb_client *c, const char *sid, const char *tenant)
{
	shmb_session *s = NULL;
	int rc = shmb_session_open(c, sid, tenant, NULL, &s);
	if (rc == 0)
		shmb_session_close(s);
	return rc;
}

static void ttls_of(shmb_client *c, const char *sid, uint64_t *ittl, uint64_t *attl)
{
	shmb_session *s = NULL;
	H_OK(shmb_session_open(c, sid, "acme", NULL, &s));
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	*ittl = info.inactivity_ttl_ms;
	*attl = info.absolute_ttl_ms;
	shmb_session_close(s);
}

static int live_sessions(const char *name)
{
	cJSON *doc = h_shmctl_json(name, "sessions", NULL);
	int n = cJSON_GetArraySize(h_json_sessions(doc));
	cJSON_Delete(doc);
	return n;
}

H_TEST(session_opts, own_ttl_expires_that_session_and_not_its_neighbour)
{
	struct h_broker *b = h_broker_start(
		H_ARGS("--inactivity-ttl-ms", "60000", "--absolute-ttl-ms", "600000", NO_SWEEP));
	shmb_client *c = h_attach(b->name);
	char short_sid[SHMB_SID_LEN + 1], abs_sid[SHMB_SID_LEN + 1], dflt_sid[SHMB_SID_LEN + 1];
	int64_t t0 = h_now_ms();
	H_OK(shmb_session_create_opts(c, "acme", NULL,
				      &(shmb_session_opts){ .inactivity_ttl_ms = 300 }, short_sid));
	H_OK(shmb_session_create_opts(c, "acme", NULL,
				      &(shmb_session_opts){ .absolute_ttl_ms = 400 }, abs_sid));
	H_OK(shmb_session_create_opts(c, "acme", NULL, NULL, dflt_sid));
	uint64_t i, a;
	ttls_of(c, short_sid, &i, &a);
	cr_expect(i == 300 && a == 600000, "own inactivity TTL: %lu/%lu", (unsigned long)i,
		  (unsigned long)a);
	ttls_of(c, abs_sid, &i, &a);
	cr_expect(i == 60000 && a == 400, "own absolute TTL: %lu/%lu", (unsigned long)i,
		  (unsigned long)a);
	ttls_of(c, dflt_sid, &i, &a);
	cr_expect(i == 60000 && a == 600000, "the broker's defaults: %lu/%lu", (unsigned long)i,
		  (unsigned long)a);
	if (h_now_ms() - t0 > 150)
		cr_skip_test("machine too slow: creates took %ld ms", (long)(h_now_ms() - t0));

	/* The absolute one is kept busy and still ends; the short one is left alone and ends. */
	while (h_now_ms() - t0 < 500) {
		int rc = open_rc(c, abs_sid, "acme");
		if (h_now_ms() - t0 < 350)
			cr_assert_eq(rc, 0, "absolute-TTL session gone early: %s",
				     shmb_strerror(rc));
		h_sleep_ms(50);
	}
	H_EXPECT_RC(open_rc(c, short_sid, "acme"), SHMB_ENOENT);
	H_EXPECT_RC(open_rc(c, abs_sid, "acme"), SHMB_ENOENT);
	H_OK(open_rc(c, dflt_sid, "acme"));
	h_detach(c);
}

/* A raw control connection (no hello: create needs none without a request id). */
static int raw_connect(const struct h_broker *b)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	cr_assert_lt(strlen(b->sock_path), sizeof sa.sun_path);
	memcpy(sa.sun_path, b->sock_path, strlen(b->sock_path) + 1);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "connect: %s",
		     strerror(errno));
	return fd;
}

/* Sends msg and expects an SHMB_EINVAL reply whose message contains want. */
static void raw_refused(int fd, const char *msg, const char *want)
{
	cr_assert_eq(send(fd, msg, strlen(msg), MSG_NOSIGNAL), (ssize_t)strlen(msg));
	struct pollfd p = { .fd = fd, .events = POLLIN };
	cr_assert_eq(poll(&p, 1, 5000), 1, "no reply to %s", msg);
	char buf[4096];
	ssize_t n = recv(fd, buf, sizeof buf - 1, 0);
	cr_assert_gt(n, 0);
	buf[n] = '\0';
	cJSON *r = cJSON_Parse(buf);
	const cJSON *code = cJSON_GetObjectItemCaseSensitive(r, "code");
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(r, "message");
	cr_expect(cJSON_IsNumber(code) && code->valueint == SHMB_EINVAL, "%s: got %s", msg, buf);
	cr_expect(cJSON_IsString(m) && strstr(m->valuestring, want), "%s: no '%s' in %s", msg, want,
		  buf);
	cJSON_Delete(r);
}

H_TEST(session_opts, above_the_maximum_is_einval_and_creates_nothing)
{
	struct h_broker *b = h_broker_start(
		H_ARGS("--inactivity-ttl-ms", "500", "--absolute-ttl-ms", "1000",
		       "--max-inactivity-ttl-ms", "1000", "--max-absolute-ttl-ms", "2000"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1] = "";
	H_EXPECT_RC(shmb_session_create_opts(c, "acme", NULL,
					     &(shmb_session_opts){ .inactivity_ttl_ms = 1001 },
					     sid),
		    SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_create_opts(c, "acme", "bob",
					     &(shmb_session_opts){ .absolute_ttl_ms = 2001 }, sid),
		    SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_create_opts(c, "acme", NULL,
					     &(shmb_session_opts){ .inactivity_ttl_ms = INT64_MAX,
								   .absolute_ttl_ms = INT64_MAX },
					     sid),
		    SHMB_EINVAL);
	cr_expect_eq(live_sessions(b->name), 0, "a refused create left a session");
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_CREATED), 0u);

	/* The broker's message names the limit; "no expiry" (0 on the wire) is above any. */
	int fd = raw_connect(b);
	raw_refused(fd, "{\"op\":\"create\",\"tenant\":\"acme\",\"inactivity_ttl_ms\":1001}",
		    "max_inactivity_ttl_ms (1000 ms)");
	raw_refused(fd, "{\"op\":\"create\",\"tenant\":\"acme\",\"absolute_ttl_ms\":5000}",
		    "max_absolute_ttl_ms (2000 ms)");
	raw_refused(fd, "{\"op\":\"create\",\"tenant\":\"acme\",\"absolute_ttl_ms\":0}",
		    "max_absolute_ttl_ms");
	close(fd);
	cr_expect_eq(live_sessions(b->name), 0, "a refused create left a session");

	/* Exactly the maxima is allowed. */
	H_OK(shmb_session_create_opts(c, "acme", NULL,
				      &(shmb_session_opts){ .inactivity_ttl_ms = 1000,
							    .absolute_ttl_ms = 2000 },
				      sid));
	uint64_t i, a;
	ttls_of(c, sid, &i, &a);
	cr_expect(i == 1000 && a == 2000, "TTLs at the maxima: %lu/%lu", (unsigned long)i,
		  (unsigned long)a);
	cr_expect_eq(live_sessions(b->name), 1);
	h_detach(c);
}

H_TEST(session_opts, negative_is_einval_in_the_client)
{
	struct h_broker *b = h_broker_start(NULL);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	/* With the broker gone, a call that asked it would be SHMB_EBROKER: EINVAL shows the
	 * client refused it itself. */
	h_broker_kill(b);
	H_EXPECT_RC(shmb_session_create_opts(c, "acme", NULL,
					     &(shmb_session_opts){ .inactivity_ttl_ms = -1 }, sid),
		    SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_create_opts(c, "acme", NULL,
					     &(shmb_session_opts){ .absolute_ttl_ms = INT64_MIN },
					     sid),
		    SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_create_opts(c, "acme", NULL, NULL, NULL), SHMB_EINVAL);
	h_broker_restart(b);
	H_EXPECT_RC(shmb_session_create_opts(c, "acme", NULL,
					     &(shmb_session_opts){ .inactivity_ttl_ms = 10,
								   .absolute_ttl_ms = -10 },
					     sid),
		    SHMB_EINVAL);
	cr_expect_eq(live_sessions(b->name), 0);
	h_detach(c);
}

H_TEST(session_opts, a_maximum_of_zero_is_no_limit)
{
	struct h_broker *b = h_broker_start(
		H_ARGS("--max-inactivity-ttl-ms", "0", "--max-absolute-ttl-ms", "0"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	const int64_t year = INT64_C(365) * 24 * 3600 * 1000;
	H_OK(shmb_session_create_opts(c, "acme", NULL,
				      &(shmb_session_opts){ .inactivity_ttl_ms = year,
							    .absolute_ttl_ms = 10 * year },
				      sid));
	uint64_t i, a;
	ttls_of(c, sid, &i, &a);
	cr_expect(i == (uint64_t)year && a == (uint64_t)(10 * year), "%lu/%lu", (unsigned long)i,
		  (unsigned long)a);
	h_detach(c);
}

/* Starts a broker that must refuse its configuration; returns its log (free it). */
static char *refused_log(const char *const *args)
{
	struct h_broker *b = h_broker_new(args);
	int st = 0;
	cr_assert_eq(h_broker_spawn(b, &st), -1, "the broker started");
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 2, "want exit status 2, got 0x%x", st);
	cr_expect_neq(access(b->shm_path, F_OK), 0, "a segment was left at %s", b->shm_path);
	return h_broker_log(b);
}

H_TEST(session_opts, a_default_above_its_maximum_is_a_config_error)
{
	char *log = refused_log(
		H_ARGS("--inactivity-ttl-ms", "5000", "--max-inactivity-ttl-ms", "1000"));
	cr_expect(h_contains(log, "--inactivity-ttl-ms (5000)") &&
			  h_contains(log, "--max-inactivity-ttl-ms (1000)"),
		  "the message names both fields:\n%s", log);
	free(log);
	/* The built-in default (4 h) against a maximum the user set lower. */
	log = refused_log(H_ARGS("--max-absolute-ttl-ms", "60000"));
	cr_expect(h_contains(log, "absolute_ttl_ms (14400000)") &&
			  h_contains(log, "--max-absolute-ttl-ms (60000)"),
		  "the message names both fields:\n%s", log);
	free(log);
	/* A default of 0 (no such expiry) is not limited by the maximum. */
	struct h_broker *b =
		h_broker_start(H_ARGS("--absolute-ttl-ms", "0", "--max-absolute-ttl-ms", "60000"));
	(void)b;
}

static const cJSON *find_session(const cJSON *arr, const char *sid)
{
	const cJSON *s;
	cJSON_ArrayForEach(s, arr)
	{
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(s, "id");
		if (cJSON_IsString(id) && strcmp(id->valuestring, sid) == 0)
			return s;
	}
	return NULL;
}

H_TEST(session_opts, shmctl_shows_each_sessions_ttls)
{
	struct h_broker *b = h_broker_start(
		H_ARGS("--inactivity-ttl-ms", "1800000", "--absolute-ttl-ms", "14400000"));
	shmb_client *c = h_attach(b->name);
	char own[SHMB_SID_LEN + 1], dflt[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create_opts(c, "acme", NULL,
				      &(shmb_session_opts){ .inactivity_ttl_ms = 123000,
							    .absolute_ttl_ms = 456000 },
				      own));
	H_OK(shmb_session_create(c, "acme", NULL, dflt));

	cJSON *doc = h_shmctl_json(b->name, "sessions", NULL);
	const cJSON *j = find_session(h_json_sessions(doc), own);
	cr_assert_not_null(j, "session %s not listed", own);
	cr_expect_eq(h_json_num(j, "inactivity_ttl_ms"), 123000);
	cr_expect_eq(h_json_num(j, "absolute_ttl_ms"), 456000);
	j = find_session(h_json_sessions(doc), dflt);
	cr_assert_not_null(j, "session %s not listed", dflt);
	cr_expect_eq(h_json_num(j, "inactivity_ttl_ms"), 1800000);
	cr_expect_eq(h_json_num(j, "absolute_ttl_ms"), 14400000);
	cJSON_Delete(doc);

	doc = h_shmctl_json(b->name, "show", own, NULL);
	cr_expect_eq(h_json_num(doc, "inactivity_ttl_ms"), 123000);
	cr_expect_eq(h_json_num(doc, "absolute_ttl_ms"), 456000);
	cJSON_Delete(doc);

	struct h_result r;
	h_shmctl(&r, b->name, "sessions", NULL);
	cr_expect_eq(r.status, 0);
	cr_expect(h_contains(r.out, "TTL") && h_contains(r.out, "2m3s/7m36s") &&
			  h_contains(r.out, "30m/4h"),
		  "sessions text lacks the TTLs:\n%s", r.out);
	h_result_free(&r);
	h_shmctl(&r, b->name, "show", own, NULL);
	cr_expect_eq(r.status, 0);
	cr_expect(h_contains(r.out, "2m3s") && h_contains(r.out, "7m36s"),
		  "show text lacks the TTLs:\n%s", r.out);
	h_result_free(&r);
	h_detach(c);
}
