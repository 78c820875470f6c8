/* test_gap.c - dead publishers: a process SIGKILLed between claim and commit (fault point
 * client.publish.claimed, compiled in with -DSHMB_FAULT_INJECTION=ON) leaves an id the broker
 * must turn into a gap record (SHMB_EV_GAP, no payload) within 100 ms of the death, so readers
 * go on: unfiltered and stream-filtered cursors get the gap and every later event, a subscriber
 * asleep behind the pending id is woken, and a publisher whose claim wrapped onto the dead
 * claim's descriptor is released.
 *
 * The death is awaited through the child's pidfd (a real event); the gap is then awaited by
 * polling the cursor against a deadline (nothing signals a non-subscriber). Skipped when the
 * build has no fault injection. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "evhelp.h"
#include "fault.h"
#include "layout.h"

TestSuite(gap, .init = h_setup, .fini = h_teardown, .timeout = 90);

#define GAP_BUDGET_MS 100 /* docs/events.md: a gap within 100 ms of the death */

static void need_faults(void)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test(
			"built without SHMB_FAULT_INJECTION (cmake -DSHMB_FAULT_INJECTION=ON)");
}

/* ---------------------------------------------------------------- the dying publisher */

struct victim_arg {
	const char *name, *sid;
	const char *fault; /* SHMB_FAULT value */
	uint32_t stream;
	int survive; /* 1: resumed after a :stop fault, it reports what shmb_publish returned */
};

/* Opens the session, says "ready", then publishes with the fault armed: never returns from
 * shmb_publish (killed or stopped between claim and commit). */
static int victim(void *p, int wfd)
{
	struct victim_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "victim: %s", what);
	char one = 1;
	if (h_write_all(wfd, &one, 1) < 0)
		return 1;
	setenv("SHMB_FAULT", a->fault, 1);
	unsigned char buf[128];
	evh_fill(buf, sizeof buf, 99, 0, 0);
	int64_t id = shmb_publish(s, a->stream, 0, buf, sizeof buf);
	unsetenv("SHMB_FAULT");
	if (a->survive) {
		struct evh_report r = { 0 };
		r.n[0] = (uint64_t)id;
		evh_child_close(c, s);
		return evh_send(wfd, &r);
	}
	/* Reaching this is the failure: the fault point did not fire. */
	return evh_fail(wfd, id < 0 ? (int)id : 0,
			"victim: shmb_publish returned %lld with "
			"SHMB_FAULT=%s",
			(long long)id, a->fault);
}

static void start_victim(struct h_child *ch, struct victim_arg *a)
{
	h_child_start(ch, victim, a);
	char one;
	cr_assert_eq(h_child_read(ch, &one, 1, 30000), 1, "victim did not open the session");
}

/* Awaits the victim's death through its pidfd; returns the monotonic ms it was seen dead.
 * Reaps it and asserts it died of SIGKILL. */
static int64_t await_death(struct h_child *ch)
{
	if (ch->pidfd >= 0) {
		struct pollfd pf = { .fd = ch->pidfd, .events = POLLIN };
		int n;
		while ((n = poll(&pf, 1, 30000)) < 0 && errno == EINTR)
			;
		cr_assert_eq(n, 1, "victim %ld still alive after 30 s", (long)ch->pid);
	} else {
		siginfo_t si;
		cr_assert_eq(waitid(P_PID, (id_t)ch->pid, &si, WEXITED | WNOWAIT), 0);
	}
	int64_t t = h_now_ms();
	/* A victim that survived its publish sent a report saying so. */
	struct evh_report rep;
	int said = h_child_read(ch, &rep, sizeof rep, 0) == (ssize_t)sizeof rep;
	h_child_kill(ch); /* reaps (the kill is a no-op on a zombie) */
	cr_assert(!said, "%s", rep.msg);
	cr_assert(WIFSIGNALED(ch->status) && WTERMSIG(ch->status) == SIGKILL,
		  "victim died of signal %d, want SIGKILL from the fault point",
		  WIFSIGNALED(ch->status) ? WTERMSIG(ch->status) : -1);
	return t;
}

/* Stops the victim at the fault point: waits until it is stopped (waitpid WUNTRACED). */
static void await_stop(struct h_child *ch)
{
	int st;
	pid_t r;
	while ((r = waitpid(ch->pid, &st, WUNTRACED)) < 0 && errno == EINTR)
		;
	cr_assert_eq(r, ch->pid, "waitpid: %s", strerror(errno));
	cr_assert(WIFSTOPPED(st), "victim did not stop at the fault point (status %#x)", st);
}

/* ---------------------------------------------------------------- reading */

/* Polls cur until it yields an event (no event exists to wait for as a non-subscriber). */
static int next_within(shmb_cursor *cur, shmb_event *ev, void *buf, size_t len, int timeout_ms)
{
	int rc = 0;
	int64_t deadline = h_now_ms() + timeout_ms;
	for (;;) {
		rc = shmb_cursor_next(cur, ev, buf, len);
		if (rc != 0 || h_now_ms() > deadline)
			return rc;
		h_sleep_ms(1);
	}
}

static void expect_gap(shmb_cursor *cur, uint64_t id, int timeout_ms)
{
	unsigned char buf[256];
	shmb_event ev;
	int rc = next_within(cur, &ev, buf, sizeof buf, timeout_ms);
	cr_assert_eq(rc, 1, "no gap record for id %llu within %d ms: cursor_next %d %s (%s)",
		     (unsigned long long)id, timeout_ms, rc, rc < 0 ? shmb_err_name(rc) : "",
		     rc < 0 ? shmb_strerror(rc) : "");
	cr_assert_eq(ev.id, id, "got id %llu where the gap %llu was due", (unsigned long long)ev.id,
		     (unsigned long long)id);
	cr_assert(ev.flags & SHMB_EV_GAP, "id %llu: flags %#x, want SHMB_EV_GAP",
		  (unsigned long long)id, ev.flags);
	cr_assert(ev.len == 0 && ev.data == NULL, "gap %llu: len %zu data %p",
		  (unsigned long long)id, ev.len, ev.data);
}

static void expect_event(shmb_cursor *cur, uint64_t id, uint32_t stream)
{
	unsigned char buf[512];
	shmb_event ev;
	EVH_NEXT(cur, &ev, buf, sizeof buf, 1);
	cr_assert_eq(ev.id, id, "got id %llu, expected %llu", (unsigned long long)ev.id,
		     (unsigned long long)id);
	cr_assert_eq(ev.flags, 0, "id %llu: flags %#x", (unsigned long long)id, ev.flags);
	cr_assert_eq(ev.stream, stream, "id %llu: stream %u, expected %u", (unsigned long long)id,
		     ev.stream, stream);
	struct evh_payload h;
	const char *bad = evh_check(ev.data, ev.len, &h);
	cr_assert_null(bad, "event %llu: %s", (unsigned long long)id, bad);
}

/* ---------------------------------------------------------------- a live publisher */

struct pub_arg {
	const char *name, *sid;
	uint64_t count;
	uint32_t streams[2]; /* alternates */
};

/* Report: n[0] first id, n[1] last id, t[0] mono ms when done. */
static int live_publisher(void *p, int wfd)
{
	struct pub_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher: %s", what);
	struct evh_report r = { 0 };
	unsigned char buf[128];
	for (uint64_t i = 0; i < a->count; i++) {
		evh_fill(buf, sizeof buf, 1, i, 0);
		int64_t id = shmb_publish(s, a->streams[i & 1], 0, buf, sizeof buf);
		if (id < 0)
			return evh_fail(wfd, (int)id, "publisher: shmb_publish");
		if (i == 0)
			r.n[0] = (uint64_t)id;
		r.n[1] = (uint64_t)id;
	}
	r.t[0] = h_now_ms();
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

static void publish_here(shmb_session *s, uint32_t stream, uint64_t want_id)
{
	unsigned char buf[128];
	evh_fill(buf, sizeof buf, 0, want_id, 0);
	int64_t id = shmb_publish(s, stream, 0, buf, sizeof buf);
	cr_assert_eq(id, (int64_t)want_id, "shmb_publish: %lld %s", (long long)id,
		     id < 0 ? shmb_strerror((int)id) : "");
}

/* ---------------------------------------------------------------- tests */

/* Two publishers die holding ids 4 and 5; readers get two gaps and the stream goes on. */
static void two_deaths(const char *fault)
{
	need_faults();
	struct h_broker *b = h_broker_start(H_ARGS("--ring-events", "64", "--ring-bytes", "16384"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	for (uint64_t id = 1; id <= 3; id++)
		publish_here(s, 8, id);
	shmb_cursor *all = NULL, *st7 = NULL, *st8 = NULL;
	H_OK(shmb_cursor_open(s, 0, &all));
	H_OK(shmb_cursor_open_stream(s, 0, 7, &st7));
	H_OK(shmb_cursor_open_stream(s, 0, 8, &st8));
	for (uint64_t id = 1; id <= 3; id++)
		expect_event(all, id, 8);

	/* Two publishers die holding ids 4 and 5 (in either order). */
	struct victim_arg va = { .name = b->name, .sid = sid, .fault = fault, .stream = 7 };
	static struct h_child v[2];
	start_victim(&v[0], &va);
	start_victim(&v[1], &va);
	int64_t dead[2] = { await_death(&v[0]), await_death(&v[1]) };
	int64_t last_death = dead[0] > dead[1] ? dead[0] : dead[1];

	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_assert_eq(info.last_event_id, 5, "the victims claimed ids 4 and 5; last id %llu",
		     (unsigned long long)info.last_event_id);

	expect_gap(all, 4, 2000);
	int64_t t4 = h_now_ms();
	expect_gap(all, 5, 2000);
	int64_t t5 = h_now_ms();
	cr_log_info("gaps seen %lld and %lld ms after the deaths were observed",
		    (long long)(t4 - last_death), (long long)(t5 - last_death));
	cr_assert_leq(t5 - last_death, GAP_BUDGET_MS + 5,
		      "gap records came %lld ms after the death (budget %d ms)",
		      (long long)(t5 - last_death), GAP_BUDGET_MS);
	cr_assert(H_POLL_UNTIL(h_counter(b->name, SHMB_CTR_GAPS_WRITTEN) == 2, 1000),
		  "gaps_written counter %llu, want 2",
		  (unsigned long long)h_counter(b->name, SHMB_CTR_GAPS_WRITTEN));

	/* The stream goes on: another process publishes ids 6..11 on streams 7 and 8. */
	struct pub_arg pa = { .name = b->name, .sid = sid, .count = 6, .streams = { 7, 8 } };
	static struct h_child pub;
	h_child_start(&pub, live_publisher, &pa);
	struct evh_report r;
	evh_collect(&pub, "publisher", &r, 30000);
	cr_assert(r.n[0] == 6 && r.n[1] == 11, "live publisher got ids %llu..%llu, want 6..11",
		  (unsigned long long)r.n[0], (unsigned long long)r.n[1]);
	for (uint64_t id = 6; id <= 11; id++)
		expect_event(all, id, id % 2 ? 8 : 7);
	shmb_event ev;
	EVH_NEXT(all, &ev, NULL, 0, 0);

	/* Filtered cursors: their own stream's events and both gaps (a gap's stream is unknown). */
	expect_gap(st7, 4, 0);
	expect_gap(st7, 5, 0);
	for (uint64_t id = 6; id <= 10; id += 2)
		expect_event(st7, id, 7);
	EVH_NEXT(st7, &ev, NULL, 0, 0);
	for (uint64_t id = 1; id <= 3; id++)
		expect_event(st8, id, 8);
	expect_gap(st8, 4, 0);
	expect_gap(st8, 5, 0);
	for (uint64_t id = 7; id <= 11; id += 2)
		expect_event(st8, id, 8);
	EVH_NEXT(st8, &ev, NULL, 0, 0);

	/* A replay from the start shows the same. */
	shmb_cursor *again = NULL;
	H_OK(shmb_cursor_open(s, 3, &again));
	expect_gap(again, 4, 0);
	expect_gap(again, 5, 0);
	expect_event(again, 6, 7);
	shmb_cursor_close(again);
	shmb_cursor_close(st8);
	shmb_cursor_close(st7);
	shmb_cursor_close(all);
	shmb_session_close(s);
	h_detach(c);
}

/* Killed right after the fetch-and-add, before taking the descriptor. */
H_TEST(gap, sigkill_between_claim_and_commit)
{
	two_deaths("client.publish.claimed");
}

/* Killed holding the descriptor busy, payload written, not committed. */
H_TEST(gap, sigkill_between_write_and_commit)
{
	two_deaths("publish.write");
}

/* A large event's claim covers several ids: each becomes a gap, the next event follows. */
H_TEST(gap, large_event_claim_becomes_gaps)
{
	need_faults();
	/* 64 slots of 64 bytes: the victim's 128-byte event takes ids 2 and 3. */
	struct h_broker *b = h_broker_start(H_ARGS("--ring-events", "64", "--ring-bytes", "4096"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	H_OK(shmb_publish(s, 0, 0, "{}", 2)); /* id 1 */
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 1, &cur));
	struct victim_arg va = {
		.name = b->name, .sid = sid, .fault = "client.publish.claimed", .stream = 0
	};
	static struct h_child v;
	start_victim(&v, &va);
	int64_t dead = await_death(&v);
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_assert_eq(info.last_event_id, 3,
		     "the victim's 128-byte event claims ids 2..3; last %llu",
		     (unsigned long long)info.last_event_id);
	expect_gap(cur, 2, 2000);
	expect_gap(cur, 3, 2000);
	cr_assert_leq(h_now_ms() - dead, GAP_BUDGET_MS + 5, "gaps %lld ms after the death",
		      (long long)(h_now_ms() - dead));
	H_OK(shmb_publish(s, 0, 0, "{}", 2));
	shmb_event ev;
	char buf[16];
	EVH_NEXT(cur, &ev, buf, sizeof buf, 1);
	cr_assert(ev.id == 4 && ev.flags == 0 && ev.len == 2, "after the gaps: id %llu flags %#x",
		  (unsigned long long)ev.id, ev.flags);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_detach(c);
}

/* A subscriber that went to sleep behind a pending id must be woken when it becomes a gap:
 * a later event committed meanwhile is news it could not see past the pending id. */
struct waiter_arg {
	const char *name, *sid;
	uint64_t want_last; /* reads until this id */
};

/* Subscribes, reads, sends "1" before its first wait and "2" after its first wakeup, then
 * waits until it has read want_last. Report: n[0] gap id seen (0 none), n[1] waits that
 * returned 0 (timeouts), t[0] mono ms when it read want_last. */
static int waiter(void *p, int wfd)
{
	struct waiter_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	shmb_cursor *cur;
	int rc = evh_child_subscriber(a->name, a->sid, &c, &s, &cur, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "waiter: %s", what);
	struct evh_report r = { 0 };
	uint64_t last = 0;
	int waits = 0;
	unsigned char buf[256];
	int64_t deadline = h_now_ms() + 20000;
	for (;;) {
		shmb_event ev;
		while ((rc = shmb_cursor_next(cur, &ev, buf, sizeof buf)) == 1) {
			if (ev.flags & SHMB_EV_GAP)
				r.n[0] = ev.id;
			last = ev.id;
		}
		if (rc < 0)
			return evh_fail(wfd, rc, "waiter: cursor_next after %llu",
					(unsigned long long)last);
		if (last >= a->want_last)
			break;
		if (h_now_ms() > deadline)
			return evh_fail(wfd, 0, "waiter: stuck after id %llu for 20 s",
					(unsigned long long)last);
		char mark = (char)('1' + (waits > 0));
		if (waits < 2 && h_write_all(wfd, &mark, 1) < 0)
			return 1;
		int w = shmb_wait(c, 2000);
		if (w < 0)
			return evh_fail(wfd, w, "waiter: shmb_wait");
		if (w == 0)
			r.n[1]++;
		waits++;
	}
	r.t[0] = h_now_ms();
	while (waits < 2) { /* keep the protocol: both marks are always sent */
		char mark = (char)('1' + waits++);
		h_write_all(wfd, &mark, 1);
	}
	shmb_cursor_close(cur);
	shmb_unsubscribe(s);
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

H_TEST(gap, gap_wakes_a_subscriber_waiting_behind_it)
{
	need_faults();
	struct h_broker *b = h_broker_start(H_ARGS("--ring-events", "64", "--ring-bytes", "16384"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	publish_here(s, 0, 1);

	/* The victim claims id 2 and stops there (alive, so no gap yet). */
	struct victim_arg va = {
		.name = b->name, .sid = sid, .fault = "client.publish.claimed:stop", .stream = 0
	};
	static struct h_child v;
	start_victim(&v, &va);
	await_stop(&v);

	/* A subscriber reads id 1 and goes to sleep before the pending id 2. */
	struct waiter_arg wa = { .name = b->name, .sid = sid, .want_last = 3 };
	static struct h_child w;
	h_child_start(&w, waiter, &wa);
	char mark;
	cr_assert_eq(h_child_read(&w, &mark, 1, 30000), 1);
	cr_assert(H_POLL_UNTIL(evh_proc_sleeping(w.pid), 5000), "waiter never blocked");

	/* Id 3 commits (it wakes the waiter, which cannot pass id 2 and sleeps again). */
	struct pub_arg pa = { .name = b->name, .sid = sid, .count = 1, .streams = { 0, 0 } };
	static struct h_child pub;
	h_child_start(&pub, live_publisher, &pa);
	struct evh_report r;
	evh_collect(&pub, "publisher", &r, 30000);
	cr_assert_eq(r.n[0], 3);
	cr_assert_eq(h_child_read(&w, &mark, 1, 30000), 1,
		     "the commit of id 3 did not wake the waiter");
	cr_assert_eq(mark, '2');
	cr_assert(H_POLL_UNTIL(evh_proc_sleeping(w.pid), 5000), "waiter never blocked again");

	/* The victim dies: id 2 becomes a gap, and the waiter must learn that 2 and 3 are there. */
	kill(v.pid, SIGKILL);
	int64_t dead = await_death(&v);
	evh_collect(&w, "waiter", &r, 30000);
	cr_assert_eq(r.n[0], 2, "waiter saw no gap at id 2 (gap id %llu)",
		     (unsigned long long)r.n[0]);
	cr_log_info("waiter read the gap and id 3 %lld ms after the death",
		    (long long)(r.t[0] - dead));
	cr_assert_leq(r.t[0] - dead, GAP_BUDGET_MS + 50,
		      "waiter read ids 2 (gap) and 3 only %lld ms after the death, with %llu wait "
		      "timeouts: the gap's commit did not wake it",
		      (long long)(r.t[0] - dead), (unsigned long long)r.n[1]);
	shmb_session_close(s);
	h_detach(c);
}

/* A publisher whose claim wraps onto a descriptor an older claim still holds busy waits for it;
 * when that claimer dies and becomes a gap, the publisher goes on. */
H_TEST(gap, wrapped_publisher_released_by_the_gap)
{
	need_faults();
	struct h_broker *b = h_broker_start(H_ARGS("--ring-events", "16")); /* 256-byte slots */
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);

	struct victim_arg va = {
		.name = b->name, .sid = sid, .fault = "publish.write:stop", .stream = 0
	};
	static struct h_child v;
	start_victim(&v, &va);
	await_stop(&v); /* holds id 1's descriptor busy */

	/* Ids 2..21: id 17 reuses id 1's descriptor and has to wait for it. */
	struct pub_arg pa = { .name = b->name, .sid = sid, .count = 20, .streams = { 0, 0 } };
	static struct h_child pub;
	h_child_start(&pub, live_publisher, &pa);
	shmb_session_info info = { 0 };
	cr_assert(H_POLL_UNTIL(shmb_session_stat(s, &info) == 0 && info.last_event_id == 17, 10000),
		  "the publisher did not reach id 17 (last id %llu)",
		  (unsigned long long)info.last_event_id);
	/* It stays there while the victim lives (stopped): 200 ms without a report shows it. */
	struct evh_report r;
	cr_assert_eq(h_child_read(&pub, &r, sizeof r, 200), -1,
		     "the publisher took a descriptor still being written by an older lap");

	kill(v.pid, SIGKILL);
	int64_t dead = await_death(&v);
	evh_collect(&pub, "publisher", &r, 30000);
	cr_assert(r.n[0] == 2 && r.n[1] == 21, "ids %llu..%llu, want 2..21",
		  (unsigned long long)r.n[0], (unsigned long long)r.n[1]);
	cr_log_info("wrapped publisher released %lld ms after the death",
		    (long long)(r.t[0] - dead));
	cr_assert_leq(r.t[0] - dead, GAP_BUDGET_MS + 50,
		      "publisher released %lld ms after the death", (long long)(r.t[0] - dead));
	cr_assert(H_POLL_UNTIL(h_counter(b->name, SHMB_CTR_GAPS_WRITTEN) == 1, 1000));

	/* Ids 6..21 retained; the gap at 1 left with the oldest. */
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));
	shmb_event ev;
	EVH_NEXT(cur, &ev, NULL, 0, SHMB_EOVERRUN);
	cr_assert_eq(shmb_cursor_lagged(cur), 5);
	for (uint64_t id = 6; id <= 21; id++)
		expect_event(cur, id, 0);
	EVH_NEXT(cur, &ev, NULL, 0, 0);
	publish_here(s, 0, 22);
	expect_event(cur, 22, 0);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_detach(c);
}

/* A claim that never took its descriptor is overtaken by the ring: newer events take the slot
 * and are not held up; the stale publisher, resumed, drops its event (an overrun for readers)
 * and never writes over the newer one; killed instead, it leaves nothing to settle. */
static void overtaken(int resume)
{
	need_faults();
	struct h_broker *b = h_broker_start(H_ARGS("--ring-events", "16")); /* 256-byte slots */
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	struct victim_arg va = { .name = b->name,
				 .sid = sid,
				 .fault = "client.publish.claimed:stop",
				 .stream = 0,
				 .survive = resume };
	static struct h_child v;
	start_victim(&v, &va);
	await_stop(&v); /* holds id 1, descriptor not taken */

	struct pub_arg pa = { .name = b->name, .sid = sid, .count = 20, .streams = { 0, 0 } };
	static struct h_child pub;
	h_child_start(&pub, live_publisher, &pa);
	struct evh_report r;
	evh_collect(&pub, "publisher", &r, 30000); /* not held up by the pending id 1 */
	cr_assert(r.n[0] == 2 && r.n[1] == 21, "ids %llu..%llu", (unsigned long long)r.n[0],
		  (unsigned long long)r.n[1]);

	if (resume) {
		kill(v.pid, SIGCONT);
		evh_collect(&v, "victim", &r, 30000);
		/* Overtaken before it could write: the publisher is told its event was lost. */
		cr_assert_eq((int64_t)r.n[0], SHMB_EOVERRUN,
			     "the resumed publish returned %lld, want SHMB_EOVERRUN",
			     (long long)r.n[0]);
	} else {
		kill(v.pid, SIGKILL);
		await_death(&v);
		/* Nothing signals that the broker settled it: wait for the death count. This
		 * checks that settling writes no gap, not how fast it happens (the 100 ms gap
		 * budget has its own tests), so the wait is long enough for a loaded ASan run. */
		cr_assert(H_POLL_UNTIL(h_counter(b->name, SHMB_CTR_WORKERS_DIED) == 1, 10000),
			  "the broker did not settle the dead publisher within 10 s");
	}
	cr_assert_eq(h_counter(b->name, SHMB_CTR_GAPS_WRITTEN), 0,
		     "a gap was written over a newer lap");
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));
	shmb_event ev;
	EVH_NEXT(cur, &ev, NULL, 0, SHMB_EOVERRUN);
	cr_assert_eq(shmb_cursor_lagged(cur), 5);
	for (uint64_t id = 6; id <= 21; id++)
		expect_event(cur, id, 0); /* id 17 intact: the stale claim did not write it */
	EVH_NEXT(cur, &ev, NULL, 0, 0);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(gap, pending_claim_overtaken_then_resumed)
{
	overtaken(1);
}

H_TEST(gap, pending_claim_overtaken_then_killed)
{
	overtaken(0);
}
