/* test_concurrency.c - several processes (and threads) at once.
 *
 * - churn_totals: forked workers create and delete concurrently through the broker; afterwards
 *   every count adds up (shmctl status, shmctl sessions, opens).
 * - lookups_during_recycling: readers loop lookups over sessions that another process deletes
 *   and re-creates as fast as it can, in a broker with few records so they are recycled all the
 *   time. Every successful open must be the session asked for (same sid, same tenant in stat);
 *   a recycled record must never answer for an old sid.
 * - threads_share_a_client: threads of one process share one shmb_client. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "harness.h"
#include "layout.h"

TestSuite(concurrency, .init = h_setup, .fini = h_teardown, .timeout = 240);

/* ---------------------------------------------------------------- churn totals */

#define CHURN_WORKERS 4
#define CHURN_EACH 60

struct churn_report {
	int created;
	int deleted;
	int errors;
	int first_error;
	char kept[CHURN_EACH][SHMB_SID_LEN + 1];
	int nkept;
};

static int churn_worker(void *arg, int wfd)
{
	int id = (int)(intptr_t)arg;
	struct churn_report *r = calloc(1, sizeof *r);
	char tenant[16];
	snprintf(tenant, sizeof tenant, "w%d", id);
	shmb_client *c = NULL;
	int rc = shmb_attach(NULL, &c);
	if (rc < 0) {
		r->errors = 1;
		r->first_error = rc;
		goto out;
	}
	char sids[CHURN_EACH][SHMB_SID_LEN + 1];
	for (int i = 0; i < CHURN_EACH; i++) {
		rc = shmb_session_create(c, tenant, NULL, sids[i]);
		if (rc < 0) {
			if (!r->errors++)
				r->first_error = rc;
			sids[i][0] = '\0';
			continue;
		}
		r->created++;
		/* Delete every other one of the previous ones while others create. */
		if (i % 2 == 1 && sids[i - 1][0]) {
			rc = shmb_session_delete(c, sids[i - 1], tenant, NULL);
			if (rc < 0) {
				if (!r->errors++)
					r->first_error = rc;
			} else {
				r->deleted++;
				sids[i - 1][0] = '\0';
			}
		}
	}
	for (int i = 0; i < CHURN_EACH; i++)
		if (sids[i][0])
			memcpy(r->kept[r->nkept++], sids[i], SHMB_SID_LEN + 1);
	shmb_detach(c);
out:;
	int w = h_write_all(wfd, r, sizeof *r);
	free(r);
	return w == 0 ? 0 : 3;
}

H_TEST(concurrency, churn_totals)
{
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "512", "--max-workers", "16"));
	struct h_child ch[CHURN_WORKERS];
	for (int i = 0; i < CHURN_WORKERS; i++)
		h_child_start(&ch[i], churn_worker, (void *)(intptr_t)i);

	static struct churn_report rep[CHURN_WORKERS];
	int created = 0, deleted = 0, kept = 0;
	for (int i = 0; i < CHURN_WORKERS; i++) {
		cr_assert_eq(h_child_read(&ch[i], &rep[i], sizeof rep[i], 60000),
			     (ssize_t)sizeof rep[i], "worker %d did not report", i);
		cr_assert_eq(h_child_wait(&ch[i], 10000), 0);
		cr_expect_eq(rep[i].errors, 0, "worker %d: %d errors, first %s (%s)", i,
			     rep[i].errors, shmb_err_name(rep[i].first_error),
			     shmb_strerror(rep[i].first_error));
		created += rep[i].created;
		deleted += rep[i].deleted;
		kept += rep[i].nkept;
	}
	cr_expect_eq(created, CHURN_WORKERS * CHURN_EACH);
	cr_expect_eq(deleted, CHURN_WORKERS * CHURN_EACH / 2);
	cr_assert_eq(kept, created - deleted);

	/* The broker agrees. */
	cJSON *st = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(st, "sessions.live"), kept, "shmctl status: live %g, want %d",
		     h_json_num(st, "sessions.live"), kept);
	cJSON_Delete(st);
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_CREATED), (uint64_t)created);
	cr_expect_eq(h_counter(b->name, SHMB_CTR_SESSIONS_DELETED), (uint64_t)deleted);

	cJSON *list = h_shmctl_json(b->name, "sessions", NULL);
	const cJSON *arr = h_json_sessions(list);
	cr_expect_eq(cJSON_GetArraySize(arr), kept);

	/* Each kept sid is listed once with its worker's tenant, and opens; all are distinct. */
	shmb_client *c = h_attach(b->name);
	for (int i = 0; i < CHURN_WORKERS; i++) {
		char tenant[16];
		snprintf(tenant, sizeof tenant, "w%d", i);
		for (int k = 0; k < rep[i].nkept; k++) {
			const char *sid = rep[i].kept[k];
			int seen = 0;
			const cJSON *e;
			cJSON_ArrayForEach(e, arr)
			{
				const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
				if (cJSON_IsString(id) && !strcmp(id->valuestring, sid)) {
					seen++;
					const cJSON *t =
						cJSON_GetObjectItemCaseSensitive(e, "tenant");
					cr_expect(cJSON_IsString(t) &&
							  !strcmp(t->valuestring, tenant),
						  "sid %s listed with the wrong tenant", sid);
				}
			}
			cr_expect_eq(seen, 1, "sid %s listed %d times", sid, seen);
			shmb_session *s = NULL;
			int rc = shmb_session_open(c, sid, tenant, NULL, &s);
			cr_expect_eq(rc, 0, "open kept %s: %s (%s)", sid, shmb_err_name(rc),
				     shmb_strerror(rc));
			shmb_session_close(s);
		}
	}
	cJSON_Delete(list);
	h_detach(c);
}

/* ---------------------------------------------------------------- lookups during recycling */

#define PUB_MAX 8192
#define STABLE 4

/* Shared (MAP_SHARED, made before fork) between the churner and the readers: the churner
 * publishes each session it creates (sid, tenant) before it deletes it later. */
struct published {
	_Atomic uint32_t count;
	_Atomic uint32_t done;
	struct {
		char sid[SHMB_SID_LEN + 1];
		char tenant[24];
	} e[PUB_MAX];
	char stable_sid[STABLE][SHMB_SID_LEN + 1];
	char stable_tenant[STABLE][24];
};

struct reader_report {
	long opens_ok;
	long opens_enoent;
	long stale_ok;
	long stale_enoent;
	long wrong;      /* an open or stat that returned another session: must stay 0 */
	long unexpected; /* any other error code: must stay 0 */
	int first_unexpected;
	char what[200];
};

static struct published *pub;

static void note_wrong(struct reader_report *r, const char *fmt, const char *a, const char *b)
{
	if (!r->wrong++)
		snprintf(r->what, sizeof r->what, fmt, a, b);
}

static int reader(void *arg, int wfd)
{
	(void)arg;
	struct reader_report r = { 0 };
	shmb_client *c = NULL;
	int rc = shmb_attach(NULL, &c);
	if (rc < 0) {
		r.unexpected = 1;
		r.first_unexpected = rc;
		goto out;
	}
	unsigned seed = (unsigned)getpid();
	shmb_session *held[8] = { 0 };
	const char *held_sid[8], *held_tenant[8]; /* entries of pub: written once, then fixed */
	while (!atomic_load(&pub->done)) {
		uint32_t n = atomic_load_explicit(&pub->count, memory_order_acquire);
		/* Mostly recent (likely live or just deleted) entries, some stable ones. */
		const char *sid, *tenant;
		int i = -1;
		int which = rand_r(&seed) % 8;
		if (which == 0 || n == 0) {
			int k = rand_r(&seed) % STABLE;
			sid = pub->stable_sid[k];
			tenant = pub->stable_tenant[k];
		} else {
			uint32_t back = (uint32_t)(rand_r(&seed) % 16);
			i = (int)(n - 1 - (back < n ? back : n - 1));
			sid = pub->e[i].sid;
			tenant = pub->e[i].tenant;
		}
		shmb_session *s = NULL;
		rc = shmb_session_open(c, sid, tenant, NULL, &s);
		if (rc == 0) {
			shmb_session_info info;
			int st = shmb_session_stat(s, &info);
			if (st == 0) {
				if (strcmp(info.sid, sid) != 0)
					note_wrong(&r, "open(%s) gave session %s", sid, info.sid);
				else if (strcmp(info.tenant, tenant) != 0)
					note_wrong(&r, "open(%s) gave tenant %s", sid, info.tenant);
				else
					r.opens_ok++;
			} else if (st == SHMB_ENOENT) {
				r.opens_ok++; /* deleted between open and stat: fine */
			} else if (!r.unexpected++) {
				r.first_unexpected = st;
			}
			/* Keep some handles to check later (stale handles). */
			int slot = rand_r(&seed) % 8;
			if (held[slot])
				shmb_session_close(held[slot]);
			held[slot] = s;
			held_sid[slot] = sid;
			held_tenant[slot] = tenant;
		} else if (rc == SHMB_ENOENT) {
			if (i < 0)
				note_wrong(&r, "stable session %s%s vanished", sid, "");
			r.opens_enoent++;
		} else if (rc == SHMB_EPERM) {
			/* The tenant is unique per sid: EPERM means another session answered. */
			note_wrong(&r, "open(%s, %s) gave EPERM", sid, tenant);
		} else if (!r.unexpected++) {
			r.first_unexpected = rc;
		}
		/* A held handle: either its own session or ENOENT, never another one. */
		int slot = rand_r(&seed) % 8;
		if (held[slot]) {
			shmb_session_info info;
			int st = shmb_session_stat(held[slot], &info);
			if (st == 0) {
				if (strcmp(info.sid, held_sid[slot]) ||
				    strcmp(info.tenant, held_tenant[slot]))
					note_wrong(&r, "stale handle of %s shows %s",
						   held_sid[slot], info.sid);
				r.stale_ok++;
			} else if (st == SHMB_ENOENT) {
				r.stale_enoent++;
			} else if (!r.unexpected++) {
				r.first_unexpected = st;
			}
		}
	}
	for (int k = 0; k < 8; k++)
		shmb_session_close(held[k]);
	shmb_detach(c);
out:
	return h_write_all(wfd, &r, sizeof r) == 0 ? 0 : 3;
}

struct churner_report {
	int created, deleted, errors, first_error;
};

static int churner(void *arg, int wfd)
{
	int rounds = (int)(intptr_t)arg;
	struct churner_report r = { 0 };
	shmb_client *c = NULL;
	int rc = shmb_attach(NULL, &c);
	if (rc < 0) {
		r.errors = 1;
		r.first_error = rc;
		goto out;
	}
	const int keep = 4; /* live churn sessions at a time */
	for (int i = 0; i < rounds && i < PUB_MAX; i++) {
		char tenant[24];
		snprintf(tenant, sizeof tenant, "churn-%d", i);
		char sid[SHMB_SID_LEN + 1];
		/* The records are few: wait for the broker to recycle one if needed. */
		int64_t deadline = h_now_ms() + 5000;
		while ((rc = shmb_session_create(c, tenant, NULL, sid)) == SHMB_EFULL &&
		       h_now_ms() < deadline)
			h_sleep_ms(1);
		if (rc < 0) {
			if (!r.errors++)
				r.first_error = rc;
			break;
		}
		r.created++;
		memcpy(pub->e[i].sid, sid, sizeof sid);
		memcpy(pub->e[i].tenant, tenant, sizeof tenant);
		atomic_store_explicit(&pub->count, (uint32_t)i + 1, memory_order_release);
		if (i >= keep) {
			rc = shmb_session_delete(c, pub->e[i - keep].sid, pub->e[i - keep].tenant,
						 NULL);
			if (rc < 0) {
				if (!r.errors++)
					r.first_error = rc;
			} else {
				r.deleted++;
			}
		}
	}
	shmb_detach(c);
out:
	atomic_store(&pub->done, 1);
	return h_write_all(wfd, &r, sizeof r) == 0 ? 0 : 3;
}

H_TEST(concurrency, lookups_during_recycling)
{
	enum { READERS = 3, ROUNDS = 3000 };
	/* 12 records: 4 stable + 4 live churn + retired ones waiting for their grace period. */
	struct h_broker *b = h_broker_start(H_ARGS("--max-sessions", "12"));
	pub = mmap(NULL, sizeof *pub, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cr_assert_neq(pub, MAP_FAILED);
	shmb_client *c = h_attach(b->name);
	for (int k = 0; k < STABLE; k++) {
		snprintf(pub->stable_tenant[k], sizeof pub->stable_tenant[k], "stable-%d", k);
		int rc = shmb_session_create(c, pub->stable_tenant[k], NULL, pub->stable_sid[k]);
		cr_assert_eq(rc, 0, "create stable: %s", shmb_strerror(rc));
	}

	struct h_child rd[READERS], ch;
	for (int i = 0; i < READERS; i++)
		h_child_start(&rd[i], reader, NULL);
	h_child_start(&ch, churner, (void *)(intptr_t)ROUNDS);

	struct churner_report cr;
	cr_assert_eq(h_child_read(&ch, &cr, sizeof cr, 180000), (ssize_t)sizeof cr,
		     "churner did not report");
	cr_assert_eq(h_child_wait(&ch, 10000), 0);
	long ok = 0, enoent = 0, stale_enoent = 0;
	for (int i = 0; i < READERS; i++) {
		struct reader_report r;
		cr_assert_eq(h_child_read(&rd[i], &r, sizeof r, 30000), (ssize_t)sizeof r,
			     "reader %d did not report", i);
		cr_assert_eq(h_child_wait(&rd[i], 10000), 0);
		cr_expect_eq(r.wrong, 0, "reader %d saw a wrong session %ld times; first: %s", i,
			     r.wrong, r.what);
		cr_expect_eq(r.unexpected, 0, "reader %d: %ld unexpected errors, first %s (%s)", i,
			     r.unexpected, shmb_err_name(r.first_unexpected),
			     shmb_strerror(r.first_unexpected));
		cr_log_info("reader %d: %ld ok, %ld enoent, stale handles %ld ok / %ld enoent", i,
			    r.opens_ok, r.opens_enoent, r.stale_ok, r.stale_enoent);
		ok += r.opens_ok;
		enoent += r.opens_enoent;
		stale_enoent += r.stale_enoent;
	}
	cr_expect_eq(cr.errors, 0, "churner: %d errors, first %s (%s)", cr.errors,
		     shmb_err_name(cr.first_error), shmb_strerror(cr.first_error));
	cr_expect_eq(cr.created, ROUNDS);
	/* The test exercised both outcomes and the records really were recycled. */
	cr_expect_gt(ok, 0);
	cr_expect_gt(enoent, 0, "no lookup ever hit a deleted session: the test did not race");
	cr_expect_gt(h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED), (uint64_t)ROUNDS - 20,
		     "records were not recycled (%lu reclaimed)",
		     (unsigned long)h_counter(b->name, SHMB_CTR_SESSIONS_RECLAIMED));
	for (int k = 0; k < STABLE; k++) {
		shmb_session *s = NULL;
		int rc = shmb_session_open(c, pub->stable_sid[k], pub->stable_tenant[k], NULL, &s);
		cr_expect_eq(rc, 0, "stable session lost: %s", shmb_strerror(rc));
		shmb_session_close(s);
	}
	(void)stale_enoent;
	h_detach(c);
	munmap(pub, sizeof *pub);
}

/* ---------------------------------------------------------------- threads share a client */

struct thr_arg {
	shmb_client *c;
	int id;
	int errors;
	int first_error;
	int wrong;
};

static void *thread_main(void *p)
{
	struct thr_arg *a = p;
	char tenant[16];
	snprintf(tenant, sizeof tenant, "thr%d", a->id);
	for (int i = 0; i < 100; i++) {
		char sid[SHMB_SID_LEN + 1];
		int rc = shmb_session_create(a->c, tenant, NULL, sid);
		if (rc == 0) {
			for (int k = 0; k < 20 && rc == 0; k++) {
				shmb_session *s = NULL;
				rc = shmb_session_open(a->c, sid, tenant, NULL, &s);
				if (rc == 0) {
					shmb_session_info info;
					rc = shmb_session_stat(s, &info);
					if (rc == 0 &&
					    (strcmp(info.sid, sid) || strcmp(info.tenant, tenant)))
						a->wrong++;
					shmb_session_close(s);
				}
			}
			if (rc == 0)
				rc = shmb_session_delete(a->c, sid, tenant, NULL);
		}
		if (rc < 0 && !a->errors++)
			a->first_error = rc;
	}
	return NULL;
}

H_TEST(concurrency, threads_share_a_client)
{
	enum { T = 4 }; /* = --readers-per-worker: each thread gets its own reader slot */
	struct h_broker *b = h_broker_start(H_ARGS("--readers-per-worker", "4"));
	shmb_client *c = h_attach(b->name);
	pthread_t th[T];
	struct thr_arg a[T];
	for (int i = 0; i < T; i++) {
		a[i] = (struct thr_arg){ .c = c, .id = i };
		cr_assert_eq(pthread_create(&th[i], NULL, thread_main, &a[i]), 0);
	}
	for (int i = 0; i < T; i++)
		pthread_join(th[i], NULL);
	for (int i = 0; i < T; i++) {
		cr_expect_eq(a[i].errors, 0, "thread %d: %d errors, first %s (%s)", i, a[i].errors,
			     shmb_err_name(a[i].first_error), shmb_strerror(a[i].first_error));
		cr_expect_eq(a[i].wrong, 0, "thread %d saw a wrong session", i);
	}
	cJSON *st = h_shmctl_json(b->name, "status", NULL);
	cr_expect_eq(h_json_num(st, "sessions.live"), 0);
	cJSON_Delete(st);
	h_detach(c);
}
