/* test_redteam11_waits.c - red-team findings on per-thread waits (shmb_cursor_wait): a thread
 * waiting with timeout -1 when the segment it waits in stops being served (a broker stopping
 * with unlink_on_exit marks it retired) must return (SHMB_ESTALE), not sleep forever: nobody
 * publishes into a retired segment, so no publisher will ever bump its futex word.
 *
 * The wait's timeout here is a failure detector (DETECT_MS), never the synchronisation. */
#include <pthread.h>
#include <sys/syscall.h>

#include "evhelp.h"
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
