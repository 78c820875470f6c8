/* test_faults.c - processes killed (or stopped) at the named fault points of common/fault.h, and
 * the system recovering with nothing lost. Needs -DSHMB_FAULT_INJECTION=ON (the test build);
 * without it every test skips. The points and what each test checks (docs/reliability.md):
 *
 * - client.attach (a worker dies after the broker admitted it, before it mapped the segment):
 *   the broker frees its slot; other workers and sessions are untouched; attaching works.
 * - broker.hello (the broker dies after choosing a slot for a worker, before replying): the
 *   worker's attach fails with SHMB_EBROKER; the restarted broker holds no slot for it (no
 *   phantom worker), and its next attach works.
 * - client.read_section (a worker killed or stopped inside the read-side section of
 *   shmb_session_open): while it is stopped there, a record deleted meanwhile is not recycled;
 *   once it is killed, the broker clears its reader slot and the record comes back.
 * - broker.link, broker.link.linked, broker.create.reply, broker.unlink.marked, broker.unlink,
 *   broker.reclaim, broker.adopt (the broker dies mid index change; test_crash.c checks the
 *   index): the statistics counters stay consistent, sessions live == created - deleted -
 *   expired, and our client, alive all along, is re-admitted into the worker slot it held.
 * - a dead publisher's claim that cannot be settled at once (an older lap still mid-write,
 *   publish.write:stop) survives a broker SIGKILL, and an adoption killed at broker.adopt: the
 *   dead worker's slot stays DEAD with its ledger, and the gap appears once the older lap
 *   commits (test_gap.c covers the claim points with the broker alive).
 * - shmctl status on a segment left by a dead broker, with no broker running.
 *
 * Every test ends with shmctl verify clean and the counters consistent. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "evhelp.h"
#include "fault.h"
#include "layout.h"
#include "seg.h"

TestSuite(faults, .init = h_setup, .fini = h_teardown, .timeout = 120);

static void need_faults(void)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test(
			"built without SHMB_FAULT_INJECTION (cmake -DSHMB_FAULT_INJECTION=ON)");
}

/* ---------------------------------------------------------------- checks */

static void expect_verify_clean(const char *name, const char *when)
{
	struct h_result r;
	h_shmctl(&r, name, "verify", NULL);
	cr_expect_eq(r.status, 0, "shmctl verify %s: exit %d\n%s%s", when, r.status, r.out, r.err);
	h_result_free(&r);
}

/* sessions_live == created - deleted - expired, and the live counter matches the LIVE records
 * shmctl counts (expired-but-unswept ones included). */
static void expect_counters_consistent(const char *name, const char *when)
{
	uint64_t created = h_counter(name, SHMB_CTR_SESSIONS_CREATED);
	uint64_t deleted = h_counter(name, SHMB_CTR_SESSIONS_DELETED);
	uint64_t expired = h_counter(name, SHMB_CTR_SESSIONS_EXPIRED);
	uint64_t live = h_counter(name, SHMB_CTR_SESSIONS_LIVE);
	cr_expect_eq(live, created - deleted - expired,
		     "%s: sessions_live %llu but created %llu - deleted %llu - expired %llu = %lld",
		     when, (unsigned long long)live, (unsigned long long)created,
		     (unsigned long long)deleted, (unsigned long long)expired,
		     (long long)(created - deleted - expired));
	cJSON *st = h_shmctl_json(name, "status", NULL);
	double recs = h_json_num(st, "sessions.live") + h_json_num(st, "sessions.expired");
	cr_expect_eq((uint64_t)recs, live, "%s: %g LIVE records but sessions_live %llu", when, recs,
		     (unsigned long long)live);
	cJSON_Delete(st);
}

static int workers_attached(const char *name)
{
	cJSON *st = h_shmctl_json(name, "status", NULL);
	int n = (int)h_json_num(st, "workers.attached");
	cJSON_Delete(st);
	return n;
}

static int worker_listed(const char *name, pid_t pid)
{
	cJSON *w = h_shmctl_json(name, "workers", NULL);
	int listed = h_json_has_number(w, "pid", (double)pid);
	cJSON_Delete(w);
	return listed;
}

/* Awaits a child's end (pidfd) and reaps it; returns its raw wait status. */
static int await_end(struct h_child *ch)
{
	if (ch->pidfd >= 0) {
		struct pollfd pf = { .fd = ch->pidfd, .events = POLLIN };
		int n;
		while ((n = poll(&pf, 1, 30000)) < 0 && errno == EINTR)
			;
		cr_assert_eq(n, 1, "child %ld still alive after 30 s", (long)ch->pid);
	}
	h_child_kill(ch); /* reaps (no-op kill on a zombie) */
	return ch->status;
}

static void expect_sigkilled(int st, const char *point)
{
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
		  "the process did not die of SIGKILL at %s (%s %d)", point,
		  WIFEXITED(st) ? "exit" : "signal",
		  WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
}

/* Waits until the child is stopped (SIGSTOP at a :stop fault point). */
static void await_stop(struct h_child *ch, const char *point)
{
	int st;
	pid_t r;
	while ((r = waitpid(ch->pid, &st, WUNTRACED)) < 0 && errno == EINTR)
		;
	cr_assert_eq(r, ch->pid, "waitpid: %s", strerror(errno));
	cr_assert(WIFSTOPPED(st), "the child did not stop at %s (status %#x)", point, st);
}

/* ---------------------------------------------------------------- children */

struct kid_arg {
	const char *name;
	const char *sid;   /* session to open (NULL: none) */
	const char *fault; /* SHMB_FAULT while doing the faulty call */
	int op;            /* KID_* */
};
enum { KID_ATTACH, KID_OPEN, KID_PUBLISH };

/* Does op with the fault armed. Reaching the end means the point did not fire, unless it was a
 * :stop point and the parent continued us: then reports what the call returned (n[0]). */
static int kid(void *p, int wfd)
{
	struct kid_arg *a = p;
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	int rc = 0;
	if (a->op != KID_ATTACH) {
		const char *what = "";
		rc = evh_child_open(a->name, a->sid, &c, &s, &what);
		if (rc < 0)
			return evh_fail(wfd, rc, "kid: %s", what);
	}
	char one = 1;
	if (h_write_all(wfd, &one, 1) < 0)
		return 1;
	setenv("SHMB_FAULT", a->fault, 1);
	int64_t got = 0;
	shmb_session *s2 = NULL;
	switch (a->op) {
	case KID_ATTACH:
		got = shmb_attach(a->name, &c);
		break;
	case KID_OPEN:
		got = shmb_session_open(c, a->sid, EVH_TENANT, NULL, &s2);
		break;
	case KID_PUBLISH: {
		unsigned char buf[128];
		evh_fill(buf, sizeof buf, 99, 0, 0);
		got = shmb_publish(s, 0, 0, buf, sizeof buf);
		break;
	}
	}
	unsetenv("SHMB_FAULT");
	struct evh_report r = { 0 };
	r.n[0] = (uint64_t)got;
	shmb_session_close(s2);
	shmb_session_close(s);
	shmb_detach(c);
	return evh_send(wfd, &r);
}

static void start_kid(struct h_child *ch, struct kid_arg *a)
{
	h_child_start(ch, kid, a);
	char one;
	cr_assert_eq(h_child_read(ch, &one, 1, 30000), 1, "child did not get ready");
}

/* A child that attaches (no fault), opens sid, publishes one event, detaches. n[0]: the id. */
static int plain_publisher(void *p, int wfd)
{
	struct kid_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher: %s", what);
	unsigned char buf[128];
	evh_fill(buf, sizeof buf, 1, 0, 0);
	int64_t id = shmb_publish(s, 0, 0, buf, sizeof buf);
	if (id < 0)
		return evh_fail(wfd, (int)id, "publisher: shmb_publish");
	struct evh_report r = { 0 };
	r.n[0] = (uint64_t)id;
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

static void publish_here(shmb_session *s, uint64_t want_id)
{
	unsigned char buf[128];
	evh_fill(buf, sizeof buf, 0, want_id, 0);
	int64_t id = shmb_publish(s, 0, 0, buf, sizeof buf);
	cr_assert_eq(id, (int64_t)want_id, "shmb_publish: %lld %s, want id %llu", (long long)id,
		     id < 0 ? shmb_strerror((int)id) : "", (unsigned long long)want_id);
}

/* Polls cur until it yields something (a non-subscriber has no event to wait for). */
static int next_within(shmb_cursor *cur, shmb_event *ev, void *buf, size_t len, int timeout_ms)
{
	int64_t deadline = h_now_ms() + timeout_ms;
	for (;;) {
		int rc = shmb_cursor_next(cur, ev, buf, len);
		if (rc != 0 || h_now_ms() > deadline)
			return rc;
		h_sleep_ms(1);
	}
}

static void expect_event(shmb_cursor *cur, uint64_t id, int gap, int timeout_ms)
{
	unsigned char buf[512];
	shmb_event ev;
	int rc = next_within(cur, &ev, buf, sizeof buf, timeout_ms);
	cr_assert_eq(rc, 1, "id %llu: nothing within %d ms (cursor_next %d %s) at position %llu",
		     (unsigned long long)id, timeout_ms, rc, rc < 0 ? shmb_err_name(rc) : "",
		     (unsigned long long)shmb_cursor_position(cur));
	cr_assert_eq(ev.id, id, "got id %llu, expected %llu", (unsigned long long)ev.id,
		     (unsigned long long)id);
	if (gap) {
		cr_assert(ev.flags & SHMB_EV_GAP, "id %llu: flags %#x, want a gap record",
			  (unsigned long long)id, ev.flags);
	} else {
		cr_assert_eq(ev.flags, 0, "id %llu: flags %#x, want an event",
			     (unsigned long long)id, ev.flags);
		struct evh_payload h;
		const char *bad = evh_check(ev.data, ev.len, &h);
		cr_assert_null(bad, "event %llu: %s", (unsigned long long)id, bad);
	}
}

/* ---------------------------------------------------------------- mid attach, client side */

static void attach_dies(const char *fault)
{
	need_faults();
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	publish_here(s, 1);
	H_OK(shmb_subscribe(s));
	int before = workers_attached(b->name);
	uint64_t died0 = h_counter(b->name, SHMB_CTR_WORKERS_DIED);

	struct kid_arg a = { .name = b->name, .fault = fault, .op = KID_ATTACH };
	static struct h_child k;
	start_kid(&k, &a);
	if (strstr(fault, ":stop")) {
		/* Admitted, not mapped yet: the broker counts it while it lives. */
		await_stop(&k, fault);
		cr_expect(worker_listed(b->name, k.pid), "the stopped worker is not listed");
		kill(k.pid, SIGKILL);
	}
	expect_sigkilled(await_end(&k), fault);

	/* The broker frees its slot. */
	cr_assert(H_POLL_UNTIL(workers_attached(b->name) == before, 3000),
		  "%d workers attached after the death at %s, want %d", workers_attached(b->name),
		  fault, before);
	cr_expect(!worker_listed(b->name, k.pid), "the dead worker is still listed");
	cr_expect_eq(h_counter(b->name, SHMB_CTR_WORKERS_DIED), died0 + 1);

	/* Nothing else changed: the session, its events and our subscription. */
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));
	expect_event(cur, 1, 0, 0);
	struct kid_arg pa = { .name = b->name, .sid = sid };
	static struct h_child pub;
	h_child_start(&pub, plain_publisher, &pa);
	struct evh_report r;
	evh_collect(&pub, "publisher", &r, 30000);
	cr_assert_eq(r.n[0], 2, "a fresh worker published id %llu, want 2",
		     (unsigned long long)r.n[0]);
	cr_assert_eq(shmb_wait(c, 5000), 1, "the subscription did not wake us");
	expect_event(cur, 2, 0, 0);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	expect_verify_clean(b->name, "after a death mid attach");
	expect_counters_consistent(b->name, "after a death mid attach");
	h_detach(c);
}

H_TEST(faults, client_killed_mid_attach)
{
	attach_dies("client.attach");
}

H_TEST(faults, client_stopped_mid_attach_then_killed)
{
	attach_dies("client.attach:stop");
}

/* ---------------------------------------------------------------- mid attach, broker side */

/* A child that tries to attach (the broker dies mid hello), reports the code, then waits for
 * 'A' on its command pipe to attach again, reports, and exits on EOF. */
struct hello_arg {
	const char *name;
	int cmd_fd, cmd_wfd; /* the child reads cmd_fd and closes its copy of cmd_wfd */
};

static int hello_kid(void *p, int wfd)
{
	struct hello_arg *a = p;
	close(a->cmd_wfd);
	shmb_client *c = NULL;
	struct evh_report r = { 0 };
	r.n[0] = (uint64_t)(int64_t)shmb_attach(a->name, &c);
	if (h_write_all(wfd, &r, sizeof r) < 0)
		return 1;
	char cmd;
	while (read(a->cmd_fd, &cmd, 1) == 1) {
		if (c) {
			shmb_detach(c);
			c = NULL;
		}
		r.n[0] = (uint64_t)(int64_t)shmb_attach(a->name, &c);
		if (h_write_all(wfd, &r, sizeof r) < 0)
			return 1;
	}
	shmb_detach(c);
	return 0;
}

/* Slots shmctl workers lists for pid, and the first one's slot number in *slot. */
static int slots_of(const char *name, pid_t pid, int *slot)
{
	cJSON *w = h_shmctl_json(name, "workers", NULL);
	const cJSON *arr = cJSON_IsArray(w) ? w : cJSON_GetObjectItemCaseSensitive(w, "workers");
	int n = 0;
	const cJSON *it;
	cJSON_ArrayForEach(it, arr)
	{
		const cJSON *jp = cJSON_GetObjectItemCaseSensitive(it, "pid");
		if (cJSON_IsNumber(jp) && jp->valuedouble == (double)pid) {
			if (n++ == 0 && slot)
				*slot = (int)h_json_num(it, "slot");
		}
	}
	cJSON_Delete(w);
	return n;
}

/* After a broker restart our process (the only worker) holds one slot, the one it had. */
static void expect_resumed(const char *name, int slot0, const char *when)
{
	int slot1 = -1;
	int n = slots_of(name, getpid(), &slot1);
	cr_expect_eq(n, 1, "%s: our process holds %d worker slots, want 1", when, n);
	cr_expect_eq(slot1, slot0, "%s: our client did not resume its slot %d (now %d)", when,
		     slot0, slot1);
	cr_expect_eq(workers_attached(name), 1, "%s: workers attached after the restart", when);
}

static void spawn_armed(struct h_broker *b, const char *point)
{
	setenv("SHMB_FAULT", point, 1);
	int st = 0;
	int rc = h_broker_spawn(b, &st);
	unsetenv("SHMB_FAULT");
	cr_assert_eq(rc, 0, "the broker armed with %s did not start", point);
}

/* The broker dies after choosing a slot, before its hello reply: once for a resuming worker
 * (our client reconnecting), once for a new one (a child). */
H_TEST(faults, broker_killed_mid_hello)
{
	need_faults();
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1], sid2[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	publish_here(s, 1);
	int slot0 = -1;
	cr_assert_eq(slots_of(b->name, getpid(), &slot0), 1);

	/* Our client's next call reconnects with a resume; the broker dies answering it. */
	h_broker_stop(b);
	spawn_armed(b, "broker.hello");
	H_EXPECT_RC(shmb_session_create(c, EVH_TENANT, NULL, sid2), SHMB_EBROKER);
	expect_sigkilled(h_broker_wait_exit(b, 10000), "broker.hello");

	/* A new worker's hello; the broker dies again. */
	spawn_armed(b, "broker.hello");
	int p[2];
	cr_assert_eq(pipe2(p, O_CLOEXEC), 0);
	struct hello_arg a = { .name = b->name, .cmd_fd = p[0], .cmd_wfd = p[1] };
	static struct h_child k;
	h_child_start(&k, hello_kid, &a);
	close(p[0]);
	struct evh_report r;
	cr_assert_eq(h_child_read(&k, &r, sizeof r, 30000), (ssize_t)sizeof r);
	cr_assert_eq((int)r.n[0], SHMB_EBROKER, "attach while the broker dies mid hello: %s",
		     shmb_err_name((int)r.n[0]));
	expect_sigkilled(h_broker_wait_exit(b, 10000), "broker.hello");

	/* The restarted broker holds no slot for the child (alive, never got its reply) and
	 * still holds ours, which our client resumes. */
	h_broker_restart(b);
	cr_expect_eq(slots_of(b->name, k.pid, NULL), 0,
		     "a phantom worker slot is kept for pid %ld, which never got its reply",
		     (long)k.pid);
	H_OK(shmb_session_create(c, EVH_TENANT, NULL, sid2));
	expect_resumed(b->name, slot0, "after broker deaths mid hello");
	expect_verify_clean(b->name, "after broker deaths mid hello");

	/* The child attaches now; nothing was lost. */
	cr_assert_eq(write(p[1], "A", 1), 1);
	cr_assert_eq(h_child_read(&k, &r, sizeof r, 30000), (ssize_t)sizeof r);
	cr_assert_eq((int)r.n[0], 0, "attach after the restart: %s", shmb_err_name((int)r.n[0]));
	cr_expect_eq(workers_attached(b->name), 2);
	publish_here(s, 2);
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));
	expect_event(cur, 1, 0, 0);
	expect_event(cur, 2, 0, 0);
	shmb_cursor_close(cur);
	close(p[1]);
	cr_assert_eq(h_child_wait(&k, 10000), 0);
	cr_assert(H_POLL_UNTIL(workers_attached(b->name) == 1, 3000),
		  "the child's slot was not freed when it detached");
	shmb_session_close(s);
	expect_verify_clean(b->name, "at the end");
	expect_counters_consistent(b->name, "after broker deaths mid hello");
	h_detach(c);
}

/* ---------------------------------------------------------------- inside a read-side section */

static void read_section(int stop)
{
	need_faults();
	struct h_broker *b =
		h_broker_start(H_ARGS("--max-sessions", "2", "--sweep-interval-ms", "50"));
	shmb_client *c = h_attach(b->name);
	char s1[SHMB_SID_LEN + 1], s2[SHMB_SID_LEN + 1], s3[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, EVH_TENANT, NULL, s1));
	H_OK(shmb_session_create(c, EVH_TENANT, NULL, s2));

	/* The child opens s1 and is killed (or stopped) between the lookup and the unlock. */
	struct kid_arg a = { .name = b->name,
			     .sid = s1,
			     .fault = stop ? "client.read_section:stop" : "client.read_section",
			     .op = KID_OPEN };
	static struct h_child k;
	start_kid(&k, &a);
	uint64_t reclaimed0 = h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED);
	if (stop) {
		await_stop(&k, a.fault);
		/* It holds s1's record: deleted now, the record must not be recycled under it. */
		H_OK(shmb_session_delete(c, s1, EVH_TENANT, NULL));
		int64_t end = h_now_ms() + 300;
		while (h_now_ms() < end) {
			int rc = shmb_session_create(c, EVH_TENANT, NULL, s3);
			cr_assert_eq(rc, SHMB_EFULL,
				     "create gave %s while a reader stopped in its section "
				     "held the deleted record",
				     shmb_err_name(rc));
			h_sleep_ms(20);
		}
		cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED), reclaimed0);
		kill(k.pid, SIGKILL);
	} else {
		H_OK(shmb_session_delete(c, s1, EVH_TENANT, NULL));
	}
	expect_sigkilled(await_end(&k), a.fault);

	/* Its reader slot is cleared: the record comes back. */
	int rc = SHMB_EFULL;
	cr_assert(H_POLL_UNTIL((rc = shmb_session_create(c, EVH_TENANT, NULL, s3)) != SHMB_EFULL,
			       5000) &&
			  rc == 0,
		  "after the death inside the section the deleted record never came back: %s",
		  shmb_err_name(rc));
	cr_assert(H_POLL_UNTIL(workers_attached(b->name) == 1, 3000), "dead worker still attached");
	shmb_session *h = NULL;
	H_OK(shmb_session_open(c, s2, EVH_TENANT, NULL, &h));
	shmb_session_close(h);
	H_OK(shmb_session_open(c, s3, EVH_TENANT, NULL, &h));
	shmb_session_close(h);
	expect_verify_clean(b->name, "after a death inside a read-side section");
	expect_counters_consistent(b->name, "after a death inside a read-side section");
	h_detach(c);
}

H_TEST(faults, client_killed_inside_read_section)
{
	read_section(0);
}

H_TEST(faults, client_stopped_inside_read_section_then_killed)
{
	read_section(1);
}

/* ---------------------------------------------------------------- the broker's points: counters */

enum bop { BOP_CREATE, BOP_DELETE, BOP_RECLAIM, BOP_ADOPT };

/* The broker dies at point during op; after the restart the counters still add up. */
static void broker_point_counters(const char *point, enum bop op)
{
	need_faults();
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "4"));
	shmb_client *c = h_attach(b->name);
	char keep[SHMB_SID_LEN + 1], victim[SHMB_SID_LEN + 1], sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, EVH_TENANT, NULL, keep));
	H_OK(shmb_session_create(c, EVH_TENANT, NULL, victim));
	int slot0 = -1;
	cr_assert_eq(slots_of(b->name, getpid(), &slot0), 1);
	h_broker_stop(b);
	setenv("SHMB_FAULT", point, 1);
	int st = 0;
	int rc = h_broker_spawn(b, &st);
	unsetenv("SHMB_FAULT");
	if (op == BOP_ADOPT) {
		cr_assert(rc == -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "%s did not fire",
			  point);
	} else {
		cr_assert_eq(rc, 0, "the broker armed with %s did not start", point);
		if (op == BOP_CREATE)
			rc = shmb_session_create(c, EVH_TENANT, NULL, sid);
		else
			rc = shmb_session_delete(c, victim, EVH_TENANT, NULL);
		cr_assert(rc == SHMB_EBROKER || op == BOP_RECLAIM, "%s did not fire (%s)", point,
			  shmb_err_name(rc));
		expect_sigkilled(h_broker_wait_exit(b, 10000), point);
	}
	h_broker_restart(b);
	expect_verify_clean(b->name, point);
	expect_counters_consistent(b->name, point);
	/* And they keep adding up as the broker goes on, which re-admitted our client (alive all
	 * along) into the worker slot it held. */
	H_OK(shmb_session_create(c, EVH_TENANT, NULL, sid));
	expect_resumed(b->name, slot0, point);
	H_OK(shmb_session_delete(c, sid, EVH_TENANT, NULL));
	expect_counters_consistent(b->name, point);
	h_detach(c);
}

H_TEST(faults, counters_after_broker_link)
{
	broker_point_counters("broker.link", BOP_CREATE);
}

H_TEST(faults, counters_after_broker_link_linked)
{
	broker_point_counters("broker.link.linked", BOP_CREATE);
}

H_TEST(faults, counters_after_broker_create_reply)
{
	broker_point_counters("broker.create.reply", BOP_CREATE);
}

H_TEST(faults, counters_after_broker_unlink_marked)
{
	broker_point_counters("broker.unlink.marked", BOP_DELETE);
}

H_TEST(faults, counters_after_broker_unlink)
{
	broker_point_counters("broker.unlink", BOP_DELETE);
}

H_TEST(faults, counters_after_broker_reclaim)
{
	broker_point_counters("broker.reclaim", BOP_RECLAIM);
}

H_TEST(faults, counters_after_broker_adopt)
{
	broker_point_counters("broker.adopt", BOP_ADOPT);
}

/* ---------------------------------------------------------------- an unsettled claim survives */

/* A dead publisher's claim whose gap cannot be written yet survives broker crashes:
 *   1. A publishes id 1 and stops at publish.write:stop, holding descriptor slot 1 busy.
 *   2. Ids 2..16 are published (ring of 16): id 17 would reuse slot 1.
 *   3. B claims id 17 and is killed at client.publish.claimed. Its gap cannot be written while
 *      A's older lap holds the slot: the broker must keep the claim.
 *   4. The broker is SIGKILLed; a restart is killed during adoption (broker.adopt); the next
 *      restart adopts.
 *   5. A is continued and commits id 1; the broker then writes the gap at 17, and the stream
 *      goes on at 18. Before this was fixed, the claim lived only in the killed broker's memory
 *      and every reader wedged at 17. */
H_TEST(faults, unsettled_claim_survives_broker_restarts)
{
	need_faults();
	struct h_broker *b = h_broker_start(H_ARGS("--ring-events", "16")); /* 256-byte slots */
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	int slot0 = -1;
	cr_assert_eq(slots_of(b->name, getpid(), &slot0), 1);

	struct kid_arg aa = {
		.name = b->name, .sid = sid, .fault = "publish.write:stop", .op = KID_PUBLISH
	};
	static struct h_child A;
	start_kid(&A, &aa);
	await_stop(&A, aa.fault); /* holds id 1, slot 1 busy */
	for (uint64_t id = 2; id <= 16; id++)
		publish_here(s, id);
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 1, &cur));
	for (uint64_t id = 2; id <= 16; id++)
		expect_event(cur, id, 0, 0);

	struct kid_arg ba = {
		.name = b->name, .sid = sid, .fault = "client.publish.claimed", .op = KID_PUBLISH
	};
	static struct h_child B;
	start_kid(&B, &ba);
	expect_sigkilled(await_end(&B), ba.fault);
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_assert_eq(info.last_event_id, 17, "B claimed id 17; last id %llu",
		     (unsigned long long)info.last_event_id);
	/* The broker noticed the death but cannot write the gap: B's slot stays dead. */
	cr_assert(H_POLL_UNTIL(h_counter(b->name, SHMB_CTR_WORKERS_DIED) == 1, 3000),
		  "the broker did not notice B's death");
	cJSON *stj = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(stj, "workers.dead"), 1,
		     "B's slot should stay DEAD while its claim is unsettled");
	cJSON_Delete(stj);
	shmb_event ev;
	unsigned char buf[512];
	cr_assert_eq(next_within(cur, &ev, buf, sizeof buf, 100), 0,
		     "id 17 delivered while A still holds its slot");

	/* The broker dies, and a restart dies again during its adoption. */
	h_broker_kill(b);
	setenv("SHMB_FAULT", "broker.adopt", 1);
	int st = 0;
	int rc = h_broker_spawn(b, &st);
	unsetenv("SHMB_FAULT");
	cr_assert(rc == -1 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
		  "broker.adopt did not fire");
	h_broker_restart(b);
	cr_assert_eq(next_within(cur, &ev, buf, sizeof buf, 100), 0,
		     "id 17 delivered while A still holds its slot (after the restarts)");
	int slot1 = -1;
	cr_expect_eq(slots_of(b->name, getpid(), &slot1), 1);
	cr_expect_eq(slot1, slot0, "adoption moved our live client from slot %d to %d", slot0,
		     slot1);
	expect_verify_clean(b->name, "with an unsettled claim adopted");

	/* A commits id 1; the adopted claim becomes a gap; the stream goes on. */
	kill(A.pid, SIGCONT);
	struct evh_report r;
	evh_collect(&A, "A", &r, 30000);
	cr_assert_eq(r.n[0], 1, "A's publish returned %lld, want 1", (long long)(int64_t)r.n[0]);
	expect_event(cur, 17, 1, 2000);
	publish_here(s, 18);
	expect_event(cur, 18, 0, 0);
	cr_assert(H_POLL_UNTIL(workers_attached(b->name) == 1 &&
				       h_counter(b->name, SHMB_CTR_GAPS_WRITTEN) == 1,
			       3000),
		  "B's slot was not freed after its claim was settled");
	stj = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(stj, "workers.dead"), 0, "a DEAD slot is left");
	cJSON_Delete(stj);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	expect_verify_clean(b->name, "at the end");
	h_detach(c);
}

/* ---------------------------------------------------------------- shmctl status, broker dead */

H_TEST(faults, status_reports_a_dead_broker)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, EVH_TENANT, NULL, sid));
	h_detach(c);
	pid_t old = b->pid;
	h_broker_kill(b);

	struct h_result r;
	h_shmctl(&r, b->name, "status", NULL);
	cr_expect_eq(r.status, 3, "status with the broker dead: exit %d\n%s", r.status, r.err);
	char want[64];
	snprintf(want, sizeof want, "dead (last pid %ld)", (long)old);
	cr_expect(strstr(r.out, want), "status does not say \"%s\":\n%s", want, r.out);
	cr_expect(strstr(r.out, "alive: false"), "status does not say alive: false:\n%s", r.out);
	cr_expect(h_contains(r.out, "restart shmbrokerd"),
		  "status does not say what to do about the dead broker:\n%s", r.out);
	h_result_free(&r);
	cJSON *st = h_shmctl_json(b->name, "status", NULL);
	const cJSON *state = h_json_get(st, "broker.state");
	cr_expect(cJSON_IsString(state) && !strcmp(state->valuestring, "dead"),
		  "broker.state is not \"dead\"");
	cr_expect(cJSON_IsFalse(h_json_get(st, "broker.alive")));
	cr_expect_eq(h_json_num(st, "broker.pid"), old);
	cr_expect_eq(h_json_num(st, "sessions.live"), 1);
	cJSON_Delete(st);

	/* A clean stop reads differently. */
	h_broker_restart(b);
	old = b->pid;
	h_broker_stop(b);
	h_shmctl(&r, b->name, "status", NULL);
	snprintf(want, sizeof want, "stopped (last pid %ld)", (long)old);
	cr_expect(strstr(r.out, want), "status does not say \"%s\":\n%s", want, r.out);
	h_result_free(&r);
}
