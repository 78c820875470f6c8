/* test_attrs.c - session attributes (docs/attributes.md): semantics and errors of set, set-if,
 * get, delete and list; attributes seen across processes; set-if races between processes
 * (exactly one winner per version); readers never see a torn or mixed value; a session's
 * attributes end with it (delete, expiry) and a recycled record starts empty; shmctl show.
 * The kill tests at every fault point are in test_attr_faults.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

TestSuite(attrs, .init = h_setup, .fini = h_teardown, .timeout = 120);

static shmb_session *new_session(shmb_client *c, char sid[SHMB_SID_LEN + 1])
{
	shmb_session *s = NULL;
	H_OK(shmb_session_create(c, "t", NULL, sid));
	H_OK(shmb_session_open(c, sid, "t", NULL, &s));
	return s;
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
