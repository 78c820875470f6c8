/* test_redteam16_core.c - red team of issue 16's core (node-tagged ids, shmb_session_restore):
 * a hostile local client passing the broker every kind of fd but a memfd, images at the edges
 * of every field, attributes that filled an area exactly, a restore racing a delete, a stopped
 * broker, node ids at adoption, shmb_sid_node on odd input. Each case ends with the broker still
 * serving and its state checked (shmctl verify, sessions listed). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <dirent.h>
#include <unistd.h>

#include "ctl.h"
#include "harness.h"
#include "image.h"
#include "layout.h"

TestSuite(redteam16_core, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define SIDX "0009aaaabbbbccccddddeeeeffff0001"

/* The fields most images here start with: SIDX of tenant acme, created and accessed now. */
#define ACME_NOW                                                     \
	.sid = SIDX, .tenant = "acme", .created_at_ms = h_wall_ms(), \
	.last_accessed_at_ms = h_wall_ms()

static int n_sessions(const char *name)
{
	cJSON *doc = h_shmctl_json(name, "sessions", NULL);
	int n = cJSON_GetArraySize(h_json_sessions(doc));
	cJSON_Delete(doc);
	return n;
}

static int n_fds(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
	DIR *d = opendir(path);
	int n = 0;
	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

static void expect_verify_clean(const char *name)
{
	struct h_result r;
	h_shmctl(&r, name, "verify", NULL);
	cr_expect_eq(r.status, 0, "verify: %s%s", r.out, r.err);
	h_result_free(&r);
}

/* The end of a test that leaves one session: the broker holds exactly one, shmctl verify finds
 * the segment clean, the client detaches. */
static void end_with_one_session(struct h_broker *b, shmb_client *c)
{
	cr_expect_eq(n_sessions(b->name), 1);
	expect_verify_clean(b->name);
	h_detach(c);
}

/* One raw restore request of the sid SIDX declaring `declared` image bytes, with fds; returns
 * the reply's text (static). */
static const char *raw_restore(int conn, long long declared, const int *fds, int nfds)
{
	static char buf[4096];
	char req[600];
	snprintf(req, sizeof req,
		 "{\"op\":\"restore\",\"session\":{\"id\":\"" SIDX "\",\"tenant\":\"acme\","
		 "\"principal\":null,\"created_at_ms\":1,\"last_accessed_at_ms\":1,"
		 "\"inactivity_ttl_ms\":0,\"absolute_ttl_ms\":0,\"last_event_id\":0},"
		 "\"image\":{\"bytes\":%lld}}",
		 declared);
	cr_assert_eq(ctl_send(conn, req, strlen(req), fds, nfds), 0);
	struct pollfd pf = { .fd = conn, .events = POLLIN };
	cr_assert_eq(poll(&pf, 1, 10000), 1, "no reply within 10 s (declared %lld)", declared);
	ssize_t n = recv(conn, buf, sizeof buf - 1, 0);
	cr_assert_gt(n, 0);
	buf[n] = '\0';
	return buf;
}

/* The 16 bytes of an empty image. */
static int empty_memfd(void)
{
	int fd = memfd_create("t", MFD_CLOEXEC);
	struct shmb_img_head h = { .magic = SHMB_IMG_MAGIC };
	cr_assert_eq(write(fd, &h, sizeof h), (ssize_t)sizeof h);
	return fd;
}

struct resizer {
	int fd;
	volatile int stop;
};

static void *resize_loop(void *arg)
{
	struct resizer *rz = arg;
	struct shmb_img_head h = { .magic = SHMB_IMG_MAGIC };
	for (unsigned i = 0; !rz->stop; i++) {
		if (ftruncate(rz->fd, (i & 1) ? 16 : (off_t)(i % 4096)) < 0)
			break;
		if (pwrite(rz->fd, &h, sizeof h, 0) < 0)
			break;
	}
	return NULL;
}

H_TEST(redteam16_core, the_broker_takes_only_a_memfd_and_holds_no_fd_afterwards)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	int conn = h_ctl_conn(b);
	/* A first request settles the broker's own fds (the connection's) before counting. */
	int m = empty_memfd();
	const char *rep = raw_restore(conn, 16, &m, 1);
	cr_assert(strstr(rep, "\"ok\":true"), "an empty image: %s", rep);
	close(m);
	char dsid[SHMB_SID_LEN + 1] = SIDX;
	H_OK(shmb_session_delete(c, dsid, "acme", NULL));
	int before = n_fds(b->pid);

	char disk[] = "/tmp/rt16-XXXXXX";
	int regular = mkstemp(disk);
	cr_assert_geq(regular, 0);
	struct shmb_img_head h = { .magic = SHMB_IMG_MAGIC };
	cr_assert_eq(write(regular, &h, sizeof h), (ssize_t)sizeof h);
	unlink(disk);
	int sv[2];
	cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	cr_assert_eq(write(sv[1], &h, sizeof h), (ssize_t)sizeof h);
	int zero = open("/dev/zero", O_RDONLY | O_CLOEXEC);
	int dir = open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int mf = empty_memfd();
	char proc[64];
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", mf);
	int opath = open(proc, O_PATH | O_CLOEXEC);
	int wronly = open(proc, O_WRONLY | O_CLOEXEC);
	int sparse = memfd_create("sparse", MFD_CLOEXEC);
	cr_assert_eq(ftruncate(sparse, (off_t)1 << 40), 0);
	cr_assert_eq(pwrite(sparse, &h, sizeof h, 0), (ssize_t)sizeof h);
	int pp[2];
	cr_assert_eq(pipe2(pp, O_CLOEXEC), 0);
	struct {
		const char *what;
		int fd;
		long long declared;
	} cases[] = {
		{ "a regular file on disk", regular, 16 },
		{ "a socket", sv[0], 16 },
		{ "/dev/zero", zero, 16 },
		{ "a directory", dir, 16 },
		{ "an O_PATH fd of a memfd", opath, 16 },
		{ "a write-only fd of a memfd", wronly, 16 },
		{ "a 1 TiB sparse memfd, declared", sparse, (long long)1 << 40 },
		{ "a 1 TiB sparse memfd, declared 16", sparse, 16 },
		{ "a memfd, declared 2^53", mf, (long long)1 << 53 },
		{ "a memfd, declared -1", mf, -1 },
		{ "a memfd, declared 0", mf, 0 },
		{ "a pipe's write end", pp[1], 16 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		rep = raw_restore(conn, cases[i].declared, &cases[i].fd, 1);
		cr_expect(strstr(rep, "\"ok\":false") &&
				  (strstr(rep, "SHMB_EINVAL") || strstr(rep, "SHMB_ETOOBIG")),
			  "%s: %s", cases[i].what, rep);
	}
	/* Two fds: the first is the image, the second closed unread. */
	int two[2] = { empty_memfd(), empty_memfd() };
	rep = raw_restore(conn, 16, two, 2);
	cr_expect(strstr(rep, "\"ok\":true"), "two memfds: %s", rep);
	H_OK(shmb_session_delete(c, dsid, "acme", NULL));
	/* A memfd the sender resizes and rewrites all along: refused or restored whole, never
	 * a hang, and the broker keeps serving. */
	struct resizer rz = { .fd = memfd_create("rz", MFD_CLOEXEC) };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, resize_loop, &rz), 0);
	for (int i = 0; i < 200; i++) {
		rep = raw_restore(conn, 16, &rz.fd, 1);
		if (strstr(rep, "\"ok\":true"))
			H_OK(shmb_session_delete(c, dsid, "acme", NULL));
		else
			cr_expect(strstr(rep, "SHMB_EINVAL"), "a resized memfd: %s", rep);
	}
	rz.stop = 1;
	pthread_join(th, NULL);
	/* Garbage fds with requests that take none (ping, create): closed, never kept. */
	for (int i = 0; i < 50; i++) {
		const char ping[] = "{\"op\":\"ping\"}";
		int f[3] = { empty_memfd(), dup(zero), dup(sv[0]) };
		cr_assert_eq(ctl_send(conn, ping, strlen(ping), f, 3), 0);
		for (int k = 0; k < 3; k++)
			close(f[k]);
		char buf[1024];
		struct pollfd pf = { .fd = conn, .events = POLLIN };
		cr_assert_eq(poll(&pf, 1, 10000), 1);
		cr_assert_gt(recv(conn, buf, sizeof buf, 0), 0);
	}
	/* The connection's own fds may settle a moment later: poll with a deadline. */
	int after = n_fds(b->pid);
	for (int64_t end = h_now_ms() + 3000; after != before && h_now_ms() < end;) {
		h_sleep_ms(20);
		after = n_fds(b->pid);
	}
	cr_expect_eq(after, before, "the broker holds %d fds, %d before", after, before);
	cr_expect_eq(n_sessions(b->name), 0);
	for (int k = 0; k < 2; k++)
		close(two[k]);
	close(rz.fd);
	close(regular);
	close(sv[0]);
	close(sv[1]);
	close(zero);
	close(dir);
	close(mf);
	close(opath);
	close(wronly);
	close(sparse);
	close(pp[0]);
	close(pp[1]);
	close(conn);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	expect_verify_clean(b->name);
	h_detach(c);
}

/* ---- attributes that filled an area exactly ---- */

/* Six attributes whose blocks take 12, 10, 10 | 11, 11, 10 cells of 64 bytes: set in this
 * order they fill the default 2-word area (64 cells) exactly; largest-first first-fit packing
 * (12, 11 in word 0 leave 9 cells; 11, 10, 10 in word 1 leave 1) does not. */
static const struct {
	const char *key;
	size_t cells;
} full_set[] = { { "a", 12 }, { "b", 10 }, { "c", 10 }, { "d", 11 }, { "e", 11 }, { "f", 10 } };

static size_t val_len_for(size_t cells)
{
	return cells * SHMB_ATTR_CELL - 8 - 1; /* header, a 1-byte key */
}

H_TEST(redteam16_core, attributes_that_filled_the_area_exactly_restore)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	static char vals[6][12 * SHMB_ATTR_CELL];
	shmb_image_attr at[6];
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s;
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	H_OK(shmb_session_open(c, sid, "acme", NULL, &s));
	for (int i = 0; i < 6; i++) {
		size_t len = val_len_for(full_set[i].cells);
		memset(vals[i], 'A' + i, len);
		at[i] = (shmb_image_attr){ .key = full_set[i].key, .val = vals[i], .len = len };
		H_OK(shmb_attr_set(s, at[i].key, at[i].val, at[i].len));
	}
	/* The area is full: one more cell does not fit. */
	H_EXPECT_RC(shmb_attr_set(s, "g", "x", 1), SHMB_EQUOTA);
	shmb_session_close(s);
	/* The same session, failed over to a node of the same configuration. */
	shmb_session_image img = { ACME_NOW, .attrs = at, .n_attrs = 6 };
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	H_OK(shmb_session_open(c, SIDX, "acme", NULL, &s));
	static char got[SHMB_ATTR_MAX];
	for (int i = 0; i < 6; i++) {
		int n = shmb_attr_get(s, at[i].key, got, sizeof got, NULL);
		cr_expect_eq(n, (int)at[i].len, "%s: %s", at[i].key, shmb_err_name(n));
		cr_expect(n == (int)at[i].len && memcmp(got, at[i].val, at[i].len) == 0,
			  "%s differs", at[i].key);
	}
	/* It is as full as the original, and a value is still replaceable in place of itself. */
	H_EXPECT_RC(shmb_attr_set(s, "g", "x", 1), SHMB_EQUOTA);
	H_OK(shmb_attr_delete(s, "a"));
	H_OK(shmb_attr_set(s, "g", "x", 1));
	shmb_session_close(s);
	expect_verify_clean(b->name);
	h_detach(c);
}

/* ---- edges of the image's fields ---- */

H_TEST(redteam16_core, images_at_the_edges_of_their_fields)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	const uint64_t top = UINT64_C(1) << 53;
	int64_t now = h_wall_ms();
	shmb_image_event ev[2] = {
		{ .id = top - 1,
		  .stream = UINT32_MAX,
		  .kind = 65535,
		  .ts_ms = (int64_t)(UINT64_C(1) << 53),
		  .data = "a",
		  .len = 1 },
		{ .id = top, .stream = 0, .kind = 0, .ts_ms = 0, .data = "b", .len = 1 },
	};
	static char key64[65];
	memset(key64, '~', 64);
	shmb_image_attr at[2] = { { .key = key64, .val = NULL, .len = 0 },
				  { .key = "!", .val = "", .len = 0 } };
	shmb_session_image img = { .sid = SIDX,
				   .tenant = "acme",
				   .created_at_ms = (int64_t)top,
				   .last_accessed_at_ms = (int64_t)top,
				   .inactivity_ttl_ms = top,
				   .absolute_ttl_ms = top,
				   .last_event_id = top,
				   .events = ev,
				   .n_events = 2,
				   .attrs = at,
				   .n_attrs = 2 };
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	shmb_session *s;
	H_OK(shmb_session_open(c, SIDX, "acme", NULL, &s));
	shmb_cursor *cur;
	H_OK(shmb_cursor_open(s, top - 2, &cur));
	shmb_event e;
	char buf[64];
	H_EXPECT_RC(shmb_cursor_next(cur, &e, buf, sizeof buf), 1);
	cr_expect_eq(e.id, top - 1);
	cr_expect_eq(e.ts_ms, (int64_t)top);
	cr_expect_eq(e.stream, UINT32_MAX);
	H_EXPECT_RC(shmb_cursor_next(cur, &e, buf, sizeof buf), 1);
	cr_expect_eq(e.id, top);
	H_EXPECT_RC(shmb_cursor_next(cur, &e, buf, sizeof buf), 0);
	int64_t id = shmb_publish(s, 0, 0, "c", 1);
	cr_expect_eq(id, (int64_t)top + 1, "the publish after 2^53 got %lld", (long long)id);
	H_EXPECT_RC(shmb_attr_get(s, key64, buf, sizeof buf, NULL), 0);
	H_EXPECT_RC(shmb_attr_get(s, "!", buf, sizeof buf, NULL), 0);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	/* shmctl shows it, lists it, dumps it and verify finds nothing wrong. */
	struct h_result r;
	h_shmctl(&r, b->name, "show", SIDX, NULL);
	cr_expect_eq(r.status, 0, "show: %s%s", r.out, r.err);
	h_result_free(&r);
	h_shmctl(&r, b->name, "events", SIDX, "--after", "9007199254740990", NULL);
	cr_expect_eq(r.status, 0, "events: %s%s", r.out, r.err);
	h_result_free(&r);
	h_shmctl(&r, b->name, "dump", NULL);
	cr_expect_eq(r.status, 0, "dump: %s%s", r.out, r.err);
	h_result_free(&r);
	expect_verify_clean(b->name);

	/* Bad ones change nothing. */
	shmb_image_event dup[2] = { { .id = 3, .data = "a", .len = 1 },
				    { .id = 3, .data = "b", .len = 1 } };
	shmb_session_image bad = { .sid = "0009aaaabbbbccccddddeeeeffff0002",
				   .tenant = "acme",
				   .created_at_ms = now,
				   .last_accessed_at_ms = now,
				   .last_event_id = 5,
				   .events = dup,
				   .n_events = 2 };
	H_EXPECT_RC(shmb_session_restore(c, &bad), SHMB_EINVAL);
	bad.last_event_id = 0;
	bad.n_events = 1;
	H_EXPECT_RC(shmb_session_restore(c, &bad), SHMB_EINVAL);
	bad.n_events = 0;
	bad.last_event_id = top + 1;
	H_EXPECT_RC(shmb_session_restore(c, &bad), SHMB_EINVAL);
	bad.last_event_id = 0;
	bad.created_at_ms = -1;
	H_EXPECT_RC(shmb_session_restore(c, &bad), SHMB_EINVAL);
	bad.created_at_ms = now;
	static char key65[66];
	memset(key65, 'k', 65);
	shmb_image_attr badat[] = { { .key = key65 }, { .key = "a b" }, { .key = "" } };
	for (int i = 0; i < 3; i++) {
		bad.attrs = &badat[i];
		bad.n_attrs = 1;
		H_EXPECT_RC(shmb_session_restore(c, &bad), SHMB_EINVAL);
	}
	shmb_image_attr twice[2] = { { .key = "k", .val = "1", .len = 1 },
				     { .key = "k", .val = "2", .len = 1 } };
	bad.attrs = twice;
	bad.n_attrs = 2;
	H_EXPECT_RC(shmb_session_restore(c, &bad), SHMB_EINVAL);
	cr_expect_eq(n_sessions(b->name), 1);
	h_detach(c);
}

H_TEST(redteam16_core, a_segment_without_attributes_restores_sessions_without_any)
{
	struct h_broker *b = h_broker_start(H_ARGS("--attr-bytes", "0"));
	shmb_client *c = h_attach(b->name);
	shmb_image_attr at = { .key = "k", .val = "v", .len = 1 };
	shmb_session_image img = { ACME_NOW, .attrs = &at, .n_attrs = 1 };
	H_EXPECT_RC(shmb_session_restore(c, &img), SHMB_ETOOBIG);
	cr_expect_eq(n_sessions(b->name), 0);
	img.n_attrs = 0;
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	end_with_one_session(b, c);
}

/* ---- a restore of an id just deleted, or expired ---- */

H_TEST(redteam16_core, an_id_just_deleted_restores_and_the_old_handle_stays_dead)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	shmb_image_event ev = { .id = 1, .data = "old", .len = 3 };
	shmb_session_image img = { ACME_NOW, .last_event_id = 1, .events = &ev, .n_events = 1 };
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	shmb_session *old, *s;
	H_OK(shmb_session_open(c, SIDX, "acme", NULL, &old));
	shmb_cursor *cur; /* pins the record: it cannot be reclaimed while this is open */
	H_OK(shmb_cursor_open(old, 0, &cur));
	H_OK(shmb_session_delete(c, SIDX, "acme", NULL));
	ev.data = "new";
	img.last_event_id = 5;
	ev.id = 5;
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	H_OK(shmb_session_open(c, SIDX, "acme", NULL, &s));
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_expect_eq(info.last_event_id, 5);
	H_EXPECT_RC(shmb_session_stat(old, &info), SHMB_ENOENT);
	cr_expect_lt(shmb_publish(old, 0, 0, "x", 1), 0, "a publish on the deleted handle");
	shmb_event e;
	char buf[16];
	int rc = shmb_cursor_next(cur, &e, buf, sizeof buf);
	cr_expect(rc == SHMB_ENOENT || (rc == 1 && e.id == 1 && memcmp(buf, "old", 3) == 0),
		  "the old cursor read %d (%s) id %llu", rc, shmb_err_name(rc),
		  (unsigned long long)e.id);
	shmb_cursor_close(cur);
	shmb_session_close(old);
	shmb_session_close(s);
	end_with_one_session(b, c);
}

H_TEST(redteam16_core, an_id_whose_session_expired_but_is_not_swept_yet_restores)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	int64_t now = h_wall_ms();
	/* Expired an hour ago by its absolute TTL: no lookup finds it, the sweeper has not yet
	 * removed it (restore links it; the sweep runs on its own schedule). */
	shmb_session_image img = { .sid = SIDX,
				   .tenant = "acme",
				   .created_at_ms = now - 7200000,
				   .last_accessed_at_ms = now - 7200000,
				   .absolute_ttl_ms = 3600000 };
	int rc = shmb_session_restore(c, &img);
	cr_assert_eq(rc, 0, "%s", shmb_err_name(rc));
	shmb_session *s;
	H_EXPECT_RC(shmb_session_open(c, SIDX, "acme", NULL, &s), SHMB_ENOENT);
	/* The same id, now alive (another node's newer image): it is not there, so it restores. */
	img.created_at_ms = now;
	img.last_accessed_at_ms = now;
	rc = shmb_session_restore(c, &img);
	cr_expect_eq(rc, 0, "restoring over an expired session: %s", shmb_err_name(rc));
	H_EXPECT_RC(shmb_session_open(c, SIDX, "acme", NULL, &s), 0);
	shmb_session_close(s);
	expect_verify_clean(b->name);
	h_detach(c);
}

/* ---- a stopped broker ---- */

H_TEST(redteam16_core, a_stopped_broker_fails_a_restore_in_time_and_then_stays_whole)
{
	setenv("SHMB_CTL_TIMEOUT_MS", "400", 1);
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	shmb_image_event ev = { .id = 3, .data = "x", .len = 1 };
	shmb_image_attr at = { .key = "k", .val = "v", .len = 1 };
	shmb_session_image img = {
		ACME_NOW,      .last_event_id = 3, .events = &ev,
		.n_events = 1, .attrs = &at,       .n_attrs = 1,
	};
	cr_assert_eq(kill(b->pid, SIGSTOP), 0);
	int64_t t0 = h_now_ms();
	int rc = shmb_session_restore(c, &img);
	int64_t took = h_now_ms() - t0;
	cr_expect_eq(rc, SHMB_EBROKER, "a restore with the broker stopped: %s", shmb_err_name(rc));
	cr_expect_lt(took, 2000, "it took %lld ms (control timeout 400)", (long long)took);
	cr_assert_eq(kill(b->pid, SIGCONT), 0);
	/* The broker served the request it had queued, or not: a second restore says which. */
	rc = shmb_session_restore(c, &img);
	cr_expect(rc == 0 || rc == SHMB_ECONFLICT, "after SIGCONT: %s", shmb_err_name(rc));
	shmb_session *s;
	H_OK(shmb_session_open(c, SIDX, "acme", NULL, &s));
	char v[4];
	H_EXPECT_RC(shmb_attr_get(s, "k", v, sizeof v, NULL), 1);
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_expect_eq(info.last_event_id, 3);
	shmb_session_close(s);
	cr_expect_eq(n_sessions(b->name), 1);
	expect_verify_clean(b->name);
	/* And the client still works with the broker. */
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	h_detach(c);
}

/* ---- node ids ---- */

H_TEST(redteam16_core, shmb_sid_node_on_odd_input)
{
	cr_expect_eq(shmb_sid_node(NULL), SHMB_EINVAL);
	cr_expect_eq(shmb_sid_node(""), SHMB_EINVAL);
	cr_expect_eq(shmb_sid_node("0001"), SHMB_EINVAL);
	cr_expect_eq(shmb_sid_node("0001cf30b4b014d13029b93297c5a2a"), SHMB_EINVAL);
	cr_expect_eq(shmb_sid_node("0001cf30b4b014d13029b93297c5a2abc"), SHMB_EINVAL);
	cr_expect_eq(shmb_sid_node("0001cf30b4b014d13029b93297c5a2a "), SHMB_EINVAL);
	cr_expect_eq(shmb_sid_node("FFFFCF30B4B014D13029B93297C5A2AB"), 65535);
	cr_expect_eq(shmb_sid_node("00ffcf30b4b014d13029b93297c5a2ab"), 255);
	cr_expect_eq(shmb_sid_node("g001cf30b4b014d13029b93297c5a2ab"), SHMB_EINVAL);
	h_finish();
}

/* ---- an event time beyond 2^53 ---- */

/* A dump (shmctl dump) restores (shmctl restore) whole, or not at all: an event whose ts_ms a
 * JSON number cannot hold exactly made every later dump of the segment unrestorable. The
 * library and the broker both refuse such an image now. */
H_TEST(redteam16_core, an_event_time_beyond_2_53_is_refused_so_dumps_stay_restorable)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	shmb_image_event ev = { .id = 1, .ts_ms = INT64_MAX, .data = "a", .len = 1 };
	shmb_session_image img = { ACME_NOW, .last_event_id = 1, .events = &ev, .n_events = 1 };
	H_EXPECT_RC(shmb_session_restore(c, &img), SHMB_EINVAL);
	ev.ts_ms = (int64_t)(UINT64_C(1) << 53) + 1;
	H_EXPECT_RC(shmb_session_restore(c, &img), SHMB_EINVAL);
	/* The broker's own check, for a client that skips the library's. */
	struct {
		struct shmb_img_head h;
		struct shmb_img_event e;
		char pay[8];
	} raw = { .h = { .magic = SHMB_IMG_MAGIC, .n_events = 1 },
		  .e = { .id = 1, .ts_ms = INT64_MAX, .len = 1 },
		  .pay = "a" };
	int m = memfd_create("t", MFD_CLOEXEC);
	cr_assert_eq(write(m, &raw, sizeof raw), (ssize_t)sizeof raw);
	int conn = h_ctl_conn(b);
	char req[600];
	snprintf(req, sizeof req,
		 "{\"op\":\"restore\",\"session\":{\"id\":\"" SIDX "\",\"tenant\":\"acme\","
		 "\"principal\":null,\"created_at_ms\":1,\"last_accessed_at_ms\":1,"
		 "\"inactivity_ttl_ms\":0,\"absolute_ttl_ms\":0,\"last_event_id\":1},"
		 "\"image\":{\"bytes\":%zu}}",
		 sizeof raw);
	cr_assert_eq(ctl_send(conn, req, strlen(req), &m, 1), 0);
	struct pollfd pf = { .fd = conn, .events = POLLIN };
	cr_assert_eq(poll(&pf, 1, 10000), 1, "no reply");
	char text[2048];
	ssize_t n = recv(conn, text, sizeof text - 1, 0);
	cr_assert_gt(n, 0);
	text[n] = '\0';
	cr_expect(strstr(text, "\"ok\":false") && strstr(text, "SHMB_EINVAL") &&
			  strstr(text, "ts_ms"),
		  "a raw image with ts_ms 2^63-1: %s", text);
	close(m);
	close(conn);
	cr_expect_eq(n_sessions(b->name), 0);

	/* At 2^53 it restores, and the segment's dump restores whole. */
	ev.ts_ms = (int64_t)(UINT64_C(1) << 53);
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	struct h_result r;
	h_shmctl(&r, b->name, "dump", NULL);
	cr_assert_eq(r.status, 0, "dump: %s", r.err);
	char path[256];
	snprintf(path, sizeof path, "%s/dump.json", h_runtime_dir());
	FILE *f = fopen(path, "we");
	cr_assert_not_null(f);
	fputs(r.out, f);
	fclose(f);
	h_result_free(&r);
	H_OK(shmb_session_delete(c, SIDX, "acme", NULL));
	h_shmctl(&r, b->name, "restore", path, NULL);
	cr_expect_eq(r.status, 0, "restore of the dump: %s%s", r.out, r.err);
	h_result_free(&r);
	unlink(path);
	cr_expect_eq(n_sessions(b->name), 1);
	h_detach(c);
}

/* ---- a restore racing a delete and a second restore of the same id ---- */

struct racer {
	const char *name;
	int op; /* 0 restore, 1 delete */
	unsigned ok, conflict, gone;
};

static void *race_loop(void *arg)
{
	struct racer *r = arg;
	shmb_client *c;
	if (shmb_attach(r->name, &c) != 0)
		return NULL;
	shmb_image_event ev = { .id = 2, .data = "xyz", .len = 3 };
	shmb_image_attr at = { .key = "k", .val = "v", .len = 1 };
	shmb_session_image img = {
		ACME_NOW,      .last_event_id = 2, .events = &ev,
		.n_events = 1, .attrs = &at,       .n_attrs = 1,
	};
	for (int i = 0; i < 300; i++) {
		int rc = r->op == 0 ? shmb_session_restore(c, &img)
				    : shmb_session_delete(c, SIDX, "acme", NULL);
		if (rc == 0)
			r->ok++;
		else if (rc == SHMB_ECONFLICT)
			r->conflict++;
		else if (rc == SHMB_ENOENT)
			r->gone++;
		else
			break;
	}
	shmb_detach(c);
	return NULL;
}

H_TEST(redteam16_core, restores_racing_deletes_of_the_same_id_stay_consistent)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	struct racer r[3] = { { .name = b->name, .op = 0 },
			      { .name = b->name, .op = 0 },
			      { .name = b->name, .op = 1 } };
	pthread_t th[3];
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, race_loop, &r[i]), 0);
	for (int i = 0; i < 3; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < 3; i++)
		cr_expect_eq(r[i].ok + r[i].conflict + r[i].gone, 300,
			     "racer %d stopped on an unexpected error", i);
	/* Every successful restore but the one still there was deleted once. */
	int live = n_sessions(b->name);
	cr_expect_eq(r[0].ok + r[1].ok, r[2].ok + (unsigned)live,
		     "%u + %u restores, %u deletes, %d live", r[0].ok, r[1].ok, r[2].ok, live);
	shmb_client *c = h_attach(b->name);
	shmb_session *s;
	if (live) {
		H_OK(shmb_session_open(c, SIDX, "acme", NULL, &s));
		char v[4];
		H_EXPECT_RC(shmb_attr_get(s, "k", v, sizeof v, NULL), 1);
		shmb_session_info info;
		H_OK(shmb_session_stat(s, &info));
		cr_expect_eq(info.last_event_id, 2);
		shmb_session_close(s);
	}
	expect_verify_clean(b->name);
	h_detach(c);
}

/* ---- a session of another node, restored here ---- */

H_TEST(redteam16_core, shmctl_shows_a_restored_session_of_another_node)
{
	struct h_broker *b = h_broker_start(H_ARGS("--node-id", "2"));
	shmb_client *c = h_attach(b->name);
	shmb_session_image img = { .sid = "0009AAAABBBBCCCCDDDDEEEEFFFF0001", /* uppercase */
				   .tenant = "acme",
				   .created_at_ms = h_wall_ms(),
				   .last_accessed_at_ms = h_wall_ms() };
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	cJSON *j = h_shmctl_json(b->name, "show", SIDX, NULL);
	cr_expect_eq(h_json_num(j, "node"), 9);
	cr_expect_eq(h_json_num(j, "node_id"), 2);
	cr_expect_str_eq(cJSON_GetObjectItem(j, "id")->valuestring, SIDX);
	cJSON_Delete(j);
	struct h_result r;
	h_shmctl(&r, b->name, "show", SIDX, NULL);
	cr_expect(strstr(r.out, "node: 9 (this broker's node_id: 2)"), "%s%s", r.out, r.err);
	h_result_free(&r);
	H_EXPECT_RC(shmb_sid_node(img.sid), 9);
	H_EXPECT_RC(shmb_node_id(c), 2);
	/* Sessions this node creates still carry its own tag. */
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "acme", NULL, sid));
	cr_expect(strncmp(sid, "0002", 4) == 0, "%s", sid);
	h_detach(c);
}

/* An area whose last bitmap word has one cell (65 cells): two 32-cell blocks and a 1-cell one
 * fill it exactly, the largest value and key a block can hold among them. */
H_TEST(redteam16_core, an_area_with_a_partial_last_word_fills_exactly)
{
	struct h_broker *b = h_broker_start(H_ARGS("--attr-bytes", "4160"));
	shmb_client *c = h_attach(b->name);
	static char key64[65], big[SHMB_ATTR_MAX];
	memset(key64, 'K', 64);
	memset(big, 'z', sizeof big);
	shmb_image_attr at[3] = {
		{ .key = key64, .val = big, .len = SHMB_ATTR_MAX }, /* 8 + 64 + 1976: 32 cells */
		{ .key = "x", .val = big, .len = SHMB_ATTR_MAX },   /* 8 + 1 + 1976: 32 cells */
		{ .key = "y", .val = big, .len = SHMB_ATTR_CELL - 9 },
	};
	shmb_session_image img = { ACME_NOW, .attrs = at, .n_attrs = 3 };
	H_EXPECT_RC(shmb_session_restore(c, &img), 0);
	shmb_session *s;
	H_OK(shmb_session_open(c, SIDX, "acme", NULL, &s));
	static char got[SHMB_ATTR_MAX];
	for (int i = 0; i < 3; i++) {
		uint64_t version = 0;
		int n = shmb_attr_get(s, at[i].key, got, sizeof got, &version);
		cr_expect_eq(n, (int)at[i].len, "%s: %s", at[i].key, shmb_err_name(n));
		cr_expect_eq(version, 1);
		cr_expect(n == (int)at[i].len && memcmp(got, big, at[i].len) == 0);
	}
	H_EXPECT_RC(shmb_attr_set(s, "w", "", 0), SHMB_EQUOTA);
	/* (A replacement needs its new block before the old one is freed: full is full.) */
	H_OK(shmb_attr_delete(s, "y"));
	H_OK(shmb_attr_set_if(s, "y", "1", 1, 0));
	shmb_session_close(s);
	/* One cell more does not fit anywhere: refused, nothing made. */
	at[2].len = SHMB_ATTR_CELL - 8;
	img.sid = "0009aaaabbbbccccddddeeeeffff0002";
	H_EXPECT_RC(shmb_session_restore(c, &img), SHMB_ETOOBIG);
	end_with_one_session(b, c);
}
