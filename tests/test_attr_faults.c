/* test_attr_faults.c - session attributes under SIGKILL and SIGSTOP (docs/attributes.md, "Crash
 * model"). Needs -DSHMB_FAULT_INJECTION=ON (the test build).
 *
 * - kill_at_every_set_point / kill_at_every_delete_point: a worker changing an attribute is
 *   SIGKILLed at each fault point of the change (client/attrs.c); the attribute then holds the
 *   old value (before the commit) or the new one (from the commit on), and once the broker has
 *   settled the dead worker the session's whole budget is free again (a value as large as the
 *   budget fits), shmctl verify is clean.
 * - reader_stopped_mid_copy: a reader stopped between copying a block's header and its value,
 *   while the value is changed twice (its cells freed and reused by a value of another length),
 *   returns a whole value of one version, never a mix.
 * - dead_writer_settled_after_a_broker_restart: a writer dies holding cells while no broker
 *   runs; the next broker's adoption frees them. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fault.h"
#include "harness.h"

TestSuite(attr_faults, .init = h_setup, .fini = h_teardown, .timeout = 120);

static void need_faults(void)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test(
			"built without SHMB_FAULT_INJECTION (cmake -DSHMB_FAULT_INJECTION=ON)");
}

/* 1024 bytes of attributes: 16 cells in one bitmap word, so a 16-cell value fits only when
 * every cell is free. */
#define BUDGET_ARGS "--attr-bytes", "1024", "--attr-keys", "8"
#define OLD_LEN 200             /* 8 + 1 + 200 bytes: 4 cells */
#define NEW_LEN 300             /* 5 cells */
#define FULL_LEN (1024 - 8 - 5) /* key "probe": the whole budget */

enum { OP_SET, OP_DELETE };

struct kid_arg {
	const char *sid;
	const char *fault;
	int op;
};

/* Opens the session, says ready, arms the fault point and changes "k". Reaching the end
 * means the point did not fire: exit 10 + |rc|. */
static int kid(void *p, int wfd)
{
	struct kid_arg *a = p;
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	if (shmb_attach(NULL, &c) < 0 || shmb_session_open(c, a->sid, "t", NULL, &s) < 0)
		return 2;
	char one = 1;
	if (h_write_all(wfd, &one, 1) < 0)
		return 3;
	static char v[NEW_LEN];
	memset(v, 'n', sizeof v);
	setenv("SHMB_FAULT", a->fault, 1);
	int rc = a->op == OP_SET ? shmb_attr_set(s, "k", v, sizeof v) : shmb_attr_delete(s, "k");
	unsetenv("SHMB_FAULT");
	return 10 - rc;
}

/* 1 when the whole budget is free: a value of every cell fits (then it is deleted again). */
static int budget_whole(shmb_session *s)
{
	static char v[FULL_LEN];
	if (shmb_attr_set(s, "probe", v, sizeof v) != 0)
		return 0;
	return shmb_attr_delete(s, "probe") == 0;
}

static void kill_at(const char *point, int op, int committed)
{
	h_broker_start(H_ARGS(BUDGET_ARGS));
	const char *name = getenv("SHMB_NAME");
	shmb_client *c = h_attach(name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = NULL;
	H_OK(shmb_session_create(c, "t", NULL, sid));
	H_OK(shmb_session_open(c, sid, "t", NULL, &s));
	static char old[OLD_LEN], buf[SHMB_ATTR_MAX];
	memset(old, 'o', sizeof old);
	H_OK(shmb_attr_set(s, "k", old, sizeof old));

	struct kid_arg a = { .sid = sid, .fault = point, .op = op };
	struct h_child ch;
	h_child_start(&ch, kid, &a);
	char one;
	cr_assert_eq(h_child_read(&ch, &one, 1, 10000), 1, "%s: the child did not get ready",
		     point);
	int st;
	pid_t r;
	while ((r = waitpid(ch.pid, &st, 0)) < 0 && errno == EINTR)
		;
	cr_assert_eq(r, ch.pid);
	h_child_kill(&ch); /* the harness's record: reaped already */
	cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
		  "%s: the child was not killed at the point (%s %d)", point,
		  WIFEXITED(st) ? "exit" : "signal",
		  WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));

	/* Old or new, nothing else; which one the point says (the word CAS is the commit). */
	uint64_t v = 0;
	int n = shmb_attr_get(s, "k", buf, sizeof buf, &v);
	if (!committed) {
		cr_assert_eq(n, OLD_LEN, "%s: %d (%s), want the old value", point, n,
			     shmb_err_name(n));
		cr_assert(memcmp(buf, old, OLD_LEN) == 0, "%s: the old value changed", point);
		cr_assert_eq(v, 1);
	} else if (op == OP_SET) {
		cr_assert_eq(n, NEW_LEN, "%s: %d (%s), want the new value", point, n,
			     shmb_err_name(n));
		for (int i = 0; i < NEW_LEN; i++)
			cr_assert_eq(buf[i], 'n', "%s: byte %d of the new value", point, i);
		cr_assert_eq(v, 2);
	} else {
		H_EXPECT_RC(n, SHMB_ENOENT);
	}
	/* The space comes back once the broker settled the dead worker. */
	if (n >= 0)
		H_OK(shmb_attr_delete(s, "k"));
	cr_assert(H_POLL_UNTIL(budget_whole(s), 10000),
		  "%s: the dead writer's cells were not freed within 10 s", point);
	struct h_result vr;
	h_shmctl(&vr, name, "verify", NULL);
	cr_expect_eq(vr.status, 0, "%s: shmctl verify: exit %d\n%s%s", point, vr.status, vr.out,
		     vr.err);
	h_result_free(&vr);
	shmb_session_close(s);
	h_detach(c);
}

H_TEST(attr_faults, kill_at_ledger)
{
	need_faults();
	kill_at("attr.ledger", OP_SET, 0);
}
H_TEST(attr_faults, kill_at_alloc)
{
	need_faults();
	kill_at("attr.alloc", OP_SET, 0);
}
H_TEST(attr_faults, kill_at_write)
{
	need_faults();
	kill_at("attr.write", OP_SET, 0);
}
H_TEST(attr_faults, kill_at_old)
{
	need_faults();
	kill_at("attr.old", OP_SET, 0);
}
H_TEST(attr_faults, kill_at_commit)
{
	need_faults();
	kill_at("attr.commit", OP_SET, 1);
}
H_TEST(attr_faults, kill_at_free)
{
	need_faults();
	kill_at("attr.free", OP_SET, 1);
}
H_TEST(attr_faults, delete_kill_at_ledger)
{
	need_faults();
	kill_at("attr.ledger", OP_DELETE, 0);
}
H_TEST(attr_faults, delete_kill_at_old)
{
	need_faults();
	kill_at("attr.old", OP_DELETE, 0);
}
H_TEST(attr_faults, delete_kill_at_commit)
{
	need_faults();
	kill_at("attr.commit", OP_DELETE, 1);
}
H_TEST(attr_faults, delete_kill_at_free)
{
	need_faults();
	kill_at("attr.free", OP_DELETE, 1);
}

/* ---------------------------------------------------------------- a reader stopped mid-copy */

#define A_LEN 900  /* 15 cells */
#define B_LEN 1000 /* 16 cells */
#define C_LEN 500  /* 8 cells: lands in the cells A held, over half of them */

struct read_report {
	int rc;
	uint64_t version;
	char first, last;
	int uniform;
};

static int reader(void *p, int wfd)
{
	const char *sid = p;
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	if (shmb_attach(NULL, &c) < 0 || shmb_session_open(c, sid, "t", NULL, &s) < 0)
		return 2;
	char one = 1;
	if (h_write_all(wfd, &one, 1) < 0)
		return 3;
	static char buf[SHMB_ATTR_MAX];
	struct read_report rep = { 0 };
	setenv("SHMB_FAULT", "attr.read:stop", 1);
	rep.rc = shmb_attr_get(s, "v", buf, sizeof buf, &rep.version);
	unsetenv("SHMB_FAULT");
	if (rep.rc > 0) {
		rep.first = buf[0];
		rep.last = buf[rep.rc - 1];
		rep.uniform = 1;
		for (int i = 0; i < rep.rc; i++)
			rep.uniform &= buf[i] == buf[0];
	}
	return h_write_all(wfd, &rep, sizeof rep) == 0 ? 0 : 4;
}

static void await_stop(pid_t pid)
{
	int st;
	pid_t r;
	while ((r = waitpid(pid, &st, WUNTRACED)) < 0 && errno == EINTR)
		;
	cr_assert_eq(r, pid, "waitpid: %s", strerror(errno));
	cr_assert(WIFSTOPPED(st), "the reader did not stop at attr.read (status %#x)", st);
}

H_TEST(attr_faults, reader_stopped_mid_copy)
{
	need_faults();
	h_broker_start(H_ARGS("--attr-bytes", "2048"));
	shmb_client *c = h_attach(getenv("SHMB_NAME"));
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = NULL;
	H_OK(shmb_session_create(c, "t", NULL, sid));
	H_OK(shmb_session_open(c, sid, "t", NULL, &s));
	static char a[A_LEN], b[B_LEN], cc[C_LEN];
	memset(a, 'a', sizeof a);
	memset(b, 'b', sizeof b);
	memset(cc, 'c', sizeof cc);
	H_OK(shmb_attr_set(s, "v", a, sizeof a)); /* cells 0-14 (first fit) */

	struct h_child ch;
	h_child_start(&ch, reader, sid);
	char one;
	cr_assert_eq(h_child_read(&ch, &one, 1, 10000), 1);
	await_stop(ch.pid); /* it holds A's header and key, not its value yet */
	H_OK(shmb_attr_set(s, "v", b, sizeof b));   /* cells 15-30; A's cells freed */
	H_OK(shmb_attr_set(s, "v", cc, sizeof cc)); /* cells 0-7: over A's */
	kill(ch.pid, SIGCONT);
	/* It sees the word changed and reads again: stops at the point again, unchanged now. */
	await_stop(ch.pid);
	kill(ch.pid, SIGCONT);
	struct read_report rep;
	cr_assert_eq(h_child_read(&ch, &rep, sizeof rep, 10000), (ssize_t)sizeof rep);
	cr_assert_eq(h_child_wait(&ch, 10000), 0);
	cr_assert_eq(rep.rc, C_LEN, "the reader got %d (%s), want the newest value's %d bytes",
		     rep.rc, shmb_err_name(rep.rc), C_LEN);
	cr_assert(rep.uniform && rep.first == 'c', "a mixed value: first '%c', last '%c'",
		  rep.first, rep.last);
	cr_assert_eq(rep.version, 3);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- across a broker restart */

/* A writer stopped holding cells it allocated and wrote (attr.write), the broker SIGKILLed, the
 * writer SIGKILLed while no broker runs: the next broker's adoption finds the dead worker and
 * frees the cells its ledger names. */
H_TEST(attr_faults, dead_writer_settled_after_a_broker_restart)
{
	need_faults();
	struct h_broker *b = h_broker_start(H_ARGS(BUDGET_ARGS));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = NULL;
	H_OK(shmb_session_create(c, "t", NULL, sid));
	H_OK(shmb_session_open(c, sid, "t", NULL, &s));
	static char old[OLD_LEN], buf[SHMB_ATTR_MAX];
	memset(old, 'o', sizeof old);
	H_OK(shmb_attr_set(s, "k", old, sizeof old));

	struct kid_arg a = { .sid = sid, .fault = "attr.write:stop", .op = OP_SET };
	struct h_child ch;
	h_child_start(&ch, kid, &a);
	char one;
	cr_assert_eq(h_child_read(&ch, &one, 1, 10000), 1);
	await_stop(ch.pid);
	h_broker_kill(b);
	h_child_kill(&ch); /* dies holding 5 cells, with no broker to notice */
	H_EXPECT_RC(shmb_attr_get(s, "k", buf, sizeof buf, NULL), OLD_LEN);
	H_OK(shmb_attr_delete(s, "k"));
	cr_assert(!budget_whole(s), "the stopped writer held no cells");
	h_broker_restart(b);
	cr_assert(H_POLL_UNTIL(budget_whole(s), 10000),
		  "the restarted broker did not free the dead writer's cells within 10 s");
	char *log = h_broker_log(b);
	cr_expect(h_contains(log, "died changing an attribute"), "broker log:\n%s", log);
	free(log);
	shmb_session_close(s);
	h_detach(c);
}

/* ---------------------------------------------------------------- kill storm */

/* Writers change four keys with values of 1..7 cells (each value filled with its length mod
 * 251, so a reader can tell a whole one); some are SIGKILLed at random moments while two keep
 * writing, so the broker settles dead writers while live ones allocate, publish and free in
 * the same bitmap word. Afterwards every value is whole, verify is clean, and once every key is
 * deleted the whole budget is free: nothing leaked, nothing freed twice. */
#define STORM_KEYS 4

static int storm_writer(void *p, int wfd)
{
	const char *sid = p;
	shmb_client *c = NULL;
	shmb_session *s = NULL;
	if (shmb_attach(NULL, &c) < 0 || shmb_session_open(c, sid, "t", NULL, &s) < 0)
		return 2;
	char one = 1;
	if (h_write_all(wfd, &one, 1) < 0)
		return 3;
	static uint8_t v[7 * 64];
	uint64_t x = (uint64_t)getpid() * 0x9e3779b97f4a7c15u | 1;
	for (uint32_t i = 0;; i++) {
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		size_t len = (size_t)(x % (7 * 64 - 8 - 2)) + 1;
		memset(v, (int)(len % 251), len);
		char k[4] = { 'k', (char)('0' + (x >> 32) % STORM_KEYS), 0 };
		int rc = (x >> 40) % 8 == 0 ? shmb_attr_delete(s, k) : shmb_attr_set(s, k, v, len);
		if (rc < 0 && rc != SHMB_EQUOTA && rc != SHMB_ENOENT)
			return 10 - rc;
		if ((i & 63) == 0 && shmb_attr_get(s, "stop", NULL, 0, NULL) == 0)
			break;
	}
	shmb_session_close(s);
	shmb_detach(c);
	return 0;
}

H_TEST(attr_faults, kill_storm, .timeout = 120)
{
	struct h_broker *b = h_broker_start(
		H_ARGS("--attr-bytes", "2048", "--attr-keys", "8", "--max-workers", "16"));
	const char *name = getenv("SHMB_NAME");
	shmb_client *c = h_attach(name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = NULL;
	H_OK(shmb_session_create(c, "t", NULL, sid));
	H_OK(shmb_session_open(c, sid, "t", NULL, &s));
	struct h_child live[2];
	char one;
	for (int i = 0; i < 2; i++) {
		h_child_start(&live[i], storm_writer, sid);
		cr_assert_eq(h_child_read(&live[i], &one, 1, 10000), 1);
	}
	uint64_t x = 88172645463325252u;
	int kills = 0;
	for (int64_t end = h_now_ms() + 3000; h_now_ms() < end && kills < 50; kills++) {
		struct h_child v;
		h_child_start(&v, storm_writer, sid);
		cr_assert_eq(h_child_read(&v, &one, 1, 10000), 1);
		x ^= x << 13, x ^= x >> 7, x ^= x << 17;
		h_sleep_ms((int)(x % 20) +
			   1); /* anywhere in its loop; the harness allows 64 children */
		h_child_kill(&v);
	}
	H_OK(shmb_attr_set(s, "stop", NULL, 0));
	for (int i = 0; i < 2; i++) {
		int st = h_child_wait(&live[i], 30000);
		cr_assert_eq(st, 0, "live writer %d: %d %s", i, st,
			     st > 10 ? shmb_err_name(10 - st) : "");
	}
	static uint8_t buf[SHMB_ATTR_MAX];
	for (int k = 0; k < STORM_KEYS; k++) {
		char key[4] = { 'k', (char)('0' + k), 0 };
		int n = shmb_attr_get(s, key, buf, sizeof buf, NULL);
		if (n == SHMB_ENOENT)
			continue;
		cr_assert_gt(n, 0, "%s: %s", key, shmb_err_name(n));
		for (int i = 0; i < n; i++)
			cr_assert_eq(buf[i], n % 251, "%s: byte %d of %d is %u", key, i, n, buf[i]);
		H_OK(shmb_attr_delete(s, key));
	}
	H_OK(shmb_attr_delete(s, "stop"));
	struct h_result vr;
	h_shmctl(&vr, name, "verify", NULL);
	cr_expect_eq(vr.status, 0, "shmctl verify: exit %d\n%s%s", vr.status, vr.out, vr.err);
	h_result_free(&vr);
	static char full[SHMB_ATTR_MAX]; /* 8 + 5 + 1976 bytes: all 32 cells */
	int ok = H_POLL_UNTIL(shmb_attr_set(s, "probe", full, sizeof full) == 0, 15000);
	cr_assert(ok, "after %d kills the whole budget did not come back within 15 s", kills);
	char *log = h_broker_log(b);
	int settled = 0;
	for (const char *q = log; (q = strstr(q, "died changing an attribute")); q++)
		settled++;
	free(log);
	cr_log_info("kill storm: %d writers killed at random moments, %d of them holding cells the "
		    "broker freed; budget whole",
		    kills, settled);
	shmb_session_close(s);
	h_detach(c);
}
