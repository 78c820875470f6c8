/* test_wakeup.c - subscriptions and eventfd wakeups across real processes: news reported once,
 * no eventfd write while the subscriber is not about to sleep (no wakeup storm), the documented
 * shmb_prepare_wait + epoll loop, a sleeping subscriber woken by another process's delete and by
 * expiry, and a live subscriber keeping a session from expiring by inactivity (until it
 * unsubscribes, detaches or dies, each of which restarts the inactivity window). The
 * 100,000-event lost-wakeup stress is test_wakeup_stress.c.
 *
 * "Asleep" is proven, not assumed: a waiting child reports that it is about to wait, and the
 * parent polls /proc/<pid>/stat until the child is blocked (no event exists for that). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

#include "evhelp.h"
#include "internal.h"
#include "layout.h"

TestSuite(wakeup, .init = h_setup, .fini = h_teardown, .timeout = 90);

/* How late a wakeup may come after the commit, delete or expiry that should cause it. */
#define WAKE_BUDGET_MS 100

static struct shmb_worker *my_worker(shmb_client *c)
{
	return seg_worker(&c->seg, c->slot);
}

static int fd_readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

/* Reads every available event of cur; returns how many, asserting no error. */
static uint64_t drain(shmb_cursor *cur)
{
	static unsigned char buf[65536];
	uint64_t n = 0;
	for (;;) {
		shmb_event ev;
		int rc = shmb_cursor_next(cur, &ev, buf, sizeof buf);
		if (rc == 0)
			return n;
		cr_assert_eq(rc, 1, "shmb_cursor_next: %d %s (%s)", rc, shmb_err_name(rc),
			     shmb_strerror(rc));
		n++;
	}
}

/* ---------------------------------------------------------------- child: publisher */

struct pub_arg {
	const char *name, *sid;
	uint64_t count;
	uint32_t pub;
	int pauses; /* 1: random short pauses between events */
};

/* Publishes count stamped events. Report: n[0] last id, n[1] eventfd writes it made
 * (its worker slot's wakeups_sent). */
static int publisher(void *p, int wfd)
{
	struct pub_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher: %s", what);
	uint64_t rng = (uint64_t)getpid() * 7919;
	unsigned char buf[256];
	struct evh_report r = { 0 };
	/* A worker slot is reused: count this process's own writes. */
	uint64_t sent0 = uatomic_read(&my_worker(c)->wakeups_sent);
	for (uint64_t i = 0; i < a->count; i++) {
		if (a->pauses)
			evh_pause(&rng, 2000);
		size_t len = evh_len(a->pub, i, sizeof(struct evh_payload), sizeof buf);
		evh_fill(buf, len, a->pub, i, 0);
		int64_t id = shmb_publish(s, a->pub, 0, buf, len);
		if (id < 0)
			return evh_fail(wfd, (int)id, "publisher: shmb_publish #%llu",
					(unsigned long long)i);
		r.n[0] = (uint64_t)id;
	}
	r.n[1] = uatomic_read(&my_worker(c)->wakeups_sent) - sent0;
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

static struct evh_report run_publisher(const char *name, const char *sid, uint64_t count)
{
	struct pub_arg pa = { .name = name, .sid = sid, .count = count };
	static struct h_child ch;
	h_child_start(&ch, publisher, &pa);
	struct evh_report r;
	evh_collect(&ch, "publisher", &r, 30000);
	return r;
}

/* ---------------------------------------------------------------- tests */

H_TEST(wakeup, news_is_reported_once)
{
	struct h_broker *b =
		h_broker_start(H_ARGS("--ring-events", "256", "--ring-bytes", "65536"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	int fd = shmb_fd(c);
	H_OK(fd);

	/* Not subscribed to anything: no news. */
	H_EXPECT_RC(shmb_wait(c, 0), 0);
	/* Events published before subscribing are not news (the subscriber reads them with its
	 * cursor after subscribing). */
	H_OK(shmb_publish(s, 0, 0, "{\"a\":1}", 7));
	H_OK(shmb_publish(s, 0, 0, "{\"a\":2}", 7));
	H_OK(shmb_subscribe(s));
	H_OK(shmb_subscribe(s)); /* idempotent per handle */
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_assert_eq(info.subscribers, 1);
	H_EXPECT_RC(shmb_wait(c, 0), 0);
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));
	cr_assert_eq(drain(cur), 2);

	/* One event from another process wakes a real wait. */
	run_publisher(b->name, sid, 1);
	int64_t t0 = h_now_ms();
	H_EXPECT_RC(shmb_wait(c, 5000), 1);
	cr_assert_lt(h_now_ms() - t0, WAKE_BUDGET_MS, "the commit was already there");
	H_EXPECT_RC(shmb_wait(c, 0), 0); /* reported once */
	cr_assert_eq(drain(cur), 1);
	cr_assert(!fd_readable(fd), "fd still readable after shmb_wait");

	/* A second handle of this process subscribing shares the subscription. */
	shmb_session *s2 = NULL;
	H_OK(shmb_session_open(c, sid, EVH_TENANT, NULL, &s2));
	H_OK(shmb_subscribe(s2));
	H_OK(shmb_session_stat(s, &info));
	cr_assert_eq(info.subscribers, 1, "subscribers counts processes");
	run_publisher(b->name, sid, 5);
	H_EXPECT_RC(shmb_wait(c, 0), 1);
	H_EXPECT_RC(shmb_wait(c, 0), 0);
	cr_assert_eq(drain(cur), 5);

	/* Dropping one of two references keeps the subscription. */
	H_OK(shmb_unsubscribe(s2));
	run_publisher(b->name, sid, 1);
	H_EXPECT_RC(shmb_wait(c, 5000), 1);
	cr_assert_eq(drain(cur), 1);

	/* Unsubscribed: even armed, publishes do not wake us (nothing to wait for: 100 ms shows
	 * it). */
	H_OK(shmb_unsubscribe(s));
	H_OK(shmb_session_stat(s, &info));
	cr_assert_eq(info.subscribers, 0);
	H_EXPECT_RC(shmb_prepare_wait(c), 0);
	struct evh_report r = run_publisher(b->name, sid, 3);
	cr_assert_eq(r.n[1], 0, "publisher wrote %llu eventfds with no subscriber",
		     (unsigned long long)r.n[1]);
	cr_assert(!fd_readable(fd));
	H_EXPECT_RC(shmb_wait(c, 100), 0);
	cr_assert_eq(drain(cur), 3);
	shmb_cursor_close(cur);
	shmb_session_close(s2);
	shmb_session_close(s);
	h_detach(c);
}

/* Closing a subscribed handle ends its subscription: the process's bit is cleared once no other
 * handle holds it (otherwise the session could never expire by inactivity while we live). */
H_TEST(wakeup, close_ends_the_handles_subscription)
{
	struct h_broker *b = h_broker_start(H_ARGS("--ring-events", "16", "--ring-bytes", "4096"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	shmb_session *s2 = NULL, *s3 = NULL;
	H_OK(shmb_session_open(c, sid, EVH_TENANT, NULL, &s2));
	H_OK(shmb_session_open(c, sid, EVH_TENANT, NULL, &s3));
	H_OK(shmb_subscribe(s2));
	H_OK(shmb_subscribe(s3));
	shmb_session_info info;
	shmb_session_close(s2);
	H_OK(shmb_session_stat(s, &info));
	cr_assert_eq(info.subscribers, 1, "the other handle still holds the subscription");
	shmb_session_close(s3);
	H_OK(shmb_session_stat(s, &info));
	cr_assert_eq(info.subscribers, 0, "closing the last subscribed handle must unsubscribe");
	/* Nothing left to watch: publishing is no news. */
	run_publisher(b->name, sid, 2);
	H_EXPECT_RC(shmb_wait(c, 0), 0);
	shmb_session_close(s);
	h_detach(c);
}

/* 1 when epoll reports fd readable within timeout_ms (after shmb_prepare_wait armed us). */
static int epoll_fires(int ep, int timeout_ms)
{
	struct epoll_event ev;
	int n;
	do
		n = epoll_wait(ep, &ev, 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	return n == 1;
}

/* A broker restart keeps every wakeup path working: the restarted broker takes the kept
 * workers' eventfds back (pidfd_getfd), so an fd already in an epoll set keeps firing, and a
 * process attached before the restart learns the eventfds of those attached after it. */
H_TEST(wakeup, wakeups_survive_a_broker_restart)
{
	struct h_broker *b = h_broker_start(H_ARGS("--ring-events", "64", "--ring-bytes", "4096"));
	shmb_client *sub = h_attach(b->name); /* subscriber, sleeping in epoll */
	shmb_client *pub = h_attach(b->name); /* publisher, attached before the restart */
	char sid_x[SHMB_SID_LEN + 1], sid_y[SHMB_SID_LEN + 1];
	shmb_session *sx = evh_session(sub, sid_x);
	shmb_session *px = NULL;
	H_OK(shmb_session_open(pub, sid_x, EVH_TENANT, NULL, &px));
	H_OK(shmb_subscribe(sx));
	int ep = epoll_create1(EPOLL_CLOEXEC);
	cr_assert_geq(ep, 0);
	int fd = shmb_fd(sub);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
	cr_assert_eq(epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev), 0);

	h_broker_kill(b);
	h_broker_restart(b);

	/* A process attached after the restart wakes the epoll sleeper. */
	H_EXPECT_RC(shmb_prepare_wait(sub), 0);
	run_publisher(b->name, sid_x, 1);
	cr_assert(epoll_fires(ep, 3000), "no wakeup through the fd registered before the restart");
	H_EXPECT_RC(shmb_wait(sub, 0), 1);
	cr_assert_eq(shmb_fd(sub), fd, "shmb_fd changed across the restart");

	/* The publisher from before the restart wakes the same sleeper... */
	H_EXPECT_RC(shmb_prepare_wait(sub), 0);
	cr_assert_gt(shmb_publish(px, 0, 0, "{}", 2), 0);
	cr_assert(epoll_fires(ep, 3000), "an old publisher did not wake the old subscriber");
	H_EXPECT_RC(shmb_wait(sub, 0), 1);

	/* ...and a subscriber that attached after the restart. */
	shmb_client *late = h_attach(b->name);
	shmb_session *sy = evh_session(late, sid_y);
	H_OK(shmb_subscribe(sy));
	shmb_session *py = NULL;
	H_OK(shmb_session_open(pub, sid_y, EVH_TENANT, NULL, &py));
	H_EXPECT_RC(shmb_prepare_wait(late), 0);
	cr_assert_gt(shmb_publish(py, 0, 0, "{}", 2), 0);
	H_EXPECT_RC(shmb_wait(late, 3000), 1);

	close(ep);
	shmb_session_close(py);
	shmb_session_close(sy);
	h_detach(late);
	shmb_session_close(px);
	shmb_session_close(sx);
	h_detach(pub);
	h_detach(sub);
}

/* A session holding more ids than its ring: what was published before subscribing is still not
 * news, and news after a long silence is reported once. */
H_TEST(wakeup, old_news_in_a_long_session)
{
	struct h_broker *b = h_broker_start(H_NOARGS); /* 16 slots */
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	for (int i = 0; i < 100; i++)
		H_OK(shmb_publish(s, 0, 0, "{}", 2));
	H_OK(shmb_subscribe(s));
	int spurious = 0;
	while (shmb_wait(c, 0) == 1 && spurious < 1000)
		spurious++;
	cr_assert_eq(spurious, 0,
		     "100 events published before subscribing (16-slot ring) were "
		     "reported as news %d times",
		     spurious);

	/* 100 more while the subscriber does not wait: one piece of news, not one per ring. */
	run_publisher(b->name, sid, 100);
	int news = 0;
	while (shmb_wait(c, 0) == 1 && news < 1000)
		news++;
	cr_assert_eq(news, 1, "100 events (16-slot ring) reported as news %d times", news);
	shmb_session_close(s);
	h_detach(c);
}

/* A publisher writes an eventfd only when the subscriber is armed, once per arming. */
H_TEST(wakeup, no_wakeup_storm)
{
	struct h_broker *b =
		h_broker_start(H_ARGS("--ring-events", "2048", "--ring-bytes", "1048576"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	int fd = shmb_fd(c);
	H_OK(fd);
	H_OK(shmb_subscribe(s));
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));

	/* Subscribed but busy (not armed): 1000 events, no syscall on our account. */
	struct evh_report r = run_publisher(b->name, sid, 1000);
	cr_assert_eq(r.n[1], 0, "%llu eventfd writes while the subscriber was not waiting",
		     (unsigned long long)r.n[1]);
	cr_assert(!fd_readable(fd));
	/* The re-check finds the news: no sleep. */
	H_EXPECT_RC(shmb_prepare_wait(c), 1);
	cr_assert_eq(uatomic_read(&my_worker(c)->armed), 0, "still armed after finding news");
	cr_assert_eq(drain(cur), 1000);

	/* Armed: the next 100 events cost exactly one eventfd write. */
	H_EXPECT_RC(shmb_prepare_wait(c), 0);
	r = run_publisher(b->name, sid, 100);
	cr_assert_eq(r.n[1], 1, "%llu eventfd writes for 100 events to one armed subscriber",
		     (unsigned long long)r.n[1]);
	cr_assert(fd_readable(fd), "armed subscriber's fd not readable after a commit");
	H_EXPECT_RC(shmb_wait(c, 0), 1);
	cr_assert(!fd_readable(fd), "shmb_wait(c, 0) did not clear the fd");
	cr_assert_eq(uatomic_read(&my_worker(c)->armed), 0, "shmb_wait(c, 0) armed again");
	cr_assert_eq(drain(cur), 100);
	H_EXPECT_RC(shmb_wait(c, 0), 0);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_detach(c);
}

/* A thread of the test process publishing into one session until told to stop. */
struct spin_pub {
	shmb_session *s;
	int stop;
	uint64_t published;
};

static void *spin_publisher(void *p)
{
	struct spin_pub *a = p;
	while (!__atomic_load_n(&a->stop, __ATOMIC_ACQUIRE)) {
		if (shmb_publish(a->s, 0, 0, "{}", 2) > 0)
			__atomic_add_fetch(&a->published, 1, __ATOMIC_RELEASE);
		int64_t next = evh_mono_ns() + 20000; /* one event per 20 us: well inside a spin */
		while (evh_mono_ns() < next)
			caa_cpu_relax();
	}
	return NULL;
}

/* shmb_prepare_wait's bounded spin before arming (shmb_set_wait_spin): with spin 0 it arms at
 * once; with a spin it re-checks first, so against a steady publisher it finds the news without
 * ever arming (no eventfd write at all), and with nothing published it arms after the spin.
 * Waking up (shmb_wait(c, 0)) never arms. */
H_TEST(wakeup, spin_before_arming)
{
	struct h_broker *b =
		h_broker_start(H_ARGS("--ring-events", "1024", "--ring-bytes", "262144"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	H_OK(shmb_subscribe(s));
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));
	H_EXPECT_RC(shmb_set_wait_spin(c, SHMB_WAIT_SPIN_MAX_NS + 1), SHMB_EINVAL);
	H_EXPECT_RC(shmb_set_wait_spin(NULL, 0), SHMB_EINVAL);

	/* spin 0: nothing new, armed at once. */
	H_OK(shmb_set_wait_spin(c, 0));
	H_EXPECT_RC(shmb_prepare_wait(c), 0);
	cr_assert_eq(uatomic_read(&my_worker(c)->armed), 1, "not armed after prepare_wait");
	/* Waking up without a signal: disarms, does not arm again, no news. */
	H_EXPECT_RC(shmb_wait(c, 0), 0);
	cr_assert_eq(uatomic_read(&my_worker(c)->armed), 0, "shmb_wait(c, 0) left us armed");

	/* A spin and nothing published: armed after (at least) the spin. */
	uint32_t spin = 500000; /* 0.5 ms */
	H_OK(shmb_set_wait_spin(c, spin));
	int64_t t0 = evh_mono_ns();
	H_EXPECT_RC(shmb_prepare_wait(c), 0);
	cr_assert_geq(evh_mono_ns() - t0, (int64_t)spin, "returned before the spin ended");
	cr_assert_eq(uatomic_read(&my_worker(c)->armed), 1);
	H_EXPECT_RC(shmb_wait(c, 0), 0);

	/* A spin against a steady publisher: news found before arming, never an eventfd write. */
	H_OK(shmb_set_wait_spin(c, SHMB_WAIT_SPIN_MAX_NS));
	struct spin_pub a = { .s = s };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, spin_publisher, &a), 0);
	uint64_t sent0 = uatomic_read(&my_worker(c)->wakeups_sent);
	int found = 0;
	uint64_t read = 0;
	for (int i = 0; i < 200; i++) {
		read += drain(cur);
		int rc = shmb_prepare_wait(c);
		cr_assert_geq(rc, 0, "shmb_prepare_wait: %s", shmb_strerror(rc));
		found += rc;
		if (rc == 0)
			shmb_wait(c, 0); /* the publisher stalled for a whole spin: disarm */
	}
	__atomic_store_n(&a.stop, 1, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
	/* On a quiet machine nearly every wait finds the news in the spin; a loaded one may stall
	 * the publisher for longer than a spin, so only "some" is asserted (no timing in tests). */
	cr_assert_geq(found, 1, "the spin never found news in 200 waits");
	/* Each wait that found news in the spin never armed: no eventfd write for those. */
	cr_assert_leq(uatomic_read(&my_worker(c)->wakeups_sent) - sent0, (uint64_t)(200 - found),
		      "eventfd writes although the spin found the news");
	read += drain(cur);
	cr_assert_eq(read, __atomic_load_n(&a.published, __ATOMIC_ACQUIRE));
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_detach(c);
}

/* The epoll loop of docs/events.md, against a publisher with random pauses over two sessions. */
struct two_arg {
	const char *name, *sid[2];
	uint64_t count;
};

static int two_publisher(void *p, int wfd)
{
	struct two_arg *a = p;
	shmb_client *c;
	shmb_session *s[2];
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid[0], &c, &s[0], &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher: %s", what);
	if ((rc = shmb_session_open(c, a->sid[1], EVH_TENANT, NULL, &s[1])) < 0)
		return evh_fail(wfd, rc, "publisher: open");
	uint64_t rng = (uint64_t)getpid() * 104729;
	uint64_t seq[2] = { 0, 0 };
	unsigned char buf[128];
	for (uint64_t i = 0; i < a->count; i++) {
		evh_pause(&rng, 20000);
		int k = (int)(evh_rand(&rng) & 1);
		evh_fill(buf, sizeof buf, (uint32_t)k, seq[k], 0);
		int64_t id = shmb_publish(s[k], (uint32_t)k, 0, buf, sizeof buf);
		if (id < 0)
			return evh_fail(wfd, (int)id, "publisher: shmb_publish");
		seq[k]++;
	}
	struct evh_report r = { 0 };
	r.n[0] = seq[0];
	r.n[1] = seq[1];
	shmb_session_close(s[1]);
	evh_child_close(c, s[0]);
	return evh_send(wfd, &r);
}

H_TEST(wakeup, prepare_wait_epoll_loop)
{
	const uint64_t total = 3000;
	struct h_broker *b =
		h_broker_start(H_ARGS("--ring-events", "4096", "--ring-bytes", "1048576"));
	shmb_client *c = h_attach(b->name);
	char sid[2][SHMB_SID_LEN + 1];
	shmb_session *s[2];
	shmb_cursor *cur[2];
	for (int k = 0; k < 2; k++) {
		s[k] = evh_session(c, sid[k]);
		H_OK(shmb_subscribe(s[k]));
		H_OK(shmb_cursor_open(s[k], 0, &cur[k]));
	}
	int ep = epoll_create1(EPOLL_CLOEXEC);
	cr_assert_geq(ep, 0);
	struct epoll_event ee = { .events = EPOLLIN, .data.u32 = 1 };
	cr_assert_eq(epoll_ctl(ep, EPOLL_CTL_ADD, shmb_fd(c), &ee), 0);

	struct two_arg ta = { .name = b->name, .sid = { sid[0], sid[1] }, .count = total };
	static struct h_child ch;
	h_child_start(&ch, two_publisher, &ta);

	uint64_t got = 0, seq[2] = { 0, 0 }, sleeps = 0, prepared_news = 0;
	int64_t max_lat_ns = 0;
	int64_t deadline = h_now_ms() + 60000;
	static unsigned char buf[1024];
	while (got < total) {
		for (int k = 0; k < 2; k++) {
			shmb_event ev;
			int rc;
			while ((rc = shmb_cursor_next(cur[k], &ev, buf, sizeof buf)) == 1) {
				int64_t lat = evh_mono_ns();
				struct evh_payload h;
				const char *bad = evh_check(ev.data, ev.len, &h);
				cr_assert_null(bad, "session %d event %llu: %s", k,
					       (unsigned long long)ev.id, bad);
				cr_assert(h.pub == (uint32_t)k && h.seq == seq[k],
					  "session %d: got (%u, %llu), want (%d, %llu)", k, h.pub,
					  (unsigned long long)h.seq, k, (unsigned long long)seq[k]);
				lat -= h.stamp_ns;
				if (lat > max_lat_ns)
					max_lat_ns = lat;
				seq[k]++;
				got++;
			}
			cr_assert_eq(rc, 0, "shmb_cursor_next: %s (%s)", shmb_err_name(rc),
				     shmb_strerror(rc));
		}
		if (got == total)
			break;
		cr_assert_lt(h_now_ms(), deadline, "only %llu of %llu events",
			     (unsigned long long)got, (unsigned long long)total);
		int pw = shmb_prepare_wait(c);
		H_OK(pw);
		if (pw == 1) {
			prepared_news++;
			continue; /* process instead of sleeping */
		}
		struct epoll_event out;
		int n = epoll_wait(ep, &out, 1, 1000);
		if (n == 0) {
			/* 1 s without a wakeup: fine only if nothing is committed and unread. */
			uint64_t pending = 0;
			for (int k = 0; k < 2; k++)
				pending += drain(cur[k]);
			cr_assert_eq(pending, 0,
				     "lost wakeup: %llu events committed, fd not readable for 1 s",
				     (unsigned long long)pending);
			continue;
		}
		cr_assert_eq(n, 1, "epoll_wait: %s", strerror(errno));
		sleeps++;
		H_OK(shmb_wait(c, 0)); /* clear the fd, then drain */
	}
	struct evh_report r;
	evh_collect(&ch, "publisher", &r, 30000);
	cr_assert_eq(r.n[0] + r.n[1], total);
	cr_assert(seq[0] == r.n[0] && seq[1] == r.n[1]);
	cr_assert_lt(max_lat_ns, (int64_t)WAKE_BUDGET_MS * 1000000,
		     "an event was received %.1f ms after it was stamped", max_lat_ns / 1e6);
	cr_log_info("epoll loop: %llu events, %llu sleeps, %llu prepare_wait with news, max "
		    "latency %.3f ms",
		    (unsigned long long)got, (unsigned long long)sleeps,
		    (unsigned long long)prepared_news, max_lat_ns / 1e6);
	close(ep);
	for (int k = 0; k < 2; k++) {
		shmb_cursor_close(cur[k]);
		shmb_session_close(s[k]);
	}
	h_detach(c);
}

/* ---------------------------------------------------------------- waking on delete and expiry */

struct sleeper_arg {
	const char *name, *sid;
	int timeout_ms;
};

/* Subscribes, reads what is there, says "about to wait", waits. Report: n[0] shmb_wait's result,
 * n[1] cursor_next's result after it, n[2] a second shmb_wait(c, 0); t[0] mono ns before the
 * wait, t[1] mono ns after, t[2] wall ms after. */
static int sleeper(void *p, int wfd)
{
	struct sleeper_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	shmb_cursor *cur;
	int rc = evh_child_subscriber(a->name, a->sid, &c, &s, &cur, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "sleeper: %s", what);
	shmb_event ev;
	char buf[1024];
	while ((rc = shmb_cursor_next(cur, &ev, buf, sizeof buf)) == 1)
		;
	if (rc < 0)
		return evh_fail(wfd, rc, "sleeper: cursor_next");
	struct evh_report r = { 0 };
	char one = 1;
	if (h_write_all(wfd, &one, 1) < 0)
		return 1;
	r.t[0] = evh_mono_ns();
	int w = shmb_wait(c, a->timeout_ms);
	r.t[1] = evh_mono_ns();
	r.t[2] = h_wall_ms();
	r.n[0] = (uint64_t)(int64_t)w;
	r.n[1] = (uint64_t)(int64_t)shmb_cursor_next(cur, &ev, buf, sizeof buf);
	r.n[2] = (uint64_t)(int64_t)shmb_wait(c, 0);
	shmb_cursor_close(cur);
	shmb_unsubscribe(s);
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

/* Starts a sleeper and returns once it is blocked in its wait. */
static void start_sleeper(struct h_child *ch, struct sleeper_arg *a)
{
	h_child_start(ch, sleeper, a);
	char one;
	cr_assert_eq(h_child_read(ch, &one, 1, 30000), 1, "sleeper did not get ready");
	cr_assert(H_POLL_UNTIL(evh_proc_sleeping(ch->pid), 5000), "sleeper never blocked");
}

H_TEST(wakeup, delete_wakes_a_sleeping_subscriber)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	H_OK(shmb_publish(s, 0, 0, "{}", 2));
	struct sleeper_arg sa = { .name = b->name, .sid = sid, .timeout_ms = 20000 };
	static struct h_child ch;
	start_sleeper(&ch, &sa);

	int64_t t0 = evh_mono_ns();
	H_OK(shmb_session_delete(c, sid, EVH_TENANT, NULL));
	int64_t t1 = evh_mono_ns();
	struct evh_report r;
	evh_collect(&ch, "sleeper", &r, 30000);
	cr_assert_eq((int)r.n[0], 1, "shmb_wait returned %d after the delete", (int)r.n[0]);
	cr_assert_eq((int)r.n[1], SHMB_ENOENT, "cursor after the delete: %d %s", (int)r.n[1],
		     shmb_err_name((int)r.n[1]));
	cr_assert_eq((int)r.n[2], 0, "the deletion was reported twice");
	cr_assert_geq(r.t[1], t0, "woken before the delete");
	cr_assert_lt(r.t[1] - t1, (int64_t)WAKE_BUDGET_MS * 1000000,
		     "woken %.1f ms after the delete returned", (r.t[1] - t1) / 1e6);
	cr_log_info("delete: subscriber woken %.3f ms after the delete call began",
		    (r.t[1] - t0) / 1e6);
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(wakeup, expiry_wakes_a_sleeping_subscriber)
{
	const int ttl = 500, sweep = 20;
	struct h_broker *b =
		h_broker_start(H_ARGS("--absolute-ttl-ms", "500", "--inactivity-ttl-ms", "0",
				      "--sweep-interval-ms", "20"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	int64_t expires = info.created_at_ms + ttl;
	struct sleeper_arg sa = { .name = b->name, .sid = sid, .timeout_ms = 20000 };
	static struct h_child ch;
	start_sleeper(&ch, &sa);
	if (h_wall_ms() > expires - 100)
		cr_skip_test("machine too slow: the sleeper was not asleep before the expiry");

	struct evh_report r;
	evh_collect(&ch, "sleeper", &r, 30000);
	cr_assert_eq((int)r.n[0], 1, "shmb_wait returned %d (timeout: expiry did not wake it)",
		     (int)r.n[0]);
	cr_assert_eq((int)r.n[1], SHMB_ENOENT, "cursor after expiry: %d %s", (int)r.n[1],
		     shmb_err_name((int)r.n[1]));
	cr_assert_eq((int)r.n[2], 0, "the expiry was reported twice");
	cr_assert_geq(r.t[2], expires - 1, "woken %lld ms before the session expired",
		      (long long)(expires - r.t[2]));
	cr_assert_leq(r.t[2], expires + sweep + WAKE_BUDGET_MS,
		      "woken %lld ms after the expiry (sweep interval %d ms)",
		      (long long)(r.t[2] - expires), sweep);
	cr_log_info("expiry: subscriber woken %lld ms after the absolute TTL passed",
		    (long long)(r.t[2] - expires));
	H_EXPECT_RC(shmb_session_stat(s, &info), SHMB_ENOENT);
	shmb_session_close(s);
	h_detach(c);
}

/* A wakeup sent while no broker served, through a stale eventfd set, is made good by the next
 * broker. The publisher fetched its set from broker 1; the sleeper attached to broker 2 (a new
 * eventfd in its slot); broker 2 died before the publisher fetched its set, so the publish
 * writes broker 1's old fd for that slot and the sleeper sleeps on. Broker 3, once serving,
 * writes every kept worker's eventfd (brk_workers_wake_all). */
H_TEST(wakeup, restarted_broker_makes_good_a_wakeup_lost_to_a_stale_set)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *pub = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(pub, sid);
	h_broker_kill(b);
	h_broker_restart(b);
	struct sleeper_arg sa = { .name = b->name, .sid = sid, .timeout_ms = 20000 };
	static struct h_child ch;
	start_sleeper(&ch, &sa);
	h_broker_kill(b);
	/* No broker: the publisher cannot fetch the current set and wakes through its old one. */
	cr_assert_geq(shmb_publish(s, 0, 0, "{}", 2), 1);
	int64_t t0 = evh_mono_ns();
	h_broker_restart(b);
	int64_t t1 = evh_mono_ns();
	struct evh_report r;
	evh_collect(&ch, "sleeper", &r, 30000);
	cr_assert_eq((int)r.n[0], 1, "shmb_wait returned %d: the sleeper slept through the event",
		     (int)r.n[0]);
	cr_assert_eq((int)r.n[1], 1, "no event after the wakeup: %d", (int)r.n[1]);
	cr_assert_lt(r.t[1] - t1, (int64_t)WAKE_BUDGET_MS * 1000000,
		     "woken %.1f ms after the broker was ready", (r.t[1] - t1) / 1e6);
	cr_log_info("stale set: sleeper woken %.3f ms after the restart began",
		    (r.t[1] - t0) / 1e6);
	shmb_session_close(s);
	h_detach(pub);
}

/* ---------------------------------------------------------------- inactivity with a subscriber */

enum { END_UNSUBSCRIBE, END_DETACH, END_DEATH };

struct holder_arg {
	const char *name, *sid;
	struct evh_gate *gate;
	int how;
};

/* Subscribes, says so, waits for the gate, then ends its interest as told and says so. */
static int holder(void *p, int wfd)
{
	struct holder_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "holder: %s", what);
	if ((rc = shmb_subscribe(s)) < 0)
		return evh_fail(wfd, rc, "holder: subscribe");
	char one = 1;
	if (h_write_all(wfd, &one, 1) < 0 || evh_gate_wait(a->gate) < 0)
		return 1;
	if (a->how == END_UNSUBSCRIBE) {
		if ((rc = shmb_unsubscribe(s)) < 0)
			return evh_fail(wfd, rc, "holder: unsubscribe");
		shmb_session_close(s);
		/* Stay attached: only the subscription ended. The parent kills us. */
		h_write_all(wfd, &one, 1);
		for (;;)
			pause();
	}
	shmb_session_close(s);
	shmb_detach(c);
	h_write_all(wfd, &one, 1);
	return 0;
}

/* A subscriber keeps an idle session from expiring by inactivity for longer than its TTL; when
 * the interest ends (unsubscribe, detach, or death settled by the broker) the session is touched
 * (a subscription is activity while it lasts), so it is still there right after and expires one
 * TTL after the end, not at once. */
static void inactivity_with_subscriber(int how)
{
	const int ttl = 1000;
	struct h_broker *b =
		h_broker_start(H_ARGS("--inactivity-ttl-ms", "1000", "--absolute-ttl-ms", "0",
				      "--sweep-interval-ms", "20"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid); /* the open is the last touch */
	struct evh_gate gate;
	evh_gate_init(&gate);
	struct holder_arg ha = { .name = b->name, .sid = sid, .gate = &gate, .how = how };
	static struct h_child ch;
	h_child_start(&ch, holder, &ha);
	char one;
	cr_assert_eq(h_child_read(&ch, &one, 1, 30000), 1, "holder did not subscribe");
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_assert_eq(info.subscribers, 1);

	/* One and a half TTLs and many sweeps without any touch: the subscriber keeps it. */
	h_sleep_ms(3 * ttl / 2);
	int rc = shmb_session_stat(s, &info); /* stat does not touch (an open would) */
	cr_assert_eq(rc, 0, "a session with a live subscriber expired by inactivity: %s (%s)",
		     shmb_err_name(rc), shmb_strerror(rc));
	int64_t idle = h_wall_ms() - info.last_accessed_at_ms;
	cr_assert_geq(idle, 3 * ttl / 2 - 5, "something touched the session");
	cr_assert_eq(h_counter(b->name, SHMB_CTR_SESSIONS_EXPIRED), 0);

	const char *how_s = how == END_DEATH    ? "died"
			    : how == END_DETACH ? "detached"
						: "unsubscribed";
	uint64_t died = h_counter(b->name, SHMB_CTR_WORKERS_DIED);
	int64_t end0 = h_wall_ms();
	if (how == END_DEATH) {
		h_child_kill(&ch);
		evh_gate_open(&gate, 0); /* closes our ends */
		/* The broker counts the death after clearing the dead worker's bits. */
		cr_assert(H_POLL_UNTIL(h_counter(b->name, SHMB_CTR_WORKERS_DIED) == died + 1, 5000),
			  "the broker did not settle the killed subscriber");
	} else {
		evh_gate_open(&gate, 1);
		cr_assert_eq(h_child_read(&ch, &one, 1, 30000), 1,
			     "holder did not end its interest");
	}
	int64_t end1 = h_wall_ms();
	/* Idle for longer than the TTL already, yet the end of the interest restarted the
	 * inactivity window: still there, touched when the interest ended. */
	rc = shmb_session_stat(s, &info);
	if (rc == SHMB_ENOENT && h_wall_ms() - end0 > ttl - 100)
		cr_skip_test("machine too slow: %ld ms to end the interest and look",
			     (long)(h_wall_ms() - end0));
	cr_assert_eq(rc, 0, "session gone right after its only subscriber %s: %s (%s)", how_s,
		     shmb_err_name(rc), shmb_strerror(rc));
	cr_assert_eq(info.subscribers, 0);
	cr_assert(info.last_accessed_at_ms >= end0 - 2 && info.last_accessed_at_ms <= end1 + 2,
		  "last_accessed_at_ms %lld not within the end of the interest [%lld, %lld]",
		  (long long)info.last_accessed_at_ms, (long long)end0, (long long)end1);
	cr_assert_eq(h_counter(b->name, SHMB_CTR_SESSIONS_EXPIRED), 0);

	/* Then it expires one TTL after that touch (stat and the sweeper use the same rule). */
	int64_t touched = info.last_accessed_at_ms;
	cr_assert(H_POLL_UNTIL(shmb_session_stat(s, &info) == SHMB_ENOENT, 3 * ttl),
		  "session still alive %d ms after its only subscriber %s", 3 * ttl, how_s);
	int64_t gone = h_wall_ms();
	cr_assert_geq(gone, touched + ttl - 2, "expired %lld ms after the end of the interest",
		      (long long)(gone - touched));
	cr_log_info("%s: expired %lld ms after the end of the interest (TTL %d ms)", how_s,
		    (long long)(gone - touched), ttl);
	cr_assert(H_POLL_UNTIL(h_counter(b->name, SHMB_CTR_SESSIONS_EXPIRED) == 1, 2000),
		  "the sweeper did not expire it");
	shmb_session *again = NULL;
	H_EXPECT_RC(shmb_session_open(c, sid, EVH_TENANT, NULL, &again), SHMB_ENOENT);
	if (how == END_UNSUBSCRIBE)
		h_child_kill(&ch);
	else if (how == END_DETACH)
		cr_assert_eq(h_child_wait(&ch, 30000), 0);
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(wakeup, subscriber_prevents_inactivity_expiry_until_unsubscribe)
{
	inactivity_with_subscriber(END_UNSUBSCRIBE);
}

H_TEST(wakeup, subscriber_prevents_inactivity_expiry_until_detach)
{
	inactivity_with_subscriber(END_DETACH);
}

H_TEST(wakeup, dead_subscriber_does_not_keep_a_session)
{
	inactivity_with_subscriber(END_DEATH);
}
