/* test_attrs.c - session attributes (docs/attributes.md): semantics and errors of set, set-if,
 * get, delete and list; attributes seen across processes; set-if races between processes
 * (exactly one winner per version); readers never see a torn or mixed value; a session's
 * attributes end with it (delete, expiry) and a recycled record starts empty; a damaged area
 * (and a keyed-hash collision, forged) gives codes, never a crash; shmctl show.
 * The kill tests at every fault point are in test_attr_faults.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "attr.h"
#include "harness.h"
#include "internal.h"

TestSuite(attrs, .init = h_setup, .fini = h_teardown, .timeout = 120);

static shmb_session *new_session(shmb_client *c, char sid[SHMB_SID_LEN + 1])
{
	shmb_session *s = NULL;
	H_OK(shmb_session_create(c, "t", NULL, sid));
	H_OK(shmb_session_open(c, sid, "t", NULL, &s));
	return s;
}

/* In a child: tell the parent we are ready (one byte), then wait for its "go" attribute, so
 * that racing children start together. 0, or -1 after 30 s. */
static int ready_go(shmb_session *s, int wfd)
{
	char one = 1;
	if (h_write_all(wfd, &one, 1) < 0)
		return -1;
	for (int64_t end = h_now_ms() + 30000; h_now_ms() < end;)
		if (shmb_attr_get(s, "go", NULL, 0, NULL) == 0)
			return 0;
	return -1;
}

/* In the parent: await the ready byte of n children, then set "go". */
static void start_together(shmb_session *s, struct h_child *ch, int n)
{
	for (int i = 0; i < n; i++) {
		char one;
		cr_assert_eq(h_child_read(&ch[i], &one, 1, 30000), 1, "child %d not ready", i);
	}
	H_OK(shmb_attr_set(s, "go", NULL, 0));
}

H_TEST(attrs, set_get_delete)
{
	h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	char buf[SHMB_ATTR_MAX];
	uint64_t v = 99;

	H_EXPECT_RC(shmb_attr_get(s, "proto", buf, sizeof buf, &v), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_set(s, "proto", "2025-06-18", 10), 0);
	H_EXPECT_RC(shmb_attr_get(s, "proto", buf, sizeof buf, &v), 10);
	cr_assert(memcmp(buf, "2025-06-18", 10) == 0);
	cr_assert_eq(v, 1);
	/* Every change bumps the version, an equal value too. */
	H_EXPECT_RC(shmb_attr_set(s, "proto", "2025-06-18", 10), 0);
	H_EXPECT_RC(shmb_attr_get(s, "proto", buf, sizeof buf, &v), 10);
	cr_assert_eq(v, 2);
	/* An empty value is a value. */
	H_EXPECT_RC(shmb_attr_set(s, "empty", NULL, 0), 0);
	H_EXPECT_RC(shmb_attr_get(s, "empty", buf, sizeof buf, &v), 0);
	cr_assert_eq(v, 1);
	H_EXPECT_RC(shmb_attr_get(s, "empty", NULL, 0, NULL), 0);
	/* Too small a buffer: SHMB_ETOOBIG and nothing copied. */
	memset(buf, 'x', sizeof buf);
	H_EXPECT_RC(shmb_attr_get(s, "proto", buf, 9, &v), SHMB_ETOOBIG);
	cr_assert_eq(buf[0], 'x');
	H_EXPECT_RC(shmb_attr_get(s, "proto", NULL, 0, NULL), SHMB_ETOOBIG);
	/* Delete: ENOENT after, a delete bumps the version and a later set continues. */
	H_EXPECT_RC(shmb_attr_delete(s, "proto"), 0);
	H_EXPECT_RC(shmb_attr_get(s, "proto", buf, sizeof buf, &v), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_delete(s, "proto"), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_delete(s, "never"), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_set(s, "proto", "x", 1), 0);
	H_EXPECT_RC(shmb_attr_get(s, "proto", buf, sizeof buf, &v), 1);
	cr_assert_eq(v, 4);
	/* The largest value round-trips. */
	static uint8_t big[SHMB_ATTR_MAX], back[SHMB_ATTR_MAX];
	for (size_t i = 0; i < sizeof big; i++)
		big[i] = (uint8_t)(i * 7 + 3);
	char key64[SHMB_ATTR_KEY_MAX + 1];
	memset(key64, 'k', SHMB_ATTR_KEY_MAX);
	key64[SHMB_ATTR_KEY_MAX] = '\0';
	H_EXPECT_RC(shmb_attr_set(s, key64, big, sizeof big), 0);
	H_EXPECT_RC(shmb_attr_get(s, key64, back, sizeof back, NULL), SHMB_ATTR_MAX);
	cr_assert(memcmp(big, back, sizeof big) == 0);
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(attrs, set_if)
{
	h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	uint64_t v = 0;
	char buf[16];
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "a", 1, 1), SHMB_ECONFLICT); /* unset: only 0 */
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "a", 1, 0), 0);
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "b", 1, 0), SHMB_ECONFLICT); /* exists now */
	H_EXPECT_RC(shmb_attr_get(s, "n", buf, sizeof buf, &v), 1);
	cr_assert_eq(v, 1);
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "b", 1, 2), SHMB_ECONFLICT);
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "b", 1, 1), 0);
	H_EXPECT_RC(shmb_attr_get(s, "n", buf, sizeof buf, &v), 1);
	cr_assert_eq(buf[0], 'b');
	cr_assert_eq(v, 2);
	/* After a delete (version 3) the key is unset: 0 matches, 3 does not. */
	H_EXPECT_RC(shmb_attr_delete(s, "n"), 0);
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "c", 1, 3), SHMB_ECONFLICT);
	H_EXPECT_RC(shmb_attr_set_if(s, "n", "c", 1, 0), 0);
	H_EXPECT_RC(shmb_attr_get(s, "n", buf, sizeof buf, &v), 1);
	cr_assert_eq(v, 4);
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(attrs, bad_arguments)
{
	h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	static char big[SHMB_ATTR_MAX + 1];
	char buf[8];
	char key65[SHMB_ATTR_KEY_MAX + 2];
	memset(key65, 'k', SHMB_ATTR_KEY_MAX + 1);
	key65[SHMB_ATTR_KEY_MAX + 1] = '\0';
	const char *bad_keys[] = { "", "with space", "tab\t", "caf\xc3\xa9", "del\x7f", key65 };
	for (size_t i = 0; i < sizeof bad_keys / sizeof *bad_keys; i++) {
		H_EXPECT_RC(shmb_attr_set(s, bad_keys[i], "v", 1), SHMB_EINVAL);
		H_EXPECT_RC(shmb_attr_set_if(s, bad_keys[i], "v", 1, 0), SHMB_EINVAL);
		H_EXPECT_RC(shmb_attr_get(s, bad_keys[i], buf, sizeof buf, NULL), SHMB_EINVAL);
		H_EXPECT_RC(shmb_attr_delete(s, bad_keys[i]), SHMB_EINVAL);
	}
	H_EXPECT_RC(shmb_attr_set(s, NULL, "v", 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_set(NULL, "k", "v", 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_set(s, "k", NULL, 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_set(s, "k", big, sizeof big), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_get(s, "k", NULL, 4, NULL), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attr_list(s, NULL, NULL), SHMB_EINVAL);
	/* Nothing was stored by any of it. */
	H_EXPECT_RC(shmb_attr_get(s, "k", buf, sizeof buf, NULL), SHMB_ENOENT);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- across processes */

static int set_child(void *arg, int wfd)
{
	(void)wfd;
	const char *sid = arg;
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	if (shmb_attach(NULL, &c) < 0 || shmb_session_open(c, sid, "t", NULL, &s) < 0)
		return 2;
	int rc = shmb_attr_set(s, "capabilities", "{\"roots\":{}}", 12);
	shmb_session_close(s);
	shmb_detach(c);
	return rc == 0 ? 0 : 3;
}

static int get_child(void *arg, int wfd)
{
	(void)wfd;
	const char *sid = arg;
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	if (shmb_attach(NULL, &c) < 0 || shmb_session_open(c, sid, "t", NULL, &s) < 0)
		return 2;
	char buf[64];
	uint64_t v = 0;
	int rc = shmb_attr_get(s, "capabilities", buf, sizeof buf, &v);
	shmb_session_close(s);
	shmb_detach(c);
	return rc == 12 && memcmp(buf, "{\"roots\":{}}", 12) == 0 && v == 1 ? 0 : 4;
}

H_TEST(attrs, across_processes)
{
	h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	struct h_child a, b;
	h_child_start(&a, set_child, sid);
	cr_assert_eq(h_child_wait(&a, 10000), 0, "the setting process failed");
	h_child_start(&b, get_child, sid);
	cr_assert_eq(h_child_wait(&b, 10000), 0, "the other process did not see the value");
	char buf[64];
	H_EXPECT_RC(shmb_attr_get(s, "capabilities", buf, sizeof buf, NULL), 12);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- budgets */

H_TEST(attrs, quota_of_bytes_and_keys)
{
	/* 256 bytes = 4 cells; 4 keys. */
	h_broker_start(H_ARGS("--attr-bytes", "256", "--attr-keys", "4"));
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	char v[200] = { 0 };
	/* A value of 8 + 1 + 119 = 128 bytes takes 2 cells: two fit, a third does not. */
	H_EXPECT_RC(shmb_attr_set(s, "a", v, 119), 0);
	H_EXPECT_RC(shmb_attr_set(s, "b", v, 119), 0);
	H_EXPECT_RC(shmb_attr_set(s, "c", v, 1), SHMB_EQUOTA);
	H_EXPECT_RC(shmb_attr_get(s, "c", v, sizeof v, NULL), SHMB_ENOENT);
	/* More than the whole budget: EQUOTA, not EINVAL (the value itself is allowed). */
	H_EXPECT_RC(shmb_attr_set(s, "big", v, 200 + 56 + 1), SHMB_EQUOTA);
	/* Replacing a value needs room for both for a moment: a 2-cell value cannot be
	 * replaced in a full area, a delete makes room. */
	H_EXPECT_RC(shmb_attr_set(s, "a", v, 10), SHMB_EQUOTA);
	H_EXPECT_RC(shmb_attr_delete(s, "b"), 0);
	H_EXPECT_RC(shmb_attr_set(s, "a", v, 10), 0);
	H_EXPECT_RC(shmb_attr_set(s, "c", v, 10), 0);
	/* Keys: a, b, c, e are 4 distinct keys over the session's life (big was refused before
	 * taking one): a fifth is refused even after deletes, known ones still work. */
	H_EXPECT_RC(shmb_attr_set(s, "e", v, 1), 0);
	H_EXPECT_RC(shmb_attr_delete(s, "e"), 0);
	H_EXPECT_RC(shmb_attr_set(s, "f", v, 1), SHMB_EQUOTA);
	H_EXPECT_RC(shmb_attr_get(s, "f", v, sizeof v, NULL), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_set(s, "b", v, 1), 0);
	H_EXPECT_RC(shmb_attr_get(s, "b", v, sizeof v, NULL), 1);
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(attrs, disabled)
{
	h_broker_start(H_ARGS("--attr-bytes", "0"));
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	char buf[8];
	H_EXPECT_RC(shmb_attr_set(s, "k", "v", 1), SHMB_EQUOTA);
	H_EXPECT_RC(shmb_attr_set_if(s, "k", "v", 1, 0), SHMB_EQUOTA);
	H_EXPECT_RC(shmb_attr_get(s, "k", buf, sizeof buf, NULL), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_delete(s, "k"), SHMB_ENOENT);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- list */

struct seen {
	int n;
	char keys[8][SHMB_ATTR_KEY_MAX + 1];
	uint64_t versions[8];
	size_t lens[8];
};

static int visit(void *arg, const char *key, const void *val, size_t len, uint64_t version)
{
	struct seen *s = arg;
	(void)val;
	if (s->n < 8) {
		snprintf(s->keys[s->n], sizeof s->keys[0], "%s", key);
		s->versions[s->n] = version;
		s->lens[s->n] = len;
	}
	s->n++;
	return 0;
}

H_TEST(attrs, list)
{
	h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	H_OK(shmb_attr_set(s, "one", "1", 1));
	H_OK(shmb_attr_set(s, "two", "22", 2));
	H_OK(shmb_attr_set(s, "two", "222", 3));
	H_OK(shmb_attr_set(s, "gone", "x", 1));
	H_OK(shmb_attr_delete(s, "gone"));
	struct seen seen = { 0 };
	H_EXPECT_RC(shmb_attr_list(s, visit, &seen), 2);
	cr_assert_eq(seen.n, 2);
	int one = strcmp(seen.keys[0], "one") == 0 ? 0 : 1;
	cr_assert_str_eq(seen.keys[one], "one");
	cr_assert_str_eq(seen.keys[1 - one], "two");
	cr_assert_eq(seen.lens[1 - one], 3);
	cr_assert_eq(seen.versions[1 - one], 2);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- lifecycle */

H_TEST(attrs, session_end_frees_them)
{
	/* One record, so the next session reuses it; a fast sweep for the expiry half. */
	h_broker_start(H_ARGS("--max-sessions", "1", "--attr-bytes", "256", "--attr-keys", "4",
			      "--sweep-interval-ms", "20"));
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1], sid2[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	char v[256] = { 0 };
	H_OK(shmb_attr_set(s, "a", v, 119));
	H_OK(shmb_attr_set(s, "b", v, 119));
	H_OK(shmb_session_delete(c, sid, "t", NULL));
	H_EXPECT_RC(shmb_attr_get(s, "a", v, sizeof v, NULL), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_set(s, "a", v, 1), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_delete(s, "a"), SHMB_ENOENT);
	shmb_session_close(s);

	int rc = SHMB_EFULL;
	H_POLL_UNTIL((rc = shmb_session_create(c, "t", NULL, sid2)) != SHMB_EFULL, 5000);
	H_OK(rc);
	shmb_session *s2 = NULL;
	H_OK(shmb_session_open(c, sid2, "t", NULL, &s2));
	/* The recycled record starts empty: no key, no version, the whole budget and keys. */
	struct seen seen = { 0 };
	H_EXPECT_RC(shmb_attr_list(s2, visit, &seen), 0);
	H_EXPECT_RC(shmb_attr_get(s2, "a", v, sizeof v, NULL), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_set_if(s2, "a", v, 119, 0), 0);
	uint64_t ver = 0;
	H_EXPECT_RC(shmb_attr_get(s2, "a", v, sizeof v, &ver), 119);
	cr_assert_eq(ver, 1);
	H_OK(shmb_attr_set(s2, "c", v, 1));
	H_OK(shmb_attr_set(s2, "d", v, 1));
	H_EXPECT_RC(shmb_attr_set(s2, "e", v, 1), SHMB_EQUOTA); /* 4 cells of 4 in use */
	shmb_session_close(s2);
	h_detach(c);
}

H_TEST(attrs, expiry_frees_them)
{
	h_broker_start(H_ARGS("--max-sessions", "1", "--inactivity-ttl-ms", "200",
			      "--sweep-interval-ms", "20"));
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1], sid2[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	H_OK(shmb_attr_set(s, "login", "alice", 5));
	char v[16];
	/* Attribute calls do not touch the session: it expires regardless. */
	cr_assert(H_POLL_UNTIL(shmb_attr_get(s, "login", v, sizeof v, NULL) == SHMB_ENOENT, 5000));
	shmb_session_close(s);
	int rc = SHMB_EFULL;
	H_POLL_UNTIL((rc = shmb_session_create(c, "t", NULL, sid2)) != SHMB_EFULL, 5000);
	H_OK(rc);
	shmb_session *s2 = NULL;
	H_OK(shmb_session_open(c, sid2, "t", NULL, &s2));
	H_EXPECT_RC(shmb_attr_get(s2, "login", v, sizeof v, NULL), SHMB_ENOENT);
	shmb_session_close(s2);
	h_detach(c);
}

/* ---------------------------------------------------------------- races */

#define INCREMENTS 10000

/* get + set_if retry loop: a decimal counter. Reports its own wins and conflicts. */
struct incr_report {
	int rc;
	uint32_t conflicts;
};

static int incr_child(void *arg, int wfd)
{
	const char *sid = arg;
	struct incr_report rep = { 0 };
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	if ((rep.rc = shmb_attach(NULL, &c)) < 0 ||
	    (rep.rc = shmb_session_open(c, sid, "t", NULL, &s)) < 0)
		goto out;
	if (ready_go(s, wfd) < 0)
		return 5;
	for (int i = 0; i < INCREMENTS;) {
		char buf[32];
		uint64_t v = 0;
		int n = shmb_attr_get(s, "counter", buf, sizeof buf - 1, &v);
		if (n < 0) {
			rep.rc = n;
			break;
		}
		buf[n] = '\0';
		char out[32];
		int len = snprintf(out, sizeof out, "%ld", strtol(buf, NULL, 10) + 1);
		int rc = shmb_attr_set_if(s, "counter", out, (size_t)len, v);
		if (rc == SHMB_ECONFLICT) {
			rep.conflicts++;
			continue;
		}
		if (rc < 0) {
			rep.rc = rc;
			break;
		}
		i++;
	}
	shmb_session_close(s);
	shmb_detach(c);
out:
	return h_write_all(wfd, &rep, sizeof rep) == 0 ? 0 : 3;
}

H_TEST(attrs, set_if_race_loses_nothing, .timeout = 240)
{
	h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	H_OK(shmb_attr_set_if(s, "counter", "0", 1, 0));
	struct h_child ch[2];
	for (int i = 0; i < 2; i++)
		h_child_start(&ch[i], incr_child, sid);
	start_together(s, ch, 2);
	uint32_t conflicts = 0;
	for (int i = 0; i < 2; i++) {
		struct incr_report rep;
		cr_assert_eq(h_child_read(&ch[i], &rep, sizeof rep, 200000), (ssize_t)sizeof rep);
		cr_assert_eq(h_child_wait(&ch[i], 10000), 0);
		cr_assert_eq(rep.rc, 0, "child %d: %s (%s)", i, shmb_err_name(rep.rc),
			     shmb_strerror(rep.rc));
		conflicts += rep.conflicts;
	}
	char buf[32];
	uint64_t v = 0;
	int n = shmb_attr_get(s, "counter", buf, sizeof buf - 1, &v);
	H_OK(n);
	buf[n] = '\0';
	cr_assert_str_eq(buf, "20000", "lost updates: the counter is %s", buf);
	/* Version 1 from the first set, then exactly one per successful set_if. */
	cr_assert_eq(v, 1 + 2 * INCREMENTS);
	cr_log_info("set_if race: 20000 increments, %u conflicts retried", conflicts);
	shmb_session_close(s);
	h_detach(c);
}

/* Two patterns of different lengths, each all one letter: a read of any other length, or with a
 * byte of the other letter, is torn or mixed. Blocks of 15 and 16 cells in 128 cells (four bitmap
 * words of 32, first fit): freed cells are reused at once, under the reader's copies. */
#define PAT_A_LEN 900
#define PAT_B_LEN 1000

static int writer_child(void *arg, int wfd)
{
	(void)wfd;
	const char *sid = arg;
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	if (shmb_attach(NULL, &c) < 0 || shmb_session_open(c, sid, "t", NULL, &s) < 0)
		return 2;
	if (ready_go(s, wfd) < 0)
		return 5;
	static char a[PAT_A_LEN], b[PAT_B_LEN];
	memset(a, 'a', sizeof a);
	memset(b, 'b', sizeof b);
	int rc = 0;
	/* Until the reader has seen enough changes ("enough"), at most 30 s: on a loaded 2-core
	 * machine the reader gets to run beside a writer only now and then. */
	int64_t end = h_now_ms() + 30000;
	for (int i = 0; rc == 0 && (i & 255 || (h_now_ms() < end &&
						shmb_attr_get(s, "enough", NULL, 0, NULL) != 0));
	     i++)
		rc = i % 2 ? shmb_attr_set(s, "v", a, sizeof a)
			   : shmb_attr_set(s, "v", b, sizeof b);
	if (rc == 0) {
		char k[16];
		snprintf(k, sizeof k, "done%d", (int)getpid() % 100000);
		rc = shmb_attr_set(s, k, NULL, 0);
	}
	shmb_session_close(s);
	shmb_detach(c);
	return rc == 0 ? 0 : 10 - rc; /* 10 + the code's magnitude */
}

struct hammer_report {
	int rc;
	uint32_t reads, bad, flips; /* flips: reads whose length differed from the previous one */
};

static int count_done(void *arg, const char *key, const void *val, size_t len, uint64_t version)
{
	(void)val, (void)len, (void)version;
	*(int *)arg += strncmp(key, "done", 4) == 0;
	return 0;
}

static int reader_child(void *arg, int wfd)
{
	const char *sid = arg;
	struct hammer_report rep = { 0 };
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	if ((rep.rc = shmb_attach(NULL, &c)) < 0 ||
	    (rep.rc = shmb_session_open(c, sid, "t", NULL, &s)) < 0)
		goto out;
	static char buf[SHMB_ATTR_MAX];
	if (ready_go(s, wfd) < 0)
		return 5;
	/* Until it has seen 2,000 changes (or 20 s passed), then until both writers are done
	 * (each sets a "done" key last), at most 60 s in all. */
	int last = 0, enough = 0;
	int64_t start = h_now_ms();
	for (int64_t end = start + 60000; h_now_ms() < end;) {
		if (!enough && (rep.flips >= 2000 || h_now_ms() > start + 20000)) {
			enough = 1;
			shmb_attr_set(s, "enough", NULL, 0);
		}
		if (enough && (rep.reads & 1023) == 1023) {
			int done = 0;
			shmb_attr_list(s, count_done, &done);
			if (done == 2)
				break;
		}
		int n = shmb_attr_get(s, "v", buf, sizeof buf, NULL);
		if (n < 0) {
			rep.rc = n;
			break;
		}
		rep.reads++;
		char want = n == PAT_A_LEN ? 'a' : n == PAT_B_LEN ? 'b' : 0;
		int ok = want != 0;
		for (int j = 0; ok && j < n; j++)
			ok = buf[j] == want;
		rep.bad += !ok;
		rep.flips += n != last;
		last = n;
	}
	shmb_session_close(s);
	shmb_detach(c);
out:
	return h_write_all(wfd, &rep, sizeof rep) == 0 ? 0 : 3;
}

H_TEST(attrs, readers_never_see_a_torn_value, .timeout = 240)
{
	h_broker_start(H_ARGS("--attr-bytes", "8192"));
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	static char a[PAT_A_LEN];
	memset(a, 'a', sizeof a);
	H_OK(shmb_attr_set(s, "v", a, sizeof a));
	struct h_child w[2], r;
	h_child_start(&r, reader_child, sid);
	for (int i = 0; i < 2; i++)
		h_child_start(&w[i], writer_child, sid);
	start_together(s, &r, 1);
	start_together(s, w, 2);
	struct hammer_report rep;
	cr_assert_eq(h_child_read(&r, &rep, sizeof rep, 200000), (ssize_t)sizeof rep);
	cr_assert_eq(h_child_wait(&r, 10000), 0);
	for (int i = 0; i < 2; i++) {
		int st = h_child_wait(&w[i], 200000);
		cr_assert_eq(st, 0, "writer %d failed: %d %s", i, st,
			     st > 10 ? shmb_err_name(10 - st) : "");
	}
	cr_assert_eq(rep.rc, 0, "reader: %s (%s)", shmb_err_name(rep.rc), shmb_strerror(rep.rc));
	cr_assert_eq(rep.bad, 0, "%u of %u reads were torn or mixed", rep.bad, rep.reads);
	/* The reader ran while the writers changed the value (else it proves nothing). */
	cr_assert_geq(rep.flips, 200, "only %u changes seen in %u reads", rep.flips, rep.reads);
	cr_log_info("torn-read hammer: %u reads, %u changes seen, none torn", rep.reads, rep.flips);
	/* The budget is whole again: the writers freed every old block. 8192 bytes are 128
	 * cells: 16 values of 8 cells fill them exactly. */
	static char v[512];
	struct seen seen = { 0 };
	H_EXPECT_RC(shmb_attr_list(s, visit, &seen), 5);
	for (int i = 0; i < 5; i++) /* all of them, so that no block splits the free space */
		H_OK(shmb_attr_delete(s, seen.keys[i]));
	H_OK(shmb_attr_set(s, "v", v, 512 - 8 - 1));
	for (int i = 0; i < 15; i++) {
		char k[8];
		snprintf(k, sizeof k, "k%02d", i);
		H_OK(shmb_attr_set(s, k, v, 512 - 8 - 3));
	}
	H_EXPECT_RC(shmb_attr_set(s, "k00", v, 1), SHMB_EQUOTA);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- damage */

static void expect_verify_problem(const char *name, const char *needle)
{
	struct h_result r;
	h_shmctl(&r, name, "verify", NULL);
	cr_expect_eq(r.status, 4, "shmctl verify: exit %d, want 4\n%s%s", r.status, r.out, r.err);
	cr_expect(h_contains(r.out, needle) || h_contains(r.err, needle),
		  "shmctl verify does not mention \"%s\":\n%s%s", needle, r.out, r.err);
	h_result_free(&r);
}

H_TEST(attrs, damaged_area)
{
	h_broker_start(H_NOARGS);
	const char *name = getenv("SHMB_NAME");
	shmb_client *c = h_attach(name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	H_OK(shmb_attr_set(s, "k", "value", 5));
	H_OK(shmb_attr_set(s, "other", "x", 1));
	struct attr_area a;
	cr_assert_eq(attr_area_of(&c->seg, s->idx, &a), 0);
	struct shmb_attr_entry *e = attr_find(&a, attr_hash(&c->seg, "k", 1), 0);
	cr_assert_not_null(e);
	char buf[SHMB_ATTR_MAX];
	uint64_t good = e->word;

	/* A range outside the area. */
	e->word = ATTR_WORD(ATTR_VERSION(good), SHMB_ATTR_RANGE(1000, 8));
	H_EXPECT_RC(shmb_attr_get(s, "k", buf, sizeof buf, NULL), SHMB_ECORRUPT);
	expect_verify_problem(name, "outside");
	/* A block header that does not match its entry. */
	e->word = good;
	struct shmb_attr_block *blk =
		(struct shmb_attr_block *)(a.cells + ATTR_START(good) * SHMB_ATTR_CELL);
	blk->val_len = 1500;
	H_EXPECT_RC(shmb_attr_get(s, "k", buf, sizeof buf, NULL), SHMB_ECORRUPT);
	expect_verify_problem(name, "does not match");
	blk->val_len = 5;
	H_EXPECT_RC(shmb_attr_get(s, "k", buf, sizeof buf, NULL), 5);
	/* Another key in k's block: what a keyed-hash collision of two keys looks like. k is then
	 * unset for get and delete, and a set of k is refused; nothing is changed. */
	char *kp = (char *)(blk + 1);
	*kp = 'j';
	H_EXPECT_RC(shmb_attr_get(s, "k", buf, sizeof buf, NULL), SHMB_ENOENT);
	H_EXPECT_RC(shmb_attr_set(s, "k", "new", 3), SHMB_EQUOTA);
	H_EXPECT_RC(shmb_attr_delete(s, "k"), SHMB_ENOENT);
	cr_assert_eq(e->word, good, "a refused change changed the word");
	expect_verify_problem(name, "does not hash");
	*kp = 'k';
	H_EXPECT_RC(shmb_attr_get(s, "k", buf, sizeof buf, NULL), 5);

	/* Garbage everywhere: nothing crashes or hangs, each call returns a code. */
	uint64_t x = 0x9e3779b97f4a7c15u;
	uint8_t *p = (uint8_t *)a.entries;
	size_t len = (size_t)(a.cells - p) + (size_t)a.ncells * SHMB_ATTR_CELL;
	for (int round = 0; round < 50; round++) {
		for (size_t i = 0; i < len; i++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			p[i] = (uint8_t)(round % 2 ? x : x & 0x0f); /* small values hit ranges */
		}
		int rc = shmb_attr_get(s, "k", buf, sizeof buf, NULL);
		cr_assert(rc >= SHMB_ECORRUPT || rc == SHMB_ENOENT, "get: %d", rc);
		rc = shmb_attr_set(s, "k", "v", 1);
		cr_assert(rc == 0 || rc == SHMB_EQUOTA || rc == SHMB_ECORRUPT, "set: %d %s", rc,
			  shmb_err_name(rc));
		struct seen seen = { 0 };
		rc = shmb_attr_list(s, visit, &seen);
		cr_assert(rc >= 0 || rc == SHMB_ECORRUPT, "list: %d", rc);
	}
	expect_verify_problem(name, "attribute");
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- shmctl show */

H_TEST(attrs, shmctl_show)
{
	h_broker_start(H_NOARGS);
	const char *name = getenv("SHMB_NAME");
	shmb_client *c = h_attach(name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = new_session(c, sid);
	H_OK(shmb_attr_set(s, "protocolVersion", "2025-06-18", 10));
	H_OK(shmb_attr_set(s, "caps", "{\"roots\": {\"listChanged\": true}}", 32));
	H_OK(shmb_attr_set(s, "blob", "\x00\x01\xff", 3));
	H_OK(shmb_attr_set(s, "gone", "x", 1));
	H_OK(shmb_attr_delete(s, "gone"));

	struct h_result r;
	h_shmctl(&r, name, "show", sid, NULL);
	cr_assert_eq(r.status, 0, "show: exit %d\n%s%s", r.status, r.out, r.err);
	cr_expect(h_contains(r.out, "attributes: 3"), "%s", r.out);
	cr_expect(h_contains(r.out, "protocolVersion = \"2025-06-18\"  (10 bytes, version 1)"),
		  "%s", r.out);
	cr_expect(h_contains(r.out, "caps = {\"roots\":{\"listChanged\":true}}"), "%s", r.out);
	cr_expect(h_contains(r.out, "blob = \"\\x00\\x01\\xff\""), "%s", r.out);
	cr_expect(!h_contains(r.out, "gone"), "%s", r.out);
	h_result_free(&r);

	cJSON *j = h_shmctl_json(name, "show", sid, NULL);
	const cJSON *arr = h_json_get(j, "attributes");
	cr_assert(cJSON_IsArray(arr), "no attributes array");
	cr_assert_eq(cJSON_GetArraySize(arr), 3);
	int found = 0;
	const cJSON *o;
	cJSON_ArrayForEach(o, arr)
	{
		const char *key = cJSON_GetObjectItem(o, "key")->valuestring;
		const char *enc = cJSON_GetObjectItem(o, "encoding")->valuestring;
		const cJSON *val = cJSON_GetObjectItem(o, "value");
		if (strcmp(key, "protocolVersion") == 0) {
			found++;
			cr_expect_str_eq(enc, "text");
			cr_expect_str_eq(val->valuestring, "2025-06-18");
			cr_expect_eq(h_json_num(o, "length"), 10);
			cr_expect_eq(h_json_num(o, "version"), 1);
		} else if (strcmp(key, "caps") == 0) {
			found++;
			cr_expect_str_eq(enc, "json");
			cr_expect(cJSON_IsTrue(h_json_get(val, "roots.listChanged")));
		} else if (strcmp(key, "blob") == 0) {
			found++;
			cr_expect_str_eq(enc, "base64");
			cr_expect_str_eq(val->valuestring, "AAH/");
		}
	}
	cr_expect_eq(found, 3);
	cJSON_Delete(j);
	shmb_session_close(s);
	h_detach(c);
}
