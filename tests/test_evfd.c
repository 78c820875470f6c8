/* test_evfd.c - no eventfd write or read in the client or the broker blocks, whatever another
 * process did to the shared description: an admitted worker that clears O_NONBLOCK on its own
 * eventfd (shmb_fd) and fills the counter, then arms, must not hang a publisher of its session,
 * nor the broker ending the session (a delete), nor the broker settling it after it dies; the
 * broker's write that loses the deliberate race (the flag cleared again between its check and
 * its write) ends by its guard's timer (common/wake.c, broker/loop.c; docs/security.md).
 *
 * The attacker is a real child process doing what the red team's program did; the publisher
 * is another child, so a hang shows as a missing report (and a clear message) rather than only
 * as the suite's timeout. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>

#include "evhelp.h"
#include "fault.h"
#include "internal.h"
#include "layout.h"

TestSuite(evfd, .init = h_setup, .fini = h_teardown, .timeout = 20);

/* How long a publish or a broker call may take with a hostile subscriber (a loaded machine). */
#define PROMPT_MS 3000

static int nonblocking(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl >= 0 && (fl & O_NONBLOCK);
}

/* ---------------------------------------------------------------- child: the attacker */

struct attack_arg {
	const char *name, *sid;
	int forge; /* 1: hand a restarted broker a blocking eventfd of its own through evfd_num */
};

/* Subscribes, makes its own eventfd's description blocking, fills the counter to its maximum,
 * arms (shmb_prepare_wait finds no news), reports its worker slot, then waits to be killed. */
static int attacker(void *p, int wfd)
{
	struct attack_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "attacker: %s", what);
	if ((rc = shmb_subscribe(s)) < 0)
		return evh_fail(wfd, rc, "attacker: shmb_subscribe");
	int fd = shmb_fd(c);
	if (fd < 0)
		return evh_fail(wfd, fd, "attacker: shmb_fd");
	if (a->forge) {
		/* A blocking eventfd of its own, named in its slot for a restarted broker's
		 * pidfd_getfd (adopt_eventfd), instead of the one the broker gave it. */
		fd = eventfd(0, EFD_CLOEXEC);
		if (fd < 0)
			return evh_fail(wfd, 0, "attacker: eventfd: %s", strerror(errno));
		uatomic_set(&seg_worker(&c->seg, c->slot)->evfd_num, fd);
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0)
		return evh_fail(wfd, 0, "attacker: F_SETFL: %s", strerror(errno));
	uint64_t v = UINT64_C(0xfffffffffffffffe);
	if (write(fd, &v, sizeof v) != (ssize_t)sizeof v)
		return evh_fail(wfd, 0, "attacker: filling the counter: %s", strerror(errno));
	if ((rc = shmb_prepare_wait(c)) != 0)
		return evh_fail(wfd, rc, "attacker: shmb_prepare_wait returned %d, not 0 (armed)",
				rc);
	struct evh_report r = { 0 };
	r.n[0] = c->slot;
	if (evh_send(wfd, &r) != 0)
		return 3;
	for (;;)
		pause(); /* killed by the test */
}

/* Starts the attacker and returns its worker slot once it is armed. */
static uint32_t start_attacker(struct h_child *ch, struct attack_arg *a)
{
	h_child_start(ch, attacker, a);
	struct evh_report r;
	ssize_t n = h_child_read(ch, &r, sizeof r, 10000);
	cr_assert_eq(n, (ssize_t)sizeof r, "the attacker did not report");
	cr_assert_eq(r.status, 0, "%s: %s", r.msg, shmb_strerror(r.code));
	return (uint32_t)r.n[0];
}

/* Kills the attacker and waits for the broker to settle its slot (its drain of the eventfd
 * must not block either). */
static void end_attacker(shmb_client *c, struct h_child *ch, uint32_t slot)
{
	h_child_kill(ch);
	const struct shmb_worker *wk = seg_worker(&c->seg, slot);
	cr_assert(H_POLL_UNTIL(uatomic_read(&wk->state) == SHMB_WORKER_FREE, 10000),
		  "the broker did not settle the dead attacker's slot %u (hung draining its "
		  "eventfd?)",
		  slot);
}

/* ---------------------------------------------------------------- child: a publisher */

struct pub_arg {
	const char *name, *sid;
};

static int publisher(void *p, int wfd)
{
	struct pub_arg *a = p;
	shmb_client *c;
	shmb_session *s;
	const char *what = "";
	int rc = evh_child_open(a->name, a->sid, &c, &s, &what);
	if (rc < 0)
		return evh_fail(wfd, rc, "publisher: %s", what);
	struct evh_report r = { 0 };
	r.t[0] = evh_mono_ns();
	int64_t id = shmb_publish(s, 0, 0, "{\"a\":1}", 7);
	r.t[1] = evh_mono_ns();
	if (id < 0)
		return evh_fail(wfd, (int)id, "publisher: shmb_publish");
	evh_child_close(c, s);
	return evh_send(wfd, &r);
}

/* The broker keeps serving: a new process attaches and creates a session. */
static void broker_serves(struct h_broker *b)
{
	shmb_client *c2 = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c2, EVH_TENANT, NULL, sid));
	H_OK(shmb_session_delete(c2, sid, EVH_TENANT, NULL));
	h_detach(c2);
}

/* ---------------------------------------------------------------- tests */

/* A publisher of the session returns at once: its write of the attacker's eventfd sets
 * O_NONBLOCK again and takes EAGAIN (the full counter is a pending wakeup). */
H_TEST(evfd, publisher_does_not_block_on_a_hostile_subscriber)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	static struct h_child atk, pub;
	struct attack_arg aa = { .name = b->name, .sid = sid };
	uint32_t slot = start_attacker(&atk, &aa);
	cr_assert(slot < (uint32_t)c->n_evfds);
	cr_assert(!nonblocking(c->evfds[slot]), "the attacker's description should be blocking");

	struct pub_arg pa = { .name = b->name, .sid = sid };
	h_child_start(&pub, publisher, &pa);
	struct evh_report r;
	ssize_t n = h_child_read(&pub, &r, sizeof r, PROMPT_MS + 5000);
	cr_assert_eq(n, (ssize_t)sizeof r,
		     "the publisher did not return: blocked writing the attacker's eventfd");
	cr_assert_eq(r.status, 0, "%s: %s", r.msg, shmb_strerror(r.code));
	cr_expect_lt((r.t[1] - r.t[0]) / 1000000, PROMPT_MS, "shmb_publish took %lld ms",
		     (long long)((r.t[1] - r.t[0]) / 1000000));
	cr_assert_eq(h_child_wait(&pub, 5000), 0);
	cr_expect(nonblocking(c->evfds[slot]), "the publisher did not set O_NONBLOCK again");

	/* Our own publish, the same way (this process, a second walk: not armed any more, but
	 * the attacker arms again only by its own choice; the flag stays set). */
	H_OK(shmb_publish(s, 0, 0, "{\"a\":2}", 7));
	end_attacker(c, &atk, slot);
	broker_serves(b);
	shmb_session_close(s);
	h_detach(c);
}

/* A delete through the broker gets its reply at once: the broker's wakeup of the attacker sets
 * O_NONBLOCK again; it keeps serving, settles the attacker when it dies (its drain of the
 * eventfd does not block), and says what it found in its log. */
H_TEST(evfd, broker_does_not_block_on_a_hostile_subscriber)
{
	setenv("SHMB_CTL_TIMEOUT_MS", "3000", 1);
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	static struct h_child atk;
	struct attack_arg aa = { .name = b->name, .sid = sid };
	uint32_t slot = start_attacker(&atk, &aa);

	int64_t t0 = h_now_ms();
	H_OK(shmb_session_delete(c, sid, EVH_TENANT, NULL));
	cr_expect_lt(h_now_ms() - t0, PROMPT_MS);
	cr_expect(nonblocking(c->evfds[slot]), "the broker did not set O_NONBLOCK again");
	broker_serves(b);

	/* Blocking again, counter emptied: the settle's drain must not wait for a count. */
	int fd = c->evfds[slot];
	cr_assert_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK), 0);
	uint64_t v;
	cr_assert_eq(read(fd, &v, sizeof v), (ssize_t)sizeof v);
	end_attacker(c, &atk, slot);
	broker_serves(b);
	char *log = h_broker_log(b);
	cr_expect(h_contains(log, "was blocking"), "the broker did not log it: %s", log);
	free(log);
	shmb_session_close(s);
	h_detach(c);
	unsetenv("SHMB_CTL_TIMEOUT_MS");
}

/* The deliberate race: the flag cleared again between the broker's check and its write (the
 * broker stops at the fault point wake.fd.write, this process clears the flag, the counter is
 * full). The write blocks; the guard's timer ends it with EINTR, the delete completes (its
 * retry returns the first outcome) and the broker keeps serving. */
H_TEST(evfd, broker_write_losing_the_race_is_interrupted)
{
	if (!SHMB_FAULT_ENABLED)
		cr_skip_test("needs -DSHMB_FAULT_INJECTION=ON");
	setenv("SHMB_CTL_TIMEOUT_MS", "1000", 1);
	setenv("SHMB_FAULT", "wake.fd.write:stop", 1);
	struct h_broker *b = h_broker_start(H_NOARGS);
	unsetenv("SHMB_FAULT");
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	static struct h_child atk;
	struct attack_arg aa = { .name = b->name, .sid = sid };
	uint32_t slot = start_attacker(&atk, &aa);

	H_EXPECT_RC(shmb_session_delete(c, sid, EVH_TENANT, NULL), SHMB_EBROKER);
	cr_assert(H_POLL_UNTIL(evh_proc_stopped(b->pid), 5000), "the fault point did not stop it");
	cr_assert(nonblocking(c->evfds[slot]), "the broker's check should have set the flag");
	int fd = c->evfds[slot];
	cr_assert_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK), 0);
	cr_assert_eq(kill(b->pid, SIGCONT), 0);
	int64_t t0 = h_now_ms();
	H_OK(shmb_session_delete(c, sid, EVH_TENANT, NULL)); /* the first outcome */
	cr_expect_lt(h_now_ms() - t0, PROMPT_MS);
	shmb_session *gone = NULL;
	H_EXPECT_RC(shmb_session_open(c, sid, EVH_TENANT, NULL, &gone), SHMB_ENOENT);
	/* Put right for the rest (the settle's drain, the teardown). */
	cr_assert_eq(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
	end_attacker(c, &atk, slot);
	broker_serves(b);
	shmb_session_close(s);
	h_detach(c);
	unsetenv("SHMB_CTL_TIMEOUT_MS");
}

/* A worker hands a restarted broker a blocking, full eventfd through its slot's evfd_num (the
 * descriptor number a restarted broker takes back with pidfd_getfd). The broker makes it
 * nonblocking when it takes it, and neither its wake_all after adopting nor its wakeup at a
 * delete blocks on it; it keeps serving. */
H_TEST(evfd, restarted_broker_takes_back_a_blocking_eventfd)
{
	setenv("SHMB_CTL_TIMEOUT_MS", "3000", 1);
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	static struct h_child atk;
	struct attack_arg aa = { .name = b->name, .sid = sid, .forge = 1 };
	uint32_t slot = start_attacker(&atk, &aa);
	h_broker_kill(b);
	h_broker_restart(b);
	broker_serves(b); /* after its wake_all of the kept workers */
	int64_t t0 = h_now_ms();
	H_OK(shmb_session_delete(c, sid, EVH_TENANT, NULL)); /* wakes the armed attacker */
	cr_expect_lt(h_now_ms() - t0, PROMPT_MS);
	char *log = h_broker_log(b);
	cr_expect(h_contains(log, "kept"), "the attacker was not kept: %s", log);
	free(log);
	end_attacker(c, &atk, slot);
	broker_serves(b);
	shmb_session_close(s);
	h_detach(c);
	unsetenv("SHMB_CTL_TIMEOUT_MS");
}
