/* test_redteam12_ops.c - red team 12 on the operations work of issue 15 (dump and restore,
 * metrics --listen): each test is a defect found by attacking it, and fails without its fix.
 *
 * - A tenant or principal that a dump could not write exactly came back from a restore as
 *   another tenant: control characters and invalid UTF-8 were written as '?', so a session of
 *   tenant "a\tb" came back bound to tenant "a?b" (its own client refused, SHMB_EPERM, and a
 *   client of tenant "a?b" admitted to it).
 * - `shmctl metrics --listen` answered one client at a time with blocking sends: a client that
 *   sent its request and never read the answer wedged the endpoint for every scraper, forever.
 * - A reload opened the config file with a blocking open: a FIFO where the file was (an
 *   operator's mistake, or a process substitution given as --config) hung the one-threaded
 *   broker in open() on SIGHUP or `shmctl reload`, and with it every create and attach.
 * - `shmctl restore` of a dump larger than the free records (or holding one id twice) passed its
 *   dry run (each session alone fits) and stopped half done at SHMB_EFULL (SHMB_ECONFLICT): the
 *   sessions before it restored without their attributes, the file no longer restorable. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

TestSuite(redteam12_ops, .init = h_setup, .fini = h_teardown, .timeout = 90);

static void expect_open(shmb_client *c, const char *sid, const char *tenant, const char *principal,
			int want, const char *what)
{
	shmb_session *s = NULL;
	int rc = shmb_session_open(c, sid, tenant, principal, &s);
	cr_expect_eq(rc, want, "%s: open gave %s, want %s", what, shmb_err_name(rc),
		     shmb_err_name(want));
	if (s)
		shmb_session_close(s);
}

H_TEST(redteam12_ops, dump_restore_keeps_tenant_and_principal_bytes_exactly)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char tab[SHMB_SID_LEN + 1], bin[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "a\tb", "p\nq", tab));
	H_OK(shmb_session_create(c,
				 "a\xff"
				 "b",
				 "\xc3(", bin)); /* not UTF-8 */
	h_detach(c);

	char path[300];
	snprintf(path, sizeof path, "%s/dump.json", h_runtime_dir());
	struct h_result r;
	h_shmctl(&r, b->name, "dump", path, NULL);
	cr_assert_eq(r.status, 0, "dump: %s", r.err);
	h_result_free(&r);
	h_broker_stop(b);
	cr_assert_eq(unlink(b->shm_path), 0, "%s: %s", b->shm_path, strerror(errno));
	h_broker_restart(b);
	h_shmctl(&r, b->name, "restore", path, NULL);
	cr_assert_eq(r.status, 0, "restore: %s%s", r.out, r.err);
	h_result_free(&r);

	c = h_attach(b->name);
	expect_open(c, tab, "a\tb", "p\nq", 0, "tenant a\\tb, its own client");
	expect_open(c, tab, "a?b", "p?q", SHMB_EPERM, "tenant a?b, another tenant");
	expect_open(c, bin,
		    "a\xff"
		    "b",
		    "\xc3(", 0, "tenant a\\xffb, its own client");
	expect_open(c, bin, "a?b", "?(", SHMB_EPERM, "tenant a?b, another tenant");
	h_detach(c);
	h_broker_stop(b);
}

H_TEST(redteam12_ops, restore_refuses_a_bad_tenant_base64)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	char path[300];
	snprintf(path, sizeof path, "%s/bad.json", h_runtime_dir());
	FILE *f = fopen(path, "w");
	cr_assert(f);
	/* "YQBi" is "a\0b": a NUL no tenant can hold. */
	fprintf(f,
		"{\"format_version\":1,\"sessions\":[{\"id\":\"%032x\",\"tenant\":\"a?b\","
		"\"tenant_base64\":\"YQBi\",\"principal\":null,\"created_at_ms\":1,"
		"\"last_accessed_at_ms\":1,\"inactivity_ttl_ms\":60000,"
		"\"absolute_ttl_ms\":60000,\"last_event_id\":0,\"events\":[]}]}\n",
		7);
	fclose(f);
	struct h_result r;
	h_shmctl(&r, b->name, "restore", path, NULL);
	cr_expect_eq(r.status, 2, "restore: exit %d: %s%s", r.status, r.out, r.err);
	cr_expect(h_contains(r.err, "tenant_base64"), "stderr: %s", r.err);
	h_result_free(&r);
	cJSON *j = h_shmctl_json(b->name, "sessions", NULL);
	cr_expect_eq(cJSON_GetArraySize(h_json_sessions(j)), 0, "a session was restored");
	cJSON_Delete(j);
	h_broker_stop(b);
}

/* A TCP connection to port; mss and rcvbuf (if > 0) set before connecting. */
static int tcp(int port, int mss, int rcvbuf)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	if (mss > 0)
		cr_assert_eq(setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof mss), 0, "%s",
			     strerror(errno));
	if (rcvbuf > 0)
		cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf), 0);
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "%s", strerror(errno));
	return fd;
}

/* A client asks for /metrics and never reads the answer (small segments and a small receive
 * window, as a client across a network gets, so the answer outgrows the socket buffers): a
 * scrape behind it is answered once the server gives up on it, and SIGTERM still stops the
 * server. Without the fix the server blocked in send() forever. */
H_TEST(redteam12_ops, metrics_listen_survives_a_client_that_never_reads)
{
	struct h_broker *b = h_broker_start(
		((const char *const[]){ "--max-sessions", "1024", "--ring-events", "4",
					"--ring-bytes", "256", "--max-event-bytes", "256", NULL }));
	shmb_client *c = h_attach(b->name);
	/* A big answer: many tenants, each label doubled by its escaping. */
	char tenant[64], sid[SHMB_SID_LEN + 1];
	int n = 0;
	for (; n < 1000; n++) {
		memset(tenant, '"', sizeof tenant - 1); /* each '"' is written escaped: \\" */
		tenant[sizeof tenant - 1] = '\0';
		snprintf(tenant, 6, "%05d", n);
		tenant[5] = '"';
		int rc = shmb_session_create(c, tenant, NULL, sid);
		if (rc == SHMB_EFULL)
			break;
		H_OK(rc);
	}
	cr_log_info("%d tenants", n);
	int port;
	pid_t srv = h_metrics_listen(b->name, &port);
	int hog = tcp(port, 88, 1024);
	const char *get = "GET /metrics HTTP/1.0\r\n\r\n";
	cr_assert_eq(send(hog, get, strlen(get), MSG_NOSIGNAL), (ssize_t)strlen(get));

	int fd = tcp(port, 0, 0);
	cr_assert_eq(send(fd, get, strlen(get), MSG_NOSIGNAL), (ssize_t)strlen(get));
	static char buf[1 << 20];
	size_t len = 0;
	int64_t t0 = h_now_ms(), end = t0 + 20000;
	for (;;) {
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		int left = (int)(end - h_now_ms());
		cr_assert(left > 0 && poll(&pf, 1, left) == 1,
			  "no answer in 20 s behind a client that does not read");
		ssize_t k = recv(fd, buf + len, sizeof buf - 1 - len, 0);
		if (k <= 0)
			break;
		len += (size_t)k;
	}
	buf[len] = '\0';
	cr_expect(strncmp(buf, "HTTP/1.1 200", 12) == 0, "scrape got: %.100s", buf);
	cr_log_info("scrape behind a client that does not read: %lld ms",
		    (long long)(h_now_ms() - t0));
	close(fd);
	close(hog);
	cr_assert_eq(kill(srv, SIGTERM), 0);
	int st;
	cr_assert_eq(waitpid(srv, &st, 0), srv);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "shmctl metrics --listen: status %d", st);
	h_detach(c);
	h_broker_stop(b);
}

H_TEST(redteam12_ops, reload_refuses_a_fifo_config_and_keeps_serving)
{
	char path[300];
	snprintf(path, sizeof path, "%s/conf.json", h_runtime_dir());
	FILE *f = fopen(path, "w");
	cr_assert(f);
	fputs("{\"inactivity_ttl_ms\": 60000}\n", f);
	fclose(f);
	struct h_broker *b = h_broker_start(H_ARGS("--config", path));
	cr_assert_eq(unlink(path), 0);
	cr_assert_eq(mkfifo(path, 0600), 0, "mkfifo: %s", strerror(errno));
	struct h_result r;
	int64_t t0 = h_now_ms();
	h_shmctl(&r, b->name, "reload", NULL);
	cr_expect_eq(r.status, 3, "reload of a FIFO: exit %d: %s%s", r.status, r.out, r.err);
	cr_expect(h_contains(r.err, "not a regular file"), "stderr: %s", r.err);
	cr_expect_lt(h_now_ms() - t0, 5000, "reload took %lld ms", (long long)(h_now_ms() - t0));
	h_result_free(&r);
	/* Still serving: a session can be created. */
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	h_detach(c);
	unlink(path);
	h_broker_stop(b);
}

static int n_sessions(const char *name)
{
	cJSON *j = h_shmctl_json(name, "sessions", NULL);
	int n = cJSON_GetArraySize(h_json_sessions(j));
	cJSON_Delete(j);
	return n;
}

H_TEST(redteam12_ops, restore_into_too_small_a_segment_restores_nothing)
{
	struct h_broker *big = h_broker_start(H_ARGS("--max-sessions", "16"));
	shmb_client *c = h_attach(big->name);
	char sid[SHMB_SID_LEN + 1];
	for (int i = 0; i < 6; i++) {
		H_OK(shmb_session_create(c, "acme", NULL, sid));
		shmb_session *s;
		H_OK(shmb_session_open(c, sid, "acme", NULL, &s));
		H_OK(shmb_attr_set(s, "k", "v", 1));
		shmb_session_close(s);
	}
	h_detach(c);
	char path[300];
	snprintf(path, sizeof path, "%s/six.json", h_runtime_dir());
	struct h_result r;
	h_shmctl(&r, big->name, "dump", path, NULL);
	cr_assert_eq(r.status, 0, "dump: %s", r.err);
	h_result_free(&r);
	h_broker_stop(big);

	struct h_broker *small = h_broker_start(H_ARGS("--max-sessions", "4"));
	h_shmctl(&r, small->name, "restore", path, NULL);
	cr_expect_eq(r.status, 1, "restore of 6 sessions into 4 records: exit %d: %s%s", r.status,
		     r.out, r.err);
	cr_expect(h_contains(r.err, "room for 4") && h_contains(r.err, "nothing was restored"),
		  "stderr: %s", r.err);
	h_result_free(&r);
	cr_expect_eq(n_sessions(small->name), 0, "a partial restore");
	h_broker_stop(small);
}

H_TEST(redteam12_ops, restore_of_a_dump_holding_an_id_twice_restores_nothing)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	char path[300];
	snprintf(path, sizeof path, "%s/twice.json", h_runtime_dir());
	FILE *f = fopen(path, "w");
	cr_assert(f);
	const char *one = "{\"id\":\"%s\",\"tenant\":\"acme\",\"principal\":null,"
			  "\"created_at_ms\":1,\"last_accessed_at_ms\":1,"
			  "\"inactivity_ttl_ms\":60000,\"absolute_ttl_ms\":60000,"
			  "\"last_event_id\":0,\"events\":[]}";
	fputs("{\"format_version\":1,\"sessions\":[", f);
	fprintf(f, one, "0123456789abcdef0123456789abcdef");
	fputs(",", f);
	fprintf(f, one, "fedcba98765432100123456789abcdef");
	fputs(",", f);
	fprintf(f, one, "0123456789abcdef0123456789abcdef");
	fputs("]}\n", f);
	fclose(f);
	struct h_result r;
	h_shmctl(&r, b->name, "restore", path, NULL);
	cr_expect_neq(r.status, 0, "restore: %s%s", r.out, r.err);
	cr_expect(h_contains(r.err, "nothing was restored"), "stderr: %s", r.err);
	h_result_free(&r);
	cr_expect_eq(n_sessions(b->name), 0, "a partial restore");
	h_broker_stop(b);
}
