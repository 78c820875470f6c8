/* test_attach_race.c - threads of one process attaching and detaching the same instance at once.
 * The last detach sends its detach without waiting for the broker, so another thread's attach
 * right after it could reach the broker first and be refused (SHMB_ENOWORKER: "pid already holds
 * worker slot on another connection"), seen as a TSan CI failure of tsan_client_nowrap. The
 * attach now retries such a refusal for a while after a detach of this process. */
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include "harness.h"

TestSuite(attach_race, .init = h_setup, .fini = h_teardown, .timeout = 60);

#define THREADS 4
#define ROUNDS 300

static const char *inst;
static int failures;
static int last_rc;

static void *attacher(void *arg)
{
	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		shmb_client *c = NULL;
		int rc = shmb_attach(inst, &c);
		if (rc < 0) {
			__atomic_add_fetch(&failures, 1, __ATOMIC_RELAXED);
			__atomic_store_n(&last_rc, rc, __ATOMIC_RELAXED);
			continue;
		}
		char sid[SHMB_SID_LEN + 1];
		if (shmb_session_create(c, "acme", NULL, sid) == 0) {
			shmb_session *s = NULL;
			if (shmb_session_open(c, sid, "acme", NULL, &s) == 0) {
				(void)shmb_subscribe(s);
				(void)shmb_publish(s, 1, 1, "hi", 2);
				shmb_session_close(s);
			}
			(void)shmb_session_delete(c, sid, "acme", NULL);
		}
		shmb_detach(c);
	}
	return NULL;
}

H_TEST(attach_race, threads_attaching_and_detaching_are_never_refused)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	inst = b->name;
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++)
		pthread_create(&t[i], NULL, attacher, NULL);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	cr_expect_eq(failures, 0, "%d of %d attaches failed, the last with %s", failures,
		     THREADS * ROUNDS, shmb_strerror(last_rc));
}

struct late {
	const char *name;
	int rc;
	shmb_client *c;
};

static void *attach_late(void *p)
{
	struct late *l = p;
	l->rc = shmb_attach(l->name, &l->c);
	return NULL;
}

/* The broker stopped while the last client detaches and a new attach of the same process is
 * sent: when it continues, it finds the old connection's detach and the new hello in one
 * batch, in no particular order. Whatever it reads first, the attach succeeds. */
H_TEST(attach_race, attach_sent_behind_an_unread_detach_succeeds)
{
	struct h_broker *b = h_broker_start(H_NOARGS);
	for (int round = 0; round < 20; round++) {
		shmb_client *c = h_attach(b->name);
		cr_assert_eq(kill(b->pid, SIGSTOP), 0);
		h_detach(c);
		struct late l = { .name = b->name };
		pthread_t t;
		pthread_create(&t, NULL, attach_late, &l);
		/* Not a synchronisation: the attach succeeds whenever its hello arrives; the pause
		 * only makes the unlucky order (hello read before the detach) likely. */
		usleep(20000);
		cr_assert_eq(kill(b->pid, SIGCONT), 0);
		pthread_join(t, NULL);
		cr_assert_eq(l.rc, 0, "round %d: attach behind a detach: %s", round,
			     shmb_strerror(l.rc));
		h_detach(l.c);
	}
}
