/* test_replace.c - a worker's slot and segment after a broker restart or a replaced segment
 * (issue 10 items 1 and 6, red-team follow-ups B and C).
 *
 * B: a second, independent client in a process that holds a slot (two copies of libshmb: here
 * a raw hello on a connection of the test process, which is what the second copy sends) never
 * takes the slot of the client still using it, and a create or delete with a request id is never
 * applied on a connection without a worker slot (the client waits for its resume's outcome
 * before sending one behind it).
 * C: a segment no broker serves any more (removed at a clean stop with --unlink-on-exit,
 * replaced while the broker was down, or truncated and rebuilt) is not used silently: the data path and broker calls fail
 * with SHMB_ESTALE, and the application detaches and attaches again. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ctl.h"
#include "harness.h"
#include "internal.h"
#include "layout.h"

TestSuite(replace, .init = h_setup, .fini = h_teardown, .timeout = 60);

/* One raw request on fd, returning the parsed reply (fds it carries are closed). */
static cJSON *raw_call(int fd, const char *msg)
{
	cr_assert_eq(ctl_send(fd, msg, strlen(msg), NULL, 0), 0, "send %s", msg);
	cJSON *reply = NULL;
	int fds[SHMB_MAX_WORKERS_LIMIT + 1], nfds = 0, timed_out = 0;
	(void)ctl_wait_reply(fd, 5000, &reply, fds, SHMB_MAX_WORKERS_LIMIT + 1, &nfds, &timed_out);
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	cr_assert(reply, "no reply to %s", msg);
	return reply;
}

static int raw_connect(const char *name)
{
	char why[256];
	int fd = ctl_connect(name, why, sizeof why);
	cr_assert_geq(fd, 0, "connect: %s", why);
	return fd;
}

static int reply_code(const cJSON *r)
{
	if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(r, "ok")))
		return 0;
	const cJSON *code = cJSON_GetObjectItemCaseSensitive(r, "code");
	return cJSON_IsNumber(code) ? code->valueint : 1;
}

static const char *reply_msg(const cJSON *r)
{
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(r, "message");
	return cJSON_IsString(m) ? m->valuestring : "";
}

static void fresh_hello(char *buf, size_t len)
{
	snprintf(buf, len,
		 "{\"op\":\"hello\",\"pid\":%ld,\"layout_major\":%d,\"layout_minor\":%d,"
		 "\"fingerprint\":%u}",
		 (long)getpid(), SHMB_LAYOUT_MAJOR, SHMB_LAYOUT_MINOR, shmb_layout_fingerprint());
}

/* ---------------------------------------------------------------- B */

/* The red team's s13: copy 1 attached and subscribed; the broker SIGKILLed and restarted (its
 * slot adopted without a connection); copy 2 of the same process says a fresh hello. Copy 2 is
 * refused (SHMB_ENOWORKER naming the slot); copy 1 keeps its slot, reader slot and subscription, and
 * its next create works. */
H_TEST(replace, second_client_of_a_process_does_not_take_the_slot)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "tA", NULL, sid));
	shmb_session *s;
	H_OK(shmb_session_open(c, sid, "tA", NULL, &s));
	H_OK(shmb_subscribe(s));
	uint32_t slot = c->slot, gen = c->gen, idx = s->idx;
	const struct shmb_worker *wk = seg_worker(&c->seg, slot);
	uint32_t readers = 0;
	for (uint32_t k = 0; k < c->seg.cfg.readers_per_worker; k++)
		readers += uatomic_read(&seg_reader(&c->seg, slot, k)->in_use) != 0;
	cr_assert_geq(readers, 1);

	h_broker_kill(b);
	h_broker_restart(b);

	int fd = raw_connect(b->name);
	char msg[256];
	fresh_hello(msg, sizeof msg);
	cJSON *r = raw_call(fd, msg);
	cr_expect_eq(reply_code(r), SHMB_ENOWORKER, "second client's hello: %s",
		     cJSON_PrintUnformatted(r));
	cr_expect(strstr(reply_msg(r), "already holds worker slot"), "message: %s", reply_msg(r));
	cJSON_Delete(r);
	close(fd);

	/* Copy 1 still holds everything. */
	cr_expect_eq(uatomic_read(&wk->state), SHMB_WORKER_LIVE);
	cr_expect_eq(uatomic_read(&wk->pid), (int32_t)getpid());
	cr_expect_eq(uatomic_read(&wk->gen), gen);
	uint32_t after = 0;
	for (uint32_t k = 0; k < c->seg.cfg.readers_per_worker; k++)
		after += uatomic_read(&seg_reader(&c->seg, slot, k)->in_use) != 0;
	cr_expect_eq(after, readers, "reader slots cleared under a live reader");
	cr_expect(uatomic_read(&seg_rec(&c->seg, idx)->subscribers[slot / 64]) &
			  (UINT64_C(1) << (slot % 64)),
		  "subscription cleared under a live subscriber");
	char sid2[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "tQ", NULL, sid2));
	cr_expect_eq(c->slot, slot);
	H_OK(shmb_publish(s, 0, 0, "y", 1));
	shmb_session_close(s);
}

/* A create carrying a request id on a connection that holds no worker slot is refused and not
 * applied: no slot would record its outcome for a retry. */
H_TEST(replace, create_with_req_on_a_slotless_connection_is_refused)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	int fd = raw_connect(b->name);
	cJSON *r = raw_call(fd, "{\"op\":\"create\",\"tenant\":\"t\",\"req\":77}");
	cr_expect_eq(reply_code(r), SHMB_EBROKER, "create with req, no hello: %s",
		     cJSON_PrintUnformatted(r));
	cr_expect(strstr(reply_msg(r), "without a worker slot"), "message: %s", reply_msg(r));
	cJSON_Delete(r);
	close(fd);
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_CREATED), 0, "the create was applied");
}

/* The red team's second half of s13: the data path sent a resume that the broker refuses (the
 * slot was released meanwhile: here by a detach naming it, from another connection of this
 * process); a create made before its reply was read fails and is neither applied nor even sent
 * behind the refused resume. */
H_TEST(replace, create_waits_for_the_resume_it_follows)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "tA", NULL, sid));
	shmb_session *s;
	H_OK(shmb_session_open(c, sid, "tA", NULL, &s));

	h_broker_kill(b);
	h_broker_restart(b);
	int fd = raw_connect(b->name);
	char msg[128];
	snprintf(msg, sizeof msg, "{\"op\":\"detach\",\"slot\":%u,\"gen\":%u}", c->slot, c->gen);
	cJSON *r = raw_call(fd, msg);
	cr_assert_eq(reply_code(r), 0, "detach by id: %s", cJSON_PrintUnformatted(r));
	cJSON_Delete(r);
	close(fd);

	/* The publish finds the eventfd set stale and sends a resume without waiting. */
	uint64_t errors = h_counter(b->name, SHMB_CTR_CTL_ERRORS);
	(void)shmb_publish(s, 0, 0, "x", 1);
	cr_assert(c->ctl_fd >= 0 && c->owed_n && c->owed[c->owed_head] == SHMBI_OWED_HELLO,
		  "the publish sent no resume");
	uint64_t created = h_counter(b->name, SHMB_CTR_SESSIONS_CREATED);
	char sid2[SHMB_SID_LEN + 1];
	int rc = shmb_session_create(c, "tQ", NULL, sid2);
	cr_expect_lt(rc, 0, "a create on a released slot succeeded");
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_CREATED), created,
		     "the create was applied (rc %s)", shmb_err_name(rc));
	/* Two refusals: the publish's resume and the create's own resume after it. A create
	 * sent behind the first would be a third ("req" on a connection without a slot). */
	cr_expect_eq(h_counter(b->name, SHMB_CTR_CTL_ERRORS) - errors, 2,
		     "the create was sent behind the refused resume");
	shmb_session_close(s);
}

/* ---------------------------------------------------------------- C */

/* The red team's s14/s15: a broker stopped with --unlink-on-exit removes the segment; attached
 * workers then get SHMB_ESTALE from publish, open and create, before and after a new broker
 * built a new segment -- not successful publishes nobody sees and SHMB_EBROKER forever. After
 * detaching and attaching again, everything works on the new segment. */
H_TEST(replace, unlinked_segment_is_stale)
{
	setenv("SHMB_CTL_TIMEOUT_MS", "400", 1);
	struct h_broker *b = h_broker_start(H_ARGS("--unlink-on-exit"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "tA", NULL, sid));
	shmb_session *s;
	H_OK(shmb_session_open(c, sid, "tA", NULL, &s));
	shmb_cursor *cur;
	H_OK(shmb_cursor_open(s, 0, &cur));

	h_broker_stop(b);
	H_EXPECT_RC(shmb_publish(s, 0, 0, "x", 1), SHMB_ESTALE);
	shmb_session *s2;
	H_EXPECT_RC(shmb_session_open(c, sid, "tA", NULL, &s2), SHMB_ESTALE);
	shmb_event ev;
	char buf[16];
	H_EXPECT_RC(shmb_cursor_next(cur, &ev, buf, sizeof buf), SHMB_ESTALE);
	h_broker_restart(b);
	H_EXPECT_RC(shmb_publish(s, 0, 0, "x", 1), SHMB_ESTALE);
	char sid2[SHMB_SID_LEN + 1];
	H_EXPECT_RC(shmb_session_create(c, "tB", NULL, sid2), SHMB_ESTALE);
	cr_expect_str_eq(shmb_strerror(SHMB_ESTALE), "segment replaced: detach and attach again");
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_detach(c);

	c = h_attach(b->name);
	H_OK(shmb_session_create(c, "tB", NULL, sid2));
	H_OK(shmb_session_open(c, sid2, "tB", NULL, &s));
	H_OK(shmb_publish(s, 0, 0, "x", 1));
	shmb_session_close(s);
}

/* The Python red team's find: attaching again while a stale client is still open (handles of it
 * not closed yet, e.g. streams still ending) shared that stale client, so the "detach and attach
 * again" of SHMB_ESTALE worked only once every handle of the process was closed. Now the attach
 * skips a client whose segment is retired and gives a fresh one of the new segment. */
H_TEST(replace, attach_beside_an_open_stale_client_gets_the_new_segment)
{
	setenv("SHMB_CTL_TIMEOUT_MS", "400", 1);
	struct h_broker *b = h_broker_start(H_ARGS("--unlink-on-exit"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "tA", NULL, sid));
	shmb_session *s;
	H_OK(shmb_session_open(c, sid, "tA", NULL, &s));

	h_broker_stop(b);
	h_broker_restart(b);
	H_EXPECT_RC(shmb_publish(s, 0, 0, "x", 1), SHMB_ESTALE);
	shmb_client *c2 = h_attach(b->name); /* c and s still open */
	cr_assert_neq(c2, c, "the stale client was shared again");
	char sid2[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c2, "tB", NULL, sid2));
	shmb_session *s2;
	H_OK(shmb_session_open(c2, sid2, "tB", NULL, &s2));
	cr_expect_eq(shmb_publish(s2, 0, 0, "x", 1), 1);
	H_EXPECT_RC(shmb_publish(s, 0, 0, "x", 1), SHMB_ESTALE); /* the old one stays stale */
	shmb_client *c3 = h_attach(b->name);
	cr_expect_eq(c3, c2, "a second attach shares the fresh client");
	h_detach(c3);
	shmb_session_close(s);
	h_detach(c);
	shmb_session_close(s2);
	h_detach(c2);
}

/* The segment replaced while the broker was down (SIGKILL, the operator removed the segment,
 * a new broker built a new one): the worker's resume finds another segment and its create fails
 * with SHMB_ESTALE, not a transient SHMB_EBROKER; its publishes fail the same way from then on. */
H_TEST(replace, resume_onto_another_segment_is_stale)
{
	setenv("SHMB_CTL_TIMEOUT_MS", "400", 1);
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "tA", NULL, sid));
	shmb_session *s;
	H_OK(shmb_session_open(c, sid, "tA", NULL, &s));

	h_broker_kill(b);
	char shm[96];
	snprintf(shm, sizeof shm, "/shmb.%s", b->name);
	cr_assert_eq(shm_unlink(shm), 0);
	h_broker_restart(b);
	char sid2[SHMB_SID_LEN + 1];
	H_EXPECT_RC(shmb_session_create(c, "tB", NULL, sid2), SHMB_ESTALE);
	H_EXPECT_RC(shmb_session_create(c, "tB", NULL, sid2), SHMB_ESTALE);
	H_EXPECT_RC(shmb_publish(s, 0, 0, "x", 1), SHMB_ESTALE);
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_CREATED), 0);
	shmb_session_close(s);
	h_detach(c);
	c = h_attach(b->name);
	H_OK(shmb_session_create(c, "tB", NULL, sid2));
}

/* A segment truncated while its broker was down (to its header page: a shorter one kills its
 * users with SIGBUS anyway): the next broker marks it retired before building a new one, and
 * the worker gets SHMB_ESTALE from publish and create instead of a SIGBUS or a silent loss. */
H_TEST(replace, truncated_segment_is_stale)
{
	setenv("SHMB_CTL_TIMEOUT_MS", "400", 1);
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, "tA", NULL, sid));
	shmb_session *s;
	H_OK(shmb_session_open(c, sid, "tA", NULL, &s));

	h_broker_kill(b);
	char shm[96];
	snprintf(shm, sizeof shm, "/shmb.%s", b->name);
	int fd = shm_open(shm, O_RDWR, 0);
	cr_assert_geq(fd, 0);
	cr_assert_eq(ftruncate(fd, SHMB_PAGE), 0);
	close(fd);
	h_broker_restart(b);
	H_EXPECT_RC(shmb_publish(s, 0, 0, "x", 1), SHMB_ESTALE);
	char sid2[SHMB_SID_LEN + 1];
	H_EXPECT_RC(shmb_session_create(c, "tB", NULL, sid2), SHMB_ESTALE);
	shmb_session_close(s);
	h_detach(c);
	c = h_attach(b->name);
	H_OK(shmb_session_create(c, "tB", NULL, sid2));
}
