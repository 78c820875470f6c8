/* test_redteam11_waits.c - red-team findings on per-thread waits (shmb_cursor_wait): a thread
 * waiting with timeout -1 when the segment it waits in stops being served (a broker stopping
 * with unlink_on_exit marks it retired) must return (SHMB_ESTALE), not sleep forever: nobody
 * publishes into a retired segment, so no publisher will ever bump its futex word (a defect,
 * fixed); and a gap record committed by a broker that died before its wake must not leave the
 * session's waiters asleep after the next broker adopts the segment, nor leave an event loop
 * using shmb_ready woken with no handle named (two defects, fixed). Attacks that held, kept as
 * tests: a waiter SIGKILLed at each of its fault points (the broker's settle puts the count
 * right), and a waiter stopped counted just before its FUTEX_WAIT while its record is recycled
 * and given to a new session with a waiter of its own.
 *
 * The wait's timeout here is a failure detector (DETECT_MS), never the synchronisation. */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include "evhelp.h"
#include "fault.h"
#include "internal.h"
#include "layout.h"

TestSuite(redteam11_waits, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define DETECT_MS 8000 /* a wait still asleep this long after the retire is asleep for good */

struct waiter {
	shmb_cursor *cur;
	int rc;
	int tid;
	int done;
};

static void *wait_thread(void *p)
{
	struct waiter *w = p;
	uatomic_set(&w->tid, (int)syscall(SYS_gettid));
	w->rc = shmb_cursor_wait(w->cur, DETECT_MS);
	uatomic_set(&w->done, 1);
	return NULL;
}

H_TEST(redteam11_waits, retired_segment_wakes_sleeping_waiters)
{
	struct h_broker *b = h_broker_start(H_ARGS("--unlink-on-exit"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	enum { N = 3 }; /* the default test broker: 4 reader slots, one is this thread's */
	shmb_cursor *cur[N];
	struct waiter w[N];
	pthread_t th[N];
	for (int i = 0; i < N; i++) {
		H_OK(shmb_cursor_open(s, 0, &cur[i]));
		w[i] = (struct waiter){ .cur = cur[i] };
		cr_assert_eq(pthread_create(&th[i], NULL, wait_thread, &w[i]), 0);
	}
	/* Every waiter asleep in the futex, counted. */
	cr_assert(H_POLL_UNTIL(uatomic_read(&seg_rec(&c->seg, s->idx)->waiters) == N, 5000));
	for (int i = 0; i < N; i++)
		cr_assert(H_POLL_UNTIL(uatomic_read(&w[i].tid) > 0 && evh_proc_sleeping(w[i].tid),
				       5000));
	int64_t t0 = h_now_ms();
	h_broker_stop(b); /* unlink_on_exit: the segment is marked retired */
	for (int i = 0; i < N; i++)
		pthread_join(th[i], NULL);
	int64_t took = h_now_ms() - t0;
	for (int i = 0; i < N; i++)
		cr_expect_eq(w[i].rc, SHMB_ESTALE, "waiter %d: %d (%s), want SHMB_ESTALE", i,
			     w[i].rc, shmb_err_name(w[i].rc));
	cr_expect(took < DETECT_MS / 2,
		  "waiters slept %lld ms after their segment was retired (forever with -1)",
		  (long long)took);
	for (int i = 0; i < N; i++)
		shmb_cursor_close(cur[i]);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- a waiter killed at each point */

struct fault_arg {
	const char *name, *sid, *point;
	int timeout_ms;
};

static int faulted_waiter(void *p, int wfd)
{
	struct fault_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "waiter: %s", what);
	shmb_cursor *cur = NULL;
	if ((rc = shmb_cursor_open(s, 0, &cur)) < 0)
		return evh_fail(wfd, rc, "waiter: cursor_open");
	setenv("SHMB_FAULT", a->point, 1);
	rc = shmb_cursor_wait(cur, a->timeout_ms); /* killed inside */
	return evh_fail(wfd, rc, "waiter: survived its fault point %s", a->point);
}

/* Killed at a fault point of shmb_cursor_wait: the broker settles the WAIT entry, so the count
 * is 0 again (or 1 at client.wait.uncounted: the documented waste, the entry already gone); a
 * waiter of ours still sleeps and is woken by a publish, and the count ends right. */
static void kill_at(const char *point, int timeout_ms, uint32_t left)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test("needs -DSHMB_FAULT_INJECTION=ON");
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	struct fault_arg fa = {
		.name = b->name, .sid = sid, .point = point, .timeout_ms = timeout_ms
	};
	static struct h_child ch;
	h_child_start(&ch, faulted_waiter, &fa);
	cr_assert(H_POLL_UNTIL(evh_proc_state(ch.pid) == 'Z', 10000), "%s: the waiter never died",
		  point);
	h_child_kill(&ch); /* reaps it */
	cr_assert(WIFSIGNALED(ch.status) && WTERMSIG(ch.status) == SIGKILL,
		  "%s: the waiter ended with status %#x, not killed at its fault point", point,
		  ch.status);
	struct shmb_session_rec *r = seg_rec(&c->seg, s->idx);
	cr_assert(H_POLL_UNTIL(uatomic_read(&r->waiters) == left, 5000),
		  "%s: waiters %u after the kill, want %u", point, uatomic_read(&r->waiters), left);
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));
	struct waiter w = { .cur = cur };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, wait_thread, &w), 0);
	cr_assert(H_POLL_UNTIL(uatomic_read(&r->waiters) == left + 1, 5000));
	H_OK(shmb_publish(s, 0, 0, "{}", 2));
	pthread_join(th, NULL);
	H_EXPECT_RC(w.rc, 1);
	cr_expect_eq(uatomic_read(&r->waiters), left, "%s: waiters %u at the end, want %u", point,
		     uatomic_read(&r->waiters), left);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_finish();
}

H_TEST(redteam11_waits, killed_at_counted)
{
	kill_at("client.wait.counted", -1, 0);
}

H_TEST(redteam11_waits, killed_at_sleep)
{
	kill_at("client.wait.sleep", -1, 0);
}

H_TEST(redteam11_waits, killed_at_uncounted)
{
	kill_at("client.wait.uncounted", 100, 1);
}

/* ---------------------------------------------------------------- recycled under a sleeper */

static int stopped_waiter(void *p, int wfd)
{
	struct fault_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "waiter: %s", what);
	shmb_cursor *cur = NULL;
	if ((rc = shmb_cursor_open(s, 0, &cur)) < 0)
		return evh_fail(wfd, rc, "waiter: cursor_open");
	setenv("SHMB_FAULT", "client.wait.sleep:stop", 1);
	rc = shmb_cursor_wait(cur, a->timeout_ms); /* stopped counted, outside any section */
	unsetenv("SHMB_FAULT");
	if (rc != 1)
		return evh_fail(wfd, rc, "waiter: shmb_cursor_wait %d, want 1 (its session ended)",
				rc);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	shmb_detach(c);
	struct evh_report r = { 0 };
	return evh_send(wfd, &r);
}

/* A thread counted on a session and stopped just before its FUTEX_WAIT; meanwhile the session
 * is deleted, its record recycled and given to a new session, on which a thread of ours waits
 * (counted: 1). Continued, the stale waiter must return 1 at once (its session ended) and leave
 * the new incarnation's count alone: no decrement of ours (which would let a publish skip the
 * wake and our thread sleep through it), no sleep of its own. */
H_TEST(redteam11_waits, stale_sleeper_leaves_the_new_incarnation_alone)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test("needs -DSHMB_FAULT_INJECTION=ON");
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "1"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	uint32_t idx = s->idx;
	struct shmb_session_rec *r = seg_rec(&c->seg, idx);
	struct fault_arg fa = { .name = b->name, .sid = sid, .timeout_ms = -1 };
	static struct h_child ch;
	h_child_start(&ch, stopped_waiter, &fa);
	cr_assert(H_POLL_UNTIL(evh_proc_stopped(ch.pid), 10000), "the waiter never stopped");
	cr_assert_eq(uatomic_read(&r->waiters), 1);
	shmb_session_close(s);
	H_OK(shmb_session_delete(c, sid, EVH_TENANT, NULL));
	/* Recycled (the stopped thread is outside any section): a new session gets the record. */
	char sid2[SHMB_SID_LEN + 1];
	cr_assert(H_POLL_UNTIL(shmb_session_create(c, EVH_TENANT, NULL, sid2) == 0, 10000),
		  "the record was never recycled");
	shmb_session *s2 = NULL;
	H_OK(shmb_session_open(c, sid2, EVH_TENANT, NULL, &s2));
	cr_assert_eq(s2->idx, idx);
	cr_assert_eq(uatomic_read(&r->waiters), 0, "recycled with waiters %u",
		     uatomic_read(&r->waiters));
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s2, 0, &cur));
	struct waiter w = { .cur = cur };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, wait_thread, &w), 0);
	cr_assert(H_POLL_UNTIL(uatomic_read(&r->waiters) == 1, 5000));
	cr_assert(H_POLL_UNTIL(uatomic_read(&w.tid) > 0 && evh_proc_sleeping(w.tid), 5000));
	kill(ch.pid, SIGCONT);
	struct evh_report rep;
	evh_collect(&ch, "stale waiter", &rep, 10000);
	cr_assert_eq(uatomic_read(&r->waiters), 1, "the stale waiter changed the new count: %u",
		     uatomic_read(&r->waiters));
	int64_t t0 = h_now_ms();
	H_OK(shmb_publish(s2, 0, 0, "{}", 2));
	pthread_join(th, NULL);
	H_EXPECT_RC(w.rc, 1);
	cr_expect_lt(h_now_ms() - t0, DETECT_MS / 2, "our waiter slept through the publish");
	cr_expect_eq(uatomic_read(&r->waiters), 0);
	shmb_cursor_close(cur);
	shmb_session_close(s2);
	h_finish();
}

/* ---------------------------------------------------------------- a broker dead before its wake */

static int killed_publisher(void *p, int wfd)
{
	struct fault_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher: %s", what);
	setenv("SHMB_FAULT", "client.publish.claimed", 1);
	int64_t id = shmb_publish(s, 0, 0, "{}", 2); /* killed between claim and commit */
	return evh_fail(wfd, (int)id, "publisher: survived client.publish.claimed");
}

/* A publisher dies holding a claim; the broker writes its gap (a commit) and dies before waking
 * anyone (fault point broker.gap.written). The gap is news for a thread asleep in
 * shmb_cursor_wait on the session, and nobody else will publish there: the next broker, which
 * adopts the segment, must wake it (as it makes good the eventfds' wakeups), not leave it asleep
 * until its timeout (forever with -1). */
H_TEST(redteam11_waits, gap_of_a_broker_killed_before_its_wake)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test("needs -DSHMB_FAULT_INJECTION=ON");
	struct h_broker *b = h_broker_new(H_NOARGS);
	setenv("SHMB_FAULT", "broker.gap.written", 1);
	int st = 0;
	int rc = h_broker_spawn(b, &st);
	unsetenv("SHMB_FAULT");
	cr_assert_eq(rc, 0, "the armed broker did not start");
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));
	struct waiter w = { .cur = cur };
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, wait_thread, &w), 0);
	struct shmb_session_rec *r = seg_rec(&c->seg, s->idx);
	cr_assert(H_POLL_UNTIL(uatomic_read(&r->waiters) == 1, 5000));
	cr_assert(H_POLL_UNTIL(uatomic_read(&w.tid) > 0 && evh_proc_sleeping(w.tid), 5000));

	struct fault_arg fa = { .name = b->name, .sid = sid };
	static struct h_child ch;
	h_child_start(&ch, killed_publisher, &fa);
	cr_assert(H_POLL_UNTIL(evh_proc_state(ch.pid) == 'Z', 10000), "the publisher never died");
	h_child_kill(&ch);
	/* The broker settles the dead claim: gap committed, then it dies. */
	int bst = h_broker_wait_exit(b, 10000);
	cr_assert(bst >= 0 && WIFSIGNALED(bst) && WTERMSIG(bst) == SIGKILL,
		  "broker.gap.written did not fire (status %#x)", bst);
	cr_assert_eq(uatomic_read(&w.done), 0, "woken before the restart");
	int64_t t0 = h_now_ms();
	h_broker_restart(b);
	pthread_join(th, NULL);
	int64_t took = h_now_ms() - t0;
	H_EXPECT_RC(w.rc, 1);
	cr_expect_lt(took, DETECT_MS / 2,
		     "the waiter slept %lld ms through the gap after the restart (woken only by "
		     "its timeout)",
		     (long long)took);
	shmb_event ev;
	unsigned char buf[64];
	H_EXPECT_RC(shmb_cursor_next(cur, &ev, buf, sizeof buf), 1);
	cr_expect(ev.flags & SHMB_EV_GAP, "the event after the kill is no gap (flags %#x)",
		  ev.flags);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_finish();
}

/* The same death seen by an event loop using shmb_ready (client/shmb.h's pattern): woken by the
 * next broker's eventfd writes, it must be told which handle to look at, else it reads the gap
 * only at the session's next event (none may come). */
H_TEST(redteam11_waits, gap_of_a_broker_killed_before_its_marks)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test("needs -DSHMB_FAULT_INJECTION=ON");
	struct h_broker *b = h_broker_new(H_NOARGS);
	setenv("SHMB_FAULT", "broker.gap.written", 1);
	int st = 0;
	int rc = h_broker_spawn(b, &st);
	unsetenv("SHMB_FAULT");
	cr_assert_eq(rc, 0, "the armed broker did not start");
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));
	H_OK(shmb_subscribe(s));
	shmb_session *out[4];
	H_EXPECT_RC(shmb_ready(c, out, 4), 0); /* the process uses shmb_ready */
	H_EXPECT_RC(shmb_prepare_wait(c), 0);  /* armed, asleep as far as anyone knows */

	struct fault_arg fa = { .name = b->name, .sid = sid };
	static struct h_child ch;
	h_child_start(&ch, killed_publisher, &fa);
	cr_assert(H_POLL_UNTIL(evh_proc_state(ch.pid) == 'Z', 10000), "the publisher never died");
	h_child_kill(&ch);
	int bst = h_broker_wait_exit(b, 10000);
	cr_assert(bst >= 0 && WIFSIGNALED(bst) && WTERMSIG(bst) == SIGKILL,
		  "broker.gap.written did not fire (status %#x)", bst);
	h_broker_restart(b);
	/* The loop's callback, literally: woken, drain shmb_ready, read the cursors it names. */
	H_EXPECT_RC(shmb_wait(c, DETECT_MS), 1);
	int found = 0;
	int n;
	while ((n = shmb_ready(c, out, 4)) > 0)
		for (int i = 0; i < n; i++) {
			cr_assert_eq(out[i], s);
			shmb_event ev;
			unsigned char buf[64];
			while (shmb_cursor_next(cur, &ev, buf, sizeof buf) == 1)
				found += (ev.flags & SHMB_EV_GAP) != 0;
		}
	cr_expect_eq(found, 1,
		     "the loop was woken but shmb_ready named no handle: the gap "
		     "stays unread until the session's next event");
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_finish();
}
