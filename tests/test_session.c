/* test_session.c - sessions through the public API against a real broker: create, open, stat,
 * delete; the tenant and principal binding; argument validation; the session limit; stale
 * handles; touch; the shape of ids; and fork() misuse of a client. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "internal.h"
#include "sid.h"

TestSuite(session, .init = h_setup, .fini = h_teardown, .timeout = 60);

static void create(shmb_client *c, const char *tenant, const char *principal, char *sid)
{
	int rc = shmb_session_create(c, tenant, principal, sid);
	cr_assert_eq(rc, 0, "create(%s, %s): %s (%s)", tenant, principal ? principal : "NULL",
		     shmb_err_name(rc), shmb_strerror(rc));
	cr_assert(h_sid_wellformed(sid), "sid \"%s\" is not 32 lowercase hex", sid);
}

static int open_rc(shmb_client *c, const char *sid, const char *tenant, const char *principal)
{
	shmb_session *s = NULL;
	int rc = shmb_session_open(c, sid, tenant, principal, &s);
	if (rc == 0) {
		cr_assert_not_null(s);
		shmb_session_close(s);
	}
	return rc;
}

H_TEST(session, create_open_stat_delete)
{
	struct h_broker *b = h_broker_start(
		H_ARGS("--inactivity-ttl-ms", "600000", "--absolute-ttl-ms", "7200000"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	int64_t before = h_wall_ms();
	create(c, "acme", "alice", sid);
	int64_t after = h_wall_ms();

	shmb_session *s = NULL;
	H_OK(shmb_session_open(c, sid, "acme", "alice", &s));
	shmb_session_info info;
	memset(&info, 0x5a, sizeof info);
	H_OK(shmb_session_stat(s, &info));
	cr_expect_str_eq(info.sid, sid);
	cr_expect_str_eq(info.tenant, "acme");
	cr_expect_str_eq(info.principal, "alice");
	cr_expect_eq(info.has_principal, 1);
	cr_expect(info.created_at_ms >= before - 5 && info.created_at_ms <= after + 5,
		  "created_at_ms %ld not within [%ld, %ld]", (long)info.created_at_ms, (long)before,
		  (long)after);
	cr_expect_geq(info.last_accessed_at_ms, info.created_at_ms);
	cr_expect_leq(info.last_accessed_at_ms, h_wall_ms() + 5);
	cr_expect_eq(info.inactivity_ttl_ms, 600000u);
	cr_expect_eq(info.absolute_ttl_ms, 7200000u);
	cr_expect_eq(info.last_event_id, 0u);
	cr_expect_eq(info.oldest_event_id, 0u);
	cr_expect_eq(info.subscribers, 0u);
	shmb_session_close(s);

	H_OK(shmb_session_delete(c, sid, "acme", "alice"));
	H_EXPECT_RC(open_rc(c, sid, "acme", "alice"), SHMB_ENOENT);
	H_EXPECT_RC(shmb_session_delete(c, sid, "acme", "alice"), SHMB_ENOENT);
	h_detach(c);
}

H_TEST(session, tenant_and_principal_binding)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char with[SHMB_SID_LEN + 1], without[SHMB_SID_LEN + 1];
	create(c, "acme", "alice", with);
	create(c, "acme", NULL, without);

	H_EXPECT_RC(open_rc(c, with, "acme", "alice"), 0);
	H_EXPECT_RC(open_rc(c, with, "globex", "alice"), SHMB_EPERM);
	H_EXPECT_RC(open_rc(c, with, "acm", "alice"), SHMB_EPERM);
	H_EXPECT_RC(open_rc(c, with, "acmee", "alice"), SHMB_EPERM);
	H_EXPECT_RC(open_rc(c, with, "ACME", "alice"), SHMB_EPERM);
	H_EXPECT_RC(open_rc(c, with, "acme", "bob"), SHMB_EPERM);
	H_EXPECT_RC(open_rc(c, with, "acme", "alic"), SHMB_EPERM);
	H_EXPECT_RC(open_rc(c, with, "acme", NULL), SHMB_EPERM);

	H_EXPECT_RC(open_rc(c, without, "acme", NULL), 0);
	H_EXPECT_RC(open_rc(c, without, "acme", "alice"), SHMB_EPERM);
	H_EXPECT_RC(open_rc(c, without, "globex", NULL), SHMB_EPERM);

	shmb_session *s = NULL;
	H_OK(shmb_session_open(c, without, "acme", NULL, &s));
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_expect_eq(info.has_principal, 0);
	cr_expect_str_eq(info.principal, "");
	shmb_session_close(s);

	/* A delete with the wrong binding is refused and changes nothing. */
	H_EXPECT_RC(shmb_session_delete(c, with, "globex", "alice"), SHMB_EPERM);
	H_EXPECT_RC(shmb_session_delete(c, with, "acme", NULL), SHMB_EPERM);
	H_EXPECT_RC(shmb_session_delete(c, without, "acme", "alice"), SHMB_EPERM);
	H_EXPECT_RC(open_rc(c, with, "acme", "alice"), 0);
	H_EXPECT_RC(open_rc(c, without, "acme", NULL), 0);
	H_OK(shmb_session_delete(c, with, "acme", "alice"));
	H_OK(shmb_session_delete(c, without, "acme", NULL));
	h_detach(c);
}

H_TEST(session, unknown_and_malformed_ids)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1], other[SHMB_SID_LEN + 1];
	create(c, "acme", NULL, sid);

	h_random_sid(other);
	H_EXPECT_RC(open_rc(c, other, "acme", NULL), SHMB_ENOENT);
	H_EXPECT_RC(shmb_session_delete(c, other, "acme", NULL), SHMB_ENOENT);

	const char *bad[] = {
		"",
		"xyz",
		"0123456789abcdef0123456789abcde",   /* 31 */
		"0123456789abcdef0123456789abcdef0", /* 33 */
		"0123456789abcdef0123456789abcdeg",  /* not hex */
		"0123456789abcdef 123456789abcdef",
		"0123456789abcdef0123456789abcd\n",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		shmb_session *s = (shmb_session *)0x1;
		int rc = shmb_session_open(c, bad[i], "acme", NULL, &s);
		cr_expect_eq(rc, SHMB_EINVAL, "open(\"%s\") gave %s (%s), want SHMB_EINVAL", bad[i],
			     shmb_err_name(rc), shmb_strerror(rc));
		rc = shmb_session_delete(c, bad[i], "acme", NULL);
		cr_expect_eq(rc, SHMB_EINVAL, "delete(\"%s\") gave %s (%s), want SHMB_EINVAL",
			     bad[i], shmb_err_name(rc), shmb_strerror(rc));
	}
	/* A prefix of a real sid is malformed, not a match. */
	char prefix[SHMB_SID_LEN];
	memcpy(prefix, sid, SHMB_SID_LEN - 1);
	prefix[SHMB_SID_LEN - 1] = '\0';
	H_EXPECT_RC(open_rc(c, prefix, "acme", NULL), SHMB_EINVAL);

	shmb_session *s = NULL;
	H_EXPECT_RC(shmb_session_open(c, NULL, "acme", NULL, &s), SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_open(c, sid, NULL, NULL, &s), SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_open(c, sid, "acme", NULL, NULL), SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_open(NULL, sid, "acme", NULL, &s), SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_delete(c, NULL, "acme", NULL), SHMB_EINVAL);
	H_EXPECT_RC(open_rc(c, sid, "acme", NULL), 0);
	h_detach(c);
}

/* sid_parse (table-driven) against the obvious definition: every byte value at every position,
 * every length from 0 to 33, upper and lower case. */
static int ref_hex(unsigned char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

static void expect_parse_like_reference(const char *text)
{
	uint8_t want[SHMB_SID_BYTES], got[SHMB_SID_BYTES];
	int ok = strlen(text) == SHMB_SID_LEN;
	for (int i = 0; ok && i < SHMB_SID_LEN; i++)
		ok = ref_hex((unsigned char)text[i]) >= 0;
	for (int i = 0; ok && i < SHMB_SID_BYTES; i++)
		want[i] = (uint8_t)(ref_hex((unsigned char)text[2 * i]) << 4 |
				    ref_hex((unsigned char)text[2 * i + 1]));
	int rc = sid_parse(text, got);
	cr_assert_eq(rc, ok ? 0 : SHMB_EINVAL, "sid_parse(\"%s\") = %s", text, shmb_err_name(rc));
	if (ok)
		cr_assert_arr_eq(got, want, SHMB_SID_BYTES, "sid_parse(\"%s\") value", text);
}

H_TEST(session, sid_parse_every_byte_and_length)
{
	const char *base = "0123456789abcdefABCDEF9876543210";
	char text[SHMB_SID_LEN + 2];
	for (int pos = 0; pos < SHMB_SID_LEN; pos++)
		for (int ch = 1; ch < 256; ch++) {
			memcpy(text, base, SHMB_SID_LEN + 1);
			text[pos] = (char)ch;
			expect_parse_like_reference(text);
		}
	for (int len = 0; len <= SHMB_SID_LEN + 1; len++) {
		for (int i = 0; i < len; i++)
			text[i] = base[i % SHMB_SID_LEN];
		text[len] = '\0';
		expect_parse_like_reference(text);
	}
	uint8_t out[SHMB_SID_BYTES];
	H_EXPECT_RC(sid_parse(NULL, out), SHMB_EINVAL);
}

H_TEST(session, argument_lengths)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	char t64[65], t65[66], p128[129], p129[130];
	memset(t64, 't', 64);
	t64[64] = '\0';
	memset(t65, 't', 65);
	t65[65] = '\0';
	memset(p128, 'p', 128);
	p128[128] = '\0';
	memset(p129, 'p', 129);
	p129[129] = '\0';

	H_EXPECT_RC(shmb_session_create(c, t65, NULL, sid), SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_create(c, "acme", p129, sid), SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_create(c, "", NULL, sid), SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_create(c, "acme", "", sid), SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_create(c, NULL, NULL, sid), SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_create(c, "acme", NULL, NULL), SHMB_EINVAL);
	H_EXPECT_RC(shmb_session_create(NULL, "acme", NULL, sid), SHMB_EINVAL);

	/* Nothing was created by the refused calls. */
	cJSON *st = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(st, "sessions.live"), 0);
	cJSON_Delete(st);

	/* The limits themselves are fine, and the binding is stored exactly. */
	create(c, t64, p128, sid);
	shmb_session *s = NULL;
	H_OK(shmb_session_open(c, sid, t64, p128, &s));
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_expect_str_eq(info.tenant, t64);
	cr_expect_str_eq(info.principal, p128);
	shmb_session_close(s);
	/* Longer than the limit: an invalid argument, whatever the session. */
	H_EXPECT_RC(open_rc(c, sid, t64, p129), SHMB_EINVAL);

	/* Binary-looking but valid bytes are kept verbatim. */
	create(c, "tenant with spaces/and\"quotes", "p\\q", sid);
	H_EXPECT_RC(open_rc(c, sid, "tenant with spaces/and\"quotes", "p\\q"), 0);
	h_detach(c);
}

H_TEST(session, full_then_recovers_after_delete)
{
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "4"));
	shmb_client *c = h_attach(b->name);
	char sids[4][SHMB_SID_LEN + 1], extra[SHMB_SID_LEN + 1];
	for (int i = 0; i < 4; i++)
		create(c, "acme", NULL, sids[i]);
	H_EXPECT_RC(shmb_session_create(c, "acme", NULL, extra), SHMB_EFULL);
	H_EXPECT_RC(shmb_session_create(c, "globex", "x", extra), SHMB_EFULL);
	for (int i = 0; i < 4; i++)
		H_EXPECT_RC(open_rc(c, sids[i], "acme", NULL), 0);

	H_OK(shmb_session_delete(c, sids[2], "acme", NULL));
	/* No reader holds the deleted record, so a slot must come back (the broker may finish the
	 * grace period first: give it a deadline, not a sleep). */
	int rc = SHMB_EFULL;
	int ok = H_POLL_UNTIL((rc = shmb_session_create(c, "globex", NULL, extra)) != SHMB_EFULL,
			      3000);
	cr_assert(ok && rc == 0, "create after delete at the limit: %s (%s)", shmb_err_name(rc),
		  shmb_strerror(rc));
	H_EXPECT_RC(open_rc(c, extra, "globex", NULL), 0);
	H_EXPECT_RC(open_rc(c, sids[2], "acme", NULL), SHMB_ENOENT);
	H_EXPECT_RC(shmb_session_create(c, "acme", NULL, sids[2]), SHMB_EFULL);
	h_detach(c);
}

H_TEST(session, stale_handle_after_delete_and_recycle)
{
	/* One record only: the next create must reuse the record the handle points at. */
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "1"));
	shmb_client *c = h_attach(b->name);
	char a[SHMB_SID_LEN + 1], bsid[SHMB_SID_LEN + 1];
	create(c, "acme", "alice", a);
	shmb_session *s = NULL;
	H_OK(shmb_session_open(c, a, "acme", "alice", &s));
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));

	H_OK(shmb_session_delete(c, a, "acme", "alice"));
	H_EXPECT_RC(shmb_session_stat(s, &info), SHMB_ENOENT);

	int rc = SHMB_EFULL;
	H_POLL_UNTIL((rc = shmb_session_create(c, "globex", "bob", bsid)) != SHMB_EFULL, 3000);
	cr_assert_eq(rc, 0, "create into the recycled record: %s (%s)", shmb_err_name(rc),
		     shmb_strerror(rc));
	/* The record now holds another session: the old handle must not see it. */
	H_EXPECT_RC(shmb_session_stat(s, &info), SHMB_ENOENT);
	H_EXPECT_RC(open_rc(c, a, "acme", "alice"), SHMB_ENOENT);
	H_EXPECT_RC(open_rc(c, a, "globex", "bob"), SHMB_ENOENT);
	shmb_session_close(s);

	shmb_session *s2 = NULL;
	H_OK(shmb_session_open(c, bsid, "globex", "bob", &s2));
	H_OK(shmb_session_stat(s2, &info));
	cr_expect_str_eq(info.sid, bsid);
	cr_expect_str_eq(info.tenant, "globex");
	shmb_session_close(s2);
	h_detach(c);
}

H_TEST(session, open_touches_last_accessed)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	create(c, "acme", NULL, sid);

	shmb_session *s1 = NULL, *s2 = NULL;
	shmb_session_info i1, i2, i3;
	H_OK(shmb_session_open(c, sid, "acme", NULL, &s1));
	H_OK(shmb_session_stat(s1, &i1));
	/* stat does not touch. */
	h_sleep_ms(20);
	H_OK(shmb_session_stat(s1, &i2));
	cr_expect_eq(i2.last_accessed_at_ms, i1.last_accessed_at_ms, "stat touched the session");
	/* A failed open (wrong tenant) does not touch either. */
	H_EXPECT_RC(open_rc(c, sid, "globex", NULL), SHMB_EPERM);
	H_OK(shmb_session_stat(s1, &i2));
	cr_expect_eq(i2.last_accessed_at_ms, i1.last_accessed_at_ms, "a refused open touched");

	int64_t t0 = h_wall_ms();
	H_OK(shmb_session_open(c, sid, "acme", NULL, &s2));
	H_OK(shmb_session_stat(s2, &i3));
	cr_expect_gt(i3.last_accessed_at_ms, i1.last_accessed_at_ms,
		     "open did not advance last_accessed_at_ms (%ld -> %ld)",
		     (long)i1.last_accessed_at_ms, (long)i3.last_accessed_at_ms);
	cr_expect_geq(i3.last_accessed_at_ms, t0 - 2);
	cr_expect_eq(i3.created_at_ms, i1.created_at_ms);
	/* Both handles see the same record. */
	H_OK(shmb_session_stat(s1, &i2));
	cr_expect_eq(i2.last_accessed_at_ms, i3.last_accessed_at_ms);
	shmb_session_close(s1);
	shmb_session_close(s2);
	h_detach(c);
}

H_TEST(session, ids_are_lowercase_hex_and_distinct)
{
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "128"));
	shmb_client *c = h_attach(b->name);
	enum { N = 100 };
	static char sids[N][SHMB_SID_LEN + 1];
	for (int i = 0; i < N; i++) {
		memset(sids[i], 'X', sizeof sids[i]);
		create(c, i % 2 ? "acme" : "globex", NULL, sids[i]);
		cr_assert_eq(sids[i][SHMB_SID_LEN], '\0');
		for (int k = 0; k < i; k++)
			cr_assert_str_neq(sids[i], sids[k], "duplicate sid %s", sids[i]);
	}
	/* Ids look random: not all sharing a prefix (a counter would). */
	int same_prefix = 0;
	for (int i = 1; i < N; i++)
		same_prefix += memcmp(sids[i], sids[0], 8) == 0;
	cr_expect_lt(same_prefix, 3, "ids share their first 8 hex digits: not 128 random bits?");
	cJSON *st = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(st, "sessions.live"), N);
	cr_expect_eq(h_json_num(st, "sessions.max"), 128);
	cJSON_Delete(st);
	h_detach(c);
}

H_TEST(session, many_handles_and_clients)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c1 = h_attach(b->name);
	shmb_client *c2 = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	create(c1, "acme", NULL, sid);
	shmb_session *hs[20];
	for (int i = 0; i < 20; i++)
		H_OK(shmb_session_open(i % 2 ? c1 : c2, sid, "acme", NULL, &hs[i]));
	H_OK(shmb_session_delete(c2, sid, "acme", NULL));
	shmb_session_info info;
	for (int i = 0; i < 20; i++) {
		H_EXPECT_RC(shmb_session_stat(hs[i], &info), SHMB_ENOENT);
		shmb_session_close(hs[i]);
	}
	shmb_session_close(NULL);
	h_detach(c1);
	h_detach(c2);
	shmb_detach(NULL);
}

/* ---- fork(): an inherited client must fail clearly in the child ---- */

struct fork_arg {
	shmb_client *c;
	const char *sid;
};

static int child_uses_inherited(void *p, int wfd)
{
	struct fork_arg *a = p;
	int rc[4];
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = NULL;
	rc[0] = shmb_session_create(a->c, "acme", NULL, sid);
	rc[1] = shmb_session_open(a->c, a->sid, "acme", NULL, &s);
	rc[2] = shmb_session_delete(a->c, a->sid, "acme", NULL);
	/* A fresh attach in the child works. */
	shmb_client *mine = NULL;
	rc[3] = shmb_attach(NULL, &mine);
	if (rc[3] == 0) {
		shmb_session *s2 = NULL;
		if (shmb_session_open(mine, a->sid, "acme", NULL, &s2) != 0)
			rc[3] = 1;
		shmb_session_close(s2);
		shmb_detach(mine);
	}
	shmb_detach(a->c); /* frees only the child's memory */
	return h_write_all(wfd, rc, sizeof rc) == 0 ? 0 : 2;
}

/* Each thread caches the reader of the client it used last (client/attach.c), tagged with the
 * client's uid: a client detached and another attached (often at the same address) in the same
 * thread must get a reader slot of its own, and alternating between two clients must use each
 * one's own slot. */
static uint32_t readers_in_use(shmb_client *c)
{
	uint32_t n = 0;
	for (uint32_t k = 0; k < c->seg.cfg.readers_per_worker; k++)
		n += uatomic_read(&seg_reader(&c->seg, c->slot, k)->in_use) != 0;
	return n;
}

H_TEST(session, reader_cache_follows_the_client)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	char sid[SHMB_SID_LEN + 1];
	for (int round = 0; round < 3; round++) {
		shmb_client *c = h_attach(b->name);
		if (round == 0)
			create(c, "acme", NULL, sid);
		cr_assert_eq(readers_in_use(c), 0, "a fresh client holds a reader");
		H_OK(open_rc(c, sid, "acme", NULL));
		cr_assert_eq(readers_in_use(c), 1,
			     "round %d: the open did not take this client's reader slot (a stale "
			     "per-thread cache?)",
			     round);
		h_detach(c);
	}
	shmb_client *c1 = h_attach(b->name), *c2 = h_attach(b->name);
	for (int i = 0; i < 4; i++) {
		H_OK(open_rc(i % 2 ? c2 : c1, sid, "acme", NULL));
		cr_assert_eq(readers_in_use(i % 2 ? c2 : c1), 1);
	}
	h_detach(c1);
	H_OK(open_rc(c2, sid, "acme", NULL));
	h_detach(c2);
}

/* Rss in KiB of this process's mapping that starts at addr (/proc/self/smaps), -1 if none. */
static long mapping_rss_kib(const void *addr)
{
	FILE *f = fopen("/proc/self/smaps", "re");
	cr_assert_not_null(f);
	char line[512];
	long rss = -1;
	int in = 0;
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi;
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) /* a mapping's first line */
			in = lo == (unsigned long)(uintptr_t)addr;
		else if (in && sscanf(line, "Rss: %ld kB", &rss) == 1)
			break;
	}
	fclose(f);
	return rss;
}

/* shmb_attach prefaults the session index (buckets and records) into the worker's page tables
 * (seg_prefault_index), so the first lookup of each page takes no page fault. */
H_TEST(session, attach_prefaults_the_index)
{
	void *probe = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(probe, MAP_FAILED);
	int have = madvise(probe, 4096, MADV_POPULATE_WRITE) == 0;
	munmap(probe, 4096);
	if (!have)
		cr_skip_test("the kernel lacks MADV_POPULATE_WRITE (Linux 5.14+)");
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "8192"));
	shmb_client *c = h_attach(b->name);
	const struct shmb_region *reg = c->seg.regions;
	uint64_t span = reg[SHMB_REGION_SESSIONS].off + reg[SHMB_REGION_SESSIONS].size -
			reg[SHMB_REGION_BUCKETS].off;
	long rss = mapping_rss_kib(c->seg.base);
	cr_assert_geq(rss, (long)(span / 1024), "segment mapping Rss %ld KiB < index %llu KiB", rss,
		      (unsigned long long)(span / 1024));
	h_detach(c);
}

H_TEST(session, inherited_client_fails_in_child)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	(void)b;
	shmb_client *c = h_attach(NULL); /* $SHMB_NAME */
	char sid[SHMB_SID_LEN + 1];
	create(c, "acme", NULL, sid);
	struct fork_arg a = { .c = c, .sid = sid };
	struct h_child ch;
	h_child_start(&ch, child_uses_inherited, &a);
	int rc[4];
	cr_assert_eq(h_child_read(&ch, rc, sizeof rc, 10000), (ssize_t)sizeof rc,
		     "child did not report");
	cr_assert_eq(h_child_wait(&ch, 10000), 0);
	cr_expect_eq(rc[0], SHMB_EFORK, "create in child: %s", shmb_err_name(rc[0]));
	cr_expect_eq(rc[1], SHMB_EFORK, "open in child: %s", shmb_err_name(rc[1]));
	cr_expect_eq(rc[2], SHMB_EFORK, "delete in child: %s", shmb_err_name(rc[2]));
	cr_expect_eq(rc[3], 0, "fresh attach + open in child: %d %s", rc[3], shmb_err_name(rc[3]));
	/* The parent's client was not disturbed. */
	H_EXPECT_RC(open_rc(c, sid, "acme", NULL), 0);
	char sid2[SHMB_SID_LEN + 1];
	create(c, "acme", NULL, sid2);
	H_OK(shmb_session_delete(c, sid, "acme", NULL));
	h_detach(c);
}

H_TEST(session, attach_errors_and_strerror)
{
	shmb_client *c = (shmb_client *)0x1;
	H_EXPECT_RC(shmb_attach("no-broker-here", &c), SHMB_EBROKER);
	cr_expect_null(c);
	H_EXPECT_RC(shmb_attach("bad/name", &c), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attach("", &c), SHMB_EINVAL);
	H_EXPECT_RC(shmb_attach("ok", NULL), SHMB_EINVAL);

	const int codes[] = { SHMB_EINVAL,   SHMB_ENOENT,  SHMB_EPERM,    SHMB_EFULL, SHMB_ETOOBIG,
			      SHMB_EOVERRUN, SHMB_EBROKER, SHMB_EVERSION, SHMB_ENOMEM };
	for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
		cr_expect_not_null(shmb_strerror(codes[i]));
		cr_expect_gt(strlen(shmb_strerror(codes[i])), 3);
		cr_expect(strncmp(shmb_err_name(codes[i]), "SHMB_E", 6) == 0);
		for (size_t k = 0; k < i; k++)
			cr_expect_neq(codes[i], codes[k]);
	}
	cr_expect_str_eq(shmb_err_name(SHMB_ENOENT), "SHMB_ENOENT");
	cr_expect_not_null(shmb_strerror(12345));
	cr_expect_not_null(shmb_err_name(-12345));
	cr_expect_not_null(shmb_version());
	cr_expect_eq(shmb_fd(NULL), SHMB_EINVAL);
}

/* Child: attaches, reports the rc (an int) and, attached, holds its slot until it is killed. */
static int hold_slot_child(void *p, int wfd)
{
	shmb_client *c = NULL;
	int rc = shmb_attach(p, &c);
	if (h_write_all(wfd, &rc, sizeof rc) < 0 || rc < 0)
		return 1;
	pause(); /* killed by the test */
	return 0;
}

H_TEST(session, worker_slots_exhausted)
{
	/* One slot per process: a second shmb_attach of this process shares its client, so other
	 * processes fill the worker table. */
	struct h_broker *b = h_broker_start(H_ARGS("--max-workers", "2"));
	shmb_client *c1 = h_attach(b->name);
	shmb_client *c1b = h_attach(b->name);
	cr_expect_eq(c1, c1b, "a second attach of the same process got another client");
	h_detach(c1b);
	struct h_child ch;
	int rc = 1;
	h_child_start(&ch, hold_slot_child, b->name);
	cr_assert_eq(h_child_read(&ch, &rc, sizeof rc, 10000), (ssize_t)sizeof rc);
	cr_assert_eq(rc, 0, "second process: %s", shmb_err_name(rc));
	shmb_client *c3 = NULL;
	h_detach(c1);
	/* This process detached: attaching again gets a slot (its old one, once released). */
	rc = SHMB_ENOWORKER;
	cr_assert(H_POLL_UNTIL((rc = shmb_attach(b->name, &c3)) != SHMB_ENOWORKER, 3000) && rc == 0,
		  "attach after a detach at the worker limit: %s (%s)", shmb_err_name(rc),
		  shmb_strerror(rc));
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c3, "acme", NULL, sid));
	/* The table is full: a third process is refused. */
	struct h_child ch2;
	h_child_start(&ch2, hold_slot_child, b->name);
	int rc2 = 0;
	ssize_t n = h_child_read(&ch2, &rc2, sizeof rc2, 10000);
	cr_expect(n == (ssize_t)sizeof rc2 && rc2 == SHMB_ENOWORKER, "third process: %s",
		  shmb_err_name(rc2));
	h_child_wait(&ch2, 10000);
	h_child_kill(&ch);
	shmb_detach(c3);
}

struct thr_open {
	shmb_client *c;
	const char *sid;
	int rc;
};

static void *open_in_thread(void *p)
{
	struct thr_open *a = p;
	shmb_session *s = NULL;
	a->rc = shmb_session_open(a->c, a->sid, "acme", NULL, &s);
	if (a->rc == 0)
		shmb_session_close(s);
	return NULL;
}

H_TEST(session, reader_slots_exhausted)
{
	/* One reader slot per worker: the main thread takes it on its first lookup and keeps it;
	 * another thread of the same process gets SHMB_ENOREADER, and once that thread is gone and the
	 * client detached, nothing is left over. */
	struct h_broker *b = h_broker_start(H_ARGS("--readers-per-worker", "1"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	create(c, "acme", NULL, sid);
	H_EXPECT_RC(open_rc(c, sid, "acme", NULL), 0);
	struct thr_open a = { .c = c, .sid = sid };
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, open_in_thread, &a), 0);
	pthread_join(t, NULL);
	H_EXPECT_RC(a.rc, SHMB_ENOREADER);
	H_EXPECT_RC(open_rc(c, sid, "acme", NULL), 0);
	h_detach(c);
	/* A new client (a new worker slot) has its own reader slot. */
	shmb_client *c2 = h_attach(b->name);
	a = (struct thr_open){ .c = c2, .sid = sid };
	cr_assert_eq(pthread_create(&t, NULL, open_in_thread, &a), 0);
	pthread_join(t, NULL);
	H_EXPECT_RC(a.rc, 0);
	/* That thread exited: its slot is free again for this one. */
	H_EXPECT_RC(open_rc(c2, sid, "acme", NULL), 0);
	h_detach(c2);
}
