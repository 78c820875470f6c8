/* test_wakeup_stress.c - the lost-wakeup stress of docs/events.md ("Why nothing is lost"):
 * 100,000 events from one publisher process to one subscriber process, both pausing at random
 * (busy loops of random length, sometimes sched_yield, sometimes usleep(0..200)), so a commit
 * lands in every phase of the subscriber's arm / re-check / sleep sequence.
 *
 * A lost wakeup in a continuous stream is masked by the next commit, so the publisher often
 * stops and waits: it flags an event "ack" (at random and at least every 64 events in free-running
 * blocks, every event in ping-pong blocks) and does not publish again until the subscriber
 * acknowledges it through a pipe. A wakeup lost for that event
 * leaves the subscriber asleep with nothing else coming, until its shmb_wait times out (250 ms)
 * with the event committed and unread: an event stamped over 100 ms before such a timeout counts
 * as a lost wakeup (the test gives up after 5), and its latency exceeds the budget. Latency is
 * commit-to-receive (the publisher stamps the monotonic clock just before shmb_publish, so the
 * figure is an upper bound); no event may arrive more than 100 ms after it was stamped.
 *
 * Label "stress" (tests/CMakeLists.txt); takes a few seconds on two cores. */
#include <stdlib.h>
#include <string.h>

#include "evhelp.h"
#include "internal.h"
#include "layout.h"

TestSuite(wakeup_stress, .init = h_setup, .fini = h_teardown, .timeout = 240);

#define N_EVENTS 100000
#define ACK_MAX_GAP 64 /* the publisher waits for an ack at least this often */
#define LATENCY_BUDGET_NS (100 * INT64_C(1000000))
#define WAIT_MS 250 /* a wait that times out with an older event committed lost a wakeup */
#define MAX_LOST 5  /* give up after this many (each costs WAIT_MS) */

struct stress_arg {
	const char *name, *sid;
	struct evh_gate *gate;
	int ack[2]; /* subscriber -> publisher: ids of acknowledged events */
};

/* Busy for ns nanoseconds (no syscall: the other side's timing is what matters). */
static void spin_ns(int64_t ns)
{
	int64_t end = evh_mono_ns() + ns;
	while (evh_mono_ns() < end)
		;
}

static struct shmb_worker *my_worker(shmb_client *c)
{
	return seg_worker(&c->seg, c->slot);
}

/* Report: n[0] last id, n[1] eventfd writes, n[2] acks awaited; t[0], t[1] start and end. */
static int stress_publisher(void *p, int wfd)
{
	struct stress_arg *a = p;
	close(a->ack[1]);
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher: %s", what);
	if (evh_gate_wait(a->gate) < 0)
		return evh_fail(wfd, 0, "publisher: gate");
	uint64_t rng = (uint64_t)getpid() * 2654435761u;
	uint64_t sent0 = uatomic_read(&my_worker(c)->wakeups_sent);
	struct evh_report r = { 0 };
	r.t[0] = evh_mono_ns();
	unsigned char buf[256];
	unsigned since_ack = 0;
	for (uint64_t i = 0; i < N_EVENTS; i++) {
		/* Odd blocks of 1000 are ping-pong: every event is acked, and the next one follows
		 * the ack after a short random spin, so commits keep landing while the subscriber
		 * arms and re-checks. Even blocks are free-running with random pauses. */
		int pingpong = (i / 1000) % 2;
		if (pingpong) {
			spin_ns((int64_t)(evh_rand(&rng) % 10000));
		} else {
			evh_pause(&rng, 4000);
		}
		int ack = pingpong || i + 1 == N_EVENTS || ++since_ack >= ACK_MAX_GAP ||
			  evh_rand(&rng) % 16 == 0;
		size_t len = evh_len(0, i, sizeof(struct evh_payload), 200);
		evh_fill(buf, len, 0, i, ack ? EVH_F_ACK : 0);
		int64_t id = shmb_publish(s, 0, 0, buf, len);
		if (id != (int64_t)i + 1)
			return evh_fail(wfd, id < 0 ? (int)id : 0,
					"publisher: event #%llu got %lld", (unsigned long long)i,
					(long long)id);
		if (!ack)
			continue;
		since_ack = 0;
		r.n[2]++;
		struct pollfd pf = { .fd = a->ack[0], .events = POLLIN };
		int n;
		while ((n = poll(&pf, 1, 10000)) < 0 && errno == EINTR)
			;
		uint64_t got = 0;
		if (n != 1 || read(a->ack[0], &got, sizeof got) != (ssize_t)sizeof got)
			return evh_fail(wfd, 0,
					"publisher: no ack for event %lld within 10 s "
					"(subscriber stalled or gone)",
					(long long)id);
		if (got != (uint64_t)id)
			return evh_fail(wfd, 0, "publisher: ack for %llu, expected %lld",
					(unsigned long long)got, (long long)id);
	}
	r.t[1] = evh_mono_ns();
	r.n[0] = N_EVENTS;
	r.n[1] = uatomic_read(&my_worker(c)->wakeups_sent) - sent0;
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

static int cmp_i64(const void *x, const void *y)
{
	int64_t a = *(const int64_t *)x, b = *(const int64_t *)y;
	return (a > b) - (a < b);
}

/* Report: n[0] events, n[1] max latency ns, n[2] p50, n[3] p99, n[4] p99.9, n[5] shmb_wait
 * calls, n[6] wakeups received through the fd, n[7] lost wakeups; t[0] events over the budget, t[1]
 * id of the slowest event. */
static int stress_subscriber(void *p, int wfd)
{
	struct stress_arg *a = p;
	close(a->ack[0]);
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	shmb_cursor *cur;
	int rc = evh_child_subscriber(a->name, a->sid, &c, &s, &cur, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "subscriber: %s", what);
	if (evh_gate_wait(a->gate) < 0)
		return evh_fail(wfd, 0, "subscriber: gate");
	int64_t *lat = malloc(N_EVENTS * sizeof *lat);
	if (!lat)
		return evh_fail(wfd, 0, "subscriber: out of memory");
	uint64_t rng = (uint64_t)getpid() * 40503u;
	uint64_t recv0 = uatomic_read(&my_worker(c)->wakeups_received);
	struct evh_report r = { 0 };
	uint64_t got = 0, waits = 0, lost = 0;
	int64_t deadline = h_now_ms() + 180000;
	unsigned char buf[1024];
	int timed_out = 0;
	int64_t timeout_at = 0;
	while (got < N_EVENTS) {
		shmb_event ev;
		rc = shmb_cursor_next(cur, &ev, buf, sizeof buf);
		if (rc == 1) {
			int64_t now = evh_mono_ns();
			struct evh_payload h;
			const char *bad = evh_check(ev.data, ev.len, &h);
			if (bad)
				return evh_fail(wfd, 0, "subscriber: event %llu: %s",
						(unsigned long long)ev.id, bad);
			if (ev.id != got + 1 || h.seq != got)
				return evh_fail(wfd, 0,
						"subscriber: event %llu (seq %llu) after %llu",
						(unsigned long long)ev.id,
						(unsigned long long)h.seq, (unsigned long long)got);
			lat[got] = now - h.stamp_ns;
			if (lat[got] > LATENCY_BUDGET_NS)
				r.t[0]++;
			if (lat[got] > (int64_t)r.n[1]) {
				r.n[1] = (uint64_t)lat[got];
				r.t[1] = (int64_t)ev.id;
			}
			got++;
			/* Stamped 100 ms before a wait timed out: it was committed while we slept
			 * and nobody woke us. */
			if (timed_out && h.stamp_ns < timeout_at - LATENCY_BUDGET_NS &&
			    ++lost >= MAX_LOST)
				return evh_fail(
					wfd, 0,
					"subscriber: %llu lost wakeups by event %llu (each an event "
					"committed over 100 ms before a %d ms wait timed out)",
					(unsigned long long)lost, (unsigned long long)ev.id,
					WAIT_MS);
			timed_out = 0;
			if (h.flags & EVH_F_ACK) {
				uint64_t id = ev.id;
				if (h_write_all(a->ack[1], &id, sizeof id) < 0)
					return evh_fail(wfd, 0, "subscriber: ack write failed");
				/* The publisher needs some µs to see the ack: arm around the time
				 * its next commit lands. */
				spin_ns((int64_t)(evh_rand(&rng) % 30000));
			}
			evh_pause(&rng, 1000);
			continue;
		}
		if (rc == SHMB_EOVERRUN)
			return evh_fail(wfd, rc,
					"subscriber: %llu ids skipped after %llu (the publisher "
					"never runs more than %d ahead)",
					(unsigned long long)shmb_cursor_lagged(cur),
					(unsigned long long)got, ACK_MAX_GAP);
		if (rc < 0)
			return evh_fail(wfd, rc, "subscriber: cursor_next");
		if (h_now_ms() > deadline)
			return evh_fail(wfd, 0, "subscriber: only %llu of %d events in 180 s",
					(unsigned long long)got, N_EVENTS);
		timed_out = 0;
		evh_pause(&rng, 4000); /* a pause between "nothing new" and arming */
		int w = shmb_wait(c, WAIT_MS);
		waits++;
		if (w < 0)
			return evh_fail(wfd, w, "subscriber: shmb_wait");
		if (w == 0) {
			timed_out = 1;
			timeout_at = evh_mono_ns();
		}
	}
	shmb_event ev;
	if ((rc = shmb_cursor_next(cur, &ev, buf, sizeof buf)) != 0)
		return evh_fail(wfd, rc < 0 ? rc : 0, "subscriber: %d after the last event", rc);
	qsort(lat, N_EVENTS, sizeof *lat, cmp_i64);
	r.n[0] = got;
	r.n[2] = (uint64_t)lat[N_EVENTS / 2];
	r.n[3] = (uint64_t)lat[N_EVENTS * 99 / 100];
	r.n[4] = (uint64_t)lat[N_EVENTS * 999 / 1000];
	r.n[5] = waits;
	r.n[6] = uatomic_read(&my_worker(c)->wakeups_received) - recv0;
	r.n[7] = lost;
	free(lat);
	close(a->ack[1]);
	shmb_cursor_close(cur);
	shmb_unsubscribe(s);
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

H_TEST(wakeup_stress, no_lost_wakeups_100k)
{
	struct h_broker *b =
		h_broker_start(H_ARGS("--max-sessions", "4", "--ring-events", "1024",
				      "--ring-bytes", "262144", "--max-event-bytes", "1024"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);

	struct evh_gate gate;
	evh_gate_init(&gate);
	struct stress_arg sa = { .name = b->name, .sid = sid, .gate = &gate };
	cr_assert_eq(pipe2(sa.ack, O_CLOEXEC), 0, "pipe: %s", strerror(errno));
	static struct h_child sub, pub;
	h_child_start(&sub, stress_subscriber, &sa);
	h_child_start(&pub, stress_publisher, &sa);
	close(sa.ack[0]);
	close(sa.ack[1]);
	int64_t t0 = h_now_ms();
	evh_gate_open(&gate, 2);

	/* Both reports first: when one side fails, the other's message often says why. */
	struct evh_report pr = { 0 }, sr = { 0 };
	int got_p = h_child_read(&pub, &pr, sizeof pr, 200000) == (ssize_t)sizeof pr;
	int got_s = h_child_read(&sub, &sr, sizeof sr, got_p && pr.status == 0 ? 30000 : 2000) ==
		    (ssize_t)sizeof sr;
	if (!got_p || !got_s || pr.status || sr.status) {
		h_child_kill(&pub);
		h_child_kill(&sub);
		cr_fatal("subscriber: %s; publisher: %s",
			 got_s ? (sr.status ? sr.msg : "ok") : "no report",
			 got_p ? (pr.status ? pr.msg : "ok") : "no report");
	}
	cr_assert_eq(h_child_wait(&pub, H_EXIT_TIMEOUT_MS), 0);
	cr_assert_eq(h_child_wait(&sub, H_EXIT_TIMEOUT_MS), 0);
	int64_t elapsed = h_now_ms() - t0;

	/* On stderr, not cr_log_warn (which makes Criterion exit 1): the figures are the point. */
	fprintf(stderr,
		"wakeup stress: %d events in %lld ms (publisher %.0f ms); latency "
		"commit->receive p50 %.3f ms, p99 %.3f ms, p99.9 %.3f ms, max %.3f ms (event "
		"%lld); subscriber waits %llu, woken through the fd %llu, publisher eventfd "
		"writes %llu, acks %llu; over budget %lld, lost wakeups %llu\n",
		N_EVENTS, (long long)elapsed, (pr.t[1] - pr.t[0]) / 1e6, sr.n[2] / 1e6,
		sr.n[3] / 1e6, sr.n[4] / 1e6, sr.n[1] / 1e6, (long long)sr.t[1],
		(unsigned long long)sr.n[5], (unsigned long long)sr.n[6],
		(unsigned long long)pr.n[1], (unsigned long long)pr.n[2], (long long)sr.t[0],
		(unsigned long long)sr.n[7]);
	cr_assert_eq(sr.n[0], N_EVENTS);
	cr_assert_eq(sr.n[7], 0,
		     "%llu lost wakeups (an event committed while the subscriber slept "
		     "through a %d ms wait)",
		     (unsigned long long)sr.n[7], WAIT_MS);
	cr_assert_lt(
		(int64_t)sr.n[1], LATENCY_BUDGET_NS,
		"event %lld was received %.3f ms after its commit (budget 100 ms); %lld events "
		"over budget",
		(long long)sr.t[1], sr.n[1] / 1e6, (long long)sr.t[0]);
	/* No storm: at most one eventfd write per sleep of the subscriber. */
	cr_assert_leq(pr.n[1], sr.n[5], "%llu eventfd writes for %llu waits",
		      (unsigned long long)pr.n[1], (unsigned long long)sr.n[5]);

	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_assert_eq(info.last_event_id, N_EVENTS);
	shmb_session_close(s);
	h_detach(c);
}
