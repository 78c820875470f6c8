/* test_ttl.c - inactivity and absolute TTLs. An expired session is invisible at once (open gives
 * SHMB_ENOENT before any sweep: these brokers sweep once a minute), activity keeps an inactivity
 * TTL from firing but not an absolute one, the sweeper reclaims expired records, and a create
 * that finds every record taken by expired sessions sweeps at once instead of answering EFULL.
 *
 * These tests wait for the clock (short TTLs); they never sleep to wait for another process. A
 * step that must happen before a deadline checks that it did, so a stalled machine gives a skip
 * rather than a false failure. */
#include <string.h>

#include "harness.h"
#include "layout.h"

TestSuite(ttl, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define NO_SWEEP "--sweep-interval-ms", "60000"

static int open_rc(shmb_client *c, const char *sid, const char *tenant)
{
	shmb_session *s = NULL;
	int rc = shmb_session_open(c, sid, tenant, NULL, &s);
	if (rc == 0)
		shmb_session_close(s);
	return rc;
}

static void create(shmb_client *c, const char *tenant, char *sid)
{
	int rc = shmb_session_create(c, tenant, NULL, sid);
	cr_assert_eq(rc, 0, "create: %s (%s)", shmb_err_name(rc), shmb_strerror(rc));
}

/* Sleeps until at least ms have passed since t0 (monotonic). */
static void wait_until(int64_t t0, int ms)
{
	int64_t left = t0 + ms - h_now_ms();
	if (left > 0)
		h_sleep_ms((int)left);
}

H_TEST(ttl, inactivity_expires_before_any_sweep)
{
	const int ttl = 300;
	struct h_broker *b = h_broker_start(
		H_ARGS("--inactivity-ttl-ms", "300", "--absolute-ttl-ms", "0", NO_SWEEP));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	int64_t t0 = h_now_ms();
	create(c, "acme", sid);
	shmb_session *s = NULL;
	int rc = shmb_session_open(c, sid, "acme", NULL, &s);
	int64_t t1 = h_now_ms();
	if (t1 - t0 > ttl / 2)
		cr_skip_test("machine too slow: create+open took %ld ms", (long)(t1 - t0));
	cr_assert_eq(rc, 0, "open right after create: %s (%s)", shmb_err_name(rc),
		     shmb_strerror(rc));
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_expect_eq(info.inactivity_ttl_ms, (uint64_t)ttl);
	cr_expect_eq(info.absolute_ttl_ms, 0u);

	wait_until(t1, ttl + 50);
	H_EXPECT_RC(open_rc(c, sid, "acme"), SHMB_ENOENT);
	/* Wrong tenant on an expired session: still "no such session", not a binding leak. */
	H_EXPECT_RC(open_rc(c, sid, "globex"), SHMB_ENOENT);
	/* A handle opened before expiry sees it too. */
	H_EXPECT_RC(shmb_session_stat(s, &info), SHMB_ENOENT);
	shmb_session_close(s);
	/* Deleting an expired session: it is gone already. */
	H_EXPECT_RC(shmb_session_delete(c, sid, "acme", NULL), SHMB_ENOENT);
	/* No sweep ran (60 s interval), yet expiry was immediate. */
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED), 0u);
	h_detach(c);
}

H_TEST(ttl, touching_keeps_it_alive)
{
	const int ttl = 400;
	struct h_broker *b = h_broker_start(
		H_ARGS("--inactivity-ttl-ms", "400", "--absolute-ttl-ms", "0", NO_SWEEP));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1], idle[SHMB_SID_LEN + 1];
	create(c, "acme", sid);
	create(c, "acme", idle);
	int64_t start = h_now_ms();
	int64_t last = h_now_ms();
	/* Touch every 100 ms for three TTLs. */
	while (h_now_ms() - start < 3 * ttl) {
		int64_t before = h_now_ms();
		int rc = open_rc(c, sid, "acme");
		if (before - last > ttl - 50)
			cr_skip_test("machine too slow: %ld ms between touches",
				     (long)(before - last));
		cr_assert_eq(rc, 0, "touched session expired after %ld ms: %s (%s)",
			     (long)(before - start), shmb_err_name(rc), shmb_strerror(rc));
		last = before;
		h_sleep_ms(100);
	}
	/* The untouched one expired meanwhile. */
	H_EXPECT_RC(open_rc(c, idle, "acme"), SHMB_ENOENT);
	/* Stop touching: it expires. */
	wait_until(last, ttl + 50);
	H_EXPECT_RC(open_rc(c, sid, "acme"), SHMB_ENOENT);
	h_detach(c);
}

H_TEST(ttl, absolute_ttl_expires_even_when_touched)
{
	const int abs_ttl = 600;
	struct h_broker *b = h_broker_start(
		H_ARGS("--inactivity-ttl-ms", "60000", "--absolute-ttl-ms", "600", NO_SWEEP));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	int64_t t0 = h_now_ms();
	create(c, "acme", sid);
	int ok_opens = 0;
	while (h_now_ms() - t0 < abs_ttl - 150) {
		int rc = open_rc(c, sid, "acme");
		if (h_now_ms() - t0 < abs_ttl - 100) {
			cr_assert_eq(rc, 0, "open before the absolute TTL: %s (%s)",
				     shmb_err_name(rc), shmb_strerror(rc));
			ok_opens++;
		}
		h_sleep_ms(50);
	}
	if (ok_opens == 0)
		cr_skip_test("machine too slow to open before the absolute TTL");
	/* Touching up to the end does not extend it. */
	wait_until(t0, abs_ttl + 100);
	H_EXPECT_RC(open_rc(c, sid, "acme"), SHMB_ENOENT);
	h_detach(c);
}

H_TEST(ttl, zero_means_no_expiry)
{
	struct h_broker *b = h_broker_start(H_ARGS("--inactivity-ttl-ms", "0", "--absolute-ttl-ms",
						   "0", "--sweep-interval-ms", "20"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	create(c, "acme", sid);
	uint64_t sweeps = h_counter(b->name, SHMB_CTR_SWEEPS);
	/* Let several sweeps pass (the sweep counter is the event we wait for). */
	cr_assert(H_POLL_UNTIL(h_counter(b->name, SHMB_CTR_SWEEPS) >= sweeps + 3, 5000),
		  "the sweeper did not run (sweeps counter stuck at %lu)", (unsigned long)sweeps);
	H_EXPECT_RC(open_rc(c, sid, "acme"), 0);
	h_detach(c);
}

static double live_sessions(const char *name)
{
	cJSON *st = h_shmctl_json(name, "status", NULL);
	double v = h_json_num(st, "sessions.live");
	cJSON_Delete(st);
	return v;
}

H_TEST(ttl, sweeper_reclaims_expired)
{
	const int ttl = 500;
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "3", "--inactivity-ttl-ms",
						   "500", "--sweep-interval-ms", "50"));
	shmb_client *c = h_attach(b->name);
	char sids[3][SHMB_SID_LEN + 1], more[SHMB_SID_LEN + 1];
	int64_t t0 = h_now_ms();
	for (int i = 0; i < 3; i++)
		create(c, "acme", sids[i]);
	int rc = shmb_session_create(c, "acme", NULL, more);
	/* Full while the three are alive (a slow machine may already be past their TTL, and
	 * then the broker rightly makes room). */
	if (h_now_ms() - t0 < ttl - 100)
		H_EXPECT_RC(rc, SHMB_EFULL);

	/* Expiry + sweep + grace period: shmctl status's live count drops to 0. */
	int ok = H_POLL_UNTIL(live_sessions(b->name) == 0, 10000);
	cr_assert(ok, "shmctl status still counts %g live sessions long after their TTL",
		  live_sessions(b->name));
	cr_assert(H_POLL_UNTIL(h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED) >= 3, 5000),
		  "sessions_reclaimed = %lu, want >= 3",
		  (unsigned long)h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED));
	cr_expect_geq(h_counter(b->name, SHMB_CTR_SESSIONS_EXPIRED), 3u);
	for (int i = 0; i < 3; i++)
		H_EXPECT_RC(open_rc(c, sids[i], "acme"), SHMB_ENOENT);

	/* The records are free again: the limit allows three new sessions. */
	for (int i = 0; i < 3; i++)
		create(c, "globex", sids[i]);
	for (int i = 0; i < 3; i++)
		H_EXPECT_RC(open_rc(c, sids[i], "globex"), 0);
	cJSON *list = h_shmctl_json(b->name, "sessions", NULL);
	cr_expect_eq(cJSON_GetArraySize(h_json_sessions(list)), 3);
	cJSON_Delete(list);
	h_detach(c);
}

H_TEST(ttl, expired_not_listed_by_shmctl)
{
	struct h_broker *b = h_broker_start(H_ARGS("--inactivity-ttl-ms", "200", NO_SWEEP));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	int64_t t0 = h_now_ms();
	create(c, "acme", sid);
	wait_until(t0, 300);
	/* Expired but not swept: shmctl show must not present it as a live session. */
	struct h_result r;
	h_shmctl(&r, b->name, "show", sid, NULL);
	cr_expect_eq(r.status, 1, "shmctl show of an expired session: exit %d, stdout:\n%s",
		     r.status, r.out);
	h_result_free(&r);
	h_detach(c);
}

H_TEST(ttl, full_of_expired_sessions_is_not_full)
{
	const int ttl = 300, max = 8;
	/* Expired records would wait a minute for the sweeper; a create needing one must not. */
	struct h_broker *b = h_broker_start(
		H_ARGS("--max-sessions", "8", "--inactivity-ttl-ms", "300", NO_SWEEP));
	shmb_client *c = h_attach(b->name);
	char old[8][SHMB_SID_LEN + 1], fresh[8][SHMB_SID_LEN + 1];
	int64_t t0 = h_now_ms();
	for (int i = 0; i < max; i++)
		create(c, "acme", old[i]);
	wait_until(h_now_ms(), ttl + 50);
	for (int i = 0; i < max; i++)
		H_EXPECT_RC(open_rc(c, old[i], "acme"), SHMB_ENOENT);
	cr_assert_eq(h_counter(b->name, SHMB_CTR_SESSIONS_EXPIRED), 0u,
		     "a sweep ran although the interval is a minute");

	/* Every record expired: a create sweeps, reclaims (no reader holds them) and succeeds. */
	int64_t t1 = h_now_ms();
	for (int i = 0; i < max; i++) {
		int rc = shmb_session_create(c, "globex", NULL, fresh[i]);
		cr_assert_eq(rc, 0, "create %d of %d with every old record expired: %s (%s)", i + 1,
			     max, shmb_err_name(rc), shmb_strerror(rc));
	}
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_EXPIRED), (uint64_t)max);
	cr_expect_geq(h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED), (uint64_t)max);
	for (int i = 0; i < max; i++)
		H_EXPECT_RC(open_rc(c, fresh[i], "globex"), 0);

	/* Full of live sessions: still EFULL (unless a slow machine let them expire too). */
	char more[SHMB_SID_LEN + 1];
	int rc = shmb_session_create(c, "globex", NULL, more);
	if (h_now_ms() - t1 < ttl - 100)
		H_EXPECT_RC(rc, SHMB_EFULL);
	cr_log_info("%d expired records reused %ld ms after their creation", max, (long)(t1 - t0));
	h_detach(c);
}
