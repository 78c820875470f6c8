/* test_redteam16_core_stress.c - red team of issue 16's shmb_session_restore under load: the
 * broker SIGKILLed at random moments of many restores (after adoption every session is whole
 * or absent and verify is clean), its memory across thousands of restores and refusals, and a
 * flood of restores from one client beside another client's creates. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

TestSuite(redteam16_core_stress, .init = h_setup, .fini = h_teardown, .timeout = 280);

/* Ring of 64 events of 1 KiB slots, events up to 4 KiB, attributes of the defaults. */
#define BIG_ARGS                                                                            \
	H_ARGS("--ring-events", "64", "--ring-bytes", "65536", "--max-event-bytes", "4096", \
	       "--max-sessions", "4096")

#define N_EV 40
#define N_AT 8

struct img {
	char sid[SHMB_SID_LEN + 1];
	shmb_image_event ev[N_EV];
	shmb_image_attr at[N_AT];
	char keys[N_AT][8];
	shmb_session_image s;
};

static char payload[4096];

/* Image i: 40 events at ids 3, 6, ... (every third id: each takes up to 3 slots of 1 KiB),
 * 8 attributes; its contents derive from i so a reader can check them. */
static void make_img(struct img *m, unsigned i, int64_t now)
{
	snprintf(m->sid, sizeof m->sid, "00%02x%028x", i & 0xff, i);
	for (int k = 0; k < N_EV; k++)
		m->ev[k] = (shmb_image_event){ .id = 3u * (k + 1),
					       .stream = i,
					       .kind = (uint16_t)k,
					       .ts_ms = now,
					       .data = payload + k,
					       .len = 1 + (i * 7 + k * 13) % 3000 };
	for (int k = 0; k < N_AT; k++) {
		snprintf(m->keys[k], sizeof m->keys[k], "k%d", k);
		m->at[k] = (shmb_image_attr){ .key = m->keys[k],
					      .val = payload + i % 100,
					      .len = (i + k * 31) % 200 };
	}
	m->s = (shmb_session_image){ .sid = m->sid,
				     .tenant = "acme",
				     .created_at_ms = now,
				     .last_accessed_at_ms = now,
				     .last_event_id = 3u * N_EV + 2,
				     .events = m->ev,
				     .n_events = N_EV,
				     .attrs = m->at,
				     .n_attrs = N_AT };
}

/* 1 whole, 0 absent; fails the test when partial. */
static int check_img(shmb_client *c, const struct img *m)
{
	shmb_session *s;
	int rc = shmb_session_open(c, m->sid, "acme", NULL, &s);
	if (rc == SHMB_ENOENT)
		return 0;
	cr_assert_eq(rc, 0, "%s: %s", m->sid, shmb_err_name(rc));
	static char buf[4096];
	for (int k = 0; k < N_AT; k++) {
		int n = shmb_attr_get(s, m->at[k].key, buf, sizeof buf, NULL);
		cr_assert_eq(n, (int)m->at[k].len, "%s attribute %s: %s", m->sid, m->at[k].key,
			     shmb_err_name(n));
		cr_assert(memcmp(buf, m->at[k].val, m->at[k].len) == 0);
	}
	shmb_cursor *cur;
	cr_assert_eq(shmb_cursor_open(s, 0, &cur), 0);
	shmb_event e;
	int k = 0, got;
	while ((got = shmb_cursor_next(cur, &e, buf, sizeof buf)) != 0) {
		if (got == SHMB_EOVERRUN)
			continue;
		cr_assert_eq(got, 1, "%s: cursor %s", m->sid, shmb_err_name(got));
		if (e.flags & SHMB_EV_GAP)
			continue;
		while (k < N_EV && m->ev[k].id < e.id)
			k++;
		cr_assert(k < N_EV && m->ev[k].id == e.id, "%s: event %llu not in the image",
			  m->sid, (unsigned long long)e.id);
		cr_assert_eq(e.len, m->ev[k].len);
		cr_assert(memcmp(buf, m->ev[k].data, e.len) == 0, "%s: event %llu differs", m->sid,
			  (unsigned long long)e.id);
	}
	shmb_session_info info;
	cr_assert_eq(shmb_session_stat(s, &info), 0);
	cr_assert_eq(info.last_event_id, 3u * N_EV + 2);
	shmb_cursor_close(cur);
	shmb_session_close(s);
	return 1;
}

struct killer {
	struct h_broker *b;
	int delay_us;
};

static void *kill_later(void *arg)
{
	struct killer *k = arg;
	usleep((useconds_t)k->delay_us);
	kill(k->b->pid, SIGKILL);
	return NULL;
}

H_TEST(redteam16_core_stress, the_broker_killed_at_random_during_restores)
{
	for (int i = 0; i < (int)sizeof payload; i++)
		payload[i] = (char)(i * 31 + 7);
	struct h_broker *b = h_broker_start(BIG_ARGS);
	shmb_client *c = h_attach(b->name);
	static struct img imgs[4000];
	unsigned n = 0, whole = 0;
	srand((unsigned)time(NULL));
	for (int round = 0; round < 40; round++) {
		struct killer k = { .b = b, .delay_us = 500 + rand() % 15000 };
		pthread_t th;
		cr_assert_eq(pthread_create(&th, NULL, kill_later, &k), 0);
		unsigned first = n;
		int64_t now = h_wall_ms();
		for (; n < first + 100; n++) {
			make_img(&imgs[n], n, now);
			int rc = shmb_session_restore(c, &imgs[n].s);
			if (rc < 0 && rc != SHMB_EBROKER) {
				char *log = h_broker_log(b);
				cr_log_error("%s", log ? log : "");
				free(log);
			}
			cr_assert(rc >= 0 || rc == SHMB_EBROKER, "restore %u: %s", n,
				  shmb_err_name(rc));
			if (rc == SHMB_EBROKER) {
				n++;
				break;
			}
		}
		pthread_join(th, NULL);
		h_broker_wait_exit(b, 10000);
		h_broker_restart(b);
		struct h_result r;
		h_shmctl(&r, b->name, "verify", NULL);
		cr_assert_eq(r.status, 0, "verify after round %d: %s%s", round, r.out, r.err);
		h_result_free(&r);
	}
	for (unsigned i = 0; i < n; i++)
		whole += (unsigned)check_img(c, &imgs[i]);
	cr_log_info("%u restores attempted, %u whole, the rest absent", n, whole);
	cr_expect_gt(whole, 0);
	h_detach(c);
}

static long rss_kb(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	long kb = -1;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %ld", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

H_TEST(redteam16_core_stress, broker_memory_stays_bounded_across_thousands_of_restores)
{
	for (int i = 0; i < (int)sizeof payload; i++)
		payload[i] = (char)(i * 31 + 7);
	struct h_broker *b = h_broker_start(BIG_ARGS);
	shmb_client *c = h_attach(b->name);
	static struct img m;
	long base = 0;
	int64_t now = h_wall_ms();
	for (unsigned i = 0; i < 4000; i++) {
		make_img(&m, i, now);
		/* A refused one of the same size (a key twice: checked after the whole read). */
		m.at[1].key = m.at[0].key;
		H_EXPECT_RC(shmb_session_restore(c, &m.s), SHMB_EINVAL);
		m.at[1].key = m.keys[1];
		int rc = shmb_session_restore(c, &m.s);
		cr_assert_geq(rc, 0, "restore %u: %s", i, shmb_err_name(rc));
		/* The same id again: a conflict. */
		H_EXPECT_RC(shmb_session_restore(c, &m.s), SHMB_ECONFLICT);
		cr_assert_eq(shmb_session_delete(c, m.sid, "acme", NULL), 0);
		if (i == 500)
			base = rss_kb(b->pid);
	}
	long end = rss_kb(b->pid);
	cr_log_info("broker RSS %ld kB after 500 rounds, %ld kB after 4000", base, end);
#ifndef __SANITIZE_ADDRESS__
	/* (Under ASan the broker's RSS grows by its quarantine of freed memory, 256 MiB.) */
	cr_expect_lt(end - base, 4096, "the broker grew from %ld kB to %ld kB", base, end);
#endif
	struct h_result r;
	h_shmctl(&r, b->name, "verify", NULL);
	cr_expect_eq(r.status, 0, "verify: %s%s", r.out, r.err);
	h_result_free(&r);
	h_detach(c);
}

struct flood {
	const char *name;
	volatile int stop;
	unsigned sent;
};

static void *flood_loop(void *arg)
{
	struct flood *f = arg;
	shmb_client *c;
	if (shmb_attach(f->name, &c) != 0)
		return NULL;
	static struct img m;
	make_img(&m, 1, h_wall_ms());
	m.at[1].key = m.at[0].key; /* refused after the whole image is read and parsed */
	while (!f->stop) {
		shmb_session_restore(c, &m.s);
		f->sent++;
	}
	shmb_detach(c);
	return NULL;
}

H_TEST(redteam16_core_stress, a_restore_flood_does_not_starve_other_workers)
{
	struct h_broker *b = h_broker_start(BIG_ARGS);
	shmb_client *c = h_attach(b->name);
	struct flood f = { .name = b->name };
	pthread_t th[2];
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pthread_create(&th[i], NULL, flood_loop, &f), 0);
	int64_t worst = 0;
	for (int i = 0; i < 200; i++) {
		char sid[SHMB_SID_LEN + 1];
		int64_t t0 = h_now_ms();
		H_OK(shmb_session_create(c, "acme", NULL, sid));
		H_OK(shmb_session_delete(c, sid, "acme", NULL));
		int64_t d = h_now_ms() - t0;
		if (d > worst)
			worst = d;
	}
	f.stop = 1;
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	cr_log_info("%u flooding restores; the slowest create+delete beside them: %lld ms", f.sent,
		    (long long)worst);
	cr_expect_gt(f.sent, 100);
	cr_expect_lt(worst, 1000, "a create+delete took %lld ms beside the flood",
		     (long long)worst);
	h_detach(c);
}
