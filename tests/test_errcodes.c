/* test_errcodes.c - the distinct codes of what SHMB_EFULL used to lump together, and the fork
 * code: a thread with no reader slot left gets SHMB_ENOREADER (from every call that needs one),
 * a process with no worker slot left gets SHMB_ENOWORKER, every call on a client inherited across
 * fork() gets SHMB_EFORK (before any other argument check) and never disturbs the parent, and
 * SHMB_EFULL is left for "no free session record". Codes this library does not know (a newer
 * broker's) are described as unknown, not mistaken for another. */
#include <pthread.h>
#include <semaphore.h>
#include <string.h>

#include "harness.h"

TestSuite(errcodes, .init = h_setup, .fini = h_teardown, .timeout = 30);

#define TENANT "acme"

/* ---- SHMB_ENOREADER ---- */

struct holder {
	shmb_client *c;
	const char *sid;
	sem_t took, release;
	int rc;
};

/* Takes a reader slot (an open) and keeps it, the thread being alive, until released. */
static void *hold_reader(void *p)
{
	struct holder *h = p;
	shmb_session *s = NULL;
	h->rc = shmb_session_open(h->c, h->sid, TENANT, NULL, &s);
	sem_post(&h->took);
	sem_wait(&h->release);
	shmb_session_close(s);
	return NULL;
}

struct third {
	shmb_client *c;
	const char *sid;
	shmb_session *s; /* opened by the main thread */
	int open_rc, stat_rc, cursor_rc, sub_rc, create_rc;
	int64_t pub_rc;
};

static void *third_thread(void *p)
{
	struct third *t = p;
	shmb_session *s = NULL;
	t->open_rc = shmb_session_open(t->c, t->sid, TENANT, NULL, &s);
	shmb_session_info info;
	t->stat_rc = shmb_session_stat(t->s, &info);
	t->pub_rc = shmb_publish(t->s, 0, 1, "x", 1);
	shmb_cursor *cur = NULL;
	t->cursor_rc = shmb_cursor_open(t->s, 0, &cur);
	t->sub_rc = shmb_subscribe(t->s);
	char sid[SHMB_SID_LEN + 1];
	t->create_rc = shmb_session_create(t->c, TENANT, "third", sid); /* needs no reader */
	return NULL;
}

H_TEST(errcodes, a_third_thread_with_two_reader_slots_gets_enoreader)
{
	struct h_broker *b = h_broker_start(H_ARGS("--readers-per-worker", "2"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, TENANT, NULL, sid));
	shmb_session *s = NULL;
	H_OK(shmb_session_open(c, sid, TENANT, NULL, &s)); /* reader slot 1: this thread */

	struct holder h = { .c = c, .sid = sid };
	sem_init(&h.took, 0, 0);
	sem_init(&h.release, 0, 0);
	pthread_t th;
	cr_assert_eq(pthread_create(&th, NULL, hold_reader, &h), 0);
	sem_wait(&h.took);
	H_EXPECT_RC(h.rc, 0); /* reader slot 2: the holder */

	struct third t = { .c = c, .sid = sid, .s = s };
	pthread_t tt;
	cr_assert_eq(pthread_create(&tt, NULL, third_thread, &t), 0);
	pthread_join(tt, NULL);
	H_EXPECT_RC(t.open_rc, SHMB_ENOREADER);
	H_EXPECT_RC(t.stat_rc, SHMB_ENOREADER);
	H_EXPECT_RC(t.pub_rc, SHMB_ENOREADER);
	H_EXPECT_RC(t.cursor_rc, SHMB_ENOREADER);
	H_EXPECT_RC(t.sub_rc, SHMB_ENOREADER);
	H_EXPECT_RC(t.create_rc, 0);
	cr_expect(strstr(shmb_strerror(SHMB_ENOREADER), "reader slot"), "%s",
		  shmb_strerror(SHMB_ENOREADER));

	/* Once the holder is gone, a new thread gets its slot. */
	sem_post(&h.release);
	pthread_join(th, NULL);
	t = (struct third){ .c = c, .sid = sid, .s = s };
	cr_assert_eq(pthread_create(&tt, NULL, third_thread, &t), 0);
	pthread_join(tt, NULL);
	H_EXPECT_RC(t.open_rc, 0);
	cr_expect_geq(t.pub_rc, 1, "publish once a slot is free: %s", shmb_strerror((int)t.pub_rc));
	sem_destroy(&h.took);
	sem_destroy(&h.release);
	shmb_session_close(s);
	h_detach(c);
}

/* ---- SHMB_ENOWORKER ---- */

static int attach_report(void *p, int wfd)
{
	shmb_client *c = NULL;
	int rc = shmb_attach(p, &c);
	if (rc == 0)
		shmb_detach(c);
	return h_write_all(wfd, &rc, sizeof rc) == 0 ? 0 : 2;
}

H_TEST(errcodes, a_second_process_with_one_worker_slot_gets_enoworker)
{
	struct h_broker *b = h_broker_start(H_ARGS("--max-workers", "1"));
	shmb_client *c = h_attach(b->name);
	struct h_child ch;
	h_child_start(&ch, attach_report, b->name);
	int rc = 0;
	cr_assert_eq(h_child_read(&ch, &rc, sizeof rc, 10000), (ssize_t)sizeof rc);
	cr_assert_eq(h_child_wait(&ch, 10000), 0);
	H_EXPECT_RC(rc, SHMB_ENOWORKER);
	cr_expect(strstr(shmb_strerror(rc), "worker slot"), "%s", shmb_strerror(rc));
	/* This process's own slot is untouched; once it detaches, another process gets one. */
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, TENANT, NULL, sid));
	h_detach(c);
	rc = SHMB_ENOWORKER;
	int ok = H_POLL_UNTIL(({
				      h_child_start(&ch, attach_report, b->name);
				      h_child_read(&ch, &rc, sizeof rc, 10000);
				      h_child_wait(&ch, 10000);
				      rc == 0;
			      }),
			      3000);
	cr_expect(ok, "attach after the holder detached: %s", shmb_err_name(rc));
}

/* SHMB_EFULL is left for the session table. */
H_TEST(errcodes, efull_is_no_free_session_record)
{
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "2"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, TENANT, NULL, sid));
	H_OK(shmb_session_create(c, TENANT, NULL, sid));
	H_EXPECT_RC(shmb_session_create(c, TENANT, NULL, sid), SHMB_EFULL);
	cr_expect_str_eq(shmb_strerror(SHMB_EFULL), "no free session record");
	h_detach(c);
}

/* ---- SHMB_EFORK ---- */

struct fork_arg {
	shmb_client *c;
	shmb_session *s;
	shmb_cursor *cur;
	const char *sid;
};

enum {
	F_OPEN,
	F_PUBLISH,
	F_PUBLISH_BADARG,
	F_CREATE,
	F_CREATE_OPTS,
	F_DELETE,
	F_STAT,
	F_CURSOR,
	F_NEXT,
	F_SUB,
	F_UNSUB,
	F_FD,
	F_WAIT,
	F_PREPARE,
	F_SPIN,
	F_ATTR_SET,
	F_ATTR_SET_IF,
	F_ATTR_GET,
	F_ATTR_DELETE,
	F_ATTR_LIST,
	F_CURSOR_WAIT,
	F_READY,
	F_N
};
static const char *const f_names[F_N] = {
	"open",        "publish",      "publish(NULL, 5)", "create",    "create_opts", "delete",
	"stat",        "cursor_open",  "cursor_next",      "subscribe", "unsubscribe", "fd",
	"wait",        "prepare_wait", "set_wait_spin",    "attr_set",  "attr_set_if", "attr_get",
	"attr_delete", "attr_list",    "cursor_wait",      "ready",
};

static int list_none(void *arg, const char *key, const void *val, size_t len, uint64_t version)
{
	(void)arg, (void)key, (void)val, (void)len, (void)version;
	return 0;
}

static int child_uses_inherited(void *p, int wfd)
{
	struct fork_arg *a = p;
	int rc[F_N];
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = NULL;
	shmb_cursor *cur = NULL;
	shmb_session_info info;
	shmb_event ev;
	char buf[64];
	rc[F_OPEN] = shmb_session_open(a->c, a->sid, TENANT, NULL, &s);
	rc[F_PUBLISH] = (int)shmb_publish(a->s, 0, 1, "x", 1);
	rc[F_PUBLISH_BADARG] = (int)shmb_publish(a->s, 0, 1, NULL, 5);
	rc[F_CREATE] = shmb_session_create(a->c, TENANT, NULL, sid);
	rc[F_CREATE_OPTS] =
		shmb_session_create_opts(a->c, TENANT, NULL,
					 &(shmb_session_opts){ .inactivity_ttl_ms = 1000 }, sid);
	rc[F_DELETE] = shmb_session_delete(a->c, a->sid, TENANT, NULL);
	rc[F_STAT] = shmb_session_stat(a->s, &info);
	rc[F_CURSOR] = shmb_cursor_open(a->s, 0, &cur);
	rc[F_NEXT] = shmb_cursor_next(a->cur, &ev, buf, sizeof buf);
	rc[F_SUB] = shmb_subscribe(a->s);
	rc[F_UNSUB] = shmb_unsubscribe(a->s);
	rc[F_FD] = shmb_fd(a->c);
	rc[F_WAIT] = shmb_wait(a->c, 0);
	rc[F_PREPARE] = shmb_prepare_wait(a->c);
	rc[F_SPIN] = shmb_set_wait_spin(a->c, 10);
	rc[F_ATTR_SET] = shmb_attr_set(a->s, "k", "v", 1);
	rc[F_ATTR_SET_IF] = shmb_attr_set_if(a->s, "k", "v", 1, 0);
	rc[F_ATTR_GET] = shmb_attr_get(a->s, "k", buf, sizeof buf, NULL);
	rc[F_ATTR_DELETE] = shmb_attr_delete(a->s, "k");
	rc[F_ATTR_LIST] = shmb_attr_list(a->s, list_none, NULL);
	rc[F_CURSOR_WAIT] = shmb_cursor_wait(a->cur, 0);
	shmb_session *ready[4];
	rc[F_READY] = shmb_ready(a->c, ready, 4);
	/* These only free the child's memory. */
	shmb_cursor_close(a->cur);
	shmb_session_close(a->s);
	shmb_detach(a->c);
	return h_write_all(wfd, rc, sizeof rc) == 0 ? 0 : 2;
}

H_TEST(errcodes, every_call_on_an_inherited_client_gets_efork)
{
	struct h_broker *b = h_broker_start(NULL);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, TENANT, NULL, sid));
	shmb_session *s = NULL;
	H_OK(shmb_session_open(c, sid, TENANT, NULL, &s));
	H_OK(shmb_subscribe(s));
	H_OK(shmb_publish(s, 0, 1, "before", 6));
	shmb_cursor *cur = NULL;
	H_OK(shmb_cursor_open(s, 0, &cur));

	struct fork_arg a = { .c = c, .s = s, .cur = cur, .sid = sid };
	struct h_child ch;
	h_child_start(&ch, child_uses_inherited, &a);
	int rc[F_N];
	cr_assert_eq(h_child_read(&ch, rc, sizeof rc, 10000), (ssize_t)sizeof rc,
		     "the child did not report");
	cr_assert_eq(h_child_wait(&ch, 10000), 0);
	for (int i = 0; i < F_N; i++)
		cr_expect_eq(rc[i], SHMB_EFORK, "%s in the child: %d %s, want SHMB_EFORK",
			     f_names[i], rc[i], shmb_err_name(rc[i]));
	cr_expect(strstr(shmb_strerror(SHMB_EFORK), "fork"), "%s", shmb_strerror(SHMB_EFORK));

	/* The parent's client, handle, subscription and cursor were not disturbed. */
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	cr_expect_eq(info.last_event_id, 1u, "the child published");
	cr_expect_eq(info.subscribers, 1u);
	H_OK(shmb_publish(s, 0, 1, "after", 5));
	shmb_event ev;
	char buf[64];
	H_EXPECT_RC(shmb_cursor_next(cur, &ev, buf, sizeof buf), 1);
	H_EXPECT_RC(shmb_cursor_next(cur, &ev, buf, sizeof buf), 1);
	cr_expect(ev.len == 5 && memcmp(buf, "after", 5) == 0);
	char sid2[SHMB_SID_LEN + 1];
	H_OK(shmb_session_create(c, TENANT, NULL, sid2));
	H_OK(shmb_session_delete(c, sid, TENANT, NULL));
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_detach(c);
}

/* ---- the table ---- */

H_TEST(errcodes, new_codes_are_distinct_and_unknown_ones_say_so)
{
	const int codes[] = { SHMB_EFULL,     SHMB_ECONFLICT, SHMB_ENOWORKER,
			      SHMB_ENOREADER, SHMB_EQUOTA,    SHMB_EFORK };
	for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
		cr_expect_neq(strcmp(shmb_strerror(codes[i]), "unknown error"), 0);
		for (size_t k = 0; k < i; k++) {
			cr_expect_neq(codes[i], codes[k]);
			cr_expect_neq(strcmp(shmb_strerror(codes[i]), shmb_strerror(codes[k])), 0);
		}
	}
	/* What an older library shows for a code it does not know, and this one for a newer. */
	cr_expect_str_eq(shmb_strerror(-999), "unknown error");
	cr_expect_str_eq(shmb_err_name(-999), "SHMB_EUNKNOWN");
	cr_expect_eq(SHMB_ENOWORKER, -16);
	cr_expect_eq(SHMB_EFORK, -19);
}
