/* test_ready.c - shmb_ready across real processes: of 1,000 subscribed sessions, exactly the
 * ones another process published on are reported, once; max smaller than the count (the rest
 * on the next call); a deleted session is reported; every handle of a session is reported; an
 * unsubscribed handle is not; time proportional to the sessions with news, not to the
 * subscriptions (a same-run comparison of 1 and 1,000 subscriptions); and the event-loop
 * pattern (prepare_wait, poll on shmb_fd, shmb_wait(c, 0), shmb_ready, drain) losing no event
 * of a publisher spreading events over 50 sessions with random pauses. */
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "evhelp.h"
#include "fault.h"
#include "internal.h"

TestSuite(ready, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define WAIT_FAIL_MS 10000
#define N_SUBS 1000

struct many {
	char (*sids)[SHMB_SID_LEN + 1];
	shmb_session **s;
	int n;
};

static struct h_broker *ready_broker(void)
{
	return h_broker_start(H_ARGS("--max-sessions", "1024", "--ring-events", "64",
				     "--ring-bytes", "8192", "--max-event-bytes", "1024"));
}

/* Creates, opens and subscribes n sessions. */
static void many_open(shmb_client *c, struct many *m, int n)
{
	m->n = n;
	m->sids = calloc((size_t)n, sizeof *m->sids);
	m->s = calloc((size_t)n, sizeof *m->s);
	cr_assert(m->sids && m->s);
	for (int i = 0; i < n; i++) {
		m->s[i] = evh_session(c, m->sids[i]);
		H_OK(shmb_subscribe(m->s[i]));
	}
}

static void many_close(struct many *m)
{
	for (int i = 0; i < m->n; i++)
		shmb_session_close(m->s[i]);
	free(m->sids);
	free(m->s);
}

static int index_of(const struct many *m, const shmb_session *h)
{
	for (int i = 0; i < m->n; i++)
		if (m->s[i] == h)
			return i;
	return -1;
}

/* ---------------------------------------------------------------- a publishing child */

#define MAX_PICKS 64
struct pick_arg {
	const char *name;
	char sids[MAX_PICKS][SHMB_SID_LEN + 1];
	int n;
	int per; /* events per session */
};

static int pick_publisher(void *p, int wfd)
{
	struct pick_arg *a = p;
	shmb_client *c = NULL;
	int rc = shmb_attach(a->name, &c);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher: attach");
	for (int i = 0; i < a->n; i++) {
		shmb_session *s = NULL;
		if ((rc = shmb_session_open(c, a->sids[i], EVH_TENANT, NULL, &s)) < 0)
			return evh_fail(wfd, rc, "publisher: open");
		for (int k = 0; k < a->per; k++) {
			int64_t id = shmb_publish(s, 0, 0, "{\"n\":1}", 7);
			if (id < 0)
				return evh_fail(wfd, (int)id, "publisher: publish");
		}
		shmb_session_close(s);
	}
	shmb_detach(c);
	struct evh_report r = { 0 };
	return evh_send(wfd, &r);
}

static void publish_on(const char *name, const struct many *m, const int *which, int n, int per)
{
	static struct pick_arg a;
	memset(&a, 0, sizeof a);
	a.name = name;
	a.n = n;
	a.per = per;
	for (int i = 0; i < n; i++)
		memcpy(a.sids[i], m->sids[which[i]], sizeof a.sids[i]);
	static struct h_child ch;
	h_child_start(&ch, pick_publisher, &a);
	struct evh_report r;
	evh_collect(&ch, "publisher", &r, 30000);
}

/* ---------------------------------------------------------------- tests */

static const int TEN[10] = { 3, 17, 99, 250, 251, 512, 640, 777, 901, 999 };

H_TEST(ready, thousand_subscriptions_ten_with_news)
{
	struct h_broker *b = ready_broker();
	shmb_client *c = h_attach(b->name);
	struct many m;
	many_open(c, &m, N_SUBS);
	shmb_session *out[N_SUBS + 8];
	H_EXPECT_RC(shmb_ready(c, out, N_SUBS), 0); /* nothing yet */
	H_EXPECT_RC(shmb_ready(c, NULL, 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_ready(c, out, -1), SHMB_EINVAL);

	publish_on(b->name, &m, TEN, 10, 3);
	H_EXPECT_RC(shmb_wait(c, WAIT_FAIL_MS), 1);
	int n = shmb_ready(c, out, N_SUBS + 8);
	cr_assert_eq(n, 10, "shmb_ready returned %d handles, expected the 10 with news", n);
	int seen[10] = { 0 };
	for (int i = 0; i < n; i++) {
		int k = index_of(&m, out[i]);
		int j = 0;
		while (j < 10 && TEN[j] != k)
			j++;
		cr_assert(j < 10, "handle %d reported without news", k);
		cr_assert_eq(seen[j]++, 0, "handle %d reported twice", k);
	}
	H_EXPECT_RC(shmb_ready(c, out, N_SUBS), 0); /* once */
	H_EXPECT_RC(shmb_wait(c, 0), 0);
	many_close(&m);
	h_finish();
}

H_TEST(ready, max_smaller_than_the_count)
{
	struct h_broker *b = ready_broker();
	shmb_client *c = h_attach(b->name);
	struct many m;
	many_open(c, &m, 100);
	const int which[10] = { 0, 1, 2, 10, 20, 30, 63, 64, 65, 99 };
	publish_on(b->name, &m, which, 10, 1);
	shmb_session *out[4];
	int got[100] = { 0 }, total = 0, calls = 0, n;
	while ((n = shmb_ready(c, out, 4)) > 0) {
		cr_assert_leq(n, 4);
		calls++;
		for (int i = 0; i < n; i++) {
			int k = index_of(&m, out[i]);
			cr_assert(k >= 0 && got[k]++ == 0, "handle %d reported twice or unknown",
				  k);
			total++;
		}
		/* While handles are left, a wait reports news at once (not a sleep). */
		if (total < 10)
			H_EXPECT_RC(shmb_prepare_wait(c), 1);
	}
	H_OK(n);
	cr_assert_eq(total, 10);
	cr_assert_eq(calls, 3, "4 + 4 + 2 expected, %d calls", calls);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(got[which[i]], 1);
	/* Drained: the process may sleep again. */
	H_EXPECT_RC(shmb_prepare_wait(c), 0);
	H_EXPECT_RC(shmb_wait(c, 0), 0);
	many_close(&m);
	h_finish();
}

H_TEST(ready, deleted_session_and_every_handle_reported)
{
	struct h_broker *b = ready_broker();
	shmb_client *c = h_attach(b->name);
	struct many m;
	many_open(c, &m, 3);
	shmb_session *out[8];
	H_EXPECT_RC(shmb_ready(c, out, 8), 0);
	/* A second and third handle of session 1: all reported; the third unsubscribes first. */
	shmb_session *h2 = NULL, *h3 = NULL;
	H_OK(shmb_session_open(c, m.sids[1], EVH_TENANT, NULL, &h2));
	H_OK(shmb_session_open(c, m.sids[1], EVH_TENANT, NULL, &h3));
	H_OK(shmb_subscribe(h2));
	H_OK(shmb_subscribe(h3));
	H_OK(shmb_unsubscribe(h3));
	H_OK(shmb_session_delete(c, m.sids[1], EVH_TENANT, NULL));
	H_EXPECT_RC(shmb_wait(c, WAIT_FAIL_MS), 1);
	int n = shmb_ready(c, out, 8);
	cr_assert_eq(n, 2, "%d handles reported for a deleted session of 2 subscribed handles", n);
	cr_assert((out[0] == m.s[1] && out[1] == h2) || (out[0] == h2 && out[1] == m.s[1]));
	shmb_event ev;
	shmb_cursor *cur = NULL;
	H_EXPECT_RC(shmb_cursor_open(out[0], 0, &cur), SHMB_ENOENT);
	(void)ev;
	H_EXPECT_RC(shmb_ready(c, out, 8), 0);
	/* A handle closed while pending is never reported. */
	const int which[1] = { 2 };
	publish_on(b->name, &m, which, 1, 1);
	H_OK(shmb_publish(m.s[0], 0, 0, "{}", 2));
	shmb_session *h0 = NULL;
	H_OK(shmb_session_open(c, m.sids[0], EVH_TENANT, NULL, &h0));
	H_OK(shmb_subscribe(h0));
	H_OK(shmb_publish(m.s[0], 0, 0, "{}", 2));
	n = shmb_ready(c, out, 1); /* harvests all three handles, reports one */
	cr_assert_eq(n, 1);
	shmb_session *first = out[0];
	if (first != h0)
		shmb_session_close(h0); /* pending: must vanish from the list */
	n = shmb_ready(c, out, 8);
	for (int i = 0; i < n; i++)
		cr_assert(out[i] != h0 || first == h0, "a closed handle was reported");
	cr_assert_eq(n, first == h0 ? 2 : 1);
	if (first == h0)
		shmb_session_close(h0);
	shmb_session_close(h2);
	shmb_session_close(h3);
	many_close(&m);
	h_finish();
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* Median ns of shmb_ready reporting one handle right after a publish on it (this process
 * publishing marks its own bits too). */
static int64_t ready_ns(shmb_client *c, shmb_session *s)
{
	enum { R = 301 };
	int64_t t[R];
	shmb_session *out[4];
	for (int i = 0; i < R; i++) {
		H_OK(shmb_publish(s, 0, 0, "{}", 2));
		int64_t t0 = evh_mono_ns();
		int n = shmb_ready(c, out, 4);
		t[i] = evh_mono_ns() - t0;
		cr_assert_eq(n, 1, "shmb_ready: %d handles, expected only the one with news", n);
		cr_assert_eq(out[0], s);
	}
	qsort(t, R, sizeof t[0], cmp_i64);
	return t[R / 2];
}

H_TEST(ready, cost_follows_the_news_not_the_subscriptions)
{
	struct h_broker *b = ready_broker();
	shmb_client *c = h_attach(b->name);
	struct many m;
	many_open(c, &m, 1);
	shmb_session *out[4];
	H_EXPECT_RC(shmb_ready(c, out, 4), 0);
	int64_t one = ready_ns(c, m.s[0]);
	struct many more;
	many_open(c, &more, N_SUBS - 1);
	int64_t thousand = ready_ns(c, m.s[0]);
	cr_log_info("shmb_ready, one handle with news: %lld ns with 1 subscription, %lld ns with "
		    "1,000",
		    (long long)one, (long long)thousand);
	/* O(subscriptions) would be 1,000 handle checks, microseconds; allow noise. */
	cr_assert_lt(thousand, 3 * one + 2000,
		     "1,000 subscriptions: %lld ns, 1 subscription: %lld ns", (long long)thousand,
		     (long long)one);
	many_close(&more);
	many_close(&m);
	h_finish();
}

/* A publisher stopped between its commit and its marks (fault point wake.walk): the subscriber's
 * re-check sees the commit (news), shmb_ready finds no mark yet; the publisher then marks and
 * finds the subscriber not armed, so it writes no eventfd. The subscriber's next arming must
 * see the mark (shmb_prepare_wait returns 1), or it would sleep with a handle to report. */
static int stopped_publisher(void *p, int wfd)
{
	const char **a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a[0], a[1], &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher: %s", what);
	setenv("SHMB_FAULT", "wake.walk:stop", 1);
	int64_t id = shmb_publish(s, 0, 0, "{}", 2);
	unsetenv("SHMB_FAULT");
	if (id < 0)
		return evh_fail(wfd, (int)id, "publisher: publish");
	evh_child_close(c, s);
	struct evh_report r = { 0 };
	return evh_send(wfd, &r);
}

H_TEST(ready, mark_after_the_commit_is_not_slept_through)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test("needs -DSHMB_FAULT_INJECTION=ON");
	struct h_broker *b = ready_broker();
	shmb_client *c = h_attach(b->name);
	struct many m;
	many_open(c, &m, 1);
	H_OK(shmb_set_wait_spin(c, 0));
	shmb_session *out[4];
	H_EXPECT_RC(shmb_ready(c, out, 4), 0); /* the process uses shmb_ready */
	const char *args[2] = { b->name, m.sids[0] };
	static struct h_child ch;
	h_child_start(&ch, stopped_publisher, (void *)args);
	cr_assert(H_POLL_UNTIL(evh_proc_stopped(ch.pid), 5000), "the publisher never stopped");
	H_EXPECT_RC(shmb_prepare_wait(c), 1); /* the commit is seen */
	H_OK(shmb_wait(c, 0));
	H_EXPECT_RC(shmb_ready(c, out, 4), 0); /* not marked yet */
	kill(ch.pid, SIGCONT);
	struct evh_report r;
	evh_collect(&ch, "publisher", &r, 10000); /* marked, found us not armed */
	H_EXPECT_RC(shmb_prepare_wait(c), 1);
	H_EXPECT_RC(shmb_ready(c, out, 4), 1);
	cr_assert_eq(out[0], m.s[0]);
	H_EXPECT_RC(shmb_prepare_wait(c), 0);
	H_OK(shmb_wait(c, 0));
	many_close(&m);
	h_finish();
}

/* ---------------------------------------------------------------- the event-loop pattern */

enum { LOOP_SESSIONS = 50, LOOP_EVENTS = 4000 };

struct spread_arg {
	const char *name;
	char (*sids)[SHMB_SID_LEN + 1];
};

static int spread_publisher(void *p, int wfd)
{
	struct spread_arg *a = p;
	shmb_client *c = NULL;
	int rc = shmb_attach(a->name, &c);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher: attach");
	shmb_session *s[LOOP_SESSIONS];
	for (int i = 0; i < LOOP_SESSIONS; i++)
		if ((rc = shmb_session_open(c, a->sids[i], EVH_TENANT, NULL, &s[i])) < 0)
			return evh_fail(wfd, rc, "publisher: open");
	uint64_t rng = (uint64_t)getpid() * 31;
	for (int k = 0; k < LOOP_EVENTS; k++) {
		evh_pause(&rng, 20000);
		int i = (int)(evh_rand(&rng) % LOOP_SESSIONS);
		int64_t id = shmb_publish(s[i], 0, 0, "{}", 2);
		if (id < 0)
			return evh_fail(wfd, (int)id, "publisher: publish");
	}
	for (int i = 0; i < LOOP_SESSIONS; i++)
		shmb_session_close(s[i]);
	shmb_detach(c);
	struct evh_report r = { 0 };
	return evh_send(wfd, &r);
}

H_TEST(ready, event_loop_pattern_loses_nothing, .timeout = 180)
{
	struct h_broker *b = h_broker_start(
		H_ARGS("--max-sessions", "128", "--ring-events", "4096", "--ring-bytes", "262144"));
	shmb_client *c = h_attach(b->name);
	struct many m;
	many_open(c, &m, LOOP_SESSIONS);
	shmb_cursor *cur[LOOP_SESSIONS];
	for (int i = 0; i < LOOP_SESSIONS; i++)
		H_OK(shmb_cursor_open(m.s[i], 0, &cur[i]));
	H_OK(shmb_set_wait_spin(c, 0)); /* every wait arms: the racy path */
	static struct h_child ch;
	struct spread_arg a = { .name = b->name, .sids = m.sids };
	h_child_start(&ch, spread_publisher, &a);
	int fd = shmb_fd(c);
	H_OK(fd);
	uint64_t got = 0, sleeps = 0;
	shmb_session *out[8];
	while (got < LOOP_EVENTS) {
		/* What an event loop does: arm right before sleeping, sleep on the fd, then on
		 * readable: shmb_wait(c, 0), shmb_ready until 0, drain those cursors until 0. */
		int news = shmb_prepare_wait(c);
		H_OK(news);
		if (!news) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			int pr = poll(&p, 1, WAIT_FAIL_MS);
			cr_assert_eq(pr, 1, "no wakeup within %d ms with %llu of %d events read",
				     WAIT_FAIL_MS, (unsigned long long)got, LOOP_EVENTS);
			sleeps++;
		}
		H_OK(shmb_wait(c, 0));
		int n;
		while ((n = shmb_ready(c, out, 8)) > 0) {
			for (int i = 0; i < n; i++) {
				int k = index_of(&m, out[i]);
				cr_assert(k >= 0);
				shmb_event ev;
				char buf[64];
				int rc;
				while ((rc = shmb_cursor_next(cur[k], &ev, buf, sizeof buf)) == 1)
					got++;
				H_OK(rc);
			}
		}
		H_OK(n);
	}
	struct evh_report r;
	evh_collect(&ch, "publisher", &r, 60000);
	cr_assert_eq(got, LOOP_EVENTS);
	cr_log_info("event loop: %d events over %d sessions, %llu sleeps", LOOP_EVENTS,
		    LOOP_SESSIONS, (unsigned long long)sleeps);
	for (int i = 0; i < LOOP_SESSIONS; i++)
		shmb_cursor_close(cur[i]);
	many_close(&m);
	h_finish();
}
