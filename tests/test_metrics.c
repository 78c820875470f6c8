/* test_metrics.c - `shmctl metrics` (issue 15, item 6): the Prometheus text exposition of every
 * counter and gauge, checked by a real exposition-format parser (the official Python client's,
 * Debian's python3-prometheus-client, through tests/metrics_check.py run by /usr/bin/python3),
 * against figures the test made happen (sessions per tenant, events published, subscribers);
 * and `--listen`, scraped over HTTP while a slow client and an oversized request try to hold it.
 *
 * The server is a real shmctl process; its port (":0": any free one) is read from its first
 * line on stdout. A slow client is answered 408 after the server's read timeout while the
 * scrape behind it waits its turn: the scrape succeeding proves the server does not hang. */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

TestSuite(metrics, .init = h_setup, .fini = h_teardown, .timeout = 90);

#define CHECK_PY SHMB_TEST_SOURCE_DIR "/metrics_check.py"

/* Parses metrics text (file path) or scrapes url with metrics_check.py; returns its JSON. */
static cJSON *check(const char *arg1, const char *arg2)
{
	struct h_result r;
	h_run(&r, (const char *const[]){ "/usr/bin/python3", CHECK_PY, arg1, arg2, NULL });
	cr_assert_eq(r.status, 0, "metrics_check %s: exit %d\n%s", arg1, r.status, r.err);
	cJSON *j = cJSON_Parse(r.out);
	cr_assert_not_null(j, "metrics_check printed no JSON: %s", r.out);
	h_result_free(&r);
	return j;
}

/* The value of sample `name` whose labels include label=value (label NULL: any); -1 if absent. */
static double value_of(const cJSON *j, const char *name, const char *label, const char *value)
{
	const cJSON *s;
	cJSON_ArrayForEach(s, cJSON_GetObjectItem(j, "samples"))
	{
		if (strcmp(cJSON_GetArrayItem(s, 0)->valuestring, name) != 0)
			continue;
		const cJSON *l =
			label ? cJSON_GetObjectItem(cJSON_GetArrayItem(s, 1), label) : NULL;
		if (label && (!l || strcmp(l->valuestring, value) != 0))
			continue;
		return cJSON_GetArrayItem(s, 2)->valuedouble;
	}
	return -1;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f, "%s: %s", path, strerror(errno));
	fputs(text, f);
	fclose(f);
}

H_TEST(metrics, exposition_parses_and_counts_what_happened)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1], odd[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	H_OK(shmb_session_create(c, "acme", "alice", odd));
	/* A tenant that needs escaping in a label value: a quote and a backslash. */
	H_OK(shmb_session_create(c, "we\"ird\\t", NULL, odd));
	shmb_session *s;
	H_OK(shmb_session_open(c, sid, "acme", NULL, &s));
	H_OK(shmb_subscribe(s));
	for (int i = 0; i < 7; i++)
		cr_assert_gt(shmb_publish(s, 0, 1, "{}", 2), 0);

	struct h_result r;
	h_shmctl(&r, b->name, "metrics", NULL);
	cr_assert_eq(r.status, 0, "shmctl metrics: %d\n%s", r.status, r.err);
	char path[300];
	snprintf(path, sizeof path, "%s/metrics.txt", h_runtime_dir());
	write_file(path, r.out);
	h_result_free(&r);
	cJSON *j = check(path, NULL);

	const cJSON *fam = cJSON_GetObjectItem(j, "families");
	cr_expect_str_eq(cJSON_GetObjectItem(fam, "shmb_events_published")->valuestring, "counter");
	cr_expect_str_eq(cJSON_GetObjectItem(fam, "shmb_sessions")->valuestring, "gauge");
	cr_expect_eq(value_of(j, "shmb_broker_up", NULL, NULL), 1);
	cr_expect_eq(value_of(j, "shmb_broker_up", "instance", b->name), 1);
	cr_expect_eq(value_of(j, "shmb_events_published_total", NULL, NULL), 7);
	cr_expect_eq(value_of(j, "shmb_sessions_created_total", NULL, NULL), 3);
	cr_expect_eq(value_of(j, "shmb_sessions", "state", "live"), 3);
	cr_expect_eq(value_of(j, "shmb_sessions_max", NULL, NULL), 64);
	cr_expect_eq(value_of(j, "shmb_workers", "state", "attached"), 1);
	cr_expect_eq(value_of(j, "shmb_workers_admitted_total", NULL, NULL), 1);
	cr_expect_eq(value_of(j, "shmb_tenant_sessions", "tenant", "acme"), 2);
	cr_expect_eq(value_of(j, "shmb_tenant_sessions", "tenant", "we\"ird\\t"), 1);
	cr_expect_eq(value_of(j, "shmb_tenant_subscribers", "tenant", "acme"), 1);
	cr_expect_eq(value_of(j, "shmb_config_ttl_seconds", "ttl", "inactivity_default"), 1800);
	cr_expect_gt(value_of(j, "shmb_segment_size_bytes", NULL, NULL), 0);
	cJSON_Delete(j);

	/* The parser is not lenient: a damaged exposition is refused (the check can fail). */
	write_file(path, "# TYPE x counter\nx_total{instance=\"a} 1\n");
	h_run(&r, (const char *const[]){ "/usr/bin/python3", CHECK_PY, path, NULL });
	cr_expect_eq(r.status, 1, "a damaged exposition passed: %s", r.out);
	h_result_free(&r);

	/* A dead broker: shmb_broker_up 0, the rest still readable. */
	shmb_session_close(s);
	h_detach(c);
	h_broker_kill(b);
	h_shmctl(&r, b->name, "metrics", NULL);
	cr_assert_eq(r.status, 0, "%s", r.err);
	cr_expect(strstr(r.out, "shmb_broker_up{instance=\"") && strstr(r.out, "\"} 0\n"), "%s",
		  r.out);
	h_result_free(&r);
	h_broker_restart(b);
}

static int tcp(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "%s", strerror(errno));
	return fd;
}

/* Everything the server sends until it closes (5 s at most). */
static void read_reply(int fd, char *buf, size_t cap)
{
	size_t len = 0;
	int64_t end = h_now_ms() + 5000;
	for (;;) {
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		int left = (int)(end - h_now_ms());
		cr_assert(left > 0 && poll(&pf, 1, left) == 1, "no reply in 5 s: %.*s", (int)len,
			  buf);
		ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
}

H_TEST(metrics, listen_serves_scrapes_and_survives_slow_and_big_requests)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	int port;
	pid_t srv = h_metrics_listen(b->name, &port);
	char url[128];
	snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", port);

	/* A slow client takes the server first and sends half a request line, then nothing. */
	int slow = tcp(port);
	cr_assert_eq(send(slow, "GET /met", 8, MSG_NOSIGNAL), 8);
	/* The scrape behind it waits for the server's read timeout, then is served. */
	int64_t t0 = h_now_ms();
	cJSON *j = check("--url", url);
	int64_t took = h_now_ms() - t0;
	cr_expect_eq(h_json_num(j, "status"), 200);
	cr_expect(h_contains(cJSON_GetObjectItem(j, "content_type")->valuestring, "version=0.0.4"));
	cr_expect_eq(value_of(j, "shmb_sessions", "state", "live"), 1);
	cr_expect_eq(value_of(j, "shmb_tenant_sessions", "tenant", "acme"), 1);
	cJSON_Delete(j);
	static char buf[65536];
	read_reply(slow, buf, sizeof buf);
	cr_expect(strncmp(buf, "HTTP/1.1 408", 12) == 0, "slow client got: %.100s", buf);
	close(slow);
	cr_log_info("scrape behind a slow client took %lld ms", (long long)took);

	/* An oversized request head: 431, and the server goes on. */
	int big = tcp(port);
	static char junk[9000];
	memcpy(junk, "GET /metrics HTTP/1.1\r\nX: ", 26);
	memset(junk + 26, 'a', sizeof junk - 26);
	send(big, junk, sizeof junk, MSG_NOSIGNAL);
	read_reply(big, buf, sizeof buf);
	cr_expect(strncmp(buf, "HTTP/1.1 431", 12) == 0, "oversized request got: %.100s", buf);
	close(big);

	/* Another path: 404; another method: 405. */
	int o = tcp(port);
	send(o, "GET / HTTP/1.0\r\n\r\n", 18, MSG_NOSIGNAL);
	read_reply(o, buf, sizeof buf);
	cr_expect(strncmp(buf, "HTTP/1.1 404", 12) == 0, "%.100s", buf);
	close(o);
	o = tcp(port);
	send(o, "POST /metrics HTTP/1.0\r\n\r\n", 26, MSG_NOSIGNAL);
	read_reply(o, buf, sizeof buf);
	cr_expect(strncmp(buf, "HTTP/1.1 405", 12) == 0, "%.100s", buf);
	close(o);

	/* Still serving. */
	j = check("--url", url);
	cr_expect_eq(h_json_num(j, "status"), 200);
	cJSON_Delete(j);

	cr_assert_eq(kill(srv, SIGTERM), 0);
	int st;
	cr_assert_eq(waitpid(srv, &st, 0), srv);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "shmctl metrics --listen: status %d", st);
	h_detach(c);
}
