/* test_cursor_wait.c - per-thread waits (shmb_cursor_wait) across real processes: 16 threads of
 * one process waiting on cursors of several sessions (some on the same one, some on one stream)
 * while other processes publish with random pauses, none losing an event or timing out; no spin
 * while idle; 1 at once with an event pending, 0 after the timeout, 1 on delete and on expiry; a
 * stream cursor not woken forever by other streams; a waiter SIGKILLed while counted and the
 * broker settling its WAIT ledger entry (the record's waiters count read from the segment).
 *
 * Timeouts given to shmb_cursor_wait here are failure detectors (WAIT_FAIL_MS), never the
 * synchronisation: a wait that times out while events are pending fails the test. */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include "evhelp.h"
#include "internal.h"
#include "layout.h"

TestSuite(cursor_wait, .init = h_setup, .fini = h_teardown, .timeout = 120);

#define WAIT_FAIL_MS 10000 /* a wait this long with events pending is a lost wakeup */
#define WAKE_BUDGET_MS 200 /* how late a wakeup may come (a loaded 2-core machine) */

static uint32_t rec_waiters(shmb_client *c, shmb_session *s)
{
	return uatomic_read(&seg_rec(&c->seg, s->idx)->waiters);
}

/* ---------------------------------------------------------------- a waiting thread */

struct waiter {
	shmb_client *c;
	shmb_session *s;
	shmb_cursor *cur;
	int stream; /* -1: the whole session */
	int rc;     /* shmb_cursor_wait's result */
	int64_t ms; /* how long it took */
	pthread_t th;
	int tid;
};

static void *wait_once(void *p)
{
	struct waiter *w = p;
	uatomic_set(&w->tid, (int)syscall(SYS_gettid));
	int64_t t0 = h_now_ms();
	w->rc = shmb_cursor_wait(w->cur, WAIT_FAIL_MS);
	w->ms = h_now_ms() - t0;
	return NULL;
}

static int thread_sleeping(int tid)
{
	return tid > 0 && evh_proc_sleeping(tid);
}

/* ---------------------------------------------------------------- basics */

H_TEST(cursor_wait, pending_event_timeout_and_poll)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));

	H_EXPECT_RC(shmb_cursor_wait(cur, 0), 0); /* poll: nothing */
	H_EXPECT_RC(shmb_cursor_wait(NULL, 0), SHMB_EINVAL);
	H_EXPECT_RC(shmb_cursor_wait(cur, -2), SHMB_EINVAL);
	int64_t t0 = h_now_ms();
	H_EXPECT_RC(shmb_cursor_wait(cur, 150), 0);
	int64_t took = h_now_ms() - t0;
	cr_assert(took >= 150 && took < 150 + WAKE_BUDGET_MS, "a 150 ms timeout took %lld ms",
		  (long long)took);
	cr_assert_eq(rec_waiters(c, s), 0, "waiters left counted after a timeout");

	H_OK(shmb_publish(s, 0, 0, "{}", 2));
	t0 = h_now_ms();
	H_EXPECT_RC(shmb_cursor_wait(cur, -1), 1); /* pending: at once, even with -1 */
	H_EXPECT_RC(shmb_cursor_wait(cur, 0), 1);  /* nothing consumed by waiting */
	cr_assert_lt(h_now_ms() - t0, WAKE_BUDGET_MS);
	shmb_event ev;
	char buf[64];
	EVH_NEXT(cur, &ev, buf, sizeof buf, 1);
	H_EXPECT_RC(shmb_cursor_wait(cur, 0), 0);
	cr_assert_eq(rec_waiters(c, s), 0);

	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_finish();
}

/* A stream cursor skips other streams' events while waiting: it times out (not 1 forever),
 * its position has moved past them, and an event of its stream wakes it. */
H_TEST(cursor_wait, stream_cursor_not_woken_by_other_streams)
{
	/* A ring that holds every event here: an eviction would (rightly) return 1. */
	struct h_broker *b =
		h_broker_start(H_ARGS("--ring-events", "256", "--ring-bytes", "65536"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open_stream(s, 0, 7, &cur));
	for (int i = 0; i < 5; i++)
		H_OK(shmb_publish(s, 3, 0, "{}", 2));
	int64_t t0 = h_now_ms();
	H_EXPECT_RC(shmb_cursor_wait(cur, 100), 0);
	cr_assert_geq(h_now_ms() - t0, 100);
	cr_assert_eq(shmb_cursor_position(cur), 5, "the other stream's events were not skipped");

	/* A thread asleep on it: other streams' events do not return it; its own does. */
	struct waiter w = { .c = c, .s = s, .cur = cur };
	cr_assert_eq(pthread_create(&w.th, NULL, wait_once, &w), 0);
	cr_assert(H_POLL_UNTIL(thread_sleeping(uatomic_read(&w.tid)) && rec_waiters(c, s) == 1,
			       5000),
		  "the waiter never slept");
	for (int i = 0; i < 20; i++)
		H_OK(shmb_publish(s, 3, 0, "{}", 2));
	cr_assert(
		H_POLL_UNTIL(thread_sleeping(w.tid) && rec_waiters(c, s) == 1, 5000),
		"the waiter did not go back to sleep after other streams' events (rc %d, waiters %u, state %c, pos %llu)",
		w.rc, rec_waiters(c, s), evh_proc_state(w.tid),
		(unsigned long long)shmb_cursor_position(cur));
	int64_t id = shmb_publish(s, 7, 0, "{\"mine\":1}", 10);
	H_OK(id);
	pthread_join(w.th, NULL);
	H_EXPECT_RC(w.rc, 1);
	cr_assert_lt(w.ms, WAIT_FAIL_MS, "woken only by its timeout");
	shmb_event ev;
	char buf[64];
	EVH_NEXT(cur, &ev, buf, sizeof buf, 1);
	cr_assert_eq(ev.id, (uint64_t)id);
	cr_assert_eq(rec_waiters(c, s), 0);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_finish();
}

static int deleter(void *p, int wfd)
{
	const char *name = ((const char **)p)[0], *sid = ((const char **)p)[1];
	shmb_client *c = NULL;
	int rc = shmb_attach(name, &c);
	if (rc == 0)
		rc = shmb_session_delete(c, sid, EVH_TENANT, NULL);
	if (c)
		shmb_detach(c);
	struct evh_report r = { .status = rc < 0, .code = rc };
	if (rc < 0)
		snprintf(r.msg, sizeof r.msg, "delete: %s", shmb_err_name(rc));
	return evh_send(wfd, &r);
}

H_TEST(cursor_wait, woken_by_delete_in_another_process)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	struct waiter w[3] = { 0 };
	for (int i = 0; i < 3; i++) {
		w[i] = (struct waiter){ .c = c, .s = s };
		H_OK(shmb_cursor_open(s, 0, &w[i].cur));
		cr_assert_eq(pthread_create(&w[i].th, NULL, wait_once, &w[i]), 0);
	}
	cr_assert(H_POLL_UNTIL(rec_waiters(c, s) == 3 && thread_sleeping(uatomic_read(&w[0].tid)) &&
				       thread_sleeping(uatomic_read(&w[1].tid)) &&
				       thread_sleeping(uatomic_read(&w[2].tid)),
			       5000),
		  "the waiters never slept");
	const char *args[2] = { b->name, sid };
	static struct h_child ch;
	int64_t t0 = h_now_ms();
	h_child_start(&ch, deleter, args);
	struct evh_report r;
	evh_collect(&ch, "deleter", &r, 10000);
	for (int i = 0; i < 3; i++) {
		pthread_join(w[i].th, NULL);
		H_EXPECT_RC(w[i].rc, 1);
		shmb_event ev;
		char buf[8];
		H_EXPECT_RC(shmb_cursor_next(w[i].cur, &ev, buf, sizeof buf), SHMB_ENOENT);
		shmb_cursor_close(w[i].cur);
	}
	cr_assert_lt(h_now_ms() - t0, WAKE_BUDGET_MS + 1000, "woken late");
	shmb_session_close(s);
	h_finish();
}

H_TEST(cursor_wait, woken_by_expiry)
{
	struct h_broker *b =
		h_broker_start(H_ARGS("--inactivity-ttl-ms", "300", "--sweep-interval-ms", "20"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));
	int64_t t0 = h_now_ms();
	H_EXPECT_RC(shmb_cursor_wait(cur, WAIT_FAIL_MS), 1);
	int64_t took = h_now_ms() - t0;
	cr_assert(took < 300 + 20 + WAKE_BUDGET_MS + 500, "expiry woke the waiter after %lld ms",
		  (long long)took);
	shmb_event ev;
	char buf[8];
	H_EXPECT_RC(shmb_cursor_next(cur, &ev, buf, sizeof buf), SHMB_ENOENT);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_finish();
}

/* ---------------------------------------------------------------- no spin */

/* CPU time (user + system, clock ticks) of thread tid of this process. */
static uint64_t task_cpu_ticks(int tid)
{
	char path[96], buf[1024];
	snprintf(path, sizeof path, "/proc/self/task/%d/stat", tid);
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	const char *p = strrchr(buf, ')');
	if (!p)
		return 0;
	/* After ")": state(3) ... utime is field 14, stime 15; p + 2 is field 3. */
	unsigned long long ut = 0, st = 0;
	int field = 3;
	for (const char *q = p + 2; *q && field <= 15; q++) {
		if (field == 14 && ut == 0)
			ut = strtoull(q, NULL, 10);
		if (field == 15 && st == 0) {
			st = strtoull(q, NULL, 10);
			break;
		}
		if (*q == ' ')
			field++;
	}
	return ut + st;
}

H_TEST(cursor_wait, sixteen_idle_waiters_do_not_spin)
{
	struct h_broker *b = h_broker_start(H_ARGS("--readers-per-worker", "32"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	enum { T = 16 };
	struct waiter w[T];
	for (int i = 0; i < T; i++) {
		w[i] = (struct waiter){ .c = c, .s = s };
		H_OK(shmb_cursor_open(s, 0, &w[i].cur));
		cr_assert_eq(pthread_create(&w[i].th, NULL, wait_once, &w[i]), 0);
	}
	int all = 0;
	cr_assert(H_POLL_UNTIL(({
				       all = rec_waiters(c, s) == T;
				       for (int i = 0; i < T && all; i++)
					       all = thread_sleeping(uatomic_read(&w[i].tid));
				       all;
			       }),
			       5000),
		  "the 16 waiters never all slept");
	uint64_t before = 0, after = 0;
	for (int i = 0; i < T; i++)
		before += task_cpu_ticks(w[i].tid);
	h_sleep_ms(200); /* the measurement window, not synchronisation */
	for (int i = 0; i < T; i++)
		after += task_cpu_ticks(w[i].tid);
	long hz = sysconf(_SC_CLK_TCK);
	/* 200 ms spinning on 16 threads (2 cores) would be hundreds of ms of CPU; allow 1 tick
	 * per thread of accounting noise. */
	cr_assert_leq(after - before, (uint64_t)T, "idle waiters used %llu ticks (%ld/s) in 200 ms",
		      (unsigned long long)(after - before), hz);
	H_OK(shmb_publish(s, 0, 0, "{}", 2));
	for (int i = 0; i < T; i++) {
		pthread_join(w[i].th, NULL);
		H_EXPECT_RC(w[i].rc, 1);
		cr_assert_lt(w[i].ms, WAIT_FAIL_MS, "woken only by its timeout");
		shmb_cursor_close(w[i].cur);
	}
	cr_assert_eq(rec_waiters(c, s), 0);
	shmb_session_close(s);
	h_finish();
}

/* ---------------------------------------------------------------- the 16-thread stress */

enum { SESSIONS = 4, THREADS = 16, PER_SESSION = 3000 };

struct stress_pub {
	const char *name, *sid;
	uint32_t pub;
};

/* Publishes PER_SESSION events alternating streams 0 and 1, each carrying its sequence number,
 * with random pauses. */
static int stress_publisher(void *p, int wfd)
{
	struct stress_pub *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher: %s", what);
	uint64_t rng = (uint64_t)getpid() * 7919 + a->pub;
	unsigned char buf[128];
	for (uint64_t i = 0; i < PER_SESSION; i++) {
		evh_pause(&rng, 20000);
		size_t len = evh_len(a->pub, i, sizeof(struct evh_payload), sizeof buf);
		evh_fill(buf, len, a->pub, i, 0);
		int64_t id = shmb_publish(s, (uint32_t)(i & 1), 0, buf, len);
		if (id < 0)
			return evh_fail(wfd, (int)id, "publisher %u: publish #%llu", a->pub,
					(unsigned long long)i);
	}
	struct evh_report r = { 0 };
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

struct stress_reader {
	shmb_cursor *cur;
	int stream; /* -1 all */
	uint32_t pub;
	uint64_t got, waits, timeouts, bad;
	char err[160];
};

static void *stress_read(void *p)
{
	struct stress_reader *r = p;
	uint64_t want = r->stream < 0 ? PER_SESSION : PER_SESSION / 2;
	uint64_t next_seq = r->stream < 0 ? 0 : (uint64_t)r->stream;
	unsigned char buf[256];
	while (r->got < want) {
		int64_t t0 = evh_mono_ns();
		int rc = shmb_cursor_wait(r->cur, WAIT_FAIL_MS);
		r->waits++;
		/* A wait that lasted its whole timeout slept through the events (it finds them
		 * when it looks again after the timeout, and returns 1): a lost wakeup. */
		if (rc == 0 || evh_mono_ns() - t0 >= (int64_t)WAIT_FAIL_MS * 1000000) {
			r->timeouts++;
			snprintf(r->err, sizeof r->err, "timed out after %llu of %llu events",
				 (unsigned long long)r->got, (unsigned long long)want);
			return NULL;
		}
		if (rc < 0) {
			snprintf(r->err, sizeof r->err, "shmb_cursor_wait: %s", shmb_err_name(rc));
			return NULL;
		}
		for (;;) {
			shmb_event ev;
			int n = shmb_cursor_next(r->cur, &ev, buf, sizeof buf);
			if (n == 0)
				break;
			if (n < 0) {
				snprintf(r->err, sizeof r->err, "shmb_cursor_next: %s",
					 shmb_err_name(n));
				return NULL;
			}
			struct evh_payload pl = { 0 };
			const char *bad = evh_check(ev.data, ev.len, &pl);
			if (bad || pl.pub != r->pub || pl.seq != next_seq) {
				r->bad++;
				snprintf(r->err, sizeof r->err,
					 "event %llu: %s (seq %llu, expected %llu)",
					 (unsigned long long)ev.id, bad ? bad : "out of order",
					 (unsigned long long)pl.seq, (unsigned long long)next_seq);
				return NULL;
			}
			next_seq += r->stream < 0 ? 1 : 2;
			r->got++;
		}
	}
	return NULL;
}

H_TEST(cursor_wait, sixteen_threads_across_processes_lose_nothing, .timeout = 240)
{
	/* A ring large enough that a reader woken late is not overrun (the point is wakeups). */
	struct h_broker *b =
		h_broker_start(H_ARGS("--readers-per-worker", "32", "--ring-events", "4096",
				      "--ring-bytes", "524288", "--max-event-bytes", "1024"));
	shmb_client *c = h_attach(b->name);
	char sids[SESSIONS][SHMB_SID_LEN + 1];
	shmb_session *s[SESSIONS];
	for (int i = 0; i < SESSIONS; i++)
		s[i] = evh_session(c, sids[i]);
	struct stress_reader rd[THREADS];
	pthread_t th[THREADS];
	for (int t = 0; t < THREADS; t++) {
		int si = t % SESSIONS;
		/* Per session: two whole-session cursors, one on stream 0, one on stream 1. */
		int stream = (t / SESSIONS) < 2 ? -1 : (t / SESSIONS) - 2;
		rd[t] = (struct stress_reader){ .stream = stream, .pub = (uint32_t)si + 1 };
		if (stream < 0)
			H_OK(shmb_cursor_open(s[si], 0, &rd[t].cur));
		else
			H_OK(shmb_cursor_open_stream(s[si], 0, (uint32_t)stream, &rd[t].cur));
		cr_assert_eq(pthread_create(&th[t], NULL, stress_read, &rd[t]), 0);
	}
	static struct h_child ch[SESSIONS];
	struct stress_pub pa[SESSIONS];
	for (int i = 0; i < SESSIONS; i++) {
		pa[i] = (struct stress_pub){ .name = b->name,
					     .sid = sids[i],
					     .pub = (uint32_t)i + 1 };
		h_child_start(&ch[i], stress_publisher, &pa[i]);
	}
	for (int i = 0; i < SESSIONS; i++) {
		struct evh_report r;
		evh_collect(&ch[i], "publisher", &r, 120000);
	}
	uint64_t waits = 0;
	for (int t = 0; t < THREADS; t++) {
		pthread_join(th[t], NULL);
		cr_assert_eq(rd[t].err[0], '\0', "thread %d (session %d, stream %d): %s", t,
			     t % SESSIONS, rd[t].stream, rd[t].err);
		waits += rd[t].waits;
		shmb_cursor_close(rd[t].cur);
	}
	for (int i = 0; i < SESSIONS; i++) {
		cr_assert_eq(rec_waiters(c, s[i]), 0, "session %d: waiters left counted", i);
		shmb_session_close(s[i]);
	}
	cr_log_info("16 threads, %d events each session: %llu waits", PER_SESSION,
		    (unsigned long long)waits);
	h_finish();
}

/* ---------------------------------------------------------------- crash */

struct killed_arg {
	const char *name, *sid;
	int threads;
};

/* Opens sid and leaves `threads` threads asleep in shmb_cursor_wait forever; reports once all
 * have been started (the parent then watches the record's count). */
static void *wait_forever(void *p)
{
	(void)shmb_cursor_wait(p, -1);
	return NULL;
}

static int killed_waiter(void *p, int wfd)
{
	struct killed_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "waiter: %s", what);
	for (int i = 0; i < a->threads; i++) {
		shmb_cursor *cur = NULL;
		if ((rc = shmb_cursor_open(s, 0, &cur)) < 0)
			return evh_fail(wfd, rc, "waiter: cursor_open");
		pthread_t th;
		if (pthread_create(&th, NULL, wait_forever, cur) != 0)
			return evh_fail(wfd, 0, "waiter: pthread_create");
	}
	struct evh_report r = { 0 };
	evh_send(wfd, &r);
	for (;;)
		pause(); /* SIGKILLed by the parent */
}

H_TEST(cursor_wait, killed_waiter_is_settled_by_the_broker)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	/* One waiter of our own stays counted throughout: the broker must take off exactly the
	 * dead process's counts. */
	struct waiter mine = { .c = c, .s = s };
	H_OK(shmb_cursor_open(s, 0, &mine.cur));
	cr_assert_eq(pthread_create(&mine.th, NULL, wait_once, &mine), 0);
	cr_assert(H_POLL_UNTIL(rec_waiters(c, s) == 1, 5000));

	struct killed_arg ka = { .name = b->name, .sid = sid, .threads = 3 };
	static struct h_child ch;
	h_child_start(&ch, killed_waiter, &ka);
	struct evh_report r;
	cr_assert_eq(h_child_read(&ch, &r, sizeof r, 10000), (ssize_t)sizeof r);
	cr_assert_eq(r.status, 0, "waiter child: %s", r.msg);
	cr_assert(H_POLL_UNTIL(rec_waiters(c, s) == 4, 5000), "waiters %u, expected 4",
		  rec_waiters(c, s));
	h_child_kill(&ch);
	cr_assert(H_POLL_UNTIL(rec_waiters(c, s) == 1, 5000),
		  "after the kill: waiters %u, expected 1 (the broker settles WAIT entries)",
		  rec_waiters(c, s));
	/* Ours still wakes, and uncounts itself. */
	H_OK(shmb_publish(s, 0, 0, "{}", 2));
	pthread_join(mine.th, NULL);
	H_EXPECT_RC(mine.rc, 1);
	cr_assert_lt(mine.ms, WAIT_FAIL_MS, "woken only by its timeout");
	cr_assert_eq(rec_waiters(c, s), 0);
	char *log = h_broker_log(b);
	cr_assert(h_contains(log, "3 waiting threads"), "broker log: %s", log);
	free(log);
	shmb_cursor_close(mine.cur);
	shmb_session_close(s);
	h_finish();
}
