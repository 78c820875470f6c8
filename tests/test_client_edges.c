/* test_client_edges.c - the client library at two edges (issue 10, item 8): a cursor asked to
 * start after an id the session has not reached, and a handle closed on a thread that cannot get
 * a reader slot.
 *
 * Real broker, real client, no mocks: the reader-slot case runs the broker with one reader slot
 * per worker, which the main thread takes, so a second thread of the same process has none. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "evhelp.h"

TestSuite(client_edges, .init = h_setup, .fini = h_teardown, .timeout = 60);

static void publish_n(shmb_session *s, int n)
{
	for (int i = 0; i < n; i++)
		H_OK(shmb_publish(s, 1, 1, "x", 1));
}

/* Reads everything there is; returns how many events and the last id in *last. */
static int drain(shmb_cursor *cur, uint64_t *last)
{
	char buf[64];
	shmb_event ev;
	int n = 0, rc;
	while ((rc = shmb_cursor_next(cur, &ev, buf, sizeof buf)) == 1) {
		*last = ev.id;
		n++;
	}
	H_EXPECT_RC(rc, 0);
	return n;
}

H_TEST(client_edges, cursor_after_an_id_not_reached_is_refused)
{
	/* Before the fix a cursor opened after 12 in a session at id 5 was accepted; once the
	 * session reached 15 it returned 13..15 only: ids 6..12, published after it was opened,
	 * were skipped in silence. */
	struct h_broker *b = h_broker_start(H_NOARGS);
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid);
	publish_n(s, 5);

	shmb_cursor *cur = NULL;
	H_EXPECT_RC(shmb_cursor_open(s, 5, &cur), 0); /* the last id: nothing new yet */
	uint64_t last = 0;
	cr_assert_eq(drain(cur, &last), 0);
	shmb_cursor_close(cur);

	const uint64_t future[] = { 6, 12, 1000, UINT64_MAX };
	for (size_t k = 0; k < sizeof future / sizeof future[0]; k++) {
		shmb_cursor *bad = (shmb_cursor *)&bad; /* must come back NULL */
		H_EXPECT_RC(shmb_cursor_open(s, future[k], &bad), SHMB_EINVAL);
		cr_assert_null(bad, "after %llu: a cursor came back",
			       (unsigned long long)future[k]);
		bad = (shmb_cursor *)&bad;
		H_EXPECT_RC(shmb_cursor_open_stream(s, future[k], 1, &bad), SHMB_EINVAL);
		cr_assert_null(bad, "stream, after %llu: a cursor came back",
			       (unsigned long long)future[k]);
	}

	/* The session moves on: 12 is a real position now, and nothing after it is skipped. */
	publish_n(s, 10);
	H_EXPECT_RC(shmb_cursor_open(s, 12, &cur), 0);
	cr_assert_eq(drain(cur, &last), 3);
	cr_assert_eq(last, 15);
	shmb_cursor_close(cur);
	H_EXPECT_RC(shmb_cursor_open(s, 5, &cur), 0);
	cr_assert_eq(drain(cur, &last), 10, "a cursor after 5 must read 6..15");
	shmb_cursor_close(cur);
	shmb_session_close(s);
	h_detach(c);
}

struct slotless {
	shmb_client *c;
	const char *sid;
	shmb_session *close_me; /* closed by the thread */
	shmb_session *unsub_me; /* unsubscribed by the thread (its session is deleted) */
	int open_rc, unsub_rc;
};

static void *slotless_thread(void *p)
{
	struct slotless *a = p;
	shmb_session *s = NULL;
	/* Proof that this thread has no reader slot. */
	a->open_rc = shmb_session_open(a->c, a->sid, EVH_TENANT, NULL, &s);
	if (s)
		shmb_session_close(s);
	shmb_session_close(a->close_me);
	a->unsub_rc = shmb_unsubscribe(a->unsub_me);
	return NULL;
}

static uint32_t subscribers(shmb_session *s)
{
	shmb_session_info info;
	H_OK(shmb_session_stat(s, &info));
	return info.subscribers;
}

H_TEST(client_edges, close_without_a_reader_slot_unsubscribes)
{
	/* Before the fix shmb_session_close on a thread without a reader slot skipped the
	 * unsubscribe (shmb_unsubscribe returned SHMB_EFULL, ignored): the process's bit stayed
	 * set, so the session counted a subscriber (and could not expire by inactivity) until the
	 * process detached. */
	struct h_broker *b = h_broker_start(H_ARGS("--readers-per-worker", "1"));
	shmb_client *c = h_attach(b->name);
	char sid[SHMB_SID_LEN + 1], gone[SHMB_SID_LEN + 1];
	shmb_session *s = evh_session(c, sid); /* the main thread takes the only reader slot */
	shmb_session *probe = NULL, *g = evh_session(c, gone);
	H_OK(shmb_session_open(c, sid, EVH_TENANT, NULL, &probe));
	H_OK(shmb_subscribe(s));
	H_OK(shmb_subscribe(g));
	cr_assert_eq(subscribers(probe), 1);
	H_OK(shmb_session_delete(c, gone, EVH_TENANT, NULL));

	struct slotless a = { .c = c, .sid = sid, .close_me = s, .unsub_me = g };
	pthread_t t;
	cr_assert_eq(pthread_create(&t, NULL, slotless_thread, &a), 0);
	pthread_join(t, NULL);
	H_EXPECT_RC(a.open_rc, SHMB_ENOREADER);
	H_EXPECT_RC(a.unsub_rc, 0); /* a deleted session: only the process's interest ends */
	cr_assert_eq(subscribers(probe), 0, "the closed handle's subscription is still there");

	/* The process can subscribe again, and its bit is back. */
	H_OK(shmb_subscribe(probe));
	cr_assert_eq(subscribers(probe), 1);
	H_OK(shmb_unsubscribe(probe));
	cr_assert_eq(subscribers(probe), 0);
	shmb_session_close(probe);
	shmb_session_close(g);
	h_detach(c);
}
